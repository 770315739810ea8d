//! The `hubbub` server: configuration, HTTP and WebSocket transports, the server HTTP API,
//! and the process's life cycle (start, graceful shutdown).

mod accept;
pub mod api;
pub mod config;
mod emulation;
mod http;
mod origin;
mod poll;
mod transport;
mod web;

use anyhow::Context;
use config::Config;
use hubbub_core::auth::Tokens;
use hubbub_core::channel::Namespaces;
use hubbub_core::engine::memory::{MemoryBroker, MemoryPresence};
use hubbub_core::rpc::{Echo, RpcRegistry};
use hubbub_core::{Node, NodeOptions};
use std::sync::Arc;
use std::time::Duration;

/// Logs to stderr; `RUST_LOG` filters (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Shared by every request handler.
pub struct AppState {
    pub node: Arc<Node>,
    pub config: Config,
}

fn generated_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(mut config: Config) -> anyhow::Result<()> {
    if config.auth.token_secret.is_empty() {
        config.auth.token_secret = generated_secret();
        tracing::warn!(
            secret = %config.auth.token_secret,
            "auth.token_secret is not configured: generated one for this run only; set it to keep tokens valid across restarts"
        );
    }
    if config.auth.api_key.is_empty() {
        config.auth.api_key = generated_secret();
        tracing::warn!(api_key = %config.auth.api_key, "auth.api_key is not configured: generated one for this run only");
    }
    let listener = listen(&config.listen)
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let addr = listener.local_addr()?;

    // The chat's rooms live in their own namespace, unless the configuration defines it.
    let mut namespaces = config.namespaces.clone();
    if !namespaces.iter().any(|ns| ns.name == hubbub_chat::ROOM_NAMESPACE) {
        namespaces.push(hubbub_chat::room_namespace());
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!("cannot create data_dir {} (config key `data_dir`)", config.data_dir.display())
    })?;
    let db = config.data_dir.join("hubbub.db");
    let store = hubbub_store::sqlite::SqliteStore::open(&db)
        .await
        .with_context(|| format!("cannot open the database {}", db.display()))?
        .with_limits(config.chat.store_limits());

    let mut rpc = RpcRegistry::new();
    rpc.register("echo", Echo);
    let broker = Arc::new(MemoryBroker::new());
    let node = Node::start(NodeOptions {
        name: if config.node_name.is_empty() { addr.to_string() } else { config.node_name.clone() },
        version: env!("CARGO_PKG_VERSION").to_owned(),
        client: config.client.clone(),
        namespaces: Namespaces::new(&namespaces).map_err(anyhow::Error::msg)?,
        tokens: Tokens::new(&config.auth.token_secret),
        allow_anonymous: config.auth.allow_anonymous,
        broker: broker.clone(),
        presence: Arc::new(MemoryPresence::new()),
        rpc,
    })
    .await?;
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            broker.sweep();
        }
    });

    let chat = hubbub_chat::Chat::install(node.clone(), Arc::new(store), config.chat.clone());

    let grace = config.shutdown_grace;
    let state = Arc::new(AppState { node: node.clone(), config });
    let app = http::router(state, hubbub_chat::rest::router(chat));
    println!("hubbub listening on http://{addr}");
    tracing::info!(%addr, node = %node.id, "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = accept::serve(listener, app, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(server);

    shutdown_signal().await;
    tracing::info!(?grace, "shutting down: no new connections, telling clients to reconnect");
    let _ = stop_tx.send(true);
    node.shutdown();
    let deadline = tokio::time::Instant::now() + grace;
    let drained = async {
        server.await?;
        // Upgraded connections outlive the HTTP server: wait for their sessions to end.
        while node.hub.counts().0 > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout_at(deadline, drained).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("grace period over with connections still open: exiting"),
    }
    sweeper.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Binds with a deep accept backlog: a reconnect storm after a restart must not drop SYNs.
fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
