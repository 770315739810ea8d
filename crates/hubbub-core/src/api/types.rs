//! The server API's requests and results, one pair per method, named and shaped as in
//! Centrifugo's API (v5). They are what the HTTP API reads and writes as JSON; the gRPC API
//! converts its protobuf messages to and from them, so both call the same operations.
//!
//! Every request refuses fields it does not know (`deny_unknown_fields`): an option Hubbub
//! does not have is an error naming it, never silently dropped.

use hubbub_protocol::{ClientInfo, Json, Publication, StreamPosition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `publish`: one publication into one channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub channel: String,
    /// The payload as JSON; or `b64data`.
    #[serde(default)]
    pub data: Option<Json>,
    /// The payload in standard base64 (binary data).
    #[serde(default)]
    pub b64data: String,
    /// Deliver to subscribers without keeping it in the channel's history (no offset).
    #[serde(default)]
    pub skip_history: bool,
    /// Carried on the publication to subscribers.
    #[serde(default)]
    pub tags: HashMap<String, String>,
    /// A retry with the same key (per channel) within `api.idempotency_ttl` is not published
    /// again: it is answered with the first publish's result.
    #[serde(default)]
    pub idempotency_key: String,
}

/// `broadcast`: the same publication into several channels (each answered on its own).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    pub channels: Vec<String>,
    #[serde(default)]
    pub data: Option<Json>,
    #[serde(default)]
    pub b64data: String,
    #[serde(default)]
    pub skip_history: bool,
    #[serde(default)]
    pub tags: HashMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
}

/// `subscribe`: a server-side subscription of the user's connections (or one of them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub user: String,
    pub channel: String,
    #[serde(default)]
    pub client: String,
}

/// `unsubscribe`: the reverse of `subscribe`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    pub user: String,
    pub channel: String,
    #[serde(default)]
    pub client: String,
}

/// The code and reason a disconnect closes connections with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectSpec {
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

/// `disconnect`: closes the user's connections (or one of them) on every node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    pub user: String,
    #[serde(default)]
    pub client: String,
    /// Default: 3503 "force disconnect" (no reconnect).
    #[serde(default)]
    pub disconnect: Option<DisconnectSpec>,
}

/// `refresh`: a new expiry for the user's connections (or one of them), or expired now.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub expired: bool,
    /// Unix seconds; 0 or absent: the connection no longer expires.
    #[serde(default)]
    pub expire_at: i64,
}

/// `presence`, `presence_stats`, `history_remove`: one channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    pub channel: String,
}

/// `history`: `limit` 0 for the position only, negative for all that is kept (bounded).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    #[serde(default)]
    pub since: Option<Position>,
    #[serde(default)]
    pub reverse: bool,
}

/// A position in a channel's stream, as a request gives it (strict, unlike the client
/// protocol's [`StreamPosition`], which ignores fields newer SDKs send).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

impl From<Position> for StreamPosition {
    fn from(p: Position) -> Self {
        StreamPosition { offset: p.offset, epoch: p.epoch }
    }
}

/// `channels`: active channels matching a pattern (`*` globs; empty: all).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsRequest {
    #[serde(default)]
    pub pattern: String,
}

/// `info`: no parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoRequest {}

/// `rpc`: calls a method of the node's RPC registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRequest {
    pub method: String,
    #[serde(default)]
    pub params: Option<Json>,
}

/// `batch`: several commands in one request, answered in order (`parallel`: run at once).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub commands: Vec<Command>,
    #[serde(default)]
    pub parallel: bool,
}

/// One command of a batch: `{"publish": {..}}`, `{"broadcast": {..}}`, ...
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Publish(PublishRequest),
    Broadcast(BroadcastRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(UnsubscribeRequest),
    Disconnect(DisconnectRequest),
    Refresh(RefreshRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    HistoryRemove(ChannelRequest),
    Channels(ChannelsRequest),
    Info(InfoRequest),
    Rpc(RpcRequest),
}

impl Command {
    /// The methods a command can name (every method but `batch`).
    pub const METHODS: &'static [&'static str] = &[
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "rpc",
    ];
}

/// The answer of `publish` (and of each channel of a `broadcast`): the publication's
/// position in the channel's stream; none without history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl From<StreamPosition> for PublishResult {
    fn from(p: StreamPosition) -> Self {
        if p.epoch.is_empty() {
            PublishResult { offset: None, epoch: None }
        } else {
            PublishResult { offset: Some(p.offset), epoch: Some(p.epoch) }
        }
    }
}

/// `{"result": ..}` or `{"error": ..}`: one channel of a broadcast.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishResponse {
    Result(PublishResult),
    Error(hubbub_protocol::ProtocolError),
}

#[derive(Debug, Clone, Serialize)]
pub struct BroadcastResult {
    pub responses: Vec<PublishResponse>,
}

/// The answer of the methods that only act (`subscribe`, `disconnect`, ...): `{}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    pub num_clients: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelsResult {
    pub channels: HashMap<String, ChannelInfo>,
    /// Some channels were left out (the answer's bound).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Live nodes that did not answer in time.
    #[serde(skip_serializing_if = "is_zero")]
    pub missing_nodes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct InfoResult {
    pub nodes: Vec<crate::node::NodeInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
}

/// One reply of a batch, in the order of the commands: `{"publish": {..}}` or
/// `{"error": {..}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Error(hubbub_protocol::ProtocolError),
    Publish(PublishResult),
    Broadcast(BroadcastResult),
    Subscribe(Empty),
    Unsubscribe(Empty),
    Disconnect(Empty),
    Refresh(Empty),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    HistoryRemove(Empty),
    Channels(ChannelsResult),
    Info(InfoResult),
    Rpc(RpcResult),
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    pub replies: Vec<Reply>,
}
