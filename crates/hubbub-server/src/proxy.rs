//! Proxies over HTTP, as Centrifugo makes them: the configured `proxies` (each a name, an
//! endpoint, a timeout, the headers it forwards) and what each is used for
//! (`connect_proxy_name`, `refresh_proxy_name`, `rpc_proxy_name`, `rpc_namespaces`, the
//! namespaces' `subscribe_proxy_name`, `publish_proxy_name`, `sub_refresh_proxy_name`),
//! turned into core's [`hubbub_core::proxy::Proxies`].
//!
//! Every call is a `POST` of Centrifugo's request JSON (`client`, `transport`, `protocol`,
//! `encoding`, then the call's own fields) to the proxy's endpoint; the answer is
//! `{"result":{..}}`, `{"error":{"code","message"}}` or `{"disconnect":{"code","reason"}}`.
//! Anything else (a refused connection, a timeout, another status than 200, JSON that is
//! not this shape, a body over `max_response_bytes`) is a failure: the client gets the
//! protocol's internal error (100), and a refresh is tried again a minute later.

use crate::config::Config;
use async_trait::async_trait;
use base64::Engine as _;
use hubbub_core::duration::serde_human;
use hubbub_core::proxy::{
    expire_at, Caller, ConnectAnswer, ConnectCall, Proxies, Proxy, ProxyError, PublishAnswer, PublishCall,
    RefreshAnswer, RpcAnswer, RpcCall, SubRefreshAnswer, SubscribeAnswer, SubscribeCall, SubscribeOverride,
};
use hubbub_protocol::{Disconnect, Json, ProtocolError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One backend (`[[proxies]]`), with Centrifugo's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// How the rest of the configuration refers to it.
    pub name: String,
    /// `http://host:port/path`: every call of this proxy is a POST there.
    pub endpoint: String,
    /// Longest a call may take, from connecting to the end of the answer.
    #[serde(with = "serde_human")]
    pub timeout: Duration,
    /// Request headers of the client's connection (the WebSocket upgrade, the streaming
    /// request) sent along with every call. Only these are kept per connection.
    pub http_headers: Vec<String>,
    /// Headers added to every call (an API key of the backend, say).
    pub static_http_headers: BTreeMap<String, String>,
    /// Send the connection's `meta` (from the connect proxy's answer) with every call.
    pub include_connection_meta: bool,
    /// Send payloads as `b64data` (base64) instead of `data` (JSON).
    pub binary_encoding: bool,
    /// Largest answer read from the backend; a larger one is a failure (what a backend
    /// answers may be kept per connection: info, meta).
    pub max_response_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: String::new(),
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            static_http_headers: BTreeMap::new(),
            include_connection_meta: false,
            binary_encoding: false,
            max_response_bytes: 1 << 20,
        }
    }
}

/// `[[rpc_namespaces]]`: RPC methods `name:method` go to the proxy `rpc_proxy_name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcNamespaceConfig {
    pub name: String,
    pub rpc_proxy_name: String,
}

/// Checks the proxies' keys and every reference to a proxy; the error names the key.
pub fn validate(config: &Config) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, p) in config.proxies.iter().enumerate() {
        let key = |k: &str| format!("proxies[{i}].{k}");
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err((key("name"), "must be set and unique".into()));
        }
        match reqwest::Url::parse(&p.endpoint) {
            Ok(url) if url.scheme() == "http" && url.host().is_some() => {}
            _ => {
                return Err((
                    key("endpoint"),
                    "expected an http:// URL (https and grpc endpoints are not supported)".into(),
                ))
            }
        }
        if p.timeout < Duration::from_millis(1) {
            return Err((key("timeout"), "must be above 0".into()));
        }
        if p.max_response_bytes < 1024 {
            return Err((key("max_response_bytes"), "must be at least 1024".into()));
        }
        if let Some(h) =
            p.http_headers.iter().find(|h| reqwest::header::HeaderName::try_from(h.as_str()).is_err())
        {
            return Err((key("http_headers"), format!("{h:?} is not a header name")));
        }
        for (name, value) in &p.static_http_headers {
            if reqwest::header::HeaderName::try_from(name.as_str()).is_err()
                || reqwest::header::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err((key("static_http_headers"), format!("{name:?} is not a valid header")));
            }
        }
    }
    let known = |key: String, name: &str| {
        if name.is_empty() || names.contains(name) {
            Ok(())
        } else {
            Err((key, format!("no proxy named {name:?} in proxies")))
        }
    };
    known("connect_proxy_name".into(), &config.connect_proxy_name)?;
    known("refresh_proxy_name".into(), &config.refresh_proxy_name)?;
    if !config.refresh_proxy_name.is_empty() && config.connect_proxy_name.is_empty() {
        return Err((
            "refresh_proxy_name".into(),
            "needs connect_proxy_name: it refreshes the connections the connect proxy made".into(),
        ));
    }
    known("rpc_proxy_name".into(), &config.rpc_proxy_name)?;
    for (i, ns) in config.rpc_namespaces.iter().enumerate() {
        if ns.name.is_empty() || ns.name.contains(':') {
            return Err((format!("rpc_namespaces[{i}].name"), "must be set, without ':'".into()));
        }
        if ns.rpc_proxy_name.is_empty() {
            return Err((format!("rpc_namespaces[{i}].rpc_proxy_name"), "must be set".into()));
        }
        known(format!("rpc_namespaces[{i}].rpc_proxy_name"), &ns.rpc_proxy_name)?;
    }
    for (i, ns) in config.namespaces.iter().enumerate() {
        known(format!("namespaces[{i}].subscribe_proxy_name"), &ns.subscribe_proxy_name)?;
        known(format!("namespaces[{i}].publish_proxy_name"), &ns.publish_proxy_name)?;
        known(format!("namespaces[{i}].sub_refresh_proxy_name"), &ns.sub_refresh_proxy_name)?;
        if !ns.sub_refresh_proxy_name.is_empty() && ns.subscribe_proxy_name.is_empty() {
            return Err((
                format!("namespaces[{i}].sub_refresh_proxy_name"),
                "needs subscribe_proxy_name: it refreshes the subscriptions the subscribe proxy made".into(),
            ));
        }
    }
    Ok(())
}

/// Builds the node's proxies from a validated configuration.
pub fn build(config: &Config) -> anyhow::Result<Proxies> {
    let mut proxies = Proxies::default();
    if config.proxies.is_empty() {
        return Ok(proxies);
    }
    // One client (one connection pool) for every proxy. No system proxy: backends are
    // reached directly. No redirects: an answer is the endpoint's own.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    for p in &config.proxies {
        let mut static_headers = reqwest::header::HeaderMap::new();
        for (name, value) in &p.static_http_headers {
            static_headers.insert(
                reqwest::header::HeaderName::try_from(name.as_str())?,
                reqwest::header::HeaderValue::try_from(value.as_str())?,
            );
        }
        let proxy = HttpProxy {
            name: p.name.clone(),
            endpoint: reqwest::Url::parse(&p.endpoint)?,
            timeout: p.timeout,
            forwarded: p.http_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            static_headers,
            include_meta: p.include_connection_meta,
            binary: p.binary_encoding,
            max_response_bytes: p.max_response_bytes,
            client: client.clone(),
        };
        proxies.by_name.insert(p.name.clone(), Arc::new(proxy));
        for h in &p.http_headers {
            let h = h.to_ascii_lowercase();
            if !proxies.forwarded_headers.contains(&h) {
                proxies.forwarded_headers.push(h);
            }
        }
    }
    let named = |name: &str| proxies.by_name.get(name).cloned();
    proxies.connect = named(&config.connect_proxy_name);
    proxies.refresh = named(&config.refresh_proxy_name);
    proxies.rpc = named(&config.rpc_proxy_name);
    proxies.rpc_namespaces = config
        .rpc_namespaces
        .iter()
        .filter_map(|ns| Some((ns.name.clone(), named(&ns.rpc_proxy_name)?)))
        .collect();
    Ok(proxies)
}

/// What a connection keeps of its request's headers: those some proxy forwards.
pub fn kept_headers(
    node: &hubbub_core::Node,
    headers: &axum::http::HeaderMap,
) -> hubbub_core::proxy::ForwardedHeaders {
    node.proxies()
        .keep_headers(headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))))
}

struct HttpProxy {
    name: String,
    endpoint: reqwest::Url,
    timeout: Duration,
    /// Lower-case names of the connection's headers this proxy sends.
    forwarded: Vec<String>,
    static_headers: reqwest::header::HeaderMap,
    include_meta: bool,
    binary: bool,
    max_response_bytes: usize,
    client: reqwest::Client,
}

/// The fields every request carries.
#[derive(Serialize)]
struct Common<'a> {
    client: &'a str,
    transport: &'a str,
    protocol: &'a str,
    encoding: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Json>,
}

#[derive(Serialize)]
struct Request<'a, T: Serialize> {
    #[serde(flatten)]
    common: Common<'a>,
    #[serde(flatten)]
    call: T,
}

/// A payload as the proxy sends it: `data` (JSON) or `b64data`.
#[derive(Serialize, Default)]
struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Response<T> {
    result: Option<T>,
    error: Option<ErrorBody>,
    disconnect: Option<DisconnectBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct DisconnectBody {
    code: u32,
    #[serde(default)]
    reason: String,
}

/// `data`/`b64data` or `info`/`b64info` of an answer.
fn payload(json: Option<Json>, b64: &str, field: &str) -> Result<Option<Json>, ProxyError> {
    if b64.is_empty() {
        return Ok(json);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ProxyError::Failed(format!("b64{field} is not base64: {e}")))?;
    Ok(Some(hubbub_protocol::Payload::from_bytes(&bytes)))
}

impl HttpProxy {
    fn payload<'a>(&self, data: Option<&'a Json>) -> Payload<'a> {
        match data {
            // A binary payload (a protobuf client's bytes) has no JSON form: always base64.
            Some(d) if self.binary || d.is_binary() => Payload {
                data: None,
                b64data: Some(base64::engine::general_purpose::STANDARD.encode(d.as_bytes())),
            },
            Some(d) => Payload { data: Some(d), b64data: None },
            None => Payload::default(),
        }
    }

    /// Posts one call and reads its answer, bounded in time and bytes.
    async fn call<C: Serialize + Send, R: DeserializeOwned + Default>(
        &self,
        kind: &'static str,
        from: &Caller<'_>,
        call: C,
    ) -> Result<R, ProxyError> {
        let common = Common {
            client: from.client,
            transport: from.transport,
            protocol: from.protocol,
            encoding: if self.binary { "binary" } else { "json" },
            user: from.user,
            meta: from.meta.filter(|_| self.include_meta),
        };
        let body = serde_json::to_vec(&Request { common, call })
            .map_err(|e| ProxyError::Failed(format!("cannot encode the {kind} request: {e}")))?;
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .headers(self.static_headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in
            from.headers.iter().filter(|(n, _)| self.forwarded.iter().any(|f| f.eq_ignore_ascii_case(n)))
        {
            request = request.header(&**name, &**value);
        }
        let failed = |why: String| ProxyError::Failed(format!("proxy {} ({kind}): {why}", self.name));
        let read = async {
            let mut response = request.body(body).send().await.map_err(|e| failed(describe(&e)))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(failed(format!("answered {}", response.status())));
            }
            if response.content_length().is_some_and(|n| n > self.max_response_bytes as u64) {
                return Err(failed(format!("answer over max_response_bytes ({})", self.max_response_bytes)));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| failed(describe(&e)))? {
                if body.len() + chunk.len() > self.max_response_bytes {
                    return Err(failed(format!(
                        "answer over max_response_bytes ({})",
                        self.max_response_bytes
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        // The request's own timeout covers the body too; this one also covers the
        // encoding, so that a call never outlives `timeout` by much.
        let body = tokio::time::timeout(self.timeout + Duration::from_millis(50), read)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.timeout)))??;
        let answer: Response<R> =
            serde_json::from_slice(&body).map_err(|e| failed(format!("not a proxy answer: {e}")))?;
        if let Some(d) = answer.disconnect {
            return Err(match u16::try_from(d.code) {
                Ok(code @ 3000..=4999) => {
                    ProxyError::Disconnect(Disconnect { code, reason: truncate(d.reason).into() })
                }
                _ => failed(format!("disconnect code {} is not in 3000..=4999", d.code)),
            });
        }
        if let Some(e) = answer.error {
            return Err(ProxyError::Refused(ProtocolError {
                code: e.code,
                message: e.message,
                temporary: e.temporary,
            }));
        }
        Ok(answer.result.unwrap_or_default())
    }
}

/// A WebSocket close reason holds at most 123 bytes.
fn truncate(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        use std::error::Error;
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConnectResult {
    user: String,
    expire_at: i64,
    info: Option<Json>,
    b64info: String,
    data: Option<Json>,
    b64data: String,
    channels: Vec<String>,
    subs: BTreeMap<String, SubsBody>,
    meta: Option<Json>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RefreshResult {
    expired: bool,
    expire_at: i64,
    info: Option<Json>,
    b64info: String,
    meta: Option<Json>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeResult {
    expire_at: i64,
    info: Option<Json>,
    b64info: String,
    data: Option<Json>,
    b64data: String,
    #[serde(rename = "override")]
    overrides: Option<OverrideBody>,
}

/// One entry of the connect result's `subs` (Centrifugo's SubscribeOptions; what Hubbub does
/// not use, such as `expire_at` or tags filters, is ignored).
#[derive(Deserialize, Default)]
#[serde(default)]
struct SubsBody {
    info: Option<Json>,
    b64info: String,
    data: Option<Json>,
    b64data: String,
    #[serde(rename = "override")]
    overrides: Option<OverrideBody>,
}

fn grant_bool(b: BoolValue) -> hubbub_core::grant::BoolValue {
    hubbub_core::grant::BoolValue { value: b.value }
}

/// Centrifugo's `override`: each option as `{"value": bool}` (protobuf's BoolValue).
#[derive(Deserialize, Default)]
#[serde(default)]
struct OverrideBody {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BoolValue {
    value: bool,
}

impl From<OverrideBody> for SubscribeOverride {
    fn from(o: OverrideBody) -> Self {
        let v = |b: Option<BoolValue>| b.map(|b| b.value);
        SubscribeOverride {
            presence: v(o.presence),
            join_leave: v(o.join_leave),
            force_recovery: v(o.force_recovery),
            force_positioning: v(o.force_positioning),
            force_push_join_leave: v(o.force_push_join_leave),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublishResult {
    data: Option<Json>,
    b64data: String,
    skip_history: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubRefreshResult {
    expired: bool,
    expire_at: i64,
    info: Option<Json>,
    b64info: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RpcResult {
    data: Option<Json>,
    b64data: String,
}

#[derive(Serialize)]
struct Empty {}

#[async_trait]
impl Proxy for HttpProxy {
    async fn connect(&self, from: &Caller<'_>, call: ConnectCall) -> Result<ConnectAnswer, ProxyError> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(flatten)]
            payload: Payload<'a>,
            #[serde(skip_serializing_if = "str::is_empty")]
            name: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            version: &'a str,
        }
        let body =
            Body { payload: self.payload(call.data.as_ref()), name: &call.name, version: &call.version };
        let r: ConnectResult = self.call("connect", from, body).await?;
        let mut subs = BTreeMap::new();
        for (channel, s) in r.subs {
            let options = hubbub_core::grant::SubscribeOptions {
                info: payload(s.info, &s.b64info, "info")?,
                data: payload(s.data, &s.b64data, "data")?,
                r#override: s.overrides.map(|o| hubbub_core::grant::SubscribeOverride {
                    presence: o.presence.map(grant_bool),
                    join_leave: o.join_leave.map(grant_bool),
                    force_recovery: o.force_recovery.map(grant_bool),
                    force_positioning: o.force_positioning.map(grant_bool),
                    force_push_join_leave: o.force_push_join_leave.map(grant_bool),
                }),
                ..Default::default()
            };
            subs.insert(channel, options);
        }
        Ok(ConnectAnswer {
            user: r.user,
            expire_at: expire_at(r.expire_at),
            info: payload(r.info, &r.b64info, "info")?,
            data: payload(r.data, &r.b64data, "data")?,
            channels: r.channels,
            subs,
            meta: r.meta,
        })
    }

    async fn refresh(&self, from: &Caller<'_>) -> Result<RefreshAnswer, ProxyError> {
        let r: RefreshResult = self.call("refresh", from, Empty {}).await?;
        Ok(RefreshAnswer {
            expired: r.expired,
            expire_at: expire_at(r.expire_at),
            info: payload(r.info, &r.b64info, "info")?,
            meta: r.meta,
        })
    }

    async fn subscribe(&self, from: &Caller<'_>, call: SubscribeCall) -> Result<SubscribeAnswer, ProxyError> {
        #[derive(Serialize)]
        struct Body<'a> {
            channel: &'a str,
            #[serde(flatten)]
            payload: Payload<'a>,
        }
        let body = Body { channel: &call.channel, payload: self.payload(call.data.as_ref()) };
        let r: SubscribeResult = self.call("subscribe", from, body).await?;
        Ok(SubscribeAnswer {
            expire_at: expire_at(r.expire_at),
            info: payload(r.info, &r.b64info, "info")?,
            data: payload(r.data, &r.b64data, "data")?,
            overrides: r.overrides.map(Into::into).unwrap_or_default(),
        })
    }

    async fn publish(&self, from: &Caller<'_>, call: PublishCall) -> Result<PublishAnswer, ProxyError> {
        #[derive(Serialize)]
        struct Body<'a> {
            channel: &'a str,
            #[serde(flatten)]
            payload: Payload<'a>,
        }
        let body = Body { channel: &call.channel, payload: self.payload(Some(&call.data)) };
        let r: PublishResult = self.call("publish", from, body).await?;
        Ok(PublishAnswer { data: payload(r.data, &r.b64data, "data")?, skip_history: r.skip_history })
    }

    async fn sub_refresh(&self, from: &Caller<'_>, channel: &str) -> Result<SubRefreshAnswer, ProxyError> {
        #[derive(Serialize)]
        struct Body<'a> {
            channel: &'a str,
        }
        let r: SubRefreshResult = self.call("sub_refresh", from, Body { channel }).await?;
        Ok(SubRefreshAnswer {
            expired: r.expired,
            expire_at: expire_at(r.expire_at),
            info: payload(r.info, &r.b64info, "info")?,
        })
    }

    async fn rpc(&self, from: &Caller<'_>, call: RpcCall) -> Result<RpcAnswer, ProxyError> {
        #[derive(Serialize)]
        struct Body<'a> {
            method: &'a str,
            #[serde(flatten)]
            payload: Payload<'a>,
        }
        let body = Body { method: &call.method, payload: self.payload(call.data.as_ref()) };
        let r: RpcResult = self.call("rpc", from, body).await?;
        Ok(RpcAnswer { data: payload(r.data, &r.b64data, "data")? })
    }
}
