//! Protocol details the SDKs rely on: recovery with an empty epoch, the subscribe flag that
//! refuses an unrecoverable position (112), subscription types this server does not serve,
//! the "cache" recovery mode, tags filters, fossil delta compression.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `SubscribeRequest::flag` bit asking for error 112 instead of `recovered: false`.
const REJECT_UNRECOVERED: i64 = 2;

fn server() -> Server {
    Server::builder()
        .ns(Ns::new("cache").set("force_recovery_mode", "\"cache\""))
        .ns(Ns::new("tagged").set("allow_tags_filter", "true"))
        .ns(Ns::new("delta").set("allowed_delta_types", "[\"fossil\"]").set("delta_publish", "true"))
        .client("tags_filter_max_depth", "3")
        .client("tags_filter_max_bytes", "256")
        .start()
}

/// Publishes `n` messages `{"n": i}` through the server API; returns the channel's epoch.
async fn publish_n(api: &Api, channel: &str, n: i64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let r = api.publish(channel, json!({ "n": i })).await;
        epoch = r["epoch"].as_str().unwrap_or_default().to_owned();
    }
    assert!(!epoch.is_empty(), "no epoch from the API");
    epoch
}

fn datas(pubs: &[Value]) -> Vec<i64> {
    pubs.iter().map(|p| p["data"]["n"].as_i64().unwrap_or(-1)).collect()
}

#[tokio::test]
async fn recovery_with_an_empty_epoch_recovers_from_the_offset() {
    let srv = server();
    let api = srv.api();
    let epoch = publish_n(&api, "empty-epoch", 4).await;
    let mut c = srv.user("1").await;

    // As the centrifuge library: no epoch means "whatever the epoch", not "unrecoverable".
    let r =
        c.subscribe_with(json!({"channel": "empty-epoch", "recover": true, "offset": 1, "epoch": ""})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(r["was_recovering"], json!(true), "{r}");
    assert_eq!(offsets(&arr(&r, "publications")), vec![2, 3, 4], "{r}");
    assert_eq!(r["epoch"], json!(epoch), "the reply tells the epoch: {r}");
    assert_eq!(num(&r, "offset"), 4, "{r}");
    c.ok("unsubscribe", json!({"channel": "empty-epoch"})).await;

    // No epoch and no offset: from the start of the stream.
    let r = c.subscribe_with(json!({"channel": "empty-epoch", "recover": true})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(datas(&arr(&r, "publications")), vec![1, 2, 3, 4], "{r}");
    c.ok("unsubscribe", json!({"channel": "empty-epoch"})).await;

    // An offset ahead of the stream is still unrecoverable.
    let r =
        c.subscribe_with(json!({"channel": "empty-epoch", "recover": true, "offset": 9, "epoch": ""})).await;
    assert_eq!(r["recovered"], Value::Null, "{r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");
    assert_eq!(num(&r, "offset"), 4, "{r}");
    c.ok("unsubscribe", json!({"channel": "empty-epoch"})).await;

    // A channel nobody published to: offset 0 in any epoch is its position.
    let r = c.subscribe_with(json!({"channel": "never-published", "recover": true, "epoch": ""})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");

    // Live publications follow the recovered ones.
    c.subscribe_with(json!({"channel": "empty-epoch", "recover": true, "offset": 4})).await;
    // History `since` follows the same rule.
    let h = c
        .ok("history", json!({"channel": "empty-epoch", "limit": -1, "since": {"offset": 2, "epoch": ""}}))
        .await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![3, 4], "{h}");
    api.publish("empty-epoch", json!({"n": 5})).await;
    let p = c.expect_push("empty-epoch", "pub").await;
    assert_eq!(num(&p, "offset"), 5, "{p}");
}

#[tokio::test]
async fn the_reject_flag_answers_112_when_recovery_fails() {
    let srv = server();
    let api = srv.api();
    // `small` keeps 3 publications: offset 1 is gone after 6.
    let epoch = publish_n(&api, "small:r", 6).await;
    let mut c = srv.user("1").await;

    let pruned = json!({"channel": "small:r", "recover": true, "offset": 1, "epoch": epoch, "flag": REJECT_UNRECOVERED});
    assert_eq!(c.err("subscribe", pruned.clone()).await, 112, "pruned position with the flag");
    let other_epoch =
        json!({"channel": "small:r", "recover": true, "offset": 5, "epoch": "not-it", "flag": 3});
    assert_eq!(c.err("subscribe", other_epoch).await, 112, "another epoch with the flag (and bit 1 set too)");
    let ahead = json!({"channel": "small:r", "recover": true, "offset": 60, "epoch": "", "flag": 2});
    assert_eq!(c.err("subscribe", ahead).await, 112, "a position ahead of the stream with the flag");

    // Refused means not subscribed: nothing arrives, and the same subscribe without the
    // flag is answered recovered: false.
    api.publish("small:r", json!({"n": 7})).await;
    c.expect_no_push("small:r", "pub", QUIET).await;
    let r =
        c.subscribe_with(json!({"channel": "small:r", "recover": true, "offset": 1, "epoch": epoch})).await;
    assert_eq!(r["recovered"], Value::Null, "{r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");
    c.ok("unsubscribe", json!({"channel": "small:r"})).await;

    // The flag changes nothing when recovery works.
    let ok = json!({"channel": "small:r", "recover": true, "offset": 5, "epoch": epoch, "flag": REJECT_UNRECOVERED});
    let r = c.subscribe_with(ok).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(offsets(&arr(&r, "publications")), vec![6, 7], "{r}");
    api.publish("small:r", json!({"n": 8})).await;
    assert_eq!(num(&c.expect_push("small:r", "pub").await, "offset"), 8);
    assert!(c.close.is_none(), "{:?}", c.close);
}

#[tokio::test]
async fn subscription_types_this_server_lacks_are_refused() {
    let srv = server();
    let mut c = srv.user("1").await;
    // Centrifugo 6: 1 map, 2 map clients, 3 map users, 4 shared poll: "not available".
    for kind in 1..=4 {
        let code = c.err("subscribe", json!({"channel": "typed", "type": kind})).await;
        assert_eq!(code, 108, "type {kind}");
    }
    // Types nobody defines: a bad request.
    for kind in [5, 99, -1] {
        assert_eq!(c.err("subscribe", json!({"channel": "typed", "type": kind})).await, 107, "type {kind}");
    }
    // None of them subscribed anything: a stream subscription (type 0) is the first.
    let r = c.subscribe_with(json!({"channel": "typed", "type": 0})).await;
    assert!(r.is_object(), "{r}");
    assert!(c.close.is_none(), "refusals keep the connection: {:?}", c.close);
}

#[tokio::test]
async fn cache_recovery_delivers_the_latest_publication() {
    let srv = server();
    let api = srv.api();
    let mut c = srv.user("1").await;

    // Nothing published yet: nothing to recover.
    let r = c.subscribe_with(json!({"channel": "cache:state", "recover": true})).await;
    assert_eq!(r["recovered"], Value::Null, "{r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");
    c.ok("unsubscribe", json!({"channel": "cache:state"})).await;

    let epoch = publish_n(&api, "cache:state", 5).await;
    // A client without a position (centrifuge-js `since: {}`) gets the latest one only.
    let r = c.subscribe_with(json!({"channel": "cache:state", "recover": true})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(datas(&arr(&r, "publications")), vec![5], "{r}");
    assert_eq!(num(&r, "offset"), 5, "{r}");
    assert_eq!(r["epoch"], json!(epoch), "{r}");
    c.ok("unsubscribe", json!({"channel": "cache:state"})).await;

    // An old position too: the state is the latest publication, not what was missed.
    let r = c
        .subscribe_with(json!({"channel": "cache:state", "recover": true, "offset": 2, "epoch": epoch}))
        .await;
    assert_eq!(datas(&arr(&r, "publications")), vec![5], "{r}");
    c.ok("unsubscribe", json!({"channel": "cache:state"})).await;

    // A client that has the latest gets nothing again, and is recovered.
    let r = c
        .subscribe_with(json!({"channel": "cache:state", "recover": true, "offset": 5, "epoch": epoch}))
        .await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");

    // Then live publications as usual.
    api.publish("cache:state", json!({"n": 6})).await;
    assert_eq!(num(&c.expect_push("cache:state", "pub").await, "offset"), 6);
    c.ok("unsubscribe", json!({"channel": "cache:state"})).await;

    // Without recover, a subscribe reads no publication (as in stream mode).
    let r = c.subscribe_with(json!({"channel": "cache:state"})).await;
    assert!(arr(&r, "publications").is_empty(), "{r}");
    assert_eq!(num(&r, "offset"), 6, "{r}");
}

#[tokio::test]
async fn tags_filters_are_checked_and_bounded() {
    let srv = server();
    let mut c = srv.user("1").await;
    let eq = json!({"key": "kind", "cmp": "eq", "val": "a"});
    // The namespace must allow filters.
    assert_eq!(c.err("subscribe", json!({"channel": "plain", "tf": eq})).await, 107);
    let bad = [
        json!({"key": "kind", "cmp": "like", "val": "a"}),
        json!({"op": "xor", "nodes": [eq]}),
        json!({"key": "kind", "cmp": "in"}),
        json!({"key": "n", "cmp": "gt", "val": "ten"}),
        json!({"op": "not", "nodes": []}),
        // Depth 4 over tags_filter_max_depth = 3.
        json!({"op": "not", "nodes": [{"op": "not", "nodes": [{"op": "not", "nodes": [eq]}]}]}),
        // Over tags_filter_max_bytes = 256.
        json!({"key": "kind", "cmp": "in", "vals": (0..30).map(|i| format!("value-{i}")).collect::<Vec<_>>()}),
    ];
    for tf in bad {
        assert_eq!(c.err("subscribe", json!({"channel": "tagged:x", "tf": tf})).await, 107, "{tf}");
    }
    // A filter with delta compression cannot work: refused too.
    let delta = json!({"channel": "tagged:x", "tf": eq, "delta": "fossil"});
    assert_eq!(c.err("subscribe", delta).await, 107);
    // A filter at the bounds is fine, and every refusal kept the connection.
    let deep = json!({"op": "not", "nodes": [{"op": "not", "nodes": [eq]}]});
    c.subscribe_with(json!({"channel": "tagged:x", "tf": deep})).await;
    assert!(c.close.is_none(), "{:?}", c.close);
    // A malformed filter (wrong JSON types) is a broken client: 3501.
    c.send_cmd("subscribe", json!({"channel": "tagged:y", "tf": {"nodes": 5}})).await;
    c.expect_close(3501, T).await;
}

#[tokio::test]
async fn an_unknown_delta_type_is_a_bad_request_and_a_known_one_needs_the_namespace() {
    let srv = server();
    let mut c = srv.user("1").await;
    // Not allowed in the namespace: subscribed, without delta.
    let r = c.subscribe_with(json!({"channel": "no-delta", "delta": "fossil"})).await;
    assert_eq!(r["delta"], Value::Null, "{r}");
    c.send_cmd("subscribe", json!({"channel": "other", "delta": "bsdiff"})).await;
    c.expect_close(3501, T).await;
}

#[test]
fn bad_recovery_mode_and_delta_type_are_named_in_the_config_error() {
    for (key, value) in [("force_recovery_mode", "\"sometimes\""), ("allowed_delta_types", "[\"zstd\"]")] {
        let b = Server::builder().ns(Ns::new("bad").set(key, value));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let cfg = write_config(dir.path(), &b.render(&data));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&cfg).current_dir(dir.path());
        let (st, _out, err) = run_with_timeout(cmd, Duration::from_secs(15));
        assert!(!st.success(), "{key} = {value} accepted");
        assert!(err.contains(key), "the error names {key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// permessage-deflate is not offered (tokio-tungstenite has no support for it): a client's
/// offer is declined in the handshake, and the connection works uncompressed.
#[tokio::test]
async fn a_permessage_deflate_offer_is_declined() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server();
    let mut tcp = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        srv.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, tcp.read(&mut byte)).await.expect("handshake answer").unwrap();
        assert_eq!(n, 1, "connection closed during the handshake: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "no extension accepted: {head}");
    // An uncompressed (RSV1 clear) masked text frame with a connect command is answered.
    let command = format!(r#"{{"id":1,"connect":{{"token":"{}"}}}}"#, token("1"));
    let mut frame = vec![0x81u8];
    let payload = command.as_bytes();
    assert!(payload.len() < 65536);
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut first = [0u8; 2];
    tokio::time::timeout(T, tcp.read_exact(&mut first)).await.expect("a reply").unwrap();
    assert_eq!(first[0], 0x81, "a final text frame, RSV1 clear (not compressed)");
}

/// A delta subscriber's publication data (a JSON string) applied as centrifuge-js does:
/// a delta to the previous text, or the text itself.
fn follow(previous: &mut Vec<u8>, publication: &Value) -> Value {
    let data = publication["data"].as_str().unwrap_or_else(|| panic!("data is a string: {publication}"));
    *previous = if publication["delta"] == json!(true) {
        hubbub_protocol::fossil::apply(previous, data.as_bytes(), 1 << 20).expect("the delta applies")
    } else {
        data.as_bytes().to_vec()
    };
    serde_json::from_slice(previous).expect("the result is the JSON publication")
}

#[tokio::test]
async fn fossil_deltas_go_to_delta_subscribers_and_full_data_to_the_others() {
    let srv = server();
    let api = srv.api();
    let mut plain = srv.user("1").await;
    let mut delta = srv.user("2").await;
    plain.subscribe("delta:doc").await;
    let r = delta.subscribe_with(json!({"channel": "delta:doc", "delta": "fossil"})).await;
    assert_eq!(r["delta"], json!(true), "granted: {r}");
    let doc = |n: i64| json!({"title": "a long enough document to be worth a delta", "items": (0..40).collect::<Vec<_>>(), "n": n});
    let mut previous = Vec::new();
    for n in 1..=4 {
        api.publish("delta:doc", doc(n)).await;
        let p = plain.expect_push("delta:doc", "pub").await;
        assert_eq!(p["data"], doc(n), "the others get the data itself");
        let d = delta.expect_push("delta:doc", "pub").await;
        assert_eq!(d["delta"] == json!(true), n > 1, "the first is in full, then deltas: {d}");
        assert_eq!(follow(&mut previous, &d), doc(n));
        if n > 1 {
            assert!(d["data"].as_str().unwrap().len() < 40, "a small delta: {d}");
        }
    }
    // After a recovery, the recovered publications and the first live one are in full.
    delta.ok("unsubscribe", json!({"channel": "delta:doc"})).await;
    api.publish("delta:doc", doc(5)).await;
    let r = delta
        .subscribe_with(json!({"channel": "delta:doc", "delta": "fossil", "recover": true, "offset": 4}))
        .await;
    let recovered = arr(&r, "publications");
    assert_eq!(recovered.len(), 1, "{r}");
    assert_eq!(follow(&mut previous, &recovered[0]), doc(5));
    for n in 6..=7 {
        api.publish("delta:doc", doc(n)).await;
        let d = delta.expect_push("delta:doc", "pub").await;
        assert_eq!(d["delta"] == json!(true), n > 6, "{d}");
        assert_eq!(follow(&mut previous, &d), doc(n));
    }
}
