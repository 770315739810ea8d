//! PostgreSQL implementation of [`ChatStore`], for a cluster: every node opens the same
//! database, and the database alone orders what the nodes write. Same semantics as
//! [`crate::sqlite::SqliteStore`] (its module doc lists the choices the trait leaves open);
//! what differs is how they hold with several writers at once.
//!
//! # One file per entity
//!
//! [`accounts`] (users, refresh tokens), [`rooms`] (rooms, members, the room list),
//! [`messages`] (the event stream: appends with group commit, edits, deletes, reactions,
//! receipts and unread counters), [`notifications`], [`search`]. This file has the store, its
//! migrations and the helpers they share.
//!
//! # Several writers
//!
//! * **Seq**: every change to a room takes its seq with
//!   `UPDATE rooms SET last_seq = last_seq + 1 ... RETURNING last_seq` in the transaction
//!   that stores the event: the row lock it takes orders the writers of one room across all
//!   nodes until commit, so seqs stay contiguous (a rolled-back change gives its seq back with
//!   the rest of its transaction).
//! * **Lock order** (no deadlock between the store's own transactions): a room's row first
//!   ([`lock_room`]), then message rows, then member rows, then user rows. A group commit
//!   takes its rooms in ascending id order. Deadlocks the database still detects (with other
//!   clients of the database) and serialization failures are retried.
//! * **Limits** (rooms per user, members per room, reactions per message, sessions and
//!   notifications per user) are counted under the row lock of what they bound (the user's
//!   row, the room's row), so two nodes adding at once cannot both pass the last free place.
//! * **`client_msg_id`**: a unique index per sender. A retry that another node is storing at
//!   the same moment waits for it (`ON CONFLICT DO NOTHING`) and is answered as
//!   [`Appended::Duplicate`], giving back the seq it had taken.
//! * **Receipts** read the room's row `FOR SHARE` before moving a marker, so a marker never
//!   recounts the unread messages against a snapshot older than a concurrent append.
//!
//! # Group commit
//!
//! As in SQLite: [`ChatStore::append_message`] queues the message for one writer task per
//! store, which stores everything queued (up to [`MAX_BATCH`]) in one transaction and commits
//! once. A message whose statements fail rolls the batch back, and the batch is stored again
//! without it (PostgreSQL aborts a transaction at its first error). Each node has its own
//! writer task; the room row lock orders them.
//!
//! # Migrations
//!
//! `migrations/postgres/*.sql`, embedded with `sqlx::migrate!` and run at open; sqlx's
//! migrator holds an advisory lock while it runs, so nodes starting together apply them once.

pub mod accounts;
pub mod messages;
pub mod notifications;
pub mod rooms;
pub mod search;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

use crate::common::{decode_error, group_reactions, now_millis, parse_role, parse_room_kind, to_i64, to_u64};
use crate::{
    Appended, ChatStore, Member, Message, Millis, NewMessage, Notification, Page, Reaction, RefreshOutcome,
    Role, Room, RoomEvent, RoomId, RoomKind, RoomSummary, SearchHit, StoreError, StoreLimits, StoreResult,
    StoredEvent, User, UserAuth, UserId,
};

pub use messages::MAX_BATCH;

/// The schema, applied at open.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections of a store's pool unless [`PgStore::open_with_pool_size`] says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// How long opening waits for the database, and a query for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The PostgreSQL [`ChatStore`]. Cheap to clone (clones share the pool and the writer task).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    appends: mpsc::Sender<messages::AppendRequest>,
    commits: Arc<AtomicU64>,
    limits: StoreLimits,
}

impl PgStore {
    /// Connects to the database at `url` and applies pending migrations. Must be called
    /// within a Tokio runtime (it spawns the group-commit writer task, which ends when the
    /// last clone of the store is dropped).
    pub async fn open(url: &str) -> StoreResult<PgStore> {
        Self::open_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// [`PgStore::open`] with at most `connections` connections (one of them, at times, the
    /// group commit's).
    pub async fn open_with_pool_size(url: &str, connections: u32) -> StoreResult<PgStore> {
        let options = PgConnectOptions::from_str(url)?;
        // One connection first: the pool would retry until its timeout and then only say
        // "timed out", where this says why (refused, unknown database, authentication).
        tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;
        let (appends, queue) = mpsc::channel(messages::QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(messages::writer_task(pool.clone(), queue, commits.clone()));
        Ok(PgStore { pool, appends, commits, limits: StoreLimits::default() })
    }

    /// The same store with these bounds (the defaults otherwise).
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How many transactions the group-commit writer has committed (each stores one or more
    /// appended messages).
    pub fn append_commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The pool, for tests that look at the rows themselves.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin().await?)
    }

    /// A read-only transaction whose queries all see one snapshot.
    async fn begin_snapshot(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the entities.

/// The columns of a [`Message`] (without reactions), for [`message_from_row`].
macro_rules! message_sql {
    ($tail:literal) => {
        concat!(
            "SELECT m.room_id, m.seq, m.sender_id, u.username, m.text, m.client_msg_id, m.reply_to, \
             m.created_at, m.edited_at, m.deleted \
             FROM messages m JOIN users u ON u.id = m.sender_id ",
            $tail
        )
    };
}
pub(crate) use message_sql;

/// The columns of a [`Member`], for [`member_from_row`].
macro_rules! member_sql {
    ($tail:literal) => {
        concat!(
            "SELECT mm.room_id, u.id, u.username, u.created_at, u.last_seen, mm.role, mm.delivered_seq, \
             mm.read_seq, mm.joined_at \
             FROM members mm JOIN users u ON u.id = mm.user_id ",
            $tail
        )
    };
}
pub(crate) use member_sql;

/// The columns of a [`Room`], for [`room_from_row`].
const ROOM_COLUMNS: &str = "id, kind, name, epoch, last_seq, created_at";

/// Maps constraint violations to `Conflict` (unique) and `NotFound` (foreign key).
fn constraint(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.kind() {
            ErrorKind::UniqueViolation => return StoreError::Conflict,
            ErrorKind::ForeignKeyViolation => return StoreError::NotFound,
            _ => {}
        }
    }
    StoreError::Database(e)
}

fn user_from_row(row: &PgRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        created_at: row.try_get("created_at")?,
        last_seen: row.try_get("last_seen")?,
    })
}

fn room_from_row(row: &PgRow) -> StoreResult<Room> {
    Ok(Room {
        id: row.try_get("id")?,
        kind: parse_room_kind(row.try_get("kind")?)?,
        name: row.try_get("name")?,
        epoch: row.try_get("epoch")?,
        last_seq: to_u64(row.try_get("last_seq")?),
        created_at: row.try_get("created_at")?,
    })
}

fn message_from_row(row: &PgRow) -> StoreResult<Message> {
    Ok(Message {
        room_id: row.try_get("room_id")?,
        seq: to_u64(row.try_get("seq")?),
        sender_id: row.try_get("sender_id")?,
        sender: row.try_get("username")?,
        text: row.try_get("text")?,
        client_msg_id: row.try_get::<Option<String>, _>("client_msg_id")?.unwrap_or_default(),
        reply_to: row.try_get::<Option<i64>, _>("reply_to")?.map(to_u64),
        created_at: row.try_get("created_at")?,
        edited_at: row.try_get("edited_at")?,
        deleted: row.try_get("deleted")?,
        reactions: Vec::new(),
    })
}

fn member_from_row(row: &PgRow) -> StoreResult<Member> {
    Ok(Member {
        user: user_from_row(row)?,
        role: parse_role(row.try_get("role")?)?,
        delivered_seq: to_u64(row.try_get("delivered_seq")?),
        read_seq: to_u64(row.try_get("read_seq")?),
        joined_at: row.try_get("joined_at")?,
    })
}

/// Reaction rows `(room_id, seq, emoji, user_id)` grouped per message.
fn reactions_from_rows(rows: &[PgRow]) -> StoreResult<HashMap<(RoomId, u64), Vec<Reaction>>> {
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, to_u64(row.try_get(1)?), row.try_get(2)?, row.try_get(3)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(group_reactions(rows))
}

/// Fills in the reactions of `messages`, which all belong to one room.
async fn attach_reactions(conn: &mut PgConnection, messages: &mut [Message]) -> StoreResult<()> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else { return Ok(()) };
    let (lo, hi) = (first.seq.min(last.seq), first.seq.max(last.seq));
    let rows = sqlx::query(
        "SELECT room_id, seq, emoji, user_id FROM reactions \
         WHERE room_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY id",
    )
    .bind(first.room_id)
    .bind(to_i64(lo))
    .bind(to_i64(hi))
    .fetch_all(&mut *conn)
    .await?;
    let mut grouped = reactions_from_rows(&rows)?;
    for message in messages {
        message.reactions = grouped.remove(&(message.room_id, message.seq)).unwrap_or_default();
    }
    Ok(())
}

async fn load_message(conn: &mut PgConnection, room: RoomId, seq: u64) -> StoreResult<Option<Message>> {
    let row = sqlx::query(message_sql!("WHERE m.room_id = $1 AND m.seq = $2"))
        .bind(room)
        .bind(to_i64(seq))
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut message = message_from_row(&row)?;
    attach_reactions(conn, std::slice::from_mut(&mut message)).await?;
    Ok(Some(message))
}

async fn load_room(conn: &mut PgConnection, room: RoomId) -> StoreResult<Option<Room>> {
    let row = sqlx::query(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1"))
        .bind(room)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(room_from_row).transpose()
}

/// Locks the room's row until the end of the transaction (first of the lock order: see the
/// module doc) and returns the room; `NotFound` when unknown.
async fn lock_room(conn: &mut PgConnection, room: RoomId) -> StoreResult<Room> {
    let row = sqlx::query(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1 FOR NO KEY UPDATE"))
        .bind(room)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(room_from_row).transpose()?.ok_or(StoreError::NotFound)
}

/// Locks the rows of `users` (in id order) until the end of the transaction: what is counted
/// per user (rooms, sessions, notifications) is then counted by one transaction at a time.
async fn lock_users(conn: &mut PgConnection, users: &[UserId]) -> StoreResult<()> {
    sqlx::query("SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(users)
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the room's next seq (`NotFound` for an unknown room).
async fn next_seq(conn: &mut PgConnection, room: RoomId) -> StoreResult<u64> {
    let seq: Option<i64> =
        sqlx::query_scalar("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind(room)
            .fetch_optional(&mut *conn)
            .await?;
    seq.map(to_u64).ok_or(StoreError::NotFound)
}

/// The seq of the message an event is about, if any.
fn message_seq_of(event: &RoomEvent) -> Option<u64> {
    match event {
        RoomEvent::Message { message }
        | RoomEvent::Edit { message }
        | RoomEvent::Delete { message }
        | RoomEvent::Reaction { message } => Some(message.seq),
        RoomEvent::RoomUpdated { .. } => None,
    }
}

fn encode_event(event: &RoomEvent) -> StoreResult<String> {
    serde_json::to_string(event).map_err(|e| decode_error(format!("event encoding: {e}")))
}

async fn insert_event(
    conn: &mut PgConnection,
    room: RoomId,
    seq: u64,
    event: &RoomEvent,
) -> StoreResult<StoredEvent> {
    let json = encode_event(event)?;
    sqlx::query(
        "INSERT INTO events (room_id, seq, json, created_at, message_seq) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(room)
    .bind(to_i64(seq))
    .bind(&json)
    .bind(now_millis())
    .bind(message_seq_of(event).map(to_i64))
    .execute(&mut *conn)
    .await?;
    Ok(StoredEvent { room_id: room, seq, json })
}

/// Appends a `RoomUpdated` event carrying the room as it is after the change.
async fn room_updated(conn: &mut PgConnection, room: RoomId) -> StoreResult<StoredEvent> {
    let seq = next_seq(conn, room).await?;
    let room_now = load_room(conn, room).await?.ok_or(StoreError::NotFound)?;
    let member_ids: Vec<UserId> =
        sqlx::query_scalar("SELECT user_id FROM members WHERE room_id = $1 ORDER BY joined_at, user_id")
            .bind(room)
            .fetch_all(&mut *conn)
            .await?;
    insert_event(conn, room, seq, &RoomEvent::RoomUpdated { room: room_now, member_ids }).await
}

async fn role_in(conn: &mut PgConnection, room: RoomId, user: UserId) -> StoreResult<Option<Role>> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM members WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    role.as_deref().map(parse_role).transpose()
}

/// Whether the error is one the database asks to retry (serialization failure, deadlock).
fn transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

#[async_trait]
impl ChatStore for PgStore {
    async fn close(&self) {
        // The writer task holds a clone of the pool: closing waits for its last batch.
        self.pool.close().await;
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<User> {
        accounts::create_user(self, username, password_hash).await
    }
    async fn user_auth(&self, username: &str) -> StoreResult<Option<UserAuth>> {
        accounts::user_auth(self, username).await
    }
    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        accounts::user(self, id).await
    }
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        Ok(accounts::user_auth(self, username).await?.map(|auth| auth.user))
    }
    async fn set_last_seen(&self, id: UserId, at: Millis) -> StoreResult<()> {
        accounts::set_last_seen(self, id, at).await
    }
    async fn insert_refresh(
        &self,
        hash: &str,
        user_id: UserId,
        family: &str,
        expires_at: Millis,
    ) -> StoreResult<()> {
        accounts::insert_refresh(self, hash, user_id, family, expires_at).await
    }
    async fn rotate_refresh(
        &self,
        hash: &str,
        new_hash: &str,
        new_expires_at: Millis,
        now: Millis,
    ) -> StoreResult<RefreshOutcome> {
        accounts::rotate_refresh(self, hash, new_hash, new_expires_at, now).await
    }
    async fn revoke_refresh(&self, hash: &str) -> StoreResult<bool> {
        accounts::revoke_refresh(self, hash).await
    }

    async fn create_group(&self, name: &str, owner: UserId) -> StoreResult<Room> {
        rooms::create_group(self, name, owner).await
    }
    async fn dm(&self, a: UserId, b: UserId) -> StoreResult<Room> {
        rooms::dm(self, a, b).await
    }
    async fn room(&self, id: RoomId) -> StoreResult<Option<Room>> {
        load_room(&mut *self.pool.acquire().await?, id).await
    }
    async fn role(&self, room: RoomId, user: UserId) -> StoreResult<Option<Role>> {
        role_in(&mut *self.pool.acquire().await?, room, user).await
    }
    async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<Option<StoredEvent>> {
        rooms::add_member(self, room, user, role).await
    }
    async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<StoredEvent> {
        rooms::remove_member(self, room, user).await
    }
    async fn rename_room(&self, room: RoomId, name: &str) -> StoreResult<StoredEvent> {
        rooms::rename_room(self, room, name).await
    }
    async fn members(&self, room: RoomId) -> StoreResult<Vec<Member>> {
        rooms::members(self, room).await
    }
    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>> {
        rooms::rooms_of(self, user).await
    }

    async fn append_message(&self, message: NewMessage) -> StoreResult<Appended> {
        messages::append(self, message).await
    }
    async fn edit_message(
        &self,
        room: RoomId,
        seq: u64,
        editor: UserId,
        text: &str,
    ) -> StoreResult<(Message, StoredEvent)> {
        messages::edit(self, room, seq, editor, text).await
    }
    async fn delete_message(
        &self,
        room: RoomId,
        seq: u64,
        by: UserId,
    ) -> StoreResult<(Message, StoredEvent)> {
        messages::delete(self, room, seq, by).await
    }
    async fn react(
        &self,
        room: RoomId,
        seq: u64,
        user: UserId,
        emoji: &str,
        add: bool,
    ) -> StoreResult<(Message, StoredEvent)> {
        messages::react(self, room, seq, user, emoji, add).await
    }
    async fn message(&self, room: RoomId, seq: u64) -> StoreResult<Option<Message>> {
        let mut tx = self.begin_snapshot().await?;
        let message = load_message(&mut tx, room, seq).await?;
        tx.commit().await?;
        Ok(message)
    }
    async fn messages(&self, room: RoomId, page: Page, limit: u32) -> StoreResult<Vec<Message>> {
        messages::page(self, room, page, limit).await
    }
    async fn events_after(&self, room: RoomId, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        messages::events_after(self, room, after, limit).await
    }
    async fn mark(
        &self,
        room: RoomId,
        user: UserId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> StoreResult<(u64, u64)> {
        messages::mark(self, room, user, delivered, read).await
    }
    async fn unread(&self, room: RoomId, user: UserId) -> StoreResult<u64> {
        messages::unread(self, room, user).await
    }
    async fn unread_by_member(&self, room: RoomId) -> StoreResult<Vec<(UserId, String, u64)>> {
        messages::unread_by_member(self, room).await
    }

    async fn add_notification(
        &self,
        user: UserId,
        kind: &str,
        room: Option<RoomId>,
        seq: Option<u64>,
        payload: &serde_json::Value,
    ) -> StoreResult<Notification> {
        notifications::add(self, user, kind, room, seq, payload).await
    }
    async fn notifications(&self, user: UserId, limit: u32) -> StoreResult<Vec<Notification>> {
        notifications::list(self, user, limit).await
    }
    async fn read_notifications(&self, user: UserId, ids: &[i64]) -> StoreResult<()> {
        notifications::mark_read(self, user, ids).await
    }

    async fn search(&self, user: UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>> {
        search::search(self, user, query, limit).await
    }
}

/// A group room (`NotFound` when unknown, `Forbidden` for a DM), locked.
async fn lock_group_room(conn: &mut PgConnection, room: RoomId) -> StoreResult<Room> {
    let room = lock_room(conn, room).await?;
    if room.kind == RoomKind::Dm {
        return Err(StoreError::Forbidden);
    }
    Ok(room)
}

#[cfg(test)]
mod tests;
