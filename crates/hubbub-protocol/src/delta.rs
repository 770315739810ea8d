//! How a publication reaches a subscriber that negotiated delta compression
//! (`SubscribeRequest::delta = "fossil"`, `SubscribeResult::delta = true`), as centrifuge-js
//! and Centrifugo do it.
//!
//! - JSON: every publication's `data` is a JSON *string*. Either the publication's JSON text
//!   itself (`delta` absent), or a fossil delta (`"delta":true`) that turns the previous
//!   publication's text into this one. The SDK applies the delta to the UTF-8 bytes of the
//!   text it kept and parses the result; so a delta is sent only when it is valid UTF-8.
//! - Protobuf: `data` holds the bytes, the full payload or the delta (`delta: true`).
//!
//! A binary payload (from a protobuf client) has no text to send a JSON subscriber in this
//! form: such a publication goes to it as it goes to anyone else.

use crate::{fossil, Payload, Protocol, Publication, Push, PushBody, Reply};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;

/// The data of a JSON payload as a delta subscriber gets it in full: its text as a JSON
/// string. `None` for a binary payload.
pub fn json_string_form(data: &Payload) -> Option<Payload> {
    let text = data.as_json()?;
    // A string serializes to a JSON string, always.
    let quoted = serde_json::to_string(text).expect("a string serializes");
    let raw = serde_json::value::RawValue::from_string(quoted).expect("a JSON string is JSON");
    Some(Payload::Json(raw.into()))
}

/// The fossil delta from the previous publication's data to this one's, when sending it
/// saves bytes (as Centrifugo: a delta at least as long as the data is not used).
pub fn patch(previous: &Payload, data: &Payload) -> Option<Vec<u8>> {
    let patch = fossil::create(previous.as_bytes(), data.as_bytes());
    (patch.len() < data.len()).then_some(patch)
}

/// The push of `publication` on `channel` for a delta subscriber speaking `protocol`: in
/// full (`patch` None) or as the given delta. `None` when it cannot be written so (JSON: a
/// binary payload, or a delta that is not UTF-8); the subscriber then gets the ordinary push
/// and its next one in full.
pub fn encode_push(
    protocol: Protocol,
    channel: &str,
    publication: &Publication,
    patch: Option<&[u8]>,
) -> Option<Bytes> {
    match (protocol, patch) {
        (Protocol::Json, None) => {
            let data = json_string_form(&publication.data)?;
            let full = Publication { data, ..publication.clone() };
            Some(
                Reply::push(Push { channel: channel.to_owned(), body: PushBody::Publication(full) }).encode(),
            )
        }
        (Protocol::Json, Some(patch)) => {
            let text = std::str::from_utf8(patch).ok()?;
            let push = JsonPush {
                push: JsonPushBody { channel, publication: DeltaPublication::new(publication, text) },
            };
            let mut out = Vec::with_capacity(patch.len() + channel.len() + 64);
            serde_json::to_writer(&mut out, &push).expect("a delta push serializes");
            Some(Bytes::from(out))
        }
        (Protocol::Protobuf, None) => Some(
            Reply::push(Push {
                channel: channel.to_owned(),
                body: PushBody::Publication(publication.clone()),
            })
            .encode_as(protocol),
        ),
        (Protocol::Protobuf, Some(patch)) => Some(crate::protobuf::encode_publication_push(
            channel,
            publication,
            Bytes::copy_from_slice(patch),
            true,
        )),
    }
}

/// `{"push":{"channel":..,"pub":{"data":"<delta>",..,"delta":true}}}`.
#[derive(Serialize)]
struct JsonPush<'a> {
    push: JsonPushBody<'a>,
}

#[derive(Serialize)]
struct JsonPushBody<'a> {
    channel: &'a str,
    #[serde(rename = "pub")]
    publication: DeltaPublication<'a>,
}

#[derive(Serialize)]
struct DeltaPublication<'a> {
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a crate::ClientInfo>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a HashMap<String, String>>,
    delta: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl<'a> DeltaPublication<'a> {
    fn new(p: &'a Publication, data: &'a str) -> Self {
        DeltaPublication { data, info: p.info.as_ref(), offset: p.offset, tags: p.tags.as_ref(), delta: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_from_str;

    fn publication(json: &str, offset: u64) -> Publication {
        Publication { data: json_from_str(json).unwrap(), info: None, offset, tags: None }
    }

    #[test]
    fn json_pushes_carry_text_and_deltas_as_strings() {
        let previous = publication(r#"{"text":"the quick brown fox jumps over the lazy dog","n":1}"#, 1);
        let next = publication(r#"{"text":"the quick brown fox jumps over the lazy cat","n":2}"#, 2);
        let full: serde_json::Value =
            serde_json::from_slice(&encode_push(Protocol::Json, "c", &next, None).unwrap()).unwrap();
        assert_eq!(full["push"]["pub"]["data"], serde_json::json!(next.data.as_json().unwrap()));
        assert_eq!(full["push"]["pub"]["delta"], serde_json::Value::Null);
        assert_eq!(full["push"]["pub"]["offset"], 2);

        let patch = patch(&previous.data, &next.data).expect("a delta saves bytes here");
        let frame = encode_push(Protocol::Json, "c", &next, Some(&patch)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["push"]["channel"], "c");
        assert_eq!(v["push"]["pub"]["delta"], true);
        assert_eq!(v["push"]["pub"]["offset"], 2);
        // What the SDK does: apply the string's UTF-8 bytes to the previous text.
        let delta = v["push"]["pub"]["data"].as_str().unwrap();
        let applied = fossil::apply(previous.data.as_bytes(), delta.as_bytes(), 1 << 20).unwrap();
        assert_eq!(applied, next.data.as_bytes());
    }

    #[test]
    fn what_json_cannot_carry_is_not_written() {
        let binary =
            Publication { data: Payload::from_bytes(&[0, 159, 146, 150]), info: None, offset: 3, tags: None };
        assert!(encode_push(Protocol::Json, "c", &binary, None).is_none());
        assert!(encode_push(Protocol::Json, "c", &binary, Some(&[0xff, 0xfe])).is_none());
        assert!(encode_push(Protocol::Protobuf, "c", &binary, Some(&[0xff, 0xfe])).is_some());
        // A delta no shorter than the data is not worth sending.
        let tiny = json_from_str("1").unwrap();
        assert!(patch(&json_from_str("2").unwrap(), &tiny).is_none());
    }
}
