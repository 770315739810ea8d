//! The Redis engine: the nodes of a cluster share one Redis server.
//!
//! - **Fan-out**: every channel has a PUB/SUB topic `{prefix}.ch.{channel}`. A node
//!   SUBSCRIBEs to it when the channel gets its first subscriber on that node, through one
//!   of a few dedicated PUB/SUB connections (the channel's hash picks it), and delivers what
//!   arrives to its hub. Redis delivers one connection's messages in PUBLISH order, so each
//!   channel's events arrive in order.
//! - **Streams**: with history, one Lua script per publication takes the next offset from
//!   the channel's meta hash `{prefix}.meta.{channel}` (epoch `e`, top offset `s`), appends
//!   to the STREAM `{prefix}.stream.{channel}` (entry id `<offset>-0`, trimmed to the
//!   history size), refreshes both TTLs and PUBLISHes the publication with its offset: all
//!   atomically, so two nodes never hand out one offset nor publish out of order. Redis
//!   assigns offsets and epochs; nodes keep nothing of a stream.
//! - **Empty epoch**: reading a channel without a meta creates the meta (offset 0, a new
//!   epoch, `engine.history_meta_ttl`) so the position handed to a subscriber of the empty
//!   channel is the one the first publication continues.
//! - **Presence**: per channel a hash client → info and a sorted set client → expiry
//!   (Redis clock). Each node refreshes the entries it added every third of
//!   `engine.presence_ttl`; a dead node's entries expire; reads drop expired entries.
//! - **Control**: `{prefix}.control` (every node) and `{prefix}.node.{id}` (one node).
//! - **Outages**: commands time out after [`RedisConfig::command_timeout`] and fail with
//!   [`EngineError::Unavailable`]; the command connection reconnects by itself on the next
//!   command. A broken PUB/SUB connection is reconnected with capped backoff, every topic it
//!   carried is SUBSCRIBEd again, and then [`BrokerEvents::on_resync`] says that deliveries
//!   may have been missed meanwhile.

mod codec;
mod scripts;

use async_trait::async_trait;
use futures_util::StreamExt;
use hubbub_core::engine::{
    Answer, Broker, BrokerEvents, EngineConfig, EngineError, HistoryOptions, HistoryPage, HistoryQuery,
    PresenceStats, PresenceStore,
};
use hubbub_protocol::{ClientInfo, Publication, StreamPosition};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The Redis engine's settings (from config section `[engine]`, plus fixed bounds).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `engine.redis_url`.
    pub url: String,
    /// `engine.prefix`: the start of every key and topic.
    pub prefix: String,
    /// `engine.presence_ttl`.
    pub presence_ttl: Duration,
    /// `engine.history_meta_ttl`: how long a stream's position outlives its last
    /// publication (at least as long as the stream itself).
    pub history_meta_ttl: Duration,
    /// The longest a command may take before it fails with `Unavailable`: a client command
    /// during an outage gets an error, never a hang. (Redis down answers "connection
    /// refused" at once; this bounds a Redis that hangs, and must leave room for a burst of
    /// commands queued on the one multiplexed connection.)
    pub command_timeout: Duration,
    /// PUB/SUB connections, channels spread over them by hash.
    pub pubsub_connections: usize,
}

impl RedisConfig {
    pub fn from_engine(config: &EngineConfig) -> Self {
        RedisConfig {
            url: config.redis_url.clone(),
            prefix: config.prefix.clone(),
            presence_ttl: config.presence_ttl,
            history_meta_ttl: config.history_meta_ttl,
            command_timeout: Duration::from_secs(5),
            pubsub_connections: 4,
        }
    }
}

/// First wait before reconnecting a PUB/SUB connection; doubled after each failure up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle PUB/SUB connection is checked with a PING (a connection that broke
/// without closing would otherwise look alive).
const PING_EVERY: Duration = Duration::from_secs(3);
/// Most stream entries read per round trip.
const HISTORY_BATCH: usize = 500;
/// Most topics per SUBSCRIBE when a connection resubscribes, and presence entries per
/// refresh script.
const BATCH: usize = 500;
/// Presence refreshes in flight at once.
const REFRESH_CONCURRENCY: usize = 32;

/// Names of keys and topics, all under the prefix.
struct Keys {
    prefix: String,
    /// `{prefix}.ch.`: the start of every channel topic.
    channel_topic: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned(), channel_topic: format!("{prefix}.ch.") }
    }
    fn topic(&self, channel: &str) -> String {
        format!("{}{channel}", self.channel_topic)
    }
    fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{channel}", self.prefix)
    }
    fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{channel}", self.prefix)
    }
    fn presence(&self, channel: &str) -> String {
        format!("{}.presence.{channel}", self.prefix)
    }
    fn presence_expiry(&self, channel: &str) -> String {
        format!("{}.presence_exp.{channel}", self.prefix)
    }
    fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    fn node(&self, id: &str) -> String {
        format!("{}.node.{id}", self.prefix)
    }
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unavailable(what: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {what}"))
}

/// One PUB/SUB connection and the topics it must carry.
struct Shard {
    /// Held across a SUBSCRIBE or UNSUBSCRIBE round trip, so that a channel's subscribe and
    /// unsubscribe reach Redis in the order their counts changed.
    state: tokio::sync::Mutex<ShardState>,
}

struct ShardState {
    /// `None` while the connection is down: subscribing fails at once.
    sink: Option<PubSubSink>,
    /// Wakes the reader of the current connection when a command on it failed: the
    /// connection is dropped and made again.
    broken: Arc<Notify>,
    /// Topics this node needs, with how many more subscribes than unsubscribes each got
    /// (the node may call them out of order when a channel's last subscriber leaves as a
    /// new first one comes).
    wanted: HashMap<String, usize>,
}

/// Counts PUB/SUB connections down, so that one outage that breaks them all ends with one
/// [`BrokerEvents::on_resync`], once every connection is back.
#[derive(Default)]
struct Resync {
    down: AtomicUsize,
    lost: AtomicBool,
}

impl Resync {
    fn lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.down.fetch_add(1, Ordering::SeqCst);
    }

    fn back(&self, events: &dyn BrokerEvents) {
        if self.down.fetch_sub(1, Ordering::SeqCst) == 1 && self.lost.swap(false, Ordering::SeqCst) {
            events.on_resync();
        }
    }
}

/// Aborts a task when dropped (a connection's pinger dies with its reader).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    config: RedisConfig,
    client: redis::Client,
    /// Commands and scripts: one multiplexed connection (concurrent commands are pipelined),
    /// reconnected on the first command after it broke.
    conn: ConnectionManager,
    keys: Keys,
    scripts: scripts::Scripts,
    shards: Vec<Shard>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    resync: Resync,
    /// The presence entries this node added (channel → client → info JSON), refreshed on a
    /// timer. Bounded by this node's subscriptions.
    own_presence: Mutex<HashMap<String, HashMap<String, String>>>,
}

/// The Redis engine: a [`Broker`] and a [`PresenceStore`].
pub struct RedisEngine {
    inner: Arc<Inner>,
    /// The PUB/SUB readers and the presence refresher: stopped when the engine is dropped.
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl RedisEngine {
    /// Connects the command connection (and checks it with a PING). The PUB/SUB connections
    /// are made by [`Broker::start`].
    pub async fn connect(config: RedisConfig) -> Result<RedisEngine, EngineError> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| unavailable(format!("bad URL: {e}")))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let timeout = config.command_timeout;
        let conn = timed(timeout, client.get_connection_manager_with_config(manager)).await?;
        let shards = (0..config.pubsub_connections.max(1))
            .map(|_| Shard {
                state: tokio::sync::Mutex::new(ShardState {
                    sink: None,
                    broken: Arc::new(Notify::new()),
                    wanted: HashMap::new(),
                }),
            })
            .collect();
        let inner = Inner {
            keys: Keys::new(&config.prefix),
            config,
            client,
            conn,
            scripts: scripts::Scripts::default(),
            shards,
            events: OnceLock::new(),
            resync: Resync::default(),
            own_presence: Mutex::new(HashMap::new()),
        };
        let _: String = inner.timed(redis::cmd("PING").query_async(&mut inner.conn.clone())).await?;
        // Loaded now, so that a burst of first calls does not meet NOSCRIPT all at once (the
        // scripts load again by themselves after a Redis restart).
        for script in inner.scripts.all() {
            inner.timed(script.prepare_invoke().load_async(&mut inner.conn.clone())).await?;
        }
        Ok(RedisEngine { inner: Arc::new(inner), tasks: Mutex::new(Vec::new()) })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(AbortOnDrop(handle));
    }
}

async fn timed<T>(timeout: Duration, f: impl Future<Output = RedisResult<T>>) -> Result<T, EngineError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
    }
}

/// One read of a channel's stream: its position, the offset of its oldest kept
/// publication, and the publications asked for.
struct Batch {
    epoch: String,
    top: u64,
    first: u64,
    publications: Vec<Publication>,
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
    }
}

impl Inner {
    async fn timed<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, EngineError> {
        timed(self.config.command_timeout, f).await
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, EngineError> {
        self.events.get().ok_or_else(|| EngineError::Unavailable("broker not started".into()))
    }

    fn shard(&self, channel: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    async fn publish_raw(&self, topic: String, payload: &[u8]) -> Result<(), EngineError> {
        let cmd = redis::cmd("PUBLISH").arg(topic).arg(payload).clone();
        let mut conn = self.conn.clone();
        self.timed(cmd.query_async::<()>(&mut conn)).await
    }

    /// Opens a PUB/SUB connection for shard `index` and SUBSCRIBEs every topic it must
    /// carry; from then on the shard's subscribes go through it.
    async fn connect_shard(
        &self,
        index: usize,
    ) -> Result<(PubSubStream, Arc<Notify>, PubSubSink), EngineError> {
        let pubsub = timed(self.config.command_timeout, self.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        let mut state = self.shards[index].state.lock().await;
        let topics: Vec<String> = state.wanted.keys().cloned().collect();
        for chunk in topics.chunks(BATCH) {
            self.timed(sink.subscribe(chunk)).await?;
        }
        let broken = Arc::new(Notify::new());
        state.sink = Some(sink.clone());
        state.broken = broken.clone();
        Ok((stream, broken, sink))
    }

    /// Reads shard `index`'s connection until it breaks, then makes it again (capped
    /// backoff), forever.
    async fn run_shard(
        self: Arc<Self>,
        index: usize,
        mut connection: (PubSubStream, Arc<Notify>, PubSubSink),
    ) {
        loop {
            self.read_until_broken(connection).await;
            self.shards[index].state.lock().await.sink = None;
            self.resync.lost();
            tracing::warn!(connection = index, "redis PUB/SUB connection lost; reconnecting");
            let mut backoff = MIN_BACKOFF;
            connection = loop {
                tokio::time::sleep(backoff).await;
                match self.connect_shard(index).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::debug!(connection = index, error = %e, "redis PUB/SUB reconnect failed");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            tracing::info!(connection = index, "redis PUB/SUB connection back");
            if let Some(events) = self.events.get() {
                self.resync.back(events.as_ref());
            }
        }
    }

    async fn read_until_broken(&self, (mut stream, broken, sink): (PubSubStream, Arc<Notify>, PubSubSink)) {
        let timeout = self.config.command_timeout;
        let pinger_broken = broken.clone();
        let _pinger = AbortOnDrop(tokio::spawn(async move {
            let mut sink = sink;
            loop {
                tokio::time::sleep(PING_EVERY).await;
                if timed(timeout, sink.ping::<Value>()).await.is_err() {
                    pinger_broken.notify_one();
                    return;
                }
            }
        }));
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.deliver(message.get_channel_name(), message.get_payload_bytes()),
                    None => return,
                },
                _ = broken.notified() => return,
            }
        }
    }

    fn deliver(&self, topic: &str, payload: &[u8]) {
        let Some(events) = self.events.get() else { return };
        let Some(channel) = topic.strip_prefix(&self.keys.channel_topic) else {
            events.on_control(payload);
            return;
        };
        match codec::decode(payload) {
            Ok(codec::Frame::Publication(p)) => events.on_publication(channel, p),
            Ok(codec::Frame::Join(info)) => events.on_join(channel, info),
            Ok(codec::Frame::Leave(info)) => events.on_leave(channel, info),
            Err(e) => tracing::warn!(%channel, error = %e, "undecodable message on a channel topic"),
        }
    }

    /// Reads a channel's position and up to `count` publications after `after` (up to
    /// `upto`), oldest or newest first. `create`: the epoch of a meta made when missing
    /// (empty: make none).
    async fn read_batch(
        &self,
        channel: &str,
        create: &str,
        reverse: bool,
        after: u64,
        upto: Option<u64>,
        count: usize,
    ) -> Result<Batch, EngineError> {
        let mut invocation = self.scripts.history.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .key(self.keys.meta(channel))
            .arg(create)
            .arg(millis(self.config.history_meta_ttl))
            .arg(if reverse { "1" } else { "0" })
            .arg(after)
            .arg(upto.map(|u| u.to_string()).unwrap_or_default())
            .arg(count);
        let mut conn = self.conn.clone();
        let values: Vec<Value> = self.timed(invocation.invoke_async(&mut conn)).await?;
        let bad = || unavailable("unexpected answer to the history script");
        let (head, entries) = values.split_at_checked(3).ok_or_else(bad)?;
        let epoch = String::from_utf8_lossy(bytes_of(&head[0]).ok_or_else(bad)?).into_owned();
        let top = u64_of(&head[1]).ok_or_else(bad)?;
        let first = u64_of(&head[2]).ok_or_else(bad)?;
        let mut publications = Vec::with_capacity(entries.len() / 2);
        for pair in entries.chunks_exact(2) {
            let Some(offset) = bytes_of(&pair[0]).and_then(codec::entry_offset) else { return Err(bad()) };
            match codec::decode_publication(offset, bytes_of(&pair[1]).unwrap_or_default()) {
                Ok(p) => publications.push(p),
                Err(e) => tracing::warn!(%channel, offset, error = %e, "undecodable stream entry skipped"),
            }
        }
        Ok(Batch { epoch, top, first, publications })
    }

    /// Adds (or refreshes) `entries` (client, info JSON) of a channel's presence.
    async fn presence_add(&self, channel: &str, entries: &[(&str, &str)]) -> Result<(), EngineError> {
        for chunk in entries.chunks(BATCH) {
            let mut invocation = self.scripts.presence_add.prepare_invoke();
            invocation
                .key(self.keys.presence(channel))
                .key(self.keys.presence_expiry(channel))
                .arg(millis(self.config.presence_ttl));
            for (client, info) in chunk {
                invocation.arg(*client).arg(*info);
            }
            let mut conn = self.conn.clone();
            self.timed(invocation.invoke_async::<()>(&mut conn)).await?;
        }
        Ok(())
    }

    /// Refreshes every presence entry this node added, so that they outlive the TTL while
    /// this node lives (and come back if Redis lost them).
    async fn refresh_presence(&self) {
        let snapshot: Vec<(String, Vec<(String, String)>)> = {
            let own = self.own_presence.lock().unwrap_or_else(|p| p.into_inner());
            own.iter()
                .map(|(channel, clients)| {
                    (channel.clone(), clients.iter().map(|(c, i)| (c.clone(), i.clone())).collect())
                })
                .collect()
        };
        let failures = futures_util::stream::iter(snapshot)
            .map(|(channel, entries)| async move {
                let entries: Vec<(&str, &str)> =
                    entries.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect();
                self.presence_add(&channel, &entries).await
            })
            .buffer_unordered(REFRESH_CONCURRENCY)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        if failures > 0 {
            tracing::warn!(failures, "presence refresh failed for some channels");
        }
    }

    /// A channel's presence, expired entries dropped first: every (client, info) pair, or
    /// only the infos.
    async fn presence_read(&self, channel: &str, all: bool) -> Result<Vec<Value>, EngineError> {
        let mut invocation = self.scripts.presence_get.prepare_invoke();
        invocation.key(self.keys.presence(channel)).key(self.keys.presence_expiry(channel)).arg(if all {
            "all"
        } else {
            "vals"
        });
        let mut conn = self.conn.clone();
        self.timed(invocation.invoke_async(&mut conn)).await
    }
}

fn decode_info(v: &Value) -> Option<ClientInfo> {
    serde_json::from_slice(bytes_of(v)?).ok()
}

#[async_trait]
impl Broker for RedisEngine {
    async fn start(&self, node_id: &str, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.events.set(events).map_err(|_| EngineError::Unavailable("broker started twice".into()))?;
        {
            let mut control = inner.shards[0].state.lock().await;
            control.wanted.insert(inner.keys.control(), 1);
            control.wanted.insert(inner.keys.node(node_id), 1);
        }
        let mut connections = Vec::with_capacity(inner.shards.len());
        for index in 0..inner.shards.len() {
            connections.push(inner.connect_shard(index).await?);
        }
        for (index, connection) in connections.into_iter().enumerate() {
            self.spawn(inner.clone().run_shard(index, connection));
        }
        let refresher = inner.clone();
        let every = (inner.config.presence_ttl / 3).max(Duration::from_millis(100));
        self.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                refresher.refresh_presence().await;
            }
        });
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let topic = self.inner.keys.topic(channel);
        let mut state = self.inner.shard(channel).state.lock().await;
        let Some(mut sink) = state.sink.clone() else {
            return Err(unavailable("PUB/SUB connection down"));
        };
        match self.inner.timed(sink.subscribe(&topic)).await {
            Ok(()) => {
                *state.wanted.entry(topic).or_default() += 1;
                Ok(())
            }
            Err(e) => {
                state.broken.notify_one();
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let topic = self.inner.keys.topic(channel);
        let mut state = self.inner.shard(channel).state.lock().await;
        match state.wanted.get_mut(&topic) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Ok(());
            }
            Some(_) => {
                state.wanted.remove(&topic);
            }
            None => return Ok(()),
        }
        // Down: the connection made again will not carry the topic.
        let Some(mut sink) = state.sink.clone() else { return Ok(()) };
        if let Err(e) = self.inner.timed(sink.unsubscribe(&topic)).await {
            state.broken.notify_one();
            return Err(e);
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, EngineError> {
        let inner = &self.inner;
        inner.events()?;
        let json = codec::publication_json(&publication);
        let topic = inner.keys.topic(channel);
        if !history.enabled() {
            // The caller's offset (an application-kept stream) passes through untouched.
            inner.publish_raw(topic, &codec::publication_frame(publication.offset, &json)).await?;
            return Ok(StreamPosition::default());
        }
        let meta_ttl = inner.config.history_meta_ttl.max(history.ttl);
        let mut invocation = inner.scripts.publish.prepare_invoke();
        invocation
            .key(inner.keys.stream(channel))
            .key(inner.keys.meta(channel))
            .arg(json)
            .arg(history.size)
            .arg(millis(history.ttl))
            .arg(millis(meta_ttl))
            .arg(new_epoch())
            .arg(topic);
        let mut conn = inner.conn.clone();
        let (offset, epoch): (u64, String) = inner.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_raw(self.inner.keys.topic(channel), &codec::join_frame(&info)).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_raw(self.inner.keys.topic(channel), &codec::leave_frame(&info)).await
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        history: HistoryOptions,
    ) -> Result<HistoryPage, EngineError> {
        let inner = &self.inner;
        let create = if history.enabled() { new_epoch() } else { String::new() };
        let since = query.since.as_ref().map_or(0, |s| s.offset);
        let mut left = query.limit.unwrap_or(usize::MAX);
        let mut count = left.min(HISTORY_BATCH);
        let batch = inner.read_batch(channel, &create, query.reverse, since, None, count).await?;
        let position = StreamPosition { offset: batch.top, epoch: batch.epoch };
        if let Some(s) = &query.since {
            if !s.in_epoch(&position.epoch) || s.offset > batch.top || s.offset + 1 < batch.first {
                return Err(EngineError::UnrecoverablePosition);
            }
        }
        let mut answer = Answer::for_query(&query);
        let mut publications = batch.publications;
        loop {
            let exhausted = publications.len() < count;
            let mut last = None;
            for p in &publications {
                if !answer.offer(p) {
                    return Ok(HistoryPage { publications: answer.into_publications(), position });
                }
                last = Some(p.offset);
                left -= 1;
            }
            let Some(last) = last else { break };
            if exhausted || left == 0 {
                break;
            }
            // Later batches stop at the position answered, so the page never runs past it.
            let (after, upto) = if query.reverse { (since, last - 1) } else { (last, position.offset) };
            if upto <= after {
                break;
            }
            count = left.min(HISTORY_BATCH);
            let next = inner.read_batch(channel, "", query.reverse, after, Some(upto), count).await?;
            if next.epoch != position.epoch {
                break; // the stream was reset meanwhile: what was read stays a valid page
            }
            publications = next.publications;
        }
        Ok(HistoryPage { publications: answer.into_publications(), position })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let cmd = redis::cmd("DEL").arg(self.inner.keys.stream(channel)).clone();
        let mut conn = self.inner.conn.clone();
        self.inner.timed(cmd.query_async::<()>(&mut conn)).await
    }

    async fn publish_control(&self, to: Option<&str>, message: bytes::Bytes) -> Result<(), EngineError> {
        let topic = match to {
            Some(node) => self.inner.keys.node(node),
            None => self.inner.keys.control(),
        };
        self.inner.publish_raw(topic, &message).await
    }
}

#[async_trait]
impl PresenceStore for RedisEngine {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let json = serde_json::to_string(&info).map_err(|e| unavailable(format!("presence info: {e}")))?;
        // Kept here first: when Redis is down now, the refresh adds it once Redis is back.
        self.inner
            .own_presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), json.clone());
        self.inner.presence_add(channel, &[(&info.client, &json)]).await
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        {
            let mut own = self.inner.own_presence.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(clients) = own.get_mut(channel) {
                clients.remove(client);
                if clients.is_empty() {
                    own.remove(channel);
                }
            }
        }
        let keys = &self.inner.keys;
        let pipe = redis::pipe()
            .cmd("HDEL")
            .arg(keys.presence(channel))
            .arg(client)
            .ignore()
            .cmd("ZREM")
            .arg(keys.presence_expiry(channel))
            .arg(client)
            .ignore()
            .clone();
        let mut conn = self.inner.conn.clone();
        self.inner.timed(pipe.query_async::<()>(&mut conn)).await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        let values = self.inner.presence_read(channel, true).await?;
        Ok(values
            .chunks_exact(2)
            .filter_map(|pair| {
                let client = String::from_utf8_lossy(bytes_of(&pair[0])?).into_owned();
                Some((client, decode_info(&pair[1])?))
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let values = self.inner.presence_read(channel, false).await?;
        let infos: Vec<ClientInfo> = values.iter().filter_map(decode_info).collect();
        let users: HashSet<&str> = infos.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: infos.len() as u32, num_users: users.len() as u32 })
    }
}
