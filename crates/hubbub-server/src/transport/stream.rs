//! HTTP streaming and Server-Sent Events.
//!
//! * `POST /connection/http_stream` and `GET|POST /connection/sse`: bidirectional emulation
//!   for centrifuge-js. The request carries the connect command; later commands arrive by
//!   `POST /emulation` and reach the session through its outbox. HTTP streaming speaks
//!   protobuf when the request's body is `application/octet-stream` (what centrifuge-js
//!   sends in protobuf mode): length-delimited Commands in, length-delimited Replies out.
//!   SSE is JSON only (centrifuge-js does not offer protobuf over it: an `EventSource`
//!   carries text).
//! * `POST /connection/uni_http_stream` and `GET /connection/uni_sse`: unidirectional, for
//!   clients without an SDK. uni_sse marks events with the stream positions reached, so that
//!   a reconnecting `EventSource` resumes from `Last-Event-ID` with no gap or duplicate.
//!
//! The response body is fed by a small channel from the task that drives the session, so a
//! client that stops reading pushes back on the session (whose outbox then overflows and
//! disconnects it as slow), and a client that goes away is noticed at once (the channel
//! closes when the server drops the body).

use super::{disconnect_push, drive, unwrap_push, Inbound, Transport};
use crate::api::ApiError;
use crate::AppState;
use axum::body::{Body, Bytes as BodyBytes};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hubbub_core::session::TransportKind;
use hubbub_core::Session;
use hubbub_protocol::command::{ConnectRequest, SubscribeRequest};
use hubbub_protocol::{Disconnect, Protocol};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks buffered between the session task and the HTTP body.
const BODY_CHANNEL: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// One JSON object per line.
    Lines,
    /// One `data:` event per message.
    Events,
    /// Protobuf: the length-delimited messages, one after the other.
    Delimited,
}

impl Format {
    fn protocol(self) -> Protocol {
        match self {
            Format::Lines | Format::Events => Protocol::Json,
            Format::Delimited => Protocol::Protobuf,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Lines => "application/json",
            Format::Events => "text/event-stream; charset=utf-8",
            Format::Delimited => OCTET_STREAM,
        }
    }
}

const OCTET_STREAM: &str = "application/octet-stream";

/// Whether a request's body is binary (`application/octet-stream`): centrifuge-js's
/// protobuf mode.
pub(crate) fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(OCTET_STREAM))
}

struct StreamTransport {
    tx: mpsc::Sender<Bytes>,
    format: Format,
    unidirectional: bool,
    /// uni_sse only: the position reached in each recoverable channel.
    positions: Option<Positions>,
}

impl StreamTransport {
    fn encode(&mut self, out: &mut BytesMut, frame: &Bytes) {
        let message = if self.unidirectional { unwrap_push(frame) } else { frame.clone() };
        match self.format {
            Format::Lines => {
                out.put_slice(&message);
                out.put_u8(b'\n');
            }
            Format::Delimited => out.put_slice(&message),
            Format::Events if self.unidirectional && &message[..] == b"{}" => {
                // Unidirectional pings are SSE comments: EventSource ignores them, proxies
                // see traffic.
                out.put_slice(b": ping\n\n");
            }
            Format::Events => {
                if let Some(positions) = &mut self.positions {
                    if positions.update(&message) {
                        out.put_slice(b"id: ");
                        out.put_slice(positions.to_event_id().as_bytes());
                        out.put_u8(b'\n');
                    }
                }
                out.put_slice(b"data: ");
                out.put_slice(&message);
                out.put_slice(b"\n\n");
            }
        }
    }
}

impl Transport for StreamTransport {
    async fn write(&mut self, frames: &mut Vec<Bytes>) -> Result<(), ()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 16).sum());
        for frame in frames.drain(..) {
            self.encode(&mut out, &frame);
        }
        self.tx.send(out.freeze()).await.map_err(|_| ())
    }

    async fn read(&mut self) -> Inbound {
        self.tx.closed().await;
        Inbound::Gone
    }

    async fn close(mut self, disconnect: Disconnect) {
        let _ = self.write(&mut vec![disconnect_push(&disconnect, self.format.protocol())]).await;
    }
}

/// The last offset and the epoch reached per channel, carried in uni_sse event ids.
#[derive(Default)]
struct Positions(BTreeMap<String, (u64, String)>);

#[derive(Deserialize)]
struct Position {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// Just enough of an outgoing push to track positions.
#[derive(Deserialize)]
struct PushPeek {
    #[serde(default)]
    channel: String,
    #[serde(rename = "pub")]
    publication: Option<Position>,
    subscribe: Option<Position>,
    connect: Option<ConnectPeek>,
}

#[derive(Deserialize)]
struct ConnectPeek {
    #[serde(default)]
    subs: HashMap<String, Position>,
}

impl Positions {
    /// Records what a push moves; true when a position changed.
    fn update(&mut self, message: &[u8]) -> bool {
        let Ok(peek) = serde_json::from_slice::<PushPeek>(message) else { return false };
        let mut changed = false;
        if let Some(connect) = peek.connect {
            for (channel, p) in connect.subs {
                changed |= self.set(channel, p);
            }
        }
        if let Some(p) = peek.subscribe {
            changed |= self.set(peek.channel.clone(), p);
        }
        if let Some(p) = peek.publication {
            if let Some(known) = self.0.get_mut(&peek.channel) {
                if p.offset > known.0 {
                    known.0 = p.offset;
                    changed = true;
                }
            }
        }
        changed
    }

    fn set(&mut self, channel: String, p: Position) -> bool {
        if p.epoch.is_empty() {
            return false;
        }
        self.0.insert(channel, (p.offset, p.epoch));
        true
    }

    fn to_event_id(&self) -> String {
        serde_json::to_string(&self.0).expect("positions serialize")
    }

    /// Reads an event id back: `{"channel":[offset,"epoch"],..}`.
    fn parse_event_id(id: &str) -> Option<BTreeMap<String, (u64, String)>> {
        serde_json::from_str(id).ok()
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// 413, naming the limit.
fn body_too_large(limit: usize) -> ApiError {
    ApiError::bad_request(format!("bad request: request body over {limit} bytes (http.max_request_body)"))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

pub(crate) fn too_big(state: &AppState, body: &[u8]) -> Result<(), ApiError> {
    let limit = state.config.http.max_request_body;
    if body.len() > limit {
        return Err(body_too_large(limit));
    }
    Ok(())
}

/// A request body of at most `http.max_request_body` bytes, arrived within
/// `http.body_timeout`. Read as it arrives and refused (413, JSON) as soon as it goes over: a
/// client cannot make the server buffer more, whatever `Content-Length` it announces, nor
/// hold the connection by stalling mid-body (408).
pub(crate) struct LimitedBody(pub BodyBytes);

impl FromRequest<Arc<AppState>> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = state.config.http.max_request_body;
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(body_too_large(limit));
        }
        let mut chunks = request.into_body().into_data_stream();
        let read = async {
            let mut body = BytesMut::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk
                    .map_err(|e| ApiError::bad_request(format!("bad request: cannot read the body: {e}")))?;
                if body.len() + chunk.len() > limit {
                    return Err(body_too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(LimitedBody(body.freeze()))
        };
        let timeout = state.config.http.body_timeout;
        tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
            tracing::info!(?timeout, "request body too slow");
            Err(ApiError::bad_request(format!(
                "bad request: the body did not arrive within {timeout:?} (http.body_timeout)"
            ))
            .with_status(StatusCode::REQUEST_TIMEOUT))
        })
    }
}

/// Starts a bidirectional emulation session whose first frame is `connect`.
fn start_emulation(
    state: &AppState,
    headers: &HeaderMap,
    name: &'static str,
    format: Format,
    connect: Bytes,
) -> Response {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
    let kind = TransportKind { name, emulation: true, unidirectional: false };
    let mut session = Session::with_protocol(state.node.clone(), kind, format.protocol());
    session.set_forwarded_headers(crate::proxy::kept_headers(&state.node, headers));
    let transport = StreamTransport { tx, format, unidirectional: false, positions: None };
    tokio::spawn(drive(session, transport, Some(connect)));
    stream_response(rx, format.content_type())
}

fn utf8(body: BodyBytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("bad request: body is not UTF-8".into()))
}

pub async fn http_stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    if is_binary(&headers) {
        return Ok(start_emulation(&state, &headers, "http_stream", Format::Delimited, body));
    }
    Ok(start_emulation(&state, &headers, "http_stream", Format::Lines, utf8(body)?.into()))
}

pub async fn sse_get(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(connect) = query.get("cf_connect") else {
        return Err(ApiError::bad_request("bad request: cf_connect query parameter is required".into()));
    };
    too_big(&state, connect.as_bytes())?;
    Ok(start_emulation(&state, &headers, "sse", Format::Events, Bytes::from(connect.clone())))
}

pub async fn sse_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    Ok(start_emulation(&state, &headers, "sse", Format::Events, utf8(body)?.into()))
}

/// Starts a unidirectional session: connect at once, then stream pushes.
async fn start_unidirectional(
    state: &AppState,
    headers: &HeaderMap,
    name: &'static str,
    format: Format,
    request: ConnectRequest,
) -> Response {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
    let kind = TransportKind { name, emulation: false, unidirectional: true };
    let positions = (format == Format::Events).then(Positions::default);
    let transport = StreamTransport { tx, format, unidirectional: true, positions };
    let mut session = Session::new(state.node.clone(), kind);
    session.set_forwarded_headers(crate::proxy::kept_headers(&state.node, headers));
    let content_type =
        if format == Format::Events { "text/event-stream; charset=utf-8" } else { "application/json" };
    let response = stream_response(rx, content_type);
    tokio::spawn(async move {
        if let Err(d) = session.connect_unidirectional(request).await {
            transport.close(d).await;
            session.close().await;
            return;
        }
        drive(session, transport, None).await
    });
    response
}

fn parse_connect_request(text: &str) -> Result<ConnectRequest, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("bad request: malformed connect request: {e}")))
}

pub async fn uni_http_stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    let request = parse_connect_request(&utf8(body)?)?;
    Ok(start_unidirectional(&state, &headers, "uni_http_stream", Format::Lines, request).await)
}

pub async fn uni_sse(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = query.get("cf_connect").map(String::as_str).unwrap_or("{}");
    too_big(&state, text.as_bytes())?;
    let mut request = parse_connect_request(text)?;
    // A reconnecting EventSource resumes from the positions in its last event id; explicit
    // positions in the connect request win.
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    too_big(&state, last_event_id.unwrap_or_default().as_bytes())?;
    if let Some(positions) = last_event_id.and_then(Positions::parse_event_id) {
        for (channel, (offset, epoch)) in positions {
            request.subs.entry(channel).or_insert_with(|| SubscribeRequest {
                recover: true,
                offset,
                epoch,
                ..Default::default()
            });
        }
    }
    Ok(start_unidirectional(&state, &headers, "uni_sse", Format::Events, request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_connect_subscribe_and_publications() {
        let mut p = Positions::default();
        assert!(
            p.update(br#"{"connect":{"client":"c","subs":{"news":{"epoch":"e1","offset":3},"plain":{}}}}"#)
        );
        assert_eq!(p.to_event_id(), r#"{"news":[3,"e1"]}"#);
        assert!(p.update(br#"{"channel":"news","pub":{"data":{"x":[1]},"offset":4}}"#));
        assert!(!p.update(br#"{"channel":"plain","pub":{"data":1}}"#));
        assert!(p.update(br#"{"channel":"more","subscribe":{"epoch":"e2","offset":9}}"#));
        assert_eq!(p.to_event_id(), r#"{"more":[9,"e2"],"news":[4,"e1"]}"#);
        let back = Positions::parse_event_id(&p.to_event_id()).unwrap();
        assert_eq!(back.get("news"), Some(&(4, "e1".to_string())));
        assert!(Positions::parse_event_id("garbage").is_none());
    }
}
