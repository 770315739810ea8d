//! Feeds arbitrary bytes to the protobuf decoders (a frame of length-delimited Commands, as
//! WebSocket binary messages and HTTP-streaming bodies carry; and an emulation request): each
//! must return commands or an error, never panic. A decoded frame must re-encode: every
//! payload it carried comes out of a reply byte for byte, whatever the bytes were.
#![no_main]

use hubbub_protocol::protobuf::{self, pb, prost::Message as _};
use hubbub_protocol::{Method, Protocol, Reply, ReplyBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protobuf::decode_emulation_request(data);
    let Ok(commands) = Protocol::Protobuf.decode_frame(data) else { return };
    for c in commands {
        assert!(!c.method.name().is_empty());
        if let Method::Rpc(rpc) = c.method {
            let sent = rpc.data.as_ref().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
            let result = hubbub_protocol::reply::RpcResult { data: rpc.data };
            let encoded = Reply::new(c.id.max(1), ReplyBody::Rpc(result)).encode_as(Protocol::Protobuf);
            let back = pb::Reply::decode_length_delimited(&encoded[..]).expect("our own reply decodes");
            assert_eq!(&back.rpc.expect("rpc result").data[..], &sent[..]);
            // The JSON form of the same payload is valid JSON, whatever the bytes were.
            let json = Reply::new(1, ReplyBody::Rpc(hubbub_protocol::reply::RpcResult {
                data: Some(hubbub_protocol::Payload::from_bytes(&sent)),
            }))
            .encode();
            serde_json::from_slice::<serde_json::Value>(&json).expect("JSON reply is JSON");
        }
    }
});
