//! The `cluster` scenario: Hubbub alone, as 1, 2 and 3 nodes sharing Redis or NATS (the
//! engine) and PostgreSQL (the chat's store), beside the single-node default (memory engine,
//! SQLite) as the reference column. For each set-up:
//!
//! * fan-out: one channel, its subscribers spread over the nodes (connection `i` on node
//!   `i % n`), the publisher on node 1 (so `n - 1` of every `n` deliveries cross the broker);
//! * chat: users spread over the nodes the same way, so each room's members sit on different
//!   nodes, sending with `chat.send` (stored in PostgreSQL, delivered through the broker);
//! * the broker hop (2 nodes): a light open-loop load published on node 1, received by
//!   subscribers on node 1, then by subscribers on node 2; the difference is what the hop
//!   costs.
//!
//! Every set-up gets fresh nodes, a fresh engine prefix and a fresh database (created with
//! `psql` on the server's maintenance database, dropped afterwards).

use crate::chat_scenarios::{chat_on, ChatShape};
use crate::client::Target;
use crate::publish::{Book, Mode, Publisher};
use crate::report::{Column, Fmt};
use crate::scenarios::{block, connect_all, ms, phase, stop_clients, throughput_on, Common, Shape};
use crate::servers::{Kind, Nodes, ServerProc};
use crate::stats::Shared;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// What the scenario runs.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// "redis", "nats".
    pub engines: Vec<String>,
    /// Node counts, e.g. 1, 2, 3.
    pub nodes: Vec<usize>,
    pub redis_url: String,
    pub nats_url: String,
    /// The PostgreSQL server's maintenance database (`.../postgres`).
    pub postgres_url: String,
    pub fanout: Shape,
    pub chat: ChatShape,
    /// Subscribers of the hop measurement, and its publications per second.
    pub hop_subscribers: u64,
    pub hop_rate: f64,
}

/// A database of the run's own, dropped when this is.
struct Database {
    maintenance: String,
    name: String,
    url: String,
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e} (the cluster scenario needs PostgreSQL's psql)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Database {
    fn create(maintenance: &str, name: String) -> Result<Database, String> {
        psql(maintenance, &format!("CREATE DATABASE {name}"))?;
        let base = maintenance.rsplit_once('/').map_or(maintenance, |(b, _)| b);
        Ok(Database { url: format!("{base}/{name}"), maintenance: maintenance.into(), name })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&self.maintenance, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Running nodes and the database they use.
struct Running {
    nodes: Nodes,
    _db: Option<Database>,
}

/// Starts `n` nodes on `engine` ("memory": one node, SQLite, the default) with a fresh
/// prefix and database named after `tag`.
async fn start_nodes(
    common: &Common,
    plan: &ClusterPlan,
    engine: &str,
    n: usize,
    tag: &str,
) -> Result<Running, String> {
    let run_tag = format!("bench{}{tag}", std::process::id());
    let mut env: Vec<(String, String)> = Vec::new();
    let db = if engine == "memory" {
        None
    } else {
        let db = Database::create(&plan.postgres_url, run_tag.clone())?;
        let url = if engine == "redis" { &plan.redis_url } else { &plan.nats_url };
        env.extend([
            ("HUBBUB_ENGINE_TYPE".to_string(), engine.to_string()),
            (format!("HUBBUB_ENGINE_{}_URL", engine.to_uppercase()), url.clone()),
            ("HUBBUB_ENGINE_PREFIX".into(), run_tag.clone()),
            ("HUBBUB_STORE_TYPE".into(), "postgres".into()),
            ("HUBBUB_STORE_POSTGRES_URL".into(), db.url.clone()),
        ]);
        Some(db)
    };
    let mut procs = Vec::new();
    for i in 0..n {
        let mut programs = common.programs.clone();
        programs.work = programs.work.join(format!("{run_tag}-n{}", i + 1));
        let _ = std::fs::remove_dir_all(&programs.work);
        let mut env = env.clone();
        env.push(("HUBBUB_NODE_NAME".into(), format!("n{}", i + 1)));
        procs.push(block(|| ServerProc::start_with(Kind::Hubbub, &programs, 0, &env))?);
    }
    // Nodes find each other through their heartbeats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Running { nodes: Nodes { procs }, _db: db })
}

/// Keeps the rows worth comparing across set-ups, prefixed with the workload's name.
fn pick(into: &mut Column, from: Column, prefix: &str, rows: &[&str]) {
    for row in rows {
        let value = from.get(row);
        let fmt = from.rows.iter().find(|r| r.0 == *row).map_or(Fmt::Dec(2), |r| r.2);
        into.plain(&format!("{prefix}: {row}"), value, fmt);
    }
    into.notes.extend(from.notes.into_iter().map(|n| format!("{prefix}: {n}")));
}

const FANOUT_ROWS: &[&str] = &[
    "max: publications/s",
    "max: deliveries/s (higher is better)",
    "max: server CPU, % of one core",
    "max: server CPU per delivery, µs (lower is better)",
    "50%: latency p50, ms",
    "50%: latency p99, ms (lower is better)",
    "lost deliveries",
    "duplicated deliveries",
];

const CHAT_ROWS: &[&str] = &[
    "max: messages stored (acknowledged)/s (higher is better)",
    "max: deliveries/s (to the other members)",
    "max: server CPU, % of one core",
    "max: server CPU per stored message, µs",
    "open loop: messages/s asked",
    "open loop: send → delivery p50, ms",
    "open loop: send → delivery p99, ms",
    "open loop: send → ack p50, ms",
    "open loop: send → ack p99, ms",
    "lost deliveries (acknowledged, never received)",
    "duplicated deliveries",
    "offset gaps (publications skipped)",
];

/// Publish → receive latency at a light open-loop rate, publisher on `publish_to`,
/// subscribers (of one channel) on `subscribe_to`: (p50 ms, p99 ms, lost deliveries).
async fn hop_latency(
    nodes: &Nodes,
    publish_to: SocketAddr,
    subscribe_to: SocketAddr,
    common: &Common,
    plan: &ClusterPlan,
) -> (Option<f64>, Option<f64>, u64) {
    let shared = Shared::new(true);
    let target = Arc::new(Target {
        kind: Kind::Hubbub,
        addr: publish_to,
        nodes: vec![subscribe_to],
        namespace: String::new(),
        reconnect: false,
        jitter: Duration::ZERO,
    });
    let n = plan.hop_subscribers;
    let plan_channels = (0..n).map(|_| vec![0]).collect();
    crate::client::spawn_all(target.clone(), &shared, plan_channels, common.concurrency);
    connect_all(&shared, n, true, Duration::from_secs(60)).await;
    let book = Book::new(1);
    let publisher = Arc::new(Publisher {
        target,
        shared: shared.clone(),
        book: book.clone(),
        channels: 1,
        pad: "x".repeat(common.payload),
        pipeline: 1,
    });
    let rate = plan.hop_rate;
    let _ = phase(&publisher, nodes, Mode::Open { rate }, Duration::from_secs(1), n).await;
    let p = phase(&publisher, nodes, Mode::Open { rate }, plan.fanout.phase, n).await;
    stop_clients(&shared, n).await;
    let results = shared.take_results();
    (ms(&p.latency, 0.5), ms(&p.latency, 0.99), book.lost(&results))
}

/// Every set-up's column, labelled "memory ×1", "redis ×2", ...
pub async fn cluster(common: &Common, plan: &ClusterPlan) -> Vec<(Kind, Column)> {
    let mut setups = vec![("memory".to_string(), 1usize)];
    for engine in &plan.engines {
        for &n in &plan.nodes {
            setups.push((engine.clone(), n));
        }
    }
    let mut columns = Vec::new();
    // The single-node default's hop latency, which the 2-node columns are compared with.
    let mut hop_base: Option<Option<f64>> = None;
    for (k, (engine, n)) in setups.into_iter().enumerate() {
        let label =
            if engine == "memory" { "memory ×1 (SQLite)".to_string() } else { format!("{engine} ×{n}") };
        eprintln!("cluster: {label}");
        let mut col = Column { label: Some(label.clone()), ..Column::default() };
        col.plain("nodes", Some(n as f64), Fmt::Int);

        match start_nodes(common, plan, &engine, n, &format!("f{k}")).await {
            Ok(running) => {
                let subscribe_to = running.nodes.addrs();
                let fanout =
                    throughput_on(Kind::Hubbub, running.nodes, subscribe_to, common, plan.fanout).await;
                pick(&mut col, fanout, "fan-out", FANOUT_ROWS);
            }
            Err(e) => col.notes.push(format!("fan-out: {e}")),
        }
        match start_nodes(common, plan, &engine, n, &format!("c{k}")).await {
            Ok(running) => {
                let chat = chat_on(running.nodes, common, plan.chat).await;
                pick(&mut col, chat, "chat", CHAT_ROWS);
            }
            Err(e) => col.notes.push(format!("chat: {e}")),
        }
        // The hop: on the single-node default (no broker at all) and on 2 nodes.
        if n == 2 || engine == "memory" {
            match start_nodes(common, plan, &engine, n, &format!("h{k}")).await {
                Ok(running) => {
                    let addrs = running.nodes.addrs();
                    let same = hop_latency(&running.nodes, addrs[0], addrs[0], common, plan).await;
                    let other = match addrs.get(1) {
                        Some(&b) => Some(hop_latency(&running.nodes, addrs[0], b, common, plan).await),
                        None => None,
                    };
                    block(|| running.nodes.stop(Duration::from_secs(15)));
                    col.plain("hop: publish on node 1, receive on node 1, p50 ms", same.0, Fmt::Dec(2));
                    col.plain("hop: publish on node 1, receive on node 1, p99 ms", same.1, Fmt::Dec(2));
                    let o = other.unwrap_or((None, None, 0));
                    col.plain("hop: publish on node 1, receive on node 2, p50 ms", o.0, Fmt::Dec(2));
                    col.plain("hop: publish on node 1, receive on node 2, p99 ms", o.1, Fmt::Dec(2));
                    col.plain("hop: lost deliveries", Some((same.2 + o.2) as f64), Fmt::Int);
                    hop_base.get_or_insert(same.0);
                    if let (Some(Some(base)), Some(other)) = (hop_base, o.0) {
                        col.plain(
                            "hop: node 2 minus the single-node default, p50 ms",
                            Some(other - base),
                            Fmt::Dec(2),
                        );
                    }
                }
                Err(e) => col.notes.push(format!("hop: {e}")),
            }
        }
        columns.push((Kind::Hubbub, col));
    }
    columns
}
