//! Malformed input, wrong types, newline batching, isolation between clients.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn malformed_json_after_connect_closes_3501() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    c.send_text("{\"id\": 2, \"subscribe\": ").await;
    let reason = c.expect_close(3501, T).await;
    assert_eq!(reason, "bad request");
}

#[tokio::test]
async fn malformed_json_before_connect_closes_3501() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    c.send_text("this is not json").await;
    c.expect_close(3501, T).await;
}

#[tokio::test]
async fn wrong_field_types_close_3501() {
    let srv = Server::new();
    let cases = [
        json!({"id": 2, "subscribe": {"channel": 123}}).to_string(),
        json!({"id": 2, "publish": {"channel": ["a"], "data": {}}}).to_string(),
        json!({"id": "two", "rpc": {"method": "echo", "data": {}}}).to_string(),
        json!({"id": 2, "history": {"channel": "c", "limit": "ten"}}).to_string(),
        json!({"id": 2, "subscribe": {"channel": "c", "recover": "yes"}}).to_string(),
        json!({"id": 2, "subscribe": "c"}).to_string(),
        "[1,2,3]".to_string(),
    ];
    for text in cases {
        let mut c = srv.user("1").await;
        c.send_text(&text).await;
        match c.wait_close(T).await {
            Some((3501, _)) => {}
            other => panic!("sent {text}: expected close 3501, got {other:?}; replies {:?}", c.replies),
        }
    }
}

#[tokio::test]
async fn wrong_type_in_connect_closes_3501() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    c.send_text(&json!({"id": 1, "connect": {"token": 42}}).to_string()).await;
    c.expect_close(3501, T).await;
}

#[tokio::test]
async fn garbage_from_one_client_does_not_affect_others() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("shared").await;
    b.subscribe("shared").await;

    let mut evil = srv.user("3").await;
    evil.subscribe("shared").await;
    evil.send_text("\u{0}\u{1}garbage{{{{").await;
    evil.expect_close(3501, T).await;
    let mut evil2 = srv.ws().await;
    evil2.send_binary(vec![0xff, 0x00, 0x13, 0x37]).await;
    evil2.send_text_lossy("]]]").await;
    evil2.wait_close(T).await;

    a.publish("shared", json!({"from": "a"})).await;
    let p = b.expect_push("shared", "pub").await;
    assert_eq!(p["data"], json!({"from": "a"}));
    b.publish("shared", json!({"from": "b"})).await;
    let p = a.expect_push("shared", "pub").await;
    assert_eq!(p["data"], json!({"from": "a"}), "a also receives its own publication first");
    let p = a.expect_push("shared", "pub").await;
    assert_eq!(p["data"], json!({"from": "b"}));
    // A new client can still connect, and the API works.
    let mut d = srv.user("4").await;
    d.ok("rpc", json!({"method": "echo", "data": {"ok": true}})).await;
    let left = eventually(Duration::from_secs(3), || {
        let api = srv.api();
        async move {
            let r = api.ok("presence_stats", json!({"channel": "shared"})).await;
            (num(&r, "num_clients") == 2).then_some(())
        }
    })
    .await;
    assert!(left.is_some(), "the client closed for garbage must leave presence");
}

#[tokio::test]
async fn several_commands_in_one_frame_all_get_replies() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    // connect + subscribe + publish + rpc + presence in ONE frame.
    let ids = c
        .send_batch(&[
            ("connect", json!({"token": token("1"), "name": "batch"})),
            ("subscribe", json!({"channel": "batch"})),
            ("publish", json!({"channel": "batch", "data": {"n": 1}})),
            ("rpc", json!({"method": "echo", "data": {"e": 1}})),
            ("presence_stats", json!({"channel": "batch"})),
        ])
        .await;
    let methods = ["connect", "subscribe", "publish", "rpc", "presence_stats"];
    for (id, m) in ids.iter().zip(methods) {
        let r = c.reply(*id).await;
        assert!(r.get("error").is_none(), "{m} in batch failed: {r}");
        assert!(r.get(m).is_some(), "reply to {m} lacks `{m}`: {r}");
    }
    let p = c.expect_push("batch", "pub").await;
    assert_eq!(p["data"], json!({"n": 1}));

    // Trailing newline and an error in the middle of a batch.
    let (i1, t1) = c.command("rpc", json!({"method": "echo", "data": {"a": 1}}));
    let (i2, t2) = c.command("rpc", json!({"method": "nope"}));
    let (i3, t3) = c.command("rpc", json!({"method": "echo", "data": {"a": 3}}));
    c.send_text(&format!("{t1}\n{t2}\n{t3}\n")).await;
    assert_eq!(c.reply(i1).await["rpc"]["data"], json!({"a": 1}));
    assert_eq!(error_code(&c.reply(i2).await), Some(104));
    assert_eq!(c.reply(i3).await["rpc"]["data"], json!({"a": 3}));
}

#[tokio::test]
async fn many_batched_commands_replies_parsed_from_batched_frames() {
    // The server may batch replies with `\n`; the client splits them. All 50 must arrive.
    let srv = Server::new();
    let mut c = srv.user("1").await;
    let cmds: Vec<(&str, serde_json::Value)> =
        (0..50).map(|i| ("rpc", json!({"method": "echo", "data": {"i": i}}))).collect();
    let ids = c.send_batch(&cmds).await;
    for (i, id) in ids.into_iter().enumerate() {
        let r = c.reply(id).await;
        assert_eq!(r["rpc"]["data"], json!({"i": i}), "{r}");
    }
    eprintln!("frames: {}, max lines per frame: {}", c.frames, c.max_lines_per_frame);
}

#[tokio::test]
async fn many_pushes_all_delivered_in_order() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    c.subscribe("big:burst").await;
    let api = srv.api();
    let n = 200;
    let r = api.ok("broadcast", json!({"channels": ["big:burst"], "data": {"warmup": true}})).await;
    assert!(r["responses"].is_array(), "{r}");
    for i in 0..n {
        api.publish("big:burst", json!({"i": i})).await;
    }
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while got.len() < n + 1 && std::time::Instant::now() < deadline {
        match c.push_where(Duration::from_secs(5), |p| p["push"].get("pub").is_some()).await {
            Some(p) => got.push(num(&p["push"]["pub"], "offset")),
            None => break,
        }
    }
    let expected: Vec<i64> = (1..=(n as i64 + 1)).collect();
    assert_eq!(got, expected);
}

/// A request to the WebSocket endpoint that is not a valid upgrade gets an HTTP status and
/// a JSON error that says what is missing, and the server goes on serving.
#[tokio::test]
async fn websocket_endpoint_refuses_bad_upgrades_with_json() {
    let srv = Server::new();
    let http = reqwest::Client::new();
    let url = srv.http_url("/connection/websocket");
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, u16, &str); 3] = [
        (&[], 426, "Upgrade: websocket"),
        (&upgrade, 400, "Sec-WebSocket-Version: 13"),
        (
            &[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13")],
            400,
            "Sec-WebSocket-Key",
        ),
    ];
    for (headers, status, says) in cases {
        let mut request = http.get(&url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "headers {headers:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "headers {headers:?}: {body}");
        assert_eq!(body["error"]["code"], 107);
    }
    let post =
        http.post(&url).header("connection", "Upgrade").header("upgrade", "websocket").send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405);
    let mut c = srv.user("1").await;
    let echoed = c.ok("rpc", json!({"method": "echo", "data": {"ok": true}})).await;
    assert_eq!(echoed["data"]["ok"], true, "{echoed}");
}
