//! Control across the nodes of a cluster, over the broker's control channel
//! ([`Broker::publish_control`] → [`BrokerEvents::on_control`](crate::engine::BrokerEvents)):
//!
//! * **Heartbeats**: every `engine.heartbeat_interval` each node announces itself with its
//!   [`NodeInfo`]; the [`Registry`] keeps the nodes heard from within three intervals (at most
//!   [`MAX_NODES`]), which the server API's `info` lists.
//! * **User commands** ([`UserCommand`]: the server API's subscribe, unsubscribe, disconnect,
//!   refresh): sent to every node, each applies them to its own connections of the user.
//! * **Requests** with a reply: `channels` (every node answers its channels, merged) and the
//!   commands posted to `/emulation` for a session another node holds.
//! * **Bringing subscribers back in sync** when the broker may have lost deliveries
//!   ([`Node::resync`]), and a periodic position check in cluster mode.
//!
//! Messages are JSON [`Envelope`]s: the sender's protocol version, its node id, and a
//! [`Message`] tagged by type. A node ignores a type it does not know (a newer node's) with
//! a debug log, and the fields it does not know: nodes of different versions run together
//! during a rolling upgrade. Delivery is at most once: heartbeats repeat, requests time out,
//! and a command that a node misses (it was cut off) only misses connections that the
//! node's own failure already affected.
//!
//! A node ignores what it sent itself (the broker loops messages to all back to their
//! sender): it does its own part directly, so that what concerns its own connections works
//! even while the broker is unreachable.

use crate::engine::{Broker, HistoryQuery};
use crate::hub::Connection;
use crate::node::{ApiResult, Node, NodeInfo};
use crate::outbox::Control;
use bytes::Bytes;
use hubbub_protocol::codes::*;
use hubbub_protocol::{Disconnect, ProtocolError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Version of the control protocol this node speaks. A change that older nodes cannot
/// ignore safely gets a new message type rather than a changed one.
pub const CONTROL_VERSION: u32 = 1;

/// Most nodes the registry keeps. Heartbeats of further node ids are ignored (with a
/// warning) until known ones expire: a flood of made-up node ids cannot grow memory.
pub const MAX_NODES: usize = 1000;

/// A node not heard from for this many heartbeat intervals is gone.
pub const HEARTBEATS_TO_LIVE: u32 = 3;

/// Most channels one `channels` answer carries (each node's part and the merged answer);
/// the answer says `truncated` when there were more. Use a pattern to look at fewer.
pub const MAX_CHANNELS_ANSWER: usize = 10_000;

/// Most bytes of channel names in one node's `channels` part, so that the reply fits the
/// broker's message size (NATS refuses payloads over 1 MiB by default).
pub const MAX_CHANNELS_REPLY_BYTES: usize = 512 * 1024;

/// Requests this node may have waiting for replies at once (`channels`, forwarded
/// emulation commands); more are refused with "too many requests".
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Control messages waiting to be handed to the broker. Over it, a message is dropped
/// (with a warning): delivery is at most once anyway, and a stuck broker must not make the
/// node's memory grow.
const OUTGOING_QUEUE: usize = 4096;

/// How long a position check waits before it believes a subscriber is behind: publications
/// made before the stream's top was read may still be on their way through the broker.
const POSITION_GRACE: Duration = Duration::from_secs(1);

/// Longest field of a heartbeat's node info kept in the registry (ids, names, versions).
const MAX_INFO_FIELD: usize = 256;

/// Settings of a node's part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `engine.heartbeat_interval`: how often this node announces itself; a node silent
    /// for three intervals is gone. Also how long a request waits for replies.
    pub heartbeat_interval: Duration,
    /// `engine.position_check_interval`: how often the positions of this node's
    /// subscribers are compared with their streams' tops; zero for never (a single node,
    /// whose memory engine cannot lose a delivery).
    pub position_check_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { heartbeat_interval: Duration::from_secs(2), position_check_interval: Duration::ZERO }
    }
}

/// One control message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's [`CONTROL_VERSION`].
    pub v: u32,
    /// The sender's node id (where replies go).
    pub from: String,
    pub msg: Message,
}

/// What nodes tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Message {
    /// "I am alive", with my figures (to all, every heartbeat interval).
    Heartbeat(NodeInfo),
    /// "I am stopping": drop me from `info` now rather than after three intervals.
    Leave,
    /// A server API command for a user's connections, wherever they are (to all).
    User(UserCommand),
    /// "Tell me your channels" (to all); answered with [`Message::ChannelsReply`].
    ChannelsRequest {
        id: u64,
        pattern: String,
    },
    ChannelsReply {
        id: u64,
        channels: Vec<(String, u32)>,
        truncated: bool,
    },
    /// Commands posted to `/emulation` on another node, for a session held here (to the
    /// session's node); answered with [`Message::EmulationReply`].
    EmulationRequest {
        id: u64,
        session: String,
        /// The commands, when they are UTF-8 (JSON sessions; also protobuf frames that
        /// happen to be).
        #[serde(default)]
        commands: String,
        /// Otherwise the commands in base64 (protobuf sessions).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        commands_b64: String,
    },
    EmulationReply {
        id: u64,
        outcome: EmulationOutcome,
    },
    /// A message type of a newer node: ignored (see [`decode`]).
    #[serde(skip)]
    Unknown,
}

/// The `type` of every message this node understands.
const KNOWN_TYPES: &[&str] = &[
    "heartbeat",
    "leave",
    "user",
    "channels_request",
    "channels_reply",
    "emulation_request",
    "emulation_reply",
];

/// An envelope read only as far as its message's type.
#[derive(Deserialize)]
struct TypeOnly {
    v: u32,
    from: String,
    msg: TypeOnlyMessage,
}

#[derive(Deserialize)]
struct TypeOnlyMessage {
    #[serde(rename = "type")]
    kind: String,
}

/// A server API command for a user's connections (all of them, or the one with client id
/// `client`), carried out by every node on its own connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserCommand {
    Subscribe {
        user: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    Unsubscribe {
        user: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    Disconnect {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        code: u16,
        reason: String,
    },
    /// Centrifugo's `refresh`: the connection expires at `expire_at` (Unix seconds; none:
    /// never), or is expired now.
    Refresh {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default)]
        expired: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expire_at: Option<u64>,
    },
    /// An operation of a newer node: ignored.
    #[serde(other)]
    Unknown,
}

/// What became of commands posted for an emulation session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmulationOutcome {
    /// Queued for the session, in order with everything else it does.
    Accepted,
    /// No such session on the node (it ended, or never was).
    UnknownSession,
    /// The session is closing (the disconnect that closes it).
    Closed { code: u16, reason: String },
}

/// Why commands posted for an emulation session were not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulationError {
    #[error("unknown session")]
    UnknownSession,
    #[error("session closed ({} {})", .0.code, .0.reason)]
    Closed(Disconnect),
    /// The session's node did not answer in time.
    #[error("the session's node did not answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent (the broker is unreachable) or too many are waiting.
    #[error("{0}")]
    Unavailable(ProtocolError),
}

/// The channels of the whole cluster, as `channels` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelsAnswer {
    /// Channel → subscribers on all nodes that answered.
    pub channels: HashMap<String, u64>,
    /// Some channels were left out ([`MAX_CHANNELS_ANSWER`]).
    pub truncated: bool,
    /// Live nodes that did not answer in time (their channels are missing).
    pub missing_nodes: usize,
}

impl ChannelsAnswer {
    /// Adds one node's channels, within [`MAX_CHANNELS_ANSWER`].
    pub fn merge(&mut self, channels: impl IntoIterator<Item = (String, u32)>, truncated: bool) {
        self.truncated |= truncated;
        for (name, n) in channels {
            let full = self.channels.len() >= MAX_CHANNELS_ANSWER;
            match self.channels.get_mut(&name) {
                Some(count) => *count += u64::from(n),
                None if full => self.truncated = true,
                None => {
                    self.channels.insert(name, u64::from(n));
                }
            }
        }
    }
}

/// Whether `name` matches a pattern where `*` stands for any run of characters (the empty
/// pattern matches everything).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().expect("split yields one part at least");
    let Some(mut remaining) = name.strip_prefix(first) else { return false };
    for (i, part) in rest.iter().enumerate() {
        let last = i == rest.len() - 1;
        if last {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.is_empty()
}

/// Encodes a message from `from`.
pub fn encode(from: &str, msg: Message) -> Bytes {
    let envelope = Envelope { v: CONTROL_VERSION, from: from.to_owned(), msg };
    Bytes::from(serde_json::to_vec(&envelope).expect("control messages serialize"))
}

/// Decodes a control message. Unknown types decode as [`Message::Unknown`]; what is not an
/// envelope at all, or a known type with a body that does not fit, is an error.
pub fn decode(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
    serde_json::from_slice(bytes).or_else(|e| {
        let TypeOnly { v, from, msg } = serde_json::from_slice(bytes)?;
        if KNOWN_TYPES.contains(&msg.kind.as_str()) {
            return Err(e);
        }
        Ok(Envelope { v, from, msg: Message::Unknown })
    })
}

/// The nodes heard from recently, bounded by [`MAX_NODES`].
#[derive(Debug)]
pub struct Registry {
    nodes: HashMap<String, (NodeInfo, Instant)>,
    max: usize,
}

/// What a heartbeat did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A node not in the registry before.
    New,
    Known,
    /// Not kept: the registry is full, or the info is oversized.
    Refused,
}

impl Registry {
    pub fn new(max: usize) -> Self {
        Registry { nodes: HashMap::new(), max }
    }

    /// Records a heartbeat heard at `now`.
    pub fn heard(&mut self, info: NodeInfo, now: Instant) -> Heard {
        if [&info.uid, &info.name, &info.version].iter().any(|f| f.len() > MAX_INFO_FIELD) {
            return Heard::Refused;
        }
        if let Some(entry) = self.nodes.get_mut(&info.uid) {
            *entry = (info, now);
            return Heard::Known;
        }
        if self.nodes.len() >= self.max {
            return Heard::Refused;
        }
        self.nodes.insert(info.uid.clone(), (info, now));
        Heard::New
    }

    pub fn remove(&mut self, uid: &str) {
        self.nodes.remove(uid);
    }

    /// Forgets the nodes not heard from within `ttl` of `now`.
    pub fn prune(&mut self, now: Instant, ttl: Duration) {
        self.nodes.retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= ttl);
    }

    /// The live nodes, by name (then id).
    pub fn live(&mut self, now: Instant, ttl: Duration) -> Vec<NodeInfo> {
        self.prune(now, ttl);
        let mut nodes: Vec<NodeInfo> = self.nodes.values().map(|(info, _)| info.clone()).collect();
        nodes.sort_by(|a, b| (&a.name, &a.uid).cmp(&(&b.name, &b.uid)));
        nodes
    }

    pub fn is_live(&mut self, uid: &str, now: Instant, ttl: Duration) -> bool {
        self.prune(now, ttl);
        self.nodes.contains_key(uid)
    }

    pub fn live_ids(&mut self, now: Instant, ttl: Duration) -> HashSet<String> {
        self.prune(now, ttl);
        self.nodes.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A node's part in the cluster: the registry of the others, the requests waiting for
/// replies, and the queue of outgoing control messages.
pub(crate) struct Cluster {
    options: ClusterOptions,
    registry: Mutex<Registry>,
    pending: Mutex<HashMap<u64, mpsc::Sender<(String, Message)>>>,
    next_request: AtomicU64,
    outgoing: mpsc::Sender<(Option<String>, Bytes)>,
    /// One position check at a time (a resync and the periodic check).
    checking: tokio::sync::Mutex<()>,
    /// The registry refused a node (full): warned once until it has room again.
    registry_full: AtomicBool,
    /// The node said `leave` (it is shutting down): no more heartbeats, which would make
    /// the others list it again.
    leaving: AtomicBool,
}

/// The receiving end of the outgoing queue, for [`send_loop`].
pub(crate) type Outgoing = mpsc::Receiver<(Option<String>, Bytes)>;

impl Cluster {
    pub(crate) fn new(options: ClusterOptions) -> (Cluster, Outgoing) {
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let cluster = Cluster {
            options,
            registry: Mutex::new(Registry::new(MAX_NODES)),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            outgoing: tx,
            checking: tokio::sync::Mutex::new(()),
            registry_full: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
        };
        (cluster, rx)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<(String, Message)>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a node may stay silent before it is gone.
    fn ttl(&self) -> Duration {
        self.options.heartbeat_interval * HEARTBEATS_TO_LIVE
    }

    /// How long a request waits for its replies: about a heartbeat.
    fn reply_wait(&self) -> Duration {
        self.options.heartbeat_interval.max(Duration::from_millis(500))
    }
}

/// Hands the queued control messages to the broker, in order.
pub(crate) async fn send_loop(broker: Arc<dyn Broker>, mut outgoing: Outgoing) {
    let mut failing = false;
    while let Some((to, message)) = outgoing.recv().await {
        match broker.publish_control(to.as_deref(), message).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("control messages reach the broker again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "control message not sent (heartbeats and commands to other nodes are lost until the broker is back)");
            }
            Err(e) => tracing::debug!(error = %e, "control message not sent"),
        }
    }
}

/// Announces the node every heartbeat interval, while it exists.
pub(crate) async fn heartbeat_loop(node: Weak<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.cluster.leaving.load(Ordering::Relaxed) {
            return;
        }
        node.cluster.registry().prune(Instant::now(), node.cluster.ttl());
        node.send_detached(None, Message::Heartbeat(node.info()));
    }
}

/// Compares the positions of this node's subscribers with their streams periodically.
pub(crate) async fn position_check_loop(node: Weak<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.bring_in_sync(Trigger::Periodic).await;
    }
}

/// Why subscribers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The broker may have lost deliveries ([`Node::resync`]).
    Resync,
    /// The periodic position check.
    Periodic,
}

/// A request waiting for replies; leaves the pending map when dropped (also when the API
/// call that made it is abandoned).
struct Request<'a> {
    node: &'a Node,
    id: u64,
    replies: mpsc::Receiver<(String, Message)>,
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        self.node.cluster.pending().remove(&self.id);
    }
}

fn engine_error(e: crate::engine::EngineError) -> ProtocolError {
    e.into()
}

impl Node {
    /// Queues a control message for the broker, without waiting: for what the node sends
    /// by itself (heartbeats, replies).
    fn send_detached(&self, to: Option<&str>, msg: Message) {
        let message = encode(&self.id, msg);
        if self.cluster.outgoing.try_send((to.map(str::to_owned), message)).is_err() {
            tracing::warn!("control queue full: a control message was dropped");
        }
    }

    /// Sends a control message now, for a caller that reports failures (the server API).
    async fn send(&self, to: Option<&str>, msg: Message) -> ApiResult<()> {
        self.broker.publish_control(to, encode(&self.id, msg)).await.map_err(engine_error)
    }

    fn open_request(&self) -> ApiResult<Request<'_>> {
        let mut pending = self.cluster.pending();
        if pending.len() >= MAX_PENDING_REQUESTS {
            tracing::warn!("too many control requests waiting for replies");
            return Err(ERROR_TOO_MANY_REQUESTS.into());
        }
        let id = self.cluster.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, replies) = mpsc::channel(MAX_NODES);
        pending.insert(id, tx);
        Ok(Request { node: self, id, replies })
    }

    /// Every live node of the cluster, this one first, with its figures (this node's now,
    /// the others' from their last heartbeat).
    pub fn cluster_info(&self) -> Vec<NodeInfo> {
        let others = self.cluster.registry().live(Instant::now(), self.cluster.ttl());
        std::iter::once(self.info()).chain(others.into_iter().filter(|n| n.uid != self.id)).collect()
    }

    /// Carries out a user command on this node's connections of the user.
    fn apply_user_command(&self, command: &UserCommand) {
        match command {
            UserCommand::Subscribe { user, channel, client } => {
                for conn in self.hub.user_connections(user, client.as_deref()) {
                    conn.outbox.control(Control::Subscribe(channel.clone()));
                }
            }
            UserCommand::Unsubscribe { user, channel, client } => {
                for conn in self.hub.user_connections(user, client.as_deref()) {
                    conn.outbox.control(Control::Unsubscribe(channel.clone()));
                }
            }
            UserCommand::Disconnect { user, client, code, reason } => {
                let disconnect = Disconnect { code: *code, reason: Cow::Owned(reason.clone()) };
                for conn in self.hub.user_connections(user, client.as_deref()) {
                    conn.outbox.control(Control::Disconnect(disconnect.clone()));
                }
            }
            UserCommand::Refresh { user, client, expired, expire_at } => {
                for conn in self.hub.user_connections(user, client.as_deref()) {
                    conn.outbox.control(Control::Refresh { expired: *expired, expire_at: *expire_at });
                }
            }
            UserCommand::Unknown => {}
        }
    }

    /// Checks a command before it is carried out anywhere.
    fn check_user_command(&self, command: &UserCommand) -> ApiResult<()> {
        match command {
            UserCommand::Subscribe { channel, .. } | UserCommand::Unsubscribe { channel, .. } => {
                self.namespaces.resolve(channel)?;
            }
            UserCommand::Disconnect { code, .. } if !(3000..5000).contains(code) => {
                return Err(ERROR_BAD_REQUEST.into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Carries out a user command on every node of the cluster: here at once, elsewhere
    /// when the broker delivers it. Fails when the other nodes could not be told.
    pub async fn user_command(&self, command: UserCommand) -> ApiResult<()> {
        self.check_user_command(&command)?;
        self.apply_user_command(&command);
        self.send(None, Message::User(command)).await
    }

    /// [`Node::user_command`] without waiting for the broker (for callers that cannot
    /// wait, e.g. the chat removing a member): the other nodes are told in the background.
    pub fn user_command_detached(&self, command: UserCommand) -> ApiResult<()> {
        self.check_user_command(&command)?;
        self.apply_user_command(&command);
        self.send_detached(None, Message::User(command));
        Ok(())
    }

    /// This node's channels matching `pattern`, with their subscribers, bounded by
    /// [`MAX_CHANNELS_ANSWER`] and [`MAX_CHANNELS_REPLY_BYTES`]; true when some were left out.
    pub fn local_channels(&self, pattern: &str) -> (Vec<(String, u32)>, bool) {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        for (name, n) in self.hub.channels() {
            if !matches_pattern(pattern, &name) {
                continue;
            }
            // The name, its quotes, the count and the punctuation around them.
            let len = name.len() + 16;
            if out.len() >= MAX_CHANNELS_ANSWER || bytes + len > MAX_CHANNELS_REPLY_BYTES {
                truncated = true;
                break;
            }
            bytes += len;
            out.push((name, n.min(u32::MAX as usize) as u32));
        }
        (out, truncated)
    }

    /// The channels of the whole cluster matching `pattern`: this node's, and those of
    /// every live node that answers within about a heartbeat interval (what arrived by
    /// then is the answer; `missing_nodes` counts the others).
    pub async fn cluster_channels(&self, pattern: &str) -> ApiResult<ChannelsAnswer> {
        let mut answer = ChannelsAnswer::default();
        let (local, truncated) = self.local_channels(pattern);
        answer.merge(local, truncated);
        let mut waiting = self.cluster.registry().live_ids(Instant::now(), self.cluster.ttl());
        waiting.remove(&self.id);
        if waiting.is_empty() {
            return Ok(answer);
        }
        let mut request = self.open_request()?;
        self.send(None, Message::ChannelsRequest { id: request.id, pattern: pattern.to_owned() }).await?;
        let deadline = tokio::time::Instant::now() + self.cluster.reply_wait();
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, request.replies.recv()).await {
                Ok(Some((from, Message::ChannelsReply { channels, truncated, .. }))) => {
                    if waiting.remove(&from) {
                        answer.merge(channels, truncated);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !waiting.is_empty() {
            tracing::info!(nodes = ?waiting, "channels: some live nodes did not answer in time");
        }
        answer.missing_nodes = waiting.len();
        Ok(answer)
    }

    /// Queues commands posted for an emulation session of this node.
    pub fn deliver_emulation(&self, session: &str, commands: Bytes) -> EmulationOutcome {
        let Some(conn) = self.hub.session(session) else {
            tracing::info!(%session, "emulation request for an unknown session");
            return EmulationOutcome::UnknownSession;
        };
        match conn.outbox.try_control(Control::Commands(commands)) {
            Ok(()) => EmulationOutcome::Accepted,
            Err(d) => {
                tracing::info!(%session, code = d.code, "emulation request for a closing session");
                EmulationOutcome::Closed { code: d.code, reason: d.reason.into_owned() }
            }
        }
    }

    /// Delivers commands posted to `/emulation` to the session, on whichever node holds it
    /// (`node`, from the session's connect reply; empty: this one). Returns once the
    /// session's node accepted them.
    pub async fn emulation(&self, node: &str, session: &str, commands: Bytes) -> Result<(), EmulationError> {
        let outcome = if node.is_empty() || node == self.id {
            self.deliver_emulation(session, commands)
        } else {
            if !self.cluster.registry().is_live(node, Instant::now(), self.cluster.ttl()) {
                tracing::info!(%node, "emulation request for a node that is not live");
                return Err(EmulationError::UnknownSession);
            }
            let mut request = self.open_request().map_err(EmulationError::Unavailable)?;
            let (commands, commands_b64) = match std::str::from_utf8(&commands) {
                Ok(text) => (text.to_owned(), String::new()),
                Err(_) => (String::new(), hubbub_protocol::payload::to_base64(&commands)),
            };
            let message = Message::EmulationRequest {
                id: request.id,
                session: session.to_owned(),
                commands,
                commands_b64,
            };
            self.send(Some(node), message).await.map_err(EmulationError::Unavailable)?;
            let wait = self.cluster.reply_wait();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, request.replies.recv()).await {
                    Ok(Some((from, Message::EmulationReply { outcome, .. }))) if from == node => {
                        break outcome
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        tracing::warn!(%node, %session, ?wait, "emulation request: the session's node did not answer");
                        return Err(EmulationError::Timeout(wait));
                    }
                }
            }
        };
        match outcome {
            EmulationOutcome::Accepted => Ok(()),
            EmulationOutcome::UnknownSession => Err(EmulationError::UnknownSession),
            EmulationOutcome::Closed { code, reason } => {
                Err(EmulationError::Closed(Disconnect { code, reason: Cow::Owned(reason) }))
            }
        }
    }

    /// Tells the other nodes this one is leaving (a graceful shutdown).
    pub(crate) fn announce_leave(&self) {
        self.cluster.leaving.store(true, Ordering::Relaxed);
        self.send_detached(None, Message::Leave);
    }

    /// A control message from the broker.
    pub(crate) fn on_control(&self, bytes: &[u8]) {
        let envelope = match decode(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::debug!(error = %e, "control message not understood: ignored");
                return;
            }
        };
        let Envelope { v, from, msg } = envelope;
        if from == self.id {
            return;
        }
        match msg {
            Message::Heartbeat(info) => {
                if info.uid != from {
                    tracing::debug!(%from, "heartbeat with another node's id: ignored");
                    return;
                }
                let heard = self.cluster.registry().heard(info, Instant::now());
                match heard {
                    Heard::New => {
                        self.cluster.registry_full.store(false, Ordering::Relaxed);
                        tracing::info!(node = %from, "node joined the cluster");
                        // Let the newcomer know this node now, not at the next heartbeat.
                        if !self.cluster.leaving.load(Ordering::Relaxed) {
                            self.send_detached(Some(&from), Message::Heartbeat(self.info()));
                        }
                    }
                    Heard::Known => {}
                    Heard::Refused => {
                        if !self.cluster.registry_full.swap(true, Ordering::Relaxed) {
                            tracing::warn!(node = %from, max = MAX_NODES, "node registry full (or node info oversized): heartbeat ignored");
                        }
                    }
                }
            }
            Message::Leave => {
                self.cluster.registry().remove(&from);
                tracing::info!(node = %from, "node left the cluster");
            }
            Message::User(UserCommand::Unknown) => {
                tracing::debug!(%from, v, "user command of a newer node: ignored");
            }
            Message::User(command) => {
                if self.check_user_command(&command).is_ok() {
                    self.apply_user_command(&command);
                }
            }
            Message::ChannelsRequest { id, pattern } => {
                let (channels, truncated) = self.local_channels(&pattern);
                self.send_detached(Some(&from), Message::ChannelsReply { id, channels, truncated });
            }
            Message::EmulationRequest { id, session, commands, commands_b64 } => {
                let commands = if commands_b64.is_empty() {
                    Bytes::from(commands)
                } else {
                    match hubbub_protocol::payload::from_base64(&commands_b64) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(e) => {
                            tracing::warn!(%from, error = %e, "emulation request with bad base64: dropped");
                            return;
                        }
                    }
                };
                let outcome = self.deliver_emulation(&session, commands);
                self.send_detached(Some(&from), Message::EmulationReply { id, outcome });
            }
            reply @ (Message::ChannelsReply { .. } | Message::EmulationReply { .. }) => {
                let id = match &reply {
                    Message::ChannelsReply { id, .. } | Message::EmulationReply { id, .. } => *id,
                    _ => unreachable!("matched above"),
                };
                let waiting = self.cluster.pending().get(&id).cloned();
                if let Some(tx) = waiting {
                    // Full only with more replies than nodes: a duplicate, dropped.
                    let _ = tx.try_send((from, reply));
                }
            }
            Message::Unknown => tracing::debug!(%from, v, "control message of a newer node: ignored"),
        }
    }

    /// The broker may have missed deliveries to this node: brings every channel's
    /// subscribers here back in sync, in the background (see [`Node::bring_in_sync`]).
    pub(crate) fn resync(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move { node.bring_in_sync(Trigger::Resync).await });
    }

    /// Finds this node's subscribers that missed publications and makes them recover.
    ///
    /// After a resync, a channel whose application keeps its stream (`ChannelHooks`, the
    /// chat's rooms) is first handed to its hooks, which may fill the gap themselves. For
    /// the others, and for every channel at a periodic check, each positioned subscriber's
    /// last offset is compared with the stream's top; one still behind after
    /// [`POSITION_GRACE`] (publications in flight) is told to resubscribe (unsubscribe push
    /// 2500 "insufficient state": the SDK subscribes again and recovers from the stream;
    /// a server-side subscription is disconnected with 3010 instead, and recovers on
    /// reconnect). A channel without a stream cannot recover what it missed.
    async fn bring_in_sync(&self, trigger: Trigger) {
        let _one_at_a_time = self.cluster.checking.lock().await;
        let mut tops = Vec::new();
        for (channel, _) in self.hub.channels() {
            let Ok((ns, _)) = self.namespaces.resolve(&channel) else { continue };
            let hooks = self.channel_hooks(ns);
            if trigger == Trigger::Resync {
                if let Some(hooks) = &hooks {
                    if hooks.resync(&channel).await {
                        continue;
                    }
                }
            }
            if !self.has_stream(ns) {
                if trigger == Trigger::Resync {
                    tracing::debug!(%channel, "publications the broker lost meanwhile cannot be recovered: the channel keeps no stream");
                }
                continue;
            }
            let subscribers = self.hub.positions(&channel);
            if subscribers.is_empty() {
                continue;
            }
            let query = HistoryQuery { limit: Some(0), ..Default::default() };
            let top = match self.read_stream(&channel, ns, query).await {
                Ok(page) => page.position,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "position check: stream not read");
                    continue;
                }
            };
            let behind: Vec<Arc<Connection>> = subscribers
                .into_iter()
                .filter(|s| s.epoch != top.epoch || s.offset < top.offset)
                .map(|s| s.conn)
                .collect();
            if !behind.is_empty() {
                tops.push((channel, top, behind));
            }
        }
        if tops.is_empty() {
            return;
        }
        tokio::time::sleep(POSITION_GRACE).await;
        for (channel, top, behind) in tops {
            let behind: Vec<Arc<Connection>> = behind
                .into_iter()
                .filter(|conn| {
                    self.hub
                        .position(&channel, conn)
                        .is_some_and(|(epoch, offset)| epoch != top.epoch || offset < top.offset)
                })
                .collect();
            if behind.is_empty() {
                continue;
            }
            if trigger == Trigger::Periodic {
                let hooks = self.namespaces.resolve(&channel).ok().and_then(|(ns, _)| self.channel_hooks(ns));
                if let Some(hooks) = hooks {
                    if hooks.resync(&channel).await {
                        continue;
                    }
                }
            }
            tracing::info!(%channel, subscribers = behind.len(), ?trigger, top = top.offset, "subscribers missed publications: making them recover");
            for conn in behind {
                conn.outbox.control(Control::Resubscribe(channel.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uid: &str) -> NodeInfo {
        NodeInfo { uid: uid.into(), name: format!("n-{uid}"), version: "1".into(), ..Default::default() }
    }

    #[test]
    fn messages_round_trip() {
        let messages = vec![
            Message::Heartbeat(info("a")),
            Message::Leave,
            Message::User(UserCommand::Disconnect {
                user: "u".into(),
                client: None,
                code: 3503,
                reason: "bye".into(),
            }),
            Message::User(UserCommand::Refresh {
                user: "u".into(),
                client: Some("c".into()),
                expired: false,
                expire_at: Some(5),
            }),
            Message::ChannelsRequest { id: 7, pattern: "chat:*".into() },
            Message::ChannelsReply { id: 7, channels: vec![("chat:1".into(), 2)], truncated: false },
            Message::EmulationRequest {
                id: 8,
                session: "s".into(),
                commands: "{\"id\":1}".into(),
                commands_b64: String::new(),
            },
            Message::EmulationRequest {
                id: 9,
                session: "s".into(),
                commands: String::new(),
                commands_b64: hubbub_protocol::payload::to_base64(&[0x0a, 0xff]),
            },
            Message::EmulationReply {
                id: 8,
                outcome: EmulationOutcome::Closed { code: 3008, reason: "slow".into() },
            },
        ];
        for msg in messages {
            let bytes = encode("node-a", msg.clone());
            let kind: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(KNOWN_TYPES.contains(&kind["msg"]["type"].as_str().unwrap()), "{kind}");
            let back = decode(&bytes).unwrap();
            assert_eq!(back.v, CONTROL_VERSION);
            assert_eq!(back.from, "node-a");
            assert_eq!(format!("{:?}", back.msg), format!("{msg:?}"));
        }
    }

    #[test]
    fn the_wire_format_is_stable() {
        let bytes = encode(
            "a",
            Message::User(UserCommand::Subscribe { user: "u".into(), channel: "news".into(), client: None }),
        );
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"from":"a","msg":{"type":"user","body":{"op":"subscribe","user":"u","channel":"news"}}}"#
        );
    }

    #[test]
    fn what_a_newer_node_adds_is_ignored() {
        // An unknown message type, with or without a body.
        let unknown = decode(br#"{"v":9,"from":"b","msg":{"type":"teleport","body":{"x":1}}}"#).unwrap();
        assert!(matches!(unknown.msg, Message::Unknown));
        let unknown = decode(br#"{"v":9,"from":"b","msg":{"type":"teleport"}}"#).unwrap();
        assert!(matches!(unknown.msg, Message::Unknown));
        // An unknown user operation.
        let op = decode(br#"{"v":9,"from":"b","msg":{"type":"user","body":{"op":"promote","user":"u"}}}"#)
            .unwrap();
        assert!(matches!(op.msg, Message::User(UserCommand::Unknown)));
        // Unknown fields of known messages, and a heartbeat missing figures.
        let heartbeat = decode(
            br#"{"v":2,"from":"b","extra":1,"msg":{"type":"heartbeat","body":{"uid":"b","name":"n","color":"red"}}}"#,
        )
        .unwrap();
        match heartbeat.msg {
            Message::Heartbeat(info) => assert_eq!((info.uid.as_str(), info.num_clients), ("b", 0)),
            other => panic!("{other:?}"),
        }
        // A known type whose body does not fit: an error.
        assert!(decode(br#"{"v":1,"from":"b","msg":{"type":"heartbeat","body":[1]}}"#).is_err());
        // Not an envelope: an error, never a panic.
        for junk in [&b""[..], b"null", b"{", b"\xff\xfe", br#"{"v":"x"}"#, br#"{"v":1,"from":"b"}"#] {
            assert!(decode(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_registry_forgets_silent_nodes_and_is_bounded() {
        let ttl = Duration::from_secs(6);
        let t0 = Instant::now();
        let mut registry = Registry::new(3);
        assert_eq!(registry.heard(info("a"), t0), Heard::New);
        assert_eq!(registry.heard(info("b"), t0), Heard::New);
        assert_eq!(registry.heard(info("a"), t0 + Duration::from_secs(4)), Heard::Known);
        let live: Vec<String> =
            registry.live(t0 + Duration::from_secs(5), ttl).into_iter().map(|n| n.uid).collect();
        assert_eq!(live, ["a", "b"]);
        // b was last heard at t0: gone after the ttl; a, heard at t0+4, stays.
        let live: Vec<String> =
            registry.live(t0 + Duration::from_secs(7), ttl).into_iter().map(|n| n.uid).collect();
        assert_eq!(live, ["a"]);
        assert!(!registry.is_live("b", t0 + Duration::from_secs(7), ttl));

        // A flood of made-up ids: at most `max` kept.
        for i in 0..100 {
            registry.heard(info(&format!("fake{i}")), t0 + Duration::from_secs(7));
        }
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.heard(info("c"), t0 + Duration::from_secs(7)), Heard::Refused);
        // Known nodes keep beating meanwhile.
        assert_eq!(registry.heard(info("a"), t0 + Duration::from_secs(8)), Heard::Known);
        // Once the fakes expire, there is room again.
        registry.heard(info("a"), t0 + Duration::from_secs(20));
        registry.prune(t0 + Duration::from_secs(20), ttl);
        assert_eq!(registry.heard(info("c"), t0 + Duration::from_secs(20)), Heard::New);
        // Oversized info is refused.
        let mut big = info("d");
        big.name = "x".repeat(MAX_INFO_FIELD + 1);
        assert_eq!(registry.heard(big, t0 + Duration::from_secs(20)), Heard::Refused);
        registry.remove("a");
        assert!(!registry.is_live("a", t0 + Duration::from_secs(20), ttl));
    }

    #[test]
    fn channel_answers_merge_within_the_bound() {
        let mut answer = ChannelsAnswer::default();
        answer.merge(vec![("a".into(), 1), ("b".into(), 2)], false);
        answer.merge(vec![("a".into(), 3)], false);
        assert_eq!(answer.channels["a"], 4);
        assert_eq!(answer.channels["b"], 2);
        assert!(!answer.truncated);
        answer.merge((0..MAX_CHANNELS_ANSWER as u32 + 5).map(|i| (format!("c{i}"), 1)), false);
        assert_eq!(answer.channels.len(), MAX_CHANNELS_ANSWER);
        assert!(answer.truncated);
        // Counts of channels already in the answer still add up.
        answer.merge(vec![("a".into(), 1)], false);
        assert_eq!(answer.channels["a"], 5);
    }

    /// The memory broker, losing the deliveries of publications while `losing` is set: what
    /// a broken PUB/SUB connection does to a node (the stream itself keeps everything).
    struct Lossy {
        inner: crate::engine::memory::MemoryBroker,
        losing: Arc<AtomicBool>,
        events: std::sync::OnceLock<Arc<dyn crate::engine::BrokerEvents>>,
    }

    struct LossyEvents {
        inner: Arc<dyn crate::engine::BrokerEvents>,
        losing: Arc<AtomicBool>,
    }

    impl crate::engine::BrokerEvents for LossyEvents {
        fn on_publication(&self, channel: &str, publication: hubbub_protocol::Publication) {
            if !self.losing.load(Ordering::SeqCst) {
                self.inner.on_publication(channel, publication);
            }
        }
        fn on_join(&self, channel: &str, info: hubbub_protocol::ClientInfo) {
            self.inner.on_join(channel, info);
        }
        fn on_leave(&self, channel: &str, info: hubbub_protocol::ClientInfo) {
            self.inner.on_leave(channel, info);
        }
        fn on_control(&self, message: &[u8]) {
            self.inner.on_control(message);
        }
        fn on_resync(&self) {
            self.inner.on_resync();
        }
    }

    #[async_trait::async_trait]
    impl Broker for Lossy {
        async fn start(
            &self,
            node_id: &str,
            events: Arc<dyn crate::engine::BrokerEvents>,
        ) -> Result<(), crate::engine::EngineError> {
            let _ = self.events.set(events.clone());
            let lossy = Arc::new(LossyEvents { inner: events, losing: self.losing.clone() });
            self.inner.start(node_id, lossy).await
        }
        async fn subscribe(&self, channel: &str) -> Result<(), crate::engine::EngineError> {
            self.inner.subscribe(channel).await
        }
        async fn unsubscribe(&self, channel: &str) -> Result<(), crate::engine::EngineError> {
            self.inner.unsubscribe(channel).await
        }
        async fn publish(
            &self,
            channel: &str,
            publication: hubbub_protocol::Publication,
            history: crate::engine::HistoryOptions,
        ) -> Result<hubbub_protocol::StreamPosition, crate::engine::EngineError> {
            self.inner.publish(channel, publication, history).await
        }
        async fn publish_join(
            &self,
            channel: &str,
            info: hubbub_protocol::ClientInfo,
        ) -> Result<(), crate::engine::EngineError> {
            self.inner.publish_join(channel, info).await
        }
        async fn publish_leave(
            &self,
            channel: &str,
            info: hubbub_protocol::ClientInfo,
        ) -> Result<(), crate::engine::EngineError> {
            self.inner.publish_leave(channel, info).await
        }
        async fn history(
            &self,
            channel: &str,
            query: HistoryQuery,
            history: crate::engine::HistoryOptions,
        ) -> Result<crate::engine::HistoryPage, crate::engine::EngineError> {
            self.inner.history(channel, query, history).await
        }
        async fn remove_history(&self, channel: &str) -> Result<(), crate::engine::EngineError> {
            self.inner.remove_history(channel).await
        }
        async fn publish_control(
            &self,
            to: Option<&str>,
            message: Bytes,
        ) -> Result<(), crate::engine::EngineError> {
            self.inner.publish_control(to, message).await
        }
    }

    async fn node_with(broker: Arc<dyn Broker>) -> Arc<Node> {
        use crate::channel::{NamespaceConfig, Namespaces};
        let no_history = NamespaceConfig {
            name: "live".into(),
            history_size: 0,
            force_recovery: false,
            ..Default::default()
        };
        Node::start(crate::NodeOptions {
            name: "test".into(),
            version: "0".into(),
            client: Default::default(),
            namespaces: Namespaces::new(&[NamespaceConfig::default(), no_history]).unwrap(),
            tokens: crate::auth::Tokens::new("secret"),
            allow_anonymous: true,
            broker,
            presence: Arc::new(crate::engine::memory::MemoryPresence::new()),
            rpc: Default::default(),
            cluster: Default::default(),
        })
        .await
        .unwrap()
    }

    /// Frames and the first instruction queued for a connection.
    fn drain(conn: &Connection) -> (Vec<serde_json::Value>, Option<Control>) {
        let mut frames = Vec::new();
        let control = conn.outbox.drain_frames(&mut frames);
        let frames = frames
            .iter()
            .flat_map(|f| {
                f.split(|b| *b == b'\n').map(|l| serde_json::from_slice(l).unwrap()).collect::<Vec<_>>()
            })
            .collect();
        (frames, control)
    }

    #[tokio::test]
    async fn a_subscriber_that_missed_publications_resubscribes_after_a_resync() {
        let losing = Arc::new(AtomicBool::new(false));
        let broker = Arc::new(Lossy {
            inner: crate::engine::memory::MemoryBroker::new(),
            losing: losing.clone(),
            events: Default::default(),
        });
        let node = node_with(broker.clone()).await;
        let kind = crate::session::TransportKind::WEBSOCKET;
        let mut session = crate::Session::new(node.clone(), kind);
        let conn = session.connection().clone();
        session.handle_frame(r#"{"id":1,"connect":{}}"#).await.unwrap();
        session.handle_frame(r#"{"id":2,"subscribe":{"channel":"news"}}"#).await.unwrap();
        session.handle_frame(r#"{"id":3,"subscribe":{"channel":"live:x"}}"#).await.unwrap();
        let data = || hubbub_protocol::json_from_str("{}").unwrap();
        node.publish("news", data(), None).await.unwrap();
        let (frames, control) = drain(&conn);
        assert!(control.is_none());
        assert_eq!(frames.last().unwrap()["push"]["pub"]["offset"], 1, "{frames:?}");

        // In sync: a resync changes nothing.
        broker.events.get().unwrap().on_resync();
        tokio::time::sleep(POSITION_GRACE + Duration::from_millis(300)).await;
        let (frames, control) = drain(&conn);
        assert!(frames.is_empty() && control.is_none(), "{frames:?} {control:?}");

        // Publication 2 is lost on its way to this node; 3 arrives.
        losing.store(true, Ordering::SeqCst);
        node.publish("news", data(), None).await.unwrap();
        node.publish("live:x", data(), None).await.unwrap();
        losing.store(false, Ordering::SeqCst);
        broker.events.get().unwrap().on_resync();
        tokio::time::sleep(POSITION_GRACE + Duration::from_millis(300)).await;
        let (frames, control) = drain(&conn);
        assert!(frames.is_empty(), "{frames:?}");
        let Some(control @ Control::Resubscribe(_)) = control else { panic!("{control:?}") };
        assert!(matches!(&control, Control::Resubscribe(c) if c == "news"), "only the channel with a stream");
        // The session tells the client to subscribe again (code 2500: the SDK resubscribes
        // and recovers from its position).
        session.handle_control(control).await.unwrap();
        let (frames, control) = drain(&conn);
        assert!(control.is_none(), "{control:?}");
        let unsubscribe =
            frames.iter().find(|f| f["push"]["unsubscribe"].is_object()).expect("unsubscribe push");
        assert_eq!(unsubscribe["push"]["channel"], "news");
        assert_eq!(unsubscribe["push"]["unsubscribe"]["code"], 2500);
        // Recovering from its last position brings the lost publication.
        session
            .handle_frame(
                r#"{"id":4,"subscribe":{"channel":"news","recover":true,"offset":1,"epoch":"EPOCH"}}"#
                    .replace("EPOCH", unsubscribe_epoch(&node).await.as_str())
                    .as_str(),
            )
            .await
            .unwrap();
        let (frames, _) = drain(&conn);
        let reply = frames.iter().find(|f| f["id"] == 4).expect("subscribe reply");
        assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
        assert_eq!(reply["subscribe"]["publications"][0]["offset"], 2, "{reply}");
    }

    async fn unsubscribe_epoch(node: &Node) -> String {
        node.history("news", 0, None, false).await.unwrap().position.epoch
    }

    #[tokio::test]
    async fn control_from_other_nodes_reaches_local_connections() {
        let node = node_with(Arc::new(crate::engine::memory::MemoryBroker::new())).await;
        let mut session = crate::Session::new(node.clone(), crate::session::TransportKind::WEBSOCKET);
        let conn = session.connection().clone();
        session.handle_frame(r#"{"id":1,"connect":{}}"#).await.unwrap();
        drain(&conn);
        // A node that is not this one, over the control channel.
        let other = |msg| node.on_control(&encode("other", msg));
        other(Message::Heartbeat(NodeInfo { uid: "other".into(), name: "b".into(), ..Default::default() }));
        let nodes: Vec<String> = node.cluster_info().into_iter().map(|n| n.uid).collect();
        assert_eq!(nodes, [node.id.clone(), "other".into()], "this node first");
        other(Message::User(UserCommand::Subscribe {
            user: String::new(),
            channel: "news".into(),
            client: None,
        }));
        let (_, control) = drain(&conn);
        assert!(matches!(control, Some(Control::Subscribe(c)) if c == "news"));
        // A command naming an unknown namespace is checked on arrival too.
        other(Message::User(UserCommand::Subscribe {
            user: String::new(),
            channel: "nope:x".into(),
            client: None,
        }));
        assert!(drain(&conn).1.is_none());
        other(Message::User(UserCommand::Disconnect {
            user: String::new(),
            client: None,
            code: 42,
            reason: "x".into(),
        }));
        assert!(drain(&conn).1.is_none(), "a code outside 3000..4999 is refused");
        // Junk and a newer node's messages change nothing.
        node.on_control(b"\xff");
        node.on_control(br#"{"v":7,"from":"other","msg":{"type":"teleport","body":1}}"#);
        assert!(drain(&conn).1.is_none());
        other(Message::Leave);
        assert_eq!(node.cluster_info().len(), 1);
        // What this node sent itself is ignored (it did its part directly).
        node.on_control(&encode(
            &node.id,
            Message::User(UserCommand::Subscribe {
                user: String::new(),
                channel: "news".into(),
                client: None,
            }),
        ));
        assert!(drain(&conn).1.is_none());
    }

    #[test]
    fn patterns() {
        assert!(matches_pattern("", "a"));
        assert!(matches_pattern("chat:*", "chat:1"));
        assert!(!matches_pattern("chat:*", "news"));
        assert!(matches_pattern("*:1", "chat:1"));
        assert!(matches_pattern("a*b*c", "aXXbYYc"));
        assert!(!matches_pattern("a*b*c", "aXXbYY"));
        assert!(matches_pattern("exact", "exact"));
        assert!(!matches_pattern("exact", "exactly"));
    }
}
