//! Notifications, bounded per user, whose previews follow the message they quote.

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{constraint, lock_users, PgStore};
use crate::common::{decode_error, now_millis, to_i64, to_u64};
use crate::{Notification, RoomId, StoreResult, UserId, NOTIFICATION_PREVIEW_CHARS};

fn parse_payload(id: i64, text: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| decode_error(format!("notification {id} payload: {e}")))
}

fn notification_from_row(row: &PgRow) -> StoreResult<Notification> {
    let id = row.try_get("id")?;
    Ok(Notification {
        id,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get::<Option<i64>, _>("seq")?.map(to_u64),
        payload: parse_payload(id, row.try_get("payload")?)?,
        read: row.try_get("read")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn add(
    store: &PgStore,
    user: UserId,
    kind: &str,
    room: Option<RoomId>,
    seq: Option<u64>,
    payload: &serde_json::Value,
) -> StoreResult<Notification> {
    let now = now_millis();
    let seq_i64 = seq.map(to_i64);
    let mut tx = store.begin().await?;
    // A `preview` quotes the message as it is when the notification is stored. The message's
    // row is held while it is, so an edit or a delete on another node either commits before
    // (and its text is read here) or waits for this commit (and then rewrites this preview).
    if let (Some(room), Some(seq)) = (room, seq_i64) {
        sqlx::query("SELECT 1 FROM messages WHERE room_id = $1 AND seq = $2 FOR SHARE")
            .bind(room)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?;
    }
    // One user's notifications are bounded by one transaction at a time.
    lock_users(&mut tx, &[user]).await?;
    let (id, stored): (i64, String) = sqlx::query_as(
        "INSERT INTO notifications (user_id, kind, room_id, seq, payload, created_at) \
         VALUES ($1, $2, $3, $4, \
             CASE WHEN jsonb_typeof($5::jsonb -> 'preview') = 'string' \
                       AND EXISTS (SELECT 1 FROM messages WHERE room_id = $3 AND seq = $4) \
                  THEN jsonb_set($5::jsonb, '{preview}', to_jsonb( \
                      (SELECT left(text, $7::int) FROM messages WHERE room_id = $3 AND seq = $4))) \
                  ELSE $5::jsonb END, \
             $6) \
         RETURNING id, payload::text",
    )
    .bind(user)
    .bind(kind)
    .bind(room)
    .bind(seq_i64)
    .bind(payload.to_string())
    .bind(now)
    .bind(i32::try_from(NOTIFICATION_PREVIEW_CHARS).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await
    .map_err(constraint)?;
    let payload = parse_payload(id, &stored)?;
    // The oldest beyond the user's bound go (one index range: `notifications_user`).
    sqlx::query(
        "DELETE FROM notifications WHERE user_id = $1 AND id <= ( \
            SELECT id FROM notifications WHERE user_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
    )
    .bind(user)
    .bind(i64::from(store.limits.notifications_per_user.max(1)))
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

pub(super) async fn list(store: &PgStore, user: UserId, limit: u32) -> StoreResult<Vec<Notification>> {
    let rows = sqlx::query(
        "SELECT id, user_id, kind, room_id, seq, payload::text AS payload, read, created_at FROM notifications \
         WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(user)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(notification_from_row).collect()
}

/// Marks the given notifications (all when `ids` is empty) read; others' ids are ignored.
pub(super) async fn mark_read(store: &PgStore, user: UserId, ids: &[i64]) -> StoreResult<()> {
    let ids = (!ids.is_empty()).then_some(ids);
    sqlx::query(
        "UPDATE notifications SET read = TRUE \
         WHERE user_id = $1 AND NOT read AND ($2::bigint[] IS NULL OR id = ANY($2))",
    )
    .bind(user)
    .bind(ids)
    .execute(&store.pool)
    .await?;
    Ok(())
}
