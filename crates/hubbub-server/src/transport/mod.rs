//! Transports move bytes between a client and its [`Session`]; the protocol lives in the
//! session. Every transport is driven by the same loop, [`drive`]: it wakes on the session's
//! outbox, on the client's next frame and on the session's timer.
//!
//! * [`websocket`]: bidirectional WebSocket and unidirectional `uni_websocket`.
//! * [`stream`]: HTTP streaming and Server-Sent Events, both as bidirectional emulation
//!   (commands by `POST /emulation`) and unidirectional (`uni_http_stream`, `uni_sse`).

pub mod stream;
pub mod websocket;

use bytes::Bytes;
use hubbub_core::hub::Connection;
use hubbub_core::outbox::Control;
use hubbub_core::Session;
use hubbub_protocol::Disconnect;
use std::future::Future;

/// What the client did.
pub enum Inbound {
    /// A frame of commands.
    Frame(String),
    /// The client is gone or closed the connection: nothing more can be written.
    Gone,
    /// The client broke the rules of the transport: close with this code.
    Violation(Disconnect),
}

/// One connection's way of writing and reading.
pub trait Transport: Send {
    /// Writes a batch of encoded messages (replies, pushes, pings), as few writes as
    /// possible. An error means the peer is gone.
    fn write(&mut self, frames: &mut Vec<Bytes>) -> impl Future<Output = Result<(), ()>> + Send;
    /// Waits for the client's next frame. Transports whose commands come by
    /// `POST /emulation` (or that take none) only report the client going away. Must be
    /// cancel-safe: the driver drops it when something else happens first.
    fn read(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Tells the client why the connection ends, then ends it.
    fn close(self, disconnect: Disconnect) -> impl Future<Output = ()> + Send;
}

/// Runs a session over a transport until either side ends it, then cleans up the session.
/// `first_frame` is a frame that came with the request that opened the connection (the
/// connect command of the HTTP-streaming transports).
pub async fn drive<T: Transport>(mut session: Session, mut transport: T, first_frame: Option<String>) {
    let conn = session.connection().clone();
    let mut frames = Vec::new();
    // The futures of command handling are large (kilobytes) and rarely alive: boxing them
    // keeps them out of this loop's state, which every idle connection holds for its life.
    let refused = match first_frame {
        Some(frame) => Box::pin(session.handle_frame(&frame)).await.err(),
        None => None,
    };
    // One timer for the connection's life, moved only when the session's deadline moves,
    // which only a command, an instruction or the timer itself can do: a write of queued
    // pushes (the hot path of fan-out) leaves it alone.
    let timer = tokio::time::sleep_until(session.next_timer());
    tokio::pin!(timer);
    let end = if let Some(disconnect) = refused {
        Some(disconnect)
    } else {
        loop {
            let step = tokio::select! {
                _ = conn.outbox.ready() => flush(&mut session, &mut transport, &conn, &mut frames).await,
                inbound = transport.read() => match inbound {
                    Inbound::Frame(text) => Box::pin(session.handle_frame(&text)).await.map(|()| true).map_err(Some),
                    Inbound::Gone => Err(None),
                    Inbound::Violation(d) => Err(Some(d)),
                },
                _ = &mut timer => session.on_timer().map(|()| true).map_err(Some),
            };
            match step {
                Ok(true) => {
                    let deadline = session.next_timer();
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
                Ok(false) => {}
                Err(end) => break end,
            }
        }
    };
    if let Some(disconnect) = end {
        // What was queued before the disconnect (the last replies) still goes out first.
        while conn.outbox.drain_frames(&mut frames).is_some() {}
        if transport.write(&mut frames).await.is_ok() {
            Box::pin(transport.close(disconnect)).await;
        }
    }
    Box::pin(session.close()).await;
}

/// Writes the queued frames and carries out queued instructions, in queue order. Returns
/// whether an instruction was carried out (the session may have changed); `Err` ends the
/// connection (`None`: the peer is gone).
async fn flush<T: Transport>(
    session: &mut Session,
    transport: &mut T,
    conn: &Connection,
    frames: &mut Vec<Bytes>,
) -> Result<bool, Option<Disconnect>> {
    let mut changed = false;
    loop {
        let control = conn.outbox.drain_frames(frames);
        let written = transport.write(frames).await;
        frames.clear();
        written.map_err(|()| None)?;
        match control {
            None => return Ok(changed),
            Some(Control::Disconnect(d)) => return Err(Some(d)),
            Some(control) => Box::pin(session.handle_control(control)).await.map_err(Some)?,
        }
        changed = true;
    }
}

/// Strips the `{"push":..}` wrapper from an encoded push, without copying: unidirectional
/// clients get pushes bare. Anything else (the `{}` ping) passes unchanged.
pub fn unwrap_push(frame: &Bytes) -> Bytes {
    const PREFIX: &[u8] = b"{\"push\":";
    if frame.starts_with(PREFIX) && frame.ends_with(b"}") {
        frame.slice(PREFIX.len()..frame.len() - 1)
    } else {
        frame.clone()
    }
}

/// The disconnect push that stream transports send where WebSocket sends a close frame.
pub fn disconnect_push(d: &Disconnect) -> Bytes {
    hubbub_protocol::Reply::push(hubbub_protocol::Push {
        channel: String::new(),
        body: hubbub_protocol::PushBody::Disconnect {
            code: d.code as u32,
            reason: d.reason.to_string(),
            reconnect: d.reconnect(),
        },
    })
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_pushes_only() {
        let push = Bytes::from_static(br#"{"push":{"channel":"c","pub":{"data":1}}}"#);
        assert_eq!(&unwrap_push(&push)[..], br#"{"channel":"c","pub":{"data":1}}"#);
        let ping = Bytes::from_static(b"{}");
        assert_eq!(&unwrap_push(&ping)[..], b"{}");
        let d = disconnect_push(&Disconnect::SHUTDOWN);
        assert_eq!(&d[..], br#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#);
    }
}
