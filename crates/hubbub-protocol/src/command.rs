//! Commands sent by clients, and the JSON decoder for a frame of newline-separated commands
//! (the protobuf decoder, [`crate::protobuf::decode_frame`], gives the same [`Command`]s).

use crate::Json;
use serde::Deserialize;
use std::collections::HashMap;

/// The wire shape of a command: an id and at most one method field set.
///
/// Unknown fields are ignored (newer SDKs send fields this server does not use); a known
/// field of the wrong type is a decode error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireCommand {
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    publish: Option<PublishRequest>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<Empty>,
    send: Option<SendRequest>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

/// One decoded command.
#[derive(Debug)]
pub struct Command {
    /// Correlates the reply; 0 for commands that get none (`send`, pong).
    pub id: u32,
    pub method: Method,
}

/// What a command asks for.
#[derive(Debug)]
pub enum Method {
    /// The empty object `{}`: the client's answer to a server ping.
    Pong,
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// A command with an id but no method this server knows: answered with error 104.
    Unknown,
}

impl Method {
    /// The protocol's name of the method, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Pong => "pong",
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
            Method::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    pub token: String,
    pub data: Option<Json>,
    pub subs: HashMap<String, SubscribeRequest>,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    pub channel: String,
    pub token: String,
    pub recover: bool,
    pub epoch: String,
    pub offset: u64,
    pub data: Option<Json>,
    pub positioned: bool,
    pub recoverable: bool,
    pub join_leave: bool,
}

/// Requests that name only a channel: unsubscribe, presence, presence_stats.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Option<Json>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    pub limit: i32,
    pub since: Option<crate::StreamPosition>,
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    pub data: Option<Json>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    pub data: Option<Json>,
    pub method: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    pub channel: String,
    pub token: String,
}

/// Why a frame could not be decoded. Any of these ends the connection with "bad request".
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("command sets more than one method")]
    SeveralMethods,
    #[error("command without id for a method that needs a reply")]
    MissingId,
    #[error("malformed protobuf command: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("JSON frame is not UTF-8")]
    NotUtf8,
}

impl TryFrom<WireCommand> for Command {
    type Error = DecodeError;

    fn try_from(w: WireCommand) -> Result<Self, DecodeError> {
        let mut methods = Vec::with_capacity(1);
        if let Some(r) = w.connect {
            methods.push(Method::Connect(r))
        }
        if let Some(r) = w.subscribe {
            methods.push(Method::Subscribe(r))
        }
        if let Some(r) = w.unsubscribe {
            methods.push(Method::Unsubscribe(r))
        }
        if let Some(r) = w.publish {
            methods.push(Method::Publish(r))
        }
        if let Some(r) = w.presence {
            methods.push(Method::Presence(r))
        }
        if let Some(r) = w.presence_stats {
            methods.push(Method::PresenceStats(r))
        }
        if let Some(r) = w.history {
            methods.push(Method::History(r))
        }
        if w.ping.is_some() {
            methods.push(Method::Ping)
        }
        if let Some(r) = w.send {
            methods.push(Method::Send(r))
        }
        if let Some(r) = w.rpc {
            methods.push(Method::Rpc(r))
        }
        if let Some(r) = w.refresh {
            methods.push(Method::Refresh(r))
        }
        if let Some(r) = w.sub_refresh {
            methods.push(Method::SubRefresh(r))
        }
        Command::from_methods(w.id, methods)
    }
}

impl Command {
    /// The command from the methods a decoded command set, with the rules both codecs
    /// share: at most one method; none is a pong without an id, or an unknown method with
    /// one; every method but `send` (and the pong) needs an id for its reply.
    pub(crate) fn from_methods(id: u32, mut methods: Vec<Method>) -> Result<Command, DecodeError> {
        if methods.len() > 1 {
            return Err(DecodeError::SeveralMethods);
        }
        let method = match methods.pop() {
            Some(m) => m,
            None if id == 0 => Method::Pong,
            None => Method::Unknown,
        };
        let needs_id = !matches!(method, Method::Pong | Method::Send(_));
        if needs_id && id == 0 {
            return Err(DecodeError::MissingId);
        }
        Ok(Command { id, method })
    }
}

/// Decodes one frame: one or more JSON commands separated by newlines (blank lines are
/// skipped). Stops at the first bad command, since the connection is closed for it anyway.
pub fn decode_frame(frame: &str) -> Result<Vec<Command>, DecodeError> {
    let mut commands = Vec::new();
    for line in frame.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let wire: WireCommand = serde_json::from_str(line)?;
        commands.push(Command::try_from(wire)?);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_batched_commands() {
        let frame = "{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\",\"recover\":true,\"offset\":3,\"epoch\":\"e\"}}\n{}";
        let cmds = decode_frame(frame).unwrap();
        assert_eq!(cmds.len(), 3);
        assert!(matches!(&cmds[0].method, Method::Connect(c) if c.token == "t"));
        assert!(matches!(&cmds[1].method, Method::Subscribe(s) if s.recover && s.offset == 3));
        assert!(matches!(cmds[2].method, Method::Pong));
    }

    #[test]
    fn keeps_data_raw() {
        let cmds = decode_frame(r#"{"id":5,"publish":{"channel":"c","data":{"a": [1, 2]}}}"#).unwrap();
        let Method::Publish(p) = &cmds[0].method else { panic!("not publish") };
        assert_eq!(p.data.as_ref().unwrap().as_json().unwrap(), r#"{"a": [1, 2]}"#);
    }

    #[test]
    fn unknown_method_with_id() {
        let cmds = decode_frame(r#"{"id":7,"frobnicate":{}}"#).unwrap();
        assert!(matches!(cmds[0].method, Method::Unknown));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(decode_frame("{not json").is_err());
        assert!(decode_frame(r#"{"id":"x"}"#).is_err());
        assert!(decode_frame(r#"{"id":1,"subscribe":{"channel":5}}"#).is_err());
        assert!(decode_frame(r#"{"id":1,"subscribe":{},"publish":{}}"#).is_err());
        assert!(decode_frame(r#"{"subscribe":{"channel":"c"}}"#).is_err());
        assert!(decode_frame("[1,2]").is_err());
    }
}
