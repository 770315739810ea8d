//! A room's event stream: appends (group committed), edits, deletes, reactions, history,
//! receipts and unread counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::{
    attach_reactions, encode_event, insert_event, load_message, lock_room, message_from_row, message_sql,
    next_seq, role_in, transient, PgStore, Tx,
};
use crate::common::{decode_error, now_millis, to_i64, to_u64};
use crate::{
    Appended, Message, NewMessage, Page, Role, RoomEvent, RoomId, StoreError, StoreLimits, StoreResult,
    StoredEvent, UserId, NOTIFICATION_PREVIEW_CHARS,
};

/// Most appends stored by one group commit.
pub const MAX_BATCH: usize = 256;
/// Appends that may wait for the writer task before senders wait to enqueue.
pub(super) const QUEUE: usize = 4096;
/// Tries of a batch the database refused for a reason that goes away (a deadlock with
/// another client of the database, a serialization failure), before its messages fail.
const TRANSIENT_TRIES: u32 = 5;

pub(super) struct AppendRequest {
    message: NewMessage,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

pub(super) async fn append(store: &PgStore, message: NewMessage) -> StoreResult<Appended> {
    let (reply, answer) = oneshot::channel();
    store
        .appends
        .send(AppendRequest { message, reply })
        .await
        .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
    answer.await.map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?
}

// ---------------------------------------------------------------------------------------------
// Group commit.

pub(super) async fn writer_task(
    pool: PgPool,
    mut queue: mpsc::Receiver<AppendRequest>,
    commits: std::sync::Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        run_batch(&pool, &mut batch, &commits).await;
        batch.clear();
    }
}

/// Why a try at storing a batch failed.
enum BatchFailure {
    /// Storing the message at this index failed: the batch is tried again without it.
    Message(usize, sqlx::Error),
    /// The database asks to try again (deadlock, serialization failure).
    Transient(sqlx::Error),
    /// The transaction itself failed: nothing of the batch is stored.
    Batch(sqlx::Error),
}

/// Stores `batch` in one transaction, then answers every request. A message whose writing
/// fails is answered with its error and the rest of the batch is stored without it, in a
/// new transaction.
async fn run_batch(pool: &PgPool, batch: &mut Vec<AppendRequest>, commits: &AtomicU64) {
    // Rooms are locked in ascending id order (see the module doc of `postgres`); a stable
    // sort keeps each room's messages in the order they came.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].message.room_id);
    let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
    let mut tries = 0;
    let outcome = loop {
        match try_batch(pool, batch, &order, &failed).await {
            Ok(results) => break Ok(results),
            Err(BatchFailure::Message(index, e)) => failed[index] = Some(StoreError::Database(e)),
            Err(BatchFailure::Transient(e)) if tries + 1 < TRANSIENT_TRIES => {
                tries += 1;
                tracing::debug!(error = %e, tries, "group commit retried");
                tokio::time::sleep(Duration::from_millis(5 << tries)).await;
            }
            Err(BatchFailure::Transient(e) | BatchFailure::Batch(e)) => break Err(e),
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
            // Nothing of the batch is stored (the transaction rolled back when dropped).
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

/// One try at storing the messages of `batch` not `failed` yet, in one transaction, in
/// `order`. Returns a result for every request, in the batch's order (those of failed ones
/// are placeholders).
async fn try_batch(
    pool: &PgPool,
    batch: &[AppendRequest],
    order: &[usize],
    failed: &[Option<StoreError>],
) -> Result<Vec<StoreResult<Appended>>, BatchFailure> {
    let mut tx = pool.begin().await.map_err(BatchFailure::Batch)?;
    let mut results: Vec<StoreResult<Appended>> = batch.iter().map(|_| Err(StoreError::NotFound)).collect();
    for &index in order {
        if failed[index].is_some() {
            continue;
        }
        match append_one(&mut tx, &batch[index].message).await {
            Ok(appended) => results[index] = Ok(appended),
            // Refusals are decided before the message writes anything: the batch goes on.
            Err(
                e @ (StoreError::NotFound
                | StoreError::Forbidden
                | StoreError::Conflict
                | StoreError::LimitExceeded(_)),
            ) => results[index] = Err(e),
            Err(StoreError::Database(e)) if transient(&e) => return Err(BatchFailure::Transient(e)),
            // The database refused a statement of this message (and aborted the
            // transaction): the others may still be stored.
            Err(StoreError::Database(e @ sqlx::Error::Database(_))) => {
                return Err(BatchFailure::Message(index, e))
            }
            // The connection failed: no point trying again.
            Err(StoreError::Database(e)) => return Err(BatchFailure::Batch(e)),
            Err(StoreError::Migration(e)) => return Err(BatchFailure::Batch(sqlx::Error::Protocol(e))),
        }
    }
    match tx.commit().await {
        Ok(()) => Ok(results),
        Err(e) if transient(&e) => Err(BatchFailure::Transient(e)),
        Err(e) => Err(BatchFailure::Batch(e)),
    }
}

/// The message `sender` stored with this `client_msg_id`, if any.
async fn original(
    conn: &mut PgConnection,
    sender: UserId,
    client_msg_id: &str,
) -> StoreResult<Option<Message>> {
    let row = sqlx::query(message_sql!("WHERE m.sender_id = $1 AND m.client_msg_id = $2"))
        .bind(sender)
        .bind(client_msg_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut message = message_from_row(&row)?;
    attach_reactions(conn, std::slice::from_mut(&mut message)).await?;
    Ok(Some(message))
}

/// Stores one message (or finds its original) inside the batch's transaction. Refusals are
/// decided before anything is written.
async fn append_one(conn: &mut PgConnection, new: &NewMessage) -> StoreResult<Appended> {
    let client_msg_id = (!new.client_msg_id.is_empty()).then_some(new.client_msg_id.as_str());
    if let Some(reply_to) = new.reply_to {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM messages WHERE room_id = $1 AND seq = $2)")
                .bind(new.room_id)
                .bind(to_i64(reply_to))
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Err(StoreError::NotFound);
        }
    }
    // One statement for the usual case (each is a round trip, and the group commit's writer
    // makes them one after the other): takes the room's next seq (and its row lock, until
    // commit), but only when the message will be stored (the sender is a member, and this is
    // not a retry of a stored `client_msg_id`), and returns what decides it.
    let (seq, retry, sender, room_exists): (Option<i64>, bool, Option<String>, bool) = sqlx::query_as(
        "WITH dup AS (SELECT 1 FROM messages WHERE sender_id = $2 AND client_msg_id = $3), \
         taken AS ( \
             UPDATE rooms SET last_seq = last_seq + 1 \
             WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM dup) \
               AND EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2) \
             RETURNING last_seq) \
         SELECT (SELECT last_seq FROM taken), EXISTS (SELECT 1 FROM dup), \
             (SELECT username FROM users WHERE id = $2), EXISTS (SELECT 1 FROM rooms WHERE id = $1)",
    )
    .bind(new.room_id)
    .bind(new.sender_id)
    .bind(client_msg_id)
    .fetch_one(&mut *conn)
    .await?;
    // A retry is answered with the original, even when the sender has left since.
    if let (true, Some(id)) = (retry, client_msg_id) {
        if let Some(message) = original(conn, new.sender_id, id).await? {
            return Ok(Appended::Duplicate(message));
        }
    }
    let Some(seq) = seq else {
        return Err(if room_exists && sender.is_some() {
            StoreError::Forbidden
        } else {
            StoreError::NotFound
        });
    };
    let sender = sender.ok_or_else(|| {
        decode_error(format!("member {} of room {} has no user row", new.sender_id, new.room_id))
    })?;
    let seq = to_u64(seq);
    let now = now_millis();
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
    let event = RoomEvent::Message { message: message.clone() };
    let json = encode_event(&event)?;
    // The message, its event and the other members' unread counters (markers never pass
    // `rooms.last_seq`, so the message is above every one), in one statement. Another node
    // storing the same `client_msg_id` right now: the insert waits for it, and when it
    // commits, nothing is stored.
    let (stored, members, counts): (bool, Vec<i64>, Vec<i64>) = sqlx::query_as(
        "WITH m AS ( \
             INSERT INTO messages (room_id, seq, sender_id, text, client_msg_id, reply_to, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (sender_id, client_msg_id) DO NOTHING RETURNING id), \
         e AS ( \
             INSERT INTO events (room_id, seq, json, created_at, message_seq) \
             SELECT $1, $2, $8, $7, $2 FROM m), \
         u AS ( \
             UPDATE members SET unread = unread + 1 \
             WHERE room_id = $1 AND user_id <> $3 AND read_seq < $2 AND EXISTS (SELECT 1 FROM m) \
             RETURNING user_id, unread) \
         SELECT EXISTS (SELECT 1 FROM m), \
             COALESCE((SELECT array_agg(user_id ORDER BY user_id) FROM u), '{}'), \
             COALESCE((SELECT array_agg(unread ORDER BY user_id) FROM u), '{}')",
    )
    .bind(new.room_id)
    .bind(to_i64(seq))
    .bind(new.sender_id)
    .bind(&new.text)
    .bind(client_msg_id)
    .bind(new.reply_to.map(to_i64))
    .bind(now)
    .bind(&json)
    .fetch_one(&mut *conn)
    .await?;
    if !stored {
        // The seq goes back: this transaction holds the room's row, and took no later seq of it.
        sqlx::query("UPDATE rooms SET last_seq = last_seq - 1 WHERE id = $1")
            .bind(new.room_id)
            .execute(&mut *conn)
            .await?;
        let id = client_msg_id.unwrap_or_default();
        let message = original(conn, new.sender_id, id).await?.ok_or_else(|| {
            decode_error(format!("client_msg_id {id:?} of user {} conflicts but is not found", new.sender_id))
        })?;
        return Ok(Appended::Duplicate(message));
    }
    let unread = members.into_iter().zip(counts.into_iter().map(to_u64)).collect();
    Ok(Appended::New { message, event: StoredEvent { room_id: new.room_id, seq, json }, unread })
}

// ---------------------------------------------------------------------------------------------
// Edits, deletes, reactions.

/// A live (not deleted) message's sender, for edit/delete/react.
async fn live_message_sender(conn: &mut PgConnection, room: RoomId, seq: u64) -> StoreResult<UserId> {
    let sender: Option<i64> =
        sqlx::query_scalar("SELECT sender_id FROM messages WHERE room_id = $1 AND seq = $2 AND NOT deleted")
            .bind(room)
            .bind(to_i64(seq))
            .fetch_optional(&mut *conn)
            .await?;
    sender.ok_or(StoreError::NotFound)
}

/// Rewrites every event already in the log about the message `seq`, and every notification
/// quoting it, with `text` (what the message now says), in the transaction that edits or
/// deletes it. The events are decoded and encoded again in Rust, so each stays byte for byte
/// what serde writes, the text aside.
async fn redact(conn: &mut PgConnection, room: RoomId, seq: u64, text: &str) -> StoreResult<()> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, json FROM events WHERE room_id = $1 AND message_seq = $2")
            .bind(room)
            .bind(to_i64(seq))
            .fetch_all(&mut *conn)
            .await?;
    let (mut seqs, mut jsons) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for (event_seq, json) in rows {
        let mut event: RoomEvent = serde_json::from_str(&json)
            .map_err(|e| decode_error(format!("event {event_seq} of room {room}: {e}")))?;
        match &mut event {
            RoomEvent::Message { message }
            | RoomEvent::Edit { message }
            | RoomEvent::Delete { message }
            | RoomEvent::Reaction { message } => text.clone_into(&mut message.text),
            RoomEvent::RoomUpdated { .. } => continue,
        }
        seqs.push(event_seq);
        jsons.push(encode_event(&event)?);
    }
    sqlx::query(
        "UPDATE events e SET json = v.json FROM unnest($2::bigint[], $3::text[]) AS v(seq, json) \
         WHERE e.room_id = $1 AND e.seq = v.seq",
    )
    .bind(room)
    .bind(&seqs)
    .bind(&jsons)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE notifications SET payload = jsonb_set(payload, '{preview}', to_jsonb(left($1::text, $4::int))) \
         WHERE room_id = $2 AND seq = $3 AND jsonb_typeof(payload -> 'preview') = 'string'",
    )
    .bind(text)
    .bind(room)
    .bind(to_i64(seq))
    .bind(i32::try_from(NOTIFICATION_PREVIEW_CHARS).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends the event `event(message)` for the message `seq` as it is after an edit, a delete or
/// a reaction, and commits; returns the message and the event.
async fn commit_message_change(
    mut tx: Tx,
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

pub(super) async fn edit(
    store: &PgStore,
    room: RoomId,
    seq: u64,
    editor: UserId,
    text: &str,
) -> StoreResult<(Message, StoredEvent)> {
    let mut tx = store.begin().await?;
    lock_room(&mut tx, room).await?;
    if live_message_sender(&mut tx, room, seq).await? != editor {
        return Err(StoreError::Forbidden);
    }
    sqlx::query("UPDATE messages SET text = $1, edited_at = $2 WHERE room_id = $3 AND seq = $4")
        .bind(text)
        .bind(now_millis())
        .bind(room)
        .bind(to_i64(seq))
        .execute(&mut *tx)
        .await?;
    redact(&mut tx, room, seq, text).await?;
    commit_message_change(tx, room, seq, |message| RoomEvent::Edit { message }).await
}

pub(super) async fn delete(
    store: &PgStore,
    room: RoomId,
    seq: u64,
    by: UserId,
) -> StoreResult<(Message, StoredEvent)> {
    let mut tx = store.begin().await?;
    lock_room(&mut tx, room).await?;
    let sender = live_message_sender(&mut tx, room, seq).await?;
    if sender != by && !matches!(role_in(&mut tx, room, by).await?, Some(Role::Admin | Role::Owner)) {
        return Err(StoreError::Forbidden);
    }
    let done = sqlx::query(
        "UPDATE messages SET text = '', deleted = TRUE WHERE room_id = $1 AND seq = $2 AND NOT deleted",
    )
    .bind(room)
    .bind(to_i64(seq))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    // No longer unread for those who had not read it.
    sqlx::query(
        "UPDATE members SET unread = unread - 1 WHERE room_id = $1 AND user_id <> $2 AND read_seq < $3",
    )
    .bind(room)
    .bind(sender)
    .bind(to_i64(seq))
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM reactions WHERE room_id = $1 AND seq = $2")
        .bind(room)
        .bind(to_i64(seq))
        .execute(&mut *tx)
        .await?;
    redact(&mut tx, room, seq, "").await?;
    commit_message_change(tx, room, seq, |message| RoomEvent::Delete { message }).await
}

/// Refuses a new reaction that would pass `limits` (the caller holds the room's row, so no
/// concurrent reaction is counted at the same time).
async fn check_reaction_limits(
    conn: &mut PgConnection,
    room: RoomId,
    seq: u64,
    user: UserId,
    emoji: &str,
    limits: StoreLimits,
) -> StoreResult<()> {
    let (mine, distinct, present): (i64, i64, bool) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE user_id = $1), COUNT(DISTINCT emoji), COALESCE(bool_or(emoji = $2), FALSE) \
         FROM reactions WHERE room_id = $3 AND seq = $4",
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
    if !present && distinct >= i64::from(limits.distinct_reactions) {
        return Err(StoreError::LimitExceeded(format!(
            "this message has the most distinct reactions allowed ({}); add one of those",
            limits.distinct_reactions
        )));
    }
    Ok(())
}

pub(super) async fn react(
    store: &PgStore,
    room: RoomId,
    seq: u64,
    user: UserId,
    emoji: &str,
    add: bool,
) -> StoreResult<(Message, StoredEvent)> {
    let mut tx = store.begin().await?;
    lock_room(&mut tx, room).await?;
    live_message_sender(&mut tx, room, seq).await?;
    if role_in(&mut tx, room, user).await?.is_none() {
        return Err(StoreError::Forbidden);
    }
    let done = if add {
        check_reaction_limits(&mut tx, room, seq, user, emoji, store.limits).await?;
        sqlx::query(
            "INSERT INTO reactions (room_id, seq, user_id, emoji, created_at) VALUES ($1, $2, $3, $4, $5) \
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
        sqlx::query("DELETE FROM reactions WHERE room_id = $1 AND seq = $2 AND user_id = $3 AND emoji = $4")
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

// ---------------------------------------------------------------------------------------------
// Reading the stream.

pub(super) async fn page(store: &PgStore, room: RoomId, page: Page, limit: u32) -> StoreResult<Vec<Message>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = store.begin_snapshot().await?;
    let (sql, from) = match page {
        Page::Latest => (message_sql!("WHERE m.room_id = $1 ORDER BY m.seq DESC LIMIT $2"), None),
        Page::Before(seq) => {
            (message_sql!("WHERE m.room_id = $1 AND m.seq < $3 ORDER BY m.seq DESC LIMIT $2"), Some(seq))
        }
        Page::After(seq) => {
            (message_sql!("WHERE m.room_id = $1 AND m.seq > $3 ORDER BY m.seq ASC LIMIT $2"), Some(seq))
        }
    };
    let mut query = sqlx::query(sql).bind(room).bind(i64::from(limit));
    if let Some(seq) = from {
        query = query.bind(to_i64(seq));
    }
    let rows = query.fetch_all(&mut *tx).await?;
    let mut messages = rows.iter().map(message_from_row).collect::<StoreResult<Vec<_>>>()?;
    if !matches!(page, Page::After(_)) {
        messages.reverse();
    }
    attach_reactions(&mut tx, &mut messages).await?;
    tx.commit().await?;
    Ok(messages)
}

pub(super) async fn events_after(
    store: &PgStore,
    room: RoomId,
    after: u64,
    limit: u32,
) -> StoreResult<Vec<StoredEvent>> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, json FROM events WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(room)
            .bind(to_i64(after))
            .bind(i64::from(limit))
            .fetch_all(&store.pool)
            .await?;
    Ok(rows.into_iter().map(|(seq, json)| StoredEvent { room_id: room, seq: to_u64(seq), json }).collect())
}

// ---------------------------------------------------------------------------------------------
// Receipts and unread counters.

pub(super) async fn mark(
    store: &PgStore,
    room: RoomId,
    user: UserId,
    delivered: Option<u64>,
    read: Option<u64>,
) -> StoreResult<(u64, u64)> {
    let mut tx = store.begin().await?;
    // Waits for an append to this room being committed (it holds the row): the recount below
    // then sees its message, whose +1 the member's row already carries.
    sqlx::query("SELECT 1 FROM rooms WHERE id = $1 FOR SHARE").bind(room).fetch_optional(&mut *tx).await?;
    // `asked`: the markers asked for, clamped to the stream. When the read marker moves, the
    // unread count becomes what is left above it.
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE members SET \
           read_seq = GREATEST(members.read_seq, asked.read), \
           delivered_seq = GREATEST(members.delivered_seq, asked.delivered, members.read_seq, asked.read), \
           unread = CASE WHEN asked.read > members.read_seq THEN \
               (SELECT COUNT(*) FROM messages x WHERE x.room_id = $1 AND x.seq > asked.read \
                  AND x.sender_id <> $2 AND NOT x.deleted) \
             ELSE members.unread END \
         FROM (SELECT LEAST($3::bigint, last_seq) AS read, LEAST($4::bigint, last_seq) AS delivered \
               FROM rooms WHERE id = $1) AS asked \
         WHERE members.room_id = $1 AND members.user_id = $2 \
         RETURNING members.delivered_seq, members.read_seq",
    )
    .bind(room)
    .bind(user)
    .bind(to_i64(read.unwrap_or(0)))
    .bind(to_i64(delivered.unwrap_or(0)))
    .fetch_optional(&mut *tx)
    .await?;
    let (delivered, read) = row.ok_or(StoreError::NotFound)?;
    tx.commit().await?;
    Ok((to_u64(delivered), to_u64(read)))
}

pub(super) async fn unread(store: &PgStore, room: RoomId, user: UserId) -> StoreResult<u64> {
    let count: Option<i64> =
        sqlx::query_scalar("SELECT unread FROM members WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .fetch_optional(&store.pool)
            .await?;
    count.map(to_u64).ok_or(StoreError::NotFound)
}

pub(super) async fn unread_by_member(
    store: &PgStore,
    room: RoomId,
) -> StoreResult<Vec<(UserId, String, u64)>> {
    let rows = sqlx::query(
        "SELECT me.user_id, u.username, me.unread \
         FROM members me JOIN users u ON u.id = me.user_id WHERE me.room_id = $1 ORDER BY me.user_id",
    )
    .bind(room)
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, to_u64(row.try_get(2)?)))).collect()
}
