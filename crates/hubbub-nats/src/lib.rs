//! The NATS engine: the nodes of a cluster share one NATS server with JetStream, and nothing
//! else (no Redis, no database for the engine's part).
//!
//! - **Streams**: one JetStream stream `{prefix}_history` over `{prefix}.history.*`, one
//!   subject per channel (the channel name in base64url, since channel names may hold
//!   characters subjects may not). A message is one publication; its headers carry the
//!   channel's offset and epoch. The offset is assigned by *optimistic concurrency*: a node
//!   reads the subject's last message (a direct get, or its cache of the last one it wrote),
//!   and appends offset + 1 with `Nats-Expected-Last-Subject-Sequence` set to that message's
//!   stream sequence. JetStream refuses the append when another node appended in between;
//!   the node then reads the top again and retries. So JetStream is the one place that
//!   orders a channel, and two nodes never hand out the same offset. Within a node, publishes
//!   to one channel wait for each other (one in flight per channel and node), so that
//!   conflicts only happen between nodes.
//! - **Fan-out**: the stream *republishes* every stored message to `{prefix}.ch.{token}`
//!   (JetStream's `republish`), in the order it stored them: deliveries follow offset order
//!   whichever node published, with no reordering on the receiving side and no second
//!   publish by the publishing node. A node subscribes (core NATS) to `{prefix}.ch.{token}`
//!   while it has subscribers on the channel. Publications without history, joins and
//!   leaves are published there directly (core NATS, at most once, in one node's order).
//! - **Empty epoch**: a channel whose subject is empty reads as offset 0 in the epoch kept
//!   under its token in the KV bucket `{prefix}_epochs` (created by the first reader or
//!   publisher, living `engine.history_meta_ttl`); its first publication takes that epoch.
//!   The entry expires before the stream's last message does (the stream keeps messages at
//!   least `engine.history_meta_ttl`), so a stream forgotten and created again never reuses
//!   an epoch.
//! - **Bounds**: the stream keeps messages for the longest history TTL (at least
//!   `engine.history_meta_ttl`) and at most `engine.history_max_bytes` (oldest dropped);
//!   each channel's subject is trimmed to its history size every quarter of that size.
//!   Reads apply the namespace's size and TTL exactly.
//! - **Presence**: the KV bucket `{prefix}_presence` (max age `engine.presence_ttl`), one key
//!   per channel and client; each node writes its clients' entries again every third of the
//!   TTL, so a dead node's entries expire. Reads list the channel's keys (bounded).
//! - **Control**: `{prefix}.control` (every node) and `{prefix}.node.{id}` (one node).
//! - **Outages**: every command first checks the connection and is bounded by
//!   [`NatsConfig::op_timeout`]; during an outage commands fail at once with
//!   [`EngineError::Unavailable`]. The client reconnects by itself (capped backoff) and
//!   subscribes again; then [`BrokerEvents::on_resync`] says deliveries may have been missed.

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use hubbub_core::engine::{
    Answer, Broker, BrokerEvents, EngineConfig, EngineError, HistoryOptions, HistoryPage, HistoryQuery,
    PresenceStats, PresenceStore,
};
use hubbub_protocol::{ClientInfo, Publication, StreamPosition};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Header: what a message on a channel subject is (`pub`, `join`, `leave`, `removed`).
const KIND: &str = "Hubbub-Kind";
/// Header: the publication's offset in its channel.
const OFFSET: &str = "Hubbub-Offset";
/// Header: the channel stream's epoch.
const EPOCH: &str = "Hubbub-Epoch";
/// Header: when the publication leaves the channel's history (Unix milliseconds).
const EXPIRES: &str = "Hubbub-Expires";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

const KIND_PUBLICATION: &str = "pub";
const KIND_JOIN: &str = "join";
const KIND_LEAVE: &str = "leave";
/// A position marker left by [`Broker::remove_history`]: it keeps the offset and epoch of a
/// channel whose publications were removed, and is never read as a publication.
const KIND_REMOVED: &str = "removed";

/// Appends to one channel that lost the race to another node this many times in a row fail
/// (with `Unavailable`): a bound, not a limit a sane load reaches.
const MAX_APPEND_ATTEMPTS: usize = 100;
/// Channels whose last appended position a node remembers (to append without reading the
/// top first). Over it, the idle ones are forgotten.
const MAX_CACHED_CHANNELS: usize = 10_000;
/// Presence entries one read returns at most: presence of a huge channel is cut, not read whole.
pub const MAX_PRESENCE_ENTRIES: usize = 10_000;
/// Messages one fetch of a read asks for.
const READ_BATCH: usize = 256;

/// The NATS engine's settings (from config section `[engine]`, plus fixed bounds).
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `engine.nats_url`.
    pub url: String,
    /// `engine.prefix`: the start of every subject, stream and bucket name.
    pub prefix: String,
    /// `engine.presence_ttl`.
    pub presence_ttl: Duration,
    /// `engine.history_meta_ttl`: how long an empty channel's epoch lives, and the least time
    /// the stream keeps a message.
    pub history_meta_ttl: Duration,
    /// How long the stream keeps a message: the longest history TTL of any namespace, at
    /// least `history_meta_ttl`. Reads apply each namespace's own TTL.
    pub history_max_age: Duration,
    /// `engine.history_max_bytes`: the stream's size; over it the oldest messages go.
    pub history_max_bytes: usize,
    /// The longest one command may take before it fails with `Unavailable`.
    pub op_timeout: Duration,
}

impl NatsConfig {
    /// From `[engine]`; `longest_history_ttl` is the longest `history_ttl` of the namespaces.
    pub fn from_engine(config: &EngineConfig, longest_history_ttl: Duration) -> Self {
        NatsConfig {
            url: config.nats_url.clone(),
            prefix: config.prefix.clone(),
            presence_ttl: config.presence_ttl,
            history_meta_ttl: config.history_meta_ttl,
            history_max_age: longest_history_ttl.max(config.history_meta_ttl),
            history_max_bytes: config.history_max_bytes,
            op_timeout: Duration::from_secs(3),
        }
    }
}

/// Names of everything the engine keeps on the server, from the prefix.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    stream: String,
    epochs: String,
    presence: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            stream: format!("{prefix}_history"),
            epochs: format!("{prefix}_epochs"),
            presence: format!("{prefix}_presence"),
        }
    }
    fn history(&self, token: &str) -> String {
        format!("{}.history.{token}", self.prefix)
    }
    fn channel(&self, token: &str) -> String {
        format!("{}.ch.{token}", self.prefix)
    }
    fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    fn node(&self, id: &str) -> String {
        format!("{}.node.{}", self.prefix, token(id))
    }
    /// A subject nobody listens to: a request to it comes back (no responders) once the
    /// server has processed everything this connection sent before.
    fn barrier(&self) -> String {
        format!("{}.barrier", self.prefix)
    }
}

/// A name as one subject token or KV key part: base64url without padding (letters, digits,
/// `-`, `_`), since channel names may hold `.`, `*`, `>` or spaces.
fn token(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("NATS {what}: {e}"))
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// The last message of a channel's subject: the channel's position.
#[derive(Debug, Clone)]
struct Top {
    /// Its stream sequence (what the next append expects).
    seq: u64,
    offset: u64,
    epoch: String,
}

impl Top {
    fn from_headers(seq: u64, headers: Option<&HeaderMap>) -> Option<Top> {
        Some(Top {
            seq,
            offset: header(headers, OFFSET)?.parse().ok()?,
            epoch: header(headers, EPOCH)?.to_owned(),
        })
    }
    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.offset, epoch: self.epoch.clone() }
    }
}

/// One channel's append lane on this node: publishes to it wait for each other, and the last
/// position this node appended is kept (`None`: read the top first).
type Lane = Arc<tokio::sync::Mutex<Option<Top>>>;

struct Inner {
    config: NatsConfig,
    names: Names,
    client: async_nats::Client,
    js: jetstream::Context,
    history: stream::Stream,
    epochs: kv::Store,
    presence: kv::Store,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    node_id: OnceLock<String>,
    /// Channel → the task delivering its subject's messages to `events`.
    subscriptions: Mutex<HashMap<String, JoinHandle<()>>>,
    lanes: Mutex<HashMap<String, Lane>>,
    /// This node's presence entries (channel → client → encoded info), written again on a
    /// timer so that they outlive the bucket's TTL while the node lives.
    own_presence: Mutex<HashMap<String, HashMap<String, Bytes>>>,
    /// The connection broke and deliveries may have been missed: resync once it is back.
    lost: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The NATS engine: a [`Broker`] and a [`PresenceStore`] over one connection.
pub struct NatsEngine {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    events_rx: Mutex<Option<tokio::sync::mpsc::Receiver<async_nats::Event>>>,
}

impl NatsEngine {
    /// Connects to `config.url` and makes sure the stream and the buckets exist. Fails when
    /// the server cannot be reached now (one attempt, bounded by `op_timeout`); once
    /// connected, the client reconnects by itself for ever.
    pub async fn connect(config: NatsConfig) -> Result<NatsEngine, EngineError> {
        let names = Names::new(&config.prefix);
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
        let options = async_nats::ConnectOptions::new()
            .name(format!("hubbub {}", names.prefix))
            .connection_timeout(config.op_timeout)
            .request_timeout(Some(config.op_timeout))
            .ping_interval(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5) as u64))
                    .min(Duration::from_secs(2))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.try_send(event);
                }
            });
        let client = tokio::time::timeout(config.op_timeout * 2, options.connect(config.url.as_str()))
            .await
            .map_err(|_| unavailable("connect", "timed out"))?
            .map_err(|e| unavailable("connect", e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.op_timeout);
        let history = ensure_stream(&js, &names, &config).await?;
        let epochs = ensure_bucket(&js, &names.epochs, config.history_meta_ttl, &config).await?;
        let presence = ensure_bucket(&js, &names.presence, config.presence_ttl, &config).await?;
        Ok(NatsEngine {
            inner: Arc::new(Inner {
                config,
                names,
                client,
                js,
                history,
                epochs,
                presence,
                events: OnceLock::new(),
                node_id: OnceLock::new(),
                subscriptions: Mutex::new(HashMap::new()),
                lanes: Mutex::new(HashMap::new()),
                own_presence: Mutex::new(HashMap::new()),
                lost: AtomicBool::new(false),
            }),
            tasks: Mutex::new(Vec::new()),
            events_rx: Mutex::new(Some(events_rx)),
        })
    }

    /// Stops this node's part: its subscriptions, presence refresh and resync watch (its
    /// presence entries then expire as a dead node's would). Also done on drop.
    pub fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        for (_, task) in lock(&self.inner.subscriptions).drain() {
            task.abort();
        }
    }

    /// Deletes the stream and the buckets of this engine's prefix (tests clean up with it).
    pub async fn destroy(&self) -> Result<(), EngineError> {
        self.shutdown();
        let inner = &self.inner;
        for stream in [
            &inner.names.stream,
            &format!("KV_{}", inner.names.epochs),
            &format!("KV_{}", inner.names.presence),
        ] {
            inner.bounded("delete stream", inner.js.delete_stream(stream)).await?;
        }
        Ok(())
    }

    /// `engine.prefix`.
    pub fn prefix(&self) -> &str {
        &self.inner.names.prefix
    }

    /// How many messages the stream holds for `channel` (publications and position markers,
    /// expired or not): what its history costs on the server.
    pub async fn stored_messages(&self, channel: &str) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let subject = inner.names.history(&token(channel));
        let mut subjects =
            inner.bounded("stream info", inner.history.info_with_subjects(subject.clone())).await?;
        let mut count = 0;
        while let Some(entry) = inner.within("stream info", subjects.next()).await? {
            let (name, n) = entry.map_err(|e| unavailable("stream info", e))?;
            if name == subject {
                count += n;
            }
        }
        Ok(count)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).push(tokio::spawn(task));
    }
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    config: &NatsConfig,
) -> Result<stream::Stream, EngineError> {
    let wanted = stream::Config {
        name: names.stream.clone(),
        description: Some("hubbub channel history: one subject per channel".into()),
        subjects: vec![names.history("*")],
        max_age: config.history_max_age,
        max_bytes: i64::try_from(config.history_max_bytes).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: 1,
        duplicate_window: config.history_max_age.min(Duration::from_secs(10)),
        allow_direct: true,
        republish: Some(stream::Republish {
            source: names.history("*"),
            destination: names.channel("{{wildcard(1)}}"),
            headers_only: false,
        }),
        ..Default::default()
    };
    let mut history = tokio::time::timeout(config.op_timeout * 2, js.get_or_create_stream(wanted.clone()))
        .await
        .map_err(|_| unavailable("create stream", "timed out"))?
        .map_err(|e| unavailable("create stream", e))?;
    // The stream keeps messages for the longest TTL any node of the cluster was started with.
    let info = history.info().await.map_err(|e| unavailable("stream info", e))?;
    if info.config.max_age < wanted.max_age {
        let mut config = info.config.clone();
        config.max_age = wanted.max_age;
        js.update_stream(config).await.map_err(|e| unavailable("update stream", e))?;
    }
    Ok(history)
}

async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    config: &NatsConfig,
) -> Result<kv::Store, EngineError> {
    let op = async {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Ok(store);
        }
        // The bucket's stream as the KV convention has it, made directly: the client's
        // `create_key_value` first asks for account limits in a form servers before 2.10 do
        // not answer in.
        let created = js
            .create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                storage: stream::StorageType::File,
                num_replicas: 1,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                duplicate_window: ttl.min(Duration::from_secs(120)),
                ..Default::default()
            })
            .await;
        match created {
            // Created, or another node created it meanwhile.
            Ok(_) | Err(_) => js.get_key_value(bucket).await.map_err(|e| unavailable("create bucket", e)),
        }
    };
    tokio::time::timeout(config.op_timeout * 2, op)
        .await
        .map_err(|_| unavailable("create bucket", "timed out"))?
}

impl Inner {
    fn ensure_connected(&self) -> Result<(), EngineError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(EngineError::Unavailable(format!(
                "NATS at {} (engine.nats_url) is {state}",
                self.config.url
            ))),
        }
    }

    /// Runs `op` when connected, within `op_timeout`; its own error is returned as is.
    async fn within<T>(&self, what: &str, op: impl Future<Output = T>) -> Result<T, EngineError> {
        self.ensure_connected()?;
        tokio::time::timeout(self.config.op_timeout, op).await.map_err(|_| unavailable(what, "timed out"))
    }

    /// [`Inner::within`], with the operation's error as `Unavailable`.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, EngineError> {
        self.within(what, op).await?.map_err(|e| unavailable(what, e))
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, EngineError> {
        self.events.get().ok_or_else(|| EngineError::Unavailable("broker not started".into()))
    }

    /// Waits until the server has processed everything sent before (a request nobody answers
    /// comes back "no responders" after it): a subscription made before is then in force.
    async fn barrier(&self) -> Result<(), EngineError> {
        match self.within("barrier", self.client.request(self.names.barrier(), Bytes::new())).await? {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(unavailable("barrier", e)),
        }
    }

    async fn publish_core(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), EngineError> {
        self.bounded("publish", self.client.publish_with_headers(subject, headers, payload)).await
    }

    fn lane(&self, channel: &str) -> Lane {
        let mut lanes = lock(&self.lanes);
        if lanes.len() >= MAX_CACHED_CHANNELS && !lanes.contains_key(channel) {
            lanes.retain(|_, lane| Arc::strong_count(lane) > 1);
        }
        lanes.entry(channel.to_owned()).or_default().clone()
    }

    /// The channel's last message, `None` when its subject is empty.
    async fn read_top(&self, token: &str) -> Result<Option<Top>, EngineError> {
        let got = self
            .within("read top", self.history.direct_get_last_for_subject(self.names.history(token)))
            .await?;
        match got {
            Ok(message) => Top::from_headers(message.sequence, Some(&message.headers))
                .map(Some)
                .ok_or_else(|| unavailable("read top", "a message without offset or epoch")),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read top", e)),
        }
    }

    /// The epoch of the channel while its subject is empty: kept in the epochs bucket,
    /// created by whoever needs it first (create-if-absent, so every node gets the same).
    async fn empty_epoch(&self, token: &str) -> Result<String, EngineError> {
        for _ in 0..3 {
            if let Some(epoch) = self.bounded("read epoch", self.epochs.get(token)).await? {
                return String::from_utf8(epoch.to_vec()).map_err(|e| unavailable("read epoch", e));
            }
            let epoch = new_epoch();
            match self.within("create epoch", self.epochs.create(token, Bytes::from(epoch.clone()))).await? {
                Ok(_) => return Ok(epoch),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(unavailable("create epoch", e)),
            }
        }
        Err(unavailable("create epoch", "the entry kept changing"))
    }

    /// Appends one message to the channel's subject after its top (read first when `lane`
    /// does not know it), retrying when another node appended in between. `next` gives the
    /// offset to append from the top's. Returns the new top.
    async fn append(
        &self,
        token: &str,
        lane: &mut Option<Top>,
        mut message: impl FnMut(u64, &str) -> Result<(u64, HeaderMap, Bytes), EngineError>,
        empty_ok: bool,
    ) -> Result<Option<Top>, EngineError> {
        let subject = self.names.history(token);
        for _ in 0..MAX_APPEND_ATTEMPTS {
            let top = match lane.take() {
                Some(top) => Some(top),
                None => self.read_top(token).await?,
            };
            let (top_offset, epoch, expect) = match top {
                Some(top) => (top.offset, top.epoch, top.seq),
                None if empty_ok => return Ok(None),
                None => (0, self.empty_epoch(token).await?, 0),
            };
            let (offset, mut headers, payload) = message(top_offset, &epoch)?;
            headers.insert(OFFSET, offset.to_string().as_str());
            headers.insert(EPOCH, epoch.as_str());
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, expect.to_string().as_str());
            let ack = self
                .within("append", async {
                    self.js.publish_with_headers(subject.clone(), headers, payload).await?.await
                })
                .await?;
            match ack {
                Ok(ack) => {
                    let top = Top { seq: ack.sequence, offset, epoch };
                    *lane = Some(top.clone());
                    return Ok(Some(top));
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(unavailable("append", e)),
            }
        }
        Err(unavailable("append", "lost the race for the channel's next offset too often"))
    }

    /// Keeps at most `size` messages of the channel's subject (in the background, every
    /// quarter of `size` publications), so a subject holds about 1.25 × its history size.
    fn trim(self: &Arc<Self>, token: &str, offset: u64, size: usize) {
        let every = (size as u64 / 4).max(1);
        if !offset.is_multiple_of(every) || offset <= size as u64 {
            return;
        }
        let inner = self.clone();
        let subject = self.names.history(token);
        tokio::spawn(async move {
            let purge = inner.history.purge().filter(subject).keep(size as u64);
            if let Err(e) = inner.bounded("trim", async move { purge.await }).await {
                tracing::debug!(%e, "trimming a channel's history");
            }
        });
    }

    /// Reads the messages of `subject` in stream order, giving each with its stream sequence
    /// and headers to `each` until it returns false or none is left. An ephemeral pull
    /// consumer fetched without waiting: messages that expire while it reads end the read
    /// instead of being waited for.
    async fn read_subject(
        &self,
        stream: &stream::Stream,
        subject: String,
        deliver_policy: consumer::DeliverPolicy,
        mut each: impl FnMut(u64, Option<&HeaderMap>, &Bytes) -> bool,
    ) -> Result<(), EngineError> {
        let consumer = self
            .bounded(
                "read",
                stream.create_consumer(consumer::pull::Config {
                    filter_subject: subject,
                    deliver_policy,
                    ack_policy: consumer::AckPolicy::None,
                    replay_policy: consumer::ReplayPolicy::Instant,
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                }),
            )
            .await?;
        let name = consumer.cached_info().name.clone();
        let result = async {
            if consumer.cached_info().num_pending == 0 {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + self.config.op_timeout;
            loop {
                let batch = consumer.fetch().max_messages(READ_BATCH).messages();
                let mut batch = tokio::time::timeout_at(deadline, batch)
                    .await
                    .map_err(|_| unavailable("read", "timed out"))?
                    .map_err(|e| unavailable("read", e))?;
                let mut got = 0;
                while let Some(message) = tokio::time::timeout_at(deadline, batch.next())
                    .await
                    .map_err(|_| unavailable("read", "timed out"))?
                {
                    let message = message.map_err(|e| unavailable("read", e))?;
                    got += 1;
                    let info = message.info().map_err(|e| unavailable("read", e))?;
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    if !each(seq, message.headers.as_ref(), &message.payload) || pending == 0 {
                        return Ok(());
                    }
                }
                if got == 0 {
                    return Ok(()); // what was pending expired meanwhile
                }
            }
        }
        .await;
        // Not awaited: it goes by itself after `inactive_threshold` anyway.
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result
    }

    async fn start(
        self: &Arc<Self>,
        node_id: &str,
        events: Arc<dyn BrokerEvents>,
    ) -> Result<Vec<JoinHandle<()>>, EngineError> {
        self.events
            .set(events.clone())
            .map_err(|_| EngineError::Unavailable("broker started twice".into()))?;
        let _ = self.node_id.set(node_id.to_owned());
        let mut tasks = Vec::new();
        for subject in [self.names.control(), self.names.node(node_id)] {
            let mut sub = self.bounded("subscribe", self.client.subscribe(subject)).await?;
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(message) = sub.next().await {
                    events.on_control(&message.payload);
                }
            }));
        }
        self.barrier().await?;
        // Presence entries of this node's clients outlive the bucket's TTL while it lives.
        let inner = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(inner.config.presence_ttl / 3);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                inner.refresh_presence().await;
            }
        }));
        Ok(tasks)
    }

    /// Watches the connection: after it broke and came back (the client subscribed again by
    /// itself), deliveries may have been missed: resync, once per outage.
    async fn watch_connection(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<async_nats::Event>) {
        while let Some(event) = rx.recv().await {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!(url = %self.config.url, "NATS connection lost (engine.nats_url)");
                    self.lost.store(true, Ordering::SeqCst);
                }
                async_nats::Event::Connected if self.lost.load(Ordering::SeqCst) => {
                    // The subscriptions sent again are in force after the barrier.
                    if self.barrier().await.is_err() {
                        continue; // broken again: the next Connected resyncs
                    }
                    // A server that came back without its store lost the stream and the
                    // buckets: make them again (a no-op when they are there).
                    if let Err(e) = self.ensure_storage().await {
                        tracing::warn!(%e, "NATS back, but its stream or buckets are not");
                    }
                    if self.lost.swap(false, Ordering::SeqCst) {
                        tracing::info!("NATS connection back: resyncing subscribed channels");
                        if let Some(events) = self.events.get() {
                            events.on_resync();
                        }
                    }
                }
                _ => {}
            }
        }
    }

    async fn ensure_storage(&self) -> Result<(), EngineError> {
        ensure_stream(&self.js, &self.names, &self.config).await?;
        ensure_bucket(&self.js, &self.names.epochs, self.config.history_meta_ttl, &self.config).await?;
        ensure_bucket(&self.js, &self.names.presence, self.config.presence_ttl, &self.config).await?;
        // What this node appended before is gone with the old stream.
        lock(&self.lanes).clear();
        Ok(())
    }

    async fn refresh_presence(&self) {
        if self.ensure_connected().is_err() {
            return;
        }
        let entries: Vec<(String, Bytes)> = lock(&self.own_presence)
            .iter()
            .flat_map(|(channel, clients)| {
                let channel = token(channel);
                clients
                    .iter()
                    .map(move |(client, info)| (format!("{channel}.{}", token(client)), info.clone()))
            })
            .collect();
        let puts =
            futures_util::stream::iter(entries)
                .map(|(key, info)| async move {
                    self.bounded("presence refresh", self.presence.put(key, info)).await
                })
                .buffer_unordered(64);
        let failed = puts.filter(|r| std::future::ready(r.is_err())).count().await;
        if failed > 0 {
            tracing::warn!(failed, "refreshing presence entries in NATS");
        }
    }
}

/// How long a publication that arrives ahead of a missing offset is held for the missing one.
/// JetStream republishes what it stored in storage order nearly always, but nats-server 2.9
/// was seen (in CI, two nodes appending to one channel at once) to hand two messages stored
/// back to back to the republish path in swapped order, microseconds apart.
const REORDER_WAIT: Duration = Duration::from_millis(50);
/// At most this many publications are held per channel; more flushes them in order.
const REORDER_MAX_HELD: usize = 1024;

/// Puts a channel's republished publications back in offset order before the hub sees them.
/// A gap that does not fill within [`REORDER_WAIT`] (a message lost on the way) is given up:
/// what is held goes out in order, and the subscribers' position check finds the gap.
#[derive(Default)]
struct Reorder {
    /// The offset expected next; `None` until the first republished publication.
    next: Option<u64>,
    held: std::collections::BTreeMap<u64, Publication>,
    /// When the oldest held publication must go out, gap or not.
    deadline: Option<tokio::time::Instant>,
}

impl Reorder {
    /// Takes one republished publication; returns what can be delivered now, in order.
    fn push(&mut self, publication: Publication) -> Vec<Publication> {
        let offset = publication.offset;
        match self.next {
            // The expected one, or the first: it and whatever it unblocks go out.
            None => self.release(publication),
            Some(next) if offset == next => self.release(publication),
            Some(next) if offset > next => {
                self.held.insert(offset, publication);
                if self.held.len() > REORDER_MAX_HELD {
                    return self.flush();
                }
                self.deadline.get_or_insert_with(|| tokio::time::Instant::now() + REORDER_WAIT);
                Vec::new()
            }
            // Behind what is expected: the stream was reset (offsets start again) or a gap was
            // given up before this arrived. Deliver it and follow it.
            Some(_) => {
                let mut out = self.flush();
                out.extend(self.release(publication));
                out
            }
        }
    }

    fn release(&mut self, publication: Publication) -> Vec<Publication> {
        let mut next = publication.offset + 1;
        let mut out = vec![publication];
        while let Some(p) = self.held.remove(&next) {
            out.push(p);
            next += 1;
        }
        self.next = Some(next);
        if self.held.is_empty() {
            self.deadline = None;
        }
        out
    }

    /// Gives up on the missing offsets: everything held goes out in order.
    fn flush(&mut self) -> Vec<Publication> {
        self.deadline = None;
        let out: Vec<Publication> = std::mem::take(&mut self.held).into_values().collect();
        if let Some(last) = out.last() {
            self.next = Some(last.offset + 1);
        }
        out
    }
}

/// Delivers the messages of a channel's subject to this node: publications with history (the
/// stream's republish, which carries their offset header) in offset order through
/// [`Reorder`], the rest (joins, leaves, publications without history) as they arrive.
async fn deliver(channel: String, mut sub: async_nats::Subscriber, events: Arc<dyn BrokerEvents>) {
    let mut reorder = Reorder::default();
    loop {
        let message = match reorder.deadline {
            Some(deadline) => tokio::select! {
                message = sub.next() => message,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(channel, "a republished offset did not arrive in time: delivering past the gap");
                    for p in reorder.flush() {
                        events.on_publication(&channel, p);
                    }
                    continue;
                }
            },
            None => sub.next().await,
        };
        let Some(message) = message else { break };
        let headers = message.headers.as_ref();
        match header(headers, KIND) {
            Some(KIND_PUBLICATION) => match serde_json::from_slice::<Publication>(&message.payload) {
                Ok(publication) if header(headers, OFFSET).is_some() && publication.offset > 0 => {
                    for p in reorder.push(publication) {
                        events.on_publication(&channel, p);
                    }
                }
                Ok(publication) => events.on_publication(&channel, publication),
                Err(e) => tracing::warn!(%e, channel, "undecodable publication from NATS"),
            },
            Some(kind @ (KIND_JOIN | KIND_LEAVE)) => {
                match serde_json::from_slice::<ClientInfo>(&message.payload) {
                    Ok(info) if kind == KIND_JOIN => events.on_join(&channel, info),
                    Ok(info) => events.on_leave(&channel, info),
                    Err(e) => tracing::warn!(%e, channel, "undecodable join or leave from NATS"),
                }
            }
            _ => {}
        }
    }
}

fn kind_headers(kind: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(KIND, kind);
    headers
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Bytes, EngineError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| EngineError::Unavailable(format!("encoding: {e}")))
}

#[async_trait]
impl Broker for NatsEngine {
    async fn start(&self, node_id: &str, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError> {
        let tasks = self.inner.start(node_id, events).await?;
        lock(&self.tasks).extend(tasks);
        if let Some(rx) = lock(&self.events_rx).take() {
            self.spawn(self.inner.clone().watch_connection(rx));
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        let events = inner.events()?.clone();
        if lock(&inner.subscriptions).contains_key(channel) {
            return Ok(());
        }
        let sub =
            inner.bounded("subscribe", inner.client.subscribe(inner.names.channel(&token(channel)))).await?;
        let task = tokio::spawn(deliver(channel.to_owned(), sub, events));
        if let Some(earlier) = lock(&inner.subscriptions).insert(channel.to_owned(), task) {
            earlier.abort();
        }
        // Publications appended after this returns are delivered here.
        inner.barrier().await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        // Dropping the subscriber unsubscribes (now, or on the next connection).
        if let Some(task) = lock(&self.inner.subscriptions).remove(channel) {
            task.abort();
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, EngineError> {
        let inner = &self.inner;
        inner.events()?;
        let token = token(channel);
        if !history.enabled() {
            // Without a stream, an offset is the caller's and passes through untouched.
            let payload = encode(&publication)?;
            inner.publish_core(inner.names.channel(&token), kind_headers(KIND_PUBLICATION), payload).await?;
            return Ok(StreamPosition::default());
        }
        let expires = now_ms().saturating_add(history.ttl.as_millis() as u64);
        let lane = inner.lane(channel);
        let mut known = lane.lock().await;
        let top = inner
            .append(
                &token,
                &mut known,
                |top, _epoch| {
                    publication.offset = top + 1;
                    let mut headers = kind_headers(KIND_PUBLICATION);
                    headers.insert(EXPIRES, expires.to_string().as_str());
                    Ok((top + 1, headers, encode(&publication)?))
                },
                false,
            )
            .await?
            .ok_or_else(|| unavailable("append", "no top"))?;
        drop(known);
        inner.trim(&token, top.offset, history.size);
        Ok(top.position())
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner
            .publish_core(inner.names.channel(&token(channel)), kind_headers(KIND_JOIN), encode(&info)?)
            .await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner
            .publish_core(inner.names.channel(&token(channel)), kind_headers(KIND_LEAVE), encode(&info)?)
            .await
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        history: HistoryOptions,
    ) -> Result<HistoryPage, EngineError> {
        let inner = &self.inner;
        let token = token(channel);
        let Some(top) = inner.read_top(&token).await? else {
            let position = StreamPosition { offset: 0, epoch: inner.empty_epoch(&token).await? };
            return match &query.since {
                Some(since) if !since.is_at(&position) => Err(EngineError::UnrecoverablePosition),
                _ => Ok(HistoryPage { publications: Vec::new(), position }),
            };
        };
        let position = top.position();
        let after = match &query.since {
            Some(since) if !since.in_epoch(&top.epoch) || since.offset > top.offset => {
                return Err(EngineError::UnrecoverablePosition)
            }
            Some(since) => Some(since.offset),
            None => None,
        };
        // Nothing after the position asked for (the common recovery of a client that missed
        // nothing), or the position only: no read of the stream.
        if after == Some(top.offset) || (query.limit == Some(0) && after.is_none()) {
            return Ok(HistoryPage { publications: Vec::new(), position });
        }
        // What the namespace keeps: the last `size` offsets, not expired.
        let oldest_kept = top.offset.saturating_sub(history.size as u64) + 1;
        let now = now_ms();
        let mut answer = Answer::for_query(&query);
        let mut newest: VecDeque<Publication> = VecDeque::new();
        let newest_max = query.limit.unwrap_or(usize::MAX);
        let mut first_kept: Option<u64> = None;
        let mut broken = None;
        inner
            .read_subject(
                &inner.history,
                inner.names.history(&token),
                consumer::DeliverPolicy::All,
                |seq, headers, payload| {
                    if seq > top.seq {
                        return false; // appended after the top read: the next read's
                    }
                    let Some(Top { offset, .. }) = Top::from_headers(seq, headers) else { return true };
                    let expired = header(headers, EXPIRES)
                        .and_then(|e| e.parse::<u64>().ok())
                        .is_some_and(|e| e <= now);
                    if header(headers, KIND) != Some(KIND_PUBLICATION) || offset < oldest_kept || expired {
                        return seq < top.seq;
                    }
                    first_kept.get_or_insert(offset);
                    if let Some(after) = after {
                        if first_kept.is_some_and(|first| after + 1 < first) {
                            return false; // unrecoverable: decided below
                        }
                        if offset <= after {
                            return seq < top.seq;
                        }
                    }
                    let publication = match serde_json::from_slice::<Publication>(payload) {
                        Ok(p) => p,
                        Err(e) => {
                            broken = Some(e.to_string());
                            return false;
                        }
                    };
                    if query.reverse {
                        newest.push_back(publication);
                        if newest.len() > newest_max {
                            newest.pop_front();
                        }
                    } else if !answer.offer(&publication) {
                        return false;
                    }
                    seq < top.seq
                },
            )
            .await?;
        if let Some(e) = broken {
            return Err(unavailable("history", format!("an undecodable publication: {e}")));
        }
        // Memory engine's rule: recoverable when the publication after `since` is still kept
        // (or nothing is kept and `since` is the top, handled above).
        if let Some(after) = after {
            if first_kept.is_none_or(|first| after + 1 < first) {
                return Err(EngineError::UnrecoverablePosition);
            }
        }
        if query.reverse {
            for publication in newest.iter().rev() {
                if !answer.offer(publication) {
                    break;
                }
            }
        }
        Ok(HistoryPage { publications: answer.into_publications(), position })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        let token = token(channel);
        let lane = inner.lane(channel);
        let mut known = lane.lock().await;
        // A marker keeps the position; then everything before it goes.
        let marker = inner
            .append(&token, &mut known, |top, _| Ok((top, kind_headers(KIND_REMOVED), Bytes::new())), true)
            .await?;
        let Some(marker) = marker else { return Ok(()) };
        let purge = inner.history.purge().filter(inner.names.history(&token)).sequence(marker.seq);
        inner.bounded("remove history", async move { purge.await }).await?;
        Ok(())
    }

    async fn publish_control(&self, to: Option<&str>, message: Bytes) -> Result<(), EngineError> {
        let inner = &self.inner;
        let subject = match to {
            Some(node) => inner.names.node(node),
            None => inner.names.control(),
        };
        inner.bounded("publish control", inner.client.publish(subject, message)).await
    }
}

#[async_trait]
impl PresenceStore for NatsEngine {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let inner = &self.inner;
        let value = encode(&info)?;
        let key = format!("{}.{}", token(channel), token(&info.client));
        lock(&inner.own_presence)
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), value.clone());
        inner.bounded("presence add", inner.presence.put(key, value)).await?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        {
            let mut own = lock(&inner.own_presence);
            if let Some(clients) = own.get_mut(channel) {
                clients.remove(client);
                if clients.is_empty() {
                    own.remove(channel);
                }
            }
        }
        let key = format!("{}.{}", token(channel), token(client));
        inner.bounded("presence remove", inner.presence.delete(key)).await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        let inner = &self.inner;
        let subject = format!("$KV.{}.{}.*", inner.names.presence, token(channel));
        let mut clients = HashMap::new();
        inner
            .read_subject(
                &inner.presence.stream,
                subject,
                consumer::DeliverPolicy::LastPerSubject,
                |_, headers, payload| {
                    // Deleted entries leave a marker with an operation header and no value.
                    if header(headers, "KV-Operation").is_none() {
                        if let Ok(info) = serde_json::from_slice::<ClientInfo>(payload) {
                            clients.insert(info.client.clone(), info);
                        }
                    }
                    clients.len() < MAX_PRESENCE_ENTRIES
                },
            )
            .await?;
        Ok(clients)
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let clients = self.presence(channel).await?;
        let users: HashSet<&str> = clients.values().map(|c| c.user.as_str()).collect();
        Ok(PresenceStats { num_clients: clients.len() as u32, num_users: users.len() as u32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication { offset, ..serde_json::from_str(r#"{"data":{}}"#).unwrap() }
    }

    fn offsets(ps: Vec<Publication>) -> Vec<u64> {
        ps.into_iter().map(|p| p.offset).collect()
    }

    #[tokio::test]
    async fn swapped_republishes_go_out_in_offset_order() {
        let mut r = Reorder::default();
        assert_eq!(offsets(r.push(publication(58))), [58]);
        assert_eq!(offsets(r.push(publication(60))), Vec::<u64>::new());
        assert_eq!(offsets(r.push(publication(61))), Vec::<u64>::new());
        assert!(r.deadline.is_some(), "a held publication has a deadline");
        assert_eq!(offsets(r.push(publication(59))), [59, 60, 61]);
        assert!(r.deadline.is_none());
        assert_eq!(offsets(r.push(publication(62))), [62]);
    }

    #[tokio::test]
    async fn a_gap_that_never_fills_is_given_up_and_a_reset_is_followed() {
        let mut r = Reorder::default();
        assert_eq!(offsets(r.push(publication(1))), [1]);
        assert!(r.push(publication(3)).is_empty());
        assert!(r.push(publication(4)).is_empty());
        // The deadline passes: what is held goes out, and delivery follows it.
        assert_eq!(offsets(r.flush()), [3, 4]);
        assert_eq!(offsets(r.push(publication(5))), [5]);
        // The late one after giving up, then a stream that starts again at 1.
        assert_eq!(offsets(r.push(publication(2))), [2]);
        assert_eq!(offsets(r.push(publication(1))), [1]);
        assert_eq!(offsets(r.push(publication(2))), [2]);
    }

    #[tokio::test]
    async fn held_publications_are_bounded() {
        let mut r = Reorder::default();
        r.push(publication(1));
        let mut out = Vec::new();
        for offset in 3..3 + REORDER_MAX_HELD as u64 + 1 {
            out.extend(r.push(publication(offset)));
        }
        assert_eq!(out.len(), REORDER_MAX_HELD + 1, "over the bound, everything held goes out");
        assert!(r.held.is_empty());
    }
}
