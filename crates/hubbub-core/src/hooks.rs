//! Extension points for an application built into the node (the chat): channels whose
//! access and stream it owns, and the moments users come online and go offline.

use crate::engine::{EngineError, HistoryPage, HistoryQuery};
use async_trait::async_trait;
use hubbub_protocol::{ProtocolError, Publication};

/// An application's rules and stream for the channels of one namespace.
#[async_trait]
pub trait ChannelHooks: Send + Sync + 'static {
    /// Whether `user` may subscribe to `channel` (and so read its history and presence).
    /// Called after the namespace's own rules allowed it.
    async fn authorize_subscribe(&self, user: &str, channel: &str) -> Result<(), ProtocolError>;
    /// The channel's stream, when the application keeps it durably (history and recovery
    /// are served from here instead of the broker's memory).
    async fn history(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage, EngineError>;
    /// The broker may have missed publications of `channel` on this node (it lost its
    /// connection to the other nodes: `BrokerEvents::on_resync`). Bring the channel's
    /// subscribers here back in sync from the application's stream and return true; false
    /// (the default) when the hooks cannot, and the node then makes the subscribers recover
    /// by themselves.
    async fn resync(&self, _channel: &str) -> bool {
        false
    }
    /// A publication of `channel` arrived from the broker, on its way to this node's
    /// subscribers. Return it to have it delivered now (the default). Return `None` to take
    /// it: to drop it, or to deliver it later with `Hub::broadcast_publication`, e.g. once
    /// the publications before it have arrived or been read from the application's stream
    /// (publications of a stream written by several nodes can arrive out of order).
    /// Called on the broker's delivery path: it must not block or wait.
    fn intercept_publication(&self, _channel: &str, publication: Publication) -> Option<Publication> {
        Some(publication)
    }
}

/// Told when a user's first connection on this node opens and its last one closes.
pub trait UserEvents: Send + Sync + 'static {
    fn online(&self, user: &str);
    fn offline(&self, user: &str);
}
