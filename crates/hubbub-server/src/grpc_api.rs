//! The gRPC server API (`grpc_api.enabled`): Centrifugo's `CentrifugoApi` service on its own
//! listener, with the HTTP API's methods. Each method converts its protobuf request into the
//! request type of `hubbub_core::api`, runs the same operation the HTTP API runs, and converts
//! the typed result back; nothing else happens here.
//!
//! Authentication: metadata `authorization: apikey <grpc_api.key>` (Centrifugo's form); a
//! missing or wrong key is `UNAUTHENTICATED`. A method's own failure is an OK status with
//! `error` set in the response, as Centrifugo answers. Payloads (`data`, `params`) are JSON in
//! bytes; a field Hubbub does not support is refused by name when it is set.

use hubbub_core::api::{self as ops, ApiError, ServerApi};
use hubbub_protocol::{json_from_str, ClientInfo, Json, ProtocolError, Publication};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The messages and the service generated from proto/api.proto (and the client the tests use).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("centrifugal.centrifugo.api");
}

use proto::centrifugo_api_server::{CentrifugoApi, CentrifugoApiServer};

/// The service over the node's server API.
pub struct GrpcApi {
    api: Arc<ServerApi>,
}

/// The service, behind the API key check and the request size bound.
pub fn service(
    api: Arc<ServerApi>,
    key: String,
    max_request_bytes: usize,
) -> tonic::service::interceptor::InterceptedService<
    CentrifugoApiServer<GrpcApi>,
    impl tonic::service::Interceptor + Clone,
> {
    let expected = format!("apikey {key}");
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if crate::api::constant_time_eq(given, expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("unauthorized"))
        }
    };
    let server = CentrifugoApiServer::new(GrpcApi { api }).max_decoding_message_size(max_request_bytes);
    tonic::service::interceptor::InterceptedService::new(server, check)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

fn error(e: ProtocolError) -> proto::Error {
    proto::Error { code: e.code, message: e.message }
}

/// JSON bytes as the API's payload; empty: none.
fn json_bytes(field: &str, bytes: Vec<u8>) -> Result<Option<Json>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(bytes).map_err(|_| bad(format!("`{field}` must be JSON")))?;
    json_from_str(&text).map(Some).map_err(|e| bad(format!("`{field}` must be JSON: {e}")))
}

fn bytes_of(json: Option<Json>) -> Vec<u8> {
    json.map(|j| j.as_bytes().to_vec()).unwrap_or_default()
}

/// Refuses a field Hubbub does not support when the request sets it.
fn unsupported(field: &str, set: bool) -> Result<(), ApiError> {
    if set {
        return Err(bad(format!("`{field}` is not supported by Hubbub")));
    }
    Ok(())
}

/// A protobuf request as the operation's request.
trait Decode: Sized {
    type Op;
    fn decode(self) -> Result<Self::Op, ApiError>;
}

/// An operation's result as the protobuf result.
trait Encode {
    type Proto;
    fn encode(self) -> Self::Proto;
}

impl Decode for proto::PublishRequest {
    type Op = ops::PublishRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("delta", self.delta)?;
        Ok(ops::PublishRequest {
            channel: self.channel,
            data: json_bytes("data", self.data)?,
            b64data: self.b64data,
            skip_history: self.skip_history,
            tags: self.tags,
            idempotency_key: self.idempotency_key,
        })
    }
}

impl Decode for proto::BroadcastRequest {
    type Op = ops::BroadcastRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("delta", self.delta)?;
        Ok(ops::BroadcastRequest {
            channels: self.channels,
            data: json_bytes("data", self.data)?,
            b64data: self.b64data,
            skip_history: self.skip_history,
            tags: self.tags,
            idempotency_key: self.idempotency_key,
        })
    }
}

impl Decode for proto::SubscribeRequest {
    type Op = ops::SubscribeRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("expire_at", self.expire_at != 0)?;
        unsupported("info", !self.info.is_empty())?;
        unsupported("b64info", !self.b64info.is_empty())?;
        unsupported("data", !self.data.is_empty())?;
        unsupported("b64data", !self.b64data.is_empty())?;
        unsupported("recover_since", self.recover_since.is_some())?;
        unsupported("override", !self.r#override.is_empty())?;
        unsupported("session", !self.session.is_empty())?;
        Ok(ops::SubscribeRequest { user: self.user, channel: self.channel, client: self.client })
    }
}

impl Decode for proto::UnsubscribeRequest {
    type Op = ops::UnsubscribeRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("session", !self.session.is_empty())?;
        Ok(ops::UnsubscribeRequest { user: self.user, channel: self.channel, client: self.client })
    }
}

impl Decode for proto::DisconnectRequest {
    type Op = ops::DisconnectRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("whitelist", !self.whitelist.is_empty())?;
        unsupported("session", !self.session.is_empty())?;
        Ok(ops::DisconnectRequest {
            user: self.user,
            client: self.client,
            disconnect: self.disconnect.map(|d| ops::DisconnectSpec { code: d.code, reason: d.reason }),
        })
    }
}

impl Decode for proto::RefreshRequest {
    type Op = ops::RefreshRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        unsupported("info", !self.info.is_empty())?;
        unsupported("session", !self.session.is_empty())?;
        Ok(ops::RefreshRequest {
            user: self.user,
            client: self.client,
            expired: self.expired,
            expire_at: self.expire_at,
        })
    }
}

macro_rules! channel_request {
    ($($proto:ident),*) => {$(
        impl Decode for proto::$proto {
            type Op = ops::ChannelRequest;
            fn decode(self) -> Result<Self::Op, ApiError> {
                Ok(ops::ChannelRequest { channel: self.channel })
            }
        }
    )*};
}
channel_request!(PresenceRequest, PresenceStatsRequest, HistoryRemoveRequest);

impl Decode for proto::HistoryRequest {
    type Op = ops::HistoryRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        Ok(ops::HistoryRequest {
            channel: self.channel,
            limit: self.limit,
            since: self.since.map(|s| ops::Position { offset: s.offset, epoch: s.epoch }),
            reverse: self.reverse,
        })
    }
}

impl Decode for proto::ChannelsRequest {
    type Op = ops::ChannelsRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        Ok(ops::ChannelsRequest { pattern: self.pattern })
    }
}

impl Decode for proto::InfoRequest {
    type Op = ops::InfoRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        Ok(ops::InfoRequest {})
    }
}

impl Decode for proto::RpcRequest {
    type Op = ops::RpcRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        Ok(ops::RpcRequest { method: self.method, params: json_bytes("params", self.params)? })
    }
}

impl Decode for proto::BatchRequest {
    type Op = ops::BatchRequest;
    fn decode(self) -> Result<Self::Op, ApiError> {
        let commands = self.commands.into_iter().map(Decode::decode).collect::<Result<_, _>>()?;
        Ok(ops::BatchRequest { commands, parallel: self.parallel })
    }
}

impl Decode for proto::Command {
    type Op = ops::Command;
    fn decode(self) -> Result<Self::Op, ApiError> {
        use ops::Command as C;
        let mut found: Vec<Result<C, ApiError>> = Vec::new();
        let proto::Command {
            publish,
            broadcast,
            subscribe,
            unsubscribe,
            disconnect,
            presence,
            presence_stats,
            history,
            history_remove,
            info,
            rpc,
            refresh,
            channels,
        } = self;
        found.extend(publish.map(|r| r.decode().map(C::Publish)));
        found.extend(broadcast.map(|r| r.decode().map(C::Broadcast)));
        found.extend(subscribe.map(|r| r.decode().map(C::Subscribe)));
        found.extend(unsubscribe.map(|r| r.decode().map(C::Unsubscribe)));
        found.extend(disconnect.map(|r| r.decode().map(C::Disconnect)));
        found.extend(presence.map(|r| r.decode().map(C::Presence)));
        found.extend(presence_stats.map(|r| r.decode().map(C::PresenceStats)));
        found.extend(history.map(|r| r.decode().map(C::History)));
        found.extend(history_remove.map(|r| r.decode().map(C::HistoryRemove)));
        found.extend(info.map(|r| r.decode().map(C::Info)));
        found.extend(rpc.map(|r| r.decode().map(C::Rpc)));
        found.extend(refresh.map(|r| r.decode().map(C::Refresh)));
        found.extend(channels.map(|r| r.decode().map(C::Channels)));
        match found.len() {
            1 => found.pop().expect("one command"),
            0 => Err(bad("a batch command without a method")),
            _ => Err(bad("a batch command with several methods")),
        }
    }
}

impl Encode for ops::PublishResult {
    type Proto = proto::PublishResult;
    fn encode(self) -> proto::PublishResult {
        proto::PublishResult { offset: self.offset.unwrap_or(0), epoch: self.epoch.unwrap_or_default() }
    }
}

impl Encode for ops::BroadcastResult {
    type Proto = proto::BroadcastResult;
    fn encode(self) -> proto::BroadcastResult {
        let responses = self
            .responses
            .into_iter()
            .map(|r| match r {
                ops::PublishResponse::Result(r) => {
                    proto::PublishResponse { error: None, result: Some(r.encode()) }
                }
                ops::PublishResponse::Error(e) => {
                    proto::PublishResponse { error: Some(error(e)), result: None }
                }
            })
            .collect();
        proto::BroadcastResult { responses }
    }
}

/// `Empty` is the result of several methods; each wants its own empty message.
fn empty<T: Default>(_: ops::Empty) -> T {
    T::default()
}

fn client_info(info: ClientInfo) -> proto::ClientInfo {
    proto::ClientInfo {
        user: info.user,
        client: info.client,
        conn_info: bytes_of(info.conn_info),
        chan_info: bytes_of(info.chan_info),
    }
}

fn publication(p: Publication) -> proto::Publication {
    proto::Publication {
        data: p.data.as_bytes().to_vec(),
        info: p.info.map(client_info),
        offset: p.offset,
        tags: p.tags.unwrap_or_default(),
    }
}

impl Encode for ops::PresenceResult {
    type Proto = proto::PresenceResult;
    fn encode(self) -> proto::PresenceResult {
        proto::PresenceResult {
            presence: self.presence.into_iter().map(|(k, v)| (k, client_info(v))).collect(),
        }
    }
}

impl Encode for ops::PresenceStatsResult {
    type Proto = proto::PresenceStatsResult;
    fn encode(self) -> proto::PresenceStatsResult {
        proto::PresenceStatsResult { num_clients: self.num_clients, num_users: self.num_users }
    }
}

impl Encode for ops::HistoryResult {
    type Proto = proto::HistoryResult;
    fn encode(self) -> proto::HistoryResult {
        proto::HistoryResult {
            publications: self.publications.into_iter().map(publication).collect(),
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

impl Encode for ops::ChannelsResult {
    type Proto = proto::ChannelsResult;
    fn encode(self) -> proto::ChannelsResult {
        let channels: HashMap<String, proto::ChannelInfo> = self
            .channels
            .into_iter()
            .map(|(name, info)| {
                (name, proto::ChannelInfo { num_clients: info.num_clients.min(u32::MAX as u64) as u32 })
            })
            .collect();
        proto::ChannelsResult { channels }
    }
}

impl Encode for ops::InfoResult {
    type Proto = proto::InfoResult;
    fn encode(self) -> proto::InfoResult {
        let n = |v: usize| v.min(u32::MAX as usize) as u32;
        let nodes = self
            .nodes
            .into_iter()
            .map(|node| proto::NodeResult {
                uid: node.uid,
                name: node.name,
                version: node.version,
                num_clients: n(node.num_clients),
                num_users: n(node.num_users),
                num_channels: n(node.num_channels),
                uptime: node.uptime.min(u32::MAX as u64) as u32,
                num_subs: n(node.num_subs),
            })
            .collect();
        proto::InfoResult { nodes }
    }
}

impl Encode for ops::RpcResult {
    type Proto = proto::RpcResult;
    fn encode(self) -> proto::RpcResult {
        proto::RpcResult { data: bytes_of(self.data) }
    }
}

impl Encode for ops::BatchResult {
    type Proto = proto::BatchResponse;
    fn encode(self) -> proto::BatchResponse {
        proto::BatchResponse { replies: self.replies.into_iter().map(reply).collect() }
    }
}

fn reply(r: ops::Reply) -> proto::Reply {
    use ops::Reply as R;
    let mut out = proto::Reply::default();
    match r {
        R::Error(e) => out.error = Some(error(e)),
        R::Publish(v) => out.publish = Some(v.encode()),
        R::Broadcast(v) => out.broadcast = Some(v.encode()),
        R::Subscribe(v) => out.subscribe = Some(empty(v)),
        R::Unsubscribe(v) => out.unsubscribe = Some(empty(v)),
        R::Disconnect(v) => out.disconnect = Some(empty(v)),
        R::Refresh(v) => out.refresh = Some(empty(v)),
        R::Presence(v) => out.presence = Some(v.encode()),
        R::PresenceStats(v) => out.presence_stats = Some(v.encode()),
        R::History(v) => out.history = Some(v.encode()),
        R::HistoryRemove(v) => out.history_remove = Some(empty(v)),
        R::Channels(v) => out.channels = Some(v.encode()),
        R::Info(v) => out.info = Some(v.encode()),
        R::Rpc(v) => out.rpc = Some(v.encode()),
    }
    out
}

/// The service: `batch`, and one unary method per operation (same name): decode, run,
/// encode into `{error, result}`. (One macro for the whole impl: `async_trait` must see the
/// methods expanded.)
macro_rules! service {
    ($($name:ident: $Req:ident => $Resp:ident by $encode:expr;)*) => {
        #[tonic::async_trait]
        impl CentrifugoApi for GrpcApi {
            async fn batch(
                &self,
                request: Request<proto::BatchRequest>,
            ) -> Result<Response<proto::BatchResponse>, Status> {
                // A batch has no error field: one that cannot run at all is INVALID_ARGUMENT.
                let result = match request.into_inner().decode() {
                    Ok(req) => self.api.batch(req).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(result) => Ok(Response::new(result.encode())),
                    Err(e) => Err(Status::invalid_argument(e.to_protocol().message)),
                }
            }
            $(
                async fn $name(&self, request: Request<proto::$Req>) -> Result<Response<proto::$Resp>, Status> {
                    let outcome = match request.into_inner().decode() {
                        Ok(req) => self.api.$name(req).await,
                        Err(e) => Err(e),
                    };
                    Ok(Response::new(match outcome {
                        Ok(result) => proto::$Resp { error: None, result: Some($encode(result)) },
                        Err(e) => proto::$Resp { error: Some(error(e.to_protocol())), result: None },
                    }))
                }
            )*
        }
    };
}

service! {
    publish: PublishRequest => PublishResponse by Encode::encode;
    broadcast: BroadcastRequest => BroadcastResponse by Encode::encode;
    subscribe: SubscribeRequest => SubscribeResponse by empty;
    unsubscribe: UnsubscribeRequest => UnsubscribeResponse by empty;
    disconnect: DisconnectRequest => DisconnectResponse by empty;
    presence: PresenceRequest => PresenceResponse by Encode::encode;
    presence_stats: PresenceStatsRequest => PresenceStatsResponse by Encode::encode;
    history: HistoryRequest => HistoryResponse by Encode::encode;
    history_remove: HistoryRemoveRequest => HistoryRemoveResponse by empty;
    info: InfoRequest => InfoResponse by Encode::encode;
    rpc: RpcRequest => RpcResponse by Encode::encode;
    refresh: RefreshRequest => RefreshResponse by empty;
    channels: ChannelsRequest => ChannelsResponse by Encode::encode;
}
