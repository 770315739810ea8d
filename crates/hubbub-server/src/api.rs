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
use hubbub_core::cluster::UserCommand;
use hubbub_core::engine::HistoryPage;
use hubbub_protocol::codes::*;
use hubbub_protocol::{Disconnect, Json, ProtocolError, StreamPosition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
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
    /// Delivered with the publication and kept in history (the async consumers mark what
    /// they publish with one: see `consumers`).
    #[serde(default)]
    tags: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct BroadcastRequest {
    channels: Vec<String>,
    data: Json,
    #[serde(default)]
    tags: Option<HashMap<String, String>>,
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
struct RefreshRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    /// Expire the connection now.
    #[serde(default)]
    expired: bool,
    /// Unix seconds when the connection expires; absent or 0: never.
    #[serde(default)]
    expire_at: Option<u64>,
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

/// What a method answers: the hot `publish` keeps its type (serialized without a JSON tree).
pub enum ApiAnswer {
    Publish(PublishResult),
    Json(Value),
}

impl IntoResponse for ApiAnswer {
    fn into_response(self) -> Response {
        match self {
            ApiAnswer::Publish(result) => axum::Json(Answer { result }).into_response(),
            ApiAnswer::Json(result) => axum::Json(Answer { result }).into_response(),
        }
    }
}

impl ApiError {
    /// The protocol error of the answer.
    pub fn error(&self) -> &ProtocolError {
        &self.error
    }
}

#[derive(Serialize)]
pub struct PublishResult {
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
    Ok(execute(&state.node, &method, &body).await?.into_response())
}

/// Runs one server API method on a JSON body: what `POST /api/<method>` does after the key
/// check, and what the async consumers do with each entry.
pub async fn execute(node: &hubbub_core::Node, method: &str, body: &[u8]) -> Result<ApiAnswer, ApiError> {
    let result: Value = match method {
        "publish" => {
            let req: PublishRequest = parse(body)?;
            require("channel", &req.channel)?;
            let position = node.publish_tagged(&req.channel, req.data, None, req.tags).await?;
            // The hot method: serialized straight from its type, without a JSON tree.
            return Ok(ApiAnswer::Publish(PublishResult::from(position)));
        }
        "broadcast" => {
            let req: BroadcastRequest = parse(body)?;
            let mut responses = Vec::with_capacity(req.channels.len());
            for channel in &req.channels {
                let tags = req.tags.clone();
                responses.push(match node.publish_tagged(channel, req.data.clone(), None, tags).await {
                    Ok(position) => json!({ "result": PublishResult::from(position) }),
                    Err(error) => json!({ "error": error }),
                });
            }
            json!({ "responses": responses })
        }
        // The user's connections may be on any node: these commands go to all of them.
        "subscribe" => {
            let UserChannelRequest { user, channel, client } = parse(body)?;
            require("user", &user)?;
            node.user_command(UserCommand::Subscribe { user, channel, client }).await?;
            json!({})
        }
        "unsubscribe" => {
            let UserChannelRequest { user, channel, client } = parse(body)?;
            require("user", &user)?;
            node.user_command(UserCommand::Unsubscribe { user, channel, client }).await?;
            json!({})
        }
        "refresh" => {
            let RefreshRequest { user, client, expired, expire_at } = parse(body)?;
            require("user", &user)?;
            let expire_at = expire_at.filter(|&at| at > 0);
            node.user_command(UserCommand::Refresh { user, client, expired, expire_at }).await?;
            json!({})
        }
        "disconnect" => {
            let req: DisconnectRequest = parse(body)?;
            require("user", &req.user)?;
            let (code, reason) = match req.disconnect {
                Some(d) if (3000..5000).contains(&d.code) => (d.code, d.reason),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "bad request: disconnect.code must be in 3000..4999".into(),
                    ))
                }
                None => (Disconnect::FORCE_NO_RECONNECT.code, Disconnect::FORCE_NO_RECONNECT.reason.into()),
            };
            node.user_command(UserCommand::Disconnect { user: req.user, client: req.client, code, reason })
                .await?;
            json!({})
        }
        "presence" => {
            let req: ChannelRequest = parse(body)?;
            json!({ "presence": node.presence(&req.channel).await? })
        }
        "presence_stats" => {
            let req: ChannelRequest = parse(body)?;
            let stats = node.presence_stats(&req.channel).await?;
            json!({ "num_clients": stats.num_clients, "num_users": stats.num_users })
        }
        "history" => {
            let req: HistoryRequest = parse(body)?;
            history_json(node.history(&req.channel, req.limit, req.since, req.reverse).await?)
        }
        "history_remove" => {
            let req: ChannelRequest = parse(body)?;
            node.remove_history(&req.channel).await?;
            json!({})
        }
        "channels" => {
            let req: ChannelsRequest = parse(body)?;
            let answer = node.cluster_channels(&req.pattern).await?;
            let channels: HashMap<String, Value> =
                answer.channels.into_iter().map(|(name, n)| (name, json!({ "num_clients": n }))).collect();
            let mut result = json!({ "channels": channels });
            if answer.truncated {
                result["truncated"] = json!(true);
            }
            if answer.missing_nodes > 0 {
                result["missing_nodes"] = json!(answer.missing_nodes);
            }
            result
        }
        "info" => {
            parse::<serde::de::IgnoredAny>(body)?;
            json!({ "nodes": node.cluster_info() })
        }
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, ERROR_METHOD_NOT_FOUND)),
    };
    Ok(ApiAnswer::Json(result))
}
