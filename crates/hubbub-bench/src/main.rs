//! `hubbub-bench`: the load generator and bench harness. Each scenario starts Hubbub and the
//! peers (the raw WebSocket fan-out baseline `raw-ws`, and Socket.IO 4 on Node) one after the
//! other, runs the same workload against each, and prints one table with the ratios
//! Hubbub / peer (written to `--out DIR` as `<date>-<scenario>.md`).
//!
//! Loads go to 127.0.0.0/8 only; every loop is bounded in count and time.

mod chat;
mod chat_scenarios;
mod client;
mod cluster;
mod publish;
mod report;
mod scenarios;
mod servers;
mod stats;
mod sys;

use clap::{Args, Parser, Subcommand};
use report::{verdict, Report};
use scenarios::{Common, Shape, Storm};
use servers::{Kind, Programs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hubbub-bench",
    about = "Load generator and bench harness for Hubbub (against raw-ws and Socket.IO)"
)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Opts {
    /// Servers to run, comma separated: hubbub, raw, socketio.
    #[arg(long, global = true, default_value = "hubbub,raw,socketio")]
    servers: String,
    /// The hubbub binary (default: next to this one).
    #[arg(long, global = true)]
    hubbub_bin: Option<PathBuf>,
    /// The raw-ws binary (default: next to this one).
    #[arg(long, global = true)]
    raw_bin: Option<PathBuf>,
    /// The Socket.IO peer's folder, with node_modules installed (npm ci).
    #[arg(long, global = true)]
    socketio_dir: Option<PathBuf>,
    /// Write the table to DIR/<date>-<scenario>.md.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Marks the report as a quick run (file <date>-<scenario>-quick.md).
    #[arg(long, global = true)]
    quick: bool,
    /// Padding in each payload, bytes (the payload is ~40 bytes more).
    #[arg(long, global = true, default_value_t = 64)]
    payload: usize,
    /// Closed loop (max rate): publications in flight, not yet received by every subscriber.
    #[arg(long, global = true, default_value_t = 32)]
    window: u64,
    /// Publish requests in flight on each publishing connection (HTTP/1.1 pipelining, so a
    /// channel's publications keep their order); 1 waits for each answer before the next.
    #[arg(long, global = true, default_value_t = 8)]
    pipeline: usize,
    /// Connection set-ups in flight at once (first connections; reconnects are not limited).
    /// Every server here listens with a backlog of at least 511 (Hubbub and raw-ws 4096).
    #[arg(long, global = true, default_value_t = 100)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// N idle connections, each then subscribed to one channel: memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        #[arg(long, default_value_t = 1000)]
        channels: u32,
    },
    /// One channel, many subscribers: highest sustained delivery rate, then latency at 50%.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: u64,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 5.0)]
        phase: f64,
        /// Hubbub publishes to namespace `r`, which keeps history (and, with the memory
        /// engine's log, writes it to disk): what keeping a stream costs on the fan-out path.
        /// Writes `<date>-fanout-history.md`.
        #[arg(long)]
        history: bool,
    },
    /// Many channels with a few subscribers each.
    Many {
        #[arg(long, default_value_t = 1000)]
        channels: u32,
        #[arg(long, default_value_t = 5)]
        subscribers_per_channel: u64,
        #[arg(long, default_value_t = 1)]
        channels_per_connection: u32,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 5.0)]
        phase: f64,
    },
    /// Everyone reconnecting at once after a server restart (Hubbub: with recovery).
    ConnectStorm {
        #[arg(long, default_value_t = 2000)]
        connections: u64,
        #[arg(long, default_value_t = 100)]
        channels: u32,
        /// Publications per second, all along.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Reconnect delay window: each client waits a random time up to this.
        #[arg(long, default_value_t = 500)]
        jitter_ms: u64,
        /// On chat rooms (Hubbub only): `--channels` rooms whose stream is durable, clients
        /// subscribed to `room:{id}` as `--users` members, messages sent with `chat.send`
        /// right after the restart. Writes `<date>-connect-storm-rooms.md`.
        #[arg(long)]
        rooms: bool,
        /// With --rooms: users signed up (each a member of one room; connections are spread
        /// over them).
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// With --rooms: sender connections (the rooms' owner).
        #[arg(long, default_value_t = 4)]
        senders: usize,
    },
    /// Chat (Hubbub only): sign-ups, group rooms, members; every user connected and
    /// subscribed to its rooms' `room:{id}`; messages sent with the `chat.send` RPC.
    /// Hubbub as 1, 2, 3 nodes on Redis and on NATS + PostgreSQL (and the single-node
    /// default beside them): fan-out and chat throughput, and the broker hop's latency.
    Cluster {
        /// Node counts to run.
        #[arg(long, default_value = "1,2,3")]
        nodes: String,
        /// Engines to run.
        #[arg(long, default_value = "redis,nats")]
        engines: String,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The PostgreSQL server's maintenance database: each set-up creates its own database.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres: String,
        /// Fan-out: subscribers of the one channel.
        #[arg(long, default_value_t = 1000)]
        subscribers: u64,
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Broker hop: subscribers and publications per second.
        #[arg(long, default_value_t = 100)]
        hop_subscribers: u64,
        #[arg(long, default_value_t = 200.0)]
        hop_rate: f64,
        #[arg(long, default_value_t = 3.0)]
        phase: f64,
    },
    Chat {
        #[arg(long, default_value_t = 200)]
        users: usize,
        #[arg(long, default_value_t = 40)]
        rooms: usize,
        /// Members per room (each subscribes to the room's channel).
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Messages per second of the open-loop phase (0: half the closed loop's rate).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 5.0)]
        phase: f64,
    },
}

fn main() {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(run(cli, nofile));
    // Connection tasks still winding down are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

fn programs(opts: &Opts) -> Programs {
    let exe_dir =
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_owned())).unwrap_or_default();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Programs {
        hubbub: opts.hubbub_bin.clone().unwrap_or_else(|| exe_dir.join("hubbub")),
        raw: opts.raw_bin.clone().unwrap_or_else(|| exe_dir.join("raw-ws")),
        socketio_dir: opts.socketio_dir.clone().unwrap_or_else(|| repo.join("bench/peers/socketio")),
        node: std::env::var("NODE").unwrap_or_else(|_| "node".into()),
        work: std::env::temp_dir().join(format!("hubbub-bench-{}", std::process::id())),
    }
}

/// Connections possible with this many open files (each side holds one per connection;
/// the servers inherit this process's limit). Leaves room for everything else.
fn connection_cap(nofile: u64) -> u64 {
    nofile.saturating_sub(300)
}

async fn run(cli: Cli, nofile: u64) -> i32 {
    let opts = cli.opts;
    let mut kinds = Vec::new();
    for name in opts.servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Kind::parse(name) {
            Some(k) => kinds.push(k),
            None => {
                eprintln!("unknown server {name:?} (hubbub, raw, socketio)");
                return 2;
            }
        }
    }
    let programs = programs(&opts);
    let mut notes = Vec::new();
    if kinds.contains(&Kind::SocketIo) && !programs.socketio_dir.join("node_modules/socket.io").is_dir() {
        notes.push(format!(
            "socket.io skipped: {} has no node_modules (run `npm ci` there)",
            programs.socketio_dir.display()
        ));
        kinds.retain(|k| *k != Kind::SocketIo);
    }
    let common = Common {
        programs: programs.clone(),
        payload: opts.payload,
        concurrency: opts.concurrency,
        pipeline: opts.pipeline,
    };
    let cap = connection_cap(nofile);
    let mut cap_note = |wanted: u64| -> u64 {
        if wanted > cap {
            notes.push(format!(
                "{wanted} connections asked, {cap} run: RLIMIT_NOFILE is {nofile} here (hard limit; raising it needs \
                 CAP_SYS_RESOURCE), and both the load generator and each server hold one descriptor per connection"
            ));
            cap
        } else {
            wanted
        }
    };
    let mut params: Vec<(String, String)> =
        vec![("payload".into(), format!("{} bytes of padding", opts.payload))];
    let mut targets = Vec::new();
    let mut columns = Vec::new();
    let scenario_name;
    match cli.scenario {
        Scenario::Idle { connections, channels } => {
            scenario_name = "idle";
            let n = cap_note(connections);
            params.push(("connections".into(), n.to_string()));
            params.push(("channels".into(), channels.to_string()));
            for &kind in &kinds {
                eprintln!("idle: {} with {n} connections", kind.name());
                columns.push((kind, scenarios::idle(kind, &common, n, channels).await));
            }
            let per_conn = columns
                .iter()
                .find(|c| c.0 == Kind::Hubbub)
                .and_then(|c| c.1.get("memory per idle connection, KiB (lower is better)"));
            targets.push(format!(
                "memory per idle WebSocket connection < 8 KiB (asked at 100,000 connections, run at {n}): {} ({})",
                per_conn.map(|v| format!("{v:.2} KiB")).unwrap_or_else(|| "–".into()),
                verdict(per_conn.map(|v| v < 8.0))
            ));
        }
        Scenario::Fanout { subscribers, phase, history } => {
            scenario_name = if history { "fanout-history" } else { "fanout" };
            let s = cap_note(subscribers);
            let shape = Shape {
                channels: 1,
                subscribers_per_channel: s,
                channels_per_connection: 1,
                phase: Duration::from_secs_f64(phase),
                window: opts.window,
                history,
            };
            params.push(("subscribers".into(), s.to_string()));
            params.push(("phase".into(), format!("{phase} s")));
            params.push(("closed-loop window".into(), format!("{} publications", opts.window)));
            params.push(("publish requests in flight per connection".into(), opts.pipeline.to_string()));
            if history {
                notes.push(
                    "Hubbub's channel is in namespace `r` (history_size 10000): each publication is also kept in \
                     its stream and, with `engine.persist` (the default), queued for the stream log's writer thread."
                        .into(),
                );
            }
            for &kind in &kinds {
                eprintln!("fanout: {} with {s} subscribers", kind.name());
                columns.push((kind, scenarios::throughput(kind, &common, shape).await));
            }
            throughput_targets(&columns, &mut targets);
        }
        Scenario::Many { channels, subscribers_per_channel, channels_per_connection, phase } => {
            scenario_name = "many";
            let k = channels_per_connection.clamp(1, channels.max(1));
            let mut shape = Shape {
                channels,
                subscribers_per_channel,
                channels_per_connection: k,
                phase: Duration::from_secs_f64(phase),
                window: opts.window,
                history: false,
            };
            let n = cap_note(shape.connections());
            if n < shape.connections() {
                shape.subscribers_per_channel = n * u64::from(k) / u64::from(channels);
            }
            params.push(("channels".into(), channels.to_string()));
            params.push(("subscribers per channel".into(), shape.subscribers_per_channel.to_string()));
            params.push(("channels per connection".into(), k.to_string()));
            params.push(("connections".into(), shape.connections().to_string()));
            params.push(("phase".into(), format!("{phase} s")));
            params.push(("closed-loop window".into(), format!("{} publications", opts.window)));
            params.push(("publish requests in flight per connection".into(), opts.pipeline.to_string()));
            for &kind in &kinds {
                eprintln!("many: {} with {} connections", kind.name(), shape.connections());
                columns.push((kind, scenarios::throughput(kind, &common, shape).await));
            }
            throughput_targets(&columns, &mut targets);
        }
        Scenario::ConnectStorm { connections, channels, rate, jitter_ms, rooms: true, users, senders } => {
            scenario_name = "connect-storm-rooms";
            let users = users.max(channels as usize);
            let n = cap_note(connections.max(users as u64) + senders as u64) - senders as u64;
            let storm = chat_scenarios::RoomStorm {
                connections: n,
                rooms: channels as usize,
                users,
                rate,
                jitter: Duration::from_millis(jitter_ms),
                senders,
            };
            params.push(("connections".into(), n.to_string()));
            params.push(("rooms".into(), channels.to_string()));
            params.push(("users".into(), users.to_string()));
            params.push(("sender connections".into(), senders.to_string()));
            params.push(("message rate".into(), format!("{rate}/s")));
            params.push(("reconnect jitter".into(), format!("{jitter_ms} ms")));
            if only_hubbub(&mut kinds, &mut notes) {
                eprintln!("connect-storm --rooms: hubbub with {n} connections");
                columns.push((Kind::Hubbub, chat_scenarios::connect_storm_rooms(&common, storm).await));
            }
            notes.push(
                "Clients subscribe to `room:{id}` (the chat's rooms: the stream is the room's event log in \
                 SQLite, in the data_dir the harness keeps across the restart) and resubscribe with recover:true \
                 and their last offset and epoch. Messages are sent with the chat.send RPC by separate sender \
                 connections, all along at the rate (queued while the server is down) and one per room as soon \
                 as the senders are back; a send left unanswered by the shutdown is repeated with the same \
                 client_msg_id. Lost: acknowledged messages a subscriber never received, live or recovered."
                    .into(),
            );
        }
        Scenario::ConnectStorm { connections, channels, rate, jitter_ms, .. } => {
            scenario_name = "connect-storm";
            let n = cap_note(connections);
            let storm = Storm { connections: n, channels, rate, jitter: Duration::from_millis(jitter_ms) };
            params.push(("connections".into(), n.to_string()));
            params.push(("channels".into(), channels.to_string()));
            params.push(("publish rate".into(), format!("{rate}/s")));
            params.push(("reconnect jitter".into(), format!("{jitter_ms} ms")));
            for &kind in &kinds {
                eprintln!("connect-storm: {} with {n} connections", kind.name());
                columns.push((kind, scenarios::connect_storm(kind, &common, storm).await));
            }
            notes.push(
                "Hubbub clients resubscribe with recover:true and their last offset and epoch; raw-ws and \
                 Socket.IO (without connectionStateRecovery) have no recovery, so what was published while a \
                 client was away is lost for it by design."
                    .into(),
            );
        }
        Scenario::Cluster {
            nodes,
            engines,
            redis,
            nats,
            postgres,
            subscribers,
            users,
            rooms,
            members,
            hop_subscribers,
            hop_rate,
            phase,
        } => {
            scenario_name = "cluster";
            let list =
                |s: &str| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect();
            let plan = cluster::ClusterPlan {
                engines: list(&engines),
                nodes: list(&nodes).iter().filter_map(|n: &String| n.parse().ok()).collect(),
                redis_url: redis,
                nats_url: nats,
                postgres_url: postgres,
                fanout: Shape {
                    channels: 1,
                    subscribers_per_channel: cap_note(subscribers),
                    channels_per_connection: 1,
                    phase: Duration::from_secs_f64(phase),
                    window: opts.window,
                    history: false,
                },
                chat: chat_scenarios::ChatShape {
                    users,
                    rooms,
                    members,
                    rate: 0.0,
                    phase: Duration::from_secs_f64(phase),
                    window: opts.window,
                },
                hop_subscribers,
                hop_rate,
            };
            params.push(("engines".into(), plan.engines.join(", ")));
            params.push(("nodes".into(), nodes.clone()));
            params.push(("fan-out subscribers".into(), plan.fanout.subscribers_per_channel.to_string()));
            params.push(("chat".into(), format!("{users} users, {rooms} rooms of {members}")));
            params.push(("hop".into(), format!("{hop_subscribers} subscribers, {hop_rate} publications/s")));
            params.push(("phase".into(), format!("{phase} s")));
            params.push(("publish requests in flight per connection".into(), opts.pipeline.to_string()));
            if only_hubbub(&mut kinds, &mut notes) {
                columns = cluster::cluster(&common, &plan).await;
            }
            notes.push(
                "Each column is fresh nodes of the release binary on this machine, with a fresh engine prefix and \
                 a fresh PostgreSQL database. Connections are spread over the nodes (connection i on node i % n); \
                 the publisher and the set-up requests go to node 1. Server CPU is the nodes' sum; the CPU of \
                 Redis, NATS and PostgreSQL (shared with the rest of the machine) is not in it. Everything shares \
                 the same 2 cores, so more nodes cannot mean more throughput here: the columns show what the \
                 engine and the database cost, not how a cluster of machines scales."
                    .into(),
            );
            notes.push(
                "hop: subscribers of one channel, publications at a light fixed rate sent to node 1, received by \
                 subscribers on node 1, then on node 2. With an engine, a publication reaches even node 1's own \
                 subscribers through the broker (the broker orders it); the single-node default delivers in \
                 process. The broker hop's cost is the 2-node rows minus the single-node default's."
                    .into(),
            );
        }
        Scenario::Chat { users, rooms, members, rate, phase } => {
            scenario_name = "chat";
            let users = cap_note(users as u64) as usize;
            let shape = chat_scenarios::ChatShape {
                users,
                rooms,
                members,
                rate,
                phase: Duration::from_secs_f64(phase),
                window: opts.window,
            };
            params.push(("users".into(), users.to_string()));
            params.push(("rooms".into(), rooms.to_string()));
            params.push(("members per room".into(), members.to_string()));
            params.push((
                "open-loop rate".into(),
                if rate > 0.0 { format!("{rate} messages/s") } else { "half the closed loop's".into() },
            ));
            params.push(("phase".into(), format!("{phase} s")));
            params.push(("closed-loop window".into(), format!("{} messages", opts.window)));
            if only_hubbub(&mut kinds, &mut notes) {
                eprintln!("chat: hubbub with {users} users, {rooms} rooms of {members}");
                columns.push((Kind::Hubbub, chat_scenarios::chat(&common, shape).await));
            }
            notes.push(
                "Stored: the chat.send RPC answered with the message (only after its SQLite commit). Deliveries: \
                 the message's publication on room:{id} received by the room's other members. Latencies from the \
                 send time written in the text (same process, monotonic clock). The closed loop keeps the window's \
                 messages in flight (each waits for its acknowledgement, and deliveries may lag by at most the \
                 window); the open loop sends at the rate from random members of random rooms."
                    .into(),
            );
        }
    }
    if kinds.contains(&Kind::SocketIo) {
        notes.push(
            "Socket.IO peer: bench/peers/socketio/server.js on Node (socket.io 4, WebSocket transport only, no \
             per-message deflate); the Rust load generator speaks Engine.IO v4 / Socket.IO framing over that \
             WebSocket (`42[\"m\",{..}]`), the same bytes socket.io-client sends with transports: [\"websocket\"]."
                .into(),
        );
    }
    let report =
        Report { scenario: scenario_name.into(), quick: opts.quick, params, columns, targets, notes };
    report.emit(opts.out.as_deref());
    let _ = std::fs::remove_dir_all(&programs.work);
    0
}

/// The chat scenarios run against Hubbub only: the peers have no chat. Says so; false when
/// Hubbub is not among the servers asked.
fn only_hubbub(kinds: &mut Vec<Kind>, notes: &mut Vec<String>) -> bool {
    let peers: Vec<&str> = kinds.iter().filter(|k| **k != Kind::Hubbub).map(|k| k.name()).collect();
    if !peers.is_empty() {
        notes.push(format!(
            "Hubbub only: {} have no chat (accounts, rooms, durable history), so there is nothing to compare.",
            peers.join(" and ")
        ));
    }
    let has = kinds.contains(&Kind::Hubbub);
    kinds.retain(|k| *k == Kind::Hubbub);
    if !has {
        notes.push("hubbub is not among --servers: nothing was measured.".into());
    }
    has
}

fn throughput_targets(columns: &[(Kind, report::Column)], targets: &mut Vec<String>) {
    let get = |k: Kind, label: &str| columns.iter().find(|c| c.0 == k).and_then(|c| c.1.get(label));
    let rate = "max: deliveries/s (higher is better)";
    let h = get(Kind::Hubbub, rate);
    for (peer, goal) in [(Kind::Raw, 0.8), (Kind::SocketIo, 5.0)] {
        let ratio = h.zip(get(peer, rate)).map(|(a, b)| a / b);
        targets.push(format!(
            "deliveries/s Hubbub / {} >= {goal}: {} ({})",
            peer.name(),
            ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into()),
            verdict(ratio.map(|r| r >= goal))
        ));
    }
    let p99 = get(Kind::Hubbub, "50%: latency p99, ms (lower is better)");
    targets.push(format!(
        "Hubbub p99 latency at 50% of its max sustained rate < 5 ms: {} ({})",
        p99.map(|v| format!("{v:.2} ms")).unwrap_or_else(|| "–".into()),
        verdict(p99.map(|v| v < 5.0))
    ));
}
