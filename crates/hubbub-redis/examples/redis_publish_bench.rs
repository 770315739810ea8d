//! Publish latency and throughput through Redis, between two engines in one process (two
//! "nodes"): `cargo run --release -p hubbub-redis --example redis_publish_bench`.
//! Redis at `HUBBUB_TEST_REDIS_URL` (default redis://127.0.0.1:6379), under a prefix of its own.
//! Bounded: a fixed number of sequential publishes, then a few seconds of concurrent ones.

use hubbub_core::engine::{Broker, BrokerEvents, EngineConfig, HistoryOptions};
use hubbub_protocol::{json_from_str, ClientInfo, Publication};
use hubbub_redis::{RedisConfig, RedisEngine};
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
        "{what:<44} p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6
    );
}

#[tokio::main]
async fn main() {
    let url = std::env::var("HUBBUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let engine =
        EngineConfig { redis_url: url, prefix: hubbub_testservices::unique_prefix(), ..Default::default() };
    let config = RedisConfig::from_engine(&engine);
    let a = Arc::new(RedisEngine::connect(config.clone()).await.expect("redis"));
    let b = Arc::new(RedisEngine::connect(config).await.expect("redis"));
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
    report("publish call (Lua script round trip)", call);
    report("publish on a → delivered on b", delivery);

    let mut call = Vec::new();
    for _ in 0..SEQUENTIAL {
        let sent = Instant::now();
        a.publish("plain", publication(), HistoryOptions::default()).await.unwrap();
        call.push(sent.elapsed());
        arrivals.recv().await.unwrap();
    }
    report("publish call without history (PUBLISH)", call);

    for (what, history) in [("with history", h), ("without history", HistoryOptions::default())] {
        let channel = if history.enabled() { "bench" } else { "plain" };
        let before = received.1.load(Ordering::Relaxed);
        let stop = Instant::now() + Duration::from_secs(3);
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (a, done, p) = (a.clone(), done.clone(), publication());
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        a.publish(channel, p.clone(), history).await.unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.1.load(Ordering::Relaxed) - before < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while arrivals.try_recv().is_ok() {}
        println!(
            "64 concurrent publishers {what:<16} {:>8.0} publishes/s, {} of {} delivered on b",
            sent as f64 / elapsed.as_secs_f64(),
            received.1.load(Ordering::Relaxed) - before,
            sent
        );
    }
}
