//! The server API's operations, one function per method, shared by every way in: the HTTP
//! API (`/api/<method>`), the gRPC API and anything else in the process that acts for the
//! application (async consumers). Each takes its typed request ([`types`]) and returns its
//! typed result or an [`ApiError`]; the callers only decode, encode and map errors.
//!
//! ```ignore
//! let api = ServerApi::new(node.clone(), ApiConfig::default());
//! let result = api.publish(PublishRequest { channel: "news".into(), data: Some(json), ..Default::default() }).await?;
//! ```

pub mod idempotency;
pub mod types;

use crate::cluster::UserCommand;
use crate::engine::HistoryOptions;
use crate::node::history_options;
use crate::rpc::Caller;
use crate::Node;
use hubbub_protocol::codes::*;
use hubbub_protocol::{Disconnect, Json, ProtocolError, Publication, StreamPosition};
use idempotency::Idempotency;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
pub use types::*;

/// The server API's bounds (`[api]` in the configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Most commands one `batch` may carry (the body size limit bounds them too).
    pub batch_max_commands: usize,
    /// How long a publish's `idempotency_key` is remembered (Centrifugo: 5 minutes).
    #[serde(with = "crate::duration::serde_human")]
    pub idempotency_ttl: Duration,
    /// Most idempotency keys remembered at once; beyond it the oldest are forgotten.
    pub idempotency_max_keys: usize,
    /// Most bytes of idempotency keys (with their channels) remembered at once.
    pub idempotency_max_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            batch_max_commands: 1000,
            idempotency_ttl: Duration::from_secs(300),
            idempotency_max_keys: 100_000,
            idempotency_max_bytes: 16 << 20,
        }
    }
}

/// Why a server API call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (a missing field, bad base64, an out-of-range code): the
    /// HTTP API answers 400, batches and gRPC error 107 with this message.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The method refused or failed (unknown channel, not available, internal): the HTTP
    /// API answers 200 with this error in the body, as Centrifugo does.
    #[error(transparent)]
    Refused(#[from] ProtocolError),
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    /// The protocol error a reply carries.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            ApiError::BadRequest(message) => ProtocolError {
                code: ERROR_BAD_REQUEST.code,
                message: format!("bad request: {message}"),
                temporary: false,
            },
            ApiError::Refused(e) => e.clone(),
        }
    }
}

impl From<hubbub_protocol::codes::StaticError> for ApiError {
    fn from(e: hubbub_protocol::codes::StaticError) -> Self {
        ApiError::Refused(e.into())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn require(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty() {
        return Err(ApiError::bad(format!("`{field}` is required")));
    }
    Ok(())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The payload of a publish: `data` (JSON), or `b64data` (base64). Exactly one.
fn payload(data: Option<Json>, b64data: &str) -> ApiResult<Json> {
    match (data, b64data.is_empty()) {
        (Some(_), false) => Err(ApiError::bad("give `data` or `b64data`, not both")),
        (Some(data), true) => Ok(data),
        (None, false) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64data)
                .map_err(|e| ApiError::bad(format!("`b64data` is not base64: {e}")))?;
            // Until publications carry bytes, binary data must be JSON text to be delivered
            // to JSON clients unchanged.
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::bad("`b64data`: binary (non-JSON) payloads are not supported yet"))?;
            hubbub_protocol::json_from_str(&text)
                .map_err(|_| ApiError::bad("`b64data`: binary (non-JSON) payloads are not supported yet"))
        }
        (None, true) => Err(ApiError::bad("`data` is required")),
    }
}

/// The operations of the server API over one node.
pub struct ServerApi {
    node: Arc<Node>,
    config: ApiConfig,
    idempotency: Idempotency,
}

/// How a publish is made, shared by `publish` and each channel of `broadcast`.
struct PublishSpec<'a> {
    data: &'a Json,
    skip_history: bool,
    tags: &'a std::collections::HashMap<String, String>,
    idempotency_key: &'a str,
}

impl ServerApi {
    pub fn new(node: Arc<Node>, config: ApiConfig) -> Self {
        let idempotency = Idempotency::new(
            config.idempotency_ttl,
            config.idempotency_max_keys,
            config.idempotency_max_bytes,
        );
        ServerApi { node, config, idempotency }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// Idempotency keys kept now, and their estimated bytes.
    pub fn idempotency_stats(&self) -> (usize, usize) {
        self.idempotency.stats()
    }

    pub async fn publish(&self, req: PublishRequest) -> ApiResult<PublishResult> {
        require("channel", &req.channel)?;
        let data = payload(req.data, &req.b64data)?;
        let spec = PublishSpec {
            data: &data,
            skip_history: req.skip_history,
            tags: &req.tags,
            idempotency_key: &req.idempotency_key,
        };
        Ok(self.publish_one(&req.channel, &spec).await?.into())
    }

    pub async fn broadcast(&self, req: BroadcastRequest) -> ApiResult<BroadcastResult> {
        if req.channels.is_empty() {
            return Err(ApiError::bad("`channels` is required"));
        }
        let data = payload(req.data, &req.b64data)?;
        let spec = PublishSpec {
            data: &data,
            skip_history: req.skip_history,
            tags: &req.tags,
            idempotency_key: &req.idempotency_key,
        };
        let mut responses = Vec::with_capacity(req.channels.len());
        for channel in &req.channels {
            responses.push(match self.publish_one(channel, &spec).await {
                Ok(position) => PublishResponse::Result(position.into()),
                Err(error) => PublishResponse::Error(error.to_protocol()),
            });
        }
        Ok(BroadcastResult { responses })
    }

    async fn publish_one(&self, channel: &str, spec: &PublishSpec<'_>) -> ApiResult<StreamPosition> {
        require("channel", channel)?;
        let publish = || async {
            let tags = (!spec.tags.is_empty()).then(|| spec.tags.clone());
            let publication = Publication { data: spec.data.clone(), info: None, offset: 0, tags };
            self.node.publish_publication(channel, publication, spec.skip_history).await
        };
        if spec.idempotency_key.is_empty() {
            return Ok(publish().await?);
        }
        let slot = self.idempotency.slot(channel, spec.idempotency_key);
        Ok(slot.get_or_try_init(publish).await?.clone())
    }

    pub async fn subscribe(&self, req: SubscribeRequest) -> ApiResult<Empty> {
        require("user", &req.user)?;
        require("channel", &req.channel)?;
        let client = non_empty(req.client);
        self.node
            .user_command(UserCommand::Subscribe { user: req.user, channel: req.channel, client })
            .await?;
        Ok(Empty {})
    }

    pub async fn unsubscribe(&self, req: UnsubscribeRequest) -> ApiResult<Empty> {
        require("user", &req.user)?;
        require("channel", &req.channel)?;
        let client = non_empty(req.client);
        self.node
            .user_command(UserCommand::Unsubscribe { user: req.user, channel: req.channel, client })
            .await?;
        Ok(Empty {})
    }

    pub async fn disconnect(&self, req: DisconnectRequest) -> ApiResult<Empty> {
        require("user", &req.user)?;
        let (code, reason) = match req.disconnect {
            Some(d) if (3000..5000).contains(&d.code) => (d.code as u16, d.reason),
            Some(_) => return Err(ApiError::bad("`disconnect.code` must be in 3000..4999")),
            None => (Disconnect::FORCE_NO_RECONNECT.code, Disconnect::FORCE_NO_RECONNECT.reason.into()),
        };
        let client = non_empty(req.client);
        self.node.user_command(UserCommand::Disconnect { user: req.user, client, code, reason }).await?;
        Ok(Empty {})
    }

    /// Reaches the user's connections on every node (a `user` control message, as
    /// disconnect does).
    pub async fn refresh(&self, req: RefreshRequest) -> ApiResult<Empty> {
        require("user", &req.user)?;
        if req.expire_at < 0 {
            return Err(ApiError::bad("`expire_at` must be Unix seconds (0: never)"));
        }
        let expire_at = (req.expire_at > 0).then_some(req.expire_at as u64);
        let client = non_empty(req.client);
        self.node
            .user_command(UserCommand::Refresh { user: req.user, client, expired: req.expired, expire_at })
            .await?;
        Ok(Empty {})
    }

    pub async fn presence(&self, req: ChannelRequest) -> ApiResult<PresenceResult> {
        require("channel", &req.channel)?;
        Ok(PresenceResult { presence: self.node.presence(&req.channel).await? })
    }

    pub async fn presence_stats(&self, req: ChannelRequest) -> ApiResult<PresenceStatsResult> {
        require("channel", &req.channel)?;
        let stats = self.node.presence_stats(&req.channel).await?;
        Ok(PresenceStatsResult { num_clients: stats.num_clients, num_users: stats.num_users })
    }

    pub async fn history(&self, req: HistoryRequest) -> ApiResult<HistoryResult> {
        require("channel", &req.channel)?;
        let page = self.node.history(&req.channel, req.limit, req.since.map(Into::into), req.reverse).await?;
        Ok(HistoryResult {
            publications: page.publications,
            offset: page.position.offset,
            epoch: page.position.epoch,
        })
    }

    pub async fn history_remove(&self, req: ChannelRequest) -> ApiResult<Empty> {
        require("channel", &req.channel)?;
        self.node.remove_history(&req.channel).await?;
        Ok(Empty {})
    }

    pub async fn channels(&self, req: ChannelsRequest) -> ApiResult<ChannelsResult> {
        let answer = self.node.cluster_channels(&req.pattern).await?;
        Ok(ChannelsResult {
            channels: answer
                .channels
                .into_iter()
                .map(|(name, n)| (name, ChannelInfo { num_clients: n }))
                .collect(),
            truncated: answer.truncated,
            missing_nodes: answer.missing_nodes,
        })
    }

    pub async fn info(&self, _req: InfoRequest) -> ApiResult<InfoResult> {
        Ok(InfoResult { nodes: self.node.cluster_info() })
    }

    /// Calls a method of the node's RPC registry on the server's behalf: the caller has no
    /// user and no client (a method that needs a user refuses).
    pub async fn rpc(&self, req: RpcRequest) -> ApiResult<RpcResult> {
        require("method", &req.method)?;
        let handler = self.node.rpc_handler(&req.method).ok_or(ERROR_METHOD_NOT_FOUND)?;
        let caller = Caller { user: String::new(), client: String::new() };
        let data = handler.call(&caller, req.params).await?;
        Ok(RpcResult { data })
    }

    /// Runs the commands in order, or all at once with `parallel`; one reply per command,
    /// in the commands' order. At most `api.batch_max_commands`.
    pub async fn batch(&self, req: BatchRequest) -> ApiResult<BatchResult> {
        if req.commands.len() > self.config.batch_max_commands {
            return Err(ApiError::bad(format!(
                "{} commands in a batch, more than `api.batch_max_commands` ({})",
                req.commands.len(),
                self.config.batch_max_commands
            )));
        }
        let replies = if req.parallel {
            futures_join_all(req.commands.into_iter().map(|c| self.command(c))).await
        } else {
            let mut replies = Vec::with_capacity(req.commands.len());
            for command in req.commands {
                replies.push(self.command(command).await);
            }
            replies
        };
        Ok(BatchResult { replies })
    }

    /// Runs one command of a batch (never a nested batch).
    pub async fn command(&self, command: Command) -> Reply {
        fn reply<T>(result: ApiResult<T>, ok: fn(T) -> Reply) -> Reply {
            match result {
                Ok(value) => ok(value),
                Err(e) => Reply::Error(e.to_protocol()),
            }
        }
        match command {
            Command::Publish(r) => reply(self.publish(r).await, Reply::Publish),
            Command::Broadcast(r) => reply(self.broadcast(r).await, Reply::Broadcast),
            Command::Subscribe(r) => reply(self.subscribe(r).await, Reply::Subscribe),
            Command::Unsubscribe(r) => reply(self.unsubscribe(r).await, Reply::Unsubscribe),
            Command::Disconnect(r) => reply(self.disconnect(r).await, Reply::Disconnect),
            Command::Refresh(r) => reply(self.refresh(r).await, Reply::Refresh),
            Command::Presence(r) => reply(self.presence(r).await, Reply::Presence),
            Command::PresenceStats(r) => reply(self.presence_stats(r).await, Reply::PresenceStats),
            Command::History(r) => reply(self.history(r).await, Reply::History),
            Command::HistoryRemove(r) => reply(self.history_remove(r).await, Reply::HistoryRemove),
            Command::Channels(r) => reply(self.channels(r).await, Reply::Channels),
            Command::Info(r) => reply(self.info(r).await, Reply::Info),
            Command::Rpc(r) => reply(self.rpc(r).await, Reply::Rpc),
        }
    }
}

/// Runs the futures concurrently on this task and returns their outputs in order (the
/// batch's commands are few and await I/O; no task is spawned per command).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut done = true;
        for (fut, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    drop(pending);
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// What a publish keeps: the namespace's history, or nothing with `skip_history`.
pub(crate) fn publish_history(ns: &crate::channel::NamespaceConfig, skip_history: bool) -> HistoryOptions {
    if skip_history {
        HistoryOptions::default()
    } else {
        history_options(ns)
    }
}
