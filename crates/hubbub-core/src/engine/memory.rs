//! The single-node engine: channel streams in bounded rings, presence in a map.
//!
//! Each stream has its own mutex, held while its next offset is assigned *and* the
//! publication is handed to the hub, so that every subscriber sees a channel's publications
//! in offset order. The hub's fan-out never awaits, so the lock is short.
//!
//! Memory: a stream exists only once something was published to its channel (reading never
//! creates one), and all streams together are bounded by [`MemoryEngineConfig`]: their
//! estimated bytes and their number. Over either bound the least recently published streams
//! are dropped whole, so a position in them becomes unrecoverable.
//!
//! A channel without a stream reads as offset 0 in the engine's *empty epoch*, and a stream
//! is created with that epoch, so a subscriber positioned on the empty channel recovers its
//! first publications. Before a stream carrying the current empty epoch is dropped, the empty
//! epoch changes: a position in a dropped stream never matches again.

use super::*;
use crate::sharded::ShardedMap;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::time::Instant;

/// Bounds of the memory engine's channel streams (its keys of config section `[engine]`,
/// [`EngineConfig`]).
#[derive(Debug, Clone)]
pub struct MemoryEngineConfig {
    /// Estimated bytes all channels' history may hold together (publications and the
    /// streams' own bookkeeping). Over it, the least recently published channels' streams
    /// are dropped.
    pub history_max_bytes: usize,
    /// Channels that may have a stream at once. Over it, the least recently published
    /// channels' streams are dropped.
    pub history_max_streams: usize,
    /// How long a stream whose publications have all expired keeps its position (offset and
    /// epoch), so that a client that saw its last publication still recovers (with nothing).
    pub history_meta_ttl: Duration,
}

impl Default for MemoryEngineConfig {
    fn default() -> Self {
        MemoryEngineConfig {
            history_max_bytes: 64 << 20,
            history_max_streams: 100_000,
            history_meta_ttl: Duration::from_secs(3600),
        }
    }
}

/// Estimated bytes of a stream apart from its publications: the map entry, the key, the
/// `Arc<Mutex<Stream>>`, the epoch and the ring's header.
const STREAM_OVERHEAD: usize = 256;
/// Estimated bytes of one kept publication apart from its payload and strings.
const PUBLICATION_OVERHEAD: usize = 96;

/// When over a bound, streams are dropped until this fraction (in percent) of it is used, so
/// that the scan for the oldest streams runs once per many publications.
const EVICT_TO_PERCENT: usize = 90;

fn publication_bytes(p: &Publication) -> usize {
    let info = p.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |j| j.get().len())
            + i.chan_info.as_ref().map_or(0, |j| j.get().len())
    });
    PUBLICATION_OVERHEAD + p.data.get().len() + info
}

struct Stream {
    epoch: String,
    top: u64,
    /// Kept publications, oldest first, with the instant each expires and its estimated size.
    items: VecDeque<(Instant, usize, Publication)>,
    /// Last publication.
    touched: Instant,
    /// Estimated bytes of the whole stream (counted in [`MemoryBroker::bytes`]).
    bytes: usize,
    /// Taken out of the map: whoever still holds it must look the channel up again.
    dropped: bool,
}

impl Stream {
    fn prune(&mut self, now: Instant) -> usize {
        let mut freed = 0;
        while self.items.front().is_some_and(|(expires, _, _)| *expires <= now) {
            freed += self.items.pop_front().map_or(0, |(_, size, _)| size);
        }
        self.bytes -= freed;
        freed
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.top, epoch: self.epoch.clone() }
    }

    /// The offset of the oldest publication still kept (top + 1 when none is).
    fn first_kept(&self) -> u64 {
        self.top + 1 - self.items.len() as u64
    }

    /// Nothing kept, and its position outlived `meta_ttl`.
    fn forgotten(&self, now: Instant, meta_ttl: Duration) -> bool {
        self.items.is_empty() && now.duration_since(self.touched) > meta_ttl
    }
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

type SharedStream = std::sync::Arc<Mutex<Stream>>;

fn lock(s: &SharedStream) -> std::sync::MutexGuard<'_, Stream> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct MemoryBroker {
    config: MemoryEngineConfig,
    streams: ShardedMap<String, SharedStream>,
    /// Epoch of a channel without a stream (see the module doc). Locked after a shard and a
    /// stream, never before.
    empty_epoch: Mutex<String>,
    /// Sum of the streams' `bytes`.
    bytes: AtomicUsize,
    /// Number of streams in the map.
    count: AtomicUsize,
    /// One eviction at a time; others skip it (the running one frees enough for them).
    evicting: Mutex<()>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// This node's id, given at start: control messages addressed to it are delivered.
    node_id: OnceLock<String>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::with_config(MemoryEngineConfig::default())
    }
}

impl MemoryBroker {
    /// A broker with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_config(config: MemoryEngineConfig) -> Self {
        MemoryBroker {
            config,
            streams: ShardedMap::default(),
            empty_epoch: Mutex::new(new_epoch()),
            bytes: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            events: OnceLock::new(),
            node_id: OnceLock::new(),
        }
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, EngineError> {
        self.events.get().ok_or_else(|| EngineError::Unavailable("broker not started".into()))
    }

    fn empty_epoch(&self) -> String {
        self.empty_epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stats(&self) -> StreamStats {
        StreamStats { streams: self.count.load(Ordering::Relaxed), bytes: self.bytes.load(Ordering::Relaxed) }
    }

    /// Takes a stream out of the accounting; the caller holds its shard (and removes it from
    /// the map) and its lock. A position in it must never match again: when it carries the
    /// empty epoch, the empty epoch changes first.
    fn retire(&self, s: &mut Stream) {
        let mut empty = self.empty_epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *empty == s.epoch {
            *empty = new_epoch();
        }
        drop(empty);
        s.dropped = true;
        s.items.clear();
        self.bytes.fetch_sub(s.bytes, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// The channel's stream, created (with the empty epoch) when missing or forgotten.
    fn stream_for_publish(&self, channel: &str, now: Instant) -> SharedStream {
        let mut shard = self.streams.shard(channel);
        if let Some(existing) = shard.get(channel).cloned() {
            let mut s = lock(&existing);
            if !s.forgotten(now, self.config.history_meta_ttl) {
                drop(s);
                return existing;
            }
            self.retire(&mut s);
            drop(s);
            shard.remove(channel);
        }
        let bytes = STREAM_OVERHEAD + channel.len();
        let s: SharedStream = Arc::new(Mutex::new(Stream {
            epoch: self.empty_epoch(),
            top: 0,
            items: VecDeque::new(),
            touched: now,
            bytes,
            dropped: false,
        }));
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        shard.insert(channel.to_owned(), s.clone());
        s
    }

    /// Frees the memory of expired publications and forgotten streams.
    pub fn sweep(&self) {
        let now = Instant::now();
        let meta_ttl = self.config.history_meta_ttl;
        self.streams.for_each_shard(|m| {
            m.retain(|_, stream| {
                let mut s = lock(stream);
                let freed = s.prune(now);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                if s.forgotten(now, meta_ttl) {
                    self.retire(&mut s);
                    return false;
                }
                true
            })
        });
    }

    fn over(&self, percent: usize) -> bool {
        let of = |max: usize| max / 100 * percent + max % 100 * percent / 100;
        self.bytes.load(Ordering::Relaxed) > of(self.config.history_max_bytes)
            || self.count.load(Ordering::Relaxed) > of(self.config.history_max_streams)
    }

    /// Over a bound: drops the least recently published streams until
    /// [`EVICT_TO_PERCENT`] of both bounds is used. The stream just published to (`keep`) is
    /// not dropped but, when it alone is over the byte bound, loses its oldest publications
    /// (its newest stays): a channel whose own history exceeds the budget keeps its offsets
    /// and epoch. Runs outside every stream lock.
    fn evict_if_over(&self, keep: &str) {
        if !self.over(100) {
            return;
        }
        let Ok(_one) = self.evicting.try_lock() else { return };
        let mut by_age: Vec<(Instant, String)> = Vec::with_capacity(self.count.load(Ordering::Relaxed));
        self.streams.for_each_shard(|m| {
            by_age.extend(m.iter().map(|(channel, s)| (lock(s).touched, channel.clone())));
        });
        by_age.sort_unstable();
        let mut dropped = 0usize;
        for (_, channel) in by_age {
            if !self.over(EVICT_TO_PERCENT) {
                break;
            }
            if channel == keep {
                continue;
            }
            let mut shard = self.streams.shard(&channel);
            let Some(stream) = shard.get(&channel).cloned() else { continue };
            self.retire(&mut lock(&stream));
            shard.remove(&channel);
            dropped += 1;
        }
        let mut trimmed = 0usize;
        if self.over(EVICT_TO_PERCENT) {
            let stream = self.streams.shard(keep).get(keep).cloned();
            if let Some(stream) = stream {
                let mut s = lock(&stream);
                while s.items.len() > 1 && self.over(EVICT_TO_PERCENT) {
                    let size = s.items.pop_front().map_or(0, |(_, size, _)| size);
                    s.bytes -= size;
                    self.bytes.fetch_sub(size, Ordering::Relaxed);
                    trimmed += 1;
                }
            }
        }
        tracing::debug!(
            dropped,
            trimmed,
            "history over engine.history_max_bytes or engine.history_max_streams"
        );
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn start(&self, node_id: &str, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError> {
        let _ = self.node_id.set(node_id.to_owned());
        self.events.set(events).map_err(|_| EngineError::Unavailable("broker started twice".into()))
    }

    /// One node: a message to all or to this node is delivered here, any other is dropped.
    async fn publish_control(&self, to: Option<&str>, message: bytes::Bytes) -> Result<(), EngineError> {
        let events = self.events()?;
        if to.is_none() || to == self.node_id.get().map(String::as_str) {
            events.on_control(&message);
        }
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, EngineError> {
        let events = self.events()?;
        if !history.enabled() {
            // Without a stream here, an offset is the caller's (an application-kept stream
            // such as a chat room's) and passes through untouched.
            events.on_publication(channel, publication);
            return Ok(StreamPosition::default());
        }
        let now = Instant::now();
        let position = loop {
            let stream = self.stream_for_publish(channel, now);
            let mut s = lock(&stream);
            if s.dropped {
                continue; // evicted between the lookup and the lock
            }
            let freed = s.prune(now);
            s.top += 1;
            s.touched = now;
            publication.offset = s.top;
            let size = publication_bytes(&publication);
            s.items.push_back((now + history.ttl, size, publication.clone()));
            s.bytes += size;
            let mut freed_more = 0;
            while s.items.len() > history.size {
                freed_more += s.items.pop_front().map_or(0, |(_, size, _)| size);
            }
            s.bytes -= freed_more;
            self.bytes.fetch_add(size, Ordering::Relaxed);
            self.bytes.fetch_sub(freed + freed_more, Ordering::Relaxed);
            let position = s.position();
            events.on_publication(channel, publication);
            break position;
        };
        self.evict_if_over(channel);
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.events()?.on_join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.events()?.on_leave(channel, info);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        _history: HistoryOptions,
    ) -> Result<HistoryPage, EngineError> {
        // Looked up under the shard's lock, so that a stream being dropped (which changes the
        // empty epoch first, under the same lock) is either seen whole or not at all.
        let shard = self.streams.shard(channel);
        let Some(stream) = shard.get(channel).cloned() else {
            let position = StreamPosition { offset: 0, epoch: self.empty_epoch() };
            drop(shard);
            return match &query.since {
                Some(since) if *since != position => Err(EngineError::UnrecoverablePosition),
                _ => Ok(HistoryPage { publications: Vec::new(), position }),
            };
        };
        let mut s = lock(&stream);
        drop(shard);
        let freed = s.prune(Instant::now());
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        let after = match &query.since {
            Some(since) => {
                if since.epoch != s.epoch || since.offset > s.top || since.offset + 1 < s.first_kept() {
                    return Err(EngineError::UnrecoverablePosition);
                }
                since.offset
            }
            None => 0,
        };
        let matching = s.items.iter().map(|(_, _, p)| p).filter(|p| p.offset > after);
        let publications = if query.reverse {
            take_within(matching.rev(), query.limit, query.max_bytes)
        } else {
            take_within(matching, query.limit, query.max_bytes)
        };
        Ok(HistoryPage { publications, position: s.position() })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let stream = self.streams.shard(channel).get(channel).cloned();
        if let Some(stream) = stream {
            let mut s = lock(&stream);
            let freed: usize = s.items.drain(..).map(|(_, size, _)| size).sum();
            s.bytes -= freed;
            if !s.dropped {
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn stream_stats(&self) -> Option<StreamStats> {
        Some(self.stats())
    }
}

/// Presence of this node's connections: channel → client id → info.
#[derive(Default)]
pub struct MemoryPresence {
    channels: ShardedMap<String, HashMap<String, ClientInfo>>,
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let mut shard = self.channels.shard(channel);
        shard.entry(channel.to_owned()).or_default().insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let mut shard = self.channels.shard(channel);
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        Ok(self.channels.shard(channel).get(channel).cloned().unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let shard = self.channels.shard(channel);
        let Some(clients) = shard.get(channel) else { return Ok(PresenceStats::default()) };
        let users: HashSet<&str> = clients.values().map(|c| c.user.as_str()).collect();
        Ok(PresenceStats { num_clients: clients.len() as u32, num_users: users.len() as u32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::json_from_str;

    struct Collect(Mutex<Vec<(String, u64)>>);
    impl BrokerEvents for Collect {
        fn on_publication(&self, channel: &str, p: Publication) {
            self.0.lock().unwrap().push((channel.to_owned(), p.offset));
        }
        fn on_join(&self, _: &str, _: ClientInfo) {}
        fn on_leave(&self, _: &str, _: ClientInfo) {}
        fn on_control(&self, _: &[u8]) {}
        fn on_resync(&self) {}
    }

    fn publication(n: u32) -> Publication {
        Publication { data: json_from_str(&n.to_string()).unwrap(), info: None, offset: 0, tags: None }
    }

    #[tokio::test]
    async fn offsets_history_and_recovery_bounds() {
        let broker = MemoryBroker::new();
        let seen = Arc::new(Collect(Mutex::new(vec![])));
        broker.start("n1", seen.clone()).await.unwrap();
        let h = HistoryOptions { size: 3, ttl: Duration::from_secs(60) };
        for n in 1..=5 {
            let pos = broker.publish("c", publication(n), h).await.unwrap();
            assert_eq!(pos.offset, n as u64);
        }
        assert_eq!(seen.0.lock().unwrap().iter().map(|x| x.1).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

        let all = broker.history("c", HistoryQuery::default(), h).await.unwrap();
        assert_eq!(all.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
        let epoch = all.position.epoch.clone();

        let since = |offset| HistoryQuery {
            since: Some(StreamPosition { offset, epoch: epoch.clone() }),
            ..Default::default()
        };
        let page = broker.history("c", since(3), h).await.unwrap();
        assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![4, 5]);
        assert!(broker.history("c", since(2), h).await.is_ok());
        assert_eq!(broker.history("c", since(1), h).await.unwrap_err(), EngineError::UnrecoverablePosition);
        let wrong_epoch = HistoryQuery {
            since: Some(StreamPosition { offset: 4, epoch: "other".into() }),
            ..Default::default()
        };
        assert_eq!(
            broker.history("c", wrong_epoch, h).await.unwrap_err(),
            EngineError::UnrecoverablePosition
        );

        let rev = HistoryQuery { limit: Some(2), reverse: true, ..Default::default() };
        let page = broker.history("c", rev, h).await.unwrap();
        assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![5, 4]);
    }

    #[tokio::test]
    async fn reading_creates_nothing_and_the_empty_epoch_is_the_streams() {
        let broker = MemoryBroker::new();
        broker.start("n1", Arc::new(Collect(Mutex::new(vec![])))).await.unwrap();
        let h = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };
        let empty = broker.history("c", HistoryQuery::default(), h).await.unwrap().position;
        assert_eq!(empty.offset, 0);
        assert_eq!(broker.stats(), StreamStats::default(), "a read created a stream");
        broker.publish("c", publication(1), h).await.unwrap();
        broker.publish("c", publication(2), h).await.unwrap();
        let since_empty = HistoryQuery { since: Some(empty.clone()), ..Default::default() };
        let page = broker.history("c", since_empty, h).await.unwrap();
        assert_eq!(page.position.epoch, empty.epoch);
        assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2]);
        let made_up = StreamPosition { offset: 0, epoch: "other".into() };
        let q = HistoryQuery { since: Some(made_up), ..Default::default() };
        assert_eq!(broker.history("never", q, h).await.unwrap_err(), EngineError::UnrecoverablePosition);
    }

    #[tokio::test]
    async fn over_budget_the_least_recently_published_streams_go() {
        let config = MemoryEngineConfig { history_max_bytes: 64 * 1024, ..Default::default() };
        let broker = MemoryBroker::with_config(config);
        broker.start("n1", Arc::new(Collect(Mutex::new(vec![])))).await.unwrap();
        let h = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };
        let big = || Publication {
            data: json_from_str(&format!("\"{}\"", "x".repeat(1000))).unwrap(),
            info: None,
            offset: 0,
            tags: None,
        };
        let first = broker.publish("first", big(), h).await.unwrap();
        for n in 0..500 {
            broker.publish(&format!("c{n}"), big(), h).await.unwrap();
        }
        let stats = broker.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        // The first channel is gone: its position is unrecoverable, also from offset 0, and
        // the stream created again has another epoch.
        for offset in [0, 1] {
            let q = HistoryQuery {
                since: Some(StreamPosition { offset, epoch: first.epoch.clone() }),
                ..Default::default()
            };
            assert_eq!(broker.history("first", q, h).await.unwrap_err(), EngineError::UnrecoverablePosition);
        }
        let again = broker.publish("first", big(), h).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
        // The newest is kept.
        let last = broker.history("c499", HistoryQuery::default(), h).await.unwrap();
        assert_eq!(last.publications.len(), 1);

        // Every stream dropped: the accounting goes back to nothing.
        let config = MemoryEngineConfig { history_meta_ttl: Duration::from_millis(1), ..Default::default() };
        let broker = MemoryBroker::with_config(config);
        broker.start("n1", Arc::new(Collect(Mutex::new(vec![])))).await.unwrap();
        let short = HistoryOptions { size: 10, ttl: Duration::from_millis(1) };
        for n in 0..50 {
            broker.publish(&format!("c{n}"), big(), short).await.unwrap();
        }
        assert_eq!(broker.stats().streams, 50);
        tokio::time::sleep(Duration::from_millis(10)).await;
        broker.sweep();
        assert_eq!(broker.stats(), StreamStats::default());
    }

    #[tokio::test]
    async fn a_channel_alone_over_the_budget_keeps_its_stream() {
        let config = MemoryEngineConfig { history_max_bytes: 64 * 1024, ..Default::default() };
        let broker = MemoryBroker::with_config(config);
        broker.start("n1", Arc::new(Collect(Mutex::new(vec![])))).await.unwrap();
        let h = HistoryOptions { size: 1000, ttl: Duration::from_secs(60) };
        let big = || Publication {
            data: json_from_str(&format!("\"{}\"", "x".repeat(10_000))).unwrap(),
            info: None,
            offset: 0,
            tags: None,
        };
        let first = broker.publish("hot", big(), h).await.unwrap();
        let mut last = first.clone();
        for _ in 0..50 {
            last = broker.publish("hot", big(), h).await.unwrap();
        }
        assert_eq!((last.offset, &last.epoch), (51, &first.epoch), "the stream was dropped");
        assert!(broker.stats().bytes <= 64 * 1024, "{:?}", broker.stats());
        let kept = broker.history("hot", HistoryQuery::default(), h).await.unwrap().publications;
        assert!(!kept.is_empty() && kept.last().unwrap().offset == 51);
        // The trimmed start is unrecoverable, the kept end is.
        let since = |offset| HistoryQuery {
            since: Some(StreamPosition { offset, epoch: first.epoch.clone() }),
            ..Default::default()
        };
        assert_eq!(broker.history("hot", since(1), h).await.unwrap_err(), EngineError::UnrecoverablePosition);
        assert!(broker.history("hot", since(50), h).await.is_ok());
    }

    #[tokio::test]
    async fn presence_counts_users() {
        let p = MemoryPresence::new();
        let info = |u: &str, c: &str| ClientInfo {
            user: u.into(),
            client: c.into(),
            conn_info: None,
            chan_info: None,
        };
        p.add("c", info("1", "a")).await.unwrap();
        p.add("c", info("1", "b")).await.unwrap();
        p.add("c", info("2", "c")).await.unwrap();
        assert_eq!(p.stats("c").await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
        p.remove("c", "a").await.unwrap();
        assert_eq!(p.presence("c").await.unwrap().len(), 2);
    }
}
