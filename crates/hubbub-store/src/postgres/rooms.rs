//! Rooms, their members and the room list.

use std::collections::HashMap;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{
    constraint, lock_group_room, lock_users, member_from_row, member_sql, message_from_row, message_sql,
    reactions_from_rows, role_in, room_from_row, room_updated, PgStore, ROOM_COLUMNS,
};
use crate::common::{now_millis, parse_role, role_str, to_i64, to_u64};
use crate::{
    Member, Role, Room, RoomId, RoomSummary, StoreError, StoreLimits, StoreResult, StoredEvent, UserId,
};

/// Inserts a room (`dm_key` only for a DM) with a new random epoch.
async fn insert_room(
    conn: &mut PgConnection,
    kind: &str,
    name: &str,
    dm_key: Option<&str>,
    now: i64,
) -> StoreResult<Room> {
    let row = sqlx::query(&format!(
        "INSERT INTO rooms (kind, name, dm_key, epoch, created_at) \
         VALUES ($1, $2, $3, substr(md5(gen_random_uuid()::text), 1, 8), $4) \
         RETURNING {ROOM_COLUMNS}"
    ))
    .bind(kind)
    .bind(name)
    .bind(dm_key)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(constraint)?;
    room_from_row(&row)
}

/// Refuses a new membership that would pass `limits`: any of `users` already in the most
/// rooms one person may be in, or `room` (when joining an existing one) already full. The
/// caller holds the rows of `users` and of `room` locked, so no concurrent transaction counts
/// the same free place.
async fn check_membership_limits(
    conn: &mut PgConnection,
    room: Option<RoomId>,
    users: &[UserId],
    limits: StoreLimits,
) -> StoreResult<()> {
    for &user in users {
        let rooms: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut *conn)
            .await?;
        if rooms >= i64::from(limits.rooms_per_user) {
            return Err(StoreError::LimitExceeded(format!(
                "a person can be in at most {} rooms, and this one is in that many",
                limits.rooms_per_user
            )));
        }
    }
    if let Some(room) = room {
        let members: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE room_id = $1")
            .bind(room)
            .fetch_one(&mut *conn)
            .await?;
        if members >= i64::from(limits.members_per_room) {
            return Err(StoreError::LimitExceeded(format!(
                "a room can have at most {} members, and this one is full",
                limits.members_per_room
            )));
        }
    }
    Ok(())
}

pub(super) async fn create_group(store: &PgStore, name: &str, owner: UserId) -> StoreResult<Room> {
    let now = now_millis();
    let mut tx = store.begin().await?;
    lock_users(&mut tx, &[owner]).await?;
    check_membership_limits(&mut tx, None, &[owner], store.limits).await?;
    let room = insert_room(&mut tx, "group", name, None, now).await?;
    sqlx::query("INSERT INTO members (room_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)")
        .bind(room.id)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(constraint)?;
    tx.commit().await?;
    Ok(room)
}

pub(super) async fn dm(store: &PgStore, a: UserId, b: UserId) -> StoreResult<Room> {
    let (lo, hi) = (a.min(b), a.max(b));
    let key = format!("{lo}:{hi}");
    let mut tx = store.begin().await?;
    // Two nodes opening the same DM at once: the second waits here, then finds the room.
    lock_users(&mut tx, &[lo, hi]).await?;
    let existing = sqlx::query(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE dm_key = $1"))
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = existing {
        return room_from_row(&row);
    }
    check_membership_limits(&mut tx, None, &[lo, hi], store.limits).await?;
    let now = now_millis();
    let room = insert_room(&mut tx, "dm", "", Some(&key), now).await?;
    for user in [lo, hi] {
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3) \
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

pub(super) async fn add_member(
    store: &PgStore,
    room: RoomId,
    user: UserId,
    role: Role,
) -> StoreResult<Option<StoredEvent>> {
    let mut tx = store.begin().await?;
    let current = lock_group_room(&mut tx, room).await?;
    if role_in(&mut tx, room, user).await?.is_some() {
        return Ok(None);
    }
    lock_users(&mut tx, &[user]).await?;
    check_membership_limits(&mut tx, Some(room), &[user], store.limits).await?;
    // Joins at the seq of its own event: earlier history is not unread (and `unread` starts
    // at 0). The room's row is locked: that seq is the next one.
    let join_seq = to_i64(current.last_seq + 1);
    sqlx::query(
        "INSERT INTO members (room_id, user_id, role, delivered_seq, read_seq, joined_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
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

pub(super) async fn remove_member(store: &PgStore, room: RoomId, user: UserId) -> StoreResult<StoredEvent> {
    let mut tx = store.begin().await?;
    lock_group_room(&mut tx, room).await?;
    let done = sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
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

pub(super) async fn rename_room(store: &PgStore, room: RoomId, name: &str) -> StoreResult<StoredEvent> {
    let mut tx = store.begin().await?;
    lock_group_room(&mut tx, room).await?;
    sqlx::query("UPDATE rooms SET name = $1 WHERE id = $2").bind(name).bind(room).execute(&mut *tx).await?;
    let event = room_updated(&mut tx, room).await?;
    tx.commit().await?;
    Ok(event)
}

pub(super) async fn members(store: &PgStore, room: RoomId) -> StoreResult<Vec<Member>> {
    let rows = sqlx::query(member_sql!("WHERE mm.room_id = $1 ORDER BY mm.joined_at, mm.user_id"))
        .bind(room)
        .fetch_all(&store.pool)
        .await?;
    rows.iter().map(member_from_row).collect()
}

pub(super) async fn rooms_of(store: &PgStore, user: UserId) -> StoreResult<Vec<RoomSummary>> {
    // One snapshot: the four queries agree.
    let mut tx = store.begin_snapshot().await?;
    let rooms = sqlx::query(
        "SELECT r.id, r.kind, r.name, r.epoch, r.last_seq, r.created_at, me.role, me.unread, \
           COALESCE((SELECT e.created_at FROM events e WHERE e.room_id = r.id AND e.seq = r.last_seq), \
              r.created_at) AS activity \
         FROM members me JOIN rooms r ON r.id = me.room_id \
         WHERE me.user_id = $1 \
         ORDER BY activity DESC, r.id DESC",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    // The latest message of each of the user's rooms.
    let last_messages = sqlx::query(message_sql!(
        "WHERE (m.room_id, m.seq) IN (SELECT me.room_id, \
           (SELECT MAX(x.seq) FROM messages x WHERE x.room_id = me.room_id) \
         FROM members me WHERE me.user_id = $1)"
    ))
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    let reactions = sqlx::query(
        "SELECT re.room_id, re.seq, re.emoji, re.user_id FROM reactions re \
         WHERE (re.room_id, re.seq) IN (SELECT me.room_id, \
           (SELECT MAX(x.seq) FROM messages x WHERE x.room_id = me.room_id) \
         FROM members me WHERE me.user_id = $1) \
         ORDER BY re.id",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    let members = sqlx::query(member_sql!(
        "JOIN members me ON me.room_id = mm.room_id AND me.user_id = $1 \
         ORDER BY mm.room_id, mm.joined_at, mm.user_id"
    ))
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut reactions = reactions_from_rows(&reactions)?;
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
