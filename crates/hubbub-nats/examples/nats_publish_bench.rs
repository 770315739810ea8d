//! Publish latency and throughput through NATS, between two engines in one process (two
//! "nodes"): `cargo run --release -p hubbub-nats --example nats_publish_bench`.
//! NATS with JetStream at `HUBBUB_TEST_NATS_URL` (default nats://127.0.0.1:4222), under a
//! prefix of its own (its stream and buckets deleted at the end). Bounded: a fixed number of
//! sequential publishes, then a few seconds of concurrent ones.

use hubbub_core::engine::{Broker, BrokerEvents, EngineConfig, HistoryOptions};
use hubbub_nats::{NatsConfig, NatsEngine};
use hubbub_protocol::{json_from_str, ClientInfo, Publication};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Forwards each delivered offset with the instant it arrived.
struct Arrivals(mpsc::UnboundedSender<(u64, Instant)>, AtomicU64);

impl BrokerEvents for Arrivals {
    fn on_publication(&self, _: &str, p: Publication) {
        self.1.fetch_add(1, Ordering::Relaxed);
        let _ = self.0.send((p.offset, Instant::now()));
    }
    fn on_join(&self, _: &str, _: ClientInfo) {}
    fn on_leave(&self, _: &str, _: ClientInfo) {}
    fn on_control(&self, _: &[u8]) {}
    fn on_resync(&self) {}
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{what:<48} p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6
    );
}

#[tokio::main]
async fn main() {
    let url = std::env::var("HUBBUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let engine =
        EngineConfig { nats_url: url, prefix: hubbub_testservices::unique_prefix(), ..Default::default() };
    let config = NatsConfig::from_engine(&engine, Duration::from_secs(600));
    let a = Arc::new(NatsEngine::connect(config.clone()).await.expect("nats"));
    let b = Arc::new(NatsEngine::connect(config).await.expect("nats"));
    let (tx_a, _rx_a) = mpsc::unbounded_channel();
    a.start("a", Arc::new(Arrivals(tx_a, AtomicU64::new(0)))).await.unwrap();
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let received = Arc::new(Arrivals(tx, AtomicU64::new(0)));
    b.start("b", received.clone()).await.unwrap();
    b.subscribe("bench").await.unwrap();
    b.subscribe("plain").await.unwrap();
    let h = HistoryOptions { size: 1000, ttl: Duration::from_secs(60) };
    let payload = json_from_str(&format!("{{\"text\":\"{}\"}}", "x".repeat(100))).unwrap();
    let publication = || Publication { data: payload.clone(), info: None, offset: 0, tags: None };

    const SEQUENTIAL: usize = 2000;
    let (mut call, mut delivery) = (Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL {
        let sent = Instant::now();
        let pos = a.publish("bench", publication(), h).await.unwrap();
        call.push(sent.elapsed());
        let (offset, at) = arrivals.recv().await.unwrap();
        assert_eq!(offset, pos.offset);
        delivery.push(at - sent);
    }
    println!("{SEQUENTIAL} sequential publishes, 100-byte payload, node a → node b:");
    report("publish call (JetStream append + ack)", call);
    report("publish on a → delivered on b (republish)", delivery);

    // Node b appends to the channel node a appended to last: the top must be read again.
    let mut call = Vec::new();
    for i in 0..SEQUENTIAL / 4 {
        let node = if i % 2 == 0 { &a } else { &b };
        let sent = Instant::now();
        node.publish("bench", publication(), h).await.unwrap();
        call.push(sent.elapsed());
        arrivals.recv().await.unwrap();
    }
    report("publish call, nodes alternating (top re-read)", call);

    let mut call = Vec::new();
    for _ in 0..SEQUENTIAL {
        let sent = Instant::now();
        a.publish("plain", publication(), HistoryOptions::default()).await.unwrap();
        call.push(sent.elapsed());
        arrivals.recv().await.unwrap();
    }
    report("publish call without history (core publish)", call);

    // 64 publishers: on one channel (one append in flight per channel and node), on 64
    // channels, and on one channel from both nodes (appends race for the offset).
    for (what, channels, nodes, history) in [
        ("1 channel, history", 1, 1, h),
        ("64 channels, history", 64, 1, h),
        ("1 channel, history, 2 nodes", 1, 2, h),
        ("1 channel, no history", 1, 1, HistoryOptions::default()),
    ] {
        let stop = Instant::now() + Duration::from_secs(3);
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let node = if nodes == 2 && i % 2 == 1 { b.clone() } else { a.clone() };
                let (done, p) = (done.clone(), publication());
                let channel = format!("load{}", i % channels);
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        node.publish(&channel, p.clone(), history).await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        let sent = done.load(Ordering::Relaxed);
        println!(
            "64 concurrent publishers, {what:<28} {:>8.0} publishes/s",
            sent as f64 / elapsed.as_secs_f64()
        );
    }
    while arrivals.try_recv().is_ok() {}
    a.destroy().await.unwrap();
}
