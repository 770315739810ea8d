//! Idempotent publishes: the first publish with a key (per channel) is stored once, and
//! every retry within the window is answered with its result instead of publishing again.
//!
//! Node-local: the keys live in this process's memory. A retry that reaches another node of
//! a cluster (or this one after a restart) publishes again. Centrifugo with Redis keeps the
//! key in Redis; Hubbub's engines do not yet (see docs/PROTOCOL.md).
//!
//! Bounded by count (`api.idempotency_max_keys`) and by bytes of keys
//! (`api.idempotency_max_bytes`): when either is reached the oldest keys are forgotten
//! early, so a retry of one of them would publish again. Every key expires after
//! `api.idempotency_ttl` (Centrifugo: 5 minutes).

use hubbub_protocol::StreamPosition;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The result of the first publish with a key; concurrent retries wait for it.
pub type Slot = Arc<OnceCell<StreamPosition>>;

/// What one key costs beyond its text: the map's entry, the queue's, the slot.
const ENTRY_OVERHEAD: usize = 128;

struct Entry {
    slot: Slot,
    /// Distinguishes this entry from a later one with the same key in the expiry queue.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(String, String), Entry>,
    /// Keys in the order they were added, which is also the order they expire in.
    queue: VecDeque<(Instant, u64, (String, String))>,
    bytes: usize,
    next_generation: u64,
}

/// `(channel, key) → result` for the window, within the bounds.
pub struct Idempotency {
    ttl: Duration,
    max_keys: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl Idempotency {
    pub fn new(ttl: Duration, max_keys: usize, max_bytes: usize) -> Self {
        Idempotency { ttl, max_keys, max_bytes, inner: Mutex::default() }
    }

    /// The slot of `key` in `channel`: the first publish's, or a new empty one that the
    /// caller fills by publishing (`OnceCell::get_or_try_init`: a failed publish leaves it
    /// empty and the next retry publishes).
    pub fn slot(&self, channel: &str, key: &str) -> Slot {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        let id = (channel.to_owned(), key.to_owned());
        if let Some(entry) = inner.map.get(&id) {
            return entry.slot.clone();
        }
        let cost = channel.len() + key.len() + ENTRY_OVERHEAD;
        while !inner.map.is_empty()
            && (inner.map.len() >= self.max_keys || inner.bytes + cost > self.max_bytes)
        {
            inner.pop_oldest();
        }
        let slot = Slot::default();
        let generation = inner.next_generation;
        inner.next_generation += 1;
        inner.bytes += cost;
        inner.queue.push_back((now + self.ttl, generation, id.clone()));
        inner.map.insert(id, Entry { slot: slot.clone(), generation });
        slot
    }

    /// Keys kept now, and their estimated bytes.
    pub fn stats(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.map.len(), inner.bytes)
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while self.queue.front().is_some_and(|(at, _, _)| *at <= now) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((_, generation, id)) = self.queue.pop_front() else { return };
        if self.map.get(&id).is_some_and(|e| e.generation == generation) {
            self.map.remove(&id);
            self.bytes -= id.0.len() + id.1.len() + ENTRY_OVERHEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> StreamPosition {
        StreamPosition { offset, epoch: "e".into() }
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_result() {
        let cache = Idempotency::new(Duration::from_secs(60), 10, 1 << 20);
        let first = cache.slot("news", "k1");
        first.get_or_init(|| async { pos(1) }).await;
        let retry = cache.slot("news", "k1");
        assert_eq!(retry.get(), Some(&pos(1)));
        // The key is per channel.
        assert!(cache.slot("other", "k1").get().is_none());
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_key_free() {
        let cache = Idempotency::new(Duration::from_secs(60), 10, 1 << 20);
        let slot = cache.slot("news", "k");
        let failed: Result<&StreamPosition, ()> = slot.get_or_try_init(|| async { Err(()) }).await;
        assert!(failed.is_err());
        let retry = cache.slot("news", "k");
        assert_eq!(retry.get_or_init(|| async { pos(2) }).await, &pos(2));
    }

    #[test]
    fn keys_expire_after_the_window() {
        let cache = Idempotency::new(Duration::from_millis(20), 10, 1 << 20);
        cache.slot("news", "k").set(pos(1)).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.slot("news", "k").get().is_none());
        assert_eq!(cache.stats().0, 1);
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let cache = Idempotency::new(Duration::from_secs(60), 3, 1 << 20);
        for i in 0..10 {
            cache.slot("news", &format!("k{i}")).set(pos(i)).unwrap();
        }
        assert_eq!(cache.stats().0, 3);
        // The newest are kept, the oldest forgotten.
        assert_eq!(cache.slot("news", "k9").get(), Some(&pos(9)));
        let cache = Idempotency::new(Duration::from_secs(60), 1000, 4 * (ENTRY_OVERHEAD + 20));
        for i in 0..100 {
            cache.slot("news", &format!("key-{i:010}")).set(pos(i)).unwrap();
        }
        let (keys, bytes) = cache.stats();
        assert!(keys <= 4 && bytes <= 4 * (ENTRY_OVERHEAD + 20), "{keys} keys, {bytes} bytes");
        // A key larger than the whole budget still works, alone.
        let cache = Idempotency::new(Duration::from_secs(60), 1000, 10);
        cache.slot("news", "a-long-key").set(pos(1)).unwrap();
        assert_eq!(cache.stats().0, 1);
    }
}
