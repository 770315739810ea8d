//! The node-local index of who listens to what: channel → subscribed connections, and
//! user → connections. Fan-out lives here: a publication is encoded once per channel and
//! the same bytes are queued for every subscriber.

use crate::outbox::{Control, Outbox};
use crate::sharded::ShardedMap;
use bytes::Bytes;
use hubbub_protocol::{ClientInfo, Publication, Push, PushBody, Reply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The part of a connection that the rest of the node may touch: its ids and its queue.
pub struct Connection {
    /// Node-local numeric key, cheaper than the client id in the hub's maps.
    pub key: u64,
    /// The protocol's client id (a UUID), unique across nodes.
    pub client: String,
    pub outbox: Outbox,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

impl Connection {
    pub fn new(queue_max_bytes: usize) -> Arc<Self> {
        Arc::new(Connection {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            client: uuid::Uuid::new_v4().to_string(),
            outbox: Outbox::new(queue_max_bytes),
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
}

type Subscribers = Arc<Mutex<HashMap<u64, Subscriber>>>;

fn lock(subs: &Subscribers) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
    subs.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub struct Hub {
    channels: ShardedMap<String, Subscribers>,
    users: ShardedMap<String, Vec<Arc<Connection>>>,
    /// Emulation sessions by session id, where `POST /emulation` finds them.
    sessions: ShardedMap<String, Arc<Connection>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an authenticated connection under its user. Returns true when it is the
    /// user's first connection on this node.
    pub fn add_connection(&self, user: &str, conn: &Arc<Connection>) -> bool {
        let mut shard = self.users.shard(user);
        let list = shard.entry(user.to_owned()).or_default();
        list.push(conn.clone());
        list.len() == 1
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

    /// Adds a subscriber. With `hold`, its publications are held until
    /// [`Hub::release`]. Returns true when it is the channel's first subscriber on this node.
    pub fn subscribe(&self, channel: &str, conn: &Arc<Connection>, join_leave: bool, hold: bool) -> bool {
        let mut shard = self.channels.shard(channel);
        let first = !shard.contains_key(channel);
        let subs = shard.entry(channel.to_owned()).or_default();
        lock(subs).insert(conn.key, Subscriber { conn: conn.clone(), join_leave, held: hold.then(Vec::new) });
        first
    }

    /// Ends the holding of a subscriber's publications: `flush` gets those held (to queue
    /// the ones the subscribe reply did not already carry), and from then on publications
    /// are queued directly. Runs under the channel's lock, so no publication slips between.
    pub fn release(&self, channel: &str, conn: &Connection, flush: impl FnOnce(Vec<(u64, Bytes)>)) {
        let Some(subs) = self.channels.shard(channel).get(channel).cloned() else { return };
        let mut subs = lock(&subs);
        if let Some(sub) = subs.get_mut(&conn.key) {
            flush(sub.held.take().unwrap_or_default());
        }
    }

    /// Removes a subscriber. Returns true when the channel has no subscriber left here.
    pub fn unsubscribe(&self, channel: &str, conn: &Connection) -> bool {
        let mut shard = self.channels.shard(channel);
        let Some(subs) = shard.get(channel) else { return false };
        let mut guard = lock(subs);
        if guard.remove(&conn.key).is_none() {
            return false;
        }
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

    /// Queues an encoded message for the channel's subscribers (those that want join/leave
    /// events only, when `join_leave_only`). Returns how many got it.
    fn fan_out(&self, channel: &str, frame: Bytes, offset: u64, join_leave_only: bool) -> usize {
        let Some(subs) = self.subscribers(channel) else { return 0 };
        let mut subs = lock(&subs);
        let mut delivered = 0;
        for sub in subs.values_mut() {
            if join_leave_only && !sub.join_leave {
                continue;
            }
            match &mut sub.held {
                Some(held) => held.push((offset, frame.clone())),
                None => {
                    sub.conn.outbox.push(frame.clone());
                }
            }
            delivered += 1;
        }
        delivered
    }

    pub fn broadcast_publication(&self, channel: &str, publication: Publication) -> usize {
        if self.subscribers(channel).is_none() {
            return 0;
        }
        let offset = publication.offset;
        let frame =
            Reply::push(Push { channel: channel.to_owned(), body: PushBody::Publication(publication) })
                .encode();
        self.fan_out(channel, frame, offset, false)
    }

    pub fn broadcast_join(&self, channel: &str, info: ClientInfo, everyone: bool) -> usize {
        let frame = Reply::push(Push { channel: channel.to_owned(), body: PushBody::Join { info } }).encode();
        self.fan_out(channel, frame, 0, !everyone)
    }

    pub fn broadcast_leave(&self, channel: &str, info: ClientInfo, everyone: bool) -> usize {
        let frame =
            Reply::push(Push { channel: channel.to_owned(), body: PushBody::Leave { info } }).encode();
        self.fan_out(channel, frame, 0, !everyone)
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
}
