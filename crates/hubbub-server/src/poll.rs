//! Long polling and polling over plain HTTP, for clients without a socket (curl, cron jobs,
//! devices): `GET /api/poll?channel=CH&since=OFFSET&epoch=E&wait=SECONDS` with
//! `Authorization: Bearer <connection token>`.
//!
//! A poll that finds nothing after `since` listens on the hub *before* it reads the stream,
//! so a publication landing between the read and the wait still wakes it; it then reads the
//! stream again, so what it returns is always the stream's own ordered, gap-free slice.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hubbub_core::auth::TokenError;
use hubbub_core::channel::ChannelError;
use hubbub_core::engine::{EngineError, HistoryQuery};
use hubbub_core::hub::Connection;
use hubbub_core::Node;
use hubbub_protocol::codes::*;
use hubbub_protocol::{ProtocolError, StreamPosition};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The queue of a waiting poll only needs to hold one wake-up.
const WAITER_QUEUE_BYTES: usize = 16 * 1024;

fn parse_number<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("bad request: `{key}` must be a non-negative integer"))
        }),
    }
}

/// How many long polls each token subject has waiting. A waiting poll holds a listener in
/// the hub (and its HTTP connection) for up to `http.poll_max_wait`: without a bound, one
/// token could keep any number of them.
#[derive(Default)]
pub struct Waiters(Arc<Mutex<HashMap<String, usize>>>);

/// One waiting poll's place, given back on drop (also when the client goes away).
struct Place {
    waiters: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Waiters {
    fn lock(map: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `user`, or `None` when it already has `max` polls waiting.
    fn enter(&self, user: &str, max: usize) -> Option<Place> {
        let mut map = Self::lock(&self.0);
        let count = map.entry(user.to_owned()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Place { waiters: self.0.clone(), user: user.to_owned() })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = Waiters::lock(&self.waiters);
        if let Some(count) = map.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// Listens on a channel for the duration of one poll.
struct Waiter {
    node: Arc<Node>,
    channel: String,
    conn: Arc<Connection>,
}

impl Waiter {
    async fn listen(node: &Arc<Node>, channel: &str) -> Result<Waiter, EngineError> {
        let conn = Connection::new(WAITER_QUEUE_BYTES);
        if node.hub.subscribe(channel, &conn, false, false, false) {
            node.broker.subscribe(channel).await?;
        }
        Ok(Waiter { node: node.clone(), channel: channel.to_owned(), conn })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Also runs when the client goes away mid-wait (the handler future is dropped).
        if self.node.hub.unsubscribe(&self.channel, &self.conn) {
            let node = self.node.clone();
            let channel = std::mem::take(&mut self.channel);
            tokio::spawn(async move {
                let _ = node.broker.unsubscribe(&channel).await;
            });
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

pub async fn poll(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let Some(token) = bearer(&headers) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, ERROR_UNAUTHORIZED));
    };
    let claims = match node.tokens.verify_connect(token).await {
        Ok(c) => c,
        Err(TokenError::Expired) => return Err(ApiError::new(StatusCode::UNAUTHORIZED, ERROR_TOKEN_EXPIRED)),
        Err(TokenError::Unavailable(why)) => {
            tracing::warn!(%why, "poll token not verified now");
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ERROR_INTERNAL));
        }
        Err(TokenError::Invalid(_)) => {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, ERROR_UNAUTHORIZED))
        }
    };
    let channel = query.get("channel").cloned().unwrap_or_default();
    let since: Option<u64> = parse_number(&query, "since")?;
    let wait: u64 = parse_number(&query, "wait")?.unwrap_or(0);
    let max_wait = state.config.http.poll_max_wait;
    if Duration::from_secs(wait) > max_wait {
        return Err(ApiError::bad_request(format!(
            "bad request: `wait` is over the maximum of {}s (http.poll_max_wait)",
            max_wait.as_secs()
        )));
    }
    let (ns, name) = node.namespaces.resolve(&channel).map_err(|e| match e {
        ChannelError::UnknownNamespace(_) => ApiError::new(StatusCode::NOT_FOUND, ERROR_UNKNOWN_CHANNEL),
        ChannelError::Empty => ApiError::bad_request("bad request: `channel` is required".into()),
        ChannelError::TooLong => ApiError::bad_request("bad request: `channel` is too long".into()),
    })?;
    if !node.has_stream(ns) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, ERROR_NOT_AVAILABLE));
    }
    let forbidden = |e| ApiError::new(StatusCode::FORBIDDEN, e);
    node.authorize_subscribe(&claims.user, &channel, &name, ns, "").await.map_err(forbidden)?;
    let engine = |e: EngineError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ProtocolError::from(e));

    let position_only = HistoryQuery { limit: Some(0), ..Default::default() };
    let current = node.read_stream(&channel, ns, position_only.clone()).await.map_err(engine)?.position;
    let Some(since) = since else {
        return Ok(answer(Vec::new(), current));
    };
    let epoch = query.get("epoch").filter(|e| !e.is_empty()).cloned().unwrap_or(current.epoch.clone());
    let asked = StreamPosition { offset: since, epoch };
    // Bounded like every answer: what does not fit comes with the next poll, which asks
    // from the `offset` of this one (the last publication returned).
    let after = HistoryQuery {
        since: Some(asked.clone()),
        limit: Some(node.client.max_history_limit),
        reverse: false,
        max_bytes: Some(node.client.answer_bytes()),
    };

    let max_waiters = state.config.http.poll_max_waiters_per_user;
    let _place = match wait {
        0 => None,
        _ => Some(state.poll_waiters.enter(&claims.user, max_waiters).ok_or_else(|| {
            tracing::info!(user = %claims.user, "too many waiting long polls");
            let error = ProtocolError {
                message: format!(
                    "too many waiting polls: at most {max_waiters} per user (http.poll_max_waiters_per_user)"
                ),
                ..ERROR_TOO_MANY_REQUESTS.into()
            };
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, error)
        })?),
    };
    let waiter = if wait > 0 { Some(Waiter::listen(node, &channel).await.map_err(engine)?) } else { None };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        match node.read_stream(&channel, ns, after.clone()).await {
            Ok(page) if !page.publications.is_empty() || waiter.is_none() => {
                return Ok(answer(page.publications, page.position));
            }
            Ok(_) => {}
            Err(EngineError::UnrecoverablePosition) => {
                let current = node.read_stream(&channel, ns, position_only).await.map_err(engine)?.position;
                let body = json!({
                    "error": ProtocolError::from(ERROR_UNRECOVERABLE_POSITION),
                    "offset": current.offset,
                    "epoch": current.epoch,
                });
                return Ok((StatusCode::GONE, axum::Json(body)).into_response());
            }
            Err(e) => return Err(engine(e)),
        }
        let waiter = waiter.as_ref().expect("waiting only with a waiter");
        if tokio::time::timeout_at(deadline, waiter.conn.outbox.ready()).await.is_err() {
            return Ok(answer(Vec::new(), asked));
        }
        // The queued frames only served as a wake-up: the answer comes from the stream.
        waiter.conn.outbox.clear();
    }
}

/// The poll's answer: the publications and the position to ask from next.
fn answer(publications: Vec<hubbub_protocol::Publication>, position: StreamPosition) -> Response {
    let offset = publications.last().map_or(position.offset, |p| p.offset);
    axum::Json(json!({ "publications": publications, "offset": offset, "epoch": position.epoch }))
        .into_response()
}
