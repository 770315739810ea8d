//! The chat application, built into the node rather than beside it: rooms are channels
//! `room:{id}` whose stream is the room's durable event log (kept by [`ChatStore`]), each
//! user has a personal channel `user#{id}` for notifications, and clients act through REST
//! ([`rest`]) or RPC over their real-time connection ([`rpc`]).
//!
//! * [`accounts`]: sign-up, log-in, access and refresh tokens.
//! * [`rooms`]: rooms, members, messages, receipts, typing, notifications, search.
//! * [`stream`]: the `room` namespace's hooks (membership, durable history), ordered
//!   publication of stored events, and presence.

pub mod accounts;
pub mod error;
pub mod limit;
pub mod openapi;
pub mod order;
pub mod rest;
pub mod rooms;
pub mod rpc;
pub mod stream;

use hubbub_core::channel::NamespaceConfig;
use hubbub_core::duration::serde_human;
use hubbub_core::Node;
use hubbub_store::ChatStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub use error::{ChatError, ChatResult};

/// The `[chat]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Lifetime of an access token (the connection JWT).
    #[serde(with = "serde_human")]
    pub access_token_ttl: Duration,
    #[serde(with = "serde_human")]
    pub refresh_token_ttl: Duration,
    /// Longest message, in characters.
    pub max_message_length: usize,
    /// A user's typing events in one room are forwarded at most this often.
    #[serde(with = "serde_human")]
    pub typing_throttle: Duration,
    /// Log-in guesses (failed log-ins) allowed per `login_window` for one account, and for
    /// one address (an IPv6 address counts by its /64). Counted before the password is
    /// checked, so concurrent guesses cannot exceed them.
    pub login_failures_per_account: usize,
    pub login_failures_per_address: usize,
    #[serde(with = "serde_human")]
    pub login_window: Duration,
    /// Sign-ups allowed per `signup_window` from one address (IPv6: its /64); a refused one
    /// (name taken) counts too.
    pub signups_per_address: usize,
    #[serde(with = "serde_human")]
    pub signup_window: Duration,
    /// Behind a reverse proxy: the header in which it passes the client's address (e.g.
    /// `X-Forwarded-For`; its last address is used). Empty: the connection's own address.
    /// Set it only when every request comes through a proxy that sets this header, or
    /// clients choose their own address.
    pub client_address_header: String,
    /// Largest request body of `/api/auth/*` (credentials and refresh tokens are small):
    /// bigger ones are refused (413) before they are read.
    pub auth_max_body: usize,
    /// Largest body of the other chat requests (a message with its JSON escapes fits well).
    pub max_body: usize,
    /// Message writes (send, edit, delete, react) and room creations per user, REST and
    /// RPC alike: `send_burst` at once, `sends_per_second` on average; over it, HTTP 429 or
    /// the protocol's error 111.
    pub sends_per_second: f64,
    pub send_burst: usize,
    /// Most keys (accounts, addresses, users, user-and-room pairs) each of the chat's rate
    /// limiters tracks at once. When one is full, uses that need a new key are refused
    /// (log-ins and sends: 429) or dropped (typing events) until keys expire. Also the size
    /// of the cache of users by id (which starts over when full).
    pub limiter_max_keys: usize,
    /// Log-in sessions (refresh-token families) kept per user; a new log-in beyond it signs
    /// the oldest session out.
    pub max_sessions_per_user: u32,
    /// Used refresh tokens remembered per session to recognize one presented again (which
    /// revokes the session); older ones are forgotten.
    pub refresh_history: u32,
    /// Notifications kept per user; a new one beyond it drops the oldest.
    pub max_notifications_per_user: u32,
    /// Reactions one user may have on one message.
    pub max_reactions_per_user: u32,
    /// Distinct reactions one message may carry.
    pub max_distinct_reactions: u32,
    /// Rooms (groups and DMs) one user may be a member of.
    pub max_rooms_per_user: u32,
    /// Members one room may have.
    pub max_members_per_room: u32,
}

impl ChatConfig {
    /// The store's bounds that come from this section.
    pub fn store_limits(&self) -> hubbub_store::StoreLimits {
        hubbub_store::StoreLimits {
            reactions_per_user: self.max_reactions_per_user,
            distinct_reactions: self.max_distinct_reactions,
            sessions_per_user: self.max_sessions_per_user,
            refresh_history: self.refresh_history,
            notifications_per_user: self.max_notifications_per_user,
            rooms_per_user: self.max_rooms_per_user,
            members_per_room: self.max_members_per_room,
        }
    }

    /// Checks the values; the error names the key (`chat.<key>`) and what it must be.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("chat.{key}"), message.to_owned()));
        if self.login_failures_per_account == 0 {
            return bad("login_failures_per_account", "must be at least 1");
        }
        if self.login_failures_per_address == 0 {
            return bad("login_failures_per_address", "must be at least 1");
        }
        if self.login_window < Duration::from_secs(1) {
            return bad("login_window", "must be at least 1s");
        }
        if self.signups_per_address == 0 {
            return bad("signups_per_address", "must be at least 1");
        }
        if self.signup_window < Duration::from_secs(1) {
            return bad("signup_window", "must be at least 1s");
        }
        if !self.client_address_header.is_empty()
            && axum::http::HeaderName::from_bytes(self.client_address_header.as_bytes()).is_err()
        {
            return bad("client_address_header", "must be a header name like \"X-Forwarded-For\"");
        }
        if self.auth_max_body < 512 {
            return bad("auth_max_body", "must be at least 512 bytes");
        }
        if self.max_body < 1024 {
            return bad("max_body", "must be at least 1024 bytes");
        }
        if !(self.sends_per_second.is_finite() && self.sends_per_second > 0.0) {
            return bad("sends_per_second", "must be a number above 0");
        }
        if self.send_burst == 0 {
            return bad("send_burst", "must be at least 1");
        }
        if self.limiter_max_keys == 0 {
            return bad("limiter_max_keys", "must be at least 1");
        }
        if self.max_sessions_per_user == 0 {
            return bad("max_sessions_per_user", "must be at least 1");
        }
        if self.refresh_history == 0 {
            return bad("refresh_history", "must be at least 1");
        }
        if self.max_notifications_per_user == 0 {
            return bad("max_notifications_per_user", "must be at least 1");
        }
        if self.max_reactions_per_user == 0 {
            return bad("max_reactions_per_user", "must be at least 1");
        }
        if self.max_distinct_reactions == 0 {
            return bad("max_distinct_reactions", "must be at least 1");
        }
        if self.max_rooms_per_user == 0 {
            return bad("max_rooms_per_user", "must be at least 1");
        }
        if self.max_members_per_room < 2 {
            return bad("max_members_per_room", "must be at least 2 (a direct conversation has two)");
        }
        Ok(())
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_message_length: 4000,
            typing_throttle: Duration::from_secs(2),
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window: Duration::from_secs(60),
            signups_per_address: 20,
            signup_window: Duration::from_secs(3600),
            client_address_header: String::new(),
            auth_max_body: 4096,
            max_body: 65536,
            sends_per_second: 5.0,
            send_burst: 20,
            limiter_max_keys: 100_000,
            max_sessions_per_user: hubbub_store::StoreLimits::default().sessions_per_user,
            refresh_history: hubbub_store::StoreLimits::default().refresh_history,
            max_notifications_per_user: hubbub_store::StoreLimits::default().notifications_per_user,
            max_reactions_per_user: hubbub_store::StoreLimits::default().reactions_per_user,
            max_distinct_reactions: hubbub_store::StoreLimits::default().distinct_reactions,
            max_rooms_per_user: hubbub_store::StoreLimits::default().rooms_per_user,
            max_members_per_room: hubbub_store::StoreLimits::default().members_per_room,
        }
    }
}

/// The namespace of room channels. History is 0 here because the room's stream is the
/// store's event log, served through the hooks.
pub fn room_namespace() -> NamespaceConfig {
    NamespaceConfig {
        name: ROOM_NAMESPACE.into(),
        presence: true,
        join_leave: false,
        force_push_join_leave: false,
        history_size: 0,
        history_ttl: Duration::ZERO,
        force_recovery: true,
        force_positioning: true,
        allow_publish_for_client: false,
        allow_publish_for_subscriber: false,
        allow_subscribe_for_client: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
        // The store acknowledges a message once committed; the broker keeps nothing here.
        durable_publish: false,
        // The room's rules are the chat's own (its hooks), never a proxy's.
        ..Default::default()
    }
}

pub const ROOM_NAMESPACE: &str = "room";

pub fn room_channel(room: i64) -> String {
    format!("{ROOM_NAMESPACE}:{room}")
}

pub fn user_channel(user: i64) -> String {
    format!("user#{user}")
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Chat {
    pub node: Arc<Node>,
    pub store: Arc<dyn ChatStore>,
    pub config: ChatConfig,
    limiter: accounts::AuthLimiter,
    /// Message writes per user (REST and RPC share it).
    sends: limit::RateLimiter<hubbub_store::UserId>,
    /// The order in which this node delivers each room's events (see `order`).
    pub sequencer: Arc<order::Sequencer>,
    typing: rooms::TypingThrottle,
    /// Serialize each user's presence updates (see `Chat::reconcile_presence`).
    presence_stripes: Vec<tokio::sync::Mutex<()>>,
    /// Password hashes in flight at once. argon2id takes ~19 MiB and a core per hash: a
    /// burst of sign-ups or log-ins must queue here, not multiply memory and starve the
    /// runtime's blocking pool.
    hashing: tokio::sync::Semaphore,
    /// Users by id, for the callers of RPC and REST (ids and usernames never change), so
    /// that a message's path does not read the user from the database each time.
    users: std::sync::Mutex<std::collections::HashMap<hubbub_store::UserId, hubbub_store::User>>,
}

impl Chat {
    /// Builds the chat and plugs it into the node: the `room` namespace's hooks, the chat's
    /// RPC methods and presence events. The node must have the [`room_namespace`].
    pub fn install(node: Arc<Node>, store: Arc<dyn ChatStore>, config: ChatConfig) -> Arc<Chat> {
        accounts::prepare_dummy_hash();
        let chat = Arc::new(Chat {
            node: node.clone(),
            store: store.clone(),
            typing: rooms::TypingThrottle::new(config.typing_throttle, config.limiter_max_keys),
            limiter: accounts::AuthLimiter::new(&config),
            sends: limit::RateLimiter::per_second(
                config.sends_per_second,
                config.send_burst,
                config.limiter_max_keys,
            ),
            config,
            sequencer: order::Sequencer::new(node.hub.clone(), store.clone()),
            users: Default::default(),
            presence_stripes: (0..stream::PRESENCE_STRIPES).map(|_| Default::default()).collect(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
            ),
        });
        let hooks = stream::RoomHooks { chat: Arc::downgrade(&chat), sequencer: chat.sequencer.clone() };
        node.register_channel_hooks(ROOM_NAMESPACE, Arc::new(hooks));
        node.set_user_events(Arc::new(stream::Presence(Arc::downgrade(&chat))));
        rpc::register(&node, &chat);
        chat
    }

    /// The user with this id (cached), or `unauthorized` when there is none.
    pub async fn caller(&self, id: hubbub_store::UserId) -> ChatResult<hubbub_store::User> {
        if let Some(user) = self.users.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(user.clone());
        }
        let user = self.store.user(id).await?.ok_or_else(|| ChatError::unauthorized("unknown user"))?;
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        // Only a cache: when it holds `chat.limiter_max_keys` users it starts over, so the
        // number of accounts never sets the memory it takes.
        if users.len() >= self.config.limiter_max_keys {
            users.clear();
        }
        users.insert(id, user.clone());
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::ChatConfig;

    #[test]
    fn config_errors_name_the_key() {
        assert!(ChatConfig::default().validate().is_ok());
        let key = |c: ChatConfig| c.validate().unwrap_err().0;
        assert_eq!(key(ChatConfig { sends_per_second: 0.0, ..Default::default() }), "chat.sends_per_second");
        assert_eq!(key(ChatConfig { send_burst: 0, ..Default::default() }), "chat.send_burst");
        assert_eq!(key(ChatConfig { limiter_max_keys: 0, ..Default::default() }), "chat.limiter_max_keys");
        assert_eq!(key(ChatConfig { auth_max_body: 10, ..Default::default() }), "chat.auth_max_body");
        let bad_header = ChatConfig { client_address_header: "not a header".into(), ..Default::default() };
        assert_eq!(key(bad_header), "chat.client_address_header");
    }
}
