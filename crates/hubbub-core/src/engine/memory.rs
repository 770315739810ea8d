//! The single-node engine: channel streams in bounded rings, presence in a map.
//!
//! Each stream has its own mutex, held while its next offset is assigned *and* the
//! publication is handed to the hub, so that every subscriber sees a channel's publications
//! in offset order. The hub's fan-out never awaits, so the lock is short.

use super::*;
use crate::sharded::ShardedMap;
use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, OnceLock};
use tokio::time::Instant;

/// How long a stream's position (offset and epoch) outlives its last publication. After
/// that the stream starts over with a new epoch, and old positions are unrecoverable.
const STREAM_META_TTL: Duration = Duration::from_secs(24 * 3600);

struct Stream {
    epoch: String,
    top: u64,
    /// Kept publications, oldest first, with the instant each expires.
    items: VecDeque<(Instant, Publication)>,
    touched: Instant,
}

impl Stream {
    fn new() -> Self {
        Stream { epoch: new_epoch(), top: 0, items: VecDeque::new(), touched: Instant::now() }
    }

    fn prune(&mut self, now: Instant) {
        while self.items.front().is_some_and(|(expires, _)| *expires <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.top, epoch: self.epoch.clone() }
    }

    /// The offset of the oldest publication still kept (top + 1 when none is).
    fn first_kept(&self) -> u64 {
        self.top + 1 - self.items.len() as u64
    }
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

type SharedStream = std::sync::Arc<Mutex<Stream>>;

#[derive(Default)]
pub struct MemoryBroker {
    streams: ShardedMap<String, SharedStream>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, EngineError> {
        self.events.get().ok_or_else(|| EngineError::Unavailable("broker not started".into()))
    }

    fn stream(&self, channel: &str) -> SharedStream {
        let mut shard = self.streams.shard(channel);
        let now = Instant::now();
        if let Some(s) = shard.get(channel) {
            let stale = {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                now.duration_since(s.touched) > STREAM_META_TTL
            };
            if !stale {
                return s.clone();
            }
        }
        let s: SharedStream = Arc::new(Mutex::new(Stream::new()));
        shard.insert(channel.to_owned(), s.clone());
        s
    }

    /// Frees the memory of expired publications and forgotten streams.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.streams.for_each_shard(|m| {
            m.retain(|_, s| {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.prune(now);
                now.duration_since(s.touched) <= STREAM_META_TTL
            })
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), EngineError> {
        self.events.set(events).map_err(|_| EngineError::Unavailable("broker started twice".into()))
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
        let stream = self.stream(channel);
        let mut s = stream.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.prune(now);
        s.top += 1;
        s.touched = now;
        publication.offset = s.top;
        s.items.push_back((now + history.ttl, publication.clone()));
        while s.items.len() > history.size {
            s.items.pop_front();
        }
        let position = s.position();
        events.on_publication(channel, publication);
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
        let stream = self.stream(channel);
        let mut s = stream.lock().unwrap_or_else(|p| p.into_inner());
        s.prune(Instant::now());
        let after = match &query.since {
            Some(since) => {
                if since.epoch != s.epoch || since.offset > s.top || since.offset + 1 < s.first_kept() {
                    return Err(EngineError::UnrecoverablePosition);
                }
                since.offset
            }
            None => 0,
        };
        let matching = s.items.iter().map(|(_, p)| p).filter(|p| p.offset > after);
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
            stream.lock().unwrap_or_else(|p| p.into_inner()).items.clear();
        }
        Ok(())
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
    }

    fn publication(n: u32) -> Publication {
        Publication { data: json_from_str(&n.to_string()).unwrap(), info: None, offset: 0, tags: None }
    }

    #[tokio::test]
    async fn offsets_history_and_recovery_bounds() {
        let broker = MemoryBroker::new();
        let seen = Arc::new(Collect(Mutex::new(vec![])));
        broker.start(seen.clone()).await.unwrap();
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
