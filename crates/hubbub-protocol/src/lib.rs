//! Wire types and the codecs of the Centrifugo client protocol v2: JSON and protobuf.
//!
//! Field names follow `centrifugal/protocol`'s `client.proto`; numeric codes follow the
//! centrifuge library. This crate does no I/O so that it can be fuzzed and reused by the
//! server, the bench harness and tests alike.
//!
//! * [`command`]: what clients send, and [`decode_frame`] to split and parse a JSON frame.
//! * [`protobuf`]: the same commands and replies in protobuf (`proto/client.proto`).
//! * [`reply`]: what the server sends: replies to commands and pushes.
//! * [`payload`]: [`Payload`], the data of publications, RPCs, connects and infos.
//! * [`codes`]: protocol error codes and disconnect (close) codes.

pub mod codes;
pub mod command;
pub mod payload;
pub mod protobuf;
pub mod reply;

use bytes::Bytes;
pub use codes::{Disconnect, ProtocolError};
pub use command::{decode_frame, Command, DecodeError, Method};
pub use payload::Payload;
pub use reply::{
    encode_frame, json_len, ClientInfo, Publication, Push, PushBody, Reply, ReplyBody, StreamPosition,
};

/// A payload. The name is older than binary payloads: see [`Payload`].
pub type Json = Payload;

/// Parses a JSON text into a [`Payload`], validating it.
pub fn json_from_str(s: &str) -> Result<Json, serde_json::Error> {
    Ok(Payload::Json(serde_json::value::RawValue::from_string(s.to_owned())?.into()))
}

/// The encoding a connection speaks, chosen when it opens (`cf_protocol=protobuf` or the
/// `centrifuge-protobuf` WebSocket subprotocol; an `application/octet-stream` body for HTTP
/// streaming) and kept for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Protocol {
    /// JSON commands and replies, newline-separated in a frame.
    #[default]
    Json,
    /// Length-delimited protobuf Commands and Replies, concatenated in a frame.
    Protobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Protobuf => "protobuf",
        }
    }

    /// Decodes a frame of commands.
    pub fn decode_frame(self, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
        match self {
            Protocol::Json => decode_frame(std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?),
            Protocol::Protobuf => protobuf::decode_frame(frame),
        }
    }

    /// The server's ping: `{}`, or an empty Reply.
    pub fn ping(self) -> Bytes {
        match self {
            Protocol::Json => Bytes::from_static(b"{}"),
            Protocol::Protobuf => Bytes::from_static(protobuf::PING),
        }
    }

    /// Joins encoded replies into one frame: newline-separated for JSON; protobuf's are
    /// length-delimited already, so they are only concatenated.
    pub fn join_frames<M: AsRef<[u8]>>(self, messages: &[M]) -> Vec<u8> {
        match self {
            Protocol::Json => encode_frame(messages),
            Protocol::Protobuf => {
                let mut out = Vec::with_capacity(messages.iter().map(|m| m.as_ref().len()).sum());
                for m in messages {
                    out.extend_from_slice(m.as_ref());
                }
                out
            }
        }
    }
}
