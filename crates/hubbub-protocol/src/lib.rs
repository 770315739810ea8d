//! Wire types and the JSON codec of the Centrifugo client protocol v2.
//!
//! Field names follow `centrifugal/protocol`'s `client.proto`; numeric codes follow the
//! centrifuge library. This crate does no I/O so that it can be fuzzed and reused by the
//! server, the bench harness and tests alike.
//!
//! * [`command`]: what clients send, and [`decode_frame`] to split and parse a frame.
//! * [`reply`]: what the server sends: replies to commands and pushes.
//! * [`codes`]: protocol error codes and disconnect (close) codes.

pub mod codes;
pub mod command;
pub mod fossil;
pub mod reply;

pub use codes::{Disconnect, ProtocolError};
pub use command::{decode_frame, Command, DecodeError, Method};
pub use reply::{
    encode_frame, json_len, ClientInfo, Publication, Push, PushBody, Reply, ReplyBody, StreamPosition,
};

/// Raw JSON kept exactly as received and shared cheaply between subscribers.
pub type Json = std::sync::Arc<serde_json::value::RawValue>;

/// Parses a JSON text into [`Json`], validating it.
pub fn json_from_str(s: &str) -> Result<Json, serde_json::Error> {
    Ok(serde_json::value::RawValue::from_string(s.to_owned())?.into())
}
