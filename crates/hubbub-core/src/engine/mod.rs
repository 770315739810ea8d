//! The engine seam: how a node reaches other nodes (the [`Broker`]) and where presence is
//! kept (the [`PresenceStore`]). The session and the hub only see these traits, so that the
//! in-memory engine here and the Redis and NATS engines of a multi-node deployment are
//! interchangeable.
//!
//! Offsets are assigned by the broker, never by a session: the broker is the one place that
//! orders a channel's publications.

pub mod memory;

use async_trait::async_trait;
use hubbub_protocol::{ClientInfo, Publication, StreamPosition};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
}

/// Moves publications, joins and leaves between nodes and keeps channel streams.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Connects the broker to this node. Called once before anything else.
    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError>;
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
    /// The streams this node keeps in memory, when the broker keeps them here.
    fn stream_stats(&self) -> Option<StreamStats> {
        None
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
