//! The session's calls to proxies (see `crate::proxy`): kept apart so that `session.rs`
//! only calls in where a decision is the backend's.

use super::{CommandError, Session};
use crate::auth::unix_now;
use crate::channel::{ChannelName, NamespaceConfig};
use crate::grant::ConnectGrant;
use crate::proxy::{
    self, Caller, ConnectCall, Deferred, OwnedCaller, ProxyError, PublishAnswer, RpcCall, SubscribeAnswer,
    SubscribeCall,
};
use hubbub_protocol::codes::*;
use hubbub_protocol::command::{ConnectRequest, RpcRequest, SubscribeRequest};
use hubbub_protocol::{Disconnect, Json};
use tokio::time::{Duration, Instant};

impl Session {
    /// Keeps the request headers that proxies forward (the transport calls this before
    /// driving the session, with what [`crate::proxy::Proxies::keep_headers`] kept of the
    /// upgrade's or the first request's headers).
    pub fn set_forwarded_headers(&mut self, headers: crate::proxy::ForwardedHeaders) {
        self.proxy.headers = headers;
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            client: &self.conn.client,
            transport: self.kind.name,
            protocol: self.conn.protocol.name(),
            user: self.user.as_deref().unwrap_or_default(),
            meta: self.proxy.meta.as_ref(),
            headers: &self.proxy.headers,
        }
    }

    fn owned_caller(&self) -> OwnedCaller {
        OwnedCaller {
            client: self.conn.client.clone(),
            transport: self.kind.name,
            protocol: self.conn.protocol.name(),
            user: self.user.clone().unwrap_or_default(),
            meta: self.proxy.meta.clone(),
            headers: self.proxy.headers.to_vec(),
        }
    }

    /// A connect without a token, when a connect proxy is configured: the backend says who
    /// the client is. Returns the claims the connection gets and the data for the client.
    pub(super) async fn proxy_connect(
        &mut self,
        req: &ConnectRequest,
    ) -> Option<Result<(ConnectGrant, Option<Json>), CommandError>> {
        if !req.token.is_empty() {
            return None;
        }
        let proxies = self.node.proxies();
        let proxy = proxies.connect.clone()?;
        let call =
            ConnectCall { data: req.data.clone(), name: req.name.clone(), version: req.version.clone() };
        let answer = match proxy.connect(&self.caller(), call).await {
            Ok(answer) => answer,
            Err(e) => return Some(Err(self.proxy_failure("connect", e))),
        };
        self.proxy.server_refresh = proxies.refresh.is_some();
        let grant = ConnectGrant {
            user: answer.user,
            expire_at: answer.expire_at.filter(|&at| at > 0),
            info: answer.info,
            channels: answer.channels,
            subs: answer.subs,
            meta: answer.meta,
        };
        Some(Ok((grant, answer.data)))
    }

    /// The connect reply's `expires`/`ttl`: a connection the server refreshes through the
    /// refresh proxy tells the client nothing (it must not refresh by itself).
    pub(super) fn client_refreshes(&self) -> bool {
        !self.proxy.server_refresh
    }

    /// A subscribe without a token in a namespace with a subscribe proxy: the backend
    /// decides instead of the namespace's `allow_subscribe_for_client`. `None` when the
    /// namespace's own rules apply.
    pub(super) async fn proxy_subscribe(
        &self,
        req: &SubscribeRequest,
        name: &ChannelName<'_>,
        ns: &NamespaceConfig,
    ) -> Option<Result<SubscribeAnswer, CommandError>> {
        if !req.token.is_empty() {
            return None;
        }
        let proxy = self.node.proxies().named(&ns.subscribe_proxy_name)?.clone();
        if name.user_allowed(self.user.as_deref().unwrap_or_default()) == Some(false) || name.is_private() {
            return Some(Err(ERROR_PERMISSION_DENIED.into()));
        }
        let call = SubscribeCall { channel: req.channel.clone(), data: req.data.clone() };
        Some(proxy.subscribe(&self.caller(), call).await.map_err(|e| self.proxy_failure("subscribe", e)))
    }

    /// Whether a subscription of the namespace is refreshed by the server through its
    /// sub_refresh proxy (then its client is not told when it expires).
    pub(super) fn server_sub_refresh(&self, ns: &NamespaceConfig) -> bool {
        self.node.proxies().named(&ns.sub_refresh_proxy_name).is_some()
    }

    /// A publish in a namespace with a publish proxy: the backend decides instead of
    /// `allow_publish_for_client`, and may replace the data. `None` when the namespace's own
    /// rules apply.
    pub(super) async fn proxy_publish(
        &self,
        channel: &str,
        data: &Json,
        name: &ChannelName<'_>,
        ns: &NamespaceConfig,
    ) -> Option<Result<PublishAnswer, CommandError>> {
        let proxy = self.node.proxies().named(&ns.publish_proxy_name)?.clone();
        if name.user_allowed(self.user.as_deref().unwrap_or_default()) == Some(false) {
            return Some(Err(ERROR_PERMISSION_DENIED.into()));
        }
        let call = proxy::PublishCall { channel: channel.to_owned(), data: data.clone() };
        Some(proxy.publish(&self.caller(), call).await.map_err(|e| self.proxy_failure("publish", e)))
    }

    /// An RPC method that no application registered, sent to the proxy of its namespace.
    pub(super) async fn proxy_rpc(&self, req: RpcRequest) -> Result<Option<Json>, CommandError> {
        let Some(proxy) = self.node.proxies().rpc_for(&req.method).cloned() else {
            return Err(ERROR_METHOD_NOT_FOUND.into());
        };
        let call = RpcCall { method: req.method, data: req.data };
        match proxy.rpc(&self.caller(), call).await {
            Ok(answer) => Ok(answer.data),
            Err(e) => Err(self.proxy_failure("rpc", e)),
        }
    }

    /// What the client gets when a proxy gave no result.
    fn proxy_failure(&self, call: &'static str, e: ProxyError) -> CommandError {
        match e {
            ProxyError::Refused(e) => CommandError::Error(e),
            ProxyError::Disconnect(d) => {
                tracing::info!(client = %self.conn.client, call, code = d.code, "the proxy disconnects");
                CommandError::Disconnect(d)
            }
            ProxyError::Failed(why) => {
                tracing::warn!(client = %self.conn.client, call, error = %why, "proxy call failed");
                CommandError::Error(ERROR_INTERNAL.into())
            }
        }
    }

    /// When the next server-side refresh is due: the connection's or a subscription's
    /// expiry, when a proxy refreshes them (no grace period: the backend is asked at expiry).
    pub(super) fn proxy_refresh_due(&self) -> Option<Instant> {
        let conn = self.expires_at.filter(|_| self.proxy.server_refresh);
        let subs = self.subs.values().filter(|s| s.server_refresh).filter_map(|s| s.expires_at);
        let exp = conn.into_iter().chain(subs).min()?;
        Some(Instant::now() + Duration::from_secs(exp.saturating_sub(unix_now())))
    }

    /// Asks the proxies, in the background, about what expired; the answers come back
    /// through the outbox ([`Session::apply_deferred`]). Until then the expiry is unset, so
    /// the same refresh is not asked twice and the expiry checks leave it alone.
    pub(super) fn start_proxy_refreshes(&mut self) {
        let now = unix_now();
        if self.proxy.server_refresh && self.expires_at.is_some_and(|exp| exp <= now) {
            if let Some(proxy) = self.node.proxies().refresh.clone() {
                self.expires_at = None;
                proxy::spawn_refresh(proxy, self.conn.clone(), self.owned_caller(), None);
            }
        }
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.server_refresh && s.expires_at.is_some_and(|exp| exp <= now))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in due {
            let Ok((ns, _)) = self.node.namespaces.resolve(&channel) else { continue };
            let Some(proxy) = self.node.proxies().named(&ns.sub_refresh_proxy_name).cloned() else {
                continue;
            };
            if let Some(sub) = self.subs.get_mut(&channel) {
                sub.expires_at = None;
            }
            proxy::spawn_refresh(proxy, self.conn.clone(), self.owned_caller(), Some(channel));
        }
    }

    /// Applies a refresh's answer: a new expiry (and info), or the end of the connection
    /// (expired, or an `expire_at` already past: 3005; a subscription's: 3006; the
    /// backend's own disconnect).
    pub(super) fn apply_deferred(&mut self, deferred: Deferred) -> Result<(), Disconnect> {
        match deferred {
            Deferred::Refresh(answer) => {
                if self.user.is_none() {
                    return Ok(());
                }
                match answer {
                    // An expiry already past would be asked again at once, in a loop.
                    Ok(a) if a.expired || a.expire_at.is_some_and(|t| t <= unix_now()) => {
                        return Err(Disconnect::EXPIRED)
                    }
                    Ok(a) => {
                        self.expires_at = a.expire_at;
                        if a.info.is_some() {
                            self.conn_info = a.info;
                        }
                        if a.meta.is_some() {
                            self.proxy.meta = a.meta;
                        }
                    }
                    Err(ProxyError::Disconnect(d)) => return Err(d),
                    Err(e) => {
                        tracing::warn!(client = %self.conn.client, error = %e, "refresh proxy: retrying later");
                        self.expires_at = proxy::retry_expiry();
                    }
                }
            }
            Deferred::SubRefresh { channel, answer } => {
                let Some(sub) = self.subs.get_mut(&channel) else { return Ok(()) };
                match answer {
                    Ok(a) if a.expired || a.expire_at.is_some_and(|t| t <= unix_now()) => {
                        return Err(Disconnect::SUB_EXPIRED)
                    }
                    Ok(a) => {
                        sub.expires_at = a.expire_at;
                        if a.info.is_some() {
                            sub.chan_info = a.info;
                        }
                    }
                    Err(ProxyError::Disconnect(d)) => return Err(d),
                    Err(e) => {
                        tracing::warn!(client = %self.conn.client, %channel, error = %e, "sub_refresh proxy: retrying later");
                        sub.expires_at = proxy::retry_expiry();
                    }
                }
            }
        }
        Ok(())
    }
}
