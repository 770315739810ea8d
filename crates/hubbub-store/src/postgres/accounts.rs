//! Users and refresh tokens.

use sqlx::Row;

use super::{constraint, lock_users, user_from_row, PgStore};
use crate::common::now_millis;
use crate::{Millis, RefreshOutcome, StoreError, StoreResult, User, UserAuth, UserId};

pub(super) async fn create_user(store: &PgStore, username: &str, password_hash: &str) -> StoreResult<User> {
    let now = now_millis();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(username)
    .bind(password_hash)
    .bind(now)
    .fetch_one(&store.pool)
    .await
    .map_err(constraint)?;
    Ok(User { id, username: username.to_owned(), created_at: now, last_seen: None })
}

/// By username, case-insensitively (the unique index is on `lower(username)`).
pub(super) async fn user_auth(store: &PgStore, username: &str) -> StoreResult<Option<UserAuth>> {
    let row = sqlx::query(
        "SELECT id, username, created_at, last_seen, password_hash FROM users WHERE lower(username) = lower($1)",
    )
    .bind(username)
    .fetch_optional(&store.pool)
    .await?;
    row.map(|row| Ok(UserAuth { user: user_from_row(&row)?, password_hash: row.try_get("password_hash")? }))
        .transpose()
}

pub(super) async fn user(store: &PgStore, id: UserId) -> StoreResult<Option<User>> {
    let row = sqlx::query("SELECT id, username, created_at, last_seen FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

pub(super) async fn set_last_seen(store: &PgStore, id: UserId, at: Millis) -> StoreResult<()> {
    let done = sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&store.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) async fn insert_refresh(
    store: &PgStore,
    hash: &str,
    user_id: UserId,
    family: &str,
    expires_at: Millis,
) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    // Log-ins of one user on several nodes count their sessions one at a time.
    lock_users(&mut tx, &[user_id]).await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, user_id, family, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
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
        "DELETE FROM refresh_tokens WHERE user_id = $1 AND family IN ( \
            SELECT family FROM refresh_tokens WHERE user_id = $1 GROUP BY family \
            ORDER BY MAX(created_at) DESC, MAX(id) DESC OFFSET $2)",
    )
    .bind(user_id)
    .bind(i64::from(store.limits.sessions_per_user.max(1)))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn rotate_refresh(
    store: &PgStore,
    hash: &str,
    new_hash: &str,
    new_expires_at: Millis,
    now: Millis,
) -> StoreResult<RefreshOutcome> {
    let mut tx = store.begin().await?;
    // The row lock makes two nodes presenting the same token at once see it one after the
    // other: the second finds it used.
    let row = sqlx::query(
        "SELECT user_id, family, expires_at, used_at IS NOT NULL AS used, revoked FROM refresh_tokens \
         WHERE hash = $1 FOR UPDATE",
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
        sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE family = $1")
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(RefreshOutcome::Reused);
    }
    if expires_at <= now {
        return Ok(RefreshOutcome::Invalid);
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2")
        .bind(now)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, user_id, family, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
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
        "DELETE FROM refresh_tokens WHERE family = $1 AND used_at IS NOT NULL AND id NOT IN ( \
            SELECT id FROM refresh_tokens WHERE family = $1 AND used_at IS NOT NULL \
            ORDER BY used_at DESC, id DESC LIMIT $2)",
    )
    .bind(&family)
    .bind(i64::from(store.limits.refresh_history.max(1)))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(RefreshOutcome::Rotated { user_id })
}

pub(super) async fn revoke_refresh(store: &PgStore, hash: &str) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked = TRUE \
         WHERE family = (SELECT family FROM refresh_tokens WHERE hash = $1)",
    )
    .bind(hash)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}
