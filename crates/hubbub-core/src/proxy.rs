//! Proxies: an application backend decides for the server, as Centrifugo's proxies do.
//!
//! A [`Proxy`] is asked at connect (a client without a token), when a proxied connection or
//! subscription expires (refresh, sub_refresh), at subscribe and publish in a namespace
//! that names one, and for RPC methods the node does not know itself. Core only knows the
//! typed seam; the HTTP implementation lives in `hubbub-server` (`src/proxy.rs`), since core
//! has no HTTP. Each call answers a result, the backend's refusal (an error passed to the
//! client as it is), the backend's disconnect, or a failure to get an answer at all (down,
//! timeout, garbage: the protocol's internal error).
//!
//! The session's part (`Session::proxy_*` below) is kept here too, so that `session.rs`
//! only calls in at the right places.

use crate::auth::unix_now;
use crate::channel::NamespaceConfig;
use crate::hub::Connection;
use crate::outbox::Control;
use async_trait::async_trait;
use hubbub_protocol::{Disconnect, Json, ProtocolError};
use std::collections::HashMap;
use std::sync::Arc;

/// A connection's request headers kept for proxies: only those some proxy forwards
/// (`proxies[].http_headers`), so that a connection keeps nothing when none is configured.
pub type ForwardedHeaders = Box<[(Box<str>, Box<str>)]>;

/// Who a proxy call is about: the connection, its user, what it carries for the backend.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub client: &'a str,
    /// The transport's name ("websocket", "sse", ...).
    pub transport: &'a str,
    /// The connection's protocol: "json" or "protobuf".
    pub protocol: &'a str,
    /// Empty for connect and for anonymous connections.
    pub user: &'a str,
    /// The `meta` the connect proxy attached to the connection.
    pub meta: Option<&'a Json>,
    /// The connection's request headers, already filtered to the forwarded ones.
    pub headers: &'a [(Box<str>, Box<str>)],
}

/// A connect without a token, as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct ConnectCall {
    pub data: Option<Json>,
    pub name: String,
    pub version: String,
}

/// Who the backend says the client is.
#[derive(Debug, Clone, Default)]
pub struct ConnectAnswer {
    /// Empty: an anonymous connection.
    pub user: String,
    /// Unix seconds; `None` (or 0 from the backend): never expires.
    pub expire_at: Option<u64>,
    pub info: Option<Json>,
    /// Sent to the client in the connect reply.
    pub data: Option<Json>,
    /// Server-side subscriptions made at connect.
    pub channels: Vec<String>,
    /// Server-side subscriptions with options (`info`, `data`, `override`; `b64*` already
    /// decoded into `info` and `data`).
    pub subs: std::collections::BTreeMap<String, crate::grant::SubscribeOptions>,
    /// Kept with the connection and sent back with later proxy calls (when the proxy
    /// includes it); never shown to clients.
    pub meta: Option<Json>,
}

/// The backend's answer at the expiry of a proxied connection.
#[derive(Debug, Clone, Default)]
pub struct RefreshAnswer {
    pub expired: bool,
    pub expire_at: Option<u64>,
    pub info: Option<Json>,
    pub meta: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct SubscribeCall {
    pub channel: String,
    pub data: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct SubscribeAnswer {
    pub expire_at: Option<u64>,
    /// The subscription's channel info (in presence, join/leave and publications).
    pub info: Option<Json>,
    /// Sent to the client in the subscribe reply.
    pub data: Option<Json>,
    /// The namespace's options changed for this subscription.
    pub overrides: SubscribeOverride,
}

/// Options of the channel's namespace a subscribe proxy changes for one subscription
/// (Centrifugo's `override`); `None` keeps the namespace's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOverride {
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub force_recovery: Option<bool>,
    pub force_positioning: Option<bool>,
    pub force_push_join_leave: Option<bool>,
}

impl SubscribeOverride {
    /// The namespace's options with these applied, or `None` when nothing changes (the
    /// subscription then keeps no copy).
    pub fn apply(&self, ns: &NamespaceConfig) -> Option<Arc<NamespaceConfig>> {
        if *self == SubscribeOverride::default() {
            return None;
        }
        let mut ns = ns.clone();
        ns.presence = self.presence.unwrap_or(ns.presence);
        ns.join_leave = self.join_leave.unwrap_or(ns.join_leave);
        ns.force_recovery = self.force_recovery.unwrap_or(ns.force_recovery);
        ns.force_positioning = self.force_positioning.unwrap_or(ns.force_positioning);
        ns.force_push_join_leave = self.force_push_join_leave.unwrap_or(ns.force_push_join_leave);
        Some(Arc::new(ns))
    }
}

#[derive(Debug, Clone)]
pub struct PublishCall {
    pub channel: String,
    pub data: Json,
}

#[derive(Debug, Clone, Default)]
pub struct PublishAnswer {
    /// Replaces the client's data.
    pub data: Option<Json>,
    /// Deliver without keeping it in the channel's history.
    pub skip_history: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SubRefreshAnswer {
    pub expired: bool,
    pub expire_at: Option<u64>,
    pub info: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct RpcCall {
    pub method: String,
    pub data: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct RpcAnswer {
    pub data: Option<Json>,
}

/// Why a proxy call gave no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The backend refused with `{"error":{..}}`: the client gets this error.
    #[error("refused by the backend: {0}")]
    Refused(ProtocolError),
    /// The backend answered `{"disconnect":{..}}`: the connection ends with it.
    #[error("the backend disconnects: {} {}", .0.code, .0.reason)]
    Disconnect(Disconnect),
    /// No usable answer: the backend is down, too slow, answered another status than 200,
    /// something that is not the proxy's JSON, or more than the proxy's bound.
    #[error("{0}")]
    Failed(String),
}

/// One backend, as a namespace or the node names it.
#[async_trait]
pub trait Proxy: Send + Sync + 'static {
    async fn connect(&self, from: &Caller<'_>, call: ConnectCall) -> Result<ConnectAnswer, ProxyError>;
    async fn refresh(&self, from: &Caller<'_>) -> Result<RefreshAnswer, ProxyError>;
    async fn subscribe(&self, from: &Caller<'_>, call: SubscribeCall) -> Result<SubscribeAnswer, ProxyError>;
    async fn publish(&self, from: &Caller<'_>, call: PublishCall) -> Result<PublishAnswer, ProxyError>;
    async fn sub_refresh(&self, from: &Caller<'_>, channel: &str) -> Result<SubRefreshAnswer, ProxyError>;
    async fn rpc(&self, from: &Caller<'_>, call: RpcCall) -> Result<RpcAnswer, ProxyError>;
}

/// Every proxy of a node and what each is used for. Namespaces name theirs
/// (`subscribe_proxy_name`, `publish_proxy_name`, `sub_refresh_proxy_name`), found in `by_name`.
#[derive(Default, Clone)]
pub struct Proxies {
    /// Asked for connects without a token.
    pub connect: Option<Arc<dyn Proxy>>,
    /// Asked when a connection made by the connect proxy expires.
    pub refresh: Option<Arc<dyn Proxy>>,
    pub by_name: HashMap<String, Arc<dyn Proxy>>,
    /// RPC methods without a namespace (no `:`) that no application registered.
    pub rpc: Option<Arc<dyn Proxy>>,
    /// RPC methods `ns:method`, by `ns`.
    pub rpc_namespaces: HashMap<String, Arc<dyn Proxy>>,
    /// Lower-case names of the request headers some proxy forwards: what each connection
    /// keeps ([`ForwardedHeaders`]).
    pub forwarded_headers: Vec<String>,
}

impl Proxies {
    pub fn named(&self, name: &str) -> Option<&Arc<dyn Proxy>> {
        if name.is_empty() {
            None
        } else {
            self.by_name.get(name)
        }
    }

    /// The proxy of an RPC method: by the namespace before its first `:`, or the one for
    /// methods without a namespace.
    pub fn rpc_for(&self, method: &str) -> Option<&Arc<dyn Proxy>> {
        match method.split_once(':') {
            Some((ns, _)) => self.rpc_namespaces.get(ns),
            None => self.rpc.as_ref(),
        }
    }

    /// Keeps the headers proxies forward, out of a request's `(name, value)` pairs.
    pub fn keep_headers<'a>(&self, headers: impl Iterator<Item = (&'a str, &'a str)>) -> ForwardedHeaders {
        if self.forwarded_headers.is_empty() {
            return Box::default();
        }
        headers
            .filter(|(name, _)| self.forwarded_headers.iter().any(|h| h.eq_ignore_ascii_case(name)))
            .map(|(name, value)| (name.into(), value.into()))
            .collect()
    }
}

/// What a connection keeps for its proxies.
#[derive(Debug, Default)]
pub(crate) struct ProxyState {
    pub headers: ForwardedHeaders,
    pub meta: Option<Json>,
    /// Connected through the connect proxy, with a refresh proxy configured: the server
    /// refreshes the connection at expiry, the client does not.
    pub server_refresh: bool,
}

/// The answer of a refresh asked in the background, applied by the session when it takes
/// it from its outbox ([`Control::Proxied`]).
#[derive(Debug)]
pub enum Deferred {
    Refresh(Result<RefreshAnswer, ProxyError>),
    SubRefresh { channel: String, answer: Result<SubRefreshAnswer, ProxyError> },
}

/// How long a connection or subscription lives on when its refresh could not reach the
/// backend, before it is asked again (as Centrifugo does: a backend's hiccup does not end
/// every connection).
pub const RETRY_AFTER_FAILURE_SECS: u64 = 60;

/// A backend's `expire_at`: 0 means never.
pub fn expire_at(value: i64) -> Option<u64> {
    (value > 0).then_some(value as u64)
}

/// Asks `proxy` in the background and queues the answer on the connection's outbox.
pub(crate) fn spawn_refresh(
    proxy: Arc<dyn Proxy>,
    conn: Arc<Connection>,
    owned: OwnedCaller,
    channel: Option<String>,
) {
    tokio::spawn(async move {
        let from = owned.borrow();
        let deferred = match channel {
            None => Deferred::Refresh(proxy.refresh(&from).await),
            Some(channel) => {
                let answer = proxy.sub_refresh(&from, &channel).await;
                Deferred::SubRefresh { channel, answer }
            }
        };
        conn.outbox.control(Control::Proxied(deferred));
    });
}

/// A [`Caller`] that can move into a task.
pub(crate) struct OwnedCaller {
    pub client: String,
    pub transport: &'static str,
    pub protocol: &'static str,
    pub user: String,
    pub meta: Option<Json>,
    pub headers: Vec<(Box<str>, Box<str>)>,
}

impl OwnedCaller {
    fn borrow(&self) -> Caller<'_> {
        Caller {
            client: &self.client,
            transport: self.transport,
            protocol: self.protocol,
            user: &self.user,
            meta: self.meta.as_ref(),
            headers: &self.headers,
        }
    }
}

/// The new expiry after a refresh that failed.
pub(crate) fn retry_expiry() -> Option<u64> {
    Some(unix_now() + RETRY_AFTER_FAILURE_SECS)
}
