//! [`Payload`]: what clients and the server API publish, send and call with, kept exactly as
//! received and shared cheaply between subscribers.
//!
//! A JSON client's payload is a JSON value, kept byte-for-byte as its raw text. A protobuf
//! client's payload is arbitrary bytes: when they are exactly a JSON text they are kept as
//! such (JSON subscribers then get the value itself), otherwise as binary. Either way a
//! protobuf subscriber gets the original bytes.
//!
//! A JSON subscriber cannot receive raw bytes inside a JSON frame, so a binary payload is
//! written there as a JSON string holding the bytes in standard base64, and the object that
//! carries it gets a sibling flag `"<field>_binary":true` (for a publication's `data`:
//! `"data":"AAEC","data_binary":true`). The same form is what the engines store (history,
//! cluster frames, the persistence log), so a binary payload survives a round trip through
//! them unchanged: reading it back, the flag turns the string back into bytes.

use base64::Engine as _;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::sync::Arc;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Standard base64 with padding: how binary payloads travel in JSON.
pub fn to_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub fn from_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(text)
}

/// A payload: JSON text or opaque bytes. Cloning shares it (a reference count).
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON value, its text exactly as received.
    Json(Arc<RawValue>),
    /// Bytes that are not a JSON text, from a protobuf client (or a base64 API field).
    /// Construct it with [`Payload::from_bytes`], which keeps JSON bytes as [`Payload::Json`].
    /// (An `Arc<[u8]>` rather than `Bytes`: a payload sits in every publication kept in
    /// history, and this keeps it at 24 bytes.)
    Binary(Arc<[u8]>),
}

impl Payload {
    /// A payload from bytes received in binary form: JSON if the bytes are exactly one JSON
    /// text (no surrounding whitespace, which a JSON text would lose), binary otherwise. The
    /// bytes are copied, so that the payload does not pin the whole frame it came in.
    pub fn from_bytes(bytes: &[u8]) -> Payload {
        if let Ok(raw) = serde_json::from_slice::<&RawValue>(bytes) {
            if raw.get().len() == bytes.len() {
                return Payload::Json(Arc::from(raw.to_owned()));
            }
        }
        Payload::Binary(Arc::from(bytes))
    }

    /// The payload's bytes: the JSON text, or the binary bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Json(raw) => raw.get().as_bytes(),
            Payload::Binary(bytes) => bytes,
        }
    }

    /// The JSON text, if the payload is JSON.
    pub fn as_json(&self) -> Option<&str> {
        match self {
            Payload::Json(raw) => Some(raw.get()),
            Payload::Binary(_) => None,
        }
    }

    /// Whether the payload is binary (not JSON).
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }

    /// Length of the payload's bytes (memory and answer budgets count it).
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload's bytes as shared [`Bytes`], without copying them.
    pub fn to_bytes(&self) -> Bytes {
        /// Lets `Bytes` own a reference to the payload.
        struct Owner(Payload);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }
        Bytes::from_owner(Owner(self.clone()))
    }

    /// The binary payload whose base64 a JSON form carried.
    fn from_base64(raw: &Payload) -> Result<Payload, String> {
        let text: String = raw
            .as_json()
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| "a binary payload must be a base64 string".to_owned())?;
        let bytes = BASE64.decode(text).map_err(|e| format!("bad base64 payload: {e}"))?;
        Ok(Payload::Binary(Arc::from(bytes)))
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.is_binary() == other.is_binary() && self.as_bytes() == other.as_bytes()
    }
}

impl From<Arc<RawValue>> for Payload {
    fn from(raw: Arc<RawValue>) -> Self {
        Payload::Json(raw)
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Payload::Json(Arc::from(raw))
    }
}

/// A JSON payload as the value itself; a binary one as a base64 string (see the module).
impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Json(raw) => raw.serialize(serializer),
            Payload::Binary(bytes) => serializer.serialize_str(&BASE64.encode(bytes)),
        }
    }
}

/// Any JSON value, kept raw. (A base64 string is turned back into bytes by the field
/// helpers below, which see the `_binary` flag.)
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Payload::Json(Arc::<RawValue>::deserialize(deserializer)?))
    }
}

/// Writes an optional payload field `name` into a map (a struct with a flattened field),
/// with its `<name>_binary` flag when it is binary.
fn serialize_field<S: Serializer>(
    name: &'static str,
    flag: &'static str,
    payload: Option<&Payload>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(None)?;
    if let Some(payload) = payload {
        map.serialize_entry(name, payload)?;
        if payload.is_binary() {
            map.serialize_entry(flag, &true)?;
        }
    }
    map.end()
}

/// Reads back a payload that [`serialize_field`] wrote: `binary` is its flag.
pub(crate) fn read_field<E: serde::de::Error>(payload: Payload, binary: bool) -> Result<Payload, E> {
    if binary {
        Payload::from_base64(&payload).map_err(E::custom)
    } else {
        Ok(payload)
    }
}

/// `#[serde(flatten, serialize_with = "...")]` helpers for the payload fields of the types
/// the engines store (publications, client infos). Only serialization goes through them:
/// those types deserialize through a private mirror (`from = ...`), because a flattened
/// field would make serde buffer the input, which raw JSON values cannot go through.
pub(crate) mod fields {
    use super::*;

    pub fn data<S: Serializer>(payload: &Payload, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_field("data", "data_binary", Some(payload), serializer)
    }

    pub fn conn_info<S: Serializer>(payload: &Option<Payload>, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_field("conn_info", "conn_info_binary", payload.as_ref(), serializer)
    }

    pub fn chan_info<S: Serializer>(payload: &Option<Payload>, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_field("chan_info", "chan_info_binary", payload.as_ref(), serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_json_stay_json_byte_for_byte() {
        let p = Payload::from_bytes(br#"{"a": [1, 2]}"#);
        assert_eq!(p.as_json(), Some(r#"{"a": [1, 2]}"#));
        // Whitespace around a JSON text would be lost: such bytes stay binary.
        assert!(Payload::from_bytes(b" 1").is_binary());
        assert!(Payload::from_bytes(&[0, 159, 146, 150]).is_binary());
        assert!(Payload::from_bytes(b"").is_binary());
        assert_eq!(&Payload::from_bytes(&[0, 1, 2]).to_bytes()[..], &[0, 1, 2]);
        assert_eq!(&Payload::from_bytes(b"[1]").to_bytes()[..], b"[1]");
    }

    #[test]
    fn binary_is_a_base64_string_in_json() {
        let p = Payload::from_bytes(&[0, 1, 2, 255]);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""AAEC/w==""#);
        let back: Payload = serde_json::from_str(r#""AAEC/w==""#).unwrap();
        assert_eq!(read_field::<serde_json::Error>(back, true).unwrap(), p);
        let not_base64: Payload = serde_json::from_str(r#""!!""#).unwrap();
        assert!(read_field::<serde_json::Error>(not_base64, true).is_err());
        let not_string: Payload = serde_json::from_str("1").unwrap();
        assert!(read_field::<serde_json::Error>(not_string, true).is_err());
    }
}
