//! The node: everything one server process shares between its connections, and the
//! operations that the server HTTP API and the application call (publish, presence,
//! history, server-side subscribe, disconnect...).

use crate::auth::{TokenError, Tokens};
use crate::channel::{ChannelError, ChannelName, NamespaceConfig, Namespaces};
use crate::cluster::{Cluster, ClusterOptions, UserCommand};
use crate::engine::{
    Broker, BrokerEvents, EngineError, HistoryOptions, HistoryPage, HistoryQuery, PresenceStats,
    PresenceStore,
};
use crate::hooks::{ChannelHooks, UserEvents};
use crate::hub::Hub;
use crate::outbox::Control;
use crate::rpc::RpcRegistry;
use hubbub_protocol::codes::*;
use hubbub_protocol::{ClientInfo, Disconnect, Json, ProtocolError, Publication, StreamPosition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

/// Per-connection settings and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The server sends a ping this often; the client answers with a pong.
    #[serde(with = "crate::duration::serde_human")]
    pub ping_interval: Duration,
    /// A ping unanswered for this long ends the connection ("no pong").
    #[serde(with = "crate::duration::serde_human")]
    pub pong_timeout: Duration,
    /// Bound of a connection's outgoing queue; a subscriber over it is disconnected as slow.
    pub queue_max_bytes: usize,
    /// Longest a write to a client may wait (its socket or stream full: the client does
    /// not read); then the connection ends. Without it, a client that stops reading but
    /// keeps its TCP connection open would hold its connection's task, buffers and
    /// subscriptions forever, its slow disconnect stuck behind the blocked write.
    #[serde(with = "crate::duration::serde_human")]
    pub write_timeout: Duration,
    /// Largest answer built for a client, in bytes of publications (history, recovery,
    /// polls; the chat's REST pages): what does not fit is paged. At most
    /// `queue_max_bytes`, so that the server's own answer never makes a connection slow;
    /// 0 (the default) for half of it, leaving room for live deliveries meanwhile. Read it
    /// with [`ClientConfig::answer_bytes`].
    pub max_answer_bytes: usize,
    /// Most publications one history answer carries, whatever `limit` asks.
    pub max_history_limit: usize,
    /// Largest incoming frame accepted.
    pub max_message_size: usize,
    /// Commands a connection may send per second (a token bucket of this size).
    pub commands_per_second: u32,
    /// Channels one connection may subscribe to.
    pub max_channels: usize,
    /// Connections one user may hold open on this node at once (0: no limit; anonymous
    /// connections are not counted per user). One more is refused with 3504. Node-local:
    /// a user may hold this many on every node of a cluster. (Formerly
    /// `max_connections_per_user`, still read.)
    #[serde(alias = "max_connections_per_user")]
    pub user_connection_limit: usize,
    /// Connections this node holds at most (0: no limit); a connection request over it is
    /// answered 503 before any upgrade, as Centrifugo does.
    pub connection_limit: usize,
    /// Connection requests this node accepts per second (0: no limit); the others are
    /// answered 503.
    pub connection_rate_limit: u32,
    /// Connection requests one IP address may make per second (0: no limit); the others
    /// are answered 429. The addresses are kept in a map bounded by
    /// `connection_rate_limit_max_ips`.
    pub connection_rate_limit_per_ip: u32,
    /// Most addresses the per-IP limiter tracks at once; when full, an address not in it
    /// is refused until a slot frees (slots free within a second).
    pub connection_rate_limit_max_ips: usize,
    /// Everything allowed: connect without a token, subscribe, publish, presence and
    /// history on any channel. For demos and test suites only; logged at every start.
    pub insecure: bool,
    /// Subscribe every user to its personal channel at connect.
    pub subscribe_to_user_personal_channel: PersonalChannel,
    /// How long an expired connection or subscription token is tolerated before the
    /// connection is closed, so that the client's refresh (sent at expiry) can arrive.
    #[serde(with = "crate::duration::serde_human")]
    pub expired_close_delay: Duration,
    /// Largest tags filter a subscription may carry: bytes of its keys and values, plus 8
    /// for each node and value. The hub runs every subscriber's filter for every
    /// publication of the channel, and keeps it as long as the subscription.
    pub tags_filter_max_bytes: usize,
    /// Deepest nesting of a tags filter (`and`/`or`/`not` levels; a comparison alone is 1).
    pub tags_filter_max_depth: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            queue_max_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            max_answer_bytes: 0,
            max_history_limit: 1000,
            max_message_size: 65536,
            commands_per_second: 100,
            max_channels: 128,
            user_connection_limit: 100,
            connection_limit: 0,
            connection_rate_limit: 0,
            connection_rate_limit_per_ip: 0,
            connection_rate_limit_max_ips: 65536,
            insecure: false,
            subscribe_to_user_personal_channel: PersonalChannel::default(),
            expired_close_delay: Duration::from_secs(25),
            tags_filter_max_bytes: 2048,
            tags_filter_max_depth: 8,
        }
    }
}

/// `client.subscribe_to_user_personal_channel` (Centrifugo's names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonalChannel {
    pub enabled: bool,
    /// Namespace of the personal channels (`""`: the default one).
    pub personal_channel_namespace: String,
}

impl ClientConfig {
    /// The bounds of one subscription's tags filter.
    pub fn tags_filter_limits(&self) -> crate::tags_filter::FilterLimits {
        crate::tags_filter::FilterLimits {
            max_depth: self.tags_filter_max_depth,
            max_bytes: self.tags_filter_max_bytes,
        }
    }

    /// The bound of one answer in bytes: `max_answer_bytes`, or half of `queue_max_bytes`
    /// when it is 0, never more than the queue.
    pub fn answer_bytes(&self) -> usize {
        match self.max_answer_bytes {
            0 => self.queue_max_bytes / 2,
            n => n.min(self.queue_max_bytes),
        }
    }
}

/// What a [`Node`] is built from.
pub struct NodeOptions {
    pub name: String,
    pub version: String,
    pub client: ClientConfig,
    pub namespaces: Namespaces,
    pub tokens: Tokens,
    pub allow_anonymous: bool,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub rpc: RpcRegistry,
    /// The node's part in a cluster: heartbeats, position checks.
    pub cluster: ClusterOptions,
}

pub struct Node {
    /// Unique per process start; tells nodes apart in a cluster.
    pub id: String,
    pub name: String,
    pub version: String,
    pub client: ClientConfig,
    pub namespaces: Namespaces,
    pub tokens: Tokens,
    pub allow_anonymous: bool,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    rpc: RwLock<RpcRegistry>,
    hooks: Hooks,
    user_events: RwLock<Option<Arc<dyn UserEvents>>>,
    /// The backends that decide for the node (`proxy.rs`); set once at start.
    proxies: std::sync::OnceLock<crate::proxy::Proxies>,
    started: Instant,
    pub(crate) cluster: Cluster,
}

/// An error of a node operation, as the server API reports it.
pub type ApiResult<T> = Result<T, ProtocolError>;

impl From<ChannelError> for ProtocolError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::UnknownNamespace(_) => ERROR_UNKNOWN_CHANNEL.into(),
            ChannelError::Empty | ChannelError::TooLong => ERROR_BAD_REQUEST.into(),
        }
    }
}

impl From<EngineError> for ProtocolError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnrecoverablePosition => ERROR_UNRECOVERABLE_POSITION.into(),
            EngineError::Unavailable(reason) => {
                tracing::error!(%reason, "engine unavailable");
                ERROR_INTERNAL.into()
            }
        }
    }
}

/// Applications' hooks by namespace, shared by the node and what the broker delivers to.
type Hooks = Arc<RwLock<HashMap<String, Arc<dyn ChannelHooks>>>>;

/// Hands what the broker delivers to the hub, with the namespace's join/leave policy, and
/// control messages and resyncs to the node (`cluster.rs`).
struct HubEvents {
    hub: Arc<Hub>,
    namespaces: Namespaces,
    hooks: Hooks,
    node: Weak<Node>,
}

impl HubEvents {
    /// The hooks of the channel's namespace, if an application owns it.
    fn hooks(&self, channel: &str) -> Option<Arc<dyn ChannelHooks>> {
        let hooks = self.hooks.read().unwrap_or_else(|p| p.into_inner());
        if hooks.is_empty() {
            return None;
        }
        let (ns, _) = self.namespaces.resolve(channel).ok()?;
        hooks.get(&ns.name).cloned()
    }

    fn push_join_leave_to_all(&self, channel: &str) -> bool {
        self.namespaces.resolve(channel).map(|(ns, _)| ns.force_push_join_leave).unwrap_or(false)
    }
}

impl BrokerEvents for HubEvents {
    fn on_publication(&self, channel: &str, publication: Publication) {
        // An application that keeps the channel's stream may hold a publication back until
        // those before it arrived (the chat's rooms, published by several nodes).
        let publication = match self.hooks(channel) {
            Some(hooks) => match hooks.intercept_publication(channel, publication) {
                Some(publication) => publication,
                None => return,
            },
            None => publication,
        };
        let delta_publish = self.namespaces.resolve(channel).is_ok_and(|(ns, _)| ns.delta_publish);
        self.hub.broadcast_publication_with(channel, publication, delta_publish);
    }
    fn on_join(&self, channel: &str, info: ClientInfo) {
        self.hub.broadcast_join(channel, info, self.push_join_leave_to_all(channel));
    }
    fn on_leave(&self, channel: &str, info: ClientInfo) {
        self.hub.broadcast_leave(channel, info, self.push_join_leave_to_all(channel));
    }
    fn on_control(&self, message: &[u8]) {
        if let Some(node) = self.node.upgrade() {
            node.on_control(message);
        }
    }
    fn on_resync(&self) {
        if let Some(node) = self.node.upgrade() {
            tracing::info!("the broker may have lost deliveries: checking every subscription");
            node.resync();
        }
    }
}

/// One node's figures, as the `info` API reports them and heartbeats carry them (missing
/// fields of another version's heartbeat read as their defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: usize,
    pub num_users: usize,
    pub num_channels: usize,
    /// Subscriptions on the node (a connection subscribed to 3 channels counts 3).
    pub num_subs: usize,
    /// Channel streams kept in this process's memory, and their estimated bytes (bounded by
    /// `engine.history_max_streams` and `engine.history_max_bytes`).
    pub history_streams: usize,
    pub history_bytes: usize,
    pub uptime: u64,
}

pub fn history_options(ns: &NamespaceConfig) -> HistoryOptions {
    HistoryOptions { size: ns.history_size, ttl: ns.history_ttl }
}

impl Node {
    /// Builds the node and connects its broker.
    pub async fn start(opts: NodeOptions) -> Result<Arc<Node>, EngineError> {
        let hub = Arc::new(Hub::new());
        let hooks = Hooks::default();
        let id = uuid::Uuid::new_v4().to_string();
        let (cluster, outgoing) = Cluster::new(opts.cluster.clone());
        let node = Arc::new(Node {
            id,
            name: opts.name,
            version: opts.version,
            client: opts.client,
            namespaces: opts.namespaces,
            tokens: opts.tokens,
            allow_anonymous: opts.allow_anonymous,
            hub: hub.clone(),
            broker: opts.broker,
            presence: opts.presence,
            rpc: RwLock::new(opts.rpc),
            hooks: hooks.clone(),
            user_events: RwLock::new(None),
            proxies: std::sync::OnceLock::new(),
            started: Instant::now(),
            cluster,
        });
        let events = Arc::new(HubEvents {
            hub,
            namespaces: node.namespaces.clone(),
            hooks,
            node: Arc::downgrade(&node),
        });
        node.broker.start(&node.id, events).await?;
        tokio::spawn(crate::cluster::send_loop(node.broker.clone(), outgoing));
        let weak = Arc::downgrade(&node);
        tokio::spawn(crate::cluster::heartbeat_loop(weak.clone(), opts.cluster.heartbeat_interval));
        if !opts.cluster.position_check_interval.is_zero() {
            tokio::spawn(crate::cluster::position_check_loop(weak, opts.cluster.position_check_interval));
        }
        Ok(node)
    }

    /// Adds an RPC method (an application registers its methods at start).
    pub fn register_rpc(&self, method: &str, handler: impl crate::rpc::RpcHandler) {
        self.rpc.write().unwrap_or_else(|p| p.into_inner()).register(method, handler);
    }

    pub fn rpc_handler(&self, method: &str) -> Option<Arc<dyn crate::rpc::RpcHandler>> {
        self.rpc.read().unwrap_or_else(|p| p.into_inner()).get(method).cloned()
    }

    /// Sets the node's proxies: once, at start, before any connection (an error otherwise).
    pub fn set_proxies(&self, proxies: crate::proxy::Proxies) -> Result<(), &'static str> {
        self.proxies.set(proxies).map_err(|_| "the node's proxies are already set")
    }

    /// The node's proxies (none unless [`Node::set_proxies`] set them).
    pub fn proxies(&self) -> &crate::proxy::Proxies {
        self.proxies.get_or_init(Default::default)
    }

    /// Hands the channels of `namespace` to an application's hooks.
    pub fn register_channel_hooks(&self, namespace: &str, hooks: Arc<dyn ChannelHooks>) {
        self.hooks.write().unwrap_or_else(|p| p.into_inner()).insert(namespace.to_owned(), hooks);
    }

    pub fn channel_hooks(&self, ns: &NamespaceConfig) -> Option<Arc<dyn ChannelHooks>> {
        self.hooks.read().unwrap_or_else(|p| p.into_inner()).get(&ns.name).cloned()
    }

    pub fn set_user_events(&self, events: Arc<dyn UserEvents>) {
        *self.user_events.write().unwrap_or_else(|p| p.into_inner()) = Some(events);
    }

    /// Registers a connection of `user` (refused when the user is at
    /// `client.user_connection_limit`); tells the application when the user comes online.
    pub fn add_connection(
        &self,
        user: &str,
        conn: &Arc<crate::hub::Connection>,
    ) -> Result<(), crate::hub::UserConnectionLimit> {
        if self.hub.add_connection(user, conn, self.client.user_connection_limit)? {
            if let Some(events) = self.user_events.read().unwrap_or_else(|p| p.into_inner()).clone() {
                events.online(user);
            }
        }
        Ok(())
    }

    pub fn remove_connection(&self, user: &str, conn: &crate::hub::Connection) {
        if self.hub.remove_connection(user, conn) {
            if let Some(events) = self.user_events.read().unwrap_or_else(|p| p.into_inner()).clone() {
                events.offline(user);
            }
        }
    }

    /// The personal channel `user` is subscribed to at connect, when
    /// `client.subscribe_to_user_personal_channel` is enabled: `#<user>`, or
    /// `<namespace>:#<user>` with its `personal_channel_namespace` (as Centrifugo names it).
    /// Anonymous connections have none.
    pub fn personal_channel(&self, user: &str) -> Option<String> {
        let personal = &self.client.subscribe_to_user_personal_channel;
        if !personal.enabled || user.is_empty() {
            return None;
        }
        Some(match personal.personal_channel_namespace.as_str() {
            "" => format!("#{user}"),
            ns => format!("{ns}:#{user}"),
        })
    }

    /// Whether channels of the namespace have a stream (the broker's history, or one an
    /// application keeps).
    pub fn has_stream(&self, ns: &NamespaceConfig) -> bool {
        ns.history_enabled() || self.channel_hooks(ns).is_some()
    }

    /// Reads a channel's stream from wherever it is kept.
    pub async fn read_stream(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        query: HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        match self.channel_hooks(ns) {
            Some(hooks) => hooks.history(channel, query).await,
            None => self.broker.history(channel, query, history_options(ns)).await,
        }
    }

    /// Publishes an event of an application-kept stream with the offset the application
    /// assigned (or 0 for an ephemeral event that is not part of the stream).
    pub async fn publish_with_offset(&self, channel: &str, data: Json, offset: u64) -> ApiResult<()> {
        let publication = Publication { data, info: None, offset, tags: None };
        self.broker.publish(channel, publication, HistoryOptions::default()).await?;
        Ok(())
    }

    /// Publishes `data` to `channel` on the server's behalf.
    pub async fn publish(
        &self,
        channel: &str,
        data: Json,
        info: Option<ClientInfo>,
    ) -> ApiResult<StreamPosition> {
        self.publish_tagged(channel, data, info, None).await
    }

    /// [`Node::publish`] with the publication's tags (kept in history with it).
    pub async fn publish_tagged(
        &self,
        channel: &str,
        data: Json,
        info: Option<ClientInfo>,
        tags: Option<HashMap<String, String>>,
    ) -> ApiResult<StreamPosition> {
        self.publish_publication(channel, Publication { data, info, offset: 0, tags }, false).await
    }

    /// Publishes a publication made by the caller (tags, info) to `channel`, kept in the
    /// namespace's history unless `skip_history` (then it has no offset). The server API's
    /// publish (`crate::api`).
    pub async fn publish_publication(
        &self,
        channel: &str,
        publication: Publication,
        skip_history: bool,
    ) -> ApiResult<StreamPosition> {
        let (ns, _) = self.namespaces.resolve(channel)?;
        let history = crate::api::publish_history(ns, skip_history);
        let kept = history.enabled();
        let position = self.broker.publish(channel, publication, history).await?;
        if ns.durable_publish && kept {
            self.broker.sync().await?;
        }
        Ok(position)
    }

    /// Publishes `data` to `channel` without keeping it in the channel's history (a
    /// publish proxy's `skip_history`): delivered to current subscribers only, no offset.
    pub async fn publish_without_history(
        &self,
        channel: &str,
        data: Json,
        info: Option<ClientInfo>,
    ) -> ApiResult<()> {
        self.namespaces.resolve(channel)?;
        let publication = Publication { data, info, offset: 0, tags: None };
        self.broker.publish(channel, publication, HistoryOptions::default()).await?;
        Ok(())
    }

    pub async fn presence(&self, channel: &str) -> ApiResult<HashMap<String, ClientInfo>> {
        let (ns, _) = self.namespaces.resolve(channel)?;
        if !ns.presence {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.presence.presence(channel).await?)
    }

    pub async fn presence_stats(&self, channel: &str) -> ApiResult<PresenceStats> {
        let (ns, _) = self.namespaces.resolve(channel)?;
        if !ns.presence {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        Ok(self.presence.stats(channel).await?)
    }

    /// Reads history; `limit` follows the protocol: 0 for the position only, negative for
    /// everything kept. The answer is bounded by `client.max_history_limit` publications
    /// and `client.max_answer_bytes`: a reader that wants more asks again `since` the last
    /// publication it got.
    pub async fn history(
        &self,
        channel: &str,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> ApiResult<HistoryPage> {
        let (ns, _) = self.namespaces.resolve(channel)?;
        if !self.has_stream(ns) {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        let cap = if ns.history_enabled() { ns.history_size } else { usize::MAX };
        let cap = cap.min(self.client.max_history_limit);
        let limit = match limit {
            0 => Some(0),
            n if n < 0 => Some(cap),
            n => Some((n as usize).min(cap)),
        };
        let query = HistoryQuery { since, limit, reverse, max_bytes: Some(self.client.answer_bytes()) };
        Ok(self.read_stream(channel, ns, query).await?)
    }

    pub async fn remove_history(&self, channel: &str) -> ApiResult<()> {
        self.namespaces.resolve(channel)?;
        Ok(self.broker.remove_history(channel).await?)
    }

    /// Checks whether `user` may subscribe to `channel` (with the subscription `token`, if
    /// any), returning the token's info and expiry: the namespace's rules, then the hooks of
    /// an application that owns the namespace. The one place these rules live: client
    /// subscriptions and long polls both ask here.
    pub async fn authorize_subscribe(
        &self,
        user: &str,
        channel: &str,
        name: &ChannelName<'_>,
        ns: &NamespaceConfig,
        token: &str,
    ) -> ApiResult<(Option<Json>, Option<u64>)> {
        let granted = self.namespace_allows_subscribe(user, channel, name, ns, token).await?;
        if let Some(hooks) = self.channel_hooks(ns) {
            hooks.authorize_subscribe(user, channel).await?;
        }
        Ok(granted)
    }

    async fn namespace_allows_subscribe(
        &self,
        user: &str,
        channel: &str,
        name: &ChannelName<'_>,
        ns: &NamespaceConfig,
        token: &str,
    ) -> ApiResult<(Option<Json>, Option<u64>)> {
        let user_limited = name.user_allowed(user);
        if user_limited == Some(false) && !self.client.insecure {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        if !token.is_empty() {
            let claims = match self.tokens.verify_subscription(token).await {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
                Err(TokenError::Unavailable(why)) => {
                    tracing::warn!(%channel, %why, "subscription token not verified now");
                    return Err(ERROR_INTERNAL.into());
                }
                Err(TokenError::Invalid(_)) => return Err(ERROR_PERMISSION_DENIED.into()),
            };
            if claims.sub != user || claims.channel != channel {
                return Err(ERROR_PERMISSION_DENIED.into());
            }
            let expires_at = claims.expires_at();
            let info = claims.channel_info().map_err(|_| ProtocolError::from(ERROR_PERMISSION_DENIED))?;
            return Ok((info, expires_at));
        }
        if self.client.insecure {
            // Everything is allowed (Centrifugo's `client.insecure`, logged at start).
            return Ok((None, None));
        }
        if name.is_private() || (user_limited.is_none() && !ns.allow_subscribe_for_client) {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        Ok((None, None))
    }

    /// Unsubscribes the user's connections (or the one with id `client`) from `channel`,
    /// on every node of the cluster (the others are told in the background).
    pub fn unsubscribe_user(&self, user: &str, channel: &str, client: Option<&str>) -> ApiResult<()> {
        self.user_command_detached(UserCommand::Unsubscribe {
            user: user.to_owned(),
            channel: channel.to_owned(),
            client: client.map(str::to_owned),
        })
    }

    /// Tells every connection to reconnect elsewhere, and the other nodes that this one
    /// leaves: the start of a graceful shutdown.
    pub fn shutdown(&self) {
        self.announce_leave();
        self.hub.control_all(|| Control::Disconnect(Disconnect::SHUTDOWN));
    }

    pub fn info(&self) -> NodeInfo {
        let (num_clients, num_users) = self.hub.counts();
        let streams = self.broker.stream_stats().unwrap_or_default();
        NodeInfo {
            uid: self.id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            num_clients,
            num_users,
            num_channels: self.hub.num_channels(),
            num_subs: self.hub.num_subscriptions(),
            history_streams: streams.streams,
            history_bytes: streams.bytes,
            uptime: self.started.elapsed().as_secs(),
        }
    }
}
