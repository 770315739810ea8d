//! SQLite implementation of [`ChatStore`]: one file in the data dir, WAL, migrations applied
//! at open.
//!
//! # Connections
//!
//! * **Writer**: a pool of exactly one connection. Every write runs on it, in a
//!   `BEGIN IMMEDIATE` transaction, so writers queue (fairly) in the pool instead of spinning
//!   on `SQLITE_BUSY`, and a read-then-write transaction (`dm`, `rotate_refresh`, seq
//!   assignment) can never be interleaved with another writer. SQLite has one writer at a
//!   time anyway, so nothing is lost.
//! * **Readers**: a small read-only pool. With WAL, readers never block the writer nor each
//!   other, and see every transaction committed before they start.
//!
//! # Durability and group commit
//!
//! `synchronous = FULL`: with WAL, `NORMAL` only syncs the WAL at checkpoints, so the last
//! commits can be lost on power failure (they survive a process crash). A message is
//! acknowledged to its sender as stored, so its commit must be on disk first: `FULL` syncs the
//! WAL at every commit. What makes this affordable is group commit: [`ChatStore::append_message`]
//! does not write itself but hands the message to a single writer task, which takes everything
//! queued (up to [`MAX_BATCH`]), stores all of it in one transaction (a refused message
//! writes nothing, so it does not fail the others), commits once (one fsync), and only then
//! answers every caller.
//!
//! # Event stream
//!
//! Every change to a room takes `rooms.last_seq + 1` as its seq and inserts its event in the
//! same transaction, so a room's stream is contiguous, never reused, and durable with the
//! change itself.
//!
//! # Unread counts
//!
//! A member's unread count (messages from others, not deleted, above their read marker) is
//! read on every send (the notice to each member carries it) and for the room list, so it is
//! stored, as `members.unread`, rather than counted: counting costs one row per unread
//! message, which grows without bound in a room whose members do not read. Every write that
//! can change it updates it in the same transaction: an append (+1 for the other members), a
//! delete (-1 for the other members who had not read the message), a read marker that moves
//! (recounted above the new marker: usually nothing left to count). A member starts at 0
//! (creation, join).
//!
//! # Choices the trait leaves open
//!
//! * A room starts with `last_seq == 0`: creating it (group or DM, with its first members)
//!   appends no event; later membership changes do.
//! * A member who joins starts with both markers at the join event's seq: earlier history is
//!   not unread for them.
//! * `RoomSummary::last_message` is the room's latest message, a tombstone included (marked
//!   `deleted`, empty text): the room list then agrees with the history view.
//! * `append_message` requires the room to exist (`NotFound`) and the sender to be a member
//!   (`Forbidden`); `reply_to` must name a message of the room (`NotFound`). An empty
//!   `client_msg_id` means "no deduplication".
//! * `delete_message` is allowed to the sender and to the room's admins and owner.
//! * `react`: `Forbidden` for a non-member; adding a reaction already there is `Conflict` and
//!   removing one that is not there is `NotFound` (no change, so no event).
//! * Membership changes and renames of a DM are `Forbidden`.
//! * `unread` and `mark` are `NotFound` for a non-member.
//! * `search` returns the newest matches first; every word of the query must match, the last
//!   one as a prefix.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::common::{
    self, decode_error, now_millis, parse_role, parse_room_kind, role_str, search_terms, to_i64, to_u64,
};
use crate::{
    Appended, ChatStore, Member, Message, Millis, NewMessage, Notification, Page, Reaction, RefreshOutcome,
    Role, Room, RoomEvent, RoomId, RoomKind, RoomSummary, SearchHit, StoreError, StoreLimits, StoreResult,
    StoredEvent, User, UserAuth, UserId, NOTIFICATION_PREVIEW_CHARS,
};

/// Most appends stored by one group commit.
pub const MAX_BATCH: usize = 256;
/// Appends that may wait for the writer task before senders wait to enqueue.
const QUEUE: usize = 4096;
/// How long a connection waits for another process's lock before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;

/// The schema, as an ordered list of scripts. Script `i` brings the schema to version `i + 1`.
/// NEVER edit a script once released (the checksum recorded at apply time is verified at every
/// open): append a new one instead.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER
);

CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

CREATE TABLE rooms (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('group', 'dm')),
    name TEXT NOT NULL,
    -- "{min user id}:{max user id}" for a DM, NULL for a group.
    dm_key TEXT UNIQUE,
    epoch TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    CHECK ((kind = 'dm') = (dm_key IS NOT NULL))
);

CREATE TABLE members (
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq INTEGER NOT NULL DEFAULT 0,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    sender_id INTEGER NOT NULL REFERENCES users(id),
    text TEXT NOT NULL,
    -- NULL when the client gave none (no deduplication).
    client_msg_id TEXT,
    reply_to INTEGER,
    created_at INTEGER NOT NULL,
    edited_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (room_id, seq),
    UNIQUE (sender_id, client_msg_id)
);

CREATE TABLE reactions (
    id INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    emoji TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (room_id, seq, emoji, user_id),
    FOREIGN KEY (room_id, seq) REFERENCES messages(room_id, seq) ON DELETE CASCADE
);

CREATE TABLE events (
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq)
);

CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    room_id INTEGER REFERENCES rooms(id) ON DELETE SET NULL,
    seq INTEGER,
    payload TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX notifications_user ON notifications(user_id, id);

-- Full-text index over the text of messages (external content: the text is stored once, in
-- `messages`), mirroring it exactly through the triggers. A tombstone's text is empty, so it
-- has no token and matches nothing.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    text,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
END;
"#,
    // 2: each member's unread count, kept up to date by every write that changes it (see the
    // module doc), so that reading it does not count messages.
    r#"
ALTER TABLE members ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;

UPDATE members SET unread = (
    SELECT COUNT(*) FROM messages x
    WHERE x.room_id = members.room_id AND x.seq > members.read_seq
      AND x.sender_id != members.user_id AND x.deleted = 0
);
"#,
    // 3: the log keeps no text its author removed. Each event knows the message it is about,
    // so that an edit or a delete rewrites that message's earlier events (see `redact`); what
    // earlier versions kept is redacted here. (FTS5's own secure-delete option is not used:
    // with it, SQLite 3.46's integrity-check reports the index as corrupt.)
    r#"
ALTER TABLE events ADD COLUMN message_seq INTEGER;

UPDATE events SET message_seq = json_extract(json, '$.message.seq')
WHERE json_extract(json, '$.type') IN ('message', 'edit', 'delete', 'reaction');

CREATE INDEX events_message ON events(room_id, message_seq) WHERE message_seq IS NOT NULL;

UPDATE events SET json = json_set(json, '$.message.text', (
    SELECT m.text FROM messages m WHERE m.room_id = events.room_id AND m.seq = events.message_seq))
WHERE message_seq IS NOT NULL AND EXISTS (
    SELECT 1 FROM messages m WHERE m.room_id = events.room_id AND m.seq = events.message_seq
      AND (m.deleted = 1 OR m.edited_at IS NOT NULL));

UPDATE notifications SET payload = json_set(payload, '$.preview', (
    SELECT substr(m.text, 1, 140) FROM messages m
    WHERE m.room_id = notifications.room_id AND m.seq = notifications.seq))
WHERE json_type(payload, '$.preview') = 'text' AND EXISTS (
    SELECT 1 FROM messages m WHERE m.room_id = notifications.room_id AND m.seq = notifications.seq
      AND (m.deleted = 1 OR m.edited_at IS NOT NULL));

"#,
];

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

/// The columns of a [`Room`], for [`room_from_row`].
macro_rules! room_columns {
    () => {
        "id, kind, name, epoch, last_seq, created_at"
    };
}
const ROOM_SQL: &str = concat!("SELECT ", room_columns!(), " FROM rooms WHERE id = ?");
macro_rules! user_sql {
    ($tail:literal) => {
        concat!("SELECT id, username, created_at, last_seen, password_hash FROM users ", $tail)
    };
}

/// The SQLite [`ChatStore`]. Cheap to clone (all clones share the database and writer task).
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    appends: mpsc::Sender<AppendRequest>,
    commits: Arc<AtomicU64>,
    limits: StoreLimits,
}

struct AppendRequest {
    message: NewMessage,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if needed) the database at `path` and
    /// applies pending migrations. Must be called within a Tokio runtime (it spawns the writer
    /// task, which ends when the last clone of the store is dropped).
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || std::fs::create_dir_all(dir))
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let base = SqliteConnectOptions::new().filename(path).foreign_keys(true).busy_timeout(BUSY_TIMEOUT);
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Removed text (edits, deletes: see `redact`) is overwritten in the file, not
            // only unlinked from the b-tree.
            .pragma("secure_delete", "ON");
        // No reconnect in the middle of the traffic.
        let writer = one_connection().connect_with(writer_options).await?;
        migrate(&writer, MIGRATIONS).await?;
        // Opened after the writer: the file exists and is in WAL mode (persistent).
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await?;
        Ok(Self::start(writer, readers))
    }

    /// A private in-memory database (for tests): one connection serves reads and writes.
    pub async fn open_in_memory() -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // The database lives as long as its connection.
        let pool = one_connection().connect_with(options).await?;
        migrate(&pool, MIGRATIONS).await?;
        Ok(Self::start(pool.clone(), pool))
    }

    fn start(writer: SqlitePool, readers: SqlitePool) -> SqliteStore {
        let (appends, queue) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer_task(writer.clone(), queue, commits.clone()));
        SqliteStore { writer, readers, appends, commits, limits: StoreLimits::default() }
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

    /// Closes the connections (waiting for those in use); later calls fail. The readers go
    /// first, so that the writer can fold the WAL into the database and truncate it: what
    /// earlier versions of rewritten pages held (text removed by an edit or a delete) does not
    /// outlive a clean shutdown in the WAL file.
    pub async fn close(&self) {
        self.readers.close().await;
        // (In memory, the readers are the writer: nothing to fold.)
        if !self.writer.is_closed() {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
                tracing::warn!(error = %e, "WAL checkpoint at close failed");
            }
        }
        self.writer.close().await;
    }

    /// Whether a refresh token with this hash is stored (read from a reader).
    async fn refresh_known(&self, hash: &str) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM refresh_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.readers)
            .await?;
        Ok(found.is_some())
    }

    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// A pool of one connection, kept open for the life of the store.
fn one_connection() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
}

// ---------------------------------------------------------------------------------------------
// Migrations.

/// FNV-1a: a stable checksum of a migration script (std's hashers are not stable).
fn checksum(script: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in script.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Brings the database to the version of the last of `migrations` (always [`MIGRATIONS`],
/// except in tests that build an older database).
async fn migrate(pool: &SqlitePool, migrations: &[&str]) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            checksum TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )
    .execute(&mut *conn)
    .await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let applied = sqlx::query("SELECT version, checksum FROM schema_version ORDER BY version")
        .fetch_all(&mut *tx)
        .await?;
    for (i, row) in applied.iter().enumerate() {
        let version: i64 = row.try_get(0)?;
        let sum: String = row.try_get(1)?;
        let expected = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if version != expected {
            return Err(StoreError::Migration(format!(
                "schema_version has {version} where {expected} was expected"
            )));
        }
        let Some(script) = migrations.get(i) else {
            return Err(StoreError::Migration(format!(
                "the database is at schema version {}, newer than this program ({})",
                applied.len(),
                migrations.len()
            )));
        };
        if checksum(script) != sum {
            return Err(StoreError::Migration(format!(
                "migration {version} was edited after it was applied"
            )));
        }
    }
    for (i, script) in migrations.iter().enumerate().skip(applied.len()) {
        let version = i + 1;
        sqlx::raw_sql(script)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Migration(format!("migration {version}: {e}")))?;
        sqlx::query("INSERT INTO schema_version (version, checksum, applied_at) VALUES (?, ?, ?)")
            .bind(i64::try_from(version).unwrap_or(i64::MAX))
            .bind(checksum(script))
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Group commit.

async fn writer_task(pool: SqlitePool, mut queue: mpsc::Receiver<AppendRequest>, commits: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        run_batch(&pool, &mut batch, &commits).await;
        batch.clear();
    }
}

/// Why a try at storing a batch failed.
enum BatchFailure {
    /// Storing the message at this index failed, maybe half-way: the batch is tried again
    /// without it.
    Message(usize, sqlx::Error),
    /// The transaction itself failed: nothing of the batch is stored.
    Batch(sqlx::Error),
}

/// Stores `batch` in one transaction, then answers every request. A message whose writing
/// fails is answered with its error and the rest of the batch is stored without it, in a
/// new transaction (failures are rare: no savepoint per message is paid for them).
async fn run_batch(pool: &SqlitePool, batch: &mut Vec<AppendRequest>, commits: &AtomicU64) {
    let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
    let outcome = loop {
        match try_batch(pool, batch, &failed).await {
            Ok(results) => break Ok(results),
            Err(BatchFailure::Message(index, e)) => failed[index] = Some(StoreError::Database(e)),
            Err(BatchFailure::Batch(e)) => break Err(e),
        }
    };
    match outcome {
        Ok(results) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for ((request, result), failure) in batch.drain(..).zip(results).zip(failed) {
                let _ = request.reply.send(failure.map_or(result, Err));
            }
        }
        Err(e) => {
            // Nothing of the batch is stored (the transaction rolls back when dropped).
            tracing::error!(error = %e, size = batch.len(), "group commit failed");
            let message = format!("group commit failed: {e}");
            for (request, failure) in batch.drain(..).zip(failed) {
                let error = failure.unwrap_or_else(|| {
                    StoreError::Database(sqlx::Error::Io(std::io::Error::other(message.clone())))
                });
                let _ = request.reply.send(Err(error));
            }
        }
    }
}

/// One try at storing the messages of `batch` not `failed` yet, in one transaction. Returns
/// a result for every request (those of failed ones are placeholders).
async fn try_batch(
    pool: &SqlitePool,
    batch: &[AppendRequest],
    failed: &[Option<StoreError>],
) -> Result<Vec<StoreResult<Appended>>, BatchFailure> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(BatchFailure::Batch)?;
    let mut results = Vec::with_capacity(batch.len());
    for (index, request) in batch.iter().enumerate() {
        if failed[index].is_some() {
            results.push(Err(StoreError::NotFound));
            continue;
        }
        match append_one(&mut tx, &request.message).await {
            Ok(appended) => results.push(Ok(appended)),
            // Refusals are decided before the message writes anything: the batch goes on.
            Err(
                e @ (StoreError::NotFound
                | StoreError::Forbidden
                | StoreError::Conflict
                | StoreError::LimitExceeded(_)),
            ) => results.push(Err(e)),
            // SQLite refused a statement of this message: the others may still be stored.
            Err(StoreError::Database(e @ sqlx::Error::Database(_))) => {
                return Err(BatchFailure::Message(index, e))
            }
            // The connection failed (I/O, the worker thread): no point trying again.
            Err(StoreError::Database(e)) => return Err(BatchFailure::Batch(e)),
            Err(StoreError::Migration(e)) => return Err(BatchFailure::Batch(sqlx::Error::Protocol(e))),
        }
    }
    tx.commit().await.map_err(BatchFailure::Batch)?;
    Ok(results)
}

/// Stores one message (or finds its original) inside the batch's transaction. A refusal
/// (`NotFound`, `Forbidden`) is decided before anything is written, so the batch needs no
/// savepoint per message (two round trips fewer to sqlx's SQLite thread for each); any other
/// error may leave the message half-written, and the batch is tried again without it.
async fn append_one(conn: &mut SqliteConnection, new: &NewMessage) -> StoreResult<Appended> {
    let client_msg_id = (!new.client_msg_id.is_empty()).then_some(new.client_msg_id.as_str());
    if let Some(reply_to) = new.reply_to {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM messages WHERE room_id = ? AND seq = ?)")
                .bind(new.room_id)
                .bind(to_i64(reply_to))
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Err(StoreError::NotFound);
        }
    }
    // One statement for the usual case: takes the room's next seq, but only when the message
    // will be stored (the sender is a member and this is not a retry of a stored
    // `client_msg_id`; otherwise it adds 0), and returns what decides it. Each statement is
    // a round trip to sqlx's SQLite thread, and the group commit's writer does them one
    // after the other.
    let row = sqlx::query(
        "UPDATE rooms SET last_seq = last_seq + ( \
             EXISTS (SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2) \
             AND NOT EXISTS (SELECT 1 FROM messages WHERE sender_id = ?2 AND client_msg_id = ?3)) \
         WHERE id = ?1 \
         RETURNING last_seq, (SELECT username FROM users WHERE id = ?2), \
             EXISTS (SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2), \
             EXISTS (SELECT 1 FROM messages WHERE sender_id = ?2 AND client_msg_id = ?3)",
    )
    .bind(new.room_id)
    .bind(new.sender_id)
    .bind(client_msg_id)
    .fetch_optional(&mut *conn)
    .await?;
    // A retry is answered with the original, even when the room is unknown or the sender
    // has left since.
    let retry = match &row {
        Some(row) => row.try_get::<bool, _>(3)?,
        None => client_msg_id.is_some(),
    };
    if let (true, Some(id)) = (retry, client_msg_id) {
        let original = sqlx::query(message_sql!("WHERE m.sender_id = ? AND m.client_msg_id = ?"))
            .bind(new.sender_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = original {
            let mut message = message_from_row(&row)?;
            attach_reactions(conn, std::slice::from_mut(&mut message)).await?;
            return Ok(Appended::Duplicate(message));
        }
    }
    let row = row.ok_or(StoreError::NotFound)?;
    let sender = row.try_get::<Option<String>, _>(1)?;
    if !row.try_get::<bool, _>(2)? {
        return Err(if sender.is_none() { StoreError::NotFound } else { StoreError::Forbidden });
    }
    // Past this point the seq is taken: no refusal any more. (Members reference their user,
    // and foreign keys are enforced: the name is there.)
    let sender = sender.ok_or_else(|| {
        decode_error(format!("member {} of room {} has no user row", new.sender_id, new.room_id))
    })?;
    let seq = to_u64(row.try_get::<i64, _>(0)?);
    let now = now_millis();
    sqlx::query(
        "INSERT INTO messages (room_id, seq, sender_id, text, client_msg_id, reply_to, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(new.room_id)
    .bind(to_i64(seq))
    .bind(new.sender_id)
    .bind(&new.text)
    .bind(client_msg_id)
    .bind(new.reply_to.map(to_i64))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    // Unread for every other member. Markers never pass `rooms.last_seq`, so a new message is
    // above every one of them (the `read_seq` test is only the definition spelled out).
    let unread: Vec<(UserId, i64)> = sqlx::query_as(
        "UPDATE members SET unread = unread + 1 WHERE room_id = ?1 AND user_id != ?2 AND read_seq < ?3 \
         RETURNING user_id, unread",
    )
    .bind(new.room_id)
    .bind(new.sender_id)
    .bind(to_i64(seq))
    .fetch_all(&mut *conn)
    .await?;
    let mut unread: Vec<(UserId, u64)> = unread.into_iter().map(|(user, n)| (user, to_u64(n))).collect();
    unread.sort_unstable();
    let message = Message {
        room_id: new.room_id,
        seq,
        sender_id: new.sender_id,
        sender,
        text: new.text.clone(),
        client_msg_id: new.client_msg_id.clone(),
        reply_to: new.reply_to,
        created_at: now,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
    };
    let event =
        insert_event(conn, new.room_id, seq, &RoomEvent::Message { message: message.clone() }).await?;
    Ok(Appended::New { message, event, unread })
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the methods.

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

fn user_from_row(row: &SqliteRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        created_at: row.try_get("created_at")?,
        last_seen: row.try_get("last_seen")?,
    })
}

fn room_from_row(row: &SqliteRow) -> StoreResult<Room> {
    let kind: String = row.try_get("kind")?;
    Ok(Room {
        id: row.try_get("id")?,
        kind: parse_room_kind(&kind)?,
        name: row.try_get("name")?,
        epoch: row.try_get("epoch")?,
        last_seq: to_u64(row.try_get("last_seq")?),
        created_at: row.try_get("created_at")?,
    })
}

fn message_from_row(row: &SqliteRow) -> StoreResult<Message> {
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

fn member_from_row(row: &SqliteRow) -> StoreResult<Member> {
    Ok(Member {
        user: user_from_row(row)?,
        role: parse_role(row.try_get("role")?)?,
        delivered_seq: to_u64(row.try_get("delivered_seq")?),
        read_seq: to_u64(row.try_get("read_seq")?),
        joined_at: row.try_get("joined_at")?,
    })
}

fn notification_from_row(row: &SqliteRow) -> StoreResult<Notification> {
    let payload: String = row.try_get("payload")?;
    Ok(Notification {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get::<Option<i64>, _>("seq")?.map(to_u64),
        payload: serde_json::from_str(&payload)
            .map_err(|e| decode_error(format!("notification payload: {e}")))?,
        read: row.try_get("read")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Groups reaction rows `(room_id, seq, emoji, user_id)` (see [`common::group_reactions`]).
fn group_reactions(rows: &[SqliteRow]) -> StoreResult<HashMap<(RoomId, u64), Vec<Reaction>>> {
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, to_u64(row.try_get(1)?), row.try_get(2)?, row.try_get(3)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(common::group_reactions(rows))
}

/// Fills in the reactions of `messages`, which all belong to one room.
async fn attach_reactions(conn: &mut SqliteConnection, messages: &mut [Message]) -> StoreResult<()> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else { return Ok(()) };
    let (lo, hi) = (first.seq.min(last.seq), first.seq.max(last.seq));
    let rows = sqlx::query(
        "SELECT room_id, seq, emoji, user_id FROM reactions WHERE room_id = ? AND seq BETWEEN ? AND ? ORDER BY id",
    )
    .bind(first.room_id)
    .bind(to_i64(lo))
    .bind(to_i64(hi))
    .fetch_all(&mut *conn)
    .await?;
    let mut grouped = group_reactions(&rows)?;
    for message in messages {
        message.reactions = grouped.remove(&(message.room_id, message.seq)).unwrap_or_default();
    }
    Ok(())
}

async fn load_message(conn: &mut SqliteConnection, room: RoomId, seq: u64) -> StoreResult<Option<Message>> {
    let row = sqlx::query(message_sql!("WHERE m.room_id = ? AND m.seq = ?"))
        .bind(room)
        .bind(to_i64(seq))
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut message = message_from_row(&row)?;
    attach_reactions(conn, std::slice::from_mut(&mut message)).await?;
    Ok(Some(message))
}

async fn load_room(conn: &mut SqliteConnection, room: RoomId) -> StoreResult<Option<Room>> {
    let row = sqlx::query(ROOM_SQL).bind(room).fetch_optional(&mut *conn).await?;
    row.as_ref().map(room_from_row).transpose()
}

/// Inserts a room (`dm_key` only for a DM) with a new random epoch.
async fn insert_room(
    conn: &mut SqliteConnection,
    kind: &str,
    name: &str,
    dm_key: Option<&str>,
    now: Millis,
) -> StoreResult<Room> {
    let row = sqlx::query(concat!(
        "INSERT INTO rooms (kind, name, dm_key, epoch, created_at) \
         VALUES (?, ?, ?, lower(hex(randomblob(4))), ?) RETURNING ",
        room_columns!()
    ))
    .bind(kind)
    .bind(name)
    .bind(dm_key)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    room_from_row(&row)
}

async fn member_ids(conn: &mut SqliteConnection, room: RoomId) -> StoreResult<Vec<UserId>> {
    Ok(sqlx::query_scalar("SELECT user_id FROM members WHERE room_id = ? ORDER BY joined_at, user_id")
        .bind(room)
        .fetch_all(&mut *conn)
        .await?)
}

/// Takes the room's next seq (`NotFound` for an unknown room).
async fn next_seq(conn: &mut SqliteConnection, room: RoomId) -> StoreResult<u64> {
    let seq: Option<i64> =
        sqlx::query_scalar("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq")
            .bind(room)
            .fetch_optional(&mut *conn)
            .await?;
    seq.map(to_u64).ok_or(StoreError::NotFound)
}

async fn insert_event(
    conn: &mut SqliteConnection,
    room: RoomId,
    seq: u64,
    event: &RoomEvent,
) -> StoreResult<StoredEvent> {
    let json = serde_json::to_string(event).map_err(|e| decode_error(format!("event encoding: {e}")))?;
    let message_seq = match event {
        RoomEvent::Message { message }
        | RoomEvent::Edit { message }
        | RoomEvent::Delete { message }
        | RoomEvent::Reaction { message } => Some(to_i64(message.seq)),
        RoomEvent::RoomUpdated { .. } => None,
    };
    sqlx::query("INSERT INTO events (room_id, seq, json, created_at, message_seq) VALUES (?, ?, ?, ?, ?)")
        .bind(room)
        .bind(to_i64(seq))
        .bind(&json)
        .bind(now_millis())
        .bind(message_seq)
        .execute(&mut *conn)
        .await?;
    Ok(StoredEvent { room_id: room, seq, json })
}

/// Rewrites every event already in the log about the message `seq`, and every notification
/// quoting it, with `text` (what the message now says: the edited text, or nothing once
/// deleted). Called in the transaction that edits or deletes it, so no reader ever sees the
/// removed text again: history, recovery and polls replay the log, and a member who joins
/// later reads it from offset 1. Offsets, ids and everything else in the events stay.
async fn redact(conn: &mut SqliteConnection, room: RoomId, seq: u64, text: &str) -> StoreResult<()> {
    sqlx::query("UPDATE events SET json = json_set(json, '$.message.text', ?1) WHERE room_id = ?2 AND message_seq = ?3")
        .bind(text)
        .bind(room)
        .bind(to_i64(seq))
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE notifications SET payload = json_set(payload, '$.preview', substr(?1, 1, ?4)) \
         WHERE room_id = ?2 AND seq = ?3 AND json_type(payload, '$.preview') = 'text'",
    )
    .bind(text)
    .bind(room)
    .bind(to_i64(seq))
    .bind(i64::try_from(NOTIFICATION_PREVIEW_CHARS).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends the event `event(message)` for the message `seq` as it is after an edit, a delete or
/// a reaction, and commits; returns the message and the event.
async fn commit_message_change(
    mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    room: RoomId,
    seq: u64,
    event: fn(Message) -> RoomEvent,
) -> StoreResult<(Message, StoredEvent)> {
    let message = load_message(&mut tx, room, seq).await?.ok_or(StoreError::NotFound)?;
    let event_seq = next_seq(&mut tx, room).await?;
    let stored = insert_event(&mut tx, room, event_seq, &event(message.clone())).await?;
    tx.commit().await?;
    Ok((message, stored))
}

/// Appends a `RoomUpdated` event carrying the room as it is after the change.
async fn room_updated(conn: &mut SqliteConnection, room: RoomId) -> StoreResult<StoredEvent> {
    let seq = next_seq(conn, room).await?;
    let room_now = load_room(conn, room).await?.ok_or(StoreError::NotFound)?;
    let member_ids = member_ids(conn, room).await?;
    insert_event(conn, room, seq, &RoomEvent::RoomUpdated { room: room_now, member_ids }).await
}

/// Refuses a new reaction that would pass `limits`: the user's own count on the message,
/// or, for an emoji the message does not carry yet, its number of distinct ones.
async fn check_reaction_limits(
    conn: &mut SqliteConnection,
    room: RoomId,
    seq: u64,
    user: UserId,
    emoji: &str,
    limits: StoreLimits,
) -> StoreResult<()> {
    let (mine, distinct, present): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(user_id = ?), 0), COUNT(DISTINCT emoji), COALESCE(MAX(emoji = ?), 0) \
         FROM reactions WHERE room_id = ? AND seq = ?",
    )
    .bind(user)
    .bind(emoji)
    .bind(room)
    .bind(to_i64(seq))
    .fetch_one(&mut *conn)
    .await?;
    if mine >= i64::from(limits.reactions_per_user) {
        return Err(StoreError::LimitExceeded(format!(
            "you have the most reactions one person can add to a message ({})",
            limits.reactions_per_user
        )));
    }
    if present == 0 && distinct >= i64::from(limits.distinct_reactions) {
        return Err(StoreError::LimitExceeded(format!(
            "this message has the most distinct reactions allowed ({}); add one of those",
            limits.distinct_reactions
        )));
    }
    Ok(())
}

/// Refuses a new membership that would pass `limits`: any of `users` already in the most
/// rooms one person may be in, or `room` (when joining an existing one) already full.
async fn check_membership_limits(
    conn: &mut SqliteConnection,
    room: Option<RoomId>,
    users: &[UserId],
    limits: StoreLimits,
) -> StoreResult<()> {
    async fn members_where(conn: &mut SqliteConnection, column: &str, id: i64) -> StoreResult<i64> {
        let sql = format!("SELECT COUNT(*) FROM members WHERE {column} = ?");
        Ok(sqlx::query_scalar(&sql).bind(id).fetch_one(&mut *conn).await?)
    }
    for &user in users {
        if members_where(conn, "user_id", user).await? >= i64::from(limits.rooms_per_user) {
            return Err(StoreError::LimitExceeded(format!(
                "a person can be in at most {} rooms, and this one is in that many",
                limits.rooms_per_user
            )));
        }
    }
    if let Some(room) = room {
        if members_where(conn, "room_id", room).await? >= i64::from(limits.members_per_room) {
            return Err(StoreError::LimitExceeded(format!(
                "a room can have at most {} members, and this one is full",
                limits.members_per_room
            )));
        }
    }
    Ok(())
}

/// A live (not deleted) message and its sender, for edit/delete/react.
async fn live_message_sender(conn: &mut SqliteConnection, room: RoomId, seq: u64) -> StoreResult<UserId> {
    let sender: Option<i64> =
        sqlx::query_scalar("SELECT sender_id FROM messages WHERE room_id = ? AND seq = ? AND deleted = 0")
            .bind(room)
            .bind(to_i64(seq))
            .fetch_optional(&mut *conn)
            .await?;
    sender.ok_or(StoreError::NotFound)
}

async fn role_in(conn: &mut SqliteConnection, room: RoomId, user: UserId) -> StoreResult<Option<Role>> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM members WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    role.as_deref().map(parse_role).transpose()
}

/// A group room (`NotFound` when unknown, `Forbidden` for a DM).
async fn group_room(conn: &mut SqliteConnection, room: RoomId) -> StoreResult<Room> {
    let room = load_room(conn, room).await?.ok_or(StoreError::NotFound)?;
    if room.kind == RoomKind::Dm {
        return Err(StoreError::Forbidden);
    }
    Ok(room)
}

/// Turns a user's search text into an FTS5 query that cannot be a syntax error: every word
/// becomes a quoted string (implicit AND), the last one a prefix. `None` when there is no word.
fn fts_query(query: &str) -> Option<String> {
    let terms: Vec<String> = search_terms(query).into_iter().map(|t| format!("\"{t}\"")).collect();
    if terms.is_empty() {
        return None;
    }
    Some(terms.join(" ") + "*")
}

#[async_trait]
impl ChatStore for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> StoreResult<User> {
        let now = now_millis();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.writer)
        .await
        .map_err(constraint)?;
        Ok(User { id, username: username.to_owned(), created_at: now, last_seen: None })
    }

    async fn user_auth(&self, username: &str) -> StoreResult<Option<UserAuth>> {
        let row =
            sqlx::query(user_sql!("WHERE username = ?")).bind(username).fetch_optional(&self.readers).await?;
        row.map(|row| {
            Ok(UserAuth { user: user_from_row(&row)?, password_hash: row.try_get("password_hash")? })
        })
        .transpose()
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let row = sqlx::query(user_sql!("WHERE id = ?")).bind(id).fetch_optional(&self.readers).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        Ok(self.user_auth(username).await?.map(|auth| auth.user))
    }

    async fn set_last_seen(&self, id: UserId, at: Millis) -> StoreResult<()> {
        let done = sqlx::query("UPDATE users SET last_seen = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn insert_refresh(
        &self,
        hash: &str,
        user_id: UserId,
        family: &str,
        expires_at: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, user_id, family, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(family)
        .bind(expires_at)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(constraint)?;
        // The user's oldest sessions beyond the bound: signed out and forgotten.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE user_id = ?1 AND family IN ( \
                SELECT family FROM refresh_tokens WHERE user_id = ?1 GROUP BY family \
                ORDER BY MAX(created_at) DESC, MAX(rowid) DESC LIMIT -1 OFFSET ?2)",
        )
        .bind(user_id)
        .bind(i64::from(self.limits.sessions_per_user.max(1)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        hash: &str,
        new_hash: &str,
        new_expires_at: Millis,
        now: Millis,
    ) -> StoreResult<RefreshOutcome> {
        // Unknown tokens (anyone can send them, no credentials needed) are answered from a
        // reader, without taking the one writer every chat write waits for.
        if !self.refresh_known(hash).await? {
            return Ok(RefreshOutcome::Invalid);
        }
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT user_id, family, expires_at, used_at IS NOT NULL AS used, revoked FROM refresh_tokens \
             WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(RefreshOutcome::Invalid) };
        let user_id: UserId = row.try_get("user_id")?;
        let family: String = row.try_get("family")?;
        let expires_at: Millis = row.try_get("expires_at")?;
        if row.try_get::<bool, _>("used")? || row.try_get::<bool, _>("revoked")? {
            // Presented twice: whoever holds the family may have stolen it.
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?")
                .bind(&family)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused);
        }
        if expires_at <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE hash = ?")
            .bind(now)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, user_id, family, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(new_hash)
        .bind(user_id)
        .bind(&family)
        .bind(new_expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(constraint)?;
        // Only the latest used tokens are kept to recognize reuse.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE family = ?1 AND used_at IS NOT NULL AND rowid NOT IN ( \
                SELECT rowid FROM refresh_tokens WHERE family = ?1 AND used_at IS NOT NULL \
                ORDER BY used_at DESC, rowid DESC LIMIT ?2)",
        )
        .bind(&family)
        .bind(i64::from(self.limits.refresh_history.max(1)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated { user_id })
    }

    async fn revoke_refresh(&self, hash: &str) -> StoreResult<bool> {
        if !self.refresh_known(hash).await? {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 \
             WHERE family = (SELECT family FROM refresh_tokens WHERE hash = ?)",
        )
        .bind(hash)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_group(&self, name: &str, owner: UserId) -> StoreResult<Room> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        check_membership_limits(&mut tx, None, &[owner], self.limits).await?;
        let room = insert_room(&mut tx, "group", name, None, now).await?;
        sqlx::query("INSERT INTO members (room_id, user_id, role, joined_at) VALUES (?, ?, 'owner', ?)")
            .bind(room.id)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(constraint)?;
        tx.commit().await?;
        Ok(room)
    }

    async fn dm(&self, a: UserId, b: UserId) -> StoreResult<Room> {
        let (lo, hi) = (a.min(b), a.max(b));
        let key = format!("{lo}:{hi}");
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query(concat!("SELECT ", room_columns!(), " FROM rooms WHERE dm_key = ?"))
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            return room_from_row(&row);
        }
        check_membership_limits(&mut tx, None, &[lo, hi], self.limits).await?;
        let now = now_millis();
        let room = insert_room(&mut tx, "dm", "", Some(&key), now).await?;
        for user in [lo, hi] {
            sqlx::query(
                "INSERT INTO members (room_id, user_id, role, joined_at) VALUES (?, ?, 'member', ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(room.id)
            .bind(user)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(constraint)?;
        }
        tx.commit().await?;
        Ok(room)
    }

    async fn room(&self, id: RoomId) -> StoreResult<Option<Room>> {
        load_room(&mut *self.readers.acquire().await?, id).await
    }

    async fn role(&self, room: RoomId, user: UserId) -> StoreResult<Option<Role>> {
        role_in(&mut *self.readers.acquire().await?, room, user).await
    }

    async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<Option<StoredEvent>> {
        let mut tx = self.begin_write().await?;
        let current = group_room(&mut tx, room).await?;
        if role_in(&mut tx, room, user).await?.is_some() {
            return Ok(None);
        }
        check_membership_limits(&mut tx, Some(room), &[user], self.limits).await?;
        // Joins at the seq of its own event: earlier history is not unread (and `unread`
        // starts at 0).
        let join_seq = to_i64(current.last_seq + 1);
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, delivered_seq, read_seq, joined_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(room)
        .bind(user)
        .bind(role_str(role))
        .bind(join_seq)
        .bind(join_seq)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(constraint)?;
        let event = room_updated(&mut tx, room).await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<StoredEvent> {
        let mut tx = self.begin_write().await?;
        group_room(&mut tx, room).await?;
        let done = sqlx::query("DELETE FROM members WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let event = room_updated(&mut tx, room).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn rename_room(&self, room: RoomId, name: &str) -> StoreResult<StoredEvent> {
        let mut tx = self.begin_write().await?;
        group_room(&mut tx, room).await?;
        sqlx::query("UPDATE rooms SET name = ? WHERE id = ?").bind(name).bind(room).execute(&mut *tx).await?;
        let event = room_updated(&mut tx, room).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn members(&self, room: RoomId) -> StoreResult<Vec<Member>> {
        let rows = sqlx::query(member_sql!("WHERE mm.room_id = ? ORDER BY mm.joined_at, mm.user_id"))
            .bind(room)
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>> {
        // One read transaction: the four queries see the same snapshot.
        let mut tx = self.readers.begin().await?;
        let rooms = sqlx::query(
            "SELECT r.id, r.kind, r.name, r.epoch, r.last_seq, r.created_at, me.role, me.unread, \
               COALESCE((SELECT e.created_at FROM events e WHERE e.room_id = r.id AND e.seq = r.last_seq), \
                  r.created_at) AS activity \
             FROM members me JOIN rooms r ON r.id = me.room_id \
             WHERE me.user_id = ? \
             ORDER BY activity DESC, r.id DESC",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        // The latest message of each of the user's rooms.
        let last_messages = sqlx::query(message_sql!(
            "WHERE (m.room_id, m.seq) IN (SELECT me.room_id, \
               (SELECT MAX(x.seq) FROM messages x WHERE x.room_id = me.room_id) \
             FROM members me WHERE me.user_id = ?)"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let reactions = sqlx::query(
            "SELECT re.room_id, re.seq, re.emoji, re.user_id FROM reactions re \
             WHERE (re.room_id, re.seq) IN (SELECT me.room_id, \
               (SELECT MAX(x.seq) FROM messages x WHERE x.room_id = me.room_id) \
             FROM members me WHERE me.user_id = ?) \
             ORDER BY re.id",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let members = sqlx::query(member_sql!(
            "JOIN members me ON me.room_id = mm.room_id AND me.user_id = ? \
             ORDER BY mm.room_id, mm.joined_at, mm.user_id"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut reactions = group_reactions(&reactions)?;
        let mut last_by_room = HashMap::new();
        for row in &last_messages {
            let mut message = message_from_row(row)?;
            message.reactions = reactions.remove(&(message.room_id, message.seq)).unwrap_or_default();
            last_by_room.insert(message.room_id, message);
        }
        let mut members_by_room: HashMap<RoomId, Vec<Member>> = HashMap::new();
        for row in &members {
            members_by_room.entry(row.try_get("room_id")?).or_default().push(member_from_row(row)?);
        }
        rooms
            .iter()
            .map(|row| {
                let room = room_from_row(row)?;
                Ok(RoomSummary {
                    role: parse_role(row.try_get("role")?)?,
                    last_message: last_by_room.remove(&room.id),
                    unread: to_u64(row.try_get("unread")?),
                    members: members_by_room.remove(&room.id).unwrap_or_default(),
                    room,
                })
            })
            .collect()
    }

    async fn append_message(&self, message: NewMessage) -> StoreResult<Appended> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(AppendRequest { message, reply })
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
        answer.await.map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?
    }

    async fn edit_message(
        &self,
        room: RoomId,
        seq: u64,
        editor: UserId,
        text: &str,
    ) -> StoreResult<(Message, StoredEvent)> {
        let mut tx = self.begin_write().await?;
        if live_message_sender(&mut tx, room, seq).await? != editor {
            return Err(StoreError::Forbidden);
        }
        sqlx::query("UPDATE messages SET text = ?, edited_at = ? WHERE room_id = ? AND seq = ?")
            .bind(text)
            .bind(now_millis())
            .bind(room)
            .bind(to_i64(seq))
            .execute(&mut *tx)
            .await?;
        redact(&mut tx, room, seq, text).await?;
        commit_message_change(tx, room, seq, |message| RoomEvent::Edit { message }).await
    }

    async fn delete_message(
        &self,
        room: RoomId,
        seq: u64,
        by: UserId,
    ) -> StoreResult<(Message, StoredEvent)> {
        let mut tx = self.begin_write().await?;
        let sender = live_message_sender(&mut tx, room, seq).await?;
        if sender != by && !matches!(role_in(&mut tx, room, by).await?, Some(Role::Admin | Role::Owner)) {
            return Err(StoreError::Forbidden);
        }
        let done = sqlx::query(
            "UPDATE messages SET text = '', deleted = 1 WHERE room_id = ? AND seq = ? AND deleted = 0",
        )
        .bind(room)
        .bind(to_i64(seq))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // Cannot happen (this transaction saw it live), but a second delete must never
            // take it off the counters twice.
            return Err(StoreError::NotFound);
        }
        // No longer unread for those who had not read it.
        sqlx::query(
            "UPDATE members SET unread = unread - 1 WHERE room_id = ?1 AND user_id != ?2 AND read_seq < ?3",
        )
        .bind(room)
        .bind(sender)
        .bind(to_i64(seq))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM reactions WHERE room_id = ? AND seq = ?")
            .bind(room)
            .bind(to_i64(seq))
            .execute(&mut *tx)
            .await?;
        redact(&mut tx, room, seq, "").await?;
        commit_message_change(tx, room, seq, |message| RoomEvent::Delete { message }).await
    }

    async fn react(
        &self,
        room: RoomId,
        seq: u64,
        user: UserId,
        emoji: &str,
        add: bool,
    ) -> StoreResult<(Message, StoredEvent)> {
        let mut tx = self.begin_write().await?;
        live_message_sender(&mut tx, room, seq).await?;
        if role_in(&mut tx, room, user).await?.is_none() {
            return Err(StoreError::Forbidden);
        }
        let done = if add {
            check_reaction_limits(&mut tx, room, seq, user, emoji, self.limits).await?;
            sqlx::query(
                "INSERT INTO reactions (room_id, seq, user_id, emoji, created_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(to_i64(seq))
            .bind(user)
            .bind(emoji)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query("DELETE FROM reactions WHERE room_id = ? AND seq = ? AND user_id = ? AND emoji = ?")
                .bind(room)
                .bind(to_i64(seq))
                .bind(user)
                .bind(emoji)
                .execute(&mut *tx)
                .await?
        };
        if done.rows_affected() == 0 {
            return Err(if add { StoreError::Conflict } else { StoreError::NotFound });
        }
        commit_message_change(tx, room, seq, |message| RoomEvent::Reaction { message }).await
    }

    async fn message(&self, room: RoomId, seq: u64) -> StoreResult<Option<Message>> {
        let mut tx = self.readers.begin().await?;
        let message = load_message(&mut tx, room, seq).await?;
        tx.commit().await?;
        Ok(message)
    }

    async fn messages(&self, room: RoomId, page: Page, limit: u32) -> StoreResult<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.readers.begin().await?;
        let (sql, from) = match page {
            Page::Latest => (message_sql!("WHERE m.room_id = ? ORDER BY m.seq DESC LIMIT ?"), None),
            Page::Before(seq) => {
                (message_sql!("WHERE m.room_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"), Some(seq))
            }
            Page::After(seq) => {
                (message_sql!("WHERE m.room_id = ? AND m.seq > ? ORDER BY m.seq ASC LIMIT ?"), Some(seq))
            }
        };
        let mut query = sqlx::query(sql).bind(room);
        if let Some(seq) = from {
            query = query.bind(to_i64(seq));
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        let mut messages = rows.iter().map(message_from_row).collect::<StoreResult<Vec<_>>>()?;
        if !matches!(page, Page::After(_)) {
            messages.reverse();
        }
        attach_reactions(&mut tx, &mut messages).await?;
        tx.commit().await?;
        Ok(messages)
    }

    async fn events_after(&self, room: RoomId, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let rows =
            sqlx::query("SELECT seq, json FROM events WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?")
                .bind(room)
                .bind(to_i64(after))
                .bind(i64::from(limit))
                .fetch_all(&self.readers)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    room_id: room,
                    seq: to_u64(row.try_get("seq")?),
                    json: row.try_get("json")?,
                })
            })
            .collect()
    }

    async fn mark(
        &self,
        room: RoomId,
        user: UserId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> StoreResult<(u64, u64)> {
        // `asked`: the markers asked for, clamped to the stream (SET expressions see the old
        // row). When the read marker moves, the unread count becomes what is left above it:
        // usually nothing to count, as clients mark up to the latest message.
        let row = sqlx::query(
            "UPDATE members SET \
               read_seq = MAX(members.read_seq, asked.read), \
               delivered_seq = MAX(members.delivered_seq, asked.delivered, members.read_seq, asked.read), \
               unread = CASE WHEN asked.read > members.read_seq THEN \
                   (SELECT COUNT(*) FROM messages x WHERE x.room_id = ?1 AND x.seq > asked.read \
                      AND x.sender_id != ?2 AND x.deleted = 0) \
                 ELSE members.unread END \
             FROM (SELECT MIN(?3, last_seq) AS read, MIN(?4, last_seq) AS delivered \
                   FROM rooms WHERE id = ?1) AS asked \
             WHERE members.room_id = ?1 AND members.user_id = ?2 \
             RETURNING delivered_seq, read_seq",
        )
        .bind(room)
        .bind(user)
        .bind(to_i64(read.unwrap_or(0)))
        .bind(to_i64(delivered.unwrap_or(0)))
        .fetch_optional(&self.writer)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok((to_u64(row.try_get(0)?), to_u64(row.try_get(1)?)))
    }

    async fn unread(&self, room: RoomId, user: UserId) -> StoreResult<u64> {
        let count: Option<i64> =
            sqlx::query_scalar("SELECT unread FROM members WHERE room_id = ? AND user_id = ?")
                .bind(room)
                .bind(user)
                .fetch_optional(&self.readers)
                .await?;
        count.map(to_u64).ok_or(StoreError::NotFound)
    }

    async fn unread_by_member(&self, room: RoomId) -> StoreResult<Vec<(UserId, String, u64)>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT me.user_id, u.username, me.unread \
             FROM members me JOIN users u ON u.id = me.user_id WHERE me.room_id = ? ORDER BY me.user_id",
        )
        .bind(room)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(|(id, name, n)| (id, name, to_u64(n))).collect())
    }

    async fn add_notification(
        &self,
        user: UserId,
        kind: &str,
        room: Option<RoomId>,
        seq: Option<u64>,
        payload: &serde_json::Value,
    ) -> StoreResult<Notification> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        // A `preview` quotes the message as it is when the notification is stored, not as it
        // was when the caller read it: a message edited or deleted in between (see `redact`)
        // must not come back through its notification.
        let (id, stored): (i64, String) = sqlx::query_as(
            "INSERT INTO notifications (user_id, kind, room_id, seq, payload, created_at) \
             VALUES (?1, ?2, ?3, ?4, \
                 CASE WHEN json_type(?5, '$.preview') = 'text' \
                           AND EXISTS (SELECT 1 FROM messages WHERE room_id = ?3 AND seq = ?4) \
                      THEN json_set(?5, '$.preview', \
                          (SELECT substr(text, 1, ?7) FROM messages WHERE room_id = ?3 AND seq = ?4)) \
                      ELSE ?5 END, \
                 ?6) \
             RETURNING id, payload",
        )
        .bind(user)
        .bind(kind)
        .bind(room)
        .bind(seq.map(to_i64))
        .bind(payload.to_string())
        .bind(now)
        .bind(i64::try_from(NOTIFICATION_PREVIEW_CHARS).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await
        .map_err(constraint)?;
        let payload: serde_json::Value = serde_json::from_str(&stored)
            .map_err(|e| decode_error(format!("notification {id} payload: {e}")))?;
        // The oldest beyond the user's bound go (one index range: `notifications_user`).
        sqlx::query(
            "DELETE FROM notifications WHERE user_id = ?1 AND id <= ( \
                SELECT id FROM notifications WHERE user_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .bind(user)
        .bind(i64::from(self.limits.notifications_per_user.max(1)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Notification {
            id,
            user_id: user,
            kind: kind.to_owned(),
            room_id: room,
            seq,
            payload,
            read: false,
            created_at: now,
        })
    }

    async fn notifications(&self, user: UserId, limit: u32) -> StoreResult<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT id, user_id, kind, room_id, seq, payload, read, created_at FROM notifications \
             WHERE user_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(user)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn read_notifications(&self, user: UserId, ids: &[i64]) -> StoreResult<()> {
        let ids = (!ids.is_empty()).then(|| serde_json::Value::from(ids.to_vec()).to_string());
        sqlx::query(
            "UPDATE notifications SET read = 1 \
             WHERE user_id = ?1 AND read = 0 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))",
        )
        .bind(user)
        .bind(ids)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn search(&self, user: UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>> {
        let Some(fts) = fts_query(query) else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT m.room_id, r.name, m.seq, u.username, \
               snippet(messages_fts, 0, '[', ']', '…', 24) AS snippet, m.created_at \
             FROM messages_fts \
             JOIN messages m ON m.id = messages_fts.rowid \
             JOIN rooms r ON r.id = m.room_id \
             JOIN users u ON u.id = m.sender_id \
             WHERE messages_fts MATCH ?1 AND m.deleted = 0 \
               AND m.room_id IN (SELECT room_id FROM members WHERE user_id = ?2) \
             ORDER BY m.created_at DESC, m.id DESC \
             LIMIT ?3",
        )
        .bind(fts)
        .bind(user)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SearchHit {
                    room_id: row.try_get("room_id")?,
                    room_name: row.try_get("name")?,
                    seq: to_u64(row.try_get("seq")?),
                    sender: row.try_get("username")?,
                    snippet: row.try_get("snippet")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
