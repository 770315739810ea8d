//! Accounts: sign-up, log-in with argon2id password hashes, access tokens (the core's
//! connection JWTs, short-lived) and refresh tokens (random, stored hashed, rotated on every
//! use; presenting a used one revokes the whole family), and log-in rate limiting.

use crate::error::{ChatError, ChatResult, Kind};
use crate::limit::{RateLimiter, Refused, Slot};
use crate::ChatConfig;
use crate::{now_millis, Chat};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hubbub_store::{RefreshOutcome, StoreError, User};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

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

/// Longest password, in characters (sign-up refuses longer ones, so a log-in with one
/// cannot be right and is refused before it is counted or hashed).
const MAX_PASSWORD: usize = 256;

/// Log-in guesses per account and per address: at most the configured number in any
/// window, concurrent or not, because a guess takes its slot *before* the password is
/// checked. A successful log-in gives its slots back (only failures count). Sign-ups per
/// address likewise (each costs a password hash and a row, and a taken name tells that it
/// exists).
pub struct AuthLimiter {
    accounts: RateLimiter<String>,
    addresses: RateLimiter<String>,
    signups: RateLimiter<String>,
}

/// The slots one log-in attempt holds; kept (the attempt counts as a failed guess) unless
/// [`Attempt::does_not_count`] gives them back.
struct Attempt<'a> {
    limiter: &'a AuthLimiter,
    account: String,
    address: String,
    slots: (Slot, Slot),
}

impl Attempt<'_> {
    fn does_not_count(self) {
        self.limiter.accounts.release(&self.account, self.slots.0);
        self.limiter.addresses.release(&self.address, self.slots.1);
    }
}

impl AuthLimiter {
    pub fn new(config: &ChatConfig) -> Self {
        let max = config.limiter_max_keys;
        AuthLimiter {
            accounts: RateLimiter::new(config.login_failures_per_account, config.login_window, max),
            addresses: RateLimiter::new(config.login_failures_per_address, config.login_window, max),
            signups: RateLimiter::new(config.signups_per_address, config.signup_window, max),
        }
    }

    /// Takes a sign-up slot for `address`.
    fn begin_signup(&self, address: &str) -> ChatResult<(String, Slot)> {
        let address = address.to_owned();
        match self.signups.acquire(&address) {
            Ok(slot) => Ok((address, slot)),
            Err(Refused::Limited) => Err(ChatError::new(
                Kind::TooManyRequests,
                "too many sign-ups from this address; try again later",
            )),
            Err(Refused::Full) => Err(ChatError::new(
                Kind::TooManyRequests,
                "too many sign-ups are being tried right now; try again later",
            )),
        }
    }

    /// Takes a slot for `account` and one for `address`, or neither.
    fn begin(&self, account: &str, address: &str) -> ChatResult<Attempt<'_>> {
        let refused = |why| {
            ChatError::new(
                Kind::TooManyRequests,
                match why {
                    Refused::Limited => "too many failed log-ins; wait a minute and try again",
                    Refused::Full => "too many log-ins are being tried right now; try again in a minute",
                },
            )
        };
        let account = account.to_lowercase();
        let a = self.accounts.acquire(&account).map_err(refused)?;
        let b = match self.addresses.acquire(&address.to_owned()) {
            Ok(b) => b,
            Err(why) => {
                self.accounts.release(&account, a);
                return Err(refused(why));
            }
        };
        Ok(Attempt { limiter: self, account, address: address.to_owned(), slots: (a, b) })
    }
}

/// The hash an unknown username's log-in is checked against, so that it takes as long as a
/// wrong password for a real account and the answer's timing does not tell which names
/// exist. Made with the same parameters as every account's hash (`Argon2::default`), from
/// a random password that nothing can match.
static DUMMY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| Chat::hash_password(&uuid::Uuid::new_v4().simple().to_string()).ok());

/// Makes [`DUMMY_HASH`] in the background at start, so the first unknown name costs no more
/// than the others.
pub(crate) fn prepare_dummy_hash() {
    std::thread::spawn(|| LazyLock::force(&DUMMY_HASH));
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
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

    /// Signs up. The lengths are checked first, then the address's sign-up slot is taken
    /// (`chat.signups_per_address` per `chat.signup_window`; a taken name counts too), then
    /// the password is hashed.
    pub async fn signup(&self, username: &str, password: &str, address: &str) -> ChatResult<Session> {
        validate_username(username)?;
        validate_password(password)?;
        let (address, slot) = self.limiter.begin_signup(address)?;
        let result = self.create_account(username, password).await;
        if result.as_ref().is_err_and(|e| e.kind == Kind::Internal) {
            // The server's failure, not a sign-up the address made.
            self.limiter.signups.release(&address, slot);
        }
        result
    }

    async fn create_account(&self, username: &str, password: &str) -> ChatResult<Session> {
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

    /// Logs in. Everything a client controls is bounded before it is counted or hashed
    /// (the body by `chat.auth_max_body`, then the lengths here); the guess takes its
    /// limiter slots before the password is checked; unknown names are checked against a
    /// dummy hash so that they answer as slowly as wrong passwords.
    pub async fn login(&self, username: &str, password: &str, address: &str) -> ChatResult<Session> {
        validate_username(username)?;
        if password.chars().count() > MAX_PASSWORD {
            return Err(ChatError::bad_request(format!(
                "the password is longer than {MAX_PASSWORD} characters"
            )));
        }
        let attempt = self.limiter.begin(username, address)?;
        match self.check_password(username, password).await {
            Ok(Some(user)) => {
                attempt.does_not_count();
                self.new_login(user).await
            }
            Ok(None) => Err(ChatError::unauthorized("wrong username or password")),
            Err(e) => {
                attempt.does_not_count();
                Err(e)
            }
        }
    }

    /// The account when `password` is its password; `None` when the name is unknown or the
    /// password wrong, after the same amount of work either way.
    async fn check_password(&self, username: &str, password: &str) -> ChatResult<Option<User>> {
        let auth = self.store.user_auth(username).await?;
        let permit =
            self.hashing.acquire().await.map_err(|_| ChatError::new(Kind::Internal, "shutting down"))?;
        let pw = password.to_owned();
        let hash = auth.as_ref().map(|a| a.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => password_matches(&pw, &hash),
            None => {
                if let Some(dummy) = DUMMY_HASH.as_deref() {
                    password_matches(&pw, dummy);
                }
                false
            }
        })
        .await
        .unwrap_or(false);
        drop(permit);
        Ok(auth.filter(|_| ok).map(|a| a.user))
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
        // The chat's own tokens are HS256: verified with the secret, never by a JWKS fetch.
        let grant = self.node.tokens.verify_connect_local(access_token).map_err(|e| match e {
            TokenError::Expired => ChatError::unauthorized("the access token expired; refresh it"),
            TokenError::Invalid(_) | TokenError::Unavailable(_) => {
                ChatError::unauthorized("invalid access token")
            }
        })?;
        let id: i64 =
            grant.user.parse().map_err(|_| ChatError::unauthorized("the token is not a chat user's"))?;
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
        let config = ChatConfig {
            login_failures_per_account: 2,
            login_failures_per_address: 3,
            ..ChatConfig::default()
        };
        let l = AuthLimiter::new(&config);
        let _failed = l.begin("Alice", "1.1.1.1").unwrap();
        assert!(l.begin("alice", "2.2.2.2").is_ok());
        assert!(l.begin("ALICE", "3.3.3.3").is_err(), "two guesses for alice, whatever the case");
        assert!(l.begin("bob", "9.9.9.9").is_ok());
        // A successful log-in gives its slots back.
        let l = AuthLimiter::new(&config);
        l.begin("carol", "1.1.1.1").unwrap().does_not_count();
        l.begin("carol", "1.1.1.1").unwrap().does_not_count();
        l.begin("carol", "1.1.1.1").unwrap().does_not_count();
        assert!(l.begin("carol", "1.1.1.1").is_ok());
    }

    #[test]
    fn the_dummy_hash_matches_nothing() {
        let dummy = DUMMY_HASH.as_deref().expect("dummy hash");
        assert!(PasswordHash::new(dummy).is_ok());
        assert!(!password_matches("", dummy));
        assert!(!password_matches("password", dummy));
    }
}
