//! Error and disconnect codes of the protocol, with their canonical messages.

use serde::Serialize;
use std::borrow::Cow;

/// An error sent in reply to one command: `{"id":N,"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
}

impl ProtocolError {
    const fn code(code: u32, message: &'static str) -> StaticError {
        StaticError { code, message, temporary: false }
    }
}

/// A compile-time description of a [`ProtocolError`].
#[derive(Debug, Clone, Copy)]
pub struct StaticError {
    pub code: u32,
    pub message: &'static str,
    pub temporary: bool,
}

impl From<StaticError> for ProtocolError {
    fn from(e: StaticError) -> Self {
        ProtocolError { code: e.code, message: e.message.to_owned(), temporary: e.temporary }
    }
}

pub const ERROR_INTERNAL: StaticError =
    StaticError { temporary: true, ..ProtocolError::code(100, "internal server error") };
pub const ERROR_UNAUTHORIZED: StaticError = ProtocolError::code(101, "unauthorized");
pub const ERROR_UNKNOWN_CHANNEL: StaticError = ProtocolError::code(102, "unknown channel");
pub const ERROR_PERMISSION_DENIED: StaticError = ProtocolError::code(103, "permission denied");
pub const ERROR_METHOD_NOT_FOUND: StaticError = ProtocolError::code(104, "method not found");
pub const ERROR_ALREADY_SUBSCRIBED: StaticError = ProtocolError::code(105, "already subscribed");
pub const ERROR_LIMIT_EXCEEDED: StaticError = ProtocolError::code(106, "limit exceeded");
pub const ERROR_BAD_REQUEST: StaticError = ProtocolError::code(107, "bad request");
pub const ERROR_NOT_AVAILABLE: StaticError = ProtocolError::code(108, "not available");
pub const ERROR_TOKEN_EXPIRED: StaticError = ProtocolError::code(109, "token expired");
pub const ERROR_EXPIRED: StaticError = ProtocolError::code(110, "expired");
pub const ERROR_TOO_MANY_REQUESTS: StaticError =
    StaticError { temporary: true, ..ProtocolError::code(111, "too many requests") };
pub const ERROR_UNRECOVERABLE_POSITION: StaticError = ProtocolError::code(112, "unrecoverable position");

/// Why the server ends a connection. Over WebSocket it is the close frame's code and reason;
/// over the other transports a `disconnect` push. Codes below 3500 tell the client to
/// reconnect, 3500 and above not to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl Disconnect {
    pub const CONNECTION_CLOSED: Disconnect =
        Disconnect { code: 3000, reason: Cow::Borrowed("connection closed") };
    pub const SHUTDOWN: Disconnect = Disconnect { code: 3001, reason: Cow::Borrowed("shutdown") };
    pub const SERVER_ERROR: Disconnect =
        Disconnect { code: 3004, reason: Cow::Borrowed("internal server error") };
    pub const EXPIRED: Disconnect = Disconnect { code: 3005, reason: Cow::Borrowed("connection expired") };
    pub const SUB_EXPIRED: Disconnect =
        Disconnect { code: 3006, reason: Cow::Borrowed("subscription expired") };
    pub const SLOW: Disconnect = Disconnect { code: 3008, reason: Cow::Borrowed("slow") };
    pub const WRITE_ERROR: Disconnect = Disconnect { code: 3009, reason: Cow::Borrowed("write error") };
    pub const INSUFFICIENT_STATE: Disconnect =
        Disconnect { code: 3010, reason: Cow::Borrowed("insufficient state") };
    pub const FORCE_RECONNECT: Disconnect =
        Disconnect { code: 3011, reason: Cow::Borrowed("force reconnect") };
    pub const NO_PONG: Disconnect = Disconnect { code: 3012, reason: Cow::Borrowed("no pong") };
    pub const TOO_MANY_REQUESTS: Disconnect =
        Disconnect { code: 3013, reason: Cow::Borrowed("too many requests") };
    pub const INVALID_TOKEN: Disconnect = Disconnect { code: 3500, reason: Cow::Borrowed("invalid token") };
    pub const BAD_REQUEST: Disconnect = Disconnect { code: 3501, reason: Cow::Borrowed("bad request") };
    pub const STALE: Disconnect = Disconnect { code: 3502, reason: Cow::Borrowed("stale") };
    pub const FORCE_NO_RECONNECT: Disconnect =
        Disconnect { code: 3503, reason: Cow::Borrowed("force disconnect") };
    pub const CONNECTION_LIMIT: Disconnect =
        Disconnect { code: 3504, reason: Cow::Borrowed("connection limit") };
    pub const CHANNEL_LIMIT: Disconnect = Disconnect { code: 3505, reason: Cow::Borrowed("channel limit") };
    pub const PERMISSION_DENIED: Disconnect =
        Disconnect { code: 3507, reason: Cow::Borrowed("permission denied") };
    pub const TOO_MANY_ERRORS: Disconnect =
        Disconnect { code: 3509, reason: Cow::Borrowed("too many errors") };
    /// WebSocket's own "message too big" close code, which centrifuge-js reports as a
    /// message size limit.
    pub const MESSAGE_TOO_BIG: Disconnect =
        Disconnect { code: 1009, reason: Cow::Borrowed("message too big") };
    /// WebSocket's "protocol error" (RFC 6455 §7.4.1): the client broke the framing rules
    /// (an unmasked frame, a reserved opcode or bit, a stray continuation).
    pub const PROTOCOL_ERROR: Disconnect = Disconnect { code: 1002, reason: Cow::Borrowed("protocol error") };
    /// WebSocket's "invalid frame payload data" (RFC 6455 §8.1): a text message that is
    /// not UTF-8.
    pub const INVALID_PAYLOAD: Disconnect =
        Disconnect { code: 1007, reason: Cow::Borrowed("invalid frame payload data") };

    /// Whether the client is advised to reconnect.
    pub fn reconnect(&self) -> bool {
        self.code < 3500 || (4000..4500).contains(&self.code)
    }
}

/// Unsubscribe push codes: below 2500 final, 2500 and above make the client resubscribe.
pub mod unsubscribe {
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    pub const INSUFFICIENT: (u32, &str) = (2500, "insufficient state");
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
}
