//! The bidirectional WebSocket transport (`/connection/websocket`): frames in, the
//! session's outbox out, coalesced into one WebSocket message per write.

use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use hubbub_core::outbox::{Control, Outgoing};
use hubbub_core::{Node, Session};
use hubbub_protocol::Disconnect;
use std::sync::Arc;

/// Read buffer per connection: small, since most frames are; larger ones still fit, the
/// buffer grows as needed up to the message size limit.
const READ_BUFFER: usize = 4096;

pub async fn upgrade(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    let max = state.node.client.max_message_size;
    let node = state.node.clone();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(node, socket))
}

/// What the loop does after one step.
enum Step {
    Continue,
    Close(Disconnect),
    /// The peer is gone: nothing more to write.
    Gone,
}

async fn run(node: Arc<Node>, mut socket: WebSocket) {
    let mut session = Session::new(node, "websocket");
    let conn = session.connection().clone();
    let mut drained = Vec::new();
    let step = loop {
        let timer = tokio::time::sleep_until(session.next_timer());
        let step = tokio::select! {
            _ = conn.outbox.ready() => {
                conn.outbox.drain(&mut drained);
                flush(&mut session, &mut socket, &mut drained).await
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => match session.handle_frame(text.as_str()).await {
                    Ok(()) => Step::Continue,
                    Err(d) => Step::Close(d),
                },
                Some(Ok(Message::Binary(_))) => {
                    tracing::info!(client = session.client_id(), "binary frame on the JSON protocol");
                    Step::Close(Disconnect::BAD_REQUEST)
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Continue,
                Some(Ok(Message::Close(_))) => {
                    // The WebSocket library queued the closing handshake's reply: flush it.
                    let _ = futures_util::SinkExt::flush(&mut socket).await;
                    Step::Gone
                }
                None => Step::Gone,
                Some(Err(e)) => {
                    tracing::info!(client = session.client_id(), error = %e, "websocket read error");
                    if is_too_big(&e) { Step::Close(Disconnect::MESSAGE_TOO_BIG) } else { Step::Gone }
                }
            },
            _ = timer => match session.on_timer() {
                Ok(()) => Step::Continue,
                Err(d) => Step::Close(d),
            },
        };
        match step {
            Step::Continue => continue,
            other => break other,
        }
    };
    if let Step::Close(disconnect) = step {
        // Whatever was queued before the disconnect (e.g. the last replies) goes first.
        conn.outbox.drain(&mut drained);
        let mut frames: Vec<Bytes> = drained
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Frame(f) => Some(f),
                Outgoing::Control(_) => None,
            })
            .collect();
        let _ = write_frames(&mut socket, &mut frames).await;
        let frame = CloseFrame { code: disconnect.code, reason: Utf8Bytes::from(disconnect.reason.as_ref()) };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    session.close().await;
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// Writes queued frames and carries out queued instructions, in queue order.
async fn flush(session: &mut Session, socket: &mut WebSocket, drained: &mut Vec<Outgoing>) -> Step {
    let mut frames = Vec::new();
    for item in drained.drain(..) {
        match item {
            Outgoing::Frame(f) => frames.push(f),
            Outgoing::Control(Control::Disconnect(d)) => {
                if write_frames(socket, &mut frames).await.is_err() {
                    return Step::Gone;
                }
                return Step::Close(d);
            }
            Outgoing::Control(control) => {
                if write_frames(socket, &mut frames).await.is_err() {
                    return Step::Gone;
                }
                if let Err(d) = session.handle_control(control).await {
                    return Step::Close(d);
                }
            }
        }
    }
    match write_frames(socket, &mut frames).await {
        Ok(()) => Step::Continue,
        Err(()) => Step::Gone,
    }
}

/// Writes every queued frame as one WebSocket message (newline-separated).
async fn write_frames(socket: &mut WebSocket, frames: &mut Vec<Bytes>) -> Result<(), ()> {
    let joined = match frames.len() {
        0 => return Ok(()),
        1 => frames.pop().expect("one frame"),
        _ => {
            let joined = hubbub_protocol::encode_frame(frames.iter().map(|f| &f[..]));
            frames.clear();
            Bytes::from(joined)
        }
    };
    let Ok(text) = Utf8Bytes::try_from(joined) else {
        tracing::error!("non-UTF-8 frame queued: dropped");
        return Ok(());
    };
    socket.send(Message::Text(text)).await.map_err(|_| ())
}
