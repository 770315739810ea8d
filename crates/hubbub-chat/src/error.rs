//! Errors of the chat's REST API and RPC methods.
//!
//! REST answers `{"error":{"code":"<kind>","message":"<what a person can act on>"}}` with the
//! matching HTTP status; RPC answers the protocol's numeric error with the same message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hubbub_protocol::codes::*;
use hubbub_protocol::ProtocolError;
use hubbub_store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    TooManyRequests,
    /// A bound on what one member may pile up (reactions on a message, ...).
    LimitExceeded,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChatError {
    pub kind: Kind,
    pub message: String,
}

pub type ChatResult<T> = Result<T, ChatError>;

impl ChatError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        ChatError { kind, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    pub fn not_member() -> Self {
        Self::forbidden("you are not a member of this room")
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self.kind {
            Kind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            Kind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Kind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Kind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Kind::Conflict => (StatusCode::CONFLICT, "conflict"),
            Kind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Kind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Kind::LimitExceeded => (StatusCode::CONFLICT, "limit_exceeded"),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ChatError::new(Kind::Conflict, "that is already done"),
            StoreError::NotFound => ChatError::not_found("no such message (or it was deleted)"),
            StoreError::Forbidden => ChatError::forbidden("you cannot change this"),
            StoreError::LimitExceeded(why) => ChatError::new(Kind::LimitExceeded, why),
            other => {
                tracing::error!(error = %other, "store error");
                ChatError::new(Kind::Internal, "the server could not complete this; try again")
            }
        }
    }
}

impl From<ChatError> for ProtocolError {
    fn from(e: ChatError) -> Self {
        let base = match e.kind {
            Kind::BadRequest | Kind::TooLarge | Kind::Conflict => ERROR_BAD_REQUEST,
            Kind::Unauthorized => ERROR_UNAUTHORIZED,
            Kind::Forbidden => ERROR_PERMISSION_DENIED,
            Kind::NotFound => ERROR_UNKNOWN_CHANNEL,
            Kind::TooManyRequests => ERROR_TOO_MANY_REQUESTS,
            Kind::LimitExceeded => ERROR_LIMIT_EXCEEDED,
            Kind::Internal => ERROR_INTERNAL,
        };
        ProtocolError { message: e.message, ..base.into() }
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": { "code": code, "message": self.message } });
        (status, axum::Json(body)).into_response()
    }
}
