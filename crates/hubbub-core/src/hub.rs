//! The node-local index of who listens to what: channel → subscribed connections, and
//! user → connections. Fan-out lives here: a publication is encoded once per channel and
//! protocol (JSON, protobuf: only those its subscribers here speak) and the same bytes are
//! queued for every subscriber of that protocol.

use crate::outbox::{Control, Outbox};
use crate::sharded::ShardedMap;
use bytes::Bytes;
use hubbub_protocol::{ClientInfo, Protocol, Publication, Push, PushBody, Reply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The part of a connection that the rest of the node may touch: its ids and its queue.
pub struct Connection {
    /// Node-local numeric key, cheaper than the client id in the hub's maps.
    pub key: u64,
    /// The protocol's client id (a UUID), unique across nodes.
    pub client: String,
    pub outbox: Outbox,
    /// The encoding of everything queued on `outbox`.
    pub protocol: Protocol,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

impl Connection {
    /// A JSON connection.
    pub fn new(queue_max_bytes: usize) -> Arc<Self> {
        Self::with_protocol(queue_max_bytes, Protocol::Json)
    }

    pub fn with_protocol(queue_max_bytes: usize, protocol: Protocol) -> Arc<Self> {
        Arc::new(Connection {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            client: uuid::Uuid::new_v4().to_string(),
            outbox: Outbox::new(queue_max_bytes),
            protocol,
        })
    }
}

struct Subscriber {
    conn: Arc<Connection>,
    join_leave: bool,
    /// While the subscription is being set up (history is being read for recovery), its
    /// publications are held here with their offsets instead of being queued, so that the
    /// subscribe reply comes first and nothing is lost or doubled.
    held: Option<Vec<(u64, Bytes)>>,
    /// Bytes of the frames in `held`. A recovery sent in pieces keeps the subscriber held
    /// for as long as the client takes to read its backlog: what is held meanwhile counts
    /// against the connection's queue budget, and over it the client is slow.
    held_bytes: usize,
    /// For channels whose stream an application keeps (chat rooms): the highest offset this
    /// subscriber has been given, in its subscribe reply or live. Such a stream may publish
    /// an event after a recovering subscriber already read it from the stream (committed,
    /// not yet published); it is not queued twice. `None` for broker streams, which publish
    /// under the lock that assigns the offset, so the hold/release above already suffices
    /// (and whose offsets restart with a new epoch).
    delivered: Option<u64>,
    /// For a positioned subscription: where it stands in the channel's stream (the epoch its
    /// subscribe read, and the offset of the last publication queued for it or covered by
    /// its reply), so that a node can tell a subscriber that missed publications (the broker
    /// lost deliveries) from one that is in sync: [`Hub::positions`]. `None` otherwise.
    position: Option<Position>,
}

/// Where a positioned subscriber stands in its channel's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Position {
    epoch: String,
    offset: u64,
}

/// A positioned subscriber's standing, as [`Hub::positions`] reports it.
#[derive(Clone)]
pub struct SubscriberPosition {
    pub conn: Arc<Connection>,
    pub epoch: String,
    pub offset: u64,
}

/// A channel's subscribers on this node. The entry exists while the channel has at least
/// one; `generation` tells one such period from the next.
struct ChannelSubscribers {
    generation: u64,
    subs: Mutex<HashMap<u64, Subscriber>>,
    /// How many of `subs` speak each protocol (changed under `subs`' lock, read before
    /// taking it): a broadcast encodes, before it locks, only for the protocols present.
    by_protocol: ProtocolCounts,
}

#[derive(Default)]
struct ProtocolCounts {
    json: AtomicUsize,
    protobuf: AtomicUsize,
}

impl ProtocolCounts {
    fn of(&self, protocol: Protocol) -> &AtomicUsize {
        match protocol {
            Protocol::Json => &self.json,
            Protocol::Protobuf => &self.protobuf,
        }
    }
}

/// A push's frames, encoded at most once per protocol: up front for the protocols the
/// channel's subscribers speak, and on first use for one that joined meanwhile.
struct Frames<'a> {
    reply: &'a Reply,
    json: Option<Bytes>,
    protobuf: Option<Bytes>,
}

impl<'a> Frames<'a> {
    fn new(reply: &'a Reply, counts: &ProtocolCounts) -> Self {
        let mut frames = Frames { reply, json: None, protobuf: None };
        for protocol in [Protocol::Json, Protocol::Protobuf] {
            if counts.of(protocol).load(Ordering::Relaxed) > 0 {
                frames.get(protocol);
            }
        }
        frames
    }

    fn get(&mut self, protocol: Protocol) -> &Bytes {
        let slot = match protocol {
            Protocol::Json => &mut self.json,
            Protocol::Protobuf => &mut self.protobuf,
        };
        slot.get_or_insert_with(|| self.reply.encode_as(protocol))
    }
}

type Subscribers = Arc<ChannelSubscribers>;

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn lock(subs: &Subscribers) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
    subs.subs.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub struct Hub {
    channels: ShardedMap<String, Subscribers>,
    users: ShardedMap<String, Vec<Arc<Connection>>>,
    /// Emulation sessions by session id, where `POST /emulation` finds them.
    sessions: ShardedMap<String, Arc<Connection>>,
}

/// A user already has as many connections on this node as `client.user_connection_limit`
/// allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserConnectionLimit;

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an authenticated connection under its user, unless the user already has
    /// `limit` connections on this node (0: no limit; anonymous connections, user "", are
    /// not limited per user). Checked and added under the shard's lock, so concurrent
    /// connects of one user cannot pass the limit together. `Ok(true)` when it is the
    /// user's first connection on this node.
    pub fn add_connection(
        &self,
        user: &str,
        conn: &Arc<Connection>,
        limit: usize,
    ) -> Result<bool, UserConnectionLimit> {
        let mut shard = self.users.shard(user);
        let list = shard.entry(user.to_owned()).or_default();
        if limit > 0 && !user.is_empty() && list.len() >= limit {
            return Err(UserConnectionLimit);
        }
        list.push(conn.clone());
        Ok(list.len() == 1)
    }

    /// Returns true when it was the user's last connection on this node.
    pub fn remove_connection(&self, user: &str, conn: &Connection) -> bool {
        let mut shard = self.users.shard(user);
        let Some(list) = shard.get_mut(user) else { return false };
        let before = list.len();
        list.retain(|c| c.key != conn.key);
        let removed = list.len() < before;
        if list.is_empty() {
            shard.remove(user);
        }
        removed && !shard.contains_key(user)
    }

    /// Whether the user has a connection on this node.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.shard(user).contains_key(user)
    }

    pub fn add_session(&self, session: &str, conn: &Arc<Connection>) {
        self.sessions.shard(session).insert(session.to_owned(), conn.clone());
    }

    pub fn remove_session(&self, session: &str) {
        self.sessions.shard(session).remove(session);
    }

    /// The connection of an emulation session on this node.
    pub fn session(&self, session: &str) -> Option<Arc<Connection>> {
        self.sessions.shard(session).get(session).cloned()
    }

    /// The user's connections on this node, optionally only the one with client id `client`.
    pub fn user_connections(&self, user: &str, client: Option<&str>) -> Vec<Arc<Connection>> {
        self.users
            .shard(user)
            .get(user)
            .map(|list| list.iter().filter(|c| client.is_none_or(|id| c.client == id)).cloned().collect())
            .unwrap_or_default()
    }

    /// Sends `control` to every connection on this node (e.g. the shutdown disconnect).
    pub fn control_all(&self, control: impl Fn() -> Control) {
        self.users.for_each_shard(|m| {
            for conn in m.values().flatten() {
                conn.outbox.control(control());
            }
        });
    }

    /// Number of connections and of distinct users on this node.
    pub fn counts(&self) -> (usize, usize) {
        let (mut clients, mut users) = (0, 0);
        self.users.for_each_shard(|m| {
            users += m.len();
            clients += m.values().map(Vec::len).sum::<usize>();
        });
        (clients, users)
    }

    /// Adds a subscriber. With `hold`, its publications are held until [`Hub::release`];
    /// with `dedupe`, an offset it already has is never queued again. Returns true when it
    /// is the channel's first subscriber on this node.
    pub fn subscribe(
        &self,
        channel: &str,
        conn: &Arc<Connection>,
        join_leave: bool,
        hold: bool,
        dedupe: bool,
    ) -> bool {
        let mut shard = self.channels.shard(channel);
        let first = !shard.contains_key(channel);
        let subs = shard.entry(channel.to_owned()).or_insert_with(|| {
            Arc::new(ChannelSubscribers {
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                subs: Mutex::default(),
                by_protocol: ProtocolCounts::default(),
            })
        });
        let mut guard = lock(subs);
        let replaced = guard.insert(
            conn.key,
            Subscriber {
                conn: conn.clone(),
                join_leave,
                held: hold.then(Vec::new),
                held_bytes: 0,
                delivered: dedupe.then_some(0),
                position: hold.then(Position::default),
            },
        );
        if replaced.is_none() {
            subs.by_protocol.of(conn.protocol).fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Ends the holding of a subscriber's publications. Those held with an offset above
    /// `covered` (what the subscribe reply already carried) are queued, in order, and from
    /// then on publications are queued directly, never one at or below an offset already
    /// given. Runs under the channel's lock, so no publication slips between.
    pub fn release(&self, channel: &str, conn: &Connection, covered: u64) {
        let Some(subs) = self.channels.shard(channel).get(channel).cloned() else { return };
        let mut subs = lock(&subs);
        if let Some(sub) = subs.get_mut(&conn.key) {
            if let Some(delivered) = &mut sub.delivered {
                *delivered = (*delivered).max(covered);
            }
            if let Some(position) = &mut sub.position {
                position.offset = position.offset.max(covered);
            }
            sub.held_bytes = 0;
            for (offset, frame) in sub.held.take().unwrap_or_default() {
                if offset == 0 || offset > covered {
                    if let Some(delivered) = &mut sub.delivered {
                        *delivered = (*delivered).max(offset);
                    }
                    if let Some(position) = &mut sub.position {
                        position.offset = position.offset.max(offset);
                    }
                    sub.conn.outbox.push(frame);
                }
            }
        }
    }

    /// Records the epoch of the stream a positioned subscriber's subscribe read (its
    /// offsets count in that epoch).
    pub fn set_epoch(&self, channel: &str, conn: &Connection, epoch: &str) {
        let Some(subs) = self.subscribers(channel) else { return };
        let mut subs = lock(&subs);
        if let Some(position) = subs.get_mut(&conn.key).and_then(|s| s.position.as_mut()) {
            position.epoch = epoch.to_owned();
        }
    }

    /// The positioned subscribers of `channel` on this node that are live (not held for a
    /// subscribe or a recovery still being sent, whose reader is the stream itself), with
    /// where each stands.
    pub fn positions(&self, channel: &str) -> Vec<SubscriberPosition> {
        let Some(subs) = self.subscribers(channel) else { return Vec::new() };
        let subs = lock(&subs);
        subs.values()
            .filter(|s| s.held.is_none() && !s.conn.outbox.is_closed())
            .filter_map(|s| {
                let p = s.position.as_ref()?;
                Some(SubscriberPosition { conn: s.conn.clone(), epoch: p.epoch.clone(), offset: p.offset })
            })
            .collect()
    }

    /// Where one subscriber of `channel` stands now (`None` once it left or is held again).
    pub fn position(&self, channel: &str, conn: &Connection) -> Option<(String, u64)> {
        let subs = self.subscribers(channel)?;
        let subs = lock(&subs);
        let sub = subs.get(&conn.key).filter(|s| s.held.is_none())?;
        sub.position.as_ref().map(|p| (p.epoch.clone(), p.offset))
    }

    /// Removes a subscriber. Returns true when the channel has no subscriber left here.
    pub fn unsubscribe(&self, channel: &str, conn: &Connection) -> bool {
        let mut shard = self.channels.shard(channel);
        let Some(subs) = shard.get(channel) else { return false };
        let mut guard = lock(subs);
        let Some(removed) = guard.remove(&conn.key) else { return false };
        subs.by_protocol.of(removed.conn.protocol).fetch_sub(1, Ordering::Relaxed);
        let empty = guard.is_empty();
        drop(guard);
        if empty {
            shard.remove(channel);
        }
        empty
    }

    fn subscribers(&self, channel: &str) -> Option<Subscribers> {
        self.channels.shard(channel).get(channel).cloned()
    }

    /// While `channel` has subscribers on this node, a number that stays the same until
    /// its last one leaves (and differs for every such period); `None` without subscribers.
    /// What an application keeps per channel for this node's subscribers (the chat's room
    /// sequencer) is valid only for the generation it was made in: between two, nothing
    /// was delivered here.
    pub fn generation(&self, channel: &str) -> Option<u64> {
        self.channels.shard(channel).get(channel).map(|c| c.generation)
    }

    /// Encodes a push once per protocol, if the channel has subscribers here, and queues the
    /// same bytes for each of them (only for those that want join/leave events, when
    /// `join_leave_only`). Returns how many got it. A channel whose subscribers all speak
    /// JSON encodes JSON once before locking, as it always did; protobuf is encoded only
    /// when a protobuf subscriber is there.
    fn broadcast(&self, channel: &str, body: PushBody, offset: u64, join_leave_only: bool) -> usize {
        let Some(channel_subs) = self.subscribers(channel) else { return 0 };
        let reply = Reply::push(Push { channel: channel.to_owned(), body });
        let mut frames = Frames::new(&reply, &channel_subs.by_protocol);
        let mut subs = lock(&channel_subs);
        let mut delivered = 0;
        for sub in subs.values_mut() {
            if join_leave_only && !sub.join_leave {
                continue;
            }
            let frame = frames.get(sub.conn.protocol);
            match &mut sub.held {
                Some(held) => {
                    if sub.conn.outbox.is_closed() {
                        continue;
                    }
                    held.push((offset, frame.clone()));
                    sub.held_bytes += frame.len();
                    if sub.held_bytes > sub.conn.outbox.max_bytes() {
                        held.clear();
                        sub.held_bytes = 0;
                        sub.conn.outbox.disconnect_slow();
                    }
                }
                None => {
                    if let (Some(delivered), true) = (&mut sub.delivered, offset != 0) {
                        if offset <= *delivered {
                            continue;
                        }
                        *delivered = offset;
                    }
                    if let (Some(position), true) = (&mut sub.position, offset != 0) {
                        // A broker stream that started a new epoch counts from 1 again: the
                        // last offset queued, not the highest.
                        position.offset = offset;
                    }
                    sub.conn.outbox.push(frame.clone());
                }
            }
            delivered += 1;
        }
        delivered
    }

    pub fn broadcast_publication(&self, channel: &str, publication: Publication) -> usize {
        let offset = publication.offset;
        self.broadcast(channel, PushBody::Publication(publication), offset, false)
    }

    pub fn broadcast_join(&self, channel: &str, info: ClientInfo, everyone: bool) -> usize {
        self.broadcast(channel, PushBody::Join { info }, 0, !everyone)
    }

    pub fn broadcast_leave(&self, channel: &str, info: ClientInfo, everyone: bool) -> usize {
        self.broadcast(channel, PushBody::Leave { info }, 0, !everyone)
    }

    /// Channels with subscribers on this node and how many each has.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        self.channels.for_each_shard(|m| {
            out.extend(m.iter().map(|(name, subs)| (name.clone(), lock(subs).len())));
        });
        out
    }

    pub fn num_channels(&self) -> usize {
        self.channels.count()
    }

    /// Number of subscriptions on this node (a connection subscribed to 3 channels counts 3).
    pub fn num_subscriptions(&self) -> usize {
        let mut n = 0;
        self.channels.for_each_shard(|m| n += m.values().map(|subs| lock(subs).len()).sum::<usize>());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::json_from_str;

    fn publication(offset: u64) -> Publication {
        Publication { data: json_from_str("{}").unwrap(), info: None, offset, tags: None }
    }

    fn queued_offsets(conn: &Connection) -> Vec<u64> {
        let mut frames = Vec::new();
        while conn.outbox.drain_frames(&mut frames).is_some() {}
        frames
            .iter()
            .filter_map(|f| {
                let v: serde_json::Value = serde_json::from_slice(f).unwrap();
                v["push"]["pub"]["offset"].as_u64()
            })
            .collect()
    }

    #[test]
    fn held_publications_are_released_after_the_reply_without_doubles() {
        let hub = Hub::new();
        let conn = Connection::new(1 << 20);
        assert!(hub.subscribe("room:1", &conn, false, true, true));
        for offset in [4, 5, 6] {
            hub.broadcast_publication("room:1", publication(offset));
        }
        assert!(queued_offsets(&conn).is_empty(), "held while subscribing");
        // The reply covered up to 5: only 6 is released.
        hub.release("room:1", &conn, 5);
        assert_eq!(queued_offsets(&conn), vec![6]);
        // An event committed before the reply but published after it is not sent twice.
        hub.broadcast_publication("room:1", publication(5));
        hub.broadcast_publication("room:1", publication(7));
        assert_eq!(queued_offsets(&conn), vec![7]);
    }

    #[test]
    fn positions_follow_what_was_queued() {
        let hub = Hub::new();
        let positioned = Connection::new(1 << 20);
        let plain = Connection::new(1 << 20);
        hub.subscribe("news", &positioned, false, true, false);
        hub.subscribe("news", &plain, false, false, false);
        hub.set_epoch("news", &positioned, "e1");
        assert!(hub.positions("news").is_empty(), "held while subscribing: not checked");
        hub.broadcast_publication("news", publication(3));
        hub.release("news", &positioned, 2);
        let positions = hub.positions("news");
        assert_eq!(positions.len(), 1, "only positioned subscribers have a position");
        assert_eq!((positions[0].epoch.as_str(), positions[0].offset), ("e1", 3));
        hub.broadcast_publication("news", publication(4));
        assert_eq!(hub.position("news", &positioned), Some(("e1".to_owned(), 4)));
        assert_eq!(hub.position("news", &plain), None);
        assert_eq!(hub.num_subscriptions(), 2);
    }

    #[test]
    fn broker_streams_are_not_deduplicated() {
        let hub = Hub::new();
        let conn = Connection::new(1 << 20);
        hub.subscribe("news", &conn, false, true, false);
        hub.release("news", &conn, 3);
        // A broker stream that started a new epoch counts from 1 again.
        hub.broadcast_publication("news", publication(1));
        assert_eq!(queued_offsets(&conn), vec![1]);
    }
}
