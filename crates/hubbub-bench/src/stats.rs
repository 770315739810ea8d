//! Counters shared by the load generator's tasks, and the latency histograms.
//!
//! Latencies go to one histogram per worker thread (registered in a global list, locked
//! only by its own thread while running), merged when a phase ends: no contention on the
//! hot path.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Latencies are in microseconds, up to an hour.
const MAX_MICROS: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("histogram bounds")
}

type Shard = Arc<Mutex<Histogram<u64>>>;

static SHARDS: Mutex<Vec<Shard>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Option<Shard>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records latencies (µs) into this thread's histogram.
pub fn record_latencies(values: &[u64]) {
    if values.is_empty() {
        return;
    }
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let shard = local.get_or_insert_with(|| {
            let shard = Arc::new(Mutex::new(new_histogram()));
            lock(&SHARDS).push(shard.clone());
            shard
        });
        let mut h = lock(shard);
        for &v in values {
            h.saturating_record(v.max(1));
        }
    });
}

/// Merges and clears every thread's histogram.
pub fn take_latencies() -> Histogram<u64> {
    let mut merged = new_histogram();
    for shard in lock(&SHARDS).iter() {
        let mut h = lock(shard);
        let _ = merged.add(&*h);
        h.reset();
    }
    merged
}

/// What one subscription saw, kept by its connection across reconnects.
#[derive(Debug, Clone)]
pub struct SubResult {
    pub channel: u32,
    /// Highest sequence number received.
    pub last: u64,
    /// Ranges of sequence numbers skipped (inclusive), in order.
    pub gaps: Vec<(u64, u64)>,
    pub received: u64,
    pub dups: u64,
}

/// Shared by every connection task and the publisher of one run against one server.
pub struct Shared {
    /// Time base of the timestamps in payloads.
    pub epoch: Instant,
    /// Deliveries counted so far (reset between phases).
    pub delivered: AtomicU64,
    /// The publisher waits for `delivered` to reach this (closed-loop flow control).
    pub wake_at: AtomicU64,
    pub wake: Notify,
    /// Connections whose first session completed the protocol handshake.
    pub connected: AtomicU64,
    /// Connections whose first session subscribed to everything.
    pub subscribed: AtomicU64,
    /// Later sessions (after a lost connection) that subscribed to everything again.
    pub resubscribed: AtomicU64,
    /// Failed attempts to connect, hand-shake or subscribe.
    pub setup_errors: AtomicU64,
    /// Connections lost while not asked to stop (closed by the server or broken).
    pub lost_connections: AtomicU64,
    /// Re-subscriptions that the server answered with `recovered: true` / without it.
    pub recovered: AtomicU64,
    pub not_recovered: AtomicU64,
    /// Publications that came in subscribe replies (recovery) rather than as pushes.
    pub recovered_pubs: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub results: Mutex<Vec<SubResult>>,
    /// Connection tasks that have ended.
    pub finished: AtomicU64,
    pub stop: watch::Sender<bool>,
    /// Closed until the first sessions may subscribe (the idle scenario measures
    /// connections and subscriptions apart).
    pub subscribe_gate: watch::Sender<bool>,
}

impl Shared {
    pub fn new(gate_open: bool) -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            delivered: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            connected: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            resubscribed: AtomicU64::new(0),
            setup_errors: AtomicU64::new(0),
            lost_connections: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            recovered_pubs: AtomicU64::new(0),
            first_error: Mutex::new(None),
            results: Mutex::new(Vec::new()),
            finished: AtomicU64::new(0),
            stop: watch::channel(false).0,
            subscribe_gate: watch::channel(gate_open).0,
        })
    }

    /// Microseconds since [`Shared::epoch`].
    pub fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn deliver(&self, n: u64) {
        if n == 0 {
            return;
        }
        let total = self.delivered.fetch_add(n, Relaxed) + n;
        if total >= self.wake_at.load(Relaxed) {
            self.wake_at.store(u64::MAX, Relaxed);
            self.wake.notify_waiters();
        }
    }

    /// Waits until `need` deliveries have arrived; false after 3 s without progress.
    pub async fn wait_delivered(&self, need: u64) -> bool {
        let mut last = self.delivered.load(Relaxed);
        let mut since = Instant::now();
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.wake_at.fetch_min(need, Relaxed);
            let now = self.delivered.load(Relaxed);
            if now >= need {
                return true;
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > Duration::from_secs(3) {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }

    pub fn error(&self, what: String) {
        self.setup_errors.fetch_add(1, Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(what);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    pub fn push_results(&self, results: impl IntoIterator<Item = SubResult>) {
        lock(&self.results).extend(results);
    }

    pub fn take_results(&self) -> Vec<SubResult> {
        std::mem::take(&mut *lock(&self.results))
    }
}
