//! The scenarios. Each one runs the same workload against every server in turn (a fresh
//! process each time) and fills one column of the report.

use crate::client::{self, Target};
use crate::publish::{Book, Mode, Publisher};
use crate::report::{Column, Fmt};
use crate::servers::{Kind, Nodes, Programs, ServerProc};
use crate::stats::{take_latencies, Shared};
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub programs: Programs,
    /// Padding of each payload, in bytes.
    pub payload: usize,
    /// First set-ups in flight at once.
    pub concurrency: usize,
    /// Publish requests in flight per publishing connection.
    pub pipeline: usize,
}

pub(crate) fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub(crate) async fn start(kind: Kind, common: &Common, port: u16) -> Result<ServerProc, String> {
    let programs = common.programs.clone();
    block(|| ServerProc::start(kind, &programs, port))
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub(crate) async fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

pub(crate) fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

pub(crate) fn kib_per(bytes_kib_delta: i64, n: u64) -> Option<f64> {
    (n > 0).then(|| bytes_kib_delta as f64 / n as f64)
}

/// Stops every connection task and waits for them (bounded).
pub(crate) async fn stop_clients(shared: &Arc<Shared>, total: u64) {
    let _ = shared.stop.send(true);
    wait_for(Duration::from_secs(30), || shared.finished.load(Relaxed) >= total).await;
}

/// The rows every connect-storm table has: how fast everyone came back and how many
/// resubscriptions recovered.
pub(crate) fn storm_rows(col: &mut Column, shared: &Shared, back: u64, t_listen: f64, t_all: f64) {
    col.metric("all back (SIGTERM → everyone resubscribed), s (lower is better)", Some(t_all), Fmt::Dec(2));
    col.metric(
        "reconnect rate after listening, conn/s",
        Some(back as f64 / (t_all - t_listen).max(0.001)),
        Fmt::Int,
    );
    col.plain("failed reconnect attempts", Some(shared.setup_errors.load(Relaxed) as f64), Fmt::Int);
    col.plain("re-subscriptions recovered", Some(shared.recovered.load(Relaxed) as f64), Fmt::Int);
    col.plain("re-subscriptions not recovered", Some(shared.not_recovered.load(Relaxed) as f64), Fmt::Int);
}

pub(crate) fn note_errors(col: &mut Column, shared: &Shared) {
    if let Some(e) = shared.first_error() {
        col.notes.push(format!("{} set-up errors, first: {e}", shared.setup_errors.load(Relaxed)));
    }
}

fn target(
    kind: Kind,
    server: &ServerProc,
    namespace: &str,
    reconnect: bool,
    jitter: Duration,
) -> Arc<Target> {
    Arc::new(Target {
        kind,
        addr: server.addr,
        nodes: Vec::new(),
        namespace: namespace.into(),
        reconnect,
        jitter,
    })
}

/// Opens every connection and waits until they are set up (or failed). Returns the
/// seconds it took; `subscribed` selects which counter means "set up".
pub(crate) async fn connect_all(shared: &Arc<Shared>, n: u64, subscribed: bool, limit: Duration) -> f64 {
    let started = Instant::now();
    wait_for(limit, || {
        let done = if subscribed { shared.subscribed.load(Relaxed) } else { shared.connected.load(Relaxed) };
        done + shared.setup_errors.load(Relaxed) >= n
    })
    .await;
    started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// idle

pub async fn idle(kind: Kind, common: &Common, connections: u64, channels: u32) -> Column {
    let mut col = Column::default();
    let server = match start(kind, common, 0).await {
        Ok(s) => s,
        Err(e) => {
            col.notes.push(e);
            return col;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let cpu0 = server.cpu_seconds();
    let shared = Shared::new(false);
    let plan = (0..connections).map(|i| vec![(i % u64::from(channels)) as u32]).collect();
    client::spawn_all(target(kind, &server, "", false, Duration::ZERO), &shared, plan, common.concurrency);
    let t_connect = connect_all(&shared, connections, false, Duration::from_secs(300)).await;
    let connected = shared.connected.load(Relaxed);
    let cpu1 = server.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = server.rss_kib();
    let _ = shared.subscribe_gate.send(true);
    let sub_started = Instant::now();
    wait_for(Duration::from_secs(120), || {
        shared.subscribed.load(Relaxed) + shared.setup_errors.load(Relaxed) >= connections
    })
    .await;
    let t_sub = sub_started.elapsed().as_secs_f64();
    let subscribed = shared.subscribed.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss2 = server.rss_kib();
    let lost = shared.lost_connections.load(Relaxed);
    stop_clients(&shared, connections).await;
    note_errors(&mut col, &shared);
    block(|| server.stop(Duration::from_secs(15)));

    col.plain("connections open", Some(connected as f64), Fmt::Int);
    col.plain("subscribed (1 channel each)", Some(subscribed as f64), Fmt::Int);
    col.metric(
        "connection set-up rate, conn/s (higher is better)",
        Some(connected as f64 / t_connect),
        Fmt::Int,
    );
    col.metric("time to open all, s", Some(t_connect), Fmt::Dec(2));
    col.metric("time to subscribe all, s", Some(t_sub), Fmt::Dec(2));
    col.metric(
        "server CPU per 1k connections, ms",
        Some((cpu1 - cpu0) * 1e6 / connected.max(1) as f64),
        Fmt::Dec(1),
    );
    col.plain("server RSS before, MiB", Some(rss0 as f64 / 1024.0), Fmt::Dec(1));
    col.plain("server RSS connected, MiB", Some(rss1 as f64 / 1024.0), Fmt::Dec(1));
    col.plain("server RSS subscribed, MiB", Some(rss2 as f64 / 1024.0), Fmt::Dec(1));
    col.metric(
        "memory per idle connection, KiB (lower is better)",
        kib_per(rss1 as i64 - rss0 as i64, connected),
        Fmt::Dec(2),
    );
    col.metric(
        "memory per connection + 1 subscription, KiB",
        kib_per(rss2 as i64 - rss0 as i64, subscribed),
        Fmt::Dec(2),
    );
    col.plain("connections lost", Some(lost as f64), Fmt::Int);
    col.plain("set-up errors", Some(shared.setup_errors.load(Relaxed) as f64), Fmt::Int);
    col
}

// ---------------------------------------------------------------------------------------
// fanout and many: the same throughput workload with different shapes

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub channels: u32,
    pub subscribers_per_channel: u64,
    pub channels_per_connection: u32,
    /// Each measured phase lasts this long.
    pub phase: Duration,
    /// Closed loop: publications in flight (published, not yet received by everyone).
    pub window: u64,
    /// Hubbub: channels of namespace `r` (history kept) instead of the default namespace.
    pub history: bool,
}

impl Shape {
    pub fn connections(&self) -> u64 {
        u64::from(self.channels) * self.subscribers_per_channel / u64::from(self.channels_per_connection)
    }

    /// Connection `i` subscribes to channels `i*K .. i*K+K` (mod C): every channel gets
    /// exactly `subscribers_per_channel` subscribers, no connection a channel twice.
    fn plan(&self) -> Vec<Vec<u32>> {
        let k = u64::from(self.channels_per_connection);
        let c = u64::from(self.channels);
        (0..self.connections()).map(|i| (0..k).map(|j| ((i * k + j) % c) as u32).collect()).collect()
    }
}

pub(crate) struct Phase {
    published: u64,
    deliveries: u64,
    secs: f64,
    cpu: f64,
    /// The load generator's own CPU time meanwhile.
    client_cpu: f64,
    pub(crate) latency: Histogram<u64>,
    stalled: bool,
}

/// Runs one publishing phase and waits (bounded) for its deliveries to arrive.
pub(crate) async fn phase(
    publisher: &Arc<Publisher>,
    server: &Nodes,
    mode: Mode,
    duration: Duration,
    per_message: u64,
) -> Phase {
    let shared = &publisher.shared;
    shared.delivered.store(0, Relaxed);
    let _ = take_latencies();
    let cpu0 = server.cpu_seconds();
    let me = std::process::id();
    let client0 = crate::sys::cpu_seconds(me).unwrap_or(0.0);
    let out = publisher.run(mode, duration).await;
    let deliveries_at_end = shared.delivered.load(Relaxed);
    let cpu1 = server.cpu_seconds();
    let client1 = crate::sys::cpu_seconds(me).unwrap_or(0.0);
    let expected = out.messages * per_message;
    wait_for(Duration::from_secs(3), || shared.delivered.load(Relaxed) >= expected).await;
    let secs = out.elapsed.as_secs_f64();
    Phase {
        published: out.messages,
        // Closed loop: what arrived while publishing; open loop: everything published.
        deliveries: if matches!(mode, Mode::Closed { .. }) {
            deliveries_at_end
        } else {
            shared.delivered.load(Relaxed)
        },
        secs,
        cpu: cpu1 - cpu0,
        client_cpu: client1 - client0,
        latency: take_latencies(),
        stalled: out.stalled,
    }
}

pub async fn throughput(kind: Kind, common: &Common, shape: Shape) -> Column {
    match start(kind, common, 0).await {
        Ok(server) => {
            let addr = server.addr;
            throughput_on(kind, Nodes::one(server), vec![addr], common, shape).await
        }
        Err(e) => {
            let mut col = Column::default();
            col.notes.push(e);
            col
        }
    }
}

/// The throughput workload on running servers: subscribers spread over `subscribe_to`
/// (connection `i` on `subscribe_to[i % len]`), the publisher on the first node.
pub async fn throughput_on(
    kind: Kind,
    server: Nodes,
    subscribe_to: Vec<std::net::SocketAddr>,
    common: &Common,
    shape: Shape,
) -> Column {
    let mut col = Column::default();
    let n = shape.connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = server.rss_kib();
    let shared = Shared::new(true);
    let target = Arc::new(Target {
        kind,
        addr: server.addr(),
        nodes: subscribe_to,
        namespace: if shape.history { "r:" } else { "" }.into(),
        reconnect: false,
        jitter: Duration::ZERO,
    });
    client::spawn_all(target.clone(), &shared, shape.plan(), common.concurrency);
    let t_setup = connect_all(&shared, n, true, Duration::from_secs(300)).await;
    let subscribed = shared.subscribed.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = server.rss_kib();

    let book = Book::new(shape.channels);
    let publisher = Arc::new(Publisher {
        target,
        shared: shared.clone(),
        book: book.clone(),
        channels: shape.channels,
        pad: "x".repeat(common.payload),
        pipeline: common.pipeline,
    });
    let s = shape.subscribers_per_channel;
    let window = (shape.window * s).max(4096);
    let closed = Mode::Closed { window, per_message: s };
    // Warm-up, then the closed loop finds the highest sustained rate.
    let _ = phase(&publisher, &server, closed, shape.phase.min(Duration::from_secs(1)), s).await;
    let max = phase(&publisher, &server, closed, shape.phase, s).await;
    let max_rate = max.published as f64 / max.secs;
    let half = if max_rate > 0.0 {
        Some(phase(&publisher, &server, Mode::Open { rate: max_rate / 2.0 }, shape.phase, s).await)
    } else {
        None
    };
    let rss2 = server.rss_kib();
    let lost_connections = shared.lost_connections.load(Relaxed);
    stop_clients(&shared, n).await;
    let results = shared.take_results();
    let lost = book.lost(&results);
    let dups: u64 = results.iter().map(|r| r.dups).sum();
    note_errors(&mut col, &shared);
    if let Some(e) = book.first_error() {
        col.notes.push(format!("{} publish errors, first: {e}", book.errors.load(Relaxed)));
    }
    if max.stalled {
        col.notes.push("closed loop stalled (deliveries stopped arriving for 3 s)".into());
    }
    block(|| server.stop(Duration::from_secs(15)));

    col.plain("connections subscribed", Some(subscribed as f64), Fmt::Int);
    col.metric(
        "connection set-up rate (incl. subscribe), conn/s",
        Some(subscribed as f64 / t_setup),
        Fmt::Int,
    );
    col.metric(
        "memory per connection (subscribed), KiB",
        kib_per(rss1 as i64 - rss0 as i64, subscribed),
        Fmt::Dec(2),
    );
    col.metric("max: publications/s", Some(max_rate), Fmt::Int);
    col.metric("max: deliveries/s (higher is better)", Some(max.deliveries as f64 / max.secs), Fmt::Int);
    col.metric("max: server CPU, % of one core", Some(max.cpu / max.secs * 100.0), Fmt::Int);
    col.plain("max: load generator CPU, % of one core", Some(max.client_cpu / max.secs * 100.0), Fmt::Int);
    col.metric(
        "max: server CPU per delivery, µs (lower is better)",
        (max.deliveries > 0).then(|| max.cpu * 1e6 / max.deliveries as f64),
        Fmt::Dec(3),
    );
    col.metric("max: latency p50, ms", ms(&max.latency, 0.5), Fmt::Dec(2));
    col.metric("max: latency p99, ms", ms(&max.latency, 0.99), Fmt::Dec(2));
    if let Some(h) = &half {
        col.metric("50%: publications/s", Some(h.published as f64 / h.secs), Fmt::Int);
        col.metric("50%: deliveries/s", Some(h.deliveries as f64 / h.secs), Fmt::Int);
        col.metric("50%: server CPU, % of one core", Some(h.cpu / h.secs * 100.0), Fmt::Int);
        col.metric("50%: latency p50, ms", ms(&h.latency, 0.5), Fmt::Dec(2));
        col.metric("50%: latency p99, ms (lower is better)", ms(&h.latency, 0.99), Fmt::Dec(2));
        col.metric("50%: latency p99.9, ms", ms(&h.latency, 0.999), Fmt::Dec(2));
        col.metric("50%: latency max, ms", max_ms(&h.latency), Fmt::Dec(2));
    }
    col.plain("server RSS at the end, MiB", Some(rss2 as f64 / 1024.0), Fmt::Dec(1));
    col.plain("publications (all phases)", Some(book.published.load(Relaxed) as f64), Fmt::Int);
    col.plain("publish errors", Some(book.errors.load(Relaxed) as f64), Fmt::Int);
    col.plain("lost deliveries", Some(lost as f64), Fmt::Int);
    col.plain("duplicated deliveries", Some(dups as f64), Fmt::Int);
    col.plain("connections lost (e.g. slow-consumer close)", Some(lost_connections as f64), Fmt::Int);
    col.plain("set-up errors", Some(shared.setup_errors.load(Relaxed) as f64), Fmt::Int);
    col
}

// ---------------------------------------------------------------------------------------
// connect-storm

#[derive(Clone, Copy, Debug)]
pub struct Storm {
    pub connections: u64,
    pub channels: u32,
    /// Publications per second, all along (before, during and after the restart).
    pub rate: f64,
    pub jitter: Duration,
}

pub async fn connect_storm(kind: Kind, common: &Common, storm: Storm) -> Column {
    let mut col = Column::default();
    let server = match start(kind, common, 0).await {
        Ok(s) => s,
        Err(e) => {
            col.notes.push(e);
            return col;
        }
    };
    let port = server.addr.port();
    let n = storm.connections;
    let shared = Shared::new(true);
    let target = target(kind, &server, "r:", true, storm.jitter);
    let plan = (0..n).map(|i| vec![(i % u64::from(storm.channels)) as u32]).collect();
    client::spawn_all(target.clone(), &shared, plan, common.concurrency);
    connect_all(&shared, n, true, Duration::from_secs(300)).await;
    let subscribed = shared.subscribed.load(Relaxed);

    // Publish all along, in half-second runs, until told to stop.
    let book = Book::new(storm.channels);
    let publisher = Arc::new(Publisher {
        target,
        shared: shared.clone(),
        book: book.clone(),
        channels: storm.channels,
        pad: "x".repeat(common.payload),
        pipeline: common.pipeline,
    });
    let (pub_stop, pub_stopped) = tokio::sync::watch::channel(false);
    let background = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            // At most 10 minutes, whatever happens.
            for _ in 0..1200 {
                if *pub_stopped.borrow() {
                    break;
                }
                publisher.run(Mode::Open { rate: storm.rate }, Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The restart: SIGTERM (graceful shutdown), then the same binary on the same port.
    let t0 = Instant::now();
    let stop_secs = block(|| server.stop(Duration::from_secs(15))).as_secs_f64();
    let restarted = start(kind, common, port).await;
    let t_listen = t0.elapsed().as_secs_f64();
    let server = match restarted {
        Ok(s) => s,
        Err(e) => {
            col.notes.push(format!("restart failed: {e}"));
            let _ = pub_stop.send(true);
            let _ = background.await;
            stop_clients(&shared, n).await;
            return col;
        }
    };
    let all_back =
        wait_for(Duration::from_secs(120), || shared.resubscribed.load(Relaxed) >= subscribed).await;
    let t_all = t0.elapsed().as_secs_f64();
    let back = shared.resubscribed.load(Relaxed);
    // Keep publishing a little: everything from now on must arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = pub_stop.send(true);
    let _ = background.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_clients(&shared, n).await;
    let results = shared.take_results();
    let lost = book.lost(&results);
    let dups: u64 = results.iter().map(|r| r.dups).sum();
    let received: u64 = results.iter().map(|r| r.received).sum();
    note_errors(&mut col, &shared);
    if !all_back {
        col.notes.push(format!("only {back} of {subscribed} connections came back within 120 s"));
    }
    block(|| server.stop(Duration::from_secs(15)));

    col.plain("connections subscribed before the restart", Some(subscribed as f64), Fmt::Int);
    col.plain("connections back after the restart", Some(back as f64), Fmt::Int);
    col.metric("old server's shutdown, s", Some(stop_secs), Fmt::Dec(2));
    col.metric("server down (SIGTERM → listening again), s", Some(t_listen), Fmt::Dec(2));
    storm_rows(&mut col, &shared, back, t_listen, t_all);
    col.plain(
        "publications recovered in subscribe replies",
        Some(shared.recovered_pubs.load(Relaxed) as f64),
        Fmt::Int,
    );
    col.plain("publications accepted", Some(book.published.load(Relaxed) as f64), Fmt::Int);
    col.plain(
        "publications refused or failed (server down)",
        Some(book.errors.load(Relaxed) as f64),
        Fmt::Int,
    );
    col.plain("deliveries received", Some(received as f64), Fmt::Int);
    col.plain("lost deliveries (accepted, never received)", Some(lost as f64), Fmt::Int);
    col.plain("duplicated deliveries", Some(dups as f64), Fmt::Int);
    col
}
