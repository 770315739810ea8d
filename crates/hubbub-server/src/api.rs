//! The server HTTP API, Centrifugo-compatible: `POST /api/<method>` with a JSON body and the
//! API key in `X-API-Key` (or `Authorization: apikey KEY`). Answers `{"result":{..}}` or
//! `{"error":{"code","message"}}`: 401 for a bad key, 400 for a bad body, 404 for an unknown
//! method, and 200 with an error body for what the method itself refuses.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hubbub_core::engine::HistoryPage;
use hubbub_protocol::codes::*;
use hubbub_protocol::{Disconnect, Json, ProtocolError, StreamPosition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A failed API call: the HTTP status and the protocol error in the body.
pub struct ApiError {
    status: StatusCode,
    error: ProtocolError,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<ProtocolError>) -> Self {
        ApiError { status, error: error.into() }
    }

    /// 400 with error 107 and a message that says what is wrong.
    pub fn bad_request(message: String) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ProtocolError { code: ERROR_BAD_REQUEST.code, message, temporary: false },
        )
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<ProtocolError> for ApiError {
    fn from(error: ProtocolError) -> Self {
        ApiError { status: StatusCode::OK, error }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.error }))).into_response()
    }
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok()).or_else(|| {
        let auth = headers.get("authorization")?.to_str().ok()?;
        let (scheme, value) = auth.split_once(' ')?;
        scheme.eq_ignore_ascii_case("apikey").then_some(value.trim())
    });
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad request: {e}")))
}

fn require(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("bad request: `{field}` is required")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct PublishRequest {
    channel: String,
    data: Json,
}

#[derive(Deserialize)]
struct BroadcastRequest {
    channels: Vec<String>,
    data: Json,
}

#[derive(Deserialize)]
struct ChannelRequest {
    channel: String,
}

#[derive(Deserialize)]
struct UserChannelRequest {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    disconnect: Option<DisconnectSpec>,
}

#[derive(Deserialize)]
struct HistoryRequest {
    channel: String,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize, Default)]
struct ChannelsRequest {
    #[serde(default)]
    pattern: String,
}

/// A successful answer: `{"result": ...}`.
#[derive(Serialize)]
struct Answer<T> {
    result: T,
}

#[derive(Serialize)]
struct PublishResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
}

impl From<StreamPosition> for PublishResult {
    fn from(p: StreamPosition) -> Self {
        if p.epoch.is_empty() {
            PublishResult { offset: None, epoch: None }
        } else {
            PublishResult { offset: Some(p.offset), epoch: Some(p.epoch) }
        }
    }
}

fn history_json(page: HistoryPage) -> Value {
    json!({
        "publications": page.publications,
        "offset": page.position.offset,
        "epoch": page.position.epoch,
    })
}

/// Whether `name` matches a pattern where `*` stands for any run of characters.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().expect("split yields one part at least");
    let Some(mut remaining) = name.strip_prefix(first) else { return false };
    for (i, part) in rest.iter().enumerate() {
        let last = i == rest.len() - 1;
        if last {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.is_empty()
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !authorized(&headers, &state.config.auth.api_key) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, ERROR_UNAUTHORIZED));
    }
    // Over axum's body limit (2 MB) or unreadable: the API's JSON error, not axum's plain text.
    let body = body.map_err(|e| {
        ApiError::bad_request(format!("bad request: {}", e.body_text())).with_status(e.status())
    })?;
    let node = &state.node;
    let result: Value = match method.as_str() {
        "publish" => {
            let req: PublishRequest = parse(&body)?;
            require("channel", &req.channel)?;
            let result = PublishResult::from(node.publish(&req.channel, req.data, None).await?);
            // The hot method: serialized straight from its type, without a JSON tree.
            return Ok(axum::Json(Answer { result }).into_response());
        }
        "broadcast" => {
            let req: BroadcastRequest = parse(&body)?;
            let mut responses = Vec::with_capacity(req.channels.len());
            for channel in &req.channels {
                responses.push(match node.publish(channel, req.data.clone(), None).await {
                    Ok(position) => json!({ "result": PublishResult::from(position) }),
                    Err(error) => json!({ "error": error }),
                });
            }
            json!({ "responses": responses })
        }
        "subscribe" => {
            let req: UserChannelRequest = parse(&body)?;
            require("user", &req.user)?;
            node.subscribe_user(&req.user, &req.channel, req.client.as_deref())?;
            json!({})
        }
        "unsubscribe" => {
            let req: UserChannelRequest = parse(&body)?;
            require("user", &req.user)?;
            node.unsubscribe_user(&req.user, &req.channel, req.client.as_deref())?;
            json!({})
        }
        "disconnect" => {
            let req: DisconnectRequest = parse(&body)?;
            require("user", &req.user)?;
            let disconnect = match req.disconnect {
                Some(d) if (3000..5000).contains(&d.code) => {
                    Disconnect { code: d.code, reason: Cow::Owned(d.reason) }
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "bad request: disconnect.code must be in 3000..4999".into(),
                    ))
                }
                None => Disconnect::FORCE_NO_RECONNECT,
            };
            node.disconnect_user(&req.user, req.client.as_deref(), disconnect);
            json!({})
        }
        "presence" => {
            let req: ChannelRequest = parse(&body)?;
            json!({ "presence": node.presence(&req.channel).await? })
        }
        "presence_stats" => {
            let req: ChannelRequest = parse(&body)?;
            let stats = node.presence_stats(&req.channel).await?;
            json!({ "num_clients": stats.num_clients, "num_users": stats.num_users })
        }
        "history" => {
            let req: HistoryRequest = parse(&body)?;
            history_json(node.history(&req.channel, req.limit, req.since, req.reverse).await?)
        }
        "history_remove" => {
            let req: ChannelRequest = parse(&body)?;
            node.remove_history(&req.channel).await?;
            json!({})
        }
        "channels" => {
            let req: ChannelsRequest = parse(&body)?;
            let channels: HashMap<String, Value> = node
                .hub
                .channels()
                .into_iter()
                .filter(|(name, _)| matches_pattern(&req.pattern, name))
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            json!({ "channels": channels })
        }
        "info" => {
            parse::<serde::de::IgnoredAny>(&body)?;
            json!({ "nodes": [node.info()] })
        }
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, ERROR_METHOD_NOT_FOUND)),
    };
    Ok(axum::Json(Answer { result }).into_response())
}

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn patterns() {
        assert!(matches_pattern("", "a"));
        assert!(matches_pattern("chat:*", "chat:1"));
        assert!(!matches_pattern("chat:*", "news"));
        assert!(matches_pattern("*:1", "chat:1"));
        assert!(matches_pattern("a*b*c", "aXXbYYc"));
        assert!(!matches_pattern("a*b*c", "aXXbYY"));
        assert!(matches_pattern("exact", "exact"));
        assert!(!matches_pattern("exact", "exactly"));
    }
}
