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
//!
//! Persistence ([`MemoryBroker::open`], config `engine.persist`): the streams are also kept
//! in `data_dir/streams.log` ([`persist`]), appended by a writer thread off the fan-out path.
//! At start the log is replayed, so a restart keeps every stream's epoch, offsets and kept
//! publications, the empty epoch, and forgets what was dropped (drops and empty-epoch changes
//! are logged too). After an unclean stop (the log does not end with the writer's clean
//! mark) publications that were delivered but not written may be missing: every stream's
//! next offset then jumps by [`persist::CRASH_OFFSET_SKIP`] and the empty epoch changes, so
//! that no position a client saw before the crash ever points at another publication.

pub mod persist;

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
    /// With a log ([`MemoryBroker::open`]): how often it is synced to disk at least, so a
    /// crash of the machine loses at most this much (a crash of the process only what the
    /// writer had not yet written, normally nothing that was published longer ago).
    pub flush_interval: Duration,
}

impl Default for MemoryEngineConfig {
    fn default() -> Self {
        MemoryEngineConfig {
            history_max_bytes: 64 << 20,
            history_max_streams: 100_000,
            history_meta_ttl: Duration::from_secs(3600),
            flush_interval: Duration::from_millis(200),
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
            + i.conn_info.as_ref().map_or(0, |j| j.len())
            + i.chan_info.as_ref().map_or(0, |j| j.len())
    });
    PUBLICATION_OVERHEAD + p.data.len() + info
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

    /// The offset of the oldest publication still kept (top + 1 when none is). Offsets are
    /// contiguous except across an unclean restart, where they jump.
    fn first_kept(&self) -> u64 {
        self.items.front().map_or(self.top + 1, |(_, _, p)| p.offset)
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
    /// Shared with the log's compaction, which snapshots the streams.
    streams: Arc<ShardedMap<String, SharedStream>>,
    /// Epoch of a channel without a stream (see the module doc). Locked after a shard and a
    /// stream, never before.
    empty_epoch: Arc<Mutex<String>>,
    /// Sum of the streams' `bytes` (the log compacts when it is twice as large).
    bytes: Arc<AtomicUsize>,
    /// Number of streams in the map.
    count: AtomicUsize,
    /// One eviction at a time; others skip it (the running one frees enough for them).
    evicting: Mutex<()>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// This node's id, given at start: control messages addressed to it are delivered.
    node_id: OnceLock<String>,
    /// Where the streams are kept on disk, when they are.
    log: Option<persist::Log>,
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
            streams: Arc::default(),
            empty_epoch: Arc::new(Mutex::new(new_epoch())),
            bytes: Arc::default(),
            count: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            events: OnceLock::new(),
            node_id: OnceLock::new(),
            log: None,
        }
    }

    /// A broker whose streams are kept in `dir` (the module doc): replays the log there
    /// (cutting a torn tail), then appends to it. Blocking file I/O: call it at start, off the
    /// runtime's threads (`spawn_blocking`).
    pub fn open(config: MemoryEngineConfig, dir: &std::path::Path) -> Result<Self, persist::PersistError> {
        let path = dir.join(persist::LOG_FILE);
        let now = Instant::now();
        let now_ms = persist::unix_ms();
        let mut replay = Replay { streams: HashMap::new(), empty_epoch: None, clean: false, now, now_ms };
        let (mut file, mut len) = persist::load(&path, |record| replay.apply(record, &config))?;
        let mut broker = Self::with_config(config);
        // What this start writes before anything else: the empty epoch (a new one after an
        // unclean stop), the jumped positions, and so a mark that the log is not clean any
        // more until this run closes it.
        let mut enc = persist::Encoder::default();
        let unclean = replay.empty_epoch.is_some() && !replay.clean;
        let empty = match replay.empty_epoch.take() {
            Some(kept) if !unclean => kept,
            _ => new_epoch(),
        };
        enc.record(&persist::Record::EmptyEpoch(empty.clone()));
        *broker.empty_epoch.lock().unwrap_or_else(|p| p.into_inner()) = empty;
        let (mut count, mut bytes) = (0, 0);
        for (channel, mut s) in replay.streams {
            if unclean {
                s.top += persist::CRASH_OFFSET_SKIP;
                enc.stream(&channel, &s.epoch, s.top, ms_of(s.touched, now, now_ms));
            }
            s.bytes =
                STREAM_OVERHEAD + channel.len() + s.items.iter().map(|(_, size, _)| size).sum::<usize>();
            count += 1;
            bytes += s.bytes;
            broker.streams.shard(&channel).insert(channel, Arc::new(Mutex::new(s)));
        }
        broker.count.store(count, Ordering::Relaxed);
        broker.bytes.store(bytes, Ordering::Relaxed);
        if unclean {
            tracing::warn!(
                path = %path.display(),
                streams = count,
                "the stream log was not closed cleanly (a crash?): publications of the last moments may be missing; every stream's offsets jump ahead so that no position seen before is reused"
            );
        }
        let io = |source| persist::PersistError::Io { path: path.clone(), source };
        std::io::Write::write_all(&mut file, &enc.buf).map_err(io)?;
        file.sync_data().map_err(io)?;
        len += enc.buf.len() as u64;
        let snapshot = {
            let (streams, empty_epoch) = (broker.streams.clone(), broker.empty_epoch.clone());
            Arc::new(move |enc: &mut persist::Encoder, flush: &mut dyn FnMut(&mut persist::Encoder)| {
                snapshot(&streams, &empty_epoch, enc, flush)
            })
        };
        broker.log = Some(persist::Log::start(
            file,
            len,
            persist::LogOptions {
                path: path.clone(),
                flush_interval: broker.config.flush_interval,
                live_bytes: broker.bytes.clone(),
                snapshot,
            },
        )?);
        tracing::info!(path = %path.display(), streams = count, bytes, clean = !unclean, "stream log replayed");
        // The bounds may be lower than when the log was written, and metadata may have
        // expired meanwhile.
        broker.sweep();
        broker.evict_if_over("");
        Ok(broker)
    }

    /// Writes what is queued to the log, marks it clean and stops its writer (graceful
    /// shutdown). Publications after this are not kept on disk.
    pub async fn close(&self) {
        if let Some(log) = &self.log {
            log.close().await;
        }
    }

    /// Bytes of the log file, when the streams are kept on disk.
    pub fn log_len(&self) -> Option<u64> {
        self.log.as_ref().map(persist::Log::file_len)
    }

    /// Queues a record that is not a publication (not counted in the queue's budget: there
    /// are at most as many as publications, which are).
    fn log_record(&self, record: persist::Record) {
        if let Some(log) = &self.log {
            log.append(record, 0);
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
    fn retire(&self, channel: &str, s: &mut Stream) {
        let mut empty = self.empty_epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *empty == s.epoch {
            *empty = new_epoch();
            // Logged under the lock: the log has the empty epochs in the order they were.
            self.log_record(persist::Record::EmptyEpoch(empty.clone()));
        }
        drop(empty);
        self.log_record(persist::Record::Dropped { channel: channel.to_owned() });
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
            self.retire(channel, &mut s);
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
            m.retain(|channel, stream| {
                let mut s = lock(stream);
                let freed = s.prune(now);
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                if s.forgotten(now, meta_ttl) {
                    self.retire(channel, &mut s);
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
            self.retire(&channel, &mut lock(&stream));
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
        // Room in the log's queue first, outside every lock: a writer that is behind makes
        // this publisher wait here, never the runtime.
        let permits = match &self.log {
            Some(log) => log.reserve(publication_bytes(&publication)).await,
            None => 0,
        };
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
            if let Some(log) = &self.log {
                // Queued under the stream's lock, so the log has the stream's records in
                // offset order; the writer encodes and writes them.
                let at_ms = persist::unix_ms();
                log.append(
                    persist::Record::Publish {
                        channel: channel.to_owned(),
                        epoch: s.epoch.clone(),
                        at_ms,
                        expires_ms: at_ms.saturating_add(history.ttl.as_millis() as u64),
                        keep: history.size as u64,
                        publication: publication.clone(),
                    },
                    permits,
                );
            }
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
                self.log_record(persist::Record::Removed { channel: channel.to_owned() });
            }
        }
        Ok(())
    }

    fn stream_stats(&self) -> Option<StreamStats> {
        Some(self.stats())
    }

    /// With a log: waits for the sync of everything published so far (group committed with
    /// whatever else the writer has).
    async fn sync(&self) -> Result<(), EngineError> {
        match &self.log {
            Some(log) => log.sync().await.map_err(EngineError::Unavailable),
            None => Ok(()),
        }
    }
}

/// Unix milliseconds of an instant of this process.
fn ms_of(at: Instant, now: Instant, now_ms: u64) -> u64 {
    if at >= now {
        now_ms.saturating_add((at - now).as_millis() as u64)
    } else {
        now_ms.saturating_sub((now - at).as_millis() as u64)
    }
}

/// The instant of this process for Unix milliseconds (`None`: before the machine started).
fn instant_of(ms: u64, now: Instant, now_ms: u64) -> Option<Instant> {
    if ms >= now_ms {
        Some(now + Duration::from_millis(ms - now_ms))
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
    }
}

/// Encodes every live stream and the empty epoch for a compaction (see [`persist`]): each
/// stream under its own lock, written out after it is released.
fn snapshot(
    streams: &ShardedMap<String, SharedStream>,
    empty_epoch: &Mutex<String>,
    enc: &mut persist::Encoder,
    flush: &mut dyn FnMut(&mut persist::Encoder),
) {
    enc.record(&persist::Record::EmptyEpoch(empty_epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()));
    // The entries first (each shard locked only to copy names and pointers), then each
    // stream under its own lock: publishing is never held up by more than one stream's
    // encoding.
    let mut all = Vec::new();
    streams.for_each_shard(|m| all.extend(m.iter().map(|(c, s)| (c.clone(), s.clone()))));
    for (channel, stream) in all {
        let now = Instant::now();
        let now_ms = persist::unix_ms();
        {
            let s = lock(&stream);
            if s.dropped {
                continue;
            }
            let touched_ms = ms_of(s.touched, now, now_ms);
            enc.stream(&channel, &s.epoch, s.top, touched_ms);
            for (expires, _, p) in s.items.iter().filter(|(expires, _, _)| *expires > now) {
                enc.publish(&channel, &s.epoch, touched_ms, ms_of(*expires, now, now_ms), u64::MAX, p);
            }
        }
        flush(enc);
    }
}

/// The streams being rebuilt from the log at start.
struct Replay {
    streams: HashMap<String, Stream>,
    empty_epoch: Option<String>,
    /// The last record was the writer's clean mark.
    clean: bool,
    now: Instant,
    now_ms: u64,
}

impl Replay {
    fn new_stream(&self, epoch: String, top: u64, touched_ms: u64, config: &MemoryEngineConfig) -> Stream {
        // A time before the machine started is older than any meta TTL can keep.
        let touched = instant_of(touched_ms, self.now, self.now_ms)
            .or_else(|| self.now.checked_sub(config.history_meta_ttl + Duration::from_secs(1)))
            .unwrap_or(self.now);
        Stream { epoch, top, items: VecDeque::new(), touched, bytes: 0, dropped: false }
    }

    /// Applies one record. Idempotent where a compaction's snapshot and the records appended
    /// meanwhile overlap: a publication already kept (or older than the kept ones) is
    /// skipped, a stream position never moves back within its epoch.
    fn apply(&mut self, record: persist::Record, config: &MemoryEngineConfig) {
        use persist::Record;
        self.clean = matches!(record, Record::Clean);
        match record {
            Record::EmptyEpoch(epoch) => self.empty_epoch = Some(epoch),
            Record::Stream { channel, epoch, top, touched_ms } => match self.streams.get_mut(&channel) {
                Some(s) if s.epoch == epoch => {
                    s.top = s.top.max(top);
                    if let Some(t) = instant_of(touched_ms, self.now, self.now_ms) {
                        s.touched = s.touched.max(t);
                    }
                }
                _ => {
                    let s = self.new_stream(epoch, top, touched_ms, config);
                    self.streams.insert(channel, s);
                }
            },
            Record::Publish { channel, epoch, at_ms, expires_ms, keep, mut publication } => {
                if self.streams.get(&channel).is_none_or(|s| s.epoch != epoch) {
                    let s = self.new_stream(epoch, 0, at_ms, config);
                    self.streams.insert(channel.clone(), s);
                }
                let Some(s) = self.streams.get_mut(&channel) else { return };
                let offset = publication.offset;
                let kept = s.items.back().is_some_and(|(_, _, p)| p.offset >= offset);
                if let Some(t) = instant_of(at_ms, self.now, self.now_ms) {
                    s.touched = s.touched.max(t);
                }
                s.top = s.top.max(offset);
                let expires = instant_of(expires_ms, self.now, self.now_ms).filter(|e| *e > self.now);
                if let (false, Some(expires)) = (kept, expires) {
                    publication.offset = offset;
                    let size = publication_bytes(&publication);
                    s.items.push_back((expires, size, publication));
                    while s.items.len() as u64 > keep {
                        s.items.pop_front();
                    }
                }
            }
            Record::Removed { channel } => {
                if let Some(s) = self.streams.get_mut(&channel) {
                    s.items.clear();
                }
            }
            Record::Dropped { channel } => {
                self.streams.remove(&channel);
            }
            Record::Clean => {}
        }
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

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    }

    async fn opened(dir: &std::path::Path, config: MemoryEngineConfig) -> MemoryBroker {
        let broker = MemoryBroker::open(config, dir).unwrap();
        broker.start("n1", Arc::new(Collect(Mutex::new(vec![])))).await.unwrap();
        broker
    }

    fn since(position: &StreamPosition) -> HistoryQuery {
        HistoryQuery { since: Some(position.clone()), ..Default::default() }
    }

    /// A copy of the log as a crash would leave it: everything synced, no clean mark.
    async fn crashed_copy(broker: &MemoryBroker, from: &std::path::Path) -> tempfile::TempDir {
        broker.sync().await.unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(from.join(persist::LOG_FILE), copy.path().join(persist::LOG_FILE)).unwrap();
        copy
    }

    #[tokio::test]
    async fn a_restart_keeps_epochs_offsets_publications_and_the_empty_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let h = HistoryOptions { size: 3, ttl: Duration::from_secs(60) };
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        let empty = broker.history("never", HistoryQuery::default(), h).await.unwrap().position;
        let mut a = StreamPosition::default();
        for n in 1..=5 {
            a = broker.publish("a", publication(n), h).await.unwrap();
        }
        let b = broker.publish("b", publication(1), h).await.unwrap();
        broker.publish("c", publication(1), h).await.unwrap();
        broker.remove_history("c").await.unwrap();
        let seen_at_2 = StreamPosition { offset: 2, epoch: a.epoch.clone() };
        broker.close().await;
        drop(broker);

        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        let page = broker.history("a", since(&seen_at_2), h).await.unwrap();
        assert_eq!((offsets(&page), &page.position), (vec![3, 4, 5], &a));
        assert_eq!(page.publications[2].data.as_json().unwrap(), "5");
        assert_eq!(offsets(&broker.history("b", since(&b), h).await.unwrap()), Vec::<u64>::new());
        let c = broker.history("c", HistoryQuery::default(), h).await.unwrap();
        assert_eq!((c.publications.len(), c.position.offset), (0, 1), "removed history came back");
        // The empty channel's position still recovers its first publications.
        broker.publish("never", publication(1), h).await.unwrap();
        assert_eq!(offsets(&broker.history("never", since(&empty), h).await.unwrap()), vec![1]);
        // And the stream goes on where it was.
        assert_eq!(broker.publish("a", publication(6), h).await.unwrap().offset, 6);
        assert_eq!(broker.stats().streams, 4);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_a_crash_moves_offsets_and_the_empty_epoch_on() {
        let dir = tempfile::tempdir().unwrap();
        let h = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        let empty = broker.history("never", HistoryQuery::default(), h).await.unwrap().position;
        let mut a = StreamPosition::default();
        for n in 1..=4 {
            a = broker.publish("a", publication(n), h).await.unwrap();
        }
        let crashed = crashed_copy(&broker, dir.path()).await;
        drop(broker);
        // A write torn in the middle of the last record, and garbage after it.
        let log = crashed.path().join(persist::LOG_FILE);
        let len = std::fs::metadata(&log).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&[0xff; 5]);
        std::fs::write(&log, bytes).unwrap();

        let broker = opened(crashed.path(), MemoryEngineConfig::default()).await;
        let page = broker.history("a", HistoryQuery::default(), h).await.unwrap();
        assert_eq!(offsets(&page), vec![1, 2, 3], "the torn fourth publication is gone");
        assert_eq!(page.position.epoch, a.epoch);
        assert_eq!(page.position.offset, 3 + persist::CRASH_OFFSET_SKIP);
        // Positions before the crash recover what is kept; the lost offset is never reused.
        let at_2 = StreamPosition { offset: 2, epoch: a.epoch.clone() };
        assert_eq!(offsets(&broker.history("a", since(&at_2), h).await.unwrap()), vec![3]);
        assert_eq!(offsets(&broker.history("a", since(&a), h).await.unwrap()), Vec::<u64>::new());
        let next = broker.publish("a", publication(5), h).await.unwrap();
        assert_eq!(next.offset, 4 + persist::CRASH_OFFSET_SKIP);
        // The empty epoch changed: a channel created after the last write may be lost.
        let q = since(&empty);
        assert_eq!(broker.history("never", q, h).await.unwrap_err(), EngineError::UnrecoverablePosition);
        // The cut log is usable: a clean restart keeps the jumped offsets.
        broker.close().await;
        drop(broker);
        let broker = opened(crashed.path(), MemoryEngineConfig::default()).await;
        let page = broker.history("a", HistoryQuery::default(), h).await.unwrap();
        assert_eq!(offsets(&page), vec![1, 2, 3, 4 + persist::CRASH_OFFSET_SKIP]);
        // A file that is not a log is refused, not truncated.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(persist::LOG_FILE), "something else entirely").unwrap();
        assert!(matches!(
            MemoryBroker::open(MemoryEngineConfig::default(), other.path()),
            Err(persist::PersistError::NotALog { .. })
        ));
    }

    #[tokio::test]
    async fn dropped_and_forgotten_streams_stay_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let config = MemoryEngineConfig { history_meta_ttl: Duration::from_millis(20), ..Default::default() };
        let broker = opened(dir.path(), config.clone()).await;
        let short = HistoryOptions { size: 10, ttl: Duration::from_millis(1) };
        let long = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };
        let gone = broker.publish("gone", publication(1), short).await.unwrap();
        let kept = broker.publish("kept", publication(1), long).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        broker.publish("kept", publication(2), long).await.unwrap();
        broker.sweep();
        assert_eq!(broker.stats().streams, 1);
        broker.close().await;
        drop(broker);
        let broker = opened(dir.path(), config).await;
        assert_eq!(broker.stats().streams, 1);
        assert_eq!(
            broker.history("gone", since(&gone), short).await.unwrap_err(),
            EngineError::UnrecoverablePosition
        );
        assert_eq!(offsets(&broker.history("kept", since(&kept), long).await.unwrap()), vec![2]);
        // Recreated, the stream has another epoch than the dropped one.
        assert_ne!(broker.publish("gone", publication(2), long).await.unwrap().epoch, gone.epoch);
    }

    #[tokio::test]
    async fn lower_bounds_at_start_drop_the_oldest_streams() {
        let dir = tempfile::tempdir().unwrap();
        let h = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        for n in 0..20 {
            broker.publish(&format!("c{n}"), publication(n), h).await.unwrap();
        }
        broker.close().await;
        drop(broker);
        let config = MemoryEngineConfig { history_max_streams: 10, ..Default::default() };
        let broker = opened(dir.path(), config.clone()).await;
        let streams = broker.stats().streams;
        assert!(streams <= 10, "{streams}");
        broker.close().await;
        drop(broker);
        // What was dropped at start stays dropped.
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        assert_eq!(broker.stats().streams, streams);
    }

    #[tokio::test]
    async fn compaction_rewrites_the_log_from_what_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let h = HistoryOptions { size: 5, ttl: Duration::from_secs(60) };
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        let big = |n: u32| Publication {
            data: json_from_str(&format!("\"{n}{}\"", "x".repeat(2000))).unwrap(),
            info: Some(ClientInfo { user: "u".into(), client: "c".into(), conn_info: None, chan_info: None }),
            offset: 0,
            tags: None,
        };
        for n in 0..50 {
            broker.publish(&format!("s{n}"), big(n), h).await.unwrap();
        }
        broker.publish("emptied", big(0), h).await.unwrap();
        broker.remove_history("emptied").await.unwrap();
        // 10 MB into a stream that keeps 5: the log grows far over twice what is live.
        let mut hot = StreamPosition::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut compacted = false;
        let mut n = 0;
        while !compacted {
            assert!(std::time::Instant::now() < deadline, "no compaction: {:?}", broker.log_len());
            hot = broker.publish("hot", big(n), h).await.unwrap();
            n += 1;
            if n % 100 == 0 {
                // Publishing goes on while the compaction runs.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            compacted = n > 6000 && broker.log_len().unwrap() < persist::COMPACT_MIN_BYTES;
        }
        for _ in 0..10 {
            hot = broker.publish("hot", big(n), h).await.unwrap();
            n += 1;
        }
        let before: Vec<_> = all_streams(&broker, h).await;
        broker.close().await;
        drop(broker);
        let broker = opened(dir.path(), MemoryEngineConfig::default()).await;
        assert_eq!(all_streams(&broker, h).await, before);
        let page = broker.history("hot", HistoryQuery::default(), h).await.unwrap();
        assert_eq!(page.position, hot);
        assert_eq!(offsets(&page), (hot.offset - 4..=hot.offset).collect::<Vec<_>>());
        let emptied = broker.history("emptied", HistoryQuery::default(), h).await.unwrap();
        assert_eq!((emptied.publications.len(), emptied.position.offset), (0, 1));
        assert!(broker.log_len().unwrap() < persist::COMPACT_MIN_BYTES);
    }

    /// Every stream's position and kept publications (offset and data), by channel.
    async fn all_streams(
        broker: &MemoryBroker,
        h: HistoryOptions,
    ) -> Vec<(String, StreamPosition, Vec<(u64, String)>)> {
        let mut channels: Vec<String> = Vec::new();
        broker.streams.for_each_shard(|m| channels.extend(m.keys().cloned()));
        channels.sort();
        let mut all = Vec::new();
        for c in channels {
            let page = broker.history(&c, HistoryQuery::default(), h).await.unwrap();
            let items =
                page.publications.iter().map(|p| (p.offset, p.data.as_json().unwrap().to_owned())).collect();
            all.push((c, page.position, items));
        }
        all
    }

    #[tokio::test]
    async fn a_synced_publication_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let h = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };
        let config = MemoryEngineConfig { flush_interval: Duration::from_secs(3600), ..Default::default() };
        let broker = opened(dir.path(), config).await;
        let p = broker.publish("a", publication(1), h).await.unwrap();
        // Synced at once, however long the flush interval.
        let started = std::time::Instant::now();
        let crashed = crashed_copy(&broker, dir.path()).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let copy = opened(crashed.path(), MemoryEngineConfig::default()).await;
        let page = copy.history("a", HistoryQuery::default(), h).await.unwrap();
        assert_eq!((offsets(&page), &page.position.epoch), (vec![1], &p.epoch));
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
