//! What the server sends: replies to commands and pushes, and their encoding.

use crate::{Json, ProtocolError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// A position in a channel's stream: the offset of its last publication and the stream's
/// epoch, which changes whenever the stream's history is lost or reset.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// Who is connected: presence entries and the publisher of a client-side publication.
///
/// Its payloads are written as [`crate::payload`] describes (a binary one as base64 with a
/// `_binary` flag); it deserializes through [`wire::ClientInfo`], which reads that back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "wire::ClientInfo")]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    #[serde(flatten, serialize_with = "crate::payload::fields::conn_info")]
    pub conn_info: Option<Json>,
    #[serde(flatten, serialize_with = "crate::payload::fields::chan_info")]
    pub chan_info: Option<Json>,
}

/// One message in a channel. Serialized as the client protocol's JSON publication, which is
/// also the form the engines store; deserializes through [`wire::Publication`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "wire::Publication")]
pub struct Publication {
    #[serde(flatten, serialize_with = "crate::payload::fields::data")]
    pub data: Json,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<ClientInfo>,
    #[serde(skip_serializing_if = "is_zero_u64", default)]
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<HashMap<String, String>>,
}

/// The JSON forms of [`ClientInfo`] and [`Publication`] as read back (from an engine's
/// storage, or from another node): their payloads with the flags that mark binary ones. A
/// field added to either type is added here too (the conversions name every field).
mod wire {
    use crate::payload::read_field;
    use crate::Json;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Deserialize)]
    pub struct ClientInfo {
        user: String,
        client: String,
        #[serde(default)]
        conn_info: Option<Json>,
        #[serde(default)]
        conn_info_binary: bool,
        #[serde(default)]
        chan_info: Option<Json>,
        #[serde(default)]
        chan_info_binary: bool,
    }

    /// A binary info whose base64 is damaged is dropped rather than failing the whole
    /// record: it is informational, and the rest (a presence entry, a publication) matters.
    impl From<ClientInfo> for super::ClientInfo {
        fn from(w: ClientInfo) -> Self {
            let read =
                |p: Option<Json>, binary| p.and_then(|p| read_field::<serde_json::Error>(p, binary).ok());
            super::ClientInfo {
                user: w.user,
                client: w.client,
                conn_info: read(w.conn_info, w.conn_info_binary),
                chan_info: read(w.chan_info, w.chan_info_binary),
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Publication {
        data: Json,
        #[serde(default)]
        data_binary: bool,
        #[serde(default)]
        info: Option<super::ClientInfo>,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        tags: Option<HashMap<String, String>>,
    }

    impl TryFrom<Publication> for super::Publication {
        type Error = serde_json::Error;

        fn try_from(w: Publication) -> Result<Self, serde_json::Error> {
            Ok(super::Publication {
                data: read_field(w.data, w.data_binary)?,
                info: w.info,
                offset: w.offset,
                tags: w.tags,
            })
        }
    }
}

/// Length of a value's JSON encoding, counted without building it: answers are bounded in
/// bytes, and this is what each item adds to one.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    /// Counts what is written and keeps nothing.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; a value that does not serialize counts as what was
    // written before it failed.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Publication {
    /// Length of the publication's JSON encoding (see [`json_len`]).
    pub fn encoded_len(&self) -> usize {
        json_len(self)
    }
}

/// A reply to a command (`id` > 0) or, with `id` 0, a push.
#[derive(Debug, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(flatten)]
    pub body: ReplyBody,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyBody {
    Error(ProtocolError),
    Push(Push),
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe(EmptyResult),
    Publish(EmptyResult),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Ping(EmptyResult),
    Rpc(RpcResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
}

impl Reply {
    pub fn new(id: u32, body: ReplyBody) -> Self {
        Reply { id, body }
    }

    pub fn error(id: u32, error: impl Into<ProtocolError>) -> Self {
        Reply { id, body: ReplyBody::Error(error.into()) }
    }

    pub fn push(push: Push) -> Self {
        Reply { id: 0, body: ReplyBody::Push(push) }
    }

    /// Encodes the reply in the connection's protocol: a JSON object (no trailing newline),
    /// or a length-delimited protobuf message.
    pub fn encode_as(&self, protocol: crate::Protocol) -> Bytes {
        match protocol {
            crate::Protocol::Json => self.encode(),
            crate::Protocol::Protobuf => crate::protobuf::encode_reply(self),
        }
    }

    /// Encodes the reply as one JSON object (no trailing newline).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.size_hint());
        // Serializing these types cannot fail: all map keys are strings.
        serde_json::to_writer(&mut out, self).expect("reply serialization");
        Bytes::from(out)
    }

    /// Room for the encoded reply, so that a publication (encoded once per channel, on
    /// every publish) is written without growing its buffer: the envelope plus the data.
    fn size_hint(&self) -> usize {
        const ENVELOPE: usize = 128;
        match &self.body {
            ReplyBody::Push(Push { channel, body: PushBody::Publication(p) }) => {
                ENVELOPE + channel.len() + p.data.len() + if p.info.is_some() { ENVELOPE } else { 0 }
            }
            _ => ENVELOPE,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct EmptyResult {}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// A message the server sends on its own: `{"push":{"channel":..,"<kind>":{..}}}`.
#[derive(Debug, Serialize)]
pub struct Push {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(flatten)]
    pub body: PushBody,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushBody {
    #[serde(rename = "pub")]
    Publication(Publication),
    Join {
        info: ClientInfo,
    },
    Leave {
        info: ClientInfo,
    },
    Unsubscribe {
        code: u32,
        reason: String,
    },
    Message {
        data: Json,
    },
    Subscribe(SubscribePush),
    /// The connect result, pushed to unidirectional clients (they send no command to reply to).
    Connect(ConnectResult),
    Disconnect {
        code: u32,
        reason: String,
        reconnect: bool,
    },
    Refresh {
        #[serde(skip_serializing_if = "is_false")]
        expires: bool,
        #[serde(skip_serializing_if = "is_zero_u32")]
        ttl: u32,
    },
}

/// Tells a client about a subscription the server made for it.
#[derive(Debug, Default, Serialize)]
pub struct SubscribePush {
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
}

/// Joins already-encoded messages into one frame, newline-separated, as the protocol batches.
/// The frame is allocated once, at its final size: this runs for every batched write.
pub fn encode_frame<M: AsRef<[u8]>>(messages: &[M]) -> Vec<u8> {
    let size = messages.iter().map(|m| m.as_ref().len() + 1).sum::<usize>().saturating_sub(1);
    let mut out = Vec::with_capacity(size);
    for m in messages.iter().map(AsRef::as_ref) {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engines store comes back as it was: JSON byte-for-byte, binary as bytes.
    #[test]
    fn publications_round_trip_through_their_json() {
        for data in [crate::json_from_str(r#"{"a": 1}"#).unwrap(), crate::Payload::from_bytes(&[0, 255])] {
            let p = Publication {
                data: data.clone(),
                info: Some(ClientInfo {
                    user: "u".into(),
                    client: "c".into(),
                    conn_info: Some(crate::Payload::from_bytes(&[7, 0])),
                    chan_info: None,
                }),
                offset: 3,
                tags: Some(HashMap::from([("k".to_owned(), "v".to_owned())])),
            };
            let json = serde_json::to_string(&p).unwrap();
            let back: Publication = serde_json::from_str(&json).unwrap();
            assert_eq!(back.data, data);
            assert_eq!(back.offset, 3);
            let info = back.info.unwrap();
            assert_eq!(info.conn_info, Some(crate::Payload::from_bytes(&[7, 0])));
            assert_eq!(info.chan_info, None);
            assert_eq!(back.tags.unwrap()["k"], "v");
            assert_eq!(json_len(&p), json.len());
        }
        let damaged = r#"{"data":"!!","data_binary":true}"#;
        assert!(serde_json::from_str::<Publication>(damaged).is_err());
    }

    #[test]
    fn encodes_reply_and_push_shapes() {
        let r = Reply::new(3, ReplyBody::Publish(EmptyResult {}));
        assert_eq!(&r.encode()[..], br#"{"id":3,"publish":{}}"#);
        let p = Reply::push(Push {
            channel: "news".into(),
            body: PushBody::Publication(Publication {
                data: crate::json_from_str(r#"{"x":1}"#).unwrap(),
                info: None,
                offset: 7,
                tags: None,
            }),
        });
        assert_eq!(&p.encode()[..], br#"{"push":{"channel":"news","pub":{"data":{"x":1},"offset":7}}}"#);
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(crate::Payload::from_bytes(&[1])),
            chan_info: Some(crate::json_from_str("[1]").unwrap()),
        };
        let p = Reply::push(Push {
            channel: "b".into(),
            body: PushBody::Publication(Publication {
                data: crate::Payload::from_bytes(&[0, 1, 2]),
                info: Some(info),
                offset: 0,
                tags: None,
            }),
        });
        assert_eq!(
            std::str::from_utf8(&p.encode()).unwrap(),
            r#"{"push":{"channel":"b","pub":{"data":"AAEC","data_binary":true,"info":{"user":"u","client":"c","conn_info":"AQ==","conn_info_binary":true,"chan_info":[1]}}}}"#
        );
        let e = Reply::error(9, crate::codes::ERROR_TOO_MANY_REQUESTS);
        assert_eq!(
            &e.encode()[..],
            br#"{"id":9,"error":{"code":111,"message":"too many requests","temporary":true}}"#
        );
    }
}
