//! Accounts: sign-up, log-in with argon2id password hashes, access tokens (the core's
//! connection JWTs, short-lived) and refresh tokens (random, stored hashed, rotated on every
//! use; presenting a used one revokes the whole family), and log-in rate limiting.

use crate::error::{ChatError, ChatResult, Kind};
use crate::{now_millis, Chat};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hubbub_store::{RefreshOutcome, StoreError, User};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What sign-up, log-in and refresh answer.
#[derive(Debug, Serialize)]
pub struct Session {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
}

/// Usernames: 3 to 32 characters of letters, digits, `_`, `.` and `-`, starting with a
/// letter or digit.
pub fn validate_username(name: &str) -> ChatResult<()> {
    let ok_len = (3..=32).contains(&name.chars().count());
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let ok_start = name.chars().next().is_some_and(char::is_alphanumeric);
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(ChatError::bad_request(
            "usernames are 3 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ))
    }
}

fn validate_password(password: &str) -> ChatResult<()> {
    let n = password.chars().count();
    if n < 8 {
        return Err(ChatError::bad_request("the password needs at least 8 characters"));
    }
    if n > 256 {
        return Err(ChatError::bad_request("the password is longer than 256 characters"));
    }
    Ok(())
}

fn hash_refresh(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn new_refresh_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Failed log-ins per key in a sliding window.
pub struct LoginLimiter {
    window: Duration,
    max_per_account: usize,
    max_per_address: usize,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(window: Duration, max_per_account: usize, max_per_address: usize) -> Self {
        LoginLimiter { window, max_per_account, max_per_address, failures: Mutex::new(HashMap::new()) }
    }

    fn count(&self, key: &str) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let window = self.window;
        let entry = map.entry(key.to_owned()).or_default();
        entry.retain(|t| now.duration_since(*t) < window);
        let n = entry.len();
        if n == 0 {
            map.remove(key);
        }
        n
    }

    fn check(&self, account: &str, address: &str) -> ChatResult<()> {
        if self.count(&format!("u:{}", account.to_lowercase())) >= self.max_per_account
            || self.count(&format!("a:{address}")) >= self.max_per_address
        {
            return Err(ChatError::new(
                Kind::TooManyRequests,
                "too many failed log-ins; wait a minute and try again",
            ));
        }
        Ok(())
    }

    fn fail(&self, account: &str, address: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.entry(format!("u:{}", account.to_lowercase())).or_default().push(now);
        map.entry(format!("a:{address}")).or_default().push(now);
    }
}

impl Chat {
    async fn issue_session(&self, user: User, family: Option<String>) -> ChatResult<Session> {
        let ttl = self.config.access_token_ttl;
        let access_token = self.node.tokens.mint_connect(&user.id.to_string(), Some(ttl), Vec::new());
        let refresh_token = new_refresh_token();
        if let Some(family) = family {
            let expires = now_millis() + self.config.refresh_token_ttl.as_millis() as i64;
            self.store.insert_refresh(&hash_refresh(&refresh_token), user.id, &family, expires).await?;
        }
        Ok(Session { user, access_token, refresh_token, expires_in: ttl.as_secs() })
    }

    async fn new_login(&self, user: User) -> ChatResult<Session> {
        let family = uuid::Uuid::new_v4().simple().to_string();
        self.issue_session(user, Some(family)).await
    }

    fn hash_password(password: &str) -> ChatResult<String> {
        // 16 random bytes (a v4 UUID's randomness) as the salt.
        let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
            .map_err(|_| ChatError::new(Kind::Internal, "could not hash the password"))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| ChatError::new(Kind::Internal, "could not hash the password"))
    }

    pub async fn signup(&self, username: &str, password: &str) -> ChatResult<Session> {
        validate_username(username)?;
        validate_password(password)?;
        // Hashing is CPU- and memory-heavy: off the async workers, a few at a time.
        let permit =
            self.hashing.acquire().await.map_err(|_| ChatError::new(Kind::Internal, "shutting down"))?;
        let pw = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || Self::hash_password(&pw))
            .await
            .map_err(|_| ChatError::new(Kind::Internal, "could not hash the password"))??;
        drop(permit);
        let user = match self.store.create_user(username, &hash).await {
            Ok(u) => u,
            Err(StoreError::Conflict) => {
                return Err(ChatError::new(Kind::Conflict, format!("the username {username} is taken")))
            }
            Err(e) => return Err(e.into()),
        };
        self.new_login(user).await
    }

    pub async fn login(&self, username: &str, password: &str, address: &str) -> ChatResult<Session> {
        self.limiter.check(username, address)?;
        let wrong = || ChatError::unauthorized("wrong username or password");
        let Some(auth) = self.store.user_auth(username).await? else {
            self.limiter.fail(username, address);
            return Err(wrong());
        };
        let permit =
            self.hashing.acquire().await.map_err(|_| ChatError::new(Kind::Internal, "shutting down"))?;
        let pw = password.to_owned();
        let hash = auth.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        drop(permit);
        if !ok {
            self.limiter.fail(username, address);
            return Err(wrong());
        }
        self.new_login(auth.user).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> ChatResult<Session> {
        let new_token = new_refresh_token();
        let expires = now_millis() + self.config.refresh_token_ttl.as_millis() as i64;
        let outcome = self
            .store
            .rotate_refresh(&hash_refresh(refresh_token), &hash_refresh(&new_token), expires, now_millis())
            .await?;
        match outcome {
            RefreshOutcome::Rotated { user_id } => {
                let user =
                    self.store.user(user_id).await?.ok_or_else(|| ChatError::unauthorized("unknown user"))?;
                let mut session = self.issue_session(user, None).await?;
                session.refresh_token = new_token;
                Ok(session)
            }
            RefreshOutcome::Reused => {
                tracing::warn!("a used refresh token was presented again: its family is revoked");
                Err(ChatError::unauthorized("this refresh token was already used; log in again"))
            }
            RefreshOutcome::Invalid => {
                Err(ChatError::unauthorized("unknown or expired refresh token; log in again"))
            }
        }
    }

    pub async fn logout(&self, refresh_token: &str) -> ChatResult<()> {
        self.store.revoke_refresh(&hash_refresh(refresh_token)).await?;
        Ok(())
    }

    /// The user an access token (a connection JWT) belongs to.
    pub async fn authenticate(&self, access_token: &str) -> ChatResult<User> {
        use hubbub_core::auth::TokenError;
        let claims = self.node.tokens.verify_connect(access_token).map_err(|e| match e {
            TokenError::Expired => ChatError::unauthorized("the access token expired; refresh it"),
            TokenError::Invalid(_) => ChatError::unauthorized("invalid access token"),
        })?;
        let id: i64 =
            claims.sub.parse().map_err(|_| ChatError::unauthorized("the token is not a chat user's"))?;
        self.caller(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "bob_2", "a.b-c", "Zoë"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "_alice", "has space", "a/b", &"x".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limiter_counts_per_account_and_address() {
        let l = LoginLimiter::new(Duration::from_secs(60), 2, 3);
        l.fail("Alice", "1.1.1.1");
        assert!(l.check("alice", "2.2.2.2").is_ok());
        l.fail("alice", "2.2.2.2");
        assert!(l.check("ALICE", "3.3.3.3").is_err());
        assert!(l.check("bob", "9.9.9.9").is_ok());
    }
}
