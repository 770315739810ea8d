//! One client connection's protocol state machine, independent of the transport.
//!
//! A transport creates a [`Session`], feeds it the frames it reads
//! ([`Session::handle_frame`]), instructions from its outbox ([`Session::handle_control`])
//! and timer ticks ([`Session::on_timer`]), and writes what the session queues on the
//! connection's outbox. Every method that returns `Err(Disconnect)` asks the transport to
//! close the connection with that code; the transport then calls [`Session::close`].

use crate::auth::{unix_now, TokenError};
use crate::channel::{DeltaType, RecoveryMode};
use crate::engine::{EngineError, HistoryQuery};
use crate::grant::ConnectGrant;
use crate::hub::Connection;
use crate::node::Node;
use crate::outbox::Control;
use crate::rpc::Caller;
use crate::tags_filter::TagsFilter;
use hubbub_protocol::codes::*;
use hubbub_protocol::command::{
    ChannelRequest, ConnectRequest, HistoryRequest, PublishRequest, RefreshRequest, RpcRequest,
    SubRefreshRequest, SubscribeRequest, SUBSCRIBE_FLAG_REJECT_UNRECOVERED,
};
use hubbub_protocol::reply::*;
use hubbub_protocol::{ClientInfo, Disconnect, Json, Method, Protocol, ProtocolError, Reply, StreamPosition};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

mod proxied;

/// Outcome of one command: a reply body, a protocol error, or the end of the connection.
enum Outcome {
    Reply(ReplyBody),
    /// A reply after which the publications held for new subscriptions are released:
    /// channel and the stream offset that the reply already covers.
    ReplyThenRelease(ReplyBody, Vec<(String, u64)>),
    NoReply,
}

type CommandResult = Result<Outcome, CommandError>;

enum CommandError {
    Error(ProtocolError),
    Disconnect(Disconnect),
}

impl From<ProtocolError> for CommandError {
    fn from(e: ProtocolError) -> Self {
        CommandError::Error(e)
    }
}
impl From<StaticError> for CommandError {
    fn from(e: StaticError) -> Self {
        CommandError::Error(e.into())
    }
}
impl From<EngineError> for CommandError {
    fn from(e: EngineError) -> Self {
        CommandError::Error(e.into())
    }
}

/// Per-subscription state.
struct Subscription {
    chan_info: Option<Json>,
    /// Subscription token expiry, Unix seconds.
    expires_at: Option<u64>,
    /// Made by the server (the connection token's `channels`, the server API): the client
    /// cannot subscribe again by itself, it gets this channel back by reconnecting.
    server_side: bool,
    /// Refreshed at expiry by the namespace's sub_refresh proxy, not by the client.
    server_refresh: bool,
    /// The namespace's options as the subscribe proxy overrode them for this subscription.
    options: Option<Arc<crate::channel::NamespaceConfig>>,
}

/// How one subscription's publications are delivered: only those its tags filter matches,
/// and for a delta subscription in the delta form (data as a JSON string). The hub applies
/// the same to live publications; the session to what it reads from the stream.
#[derive(Clone, Default)]
struct Delivery {
    filter: Option<Arc<TagsFilter>>,
    delta: bool,
}

impl Delivery {
    /// The publications read from the stream as this subscriber gets them: those its filter
    /// matches, and for a JSON delta subscriber in full delta form (data as a string; the
    /// first publication after a subscribe or a recovery is never a delta).
    fn apply(&self, publications: Vec<Publication>, protocol: Protocol) -> Vec<Publication> {
        let mut publications = publications;
        if let Some(filter) = &self.filter {
            publications.retain(|p| filter.matches(p.tags.as_ref()));
        }
        if self.delta && protocol == Protocol::Json {
            for p in &mut publications {
                if let Some(data) = hubbub_protocol::delta::json_string_form(&p.data) {
                    p.data = data;
                }
            }
        }
        publications
    }
}

/// Settings of one subscribe, whether the client asked or the server subscribes it.
#[derive(Default)]
struct SubscribeParams {
    recover_from: Option<StreamPosition>,
    join_leave: bool,
    recoverable: bool,
    positioned: bool,
    chan_info: Option<Json>,
    expires_at: Option<u64>,
    /// Bytes of recovered publications the reply may carry (see [`Session::answer_budget`]).
    max_bytes: usize,
    server_side: bool,
    /// Answer error 112 instead of `recovered: false` (the subscribe flag).
    reject_unrecovered: bool,
    delivery: Delivery,
    server_refresh: bool,
    /// The namespace's options with a subscribe proxy's `override` applied.
    options: Option<Arc<crate::channel::NamespaceConfig>>,
}

/// What a subscribe read from the channel's stream.
struct Recovery {
    recovered: bool,
    /// What the reply carries (before the subscriber's filter and delta form).
    publications: Vec<Publication>,
    /// The offset up to which the reply covers the stream.
    covered: u64,
    /// The stream's position when it was read.
    position: StreamPosition,
}

/// A recovery whose missed publications did not all fit in the subscribe reply. The rest
/// goes out as ordinary publication pushes, in offset order, one answer's worth each time
/// the connection's queue has drained ([`Session::continue_recovery`]), while the hub holds
/// the channel's live publications for this subscriber; they are released after the last
/// piece, without those the pieces already carried. The client sees every publication
/// once, in order, and the server's own answer never overflows the connection's queue.
struct Backlog {
    channel: String,
    /// The last publication sent.
    sent: StreamPosition,
    delivery: Delivery,
}

/// A token bucket: `capacity` commands, refilled at `capacity` per second.
struct RateLimit {
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let capacity = per_second.max(1) as f64;
        RateLimit { capacity, tokens: capacity, refilled: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.capacity).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a session needs to know about its transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportKind {
    /// For logs: "websocket", "http_stream", "sse", "uni_sse", ...
    pub name: &'static str,
    /// Commands arrive by `POST /emulation`, routed by session id.
    pub emulation: bool,
    /// The client cannot send anything after connect, so pings expect no pong.
    pub unidirectional: bool,
}

impl TransportKind {
    pub const WEBSOCKET: TransportKind =
        TransportKind { name: "websocket", emulation: false, unidirectional: false };
}

pub struct Session {
    node: Arc<Node>,
    conn: Arc<Connection>,
    kind: TransportKind,
    /// `None` until connect succeeds.
    user: Option<String>,
    conn_info: Option<Json>,
    expires_at: Option<u64>,
    subs: HashMap<String, Subscription>,
    rate: RateLimit,
    next_ping: Instant,
    /// When the last ping was sent, while its pong is awaited.
    awaiting_pong_since: Option<Instant>,
    /// The session id handed to emulation transports.
    session_id: String,
    /// Recoveries still being sent, oldest first.
    backlogs: Vec<Backlog>,
    /// What the connection keeps for proxies (`session/proxied.rs`).
    proxy: crate::proxy::ProxyState,
}

impl Session {
    /// A JSON session.
    pub fn new(node: Arc<Node>, kind: TransportKind) -> Self {
        Self::with_protocol(node, kind, Protocol::Json)
    }

    /// A session speaking `protocol`: its commands are decoded, and everything queued for
    /// it encoded, in that protocol.
    pub fn with_protocol(node: Arc<Node>, kind: TransportKind, protocol: Protocol) -> Self {
        let conn = Connection::with_protocol(node.client.queue_max_bytes, protocol);
        let rate = RateLimit::new(node.client.commands_per_second);
        let next_ping = Instant::now() + node.client.ping_interval;
        Session {
            node,
            conn,
            kind,
            user: None,
            conn_info: None,
            expires_at: None,
            subs: HashMap::new(),
            rate,
            next_ping,
            awaiting_pong_since: None,
            session_id: uuid::Uuid::new_v4().to_string(),
            backlogs: Vec::new(),
            proxy: Default::default(),
        }
    }

    /// The connection's shared part: the transport waits on and drains its outbox.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// The node the session belongs to (its configuration, for the transport).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn client_id(&self) -> &str {
        &self.conn.client
    }

    pub fn protocol(&self) -> Protocol {
        self.conn.protocol
    }

    /// The connection's `meta` (from its token or the connect proxy), for proxies.
    pub fn meta(&self) -> Option<&Json> {
        self.proxy.meta.as_ref()
    }

    fn send(&self, reply: Reply) {
        self.conn.outbox.push(reply.encode_as(self.conn.protocol));
    }

    fn client_info(&self, chan_info: Option<Json>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone().unwrap_or_default(),
            client: self.conn.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    /// Handles one frame of commands in the session's protocol (JSON: newline-separated;
    /// protobuf: length-delimited).
    pub async fn handle_frame(&mut self, frame: impl AsRef<[u8]>) -> Result<(), Disconnect> {
        let commands = match self.conn.protocol.decode_frame(frame.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(client = %self.conn.client, transport = self.kind.name, protocol = self.conn.protocol.name(), error = %e, "bad frame");
                return Err(Disconnect::BAD_REQUEST);
            }
        };
        for cmd in commands {
            if let Method::Pong = cmd.method {
                self.awaiting_pong_since = None;
                continue;
            }
            if self.user.is_none() && !matches!(cmd.method, Method::Connect(_)) {
                tracing::info!(client = %self.conn.client, method = cmd.method.name(), "command before connect");
                return Err(Disconnect::BAD_REQUEST);
            }
            let method = cmd.method.name();
            let result = if self.rate.allow() {
                self.dispatch(cmd.method).await
            } else {
                Err(ERROR_TOO_MANY_REQUESTS.into())
            };
            match result {
                Ok(Outcome::Reply(body)) => self.send(Reply::new(cmd.id, body)),
                Ok(Outcome::ReplyThenRelease(body, held)) => {
                    self.send(Reply::new(cmd.id, body));
                    for (channel, covered) in held {
                        self.release(&channel, covered);
                    }
                }
                Ok(Outcome::NoReply) => {}
                Err(CommandError::Error(e)) => {
                    tracing::debug!(client = %self.conn.client, method, code = e.code, "command error");
                    if cmd.id != 0 {
                        self.send(Reply::error(cmd.id, e));
                    }
                }
                Err(CommandError::Disconnect(d)) => {
                    tracing::info!(client = %self.conn.client, method, code = d.code, reason = %d.reason, "disconnecting");
                    return Err(d);
                }
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, method: Method) -> CommandResult {
        match method {
            Method::Connect(req) => self.connect(req).await,
            Method::Subscribe(req) => self.subscribe_command(req).await,
            Method::Unsubscribe(req) => {
                self.unsubscribe(&req.channel).await;
                Ok(Outcome::Reply(ReplyBody::Unsubscribe(EmptyResult {})))
            }
            Method::Publish(req) => self.publish(req).await,
            Method::Presence(req) => self.presence(req).await,
            Method::PresenceStats(req) => self.presence_stats(req).await,
            Method::History(req) => self.history(req).await,
            Method::Ping => Ok(Outcome::Reply(ReplyBody::Ping(EmptyResult {}))),
            Method::Send(_) => Ok(Outcome::NoReply),
            Method::Rpc(req) => self.rpc(req).await,
            Method::Refresh(req) => self.refresh(req).await,
            Method::SubRefresh(req) => self.sub_refresh(req).await,
            Method::Unknown => Err(ERROR_METHOD_NOT_FOUND.into()),
            Method::Pong => Ok(Outcome::NoReply),
        }
    }

    fn ttl(expires_at: Option<u64>) -> (bool, u32) {
        match expires_at {
            Some(exp) => (true, exp.saturating_sub(unix_now()).min(u32::MAX as u64) as u32),
            None => (false, 0),
        }
    }

    /// What the connect grants: the token's claims, or nothing for an anonymous connection
    /// where allowed. The one place a connection's identity comes from.
    async fn authenticate(&self, token: &str) -> Result<ConnectGrant, CommandError> {
        if token.is_empty() {
            if !self.node.allow_anonymous && !self.node.client.insecure {
                return Err(ERROR_UNAUTHORIZED.into());
            }
            return Ok(ConnectGrant::anonymous());
        }
        let mut grant = match self.node.tokens.verify_connect(token).await {
            Ok(grant) => grant,
            Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Unavailable(why)) => {
                tracing::warn!(client = %self.conn.client, %why, "connection token not verified now");
                return Err(ERROR_INTERNAL.into());
            }
            Err(TokenError::Invalid(why)) => {
                tracing::info!(client = %self.conn.client, %why, "invalid connection token");
                return Err(CommandError::Disconnect(Disconnect::INVALID_TOKEN));
            }
        };
        if self.node.client.insecure {
            // As Centrifugo: an insecure server never expires connections.
            grant.expire_at = None;
        }
        Ok(grant)
    }

    async fn connect(&mut self, req: ConnectRequest) -> CommandResult {
        if self.user.is_some() {
            return Err(CommandError::Disconnect(Disconnect::BAD_REQUEST));
        }
        let mut connect_data = None;
        let grant = if let Some(proxied) = self.proxy_connect(&req).await {
            let (grant, data) = proxied?;
            connect_data = data;
            grant
        } else {
            self.authenticate(&req.token).await?
        };
        if self.node.add_connection(&grant.user, &self.conn).is_err() {
            tracing::info!(client = %self.conn.client, user = %grant.user, "connection limit of the user reached");
            return Err(CommandError::Disconnect(Disconnect::CONNECTION_LIMIT));
        }
        let mut server_side = grant.server_side_subscriptions();
        if let Some(personal) = self.node.personal_channel(&grant.user) {
            if !server_side.iter().any(|(c, _)| *c == personal) {
                server_side.push((personal, Default::default()));
            }
        }
        self.user = Some(grant.user);
        self.conn_info = grant.info;
        self.proxy.meta = grant.meta;
        self.expires_at = grant.expire_at;
        if self.kind.emulation {
            self.node.hub.add_session(&self.session_id, &self.conn);
        }

        // Server-side subscriptions come from the grant; when the client reconnects it sends
        // their positions back in `subs` so that they are recovered too.
        let mut subs = HashMap::new();
        let mut held = Vec::new();
        let mut positions = req.subs;
        let mut budget = self.answer_budget();
        for (channel, options) in server_side {
            if self.subs.contains_key(&channel) || self.subs.len() >= self.node.client.max_channels {
                continue;
            }
            let recover_from = positions
                .remove(&channel)
                .filter(|r| r.recover)
                .map(|r| StreamPosition { offset: r.offset, epoch: r.epoch });
            let overridden = match self.node.namespaces.resolve(&channel) {
                Ok((ns, _)) => options.overrides().apply(ns),
                Err(_) => None,
            };
            let params = SubscribeParams {
                recover_from,
                max_bytes: budget,
                server_side: true,
                chan_info: options.info,
                options: overridden,
                ..Default::default()
            };
            match self.subscribe(&channel, params).await {
                Ok((mut result, covered)) => {
                    let carried: usize = result.publications.iter().map(|p| p.encoded_len()).sum();
                    budget = budget.saturating_sub(carried);
                    result.data = options.data;
                    held.push((channel.clone(), covered));
                    subs.insert(channel, result);
                }
                Err(e) => tracing::warn!(%channel, code = e.code, "server-side subscription failed"),
            }
        }
        let (expires, ttl) =
            if self.client_refreshes() { Self::ttl(self.expires_at) } else { Default::default() };
        let result = ConnectResult {
            client: self.conn.client.clone(),
            version: self.node.version.clone(),
            expires,
            ttl,
            data: connect_data,
            subs,
            ping: self.node.client.ping_interval.as_secs().max(1) as u32,
            pong: !self.kind.unidirectional,
            session: self.session_id.clone(),
            node: self.node.id.clone(),
        };
        Ok(Outcome::ReplyThenRelease(ReplyBody::Connect(result), held))
    }

    /// Connects a unidirectional client: the connect result goes out as a `connect` push,
    /// and a refused connect ends the connection with the matching disconnect code.
    pub async fn connect_unidirectional(&mut self, req: ConnectRequest) -> Result<(), Disconnect> {
        match self.connect(req).await {
            Ok(Outcome::ReplyThenRelease(ReplyBody::Connect(result), held)) => {
                self.send(Reply::push(Push { channel: String::new(), body: PushBody::Connect(result) }));
                for (channel, covered) in held {
                    self.release(&channel, covered);
                }
                Ok(())
            }
            Ok(_) => Err(Disconnect::SERVER_ERROR),
            Err(CommandError::Disconnect(d)) => Err(d),
            Err(CommandError::Error(e)) if e.code == ERROR_TOKEN_EXPIRED.code => Err(Disconnect::EXPIRED),
            Err(CommandError::Error(e)) if e.code == ERROR_UNAUTHORIZED.code => {
                Err(Disconnect::INVALID_TOKEN)
            }
            Err(CommandError::Error(e)) if e.code == ERROR_INTERNAL.code => Err(Disconnect::SERVER_ERROR),
            Err(CommandError::Error(_)) => Err(Disconnect::BAD_REQUEST),
        }
    }

    async fn subscribe_command(&mut self, req: SubscribeRequest) -> CommandResult {
        // Centrifugo 6's map and shared-poll subscriptions (types 1–4) are not served here;
        // served as a stream, the SDK would misread every reply.
        match req.kind {
            0 => {}
            1..=4 => return Err(ERROR_NOT_AVAILABLE.into()),
            _ => return Err(ERROR_BAD_REQUEST.into()),
        }
        let (ns, name) = self.node.namespaces.resolve(&req.channel).map_err(ProtocolError::from)?;
        // As the centrifuge library: a delta type nobody knows is a broken client; a known
        // one the namespace does not allow is simply not granted (`delta` stays false).
        let delta = match req.delta.as_str() {
            "" => false,
            name => match DeltaType::parse(name) {
                Some(kind) => ns.allowed_delta_types.contains(&kind),
                None => {
                    tracing::info!(client = %self.conn.client, delta = name, "unknown delta type");
                    return Err(CommandError::Disconnect(Disconnect::BAD_REQUEST));
                }
            },
        };
        let filter = match &req.tf {
            None => None,
            Some(tf) => {
                // A delta is against the channel's previous publication: a subscriber that
                // skips some could not apply the next one.
                if !ns.allow_tags_filter || !req.delta.is_empty() {
                    return Err(ERROR_BAD_REQUEST.into());
                }
                match TagsFilter::compile(tf, self.node.client.tags_filter_limits()) {
                    Ok(filter) => Some(Arc::new(filter)),
                    Err(e) => {
                        tracing::info!(client = %self.conn.client, channel = %req.channel, error = %e, "tags filter refused");
                        return Err(ERROR_BAD_REQUEST.into());
                    }
                }
            }
        };
        if self.subs.contains_key(&req.channel) {
            return Err(ERROR_ALREADY_SUBSCRIBED.into());
        }
        if self.subs.len() >= self.node.client.max_channels {
            return Err(ERROR_LIMIT_EXCEEDED.into());
        }
        let user = self.user.as_deref().unwrap_or_default();
        let (chan_info, expires_at, data, server_refresh, options) =
            match self.proxy_subscribe(&req, &name, ns).await {
                Some(answer) => {
                    let answer = answer?;
                    let options = answer.overrides.apply(ns);
                    (answer.info, answer.expire_at, answer.data, self.server_sub_refresh(ns), options)
                }
                None => {
                    let (chan_info, expires_at) =
                        self.node.authorize_subscribe(user, &req.channel, &name, ns, &req.token).await?;
                    (chan_info, expires_at, None, false, None)
                }
            };
        let params = SubscribeParams {
            recover_from: req
                .recover
                .then(|| StreamPosition { offset: req.offset, epoch: req.epoch.clone() }),
            join_leave: req.join_leave,
            recoverable: req.recoverable,
            positioned: req.positioned,
            chan_info,
            expires_at,
            max_bytes: self.answer_budget(),
            server_side: false,
            reject_unrecovered: req.flag & SUBSCRIBE_FLAG_REJECT_UNRECOVERED != 0,
            delivery: Delivery { filter, delta },
            server_refresh,
            options,
        };
        let (mut result, covered) = self.subscribe(&req.channel, params).await?;
        result.data = data;
        if server_refresh {
            (result.expires, result.ttl) = (false, 0);
        }
        Ok(Outcome::ReplyThenRelease(ReplyBody::Subscribe(result), vec![(req.channel, covered)]))
    }

    /// Subscribes without checking permissions (the caller did). Returns the subscribe
    /// result and the offset up to which it covers the stream; publications after that are
    /// held until [`Session::release`].
    async fn subscribe(
        &mut self,
        channel: &str,
        mut params: SubscribeParams,
    ) -> Result<(SubscribeResult, u64), ProtocolError> {
        let node = self.node.clone();
        let (ns, _) = node.namespaces.resolve(channel)?;
        let ns = params.options.as_deref().unwrap_or(ns);
        let has_stream = node.has_stream(ns);
        let recoverable = has_stream && (ns.force_recovery || params.recoverable);
        let positioned = has_stream && (ns.force_positioning || params.positioned || recoverable);
        let join_leave = ns.join_leave && (params.join_leave || ns.force_push_join_leave);

        // Listen first, holding publications, then read the stream: whatever is published
        // in between is either in what we read or held, and duplicates are dropped by offset.
        let options = crate::hub::SubscribeOptions {
            join_leave,
            hold: positioned,
            dedupe: node.channel_hooks(ns).is_some(),
            filter: params.delivery.filter.clone(),
            delta: params.delivery.delta,
        };
        if node.hub.subscribe_with(channel, &self.conn, options) {
            if let Err(e) = node.broker.subscribe(channel).await {
                node.hub.unsubscribe(channel, &self.conn);
                return Err(e.into());
            }
        }
        let mut result = SubscribeResult { recoverable, positioned, ..Default::default() };
        let recover_from = params.recover_from.take().filter(|_| recoverable);
        result.was_recovering = recover_from.is_some();
        let mut backlog = None;
        result.delta = params.delivery.delta;
        if positioned {
            let recovery = match recover_from {
                Some(since) if ns.force_recovery_mode == RecoveryMode::Cache => {
                    self.recover_latest(channel, ns, since, &params).await
                }
                since => self.recover_stream(channel, ns, since, &params).await,
            };
            let recovery = match recovery {
                Ok(recovery) => recovery,
                Err(e) => return Err(self.undo(channel, e)),
            };
            result.recovered = recovery.recovered;
            if params.reject_unrecovered && result.was_recovering && !result.recovered {
                return Err(self.undo(channel, EngineError::UnrecoverablePosition));
            }
            let top = recovery.position.offset;
            if result.recovered && recovery.covered < top {
                // More was missed than one answer carries: the reply says how far it goes,
                // and the rest follows as pushes.
                result.offset = recovery.covered;
                backlog = Some(Backlog {
                    channel: channel.to_owned(),
                    sent: StreamPosition { offset: recovery.covered, epoch: recovery.position.epoch.clone() },
                    delivery: params.delivery.clone(),
                });
            } else {
                result.offset = recovery.covered.max(top);
            }
            node.hub.set_epoch(channel, &self.conn, &recovery.position.epoch);
            result.epoch = recovery.position.epoch;
            result.publications = params.delivery.apply(recovery.publications, self.conn.protocol);
        }
        if ns.presence {
            let info = self.client_info(params.chan_info.clone());
            if let Err(e) = node.presence.add(channel, info).await {
                return Err(self.undo(channel, e));
            }
        }
        if ns.join_leave {
            let info = self.client_info(params.chan_info.clone());
            if let Err(e) = node.broker.publish_join(channel, info).await {
                tracing::warn!(%channel, error = %e, "join event not published");
            }
        }
        let covered = result.offset;
        self.backlogs.extend(backlog);
        self.subs.insert(
            channel.to_owned(),
            Subscription {
                chan_info: params.chan_info,
                expires_at: params.expires_at,
                server_side: params.server_side,
                server_refresh: params.server_refresh,
                options: params.options.clone(),
            },
        );
        let (expires, ttl) = Self::ttl(params.expires_at);
        result.expires = expires;
        result.ttl = ttl;
        Ok((result, covered))
    }

    /// Reads a subscribing channel's stream: its position, and with `since` the publications
    /// after it (as many as one answer carries), or why they cannot be had.
    async fn recover_stream(
        &self,
        channel: &str,
        ns: &crate::channel::NamespaceConfig,
        since: Option<StreamPosition>,
        params: &SubscribeParams,
    ) -> Result<Recovery, EngineError> {
        let node = &self.node;
        let position_only = HistoryQuery { limit: Some(0), ..Default::default() };
        let Some(since) = since else {
            let page = node.read_stream(channel, ns, position_only).await?;
            let covered = page.position.offset;
            return Ok(Recovery {
                recovered: false,
                publications: Vec::new(),
                covered,
                position: page.position,
            });
        };
        // No room left in the queue: the reply only checks the position, and the missed
        // publications all come as pushes after it.
        let limit = if params.max_bytes == 0 { 0 } else { node.client.max_history_limit };
        let query = HistoryQuery {
            since: Some(since.clone()),
            limit: Some(limit),
            reverse: false,
            max_bytes: Some(params.max_bytes),
        };
        match node.read_stream(channel, ns, query).await {
            Ok(page) => {
                let covered = page.publications.last().map_or(since.offset, |p| p.offset);
                Ok(Recovery {
                    recovered: true,
                    publications: page.publications,
                    covered,
                    position: page.position,
                })
            }
            Err(EngineError::UnrecoverablePosition) => {
                let page = node.read_stream(channel, ns, position_only).await?;
                let covered = page.position.offset;
                Ok(Recovery { recovered: false, publications: Vec::new(), covered, position: page.position })
            }
            Err(e) => Err(e),
        }
    }

    /// Recovery in "cache" mode: the channel's latest publication is its state, and a
    /// subscriber gets that one (the newest its tags filter matches), unless its position
    /// says it has it already. Recovered when the stream still holds its latest publication.
    async fn recover_latest(
        &self,
        channel: &str,
        ns: &crate::channel::NamespaceConfig,
        since: StreamPosition,
        params: &SubscribeParams,
    ) -> Result<Recovery, EngineError> {
        let node = &self.node;
        // With a filter the newest matching one may be further back: one answer's worth.
        let limit = if params.delivery.filter.is_some() { node.client.max_history_limit } else { 1 };
        let query = HistoryQuery {
            since: None,
            limit: Some(limit),
            reverse: true,
            max_bytes: Some(params.max_bytes),
        };
        let page = node.read_stream(channel, ns, query).await?;
        let top = page.position;
        let has_it = since.offset > 0 && since.offset == top.offset && since.epoch == top.epoch;
        let latest_kept = page.publications.first().is_some_and(|p| p.offset == top.offset);
        let publications = if has_it || !latest_kept {
            Vec::new()
        } else {
            let filter = params.delivery.filter.as_deref();
            let newest =
                page.publications.into_iter().find(|p| filter.is_none_or(|f| f.matches(p.tags.as_ref())));
            newest.into_iter().collect()
        };
        Ok(Recovery { recovered: has_it || latest_kept, publications, covered: top.offset, position: top })
    }

    /// Rolls back a half-made subscription after an engine failure.
    fn undo(&self, channel: &str, e: EngineError) -> ProtocolError {
        self.node.hub.unsubscribe(channel, &self.conn);
        e.into()
    }

    /// Queues the publications held for a new subscription that its reply did not carry;
    /// for a recovery still being sent, only after its last piece.
    fn release(&self, channel: &str, covered: u64) {
        if !self.backlogs.iter().any(|b| b.channel == channel) {
            self.node.hub.release(channel, &self.conn, covered);
        }
    }

    /// Bytes of publications the next answer may carry: `client.max_answer_bytes`, and no
    /// more than half of what the connection's queue has free now, so that the answer and
    /// the live deliveries queued meanwhile fit together.
    fn answer_budget(&self) -> usize {
        let free = self.node.client.queue_max_bytes.saturating_sub(self.conn.outbox.queued_bytes());
        self.node.client.answer_bytes().min(free / 2)
    }

    /// Whether a recovery is still being sent: the transport then calls
    /// [`Session::continue_recovery`] whenever it has written what was queued.
    pub fn recovering(&self) -> bool {
        !self.backlogs.is_empty()
    }

    /// Queues the next piece of the oldest recovery still being sent, if the connection's
    /// queue has room for it (otherwise the next call, after the next write, does), and
    /// after the last piece releases the live publications held meanwhile. A stream that
    /// lost what was still to be sent (pruned or reset meanwhile) ends the connection with
    /// "insufficient state": the client reconnects and recovers again, or learns it cannot.
    pub async fn continue_recovery(&mut self) -> Result<(), Disconnect> {
        let Some(backlog) = self.backlogs.first() else { return Ok(()) };
        if self.conn.outbox.queued_bytes() > self.node.client.queue_max_bytes / 2 {
            return Ok(());
        }
        let (channel, sent) = (backlog.channel.clone(), backlog.sent.clone());
        let delivery = backlog.delivery.clone();
        let node = self.node.clone();
        let Ok((ns, _)) = node.namespaces.resolve(&channel) else {
            self.backlogs.remove(0);
            return Ok(());
        };
        let query = HistoryQuery {
            since: Some(sent.clone()),
            limit: Some(node.client.max_history_limit),
            reverse: false,
            max_bytes: Some(self.answer_budget()),
        };
        let page = match node.read_stream(&channel, ns, query).await {
            Ok(page) if page.position.epoch == sent.epoch => page,
            Ok(_) | Err(EngineError::UnrecoverablePosition) => {
                tracing::info!(client = %self.conn.client, %channel, "recovery lost its stream");
                return Err(Disconnect::INSUFFICIENT_STATE);
            }
            Err(e) => {
                tracing::warn!(client = %self.conn.client, %channel, error = %e, "recovery not continued");
                return Err(Disconnect::INSUFFICIENT_STATE);
            }
        };
        // The subscription may have ended while the stream was read.
        let Some(index) = self.backlogs.iter().position(|b| b.channel == channel) else { return Ok(()) };
        let covered = page.publications.last().map_or(sent.offset, |p| p.offset);
        for publication in delivery.apply(page.publications, self.conn.protocol) {
            self.send(Reply::push(Push {
                channel: channel.clone(),
                body: PushBody::Publication(publication),
            }));
        }
        if covered < page.position.offset && covered > sent.offset {
            self.backlogs[index].sent.offset = covered;
        } else {
            self.backlogs.remove(index);
            self.node.hub.release(&channel, &self.conn, covered);
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: &str) -> bool {
        let Some(sub) = self.subs.remove(channel) else { return false };
        self.backlogs.retain(|b| b.channel != channel);
        let node = self.node.clone();
        if node.hub.unsubscribe(channel, &self.conn) {
            if let Err(e) = node.broker.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
        }
        if let Ok((ns, _)) = node.namespaces.resolve(channel) {
            let ns = sub.options.as_deref().unwrap_or(ns);
            if ns.presence {
                if let Err(e) = node.presence.remove(channel, &self.conn.client).await {
                    tracing::warn!(%channel, error = %e, "presence not removed");
                }
            }
            if ns.join_leave {
                let info = self.client_info(sub.chan_info);
                if let Err(e) = node.broker.publish_leave(channel, info).await {
                    tracing::warn!(%channel, error = %e, "leave event not published");
                }
            }
        }
        true
    }

    async fn publish(&mut self, req: PublishRequest) -> CommandResult {
        let (ns, name) = self.node.namespaces.resolve(&req.channel).map_err(ProtocolError::from)?;
        let Some(mut data) = req.data else { return Err(ERROR_BAD_REQUEST.into()) };
        let mut skip_history = false;
        if let Some(answer) = self.proxy_publish(&req.channel, &data, &name, ns).await {
            let answer = answer?;
            data = answer.data.unwrap_or(data);
            skip_history = answer.skip_history;
        }
        let user = self.user.as_deref().unwrap_or_default();
        let allowed = match name.user_allowed(user) {
            _ if !ns.publish_proxy_name.is_empty() => true,
            Some(listed) => listed,
            None if name.is_private() => self.subs.contains_key(&req.channel),
            None => {
                ns.allow_publish_for_client
                    || (ns.allow_publish_for_subscriber && self.subs.contains_key(&req.channel))
            }
        };
        if !allowed && !self.node.client.insecure {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        let chan_info = self.subs.get(&req.channel).and_then(|s| s.chan_info.clone());
        let info = self.client_info(chan_info);
        if skip_history {
            self.node.publish_without_history(&req.channel, data, Some(info)).await?;
        } else {
            self.node.publish(&req.channel, data, Some(info)).await?;
        }
        Ok(Outcome::Reply(ReplyBody::Publish(EmptyResult {})))
    }

    /// Presence and history are for subscribers of the channel, when the namespace allows.
    fn check_subscriber_access(
        &self,
        channel: &str,
        allowed_for_subscriber: bool,
    ) -> Result<(), CommandError> {
        // An insecure server lets anyone read any channel's presence and history.
        if self.node.client.insecure || (allowed_for_subscriber && self.subs.contains_key(channel)) {
            Ok(())
        } else {
            Err(ERROR_PERMISSION_DENIED.into())
        }
    }

    async fn presence(&mut self, req: ChannelRequest) -> CommandResult {
        let (ns, _) = self.node.namespaces.resolve(&req.channel).map_err(ProtocolError::from)?;
        if !ns.presence {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        self.check_subscriber_access(&req.channel, ns.allow_presence_for_subscriber)?;
        let presence = self.node.presence(&req.channel).await?;
        Ok(Outcome::Reply(ReplyBody::Presence(PresenceResult { presence })))
    }

    async fn presence_stats(&mut self, req: ChannelRequest) -> CommandResult {
        let (ns, _) = self.node.namespaces.resolve(&req.channel).map_err(ProtocolError::from)?;
        if !ns.presence {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        self.check_subscriber_access(&req.channel, ns.allow_presence_for_subscriber)?;
        let stats = self.node.presence_stats(&req.channel).await?;
        Ok(Outcome::Reply(ReplyBody::PresenceStats(PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        })))
    }

    async fn history(&mut self, req: HistoryRequest) -> CommandResult {
        let (ns, _) = self.node.namespaces.resolve(&req.channel).map_err(ProtocolError::from)?;
        if !self.node.has_stream(ns) {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        self.check_subscriber_access(&req.channel, ns.allow_history_for_subscriber)?;
        let page = self.node.history(&req.channel, req.limit, req.since, req.reverse).await?;
        Ok(Outcome::Reply(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        })))
    }

    async fn rpc(&mut self, req: RpcRequest) -> CommandResult {
        let Some(handler) = self.node.rpc_handler(&req.method) else {
            let data = self.proxy_rpc(req).await?;
            return Ok(Outcome::Reply(ReplyBody::Rpc(RpcResult { data })));
        };
        let caller = Caller { user: self.user.clone().unwrap_or_default(), client: self.conn.client.clone() };
        let data = handler.call(&caller, req.data).await?;
        Ok(Outcome::Reply(ReplyBody::Rpc(RpcResult { data })))
    }

    async fn refresh(&mut self, req: RefreshRequest) -> CommandResult {
        let grant = match self.node.tokens.verify_connect(&req.token).await {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Unavailable(_)) => return Err(ERROR_INTERNAL.into()),
            Err(TokenError::Invalid(_)) => return Err(CommandError::Disconnect(Disconnect::INVALID_TOKEN)),
        };
        if Some(&grant.user) != self.user.as_ref() {
            return Err(CommandError::Disconnect(Disconnect::INVALID_TOKEN));
        }
        self.expires_at = if self.node.client.insecure { None } else { grant.expire_at };
        let (expires, ttl) = Self::ttl(self.expires_at);
        Ok(Outcome::Reply(ReplyBody::Refresh(RefreshResult {
            client: self.conn.client.clone(),
            version: self.node.version.clone(),
            expires,
            ttl,
        })))
    }

    async fn sub_refresh(&mut self, req: SubRefreshRequest) -> CommandResult {
        let user = self.user.clone().unwrap_or_default();
        if !self.subs.contains_key(&req.channel) {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        let claims = match self.node.tokens.verify_subscription(&req.token).await {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Unavailable(_)) => return Err(ERROR_INTERNAL.into()),
            Err(TokenError::Invalid(_)) => return Err(ERROR_PERMISSION_DENIED.into()),
        };
        if claims.sub != user || claims.channel != req.channel {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        let Some(sub) = self.subs.get_mut(&req.channel) else {
            return Err(ERROR_PERMISSION_DENIED.into());
        };
        sub.expires_at = claims.expires_at();
        let (expires, ttl) = Self::ttl(sub.expires_at);
        Ok(Outcome::Reply(ReplyBody::SubRefresh(SubRefreshResult { expires, ttl })))
    }

    /// Carries out an instruction queued on the connection's outbox by the node.
    pub async fn handle_control(&mut self, control: Control) -> Result<(), Disconnect> {
        match control {
            Control::Disconnect(d) => Err(d),
            Control::Proxied(answer) => self.apply_deferred(answer),
            Control::Commands(frame) => self.handle_frame(frame).await,
            Control::Subscribe(channel) => {
                if self.user.is_none() || self.subs.contains_key(&channel) {
                    return Ok(());
                }
                let params = SubscribeParams { server_side: true, ..Default::default() };
                match self.subscribe(&channel, params).await {
                    Ok((result, covered)) => {
                        let push = SubscribePush {
                            recoverable: result.recoverable,
                            epoch: result.epoch,
                            offset: result.offset,
                            positioned: result.positioned,
                        };
                        self.send(Reply::push(Push {
                            channel: channel.clone(),
                            body: PushBody::Subscribe(push),
                        }));
                        self.release(&channel, covered);
                    }
                    Err(e) => tracing::warn!(%channel, code = e.code, "server-side subscribe failed"),
                }
                Ok(())
            }
            Control::Unsubscribe(channel) => {
                self.unsubscribe_with(channel, unsubscribe::SERVER).await;
                Ok(())
            }
            Control::Refresh { expired, expire_at } => {
                if self.user.is_none() {
                    return Ok(());
                }
                if expired {
                    return Err(Disconnect::EXPIRED);
                }
                self.expires_at = expire_at;
                if self.kind.unidirectional {
                    // A unidirectional client learns its new expiry only from the server.
                    let (expires, ttl) = Self::ttl(self.expires_at);
                    self.send(Reply::push(Push {
                        channel: String::new(),
                        body: PushBody::Refresh { expires, ttl },
                    }));
                }
                Ok(())
            }
            Control::Resubscribe(channel) => {
                match self.subs.get(&channel) {
                    None => Ok(()),
                    // The client cannot subscribe to it again by itself: it reconnects, and
                    // recovers with the positions it sends in `connect`.
                    Some(sub) if sub.server_side || self.kind.unidirectional => {
                        tracing::info!(client = %self.conn.client, %channel, "subscription out of sync: reconnect to recover");
                        Err(Disconnect::INSUFFICIENT_STATE)
                    }
                    // Unsubscribe codes from 2500 make the SDK subscribe again, recovering
                    // from its last position.
                    Some(_) => {
                        tracing::info!(client = %self.conn.client, %channel, "subscription out of sync: resubscribe to recover");
                        self.unsubscribe_with(channel, unsubscribe::INSUFFICIENT).await;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Ends a subscription on the server's behalf, telling the client why.
    async fn unsubscribe_with(&mut self, channel: String, (code, reason): (u32, &str)) {
        if self.unsubscribe(&channel).await {
            let body = PushBody::Unsubscribe { code, reason: reason.to_owned() };
            self.send(Reply::push(Push { channel, body }));
        }
    }

    /// When [`Session::on_timer`] wants to run next: the next ping, the pong deadline, or
    /// the earliest token expiry.
    pub fn next_timer(&self) -> Instant {
        let protocol = match self.awaiting_pong_since {
            Some(sent) => sent + self.node.client.pong_timeout,
            None => self.next_ping,
        };
        let earliest_expiry =
            self.expires_at.into_iter().chain(self.subs.values().filter_map(|s| s.expires_at)).min();
        let protocol = protocol.min(self.proxy_refresh_due().unwrap_or(protocol));
        match earliest_expiry {
            Some(exp) => {
                let until_expiry = Duration::from_secs(exp.saturating_sub(unix_now()));
                protocol.min(Instant::now() + until_expiry + self.node.client.expired_close_delay)
            }
            None => protocol,
        }
    }

    /// Sends pings, enforces pongs and token expiry.
    pub fn on_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if let Some(sent) = self.awaiting_pong_since {
            if now >= sent + self.node.client.pong_timeout {
                tracing::info!(client = %self.conn.client, "no pong");
                return Err(Disconnect::NO_PONG);
            }
        }
        if self.user.is_none() && now >= self.next_ping {
            tracing::info!(client = %self.conn.client, "no connect command in time");
            return Err(Disconnect::STALE);
        }
        if self.user.is_some() {
            self.start_proxy_refreshes();
            // Expired tokens get a grace period for the refresh the client sends at expiry.
            let delay = self.node.client.expired_close_delay.as_secs_f64();
            let overdue = |exp: &u64| {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                now.as_secs_f64() >= *exp as f64 + delay
            };
            if self.expires_at.as_ref().is_some_and(overdue) {
                return Err(Disconnect::EXPIRED);
            }
            if self.subs.values().any(|s| s.expires_at.as_ref().is_some_and(overdue)) {
                return Err(Disconnect::SUB_EXPIRED);
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + self.node.client.ping_interval;
            if self.user.is_some() && self.awaiting_pong_since.is_none() {
                self.conn.outbox.push(self.conn.protocol.ping());
                if !self.kind.unidirectional {
                    self.awaiting_pong_since = Some(now);
                }
            }
        }
        Ok(())
    }

    /// Cleans up after the connection ended: leaves every channel and the hub.
    pub async fn close(&mut self) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel).await;
        }
        if let Some(user) = &self.user {
            self.node.remove_connection(user, &self.conn);
            if self.kind.emulation {
                self.node.hub.remove_session(&self.session_id);
            }
        }
    }
}

/// Time left before the next protocol timer, for transports that sleep on it.
pub fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
