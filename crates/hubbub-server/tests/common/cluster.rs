//! Several real `hubbub` processes sharing one engine (Redis or NATS) and one PostgreSQL
//! database: a cluster for the integration tests, and the brokers a fault test owns.
//!
//! * [`Cluster::start`] starts N nodes (each a [`Server`] of the common harness, so their
//!   stderr is printed when a test fails) with `engine.type`, its URL, a prefix of their own
//!   (tests share the machine's Redis and NATS) and `store.type = "postgres"` on a database
//!   created for the cluster and dropped with it.
//! * [`Cluster::kill9`] kills a node with SIGKILL: no shutdown, no goodbye to anyone.
//! * [`OwnBroker`]: a `redis-server` or `nats-server -js` of the test's own on a free port, to
//!   stop and start again under load (the machine's shared ones are never touched).
#![allow(dead_code)]

use super::{Builder, Server};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which engine the nodes share, and where it is.
#[derive(Clone, Debug)]
pub enum EngineUrl {
    Redis(String),
    Nats(String),
}

impl EngineUrl {
    pub fn kind(&self) -> &'static str {
        match self {
            EngineUrl::Redis(_) => "redis",
            EngineUrl::Nats(_) => "nats",
        }
    }

    /// The machine's shared server of this kind, or `None` (the test skips loudly, or fails
    /// under `HUBBUB_REQUIRE_SERVICES=1`).
    pub fn shared(kind: &str) -> Option<EngineUrl> {
        match kind {
            "redis" => hubbub_testservices::redis().map(EngineUrl::Redis),
            "nats" => hubbub_testservices::nats().map(EngineUrl::Nats),
            other => panic!("unknown engine {other}"),
        }
    }

    fn toml(&self) -> String {
        match self {
            EngineUrl::Redis(url) => format!("redis_url = {url:?}"),
            EngineUrl::Nats(url) => format!("nats_url = {url:?}"),
        }
    }
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub engine: EngineUrl,
    /// `engine.heartbeat_interval` and `engine.presence_ttl`, short so that a test sees a dead
    /// node's entries expire.
    pub heartbeat: &'static str,
    pub presence_ttl: &'static str,
    /// Applied to every node's builder last (extra keys, namespaces).
    pub tweak: fn(Builder) -> Builder,
}

impl Spec {
    pub fn new(nodes: usize, engine: EngineUrl) -> Spec {
        Spec { nodes, engine, heartbeat: "500ms", presence_ttl: "3s", tweak: |b| b }
    }
}

/// A database of the test's own on the machine's PostgreSQL: created by [`TempDb::create`],
/// dropped (with its connections) on drop.
pub struct TempDb {
    pub url: String,
    maintenance: String,
    name: String,
}

impl TempDb {
    /// `None` when PostgreSQL is not there (skipped loudly, or a failure under
    /// `HUBBUB_REQUIRE_SERVICES=1`).
    pub fn create() -> Option<TempDb> {
        let maintenance = hubbub_testservices::postgres()?;
        let name = format!("hubbub_{}", hubbub_testservices::unique_prefix());
        psql(&maintenance, &format!("CREATE DATABASE {name}"));
        let base = maintenance.rsplit_once('/').map_or(maintenance.as_str(), |(b, _)| b);
        Some(TempDb { url: format!("{base}/{name}"), maintenance, name })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = run_psql(&self.maintenance, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn run_psql(url: &str, sql: &str) -> std::io::Result<std::process::Output> {
    Command::new("psql").arg(url).args(["-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql]).output()
}

fn psql(url: &str, sql: &str) {
    let out = run_psql(url, sql).unwrap_or_else(|e| panic!("psql (for {sql}): {e}"));
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// N nodes on one engine and one database. Nodes are `None` once killed.
pub struct Cluster {
    pub nodes: Vec<Option<Server>>,
    pub addrs: Vec<String>,
    pub spec: Spec,
    pub prefix: String,
    pub db: TempDb,
}

impl Cluster {
    /// `None` when PostgreSQL is missing (see [`TempDb::create`]).
    pub fn start(spec: Spec) -> Option<Cluster> {
        let db = TempDb::create()?;
        let prefix = hubbub_testservices::unique_prefix();
        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            nodes.push(Some(Self::node(&spec, &prefix, &db.url, i)));
        }
        let addrs = nodes.iter().map(|n| n.as_ref().unwrap().addr.clone()).collect();
        Some(Cluster { nodes, addrs, spec, prefix, db })
    }

    /// The builder of node `i` (`n{i+1}`): inline `[engine]` and `[store]` tables at the top.
    fn node(spec: &Spec, prefix: &str, db_url: &str, i: usize) -> Server {
        let extra_top = format!(
            "node_name = \"n{}\"\n\
             engine = {{ type = {:?}, {}, prefix = {prefix:?}, heartbeat_interval = {:?}, presence_ttl = {:?} }}\n\
             store = {{ type = \"postgres\", postgres_url = {db_url:?} }}\n",
            i + 1,
            spec.engine.kind(),
            spec.engine.toml(),
            spec.heartbeat,
            spec.presence_ttl,
        );
        (spec.tweak)(Builder { extra_top, ..Builder::default() }).start()
    }

    pub fn node_ref(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node was killed")
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        let mut server = self.nodes[i].take().expect("node already killed");
        server.child.kill().expect("SIGKILL");
        let status = server.wait_exit(Duration::from_secs(10)).expect("killed node exits");
        assert!(!status.success(), "a SIGKILLed node exits by the signal: {status:?}");
        // The harness prints a node's stderr when the test fails; keep what the dead one said.
        eprintln!("---- stderr of killed node n{} (tail) ----\n{}", i + 1, tail_of(&server.stderr(), 3000));
    }

    /// Indexes of the nodes still running.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }
}

fn tail_of(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A Redis or NATS server of the test's own, on a free port, with its data in a temp folder.
pub struct OwnBroker {
    pub kind: &'static str,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnBroker {
    /// Starts `redis-server` (no persistence) or `nats-server -js`. `None` (skipped loudly,
    /// failing under `HUBBUB_REQUIRE_SERVICES=1`) when the binary is not installed.
    pub fn start(kind: &'static str) -> Option<OwnBroker> {
        let bin = match kind {
            "redis" => "redis-server",
            "nats" => "nats-server",
            other => panic!("unknown broker {other}"),
        };
        if Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            let msg = format!("{bin} is not installed");
            if hubbub_testservices::required() {
                panic!("{msg}; HUBBUB_REQUIRE_SERVICES=1, so this test may not skip");
            }
            eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
            return None;
        }
        let port = hubbub_testservices::free_port();
        let scheme = if kind == "redis" { "redis" } else { "nats" };
        let mut b = OwnBroker {
            kind,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        b.up();
        Some(b)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.kind))
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = match self.kind {
            "redis" => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
                c
            }
            _ => {
                let mut c = Command::new("nats-server");
                let store = self.dir.path().join("js");
                c.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"]).arg(store);
                c
            }
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", self.kind)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hubbub_testservices::reachable(&self.url) {
            assert!(Instant::now() < deadline, "{} on port {} did not come up:\n{}", self.kind, self.port, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: a crash, nothing flushed).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.down();
    }
}
