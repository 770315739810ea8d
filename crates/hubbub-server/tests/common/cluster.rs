//! A cluster of real `hubbub serve` processes for the multi-node tests.
//!
//! [`ClusterBuilder`] starts N nodes sharing one engine (Redis or NATS, under a key prefix no
//! other test uses), one PostgreSQL database of their own (created for the cluster, dropped
//! with it), and the same secrets ([`SECRET`], [`API_KEY`]); each node is an ordinary
//! [`Server`] (its own data_dir, port, stderr log, killed on drop), named `n0`, `n1`, ...
//! Nodes can be killed (`kill -9`), stopped gracefully, restarted and added while the
//! cluster runs. Without Redis/NATS or PostgreSQL, [`ClusterBuilder::start`] returns `None`
//! after a loud skip line (it panics under `HUBBUB_REQUIRE_SERVICES=1`).
//!
//! ```ignore
//! let Some(cluster) = Cluster::builder().nodes(3).start().await else { return };
//! let mut alice = cluster.node(1).user("alice").await;
//! cluster.node(0).api().ok("disconnect", json!({"user": "alice"})).await;
//! ```

use super::{eventually, Builder, Server, API_KEY, SECRET, T};
use serde_json::{json, Value};
use std::time::Duration;

/// The engine connecting the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Redis,
    Nats,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Redis => "redis",
            EngineKind::Nats => "nats",
        }
    }

    /// The engine's server URL, or `None` (skipped loudly) when it does not answer.
    fn url(self) -> Option<String> {
        match self {
            EngineKind::Redis => hubbub_testservices::redis(),
            EngineKind::Nats => hubbub_testservices::nats(),
        }
    }

    fn url_var(self) -> &'static str {
        match self {
            EngineKind::Redis => "HUBBUB_ENGINE_REDIS_URL",
            EngineKind::Nats => "HUBBUB_ENGINE_NATS_URL",
        }
    }
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    pub nodes: usize,
    pub engine: EngineKind,
    /// The engine's URL; `None`: the machine's shared server (found by hubbub-testservices).
    /// Fault tests give the URL of a server of their own, which they may kill.
    pub engine_url: Option<String>,
    /// `engine.heartbeat_interval` (short, so that tests see nodes come and go quickly).
    pub heartbeat_interval: String,
    /// The configuration every node starts from (namespaces, `[client]` keys, env...). Its
    /// secrets are the cluster's: keep the defaults, or set both for every node.
    pub base: Builder,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 2,
            engine: EngineKind::Redis,
            engine_url: None,
            heartbeat_interval: "300ms".into(),
            base: Builder::default(),
        }
    }
}

impl ClusterBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    pub fn engine(mut self, engine: EngineKind) -> Self {
        self.engine = engine;
        self
    }
    pub fn engine_url(mut self, url: &str) -> Self {
        self.engine_url = Some(url.to_owned());
        self
    }
    pub fn heartbeat(mut self, interval: &str) -> Self {
        self.heartbeat_interval = interval.to_owned();
        self
    }
    /// Changes the configuration of every node (e.g. `|b| b.client("ping_interval", "\"5s\"")`).
    pub fn configure(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        self.base = f(self.base);
        self
    }

    /// Starts the nodes one after the other (each has run its migrations and is listening
    /// before the next starts). `None` when a service the cluster needs is missing.
    pub async fn start(self) -> Option<Cluster> {
        let engine_url = match &self.engine_url {
            Some(url) => url.clone(),
            None => self.engine.url()?,
        };
        let database = hubbub_testservices::postgres_database().await?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            prefix: hubbub_testservices::unique_prefix(),
            engine_url,
            builder: self.clone(),
            database,
        };
        for _ in 0..self.nodes {
            cluster.add_node();
        }
        Some(cluster)
    }
}

/// Running nodes sharing an engine and a database. Dropping it kills the nodes, then drops
/// the database.
pub struct Cluster {
    /// `None` for a node that was killed or stopped (its index stays its name).
    pub nodes: Vec<Option<Server>>,
    /// The engine key prefix of this cluster.
    pub prefix: String,
    pub engine_url: String,
    pub builder: ClusterBuilder,
    /// Dropped after the nodes (fields drop in order).
    database: hubbub_testservices::TempDatabase,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The configuration of node `i`: the base, plus the cluster's engine, store, secrets
    /// and the node's name, as environment overrides.
    pub fn node_builder(&self, i: usize) -> Builder {
        let engine = self.builder.engine;
        let mut builder = self.builder.base.clone();
        builder.token_secret = SECRET.into();
        builder.api_key = API_KEY.into();
        builder
            .env("HUBBUB_NODE_NAME", &format!("n{i}"))
            .env("HUBBUB_ENGINE_TYPE", engine.name())
            .env(engine.url_var(), &self.engine_url)
            .env("HUBBUB_ENGINE_PREFIX", &self.prefix)
            .env("HUBBUB_ENGINE_HEARTBEAT_INTERVAL", &self.builder.heartbeat_interval)
            .env("HUBBUB_STORE_TYPE", "postgres")
            .env("HUBBUB_STORE_POSTGRES_URL", self.database.url())
    }

    /// Starts one more node; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let server = self.node_builder(i).start();
        self.nodes.push(Some(server));
        i
    }

    /// Starts node `i` again (after [`Cluster::kill`] or [`Cluster::stop`]), with a new
    /// data_dir and port (its clients reconnect through another address).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        self.nodes[i] = Some(self.node_builder(i).start());
    }

    /// The running node `i`.
    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// The running nodes, with their indexes.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Server)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|s| (i, s)))
    }

    /// `kill -9` of node `i`: no goodbye to the others, no cleanup.
    pub fn kill(&mut self, i: usize) -> Server {
        let mut server = self.nodes[i].take().unwrap_or_else(|| panic!("node {i} is not running"));
        let _ = server.child.kill();
        server.wait_exit(T).expect("a killed node exits");
        server
    }

    /// Graceful stop of node `i` (SIGTERM), waiting for it to exit.
    pub fn stop(&mut self, i: usize) -> Server {
        let mut server = self.nodes[i].take().unwrap_or_else(|| panic!("node {i} is not running"));
        server.sigterm();
        server.wait_exit(Duration::from_secs(20)).expect("a stopped node exits");
        server
    }

    /// The node names (`n0`, ...) that node `i`'s `info` lists, in its order.
    pub async fn info_names(&self, i: usize) -> Vec<String> {
        let info = self.node(i).api().ok("info", json!({})).await;
        info["nodes"]
            .as_array()
            .expect("info lists nodes")
            .iter()
            .map(|n| n["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until every running node's `info` lists exactly the running nodes (the
    /// cluster has formed); panics after `timeout`.
    pub async fn wait_formed(&self, timeout: Duration) {
        let mut want: Vec<String> = self.running().map(|(i, _)| format!("n{i}")).collect();
        want.sort();
        let formed = eventually(timeout, || async {
            for (i, _) in self.running() {
                let mut names = self.info_names(i).await;
                names.sort();
                if names != want {
                    return None;
                }
            }
            Some(())
        })
        .await;
        if formed.is_none() {
            let seen: Vec<(usize, Vec<String>)> = {
                let mut seen = Vec::new();
                for (i, _) in self.running() {
                    seen.push((i, self.info_names(i).await));
                }
                seen
            };
            panic!(
                "the cluster did not form within {timeout:?}: want {want:?} everywhere, nodes see {seen:?}"
            );
        }
    }

    /// The `info` entry of the node named `name`, as node `i` sees it.
    pub async fn info_of(&self, i: usize, name: &str) -> Option<Value> {
        let info = self.node(i).api().ok("info", json!({})).await;
        info["nodes"].as_array()?.iter().find(|n| n["name"] == name).cloned()
    }
}

/// A `redis-server` of the test's own on a free port (nothing saved to disk), for fault
/// tests that break or kill it; killed when dropped. The machine's shared Redis is never
/// touched.
pub struct OwnRedis {
    pub port: u16,
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        Self::start_on(hubbub_testservices::free_port())
    }

    /// On `port` (to start it again where its clients expect it, after dropping the first).
    pub fn start_on(port: u16) -> OwnRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + T;
        while !hubbub_testservices::reachable(&url) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port} within {T:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { port, url, child, _dir: dir }
    }

    /// Runs `redis-cli` against this server, returning its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]).args(args);
        let (status, out, err) = super::run_with_timeout(cmd, T);
        assert!(status.success(), "redis-cli {args:?}: {err}");
        out
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
