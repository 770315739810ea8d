//! The chat's RPC methods, called over the real-time connection with the protocol's `rpc`
//! command (`{"rpc":{"method":"chat.send","data":{..}}}`). They run the same rules as the
//! REST API; errors come back as protocol errors with a readable message.

use crate::error::{ChatError, ChatResult};
use crate::Chat;
use async_trait::async_trait;
use hubbub_core::rpc::{Caller, RpcHandler};
use hubbub_core::Node;
use hubbub_protocol::{json_from_str, Json, ProtocolError};
use hubbub_store::{Page, RoomId, User};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

/// One RPC method: decodes its request, finds the calling user, runs `f`.
struct Method<Req, F> {
    chat: Weak<Chat>,
    f: F,
    _request: PhantomData<fn(Req)>,
}

#[async_trait]
impl<Req, F, Fut> RpcHandler for Method<Req, F>
where
    Req: DeserializeOwned + Send + 'static,
    F: Fn(Arc<Chat>, User, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ChatResult<Value>> + Send,
{
    async fn call(&self, caller: &Caller, data: Option<Json>) -> Result<Option<Json>, ProtocolError> {
        let chat = self
            .chat
            .upgrade()
            .ok_or_else(|| ChatError::new(crate::error::Kind::Internal, "chat stopped"))?;
        let raw = match &data {
            None => "{}",
            Some(d) => d.as_json().ok_or_else(|| {
                ChatError::bad_request("bad request: the chat's RPC methods take JSON data")
            })?,
        };
        let request: Req =
            serde_json::from_str(raw).map_err(|e| ChatError::bad_request(format!("bad request: {e}")))?;
        let id: i64 = caller.user.parse().map_err(|_| ChatError::unauthorized("not a chat user"))?;
        let user = chat.caller(id).await?;
        let result = (self.f)(chat, user, request).await?;
        let json =
            json_from_str(&result.to_string()).map_err(|_| ChatError::bad_request("unencodable result"))?;
        Ok(Some(json))
    }
}

fn method<Req, F, Fut>(node: &Node, chat: &Arc<Chat>, name: &str, f: F)
where
    Req: DeserializeOwned + Send + 'static,
    F: Fn(Arc<Chat>, User, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ChatResult<Value>> + Send + 'static,
{
    node.register_rpc(name, Method { chat: Arc::downgrade(chat), f, _request: PhantomData });
}

fn to_value<T: serde::Serialize>(v: T) -> ChatResult<Value> {
    serde_json::to_value(v).map_err(|e| ChatError::new(crate::error::Kind::Internal, e.to_string()))
}

#[derive(Deserialize)]
pub struct SendRequest {
    pub room_id: RoomId,
    pub text: String,
    #[serde(default)]
    pub client_msg_id: String,
    #[serde(default)]
    pub reply_to: Option<u64>,
}

#[derive(Deserialize)]
struct EditRequest {
    room_id: RoomId,
    seq: u64,
    text: String,
}

#[derive(Deserialize)]
struct MessageRef {
    room_id: RoomId,
    seq: u64,
}

#[derive(Deserialize)]
struct ReactRequest {
    room_id: RoomId,
    seq: u64,
    emoji: String,
    #[serde(default = "yes")]
    add: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
pub struct MarkRequest {
    pub room_id: RoomId,
    #[serde(default)]
    pub delivered_seq: Option<u64>,
    #[serde(default)]
    pub read_seq: Option<u64>,
}

#[derive(Deserialize)]
struct RoomRef {
    room_id: RoomId,
}

#[derive(Deserialize)]
struct MessagesRequest {
    room_id: RoomId,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize, Default)]
struct Empty {}

pub fn page(before: Option<u64>, after: Option<u64>) -> ChatResult<Page> {
    match (before, after) {
        (Some(_), Some(_)) => Err(ChatError::bad_request("give before or after, not both")),
        (Some(b), None) => Ok(Page::Before(b)),
        (None, Some(a)) => Ok(Page::After(a)),
        (None, None) => Ok(Page::Latest),
    }
}

/// Registers `chat.*` methods on the node.
pub fn register(node: &Node, chat: &Arc<Chat>) {
    method(node, chat, "chat.send", |chat, user, r: SendRequest| async move {
        to_value(chat.send(&user, r.room_id, &r.text, &r.client_msg_id, r.reply_to).await?)
    });
    method(node, chat, "chat.edit", |chat, user, r: EditRequest| async move {
        to_value(chat.edit(&user, r.room_id, r.seq, &r.text).await?)
    });
    method(node, chat, "chat.delete", |chat, user, r: MessageRef| async move {
        to_value(chat.delete(&user, r.room_id, r.seq).await?)
    });
    method(node, chat, "chat.react", |chat, user, r: ReactRequest| async move {
        to_value(chat.react(&user, r.room_id, r.seq, &r.emoji, r.add).await?)
    });
    method(node, chat, "chat.mark", |chat, user, r: MarkRequest| async move {
        to_value(chat.mark(&user, r.room_id, r.delivered_seq, r.read_seq).await?)
    });
    method(node, chat, "chat.typing", |chat, user, r: RoomRef| async move {
        chat.typing(&user, r.room_id).await?;
        Ok(json!({}))
    });
    method(
        node,
        chat,
        "chat.rooms",
        |chat, user, _: Empty| async move { to_value(chat.rooms(user.id).await?) },
    );
    method(node, chat, "chat.messages", |chat, user, r: MessagesRequest| async move {
        let page = page(r.before, r.after)?;
        to_value(chat.messages(&user, r.room_id, page, r.limit.unwrap_or(50)).await?)
    });
}
