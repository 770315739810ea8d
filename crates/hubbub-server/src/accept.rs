//! The accept loop: every TCP connection is served by hyper's HTTP/1.1 connection, with the
//! router as its service.
//!
//! Why not `axum::serve`: it hands hyper the stream inside its own wrapper, so an upgraded
//! WebSocket could only be reached through hyper's boxed, rewindable `Upgraded`. Here the
//! connection is handed to hyper as a bare [`TcpStream`], so an upgraded WebSocket gets that
//! stream back ([`crate::transport::handshake`] downcasts it): reads and writes go straight to
//! the socket. Also, hyper gets a timer: a connection that sends no complete request head
//! for 30 s (idle between requests, or stuck in the middle of one) is closed.
//!
//! Not used: hyper's `pipeline_flush` (responses to pipelined requests written together). It
//! loses the `101 Switching Protocols` of a WebSocket upgrade when the client's first frame
//! came in the same read as the request (hyper holds the response back for the "next
//! request" and drops its write buffer at the upgrade); `tests/http_wire.rs` checks both.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

/// The IO type every connection is served over; upgraded WebSockets downcast to it.
pub type ServedIo = TokioIo<TcpStream>;

/// Accepts connections until `stop` completes, then stops accepting, asks every HTTP
/// connection to finish its in-flight request and close, and returns once they all have.
/// Upgraded connections (WebSockets) are no longer HTTP connections: their sessions end
/// on the node's shutdown, not here.
pub async fn serve(listener: TcpListener, router: Router, stop: impl Future<Output = ()>) {
    // Every connection task holds a receiver of each channel: `closing` tells them to finish
    // (its sender sends), `gone` tells us they have (all its receivers dropped).
    let (closing_tx, closing_rx) = watch::channel(());
    let (gone_tx, gone_rx) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset before it was
                    // taken: wait a little instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small frames go out at once: Nagle's algorithm would hold a push back for up to
        // 40 ms waiting for the peer's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        tokio::spawn(connection(tcp, remote, router.clone(), closing_rx.clone(), gone_rx.clone()));
    }
    drop(listener);
    drop(gone_rx);
    let _ = closing_tx.send(());
    gone_tx.closed().await;
}

/// Serves one HTTP/1.1 connection until it closes, is upgraded, or is asked to close.
async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    mut closing: watch::Receiver<()>,
    _gone: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        // The router is always ready; its clone is a reference count.
        router.clone().call(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(ServedIo::new(tcp), service).with_upgrades();
    tokio::pin!(conn);
    let mut asked = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!(error = %e, %remote, "HTTP connection ended with an error");
                }
                return;
            }
            _ = closing.changed(), if !asked => {
                asked = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
