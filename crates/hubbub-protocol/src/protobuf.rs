//! The protobuf codec of the client protocol: the same commands, replies and pushes as the
//! JSON codec, in the binary form that Centrifugo's SDKs use in protobuf mode.
//!
//! A frame (a WebSocket binary message, an HTTP-streaming body, an emulation request's
//! `data`) is a sequence of messages, each preceded by its length as a varint: Commands from
//! the client, Replies from the server. Decoding maps [`pb::Command`] onto the same
//! [`Command`] the JSON decoder gives, with the same rules (one method per command, an id
//! for every method that has a reply); encoding maps a [`Reply`] onto [`pb::Reply`].
//!
//! Payloads (`bytes` fields) pass through as they are: see [`crate::payload`].

use crate::command::{
    ChannelRequest, ConnectRequest, HistoryRequest, PublishRequest, RefreshRequest, RpcRequest, SendRequest,
    SubRefreshRequest, SubscribeRequest,
};
use crate::reply::{
    ConnectResult, PresenceResult, Publication, Push, PushBody, Reply, ReplyBody, SubscribePush,
    SubscribeResult,
};
use crate::{ClientInfo, Command, DecodeError, Method, Payload, StreamPosition};
use bytes::{Buf, Bytes};
pub use prost;
use prost::Message as _;

/// The message types generated from `proto/client.proto` (package
/// `centrifugal.centrifuge.protocol`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!("proto/centrifugal.centrifuge.protocol.rs");
}

/// Decodes a frame of length-delimited Commands. Stops at the first bad one, since the
/// connection is closed for it anyway. An empty frame holds no command.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut buf = frame;
    let mut commands = Vec::new();
    while buf.has_remaining() {
        let wire = pb::Command::decode_length_delimited(&mut buf)?;
        commands.push(Command::try_from(wire)?);
    }
    Ok(commands)
}

/// Decodes the body of a protobuf `POST /emulation`.
pub fn decode_emulation_request(body: &[u8]) -> Result<pb::EmulationRequest, DecodeError> {
    Ok(pb::EmulationRequest::decode(body)?)
}

/// An empty `bytes` field means no payload, as a missing `data` does in JSON.
fn payload(bytes: Bytes) -> Option<Payload> {
    (!bytes.is_empty()).then(|| Payload::from_bytes(&bytes))
}

fn subscribe_request(r: pb::SubscribeRequest) -> SubscribeRequest {
    SubscribeRequest {
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        data: payload(r.data),
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = DecodeError;

    fn try_from(c: pb::Command) -> Result<Self, DecodeError> {
        let mut methods = Vec::with_capacity(1);
        if let Some(r) = c.connect {
            methods.push(Method::Connect(ConnectRequest {
                token: r.token,
                data: payload(r.data),
                subs: r.subs.into_iter().map(|(channel, s)| (channel, subscribe_request(s))).collect(),
                name: r.name,
                version: r.version,
            }));
        }
        if let Some(r) = c.subscribe {
            methods.push(Method::Subscribe(subscribe_request(r)));
        }
        if let Some(r) = c.unsubscribe {
            methods.push(Method::Unsubscribe(ChannelRequest { channel: r.channel }));
        }
        if let Some(r) = c.publish {
            methods.push(Method::Publish(PublishRequest { channel: r.channel, data: payload(r.data) }));
        }
        if let Some(r) = c.presence {
            methods.push(Method::Presence(ChannelRequest { channel: r.channel }));
        }
        if let Some(r) = c.presence_stats {
            methods.push(Method::PresenceStats(ChannelRequest { channel: r.channel }));
        }
        if let Some(r) = c.history {
            methods.push(Method::History(HistoryRequest {
                channel: r.channel,
                limit: r.limit,
                since: r.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
                reverse: r.reverse,
            }));
        }
        if c.ping.is_some() {
            methods.push(Method::Ping);
        }
        if let Some(r) = c.send {
            methods.push(Method::Send(SendRequest { data: payload(r.data) }));
        }
        if let Some(r) = c.rpc {
            methods.push(Method::Rpc(RpcRequest { data: payload(r.data), method: r.method }));
        }
        if let Some(r) = c.refresh {
            methods.push(Method::Refresh(RefreshRequest { token: r.token }));
        }
        if let Some(r) = c.sub_refresh {
            methods.push(Method::SubRefresh(SubRefreshRequest { channel: r.channel, token: r.token }));
        }
        Command::from_methods(c.id, methods)
    }
}

fn bytes_of(p: &Option<Payload>) -> Bytes {
    p.as_ref().map(Payload::to_bytes).unwrap_or_default()
}

fn client_info(i: &ClientInfo) -> pb::ClientInfo {
    pb::ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: bytes_of(&i.conn_info),
        chan_info: bytes_of(&i.chan_info),
    }
}

fn publication(p: &Publication) -> pb::Publication {
    pb::Publication {
        data: p.data.to_bytes(),
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p
            .tags
            .as_ref()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn publications(ps: &[Publication]) -> Vec<pb::Publication> {
    ps.iter().map(publication).collect()
}

fn subscribe_result(r: &SubscribeResult) -> pb::SubscribeResult {
    pb::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: publications(&r.publications),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: bytes_of(&r.data),
        was_recovering: r.was_recovering,
        ..Default::default()
    }
}

fn connect_result(r: &ConnectResult) -> pb::ConnectResult {
    pb::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: bytes_of(&r.data),
        subs: r.subs.iter().map(|(c, s)| (c.clone(), subscribe_result(s))).collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
        ..Default::default()
    }
}

/// The connect result as a push (unidirectional clients): the same fields.
fn connect_push(r: &ConnectResult) -> pb::Connect {
    let c = connect_result(r);
    pb::Connect {
        client: c.client,
        version: c.version,
        data: c.data,
        subs: c.subs,
        expires: c.expires,
        ttl: c.ttl,
        ping: c.ping,
        pong: c.pong,
        session: c.session,
        node: c.node,
        time: c.time,
    }
}

fn push(p: &Push) -> pb::Push {
    let mut out = pb::Push { channel: p.channel.clone(), ..Default::default() };
    match &p.body {
        PushBody::Publication(publication_) => out.r#pub = Some(publication(publication_)),
        PushBody::Join { info } => out.join = Some(pb::Join { info: Some(client_info(info)) }),
        PushBody::Leave { info } => out.leave = Some(pb::Leave { info: Some(client_info(info)) }),
        PushBody::Unsubscribe { code, reason } => {
            out.unsubscribe = Some(pb::Unsubscribe { code: *code, reason: reason.clone() })
        }
        PushBody::Message { data } => out.message = Some(pb::Message { data: data.to_bytes() }),
        PushBody::Subscribe(SubscribePush { recoverable, epoch, offset, positioned }) => {
            out.subscribe = Some(pb::Subscribe {
                recoverable: *recoverable,
                epoch: epoch.clone(),
                offset: *offset,
                positioned: *positioned,
                data: Bytes::new(),
            })
        }
        PushBody::Connect(result) => out.connect = Some(connect_push(result)),
        PushBody::Disconnect { code, reason, reconnect } => {
            out.disconnect =
                Some(pb::Disconnect { code: *code, reason: reason.clone(), reconnect: *reconnect })
        }
        PushBody::Refresh { expires, ttl } => {
            out.refresh = Some(pb::Refresh { expires: *expires, ttl: *ttl })
        }
    }
    out
}

fn presence(r: &PresenceResult) -> pb::PresenceResult {
    pb::PresenceResult { presence: r.presence.iter().map(|(k, i)| (k.clone(), client_info(i))).collect() }
}

/// The reply as a protobuf message.
pub fn reply(r: &Reply) -> pb::Reply {
    let mut out = pb::Reply { id: r.id, ..Default::default() };
    match &r.body {
        ReplyBody::Error(e) => {
            out.error = Some(pb::Error { code: e.code, message: e.message.clone(), temporary: e.temporary })
        }
        ReplyBody::Push(p) => out.push = Some(push(p)),
        ReplyBody::Connect(c) => out.connect = Some(connect_result(c)),
        ReplyBody::Subscribe(s) => out.subscribe = Some(subscribe_result(s)),
        ReplyBody::Unsubscribe(_) => out.unsubscribe = Some(pb::UnsubscribeResult {}),
        ReplyBody::Publish(_) => out.publish = Some(pb::PublishResult {}),
        ReplyBody::Presence(p) => out.presence = Some(presence(p)),
        ReplyBody::PresenceStats(s) => {
            out.presence_stats =
                Some(pb::PresenceStatsResult { num_clients: s.num_clients, num_users: s.num_users })
        }
        ReplyBody::History(h) => {
            out.history = Some(pb::HistoryResult {
                publications: publications(&h.publications),
                epoch: h.epoch.clone(),
                offset: h.offset,
            })
        }
        ReplyBody::Ping(_) => out.ping = Some(pb::PingResult {}),
        ReplyBody::Rpc(r) => out.rpc = Some(pb::RpcResult { data: bytes_of(&r.data) }),
        ReplyBody::Refresh(r) => {
            out.refresh = Some(pb::RefreshResult {
                client: r.client.clone(),
                version: r.version.clone(),
                expires: r.expires,
                ttl: r.ttl,
            })
        }
        ReplyBody::SubRefresh(r) => {
            out.sub_refresh = Some(pb::SubRefreshResult { expires: r.expires, ttl: r.ttl, items: Vec::new() })
        }
    }
    out
}

/// Encodes a reply as one length-delimited message, ready to be concatenated with others.
pub fn encode_reply(r: &Reply) -> Bytes {
    Bytes::from(reply(r).encode_length_delimited_to_vec())
}

/// The server ping: an empty Reply, length-delimited (one zero byte).
pub const PING: &[u8] = &[0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::EmptyResult;

    fn frame(commands: &[pb::Command]) -> Vec<u8> {
        commands.iter().flat_map(|c| c.encode_length_delimited_to_vec()).collect()
    }

    #[test]
    fn decodes_batched_commands_like_json() {
        let connect = pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest { token: "t".into(), ..Default::default() }),
            ..Default::default()
        };
        let publish = pb::Command {
            id: 2,
            publish: Some(pb::PublishRequest {
                channel: "c".into(),
                data: Bytes::from_static(&[0, 1, 2]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pong = pb::Command::default();
        let cmds = decode_frame(&frame(&[connect, publish, pong])).unwrap();
        assert_eq!(cmds.len(), 3);
        assert!(matches!(&cmds[0].method, Method::Connect(c) if c.token == "t"));
        let Method::Publish(p) = &cmds[1].method else { panic!("not publish") };
        assert_eq!(p.data.as_ref().unwrap().as_bytes(), &[0, 1, 2]);
        assert!(p.data.as_ref().unwrap().is_binary());
        assert!(matches!(cmds[2].method, Method::Pong));
        assert!(decode_frame(&[]).unwrap().is_empty());
    }

    #[test]
    fn rejects_what_json_rejects() {
        let two = pb::Command {
            id: 1,
            ping: Some(pb::PingRequest {}),
            presence: Some(pb::PresenceRequest { channel: "c".into() }),
            ..Default::default()
        };
        assert!(matches!(decode_frame(&frame(&[two])), Err(DecodeError::SeveralMethods)));
        let no_id = pb::Command { ping: Some(pb::PingRequest {}), ..Default::default() };
        assert!(matches!(decode_frame(&frame(&[no_id])), Err(DecodeError::MissingId)));
        // A length that runs past the end, and garbage.
        assert!(decode_frame(&[5, 8]).is_err());
        assert!(decode_frame(&[0xff; 12]).is_err());
        let unknown = pb::Command { id: 4, ..Default::default() };
        assert!(matches!(decode_frame(&frame(&[unknown])).unwrap()[0].method, Method::Unknown));
    }

    #[test]
    fn encodes_pushes_with_payload_bytes_unchanged() {
        let r = Reply::push(Push {
            channel: "news".into(),
            body: PushBody::Publication(Publication {
                data: Payload::from_bytes(&[9, 8, 7]),
                info: None,
                offset: 7,
                tags: None,
            }),
        });
        let bytes = encode_reply(&r);
        let back = pb::Reply::decode_length_delimited(&bytes[..]).unwrap();
        let p = back.push.unwrap();
        assert_eq!(p.channel, "news");
        let publication = p.r#pub.unwrap();
        assert_eq!((&publication.data[..], publication.offset), (&[9u8, 8, 7][..], 7));
        let ok = encode_reply(&Reply::new(3, ReplyBody::Publish(EmptyResult {})));
        let back = pb::Reply::decode_length_delimited(&ok[..]).unwrap();
        assert_eq!((back.id, back.publish.is_some()), (3, true));
        assert_eq!(pb::Reply::default().encode_length_delimited_to_vec(), PING);
    }
}
