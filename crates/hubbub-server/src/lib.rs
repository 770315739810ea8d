//! The `hubbub` server: configuration, HTTP and WebSocket transports, the server HTTP API,
//! and the process's life cycle (start, graceful shutdown).

mod accept;
pub mod api;
pub mod config;
pub mod consumers;
pub mod data_dir;
mod emulation;
pub mod engines;
pub mod grpc_api;
mod headers;
mod http;
mod limits;
mod origin;
mod poll;
pub mod proxy;
pub mod tokens;
mod transport;
mod web;

use anyhow::Context;
use config::Config;
use hubbub_core::api::ServerApi;
use hubbub_core::channel::Namespaces;
use hubbub_core::engine::memory::MemoryBroker;
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
    /// The server API's operations (HTTP and gRPC API, async consumers).
    pub api: Arc<ServerApi>,
    pub config: Config,
    /// Waiting long polls per token subject (`http.poll_max_waiters_per_user`).
    pub poll_waiters: poll::Waiters,
    /// Connections per node, connection requests per second per node and per address.
    limits: limits::Limits,
}

/// What a running server is made of, built from its configuration and its store: the
/// router with every route, the node and the chat plugged into it. `serve` puts it behind
/// the accept loop; the fuzz targets drive the same router in process.
pub struct App {
    pub router: axum::Router,
    pub node: Arc<Node>,
    /// The server API's operations: what the HTTP and gRPC APIs call, and what anything else
    /// publishing for the application (async consumers) calls too.
    pub api: Arc<ServerApi>,
    pub chat: Arc<hubbub_chat::Chat>,
    /// The single-node engine, whose expired streams someone must sweep.
    pub memory: Option<Arc<MemoryBroker>>,
}

impl App {
    /// Builds the node (engine, namespaces with the chat's `room`, tokens, RPC) and the router,
    /// with nothing kept on disk by the engine (the fuzz target).
    pub async fn build(
        config: Config,
        name: String,
        store: Arc<dyn hubbub_store::ChatStore>,
    ) -> anyhow::Result<App> {
        Self::build_in(config, name, store, None).await
    }

    /// Like [`App::build`], with the engine keeping what it keeps in `data_dir` (the memory
    /// engine's stream log).
    pub async fn build_in(
        config: Config,
        name: String,
        store: Arc<dyn hubbub_store::ChatStore>,
        data_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<App> {
        // The chat's rooms live in their own namespace, unless the configuration defines it.
        let mut namespaces = config.namespaces.clone();
        if !namespaces.iter().any(|ns| ns.name == hubbub_chat::ROOM_NAMESPACE) {
            namespaces.push(hubbub_chat::room_namespace());
        }
        let mut rpc = RpcRegistry::new();
        rpc.register("echo", Echo);
        let tokens = tokens::build(&config.auth)?;
        if let Some(jwks) = tokens.jwks() {
            tokens::start_jwks_refresh(jwks.clone(), config.auth.jwks_cache_ttl);
        }
        if config.client.insecure {
            tracing::warn!("client.insecure is on: anyone may connect without a token and subscribe, publish, read presence and history on every channel; never in production");
        }
        let engine = engines::connect_engine(&config.engine, data_dir, &namespaces).await?;
        let node = Node::start(NodeOptions {
            name,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            client: config.client.clone(),
            namespaces: Namespaces::new(&namespaces).map_err(anyhow::Error::msg)?,
            tokens,
            allow_anonymous: config.auth.allow_anonymous,
            broker: engine.broker,
            presence: engine.presence,
            rpc,
            cluster: config.engine.cluster(),
        })
        .await?;
        node.set_proxies(proxy::build(&config)?).map_err(anyhow::Error::msg)?;
        let chat = hubbub_chat::Chat::install(node.clone(), store, config.chat.clone());
        let api = Arc::new(ServerApi::new(node.clone(), config.api.clone()));
        let limits = limits::Limits::new(&config.client);
        let state = Arc::new(AppState {
            node: node.clone(),
            api: api.clone(),
            config,
            poll_waiters: Default::default(),
            limits,
        });
        let router = http::router(state, hubbub_chat::rest::router(chat.clone()));
        Ok(App { router, node, api, chat, memory: engine.memory })
    }
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(mut config: Config) -> anyhow::Result<()> {
    // First of all: a second server on the same data_dir stops here, before it opens anything.
    let data_dir = data_dir::DataDir::open(&config.data_dir)?;
    use_kept_secrets(&mut config, &data_dir)?;
    let listener = listen(&config.listen)
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
    let addr = listener.local_addr()?;

    let store = engines::open_store(&config, data_dir.path()).await?;

    let name = if config.node_name.is_empty() { addr.to_string() } else { config.node_name.clone() };
    let grace = config.shutdown_grace;
    let consumer_configs = config.consumers.clone();
    let grpc = config.grpc_api.clone();
    let grpc_key = if grpc.key.is_empty() { config.auth.api_key.clone() } else { grpc.key.clone() };
    let grpc_listener = if grpc.enabled {
        let at = format!("{}:{}", grpc.address, grpc.port);
        let listener = tokio::net::TcpListener::bind(&at).await.with_context(|| {
            format!("cannot listen on {at} (config keys `grpc_api.address`, `grpc_api.port`)")
        })?;
        Some(listener)
    } else {
        None
    };
    let App { router: app, node, api, memory, .. } =
        App::build_in(config, name, store.clone(), Some(data_dir.path())).await?;
    let sweeper = tokio::spawn({
        let memory = memory.clone();
        async move {
            let Some(broker) = memory else { return };
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                broker.sweep();
            }
        }
    });
    let consumers = consumers::start(&consumer_configs, node.clone()).await?;
    // Listen for signals before saying we listen: a SIGTERM sent right after the line must
    // shut down gracefully, not kill the process with the default action.
    let stop_signal = shutdown_signal()?;
    let (grpc_stop, grpc_stopped) = tokio::sync::watch::channel(false);
    let grpc_server = match grpc_listener {
        Some(listener) => {
            println!("hubbub grpc api listening on {}", listener.local_addr()?);
            let service = grpc_api::service(api, grpc_key, grpc.max_request_bytes);
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let mut stopped = grpc_stopped;
            Some(tokio::spawn(
                tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
                    incoming,
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                ),
            ))
        }
        None => {
            drop(api);
            None
        }
    };
    println!("hubbub listening on http://{addr}");
    tracing::info!(%addr, node = %node.id, "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = accept::serve(listener, app, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(server);

    stop_signal.await;
    tracing::info!(?grace, "shutting down: no new connections, telling clients to reconnect");
    let _ = stop_tx.send(true);
    let _ = grpc_stop.send(true);
    // Nothing more is consumed: what is claimed and not yet done is found again at the next
    // start (ARCHITECTURE.md, "Async consumers").
    drop(consumers);
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
    if let Some(grpc_server) = grpc_server {
        // Calls in flight finish within the grace; a stuck one is not waited for.
        if tokio::time::timeout(Duration::from_secs(1), grpc_server).await.is_err() {
            tracing::warn!("gRPC API calls still running at exit");
        }
    }
    // The memory engine's log: what is queued is written, synced and marked clean, so the
    // next start keeps every stream as it is now.
    if let Some(memory) = &memory {
        if tokio::time::timeout(Duration::from_secs(5), memory.close()).await.is_err() {
            tracing::warn!(
                "the stream log was still being written 5s after the shutdown: not closed cleanly"
            );
        }
    }
    // SQLite folds the WAL into the database and truncates it (`SqliteStore::close`): a
    // clean stop leaves no earlier page versions, which may hold text an edit or a delete
    // removed.
    if tokio::time::timeout(Duration::from_secs(5), store.close()).await.is_err() {
        tracing::warn!("the database was still in use 5s after the shutdown: not closed cleanly");
    }
    tracing::info!("stopped");
    drop(data_dir);
    Ok(())
}

/// Fills `auth.token_secret` and `auth.api_key` when the configuration leaves them empty,
/// with the secrets kept in `data_dir` (generated on the first start): tokens and refresh
/// sessions stay valid across restarts.
fn use_kept_secrets(config: &mut Config, data_dir: &data_dir::DataDir) -> anyhow::Result<()> {
    let auth = &mut config.auth;
    if !auth.token_secret.is_empty() && !auth.api_key.is_empty() {
        return Ok(());
    }
    let (kept, generated) = data_dir.secrets()?;
    let file = data_dir.path().join(data_dir::SECRETS_FILE);
    let origin = if generated { "generated" } else { "kept" };
    for (key, value, kept) in [
        ("auth.token_secret", &mut auth.token_secret, kept.token_secret),
        ("auth.api_key", &mut auth.api_key, kept.api_key),
    ] {
        if value.is_empty() {
            *value = kept;
            tracing::warn!(
                "{key} is not configured: using the one {origin} in {} (mode 0600, reused at every start; set {key} to choose your own)",
                file.display()
            );
        }
    }
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

/// SIGINT or SIGTERM, whichever comes first; the handlers are installed now, not at the
/// first poll.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
