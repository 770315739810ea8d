//! Durable storage of the chat application, behind the [`ChatStore`] trait so that the chat
//! logic does not know which database it runs on. [`sqlite::SqliteStore`] is the embedded
//! default (one file in the data dir, WAL, migrations applied at open);
//! [`postgres::PgStore`] is the database every node of a cluster shares. Both pass one test
//! suite (`src/tests/suite.rs`).
//!
//! A room's messages, edits, deletes and reactions form the room's *event stream*: every
//! change gets the room's next sequence number (`seq`), which is also the offset of the
//! `room:{id}` channel. The store assigns `seq` inside the transaction that records the
//! change, so the stream has no gap and no duplicate, and it survives restarts.

mod common;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub type UserId = i64;
pub type RoomId = i64;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub created_at: Millis,
    /// When the user was last connected; `None` if never.
    pub last_seen: Option<Millis>,
}

/// A user with the password hash, for login only.
#[derive(Debug, Clone)]
pub struct UserAuth {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Group,
    Dm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub kind: RoomKind,
    /// Group name; for a DM, empty (the UI shows the other member).
    pub name: String,
    /// Epoch of the room's event stream (fixed at creation).
    pub epoch: String,
    /// Seq of the room's latest event; 0 when it has none.
    pub last_seq: u64,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: User,
    pub role: Role,
    /// Highest seq this member's devices have received (monotonic).
    pub delivered_seq: u64,
    /// Highest seq this member has seen (monotonic, never above the room's last seq).
    pub read_seq: u64,
    pub joined_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub user_ids: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room_id: RoomId,
    /// Seq of the event that created the message; its id within the room.
    pub seq: u64,
    pub sender_id: UserId,
    pub sender: String,
    /// Empty once deleted.
    pub text: String,
    pub client_msg_id: String,
    pub reply_to: Option<u64>,
    pub created_at: Millis,
    pub edited_at: Option<Millis>,
    pub deleted: bool,
    pub reactions: Vec<Reaction>,
}

/// Characters of a message a notification quotes in its payload's `preview`. The store keeps
/// previews in step with the message: an edit or a delete rewrites them.
pub const NOTIFICATION_PREVIEW_CHARS: usize = 140;

/// One entry of a room's event stream, as published on `room:{id}` and replayed on
/// recovery. Serialized with a `type` tag: `{"type":"message","message":{..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    /// A new message (`message.seq` is this event's seq).
    Message { message: Message },
    /// The message's text changed; carries the whole message as it now is.
    Edit { message: Message },
    /// The message became a tombstone.
    Delete { message: Message },
    /// The message's reactions changed.
    Reaction { message: Message },
    /// Membership or name changed; carries the room as it now is.
    RoomUpdated { room: Room, member_ids: Vec<UserId> },
}

/// A stored stream event: its seq and its JSON (what goes on the wire as `data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub room_id: RoomId,
    pub seq: u64,
    pub json: String,
}

/// A room as its member sees it in the room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room: Room,
    pub role: Role,
    pub last_message: Option<Message>,
    /// Messages from others after this member's read marker, tombstones excluded.
    pub unread: u64,
    pub members: Vec<Member>,
}

pub struct NewMessage {
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub text: String,
    pub client_msg_id: String,
    pub reply_to: Option<u64>,
}

/// Result of appending a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now; the event must be published. `unread`: every other member's unread
    /// count with this message counted, read in the transaction that stored it (what a
    /// new-message notice tells them, without another query).
    New { message: Message, event: StoredEvent, unread: Vec<(UserId, u64)> },
    /// The same sender already sent this `client_msg_id`: the original, nothing new.
    Duplicate(Message),
}

/// Which messages of a room to list, newest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` messages.
    Latest,
    /// The `limit` messages just before this seq.
    Before(u64),
    /// The `limit` messages just after this seq.
    After(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: i64,
    pub user_id: UserId,
    /// "message", "mention", "invite", ...
    pub kind: String,
    pub room_id: Option<RoomId>,
    pub seq: Option<u64>,
    /// Free-form JSON object with what the UI shows.
    pub payload: serde_json::Value,
    pub read: bool,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub room_id: RoomId,
    pub room_name: String,
    pub seq: u64,
    pub sender: String,
    /// The matching text with the matches wrapped in `[` and `]`.
    pub snippet: String,
    pub created_at: Millis,
}

/// Outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Valid: it is now used up, and `new_hash` replaces it in the same family.
    Rotated { user_id: UserId },
    /// Already used (or revoked): possible theft, the whole family is now revoked.
    Reused,
    /// Unknown or expired.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The caller may not change this (e.g. someone else's message).
    #[error("forbidden")]
    Forbidden,
    /// A bound of [`StoreLimits`] would be passed; says which, for a person.
    #[error("{0}")]
    LimitExceeded(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which database keeps the chat (config `store.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One file in `data_dir`: the embedded default, for one node.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every node of a cluster.
    Postgres,
}

/// Config section `[store]`: where the chat keeps its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(rename = "type")]
    pub kind: StoreKind,
    /// Database of the "postgres" store.
    pub postgres_url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            postgres_url: "postgres://postgres@127.0.0.1:5432/hubbub".into(),
        }
    }
}

/// Bounds on what one member can pile onto shared rows. A reaction change stores the whole
/// message (with all its reactions) as a room event, so without them one member adding
/// distinct "emoji" in a loop would grow the event log quadratically and every history
/// answer with it. Checked inside the writing transaction: concurrent adds cannot pass them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Reactions one user may have on one message.
    pub reactions_per_user: u32,
    /// Distinct reactions (emoji) one message may carry.
    pub distinct_reactions: u32,
    /// Log-in sessions (refresh-token families) kept per user: a new log-in beyond it drops
    /// the oldest (signs it out), so logging in again and again cannot grow the table.
    pub sessions_per_user: u32,
    /// Used refresh tokens kept per session, to recognize one presented again (which revokes
    /// the session); older ones are forgotten (then answered as unknown), so refreshing in a
    /// loop cannot grow the table.
    pub refresh_history: u32,
    /// Notifications kept per user: each new one beyond it drops the oldest, so mentions
    /// and invitations from others cannot grow a user's list without end.
    pub notifications_per_user: u32,
    /// Rooms (groups and DMs) one user may be a member of: bounds the user's rooms answer.
    pub rooms_per_user: u32,
    /// Members one room may have: bounds its view, and every `RoomUpdated` event carries the
    /// member ids (a room growing by invites would grow its log quadratically without it).
    pub members_per_room: u32,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            reactions_per_user: 10,
            distinct_reactions: 40,
            sessions_per_user: 50,
            refresh_history: 8,
            notifications_per_user: 1000,
            rooms_per_user: 1000,
            members_per_room: 1000,
        }
    }
}

#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Finishes pending writes and closes the database, at the end of a graceful shutdown.
    async fn close(&self) {}

    // Accounts.
    /// `Conflict` when the username is taken (case-insensitively).
    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<User>;
    async fn user_auth(&self, username: &str) -> StoreResult<Option<UserAuth>>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    async fn set_last_seen(&self, id: UserId, at: Millis) -> StoreResult<()>;

    // Refresh tokens (stored as hashes; a family is one login's chain of rotations).
    /// Stores a new family's first token; the user's families beyond
    /// [`StoreLimits::sessions_per_user`] (the oldest) are deleted.
    async fn insert_refresh(
        &self,
        hash: &str,
        user_id: UserId,
        family: &str,
        expires_at: Millis,
    ) -> StoreResult<()>;
    /// Uses up `hash` and stores `new_hash` (same family, `new_expires_at`) when valid; the
    /// family keeps its [`StoreLimits::refresh_history`] latest used tokens.
    async fn rotate_refresh(
        &self,
        hash: &str,
        new_hash: &str,
        new_expires_at: Millis,
        now: Millis,
    ) -> StoreResult<RefreshOutcome>;
    /// Revokes the family `hash` belongs to; false when unknown.
    async fn revoke_refresh(&self, hash: &str) -> StoreResult<bool>;

    // Rooms and members.
    async fn create_group(&self, name: &str, owner: UserId) -> StoreResult<Room>;
    /// The DM of two users, created on first use: the same pair always gets the same room.
    async fn dm(&self, a: UserId, b: UserId) -> StoreResult<Room>;
    async fn room(&self, id: RoomId) -> StoreResult<Option<Room>>;
    async fn role(&self, room: RoomId, user: UserId) -> StoreResult<Option<Role>>;
    /// Adds a member (no-op returning false when already one). Appends a `RoomUpdated` event.
    async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<Option<StoredEvent>>;
    /// Removes a member. Appends a `RoomUpdated` event.
    async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<StoredEvent>;
    async fn rename_room(&self, room: RoomId, name: &str) -> StoreResult<StoredEvent>;
    async fn members(&self, room: RoomId) -> StoreResult<Vec<Member>>;
    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>>;

    // Messages: every change is an event with the room's next seq.
    /// Durable once this returns (group commit: concurrent senders share one commit).
    async fn append_message(&self, message: NewMessage) -> StoreResult<Appended>;
    /// `Forbidden` unless `editor` sent it; `NotFound` for an unknown or deleted message.
    /// The message's earlier events and the notifications quoting it are rewritten with the
    /// new text in the same transaction: the old text is kept nowhere.
    async fn edit_message(
        &self,
        room: RoomId,
        seq: u64,
        editor: UserId,
        text: &str,
    ) -> StoreResult<(Message, StoredEvent)>;
    /// Makes the message a tombstone (its text empty, its reactions gone); its earlier events
    /// and the notifications quoting it lose the text in the same transaction.
    async fn delete_message(&self, room: RoomId, seq: u64, by: UserId)
        -> StoreResult<(Message, StoredEvent)>;
    /// Adds (or with `add == false` removes) a reaction.
    async fn react(
        &self,
        room: RoomId,
        seq: u64,
        user: UserId,
        emoji: &str,
        add: bool,
    ) -> StoreResult<(Message, StoredEvent)>;
    async fn message(&self, room: RoomId, seq: u64) -> StoreResult<Option<Message>>;
    /// Up to `limit` messages, oldest first.
    async fn messages(&self, room: RoomId, page: Page, limit: u32) -> StoreResult<Vec<Message>>;
    /// The room's events with seq > `after`, oldest first, at most `limit`.
    async fn events_after(&self, room: RoomId, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>>;

    // Receipts: monotonic (an older marker never moves one back); returns the markers now.
    async fn mark(
        &self,
        room: RoomId,
        user: UserId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> StoreResult<(u64, u64)>;
    async fn unread(&self, room: RoomId, user: UserId) -> StoreResult<u64>;
    /// Every member of the room (id, username) with their unread count, in one read (the
    /// chat matches @mentions against it; new-message notices take their counts from
    /// [`Appended::New`]).
    async fn unread_by_member(&self, room: RoomId) -> StoreResult<Vec<(UserId, String, u64)>>;

    // Notifications.
    async fn add_notification(
        &self,
        user: UserId,
        kind: &str,
        room: Option<RoomId>,
        seq: Option<u64>,
        payload: &serde_json::Value,
    ) -> StoreResult<Notification>;
    async fn notifications(&self, user: UserId, limit: u32) -> StoreResult<Vec<Notification>>;
    /// Marks the given notifications (all when `ids` is empty) read.
    async fn read_notifications(&self, user: UserId, ids: &[i64]) -> StoreResult<()>;

    /// Full-text search over the messages of the rooms `user` is a member of.
    async fn search(&self, user: UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>>;
}
