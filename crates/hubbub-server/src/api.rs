//! The server HTTP API, Centrifugo-compatible: `POST /api/<method>` with a JSON body and the
//! API key in `X-API-Key` (or `Authorization: apikey KEY`). Answers `{"result":{..}}` or
//! `{"error":{"code","message"}}`: 401 for a bad key, 400 for a bad body, 404 for an unknown
//! method, and 200 with an error body for what the method itself refuses. An unknown field
//! in a request is a 400 naming it. The methods themselves are `hubbub_core::api`'s
//! operations, shared with the gRPC API.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hubbub_core::api::{ApiError as OpError, BatchRequest, Command};
use hubbub_protocol::codes::*;
use hubbub_protocol::ProtocolError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
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

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad request: {e}")))
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::BadRequest(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_protocol()),
            OpError::Refused(e) => ApiError::from(e),
        }
    }
}

/// A successful answer: `{"result": ...}`.
#[derive(Serialize)]
struct Answer<T> {
    result: T,
}

/// Decodes the request, runs the operation, encodes its result as `{"result": ..}`.
async fn run<Req, Res, Fut>(body: &[u8], op: impl FnOnce(Req) -> Fut) -> Result<Response, ApiError>
where
    Req: DeserializeOwned,
    Res: Serialize,
    Fut: std::future::Future<Output = Result<Res, OpError>>,
{
    let result = op(parse(body)?).await?;
    Ok(axum::Json(Answer { result }).into_response())
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
    let api = &state.api;
    match method.as_str() {
        "publish" => run(&body, |r| api.publish(r)).await,
        "broadcast" => run(&body, |r| api.broadcast(r)).await,
        // The user's connections may be on any node: these commands go to all of them.
        "subscribe" => run(&body, |r| api.subscribe(r)).await,
        "unsubscribe" => run(&body, |r| api.unsubscribe(r)).await,
        "disconnect" => run(&body, |r| api.disconnect(r)).await,
        "refresh" => run(&body, |r| api.refresh(r)).await,
        "presence" => run(&body, |r| api.presence(r)).await,
        "presence_stats" => run(&body, |r| api.presence_stats(r)).await,
        "history" => run(&body, |r| api.history(r)).await,
        "history_remove" => run(&body, |r| api.history_remove(r)).await,
        "channels" => run(&body, |r| api.channels(r)).await,
        "info" => run(&body, |r| api.info(r)).await,
        "rpc" => run(&body, |r| api.rpc(r)).await,
        // As in Centrifugo: `{"replies": [..]}`, not wrapped in `result`.
        "batch" => {
            let batch: BatchRequest = parse(&body)?;
            Ok(axum::Json(api.batch(batch).await?).into_response())
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, ERROR_METHOD_NOT_FOUND)),
    }
}

/// One line of the legacy API (`POST /api`, Centrifugo before v5 and clients that still use
/// it, such as cent.js's `pipeline`): `{"method": "publish", "params": {..}}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyCommand {
    #[serde(default)]
    id: u32,
    method: String,
    #[serde(default)]
    params: Option<Box<serde_json::value::RawValue>>,
}

/// `POST /api` with newline-separated commands, answered with one line per command in
/// order: `{"result": ..}` or `{"error": ..}` (with the command's `id` when it had one). The
/// same operations as `/api/<method>`, at most `api.batch_max_commands` per request. Lines
/// are joined by `\n` with none after the last (cent.js parses every piece between them).
pub async fn handle_legacy(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !authorized(&headers, &state.config.auth.api_key) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, ERROR_UNAUTHORIZED));
    }
    let body = body.map_err(|e| {
        ApiError::bad_request(format!("bad request: {}", e.body_text())).with_status(e.status())
    })?;
    let lines: Vec<&[u8]> =
        body.split(|&b| b == b'\n').filter(|line| !line.iter().all(u8::is_ascii_whitespace)).collect();
    let max = state.api.config().batch_max_commands;
    if lines.len() > max {
        return Err(ApiError::bad_request(format!(
            "bad request: {} commands, more than `api.batch_max_commands` ({max})",
            lines.len()
        )));
    }
    if lines.is_empty() {
        return Err(ApiError::bad_request("bad request: no command".into()));
    }
    let commands: Vec<LegacyCommand> = lines.into_iter().map(parse).collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for LegacyCommand { id, method, params } in commands {
        let reply = match legacy_command(&method, params.as_deref()) {
            Ok(command) => match serde_json::to_value(state.api.command(command).await) {
                Ok(serde_json::Value::Object(map)) => map.into_iter().next(),
                _ => None,
            },
            Err(error) => Some(("error".to_owned(), json!(error))),
        };
        let (kind, value) =
            reply.unwrap_or_else(|| ("error".to_owned(), json!(ProtocolError::from(ERROR_INTERNAL))));
        let key = if kind == "error" { "error" } else { "result" };
        if !out.is_empty() {
            out.push(b'\n');
        }
        let mut line = serde_json::Map::new();
        if id != 0 {
            line.insert("id".into(), json!(id));
        }
        line.insert(key.into(), value);
        serde_json::to_writer(&mut out, &line)
            .map_err(|_| ApiError::from(ProtocolError::from(ERROR_INTERNAL)))?;
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// A legacy command as one of the API's commands: unknown methods are 104, bad params 107.
fn legacy_command(
    method: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Result<Command, ProtocolError> {
    if !Command::METHODS.contains(&method) {
        return Err(ERROR_METHOD_NOT_FOUND.into());
    }
    let params = params.map(|p| p.get()).unwrap_or("{}");
    let text = format!("{{{}:{params}}}", json!(method));
    serde_json::from_str(&text).map_err(|e| ProtocolError {
        code: ERROR_BAD_REQUEST.code,
        message: format!("bad request: {e}"),
        temporary: false,
    })
}

/// What [`execute`] answers: the method's result as JSON (`Publish` is kept for callers that
/// match on it; it is not produced).
pub enum ApiAnswer {
    Publish(Value),
    Json(Value),
}

impl ApiError {
    /// The protocol error of the answer.
    pub fn error(&self) -> &ProtocolError {
        &self.error
    }
}

/// Runs one server API method on a JSON body, as `POST /api/<method>` does after the key
/// check: the async consumers' way in. The same operations (`hubbub_core::api`); the
/// idempotency keys of these calls are not shared with the HTTP API's (the consumers keep
/// their own exactly-once record).
pub async fn execute(
    node: &Arc<hubbub_core::Node>,
    method: &str,
    body: &[u8],
) -> Result<ApiAnswer, ApiError> {
    if !Command::METHODS.contains(&method) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, ERROR_METHOD_NOT_FOUND));
    }
    let api = hubbub_core::api::ServerApi::new(node.clone(), Default::default());
    let params =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("bad request: not UTF-8".into()))?;
    let params = if params.trim().is_empty() { "{}" } else { params };
    let command: Command = parse(format!("{{{}:{params}}}", json!(method)).as_bytes())?;
    let reply = serde_json::to_value(api.command(command).await)
        .map_err(|_| ApiError::from(ProtocolError::from(ERROR_INTERNAL)))?;
    match reply {
        Value::Object(map) => match map.into_iter().next() {
            Some((kind, value)) if kind == "error" => {
                let error: ProtocolError = ProtocolError {
                    code: value["code"].as_u64().unwrap_or(100) as u32,
                    message: value["message"].as_str().unwrap_or_default().to_owned(),
                    temporary: value["temporary"].as_bool().unwrap_or(false),
                };
                let status = if error.code == ERROR_BAD_REQUEST.code {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                Err(ApiError::new(status, error))
            }
            Some((_, value)) => Ok(ApiAnswer::Json(value)),
            None => Err(ApiError::from(ProtocolError::from(ERROR_INTERNAL))),
        },
        _ => Err(ApiError::from(ProtocolError::from(ERROR_INTERNAL))),
    }
}
