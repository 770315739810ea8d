//! WebSocket transports: `/connection/websocket` (bidirectional: commands in, replies and
//! pushes out; JSON in text messages, newline-batched, or protobuf in binary messages,
//! length-delimited) and `/connection/uni_websocket` (JSON only: the client sends one connect
//! request, then only receives bare pushes).

use super::handshake::{Socket, WebSocketUpgrade};
use super::{drive, unwrap_push, Inbound, Transport};
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hubbub_core::session::TransportKind;
use hubbub_core::{Node, Session};
use hubbub_protocol::command::ConnectRequest;
use hubbub_protocol::{Disconnect, Protocol};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Read buffer per connection, allocated up front for every connection: small, since
/// client frames are (commands of a few hundred bytes); larger frames still fit, read in
/// several steps up to the message size limit.
const READ_BUFFER: usize = 1024;

const UNI_WEBSOCKET: TransportKind =
    TransportKind { name: "uni_websocket", emulation: false, unidirectional: true };

/// Every write goes out at once (the driver batches), client messages are bounded.
fn config(node: &Node) -> WebSocketConfig {
    let max = node.client.max_message_size;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

pub async fn bidirectional(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let node = state.node.clone();
    let kept = crate::proxy::kept_headers(&node, &headers);
    let protocol = ws.protocol;
    ws.on_upgrade(config(&node), move |socket| async move {
        let mut session = Session::with_protocol(node, TransportKind::WEBSOCKET, protocol);
        session.set_forwarded_headers(kept);
        drive(session, WsTransport { socket, unidirectional: false, protocol }, None).await
    })
}

pub async fn unidirectional(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if ws.protocol != Protocol::Json {
        let error = hubbub_protocol::ProtocolError {
            message: "uni_websocket speaks JSON only".into(),
            ..hubbub_protocol::codes::ERROR_BAD_REQUEST.into()
        };
        return axum::response::IntoResponse::into_response(crate::api::ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            error,
        ));
    }
    let node = state.node.clone();
    let kept = crate::proxy::kept_headers(&node, &headers);
    ws.on_upgrade(config(&node), move |socket| async move {
        let mut transport = WsTransport { socket, unidirectional: true, protocol: Protocol::Json };
        // The first message is the connect request. A client that sends none within
        // `client.ping_interval` is stale, as a bidirectional one without `connect` is.
        let first = tokio::time::timeout(node.client.ping_interval, transport.socket.next()).await;
        let request = match first {
            Err(_) => {
                tracing::info!("uni_websocket: no connect request in time");
                return transport.close(Disconnect::STALE).await;
            }
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ConnectRequest>(text.as_str()).ok(),
            Ok(Some(Err(e))) => match read_error(e) {
                Inbound::Violation(disconnect) => return transport.close(disconnect).await,
                _ => return,
            },
            Ok(_) => None,
        };
        let Some(request) = request else {
            tracing::info!("uni_websocket: first message is not a connect request");
            transport.close(Disconnect::BAD_REQUEST).await;
            return;
        };
        let mut session = Session::new(node, UNI_WEBSOCKET);
        session.set_forwarded_headers(kept);
        if let Err(d) = session.connect_unidirectional(request).await {
            transport.close(d).await;
            session.close().await;
            return;
        }
        drive(session, transport, None).await
    })
}

/// What a read error means: the client broke the WebSocket protocol (closed with the code
/// RFC 6455 gives it, so the client learns why instead of seeing the TCP connection drop), or
/// the connection is gone (nothing can be written any more).
fn read_error(e: WsError) -> Inbound {
    let disconnect = match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            tracing::info!(size, max_size, "websocket message too big");
            Disconnect::MESSAGE_TOO_BIG
        }
        WsError::Capacity(e) => {
            tracing::info!(error = %e, "websocket frame too big");
            Disconnect::MESSAGE_TOO_BIG
        }
        WsError::Utf8(e) => {
            tracing::info!(error = %e, "websocket text message is not UTF-8");
            Disconnect::INVALID_PAYLOAD
        }
        // The peer closed the TCP connection: nobody to tell.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return Inbound::Gone,
        WsError::Protocol(e) => {
            tracing::info!(error = %e, "websocket protocol violation");
            Disconnect::PROTOCOL_ERROR
        }
        e => {
            tracing::debug!(error = %e, "websocket read error");
            return Inbound::Gone;
        }
    };
    Inbound::Violation(disconnect)
}

struct WsTransport {
    socket: Socket,
    /// Bare pushes, one per message, instead of newline-batched replies.
    unidirectional: bool,
    /// JSON in text messages, or protobuf in binary ones.
    protocol: Protocol,
}

impl WsTransport {
    /// Sends one message of the connection's protocol.
    async fn send(&mut self, bytes: Bytes) -> Result<(), ()> {
        match self.protocol {
            Protocol::Json => self.send_text(bytes).await,
            Protocol::Protobuf => self.socket.send(Message::Binary(bytes)).await.map_err(|_| ()),
        }
    }

    async fn send_text(&mut self, bytes: Bytes) -> Result<(), ()> {
        let Ok(text) = Utf8Bytes::try_from(bytes) else {
            tracing::error!("non-UTF-8 frame queued: dropped");
            return Ok(());
        };
        self.socket.send(Message::Text(text)).await.map_err(|_| ())
    }
}

impl Transport for WsTransport {
    async fn write(&mut self, frames: &mut Vec<Bytes>) -> Result<(), ()> {
        if self.unidirectional {
            for frame in frames.drain(..) {
                self.send_text(unwrap_push(&frame)).await?;
            }
            return Ok(());
        }
        let batch = match frames.len() {
            0 => return Ok(()),
            1 => frames.pop().expect("one frame"),
            _ => {
                let joined = self.protocol.join_frames(frames);
                frames.clear();
                Bytes::from(joined)
            }
        };
        self.send(batch).await
    }

    async fn read(&mut self) -> Inbound {
        loop {
            return match self.socket.next().await {
                Some(Ok(Message::Text(text))) if self.unidirectional => {
                    tracing::debug!(len = text.len(), "uni_websocket: ignoring a client message");
                    continue;
                }
                Some(Ok(Message::Text(text))) if self.protocol == Protocol::Json => {
                    Inbound::Frame(text.into())
                }
                Some(Ok(Message::Binary(bytes))) if self.protocol == Protocol::Protobuf => {
                    Inbound::Frame(bytes)
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    tracing::info!(
                        protocol = self.protocol.name(),
                        "text frame on protobuf or binary frame on JSON"
                    );
                    Inbound::Violation(Disconnect::BAD_REQUEST)
                }
                // Pings are answered by the WebSocket library; raw frames only exist on writes.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) => {
                    // The WebSocket library queued the closing handshake's reply: flush it.
                    let _ = self.socket.flush().await;
                    Inbound::Gone
                }
                None => Inbound::Gone,
                Some(Err(e)) => read_error(e),
            };
        }
    }

    async fn close(mut self, disconnect: Disconnect) {
        if self.unidirectional {
            let push = unwrap_push(&super::disconnect_push(&disconnect, Protocol::Json));
            let _ = self.send_text(push).await;
        }
        let frame = CloseFrame {
            code: CloseCode::from(disconnect.code),
            reason: Utf8Bytes::from(disconnect.reason.as_ref()),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}
