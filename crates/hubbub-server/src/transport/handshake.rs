//! The server side of the WebSocket opening handshake (RFC 6455 §4.2) over hyper's upgrade,
//! giving the session the connection's own [`TcpStream`].
//!
//! Why not axum's `WebSocketUpgrade`: it wraps the socket in hyper's `Upgraded` (a boxed,
//! rewindable stream) and its own message types on top of tokio-tungstenite's, a layer of
//! dynamic calls and conversions on every frame of every connection. The accept loop
//! ([`crate::accept`]) serves every connection over a [`ServedIo`], so the upgraded
//! connection downcasts back to the bare stream, and tokio-tungstenite runs on it directly.

use crate::accept::ServedIo;
use crate::api::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hubbub_protocol::codes::ERROR_BAD_REQUEST;
use hubbub_protocol::{Protocol, ProtocolError};
use std::future::Future;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection on its own socket.
pub type Socket = WebSocketStream<TcpStream>;

/// A valid upgrade request, not yet answered.
pub struct WebSocketUpgrade {
    accept_key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The protocol the client asked for (see [`choose_protocol`]).
    pub protocol: Protocol,
    /// The subprotocol agreed, echoed in the answer.
    subprotocol: Option<&'static str>,
}

/// The WebSocket subprotocols of the client protocol (centrifuge-js asks for the protobuf
/// one in protobuf mode).
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// The protocol a WebSocket client asks for: the `centrifuge-protobuf` (or
/// `centrifuge-json`) subprotocol, or else the `cf_protocol` query parameter (`json`, the
/// default, or `protobuf`), as Centrifugo reads them.
fn choose_protocol(parts: &Parts) -> Result<(Protocol, Option<&'static str>), Refused> {
    let offered = |name| has_token(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL, name);
    if offered(PROTOBUF_SUBPROTOCOL) {
        return Ok((Protocol::Protobuf, Some(PROTOBUF_SUBPROTOCOL)));
    }
    if offered(JSON_SUBPROTOCOL) {
        return Ok((Protocol::Json, Some(JSON_SUBPROTOCOL)));
    }
    let query = parts.uri.query().unwrap_or_default();
    let value = query.split('&').find_map(|pair| pair.strip_prefix("cf_protocol="));
    match value {
        None | Some("json") => Ok((Protocol::Json, None)),
        Some("protobuf") => Ok((Protocol::Protobuf, None)),
        Some(other) => Err(Refused::Protocol(other.chars().take(32).collect())),
    }
}

/// Why a request cannot be upgraded: answered with an HTTP status and a JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("a WebSocket upgrade must be a GET request")]
    NotGet,
    #[error("not a WebSocket upgrade request: `Connection: upgrade` and `Upgrade: websocket` are required")]
    NotUpgrade,
    #[error("unsupported WebSocket version: `Sec-WebSocket-Version: 13` is required")]
    Version,
    #[error("`Sec-WebSocket-Key` is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
    #[error("unknown cf_protocol {0:?}: json or protobuf")]
    Protocol(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refused::NotUpgrade | Refused::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            Refused::Version | Refused::NoKey | Refused::Protocol(_) => StatusCode::BAD_REQUEST,
        };
        let error = ProtocolError { message: self.to_string(), ..ERROR_BAD_REQUEST.into() };
        let mut response = ApiError::new(status, error).into_response();
        if matches!(self, Refused::Version | Refused::NotUpgrade) {
            let headers = response.headers_mut();
            headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive), as `Connection` may
/// carry several (`keep-alive, Upgrade`).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        if parts.method != Method::GET {
            return Err(Refused::NotGet);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(Refused::NotUpgrade);
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(Refused::Version);
        }
        let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(Refused::NoKey)?;
        let accept_key =
            HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| Refused::NoKey)?;
        let (protocol, subprotocol) = choose_protocol(parts)?;
        let on_upgrade =
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>().ok_or(Refused::NotUpgradable)?;
        Ok(WebSocketUpgrade { accept_key, on_upgrade, protocol, subprotocol })
    }
}

impl WebSocketUpgrade {
    /// Answers `101 Switching Protocols` and, once hyper hands the connection over, runs
    /// `session` on it. The subprotocol agreed is the client protocol's, when the client
    /// offered one; no extension is agreed.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                    return;
                }
            };
            // The accept loop serves every connection over a `ServedIo`: nothing else can
            // come back here.
            let Ok(parts) = upgraded.downcast::<ServedIo>() else {
                tracing::error!("upgraded connection is not the accept loop's TCP stream: closed");
                return;
            };
            // Bytes the client sent right behind its request were read by hyper already.
            // They are copied out: hyper's `read_buf` shares its whole read buffer (8 KiB),
            // which must not live as long as the connection.
            let early = parts.read_buf.to_vec();
            drop(parts.read_buf);
            let socket = WebSocketStream::from_partially_read(
                parts.io.into_inner(),
                early,
                Role::Server,
                Some(config),
            )
            .await;
            session(socket).await;
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept_key);
        if let Some(subprotocol) = self.subprotocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_header_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
