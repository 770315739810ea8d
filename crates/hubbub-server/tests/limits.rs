//! Frame size, command rate, slow consumer.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn frame_over_max_message_size_closes_1009() {
    let srv = Server::builder().client("max_message_size", "4096").start();
    let mut c = srv.user("1").await;
    c.subscribe("big").await;
    // Below the limit: fine.
    c.publish("big", json!({"s": "x".repeat(2000)})).await;
    // Over the limit: close 1009.
    let (_id, text) = c.command("publish", json!({"channel": "big", "data": {"s": "y".repeat(10_000)}}));
    c.send_text_lossy(&text).await;
    c.expect_close(1009, T).await;
}

#[tokio::test]
async fn other_clients_survive_a_too_big_frame() {
    let srv = Server::builder().client("max_message_size", "4096").start();
    let mut good = srv.user("1").await;
    good.subscribe("c").await;
    let mut bad = srv.user("2").await;
    bad.send_text_lossy(&"z".repeat(20_000)).await;
    bad.expect_close(1009, T).await;
    srv.api().publish("c", json!({"still": "alive"})).await;
    good.expect_push("c", "pub").await;
}

#[tokio::test]
async fn commands_over_rate_get_111_temporary() {
    let srv = Server::builder().client("commands_per_second", "5").start();
    let mut c = srv.user("1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cmds: Vec<(&str, serde_json::Value)> =
        (0..30).map(|i| ("rpc", json!({"method": "echo", "data": {"i": i}}))).collect();
    let ids = c.send_batch(&cmds).await;
    let mut ok = 0;
    let mut limited = 0;
    for id in ids {
        let r = c.reply(id).await;
        match error_code(&r) {
            None => ok += 1,
            Some(111) => {
                assert_eq!(r["error"]["temporary"], json!(true), "111 must be temporary: {r}");
                limited += 1;
            }
            Some(other) => panic!("unexpected error {other}: {r}"),
        }
    }
    assert!(ok >= 1, "no command succeeded");
    assert!(limited >= 1, "30 commands at once with commands_per_second=5: none got 111 ({ok} ok)");
    assert!(ok <= 15, "rate limit too loose: {ok} of 30 succeeded with commands_per_second=5");
    // The connection stays open and works again after a pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_closes_3008() {
    let srv = Server::builder().client("queue_max_bytes", "65536").start();
    let mut slow = Client::open_small_rcvbuf(&srv.addr, &srv.ws_url(), 4096).await;
    slow.connect(&token("1")).await;
    slow.subscribe("firehose").await;
    let mut fine = srv.user("2").await;
    fine.subscribe("other").await;

    // The slow client does not read while ~10 MB are published to its channel.
    let api = srv.api();
    let payload = "x".repeat(32 * 1024);
    let started = Instant::now();
    for i in 0..320 {
        api.publish("firehose", json!({"i": i, "p": payload})).await;
        assert!(started.elapsed() < Duration::from_secs(40), "publishing took too long");
    }
    // Now read: after the buffered publications a close 3008 must come.
    slow.auto_pong = false;
    let got = slow.wait_close(Duration::from_secs(30)).await;
    match got {
        Some((3008, _)) => {}
        other => panic!(
            "slow consumer: expected close 3008, got {other:?} after {} pushes (ended={}, error={:?})",
            slow.pushes.len(),
            slow.ended,
            slow.error
        ),
    }
    slow.pushes.clear();
    // Others are unaffected.
    api.publish("other", json!({"ok": 1})).await;
    fine.expect_push("other", "pub").await;
}

/// A WebSocket handshake to the server: `Ok` with the open connection, or the HTTP status
/// and body it was refused with.
async fn handshake(
    srv: &Server,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, String),
> {
    match tokio_tungstenite::connect_async(srv.ws_url()).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body =
                response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn connections_per_node_are_bounded_with_503() {
    let srv = Server::builder().client("connection_limit", "3").start();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(srv.user(&i.to_string()).await);
    }
    for _ in 0..5 {
        let Err((status, body)) = handshake(&srv).await else { panic!("a fourth connection is accepted") };
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"code\":106"), "{body}");
    }
    // The streaming transports are connections too.
    let response = http_client()
        .post(srv.http_url("/connection/http_stream"))
        .body(json!({"token": token("9")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    held.pop().unwrap().close_now().await;
    let again = eventually(T, || async { handshake(&srv).await.ok() }).await;
    assert!(again.is_some(), "a freed place is not given back");
    for c in &mut held {
        c.ok("rpc", json!({"method": "echo", "data": 1})).await;
    }
}

#[tokio::test]
async fn connection_attempts_per_ip_are_bounded_with_429() {
    let srv = Server::builder().client("connection_rate_limit_per_ip", "4").start();
    // Wait for a fresh second of the limiter's window to start with this burst.
    let mut refused = None;
    for attempt in 0..12 {
        if let Err((status, body)) = handshake(&srv).await {
            refused = Some((attempt, status, body));
            break;
        }
    }
    let (attempt, status, body) = refused.expect("a burst from one address is refused");
    assert!((4..=8).contains(&attempt), "refused at attempt {attempt}");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("\"code\":111"), "{body}");
    // A second later the address may connect again, and works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(handshake(&srv).await.is_ok());
    let mut c = srv.user("1").await;
    c.ok("rpc", json!({"method": "echo", "data": 1})).await;
}

#[tokio::test]
async fn connection_attempts_per_node_are_bounded_with_503() {
    let srv = Server::builder().client("connection_rate_limit", "3").start();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(handshake(&srv).await.err().map(|(status, _)| status));
    }
    assert!(statuses.contains(&Some(503)), "{statuses:?}");
    assert!(statuses[..3].iter().all(Option::is_none), "{statuses:?}");
}
