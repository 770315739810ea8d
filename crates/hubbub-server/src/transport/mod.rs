//! Transports move bytes between a client and its [`Session`]; the protocol lives in the
//! session. Every transport is driven by the same loop, [`drive`]: it wakes on the session's
//! outbox, on the client's next frame and on the session's timer.
//!
//! * [`websocket`]: bidirectional WebSocket and unidirectional `uni_websocket`.
//! * [`stream`]: HTTP streaming and Server-Sent Events, both as bidirectional emulation
//!   (commands by `POST /emulation`) and unidirectional (`uni_http_stream`, `uni_sse`).

mod handshake;
pub mod stream;
pub mod websocket;

use bytes::Bytes;
use hubbub_core::hub::Connection;
use hubbub_core::outbox::Control;
use hubbub_core::Session;
use hubbub_protocol::{Disconnect, Protocol};
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// What the client did.
pub enum Inbound {
    /// A frame of commands, in the session's protocol.
    Frame(Bytes),
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
pub async fn drive<T: Transport>(mut session: Session, transport: T, first_frame: Option<Bytes>) {
    let conn = session.connection().clone();
    let mut transport = Timed { transport, limit: session.node().client.write_timeout };
    let mut frames = Vec::new();
    // The futures of command handling are large (kilobytes) and rarely alive: boxing them
    // keeps them out of this loop's state, which every idle connection holds for its life.
    let refused = match first_frame {
        Some(frame) => Box::pin(session.handle_frame(frame)).await.err(),
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
                    Inbound::Frame(frame) => command(&mut session, &mut transport, &conn, &mut frames, frame).await,
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
            // A recovery larger than one answer goes out a piece at a time, each after the
            // previous ones were written (see `Session::continue_recovery`).
            if session.recovering() {
                if let Err(disconnect) = Box::pin(session.continue_recovery()).await {
                    break Some(disconnect);
                }
            }
        }
    };
    if let Some(disconnect) = end {
        // What was queued before the disconnect (the last replies) still goes out first.
        while conn.outbox.drain_frames(&mut frames).is_some() {}
        if transport.write(&mut frames).await.is_ok() {
            let limit = transport.limit;
            if tokio::time::timeout(limit, Box::pin(transport.transport.close(disconnect))).await.is_err() {
                tracing::info!(client = %session.client_id(), "closing write timed out (client.write_timeout)");
            }
        }
    }
    Box::pin(session.close()).await;
}

/// A transport whose writes may wait at most `limit` (`client.write_timeout`): a write that
/// takes longer (the client does not read, its socket or stream is full) counts as the peer
/// being gone, so the connection ends and frees what it holds. Writes that complete at once
/// (nearly all of them) set no timer.
struct Timed<T> {
    transport: T,
    limit: Duration,
}

impl<T: Transport> Timed<T> {
    async fn write(&mut self, frames: &mut Vec<Bytes>) -> Result<(), ()> {
        let limit = self.limit;
        let mut write = std::pin::pin!(self.transport.write(frames));
        if let Poll::Ready(written) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            return written;
        }
        tokio::time::timeout(limit, write).await.unwrap_or_else(|_| {
            tracing::info!(?limit, "write timed out: the client does not read (client.write_timeout)");
            Err(())
        })
    }

    fn read(&mut self) -> impl Future<Output = Inbound> + Send + '_ {
        self.transport.read()
    }
}

/// Writes `frames` and empties the batch for the next use, whatever the outcome.
async fn write_batch<T: Transport>(transport: &mut Timed<T>, frames: &mut Vec<Bytes>) -> Result<(), ()> {
    let written = transport.write(frames).await;
    frames.clear();
    written
}

/// Handles a frame of commands. Meanwhile, what gets queued for the connection (pushes,
/// replies to earlier commands) is still written: a command that waits (a chat message
/// waiting for its commit, a history read) does not hold up the connection's deliveries.
/// Instructions wait for the command to finish, since they need the session too. Returns
/// true (the session may have changed).
async fn command<T: Transport>(
    session: &mut Session,
    transport: &mut Timed<T>,
    conn: &Connection,
    frames: &mut Vec<Bytes>,
    frame: Bytes,
) -> Result<bool, Option<Disconnect>> {
    let mut handling = Box::pin(session.handle_frame(frame));
    let mut instruction_next = false;
    // A command is never dropped half-done (it may have changed shared state, such as a
    // subscriber being set up in the hub): when the peer goes away meanwhile, it still runs
    // to its end.
    let mut gone = false;
    loop {
        tokio::select! {
            biased;
            handled = &mut handling => {
                return match handled {
                    _ if gone => Err(None),
                    Ok(()) => Ok(true),
                    Err(disconnect) => Err(Some(disconnect)),
                };
            }
            _ = conn.outbox.ready(), if !instruction_next && !gone => {
                instruction_next = conn.outbox.drain_leading_frames(frames);
                gone = write_batch(transport, frames).await.is_err();
            }
        }
    }
}

/// Writes the queued frames and carries out queued instructions, in queue order. Returns
/// whether an instruction was carried out (the session may have changed); `Err` ends the
/// connection (`None`: the peer is gone).
async fn flush<T: Transport>(
    session: &mut Session,
    transport: &mut Timed<T>,
    conn: &Connection,
    frames: &mut Vec<Bytes>,
) -> Result<bool, Option<Disconnect>> {
    let mut changed = false;
    // Let the other ready tasks run first (the publisher that woke this one is usually
    // still pushing to other subscribers, and to this one): under load, more frames are
    // queued by the time this connection drains, and each `sendto` (most of the CPU of a
    // fan-out) carries more of them. `many`: 1.6 → 1.9–2.0 frames per write, about raw-ws's;
    // with an idle node, the cost is one trip through the scheduler's queue.
    tokio::task::yield_now().await;
    loop {
        let control = conn.outbox.drain_frames(frames);
        write_batch(transport, frames).await.map_err(|()| None)?;
        match control {
            None => return Ok(changed),
            Some(Control::Disconnect(d)) => return Err(Some(d)),
            // Commands of an emulation session: handled like a frame read from the client.
            Some(Control::Commands(frame)) => {
                Box::pin(command(session, transport, conn, frames, frame)).await?;
            }
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
pub fn disconnect_push(d: &Disconnect, protocol: Protocol) -> Bytes {
    hubbub_protocol::Reply::push(hubbub_protocol::Push {
        channel: String::new(),
        body: hubbub_protocol::PushBody::Disconnect {
            code: d.code as u32,
            reason: d.reason.to_string(),
            reconnect: d.reconnect(),
        },
    })
    .encode_as(protocol)
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
        let d = disconnect_push(&Disconnect::SHUTDOWN, Protocol::Json);
        assert_eq!(&d[..], br#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#);
    }

    /// A transport over in-process channels: what the driver writes, one frame at a time.
    struct Pipe {
        written: tokio::sync::mpsc::UnboundedSender<Bytes>,
        inbound: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    }

    impl Transport for Pipe {
        async fn write(&mut self, frames: &mut Vec<Bytes>) -> Result<(), ()> {
            frames.drain(..).try_for_each(|f| self.written.send(f).map_err(|_| ()))
        }
        async fn read(&mut self) -> Inbound {
            self.inbound.recv().await.map_or(Inbound::Gone, Inbound::Frame)
        }
        async fn close(self, _disconnect: Disconnect) {}
    }

    /// An RPC method that answers when the test opens its gate.
    struct Gate(std::sync::Arc<tokio::sync::Notify>);

    #[async_trait::async_trait]
    impl hubbub_core::rpc::RpcHandler for Gate {
        async fn call(
            &self,
            _caller: &hubbub_core::rpc::Caller,
            _data: Option<hubbub_protocol::Json>,
        ) -> Result<Option<hubbub_protocol::Json>, hubbub_protocol::ProtocolError> {
            self.0.notified().await;
            Ok(None)
        }
    }

    /// Connects a session over a [`Pipe`], subscribes it to `news`, sends an RPC that waits
    /// for a gate (over the connection, or as an emulation session's commands), publishes,
    /// and checks the publication arrives before the RPC's answer.
    async fn publication_overtakes_a_waiting_rpc(rpc_as_emulation_commands: bool) {
        use hubbub_core::channel::{NamespaceConfig, Namespaces};
        use hubbub_core::engine::memory::{MemoryBroker, MemoryPresence};
        use std::sync::Arc;
        use std::time::Duration;

        let gate = Arc::new(tokio::sync::Notify::new());
        let mut rpc = hubbub_core::rpc::RpcRegistry::new();
        rpc.register("wait", Gate(gate.clone()));
        let node = hubbub_core::Node::start(hubbub_core::node::NodeOptions {
            name: "test".into(),
            version: "0".into(),
            client: Default::default(),
            namespaces: Namespaces::new(&[NamespaceConfig::default()]).unwrap(),
            tokens: hubbub_core::auth::Tokens::new("secret"),
            allow_anonymous: true,
            broker: Arc::new(MemoryBroker::new()),
            presence: Arc::new(MemoryPresence::new()),
            rpc,
            cluster: Default::default(),
        })
        .await
        .unwrap();
        let (written, mut out) = tokio::sync::mpsc::unbounded_channel();
        let (to_server, inbound) = tokio::sync::mpsc::unbounded_channel();
        let session = Session::new(node.clone(), hubbub_core::session::TransportKind::WEBSOCKET);
        let conn = session.connection().clone();
        tokio::spawn(drive(session, Pipe { written, inbound }, None));
        let mut next = async || -> String {
            let frame = tokio::time::timeout(Duration::from_secs(5), out.recv()).await.unwrap().unwrap();
            String::from_utf8(frame.to_vec()).unwrap()
        };

        to_server.send(Bytes::from_static(br#"{"id":1,"connect":{}}"#)).unwrap();
        assert!(next().await.starts_with(r#"{"id":1,"connect""#));
        to_server.send(Bytes::from_static(br#"{"id":2,"subscribe":{"channel":"news"}}"#)).unwrap();
        assert!(next().await.starts_with(r#"{"id":2,"subscribe""#));
        let rpc = Bytes::from_static(br#"{"id":3,"rpc":{"method":"wait"}}"#);
        if rpc_as_emulation_commands {
            conn.outbox.control(hubbub_core::outbox::Control::Commands(rpc));
        } else {
            to_server.send(rpc).unwrap();
        }
        // The RPC is pending: a publication still reaches the connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
        node.publish("news", hubbub_protocol::json_from_str(r#"{"n":1}"#).unwrap(), None).await.unwrap();
        let push = next().await;
        assert!(push.contains(r#""pub":{"data":{"n":1}"#), "publication first, got {push}");
        gate.notify_one();
        assert!(next().await.starts_with(r#"{"id":3,"rpc""#));
    }

    #[tokio::test]
    async fn deliveries_go_out_while_a_command_waits() {
        publication_overtakes_a_waiting_rpc(false).await;
    }

    #[tokio::test]
    async fn deliveries_go_out_while_an_emulation_command_waits() {
        publication_overtakes_a_waiting_rpc(true).await;
    }
}
