//! The engine seam: how a node reaches other nodes (the [`Broker`]) and where presence is
//! kept (the [`PresenceStore`]). The session and the hub only see these traits, so that the
//! in-memory engine here and the Redis and NATS engines of a multi-node deployment are
//! interchangeable.
//!
//! Offsets are assigned by the broker, never by a session: the broker is the one place that
//! orders a channel's publications.

pub mod memory;

use crate::duration::serde_human;
use async_trait::async_trait;
use hubbub_protocol::{ClientInfo, Publication, StreamPosition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Which engine connects the nodes (config `engine.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One node: streams and presence in this process ([`memory`]).
    #[default]
    Memory,
    /// Nodes share a Redis server: PUB/SUB for fan-out and control, streams and presence
    /// in keys.
    Redis,
    /// Nodes share a NATS server: core NATS for fan-out and control, JetStream for streams
    /// and presence.
    Nats,
}

/// Config section `[engine]`: how nodes reach each other, and the bounds of what the
/// engine keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// Server of the "redis" engine.
    pub redis_url: String,
    /// Server of the "nats" engine.
    pub nats_url: String,
    /// Start of every key and subject the engine uses, so that clusters can share a server.
    pub prefix: String,
    /// How often a node announces itself (with its counts) to the others; a node not heard
    /// from for three intervals is gone from `info`.
    #[serde(with = "serde_human")]
    pub heartbeat_interval: Duration,
    /// How long a presence entry lives without its node refreshing it: a node that died
    /// takes its clients out of presence within this time.
    #[serde(with = "serde_human")]
    pub presence_ttl: Duration,
    /// How often, with the "redis" or "nats" engine, each subscriber's last offset is
    /// compared with its channel's stream top, so that one that missed a publication (lost
    /// between the broker and this node) recovers even when nothing else reveals the gap.
    /// "0s": never. Not used by the memory engine, which cannot lose a delivery.
    #[serde(with = "serde_human")]
    pub position_check_interval: Duration,
    /// Estimated bytes all channels' history may hold together in this process (the
    /// memory engine). Over it, the least recently published channels' streams are dropped.
    pub history_max_bytes: usize,
    /// Channels that may have a stream at once (the memory engine).
    pub history_max_streams: usize,
    /// How long a stream whose publications have all expired keeps its position (offset and
    /// epoch), so that a client that saw its last publication still recovers (with nothing).
    #[serde(with = "serde_human")]
    pub history_meta_ttl: Duration,
    /// The memory engine keeps its streams in `data_dir/streams.log`, so a restart keeps
    /// every channel's history, epoch and offsets.
    pub persist: bool,
    /// How often the memory engine's log is synced to disk at least: what a crash of the
    /// machine may lose (a `kill -9` loses only what the writer had not written yet).
    #[serde(with = "serde_human")]
    pub flush_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let memory = memory::MemoryEngineConfig::default();
        EngineConfig {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            prefix: "hubbub".into(),
            heartbeat_interval: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(20),
            position_check_interval: Duration::from_secs(40),
            history_max_bytes: memory.history_max_bytes,
            history_max_streams: memory.history_max_streams,
            history_meta_ttl: memory.history_meta_ttl,
            persist: true,
            flush_interval: memory.flush_interval,
        }
    }
}

impl EngineConfig {
    /// The node's part in the cluster, from these settings.
    pub fn cluster(&self) -> crate::cluster::ClusterOptions {
        crate::cluster::ClusterOptions {
            heartbeat_interval: self.heartbeat_interval,
            position_check_interval: match self.kind {
                EngineKind::Memory => Duration::ZERO,
                EngineKind::Redis | EngineKind::Nats => self.position_check_interval,
            },
        }
    }

    /// The memory engine's part.
    pub fn memory(&self) -> memory::MemoryEngineConfig {
        memory::MemoryEngineConfig {
            history_max_bytes: self.history_max_bytes,
            history_max_streams: self.history_max_streams,
            history_meta_ttl: self.history_meta_ttl,
            flush_interval: self.flush_interval,
        }
    }
}

/// History settings of the channel being published to or read.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryOptions {
    /// Publications kept; 0 means the channel has no history (and no offsets).
    pub size: usize,
    pub ttl: Duration,
}

impl HistoryOptions {
    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

/// What to read from a channel's history.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications after this position; its epoch must be the stream's.
    pub since: Option<StreamPosition>,
    /// At most this many publications; `None` for all that are kept; `Some(0)` for the
    /// position only.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// At most about this many bytes of encoded publications (see [`take_within`]);
    /// `None` for no bound. What does not fit is left for the next read, which continues
    /// `since` the last publication returned: an answer never grows with the stream.
    pub max_bytes: Option<usize>,
}

/// An answer being filled with publications up to a count and a byte bound. The first
/// publication is always taken, however large, so that a reader paging through a stream
/// always moves forward. Readers offer publications in answer order and stop at the first
/// refused: a large stream is never read or cloned whole.
#[derive(Debug)]
pub struct Answer {
    publications: Vec<Publication>,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
}

impl Answer {
    pub fn new(limit: Option<usize>, max_bytes: Option<usize>) -> Self {
        Answer {
            publications: Vec::new(),
            bytes: 0,
            limit: limit.unwrap_or(usize::MAX),
            max_bytes: max_bytes.unwrap_or(usize::MAX),
        }
    }

    /// For a query: its `limit` and `max_bytes`.
    pub fn for_query(query: &HistoryQuery) -> Self {
        Self::new(query.limit, query.max_bytes)
    }

    /// Adds a copy of `publication` (a refcount bump for its data) when it fits. Returns
    /// false, taking nothing, when the answer is full: stop reading.
    pub fn offer(&mut self, publication: &Publication) -> bool {
        if self.publications.len() >= self.limit {
            return false;
        }
        // The comma between publications in the answer's array.
        let len = publication.encoded_len() + 1;
        if !self.publications.is_empty() && self.bytes.saturating_add(len) > self.max_bytes {
            return false;
        }
        self.bytes = self.bytes.saturating_add(len);
        self.publications.push(publication.clone());
        true
    }

    /// Whether nothing more can be taken (by count).
    pub fn is_full(&self) -> bool {
        self.publications.len() >= self.limit
    }

    pub fn into_publications(self) -> Vec<Publication> {
        self.publications
    }
}

/// Takes publications, in the order given, while they fit (see [`Answer`]).
pub fn take_within<'a>(
    publications: impl Iterator<Item = &'a Publication>,
    limit: Option<usize>,
    max_bytes: Option<usize>,
) -> Vec<Publication> {
    let mut answer = Answer::new(limit, max_bytes);
    for publication in publications {
        if !answer.offer(publication) {
            break;
        }
    }
    answer.into_publications()
}

/// Publications read from history and the stream's current top position.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Publication>,
    pub position: StreamPosition,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The requested position is from another epoch or no longer kept.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The broker or presence backend cannot be reached.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Receives what the broker delivers to this node, in channel order.
pub trait BrokerEvents: Send + Sync + 'static {
    fn on_publication(&self, channel: &str, publication: Publication);
    fn on_join(&self, channel: &str, info: ClientInfo);
    fn on_leave(&self, channel: &str, info: ClientInfo);
    /// A control message from a node of the cluster (this one included), as given to
    /// [`Broker::publish_control`]. The broker does not look inside.
    fn on_control(&self, message: &[u8]);
    /// The broker may have missed deliveries to this node (its connection to the other
    /// nodes broke and came back): every channel subscribed here may have a gap, and its
    /// subscribers must be brought back in sync. Called once the broker delivers again.
    fn on_resync(&self);
}

/// Moves publications, joins and leaves between nodes and keeps channel streams.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Connects the broker to this node, known to the others as `node_id` (what
    /// [`Broker::publish_control`] addresses). Called once before anything else; an error
    /// means the broker cannot be reached now (the server then refuses to start).
    async fn start(&self, node_id: &str, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError>;
    /// This node has its first subscriber on `channel`: deliver its events here.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// This node's last subscriber on `channel` left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Appends to the channel's stream when history is enabled (assigning the offset) and
    /// delivers to every node subscribed. Returns the publication's position (offset 0
    /// without history). Without history, the publication's own offset (set by an
    /// application that keeps the stream itself) is delivered unchanged.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, EngineError>;
    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Reads the channel's stream. Reading creates nothing: a channel without a stream reads
    /// as empty, at offset 0 in the epoch its stream will be created with, so that a position
    /// handed to a subscriber of the empty channel recovers the first publications.
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        history: HistoryOptions,
    ) -> Result<HistoryPage, EngineError>;
    /// Drops the channel's kept publications; the offset and epoch stay.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;
    /// Sends a control message to the node `to` (a node id), or to every node, this one
    /// included, when `to` is `None`. At most once: a node that is not reachable right now
    /// misses it (control messages are commands whose effect is checked or repeated by
    /// their sender, and heartbeats).
    async fn publish_control(&self, to: Option<&str>, message: bytes::Bytes) -> Result<(), EngineError>;
    /// The streams this node keeps in memory, when the broker keeps them here.
    fn stream_stats(&self) -> Option<StreamStats> {
        None
    }
    /// Waits until every publication this broker has accepted so far is durable: the
    /// publish of a namespace with `durable_publish` is answered only after it. Brokers whose
    /// `publish` returns once the broker server has the publication have nothing to wait for.
    async fn sync(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// How many channel streams a broker keeps in this process, and their estimated bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub streams: usize,
    pub bytes: usize,
}

/// Number of connections and of distinct users in a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

/// Who is subscribed to which channel, across nodes.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError>;
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError>;
    async fn stats(&self, channel: &str) -> Result<PresenceStats, EngineError>;
}
