//! Attacks on the transports: what a client can make the server hold per connection, and
//! how it answers a client that breaks the wire protocol. Each test performs the attack
//! with a bounded loop, checks the answers, and that the server's memory stays bounded while
//! another client keeps working.
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// The WebSocket wire, raw
// ---------------------------------------------------------------------------------------------

/// Opens `/connection/websocket` over a bare TCP stream and reads the `101` answer.
async fn raw_websocket(srv: &Server) -> TcpStream {
    let mut tcp = TcpStream::connect(&srv.addr).await.expect("connect");
    let request = "GET /connection/websocket HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(T, tcp.read(&mut byte)).await.expect("101 in time").unwrap();
        assert_eq!(n, 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// One client frame: FIN set, `opcode`, masked with a fixed key unless `masked` is false.
fn client_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut frame = vec![0x80 | opcode];
    if payload.len() < 126 {
        frame.push(payload.len() as u8 | mask_bit);
    } else {
        frame.push(126 | mask_bit);
        frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Reads server frames until a close frame and returns its code; panics when the connection
/// ends without one (the bug: a silent TCP drop).
async fn close_code(tcp: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        // Skip complete non-close frames (replies, pings).
        while got.len() >= 2 {
            let len = match got[1] & 0x7f {
                126 if got.len() >= 4 => u16::from_be_bytes([got[2], got[3]]) as usize + 4,
                126 => break,
                127 => panic!("unexpected 64-bit frame length"),
                n => n as usize + 2,
            };
            if got.len() < len {
                break;
            }
            if got[0] & 0x0f == 0x8 {
                assert!(len >= 4, "close frame without a code");
                return u16::from_be_bytes([got[2], got[3]]);
            }
            got.drain(..len);
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("a close frame in time")
            .unwrap_or(0);
        assert!(n > 0, "the server dropped the connection without a close frame");
        got.extend_from_slice(&buf[..n]);
    }
}

/// RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with 1007.
#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let srv = Server::new();
    let mut good = srv.user("1").await;
    let mut tcp = raw_websocket(&srv).await;
    tcp.write_all(&client_frame(0x1, &[b'{', 0xff, 0xfe, b'}'], true)).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, 1007);
    // The same inside a connected session.
    let mut tcp = raw_websocket(&srv).await;
    let connect = json!({"id": 1, "connect": {"token": token("2")}}).to_string();
    tcp.write_all(&client_frame(0x1, connect.as_bytes(), true)).await.unwrap();
    tcp.write_all(&client_frame(0x1, b"\xc3\x28", true)).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, 1007);
    good.ok("rpc", json!({"method": "echo", "data": {"still": "here"}})).await;
}

/// Other violations of the framing (RFC 6455 §5): an unmasked client frame, a reserved
/// opcode, a reserved bit set, a continuation with nothing to continue: close 1002.
#[tokio::test]
async fn framing_violations_close_with_1002() {
    let srv = Server::new();
    let unmasked = client_frame(0x1, b"{}", false);
    let reserved_opcode = client_frame(0x3, b"{}", true);
    let mut reserved_bit = client_frame(0x1, b"{}", true);
    reserved_bit[0] |= 0x40;
    let stray_continuation = client_frame(0x0, b"{}", true);
    for (name, frame) in [
        ("unmasked", unmasked),
        ("reserved opcode", reserved_opcode),
        ("reserved bit", reserved_bit),
        ("continuation", stray_continuation),
    ] {
        let mut tcp = raw_websocket(&srv).await;
        tcp.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, 1002, "{name}");
    }
}

/// A message over `client.max_message_size` sent in fragments: 1009, not a drop.
#[tokio::test]
async fn fragmented_message_over_the_limit_closes_with_1009() {
    let srv = Server::builder().client("max_message_size", "256").start();
    let mut tcp = raw_websocket(&srv).await;
    let mut first = client_frame(0x1, &[b'x'; 100], true);
    first[0] &= 0x7f; // not final
    tcp.write_all(&first).await.unwrap();
    for _ in 0..3 {
        let mut more = client_frame(0x0, &[b'x'; 100], true);
        more[0] &= 0x7f;
        if tcp.write_all(&more).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut tcp).await, 1009);
}

// ---------------------------------------------------------------------------------------------
// Bidirectional emulation: `POST /emulation`
// ---------------------------------------------------------------------------------------------

/// An http_stream session: the response (kept, and read only when the test says) and the
/// session id from its connect reply.
struct Emulated {
    response: reqwest::Response,
    session: String,
}

async fn http_stream(srv: &Server, user: &str) -> Emulated {
    // No overall timeout: the stream stays open for the whole test.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let connect = json!({"id": 1, "connect": {"token": token(user)}}).to_string();
    let mut response =
        http.post(srv.http_url("/connection/http_stream")).body(connect).send().await.expect("http_stream");
    assert_eq!(response.status(), 200);
    let mut got = Vec::new();
    while !got.contains(&b'\n') {
        let chunk = tokio::time::timeout(T, response.chunk()).await.expect("connect reply").unwrap();
        got.extend_from_slice(&chunk.expect("stream open"));
    }
    let line = got.split(|b| *b == b'\n').next().unwrap();
    let reply: Value = serde_json::from_slice(line).expect("connect reply JSON");
    let session = reply["connect"]["session"].as_str().expect("a session id").to_owned();
    Emulated { response, session }
}

async fn post_emulation(http: &reqwest::Client, srv: &Server, body: String) -> (u16, Value) {
    let response = http.post(srv.http_url("/emulation")).body(body).send().await.expect("POST /emulation");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Finding 3: commands posted to a session whose stream is not read count toward its queue
/// budget (`client.queue_max_bytes`): over it, the session is disconnected as slow and the
/// POST is refused with a clear answer, instead of the server queueing every post (10,960
/// posts of 60 KB took it from 12 MB to 680 MB).
#[tokio::test]
async fn emulation_posts_to_an_unread_stream_are_bounded() {
    let srv = Server::new();
    let mut other = srv.user("other").await;
    let stream = http_stream(&srv, "1").await;
    let http = http_client();
    let before = srv.rss_kib();
    let command = json!({"id": 2, "rpc": {"method": "echo", "data": "x".repeat(60_000)}}).to_string();
    let body = json!({"session": stream.session, "data": command}).to_string();
    let mut refused = None;
    let mut accepted = 0;
    // 1,500 × 60 KB = 90 MB if nothing bounded them.
    for _ in 0..1_500 {
        match post_emulation(&http, &srv, body.clone()).await {
            (204, _) => accepted += 1,
            answer => {
                refused = Some(answer);
                break;
            }
        }
    }
    let grown = srv.rss_kib().saturating_sub(before);
    let (status, error) = refused.unwrap_or_else(|| panic!("all posts accepted; RSS grew {grown} KiB"));
    assert_eq!(status, 410, "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("3008") && message.contains("client.queue_max_bytes"), "{error}");
    assert!(accepted < 500, "{accepted} posts of 60 KB accepted before the refusal");
    assert!(grown < 40 * 1024, "server RSS grew {grown} KiB");
    // Later posts are refused too, and the other client was not held up.
    let (status, _) = post_emulation(&http, &srv, body).await;
    assert!(status == 410 || status == 404, "{status}");
    other.ok("rpc", json!({"method": "echo", "data": {"still": "here"}})).await;
    drop(stream.response);
}

/// Writes a request head and then `body` chunks on a raw connection (write errors
/// tolerated: the server may answer and close early), then reads the whole answer: (status,
/// JSON body).
async fn raw_request(srv: &Server, head: &str, body: impl Iterator<Item = Vec<u8>>) -> (u16, Value) {
    let mut tcp = TcpStream::connect(&srv.addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.unwrap();
    for chunk in body {
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if serde_json::from_str::<Value>(body).is_ok() {
                    break;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status =
        text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

/// Posts to a session that does not exist get 404 with a JSON error; bodies over
/// `http.max_request_body` get 413 with a JSON error, whatever their size (announced or
/// chunked: never read beyond the limit).
#[tokio::test]
async fn emulation_refusals_are_clear() {
    let srv = Server::new();
    let http = http_client();
    let body = json!({"session": "no-such-session", "data": "{\"id\":1,\"ping\":{}}"}).to_string();
    let (status, error) = post_emulation(&http, &srv, body).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], 108, "{error}");
    let too_large = |(status, error): (u16, Value)| {
        assert_eq!(status, 413, "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("http.max_request_body"), "{error}");
    };
    // The first round warms the server up (buffers, allocator arenas); the others must not
    // grow it: the bodies are never held beyond the limit.
    let mut before = 0;
    for round in 0..3 {
        if round == 1 {
            before = srv.rss_kib();
        }
        for path in
            ["/emulation", "/connection/http_stream", "/connection/uni_http_stream", "/connection/sse"]
        {
            // 8 MB announced, 1 MB sent.
            let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", 8 << 20);
            too_large(raw_request(&srv, &head, (0..16).map(|_| vec![b'y'; 64 << 10])).await);
            // Chunked, 3 MB (over axum's own 2 MB default, whose answer is not JSON).
            let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = |_| {
                [format!("{:x}\r\n", 64 << 10).into_bytes(), vec![b'y'; 64 << 10], b"\r\n".to_vec()].concat()
            };
            too_large(raw_request(&srv, &head, (0..48).map(chunk)).await);
        }
    }
    let grown = srv.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "server RSS grew {grown} KiB after the first round");
}

// ---------------------------------------------------------------------------------------------
// Long polling
// ---------------------------------------------------------------------------------------------

/// A long poll of `user` on `channel` that waits up to `wait` seconds.
async fn long_poll(srv: &Server, user: &str, channel: &str, wait: u64) -> reqwest::Response {
    let url = srv.http_url(&format!("/api/poll?channel={channel}&since=0&wait={wait}"));
    http_client().get(url).bearer_auth(token(user)).send().await.expect("GET /api/poll")
}

/// Each waiting long poll holds a listener in the hub: one token holder may keep at most
/// `http.poll_max_waiters_per_user` of them waiting; more get 429 at once (naming the key),
/// other users are not affected, and a finished poll frees its place.
#[tokio::test]
async fn waiting_long_polls_per_user_are_bounded() {
    let mut builder = Server::builder();
    builder.extra_top = "\n[http]\npoll_max_waiters_per_user = 2\n".into();
    let srv = builder.start();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let url = srv.http_url(&format!("/api/poll?channel=wait{i}&since=0&wait=5"));
            tokio::spawn(http_client().get(url).bearer_auth(token("1")).send())
        })
        .collect();
    tokio::time::sleep(QUIET).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), long_poll(&srv, "1", "more", 3))
        .await
        .expect("a third waiting poll is answered at once");
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("http.poll_max_waiters_per_user"));
    // Another user is not affected; a poll that does not wait is not counted.
    let other = tokio::spawn(long_poll_owned(srv.http_url("/api/poll?channel=other&since=0&wait=5"), "2"));
    let quick = long_poll(&srv, "1", "wait0", 0).await;
    assert_eq!(quick.status(), 200);
    // A publication ends a wait, and frees its place.
    srv.api().publish("wait0", json!({"n": 1})).await;
    srv.api().publish("other", json!({"n": 1})).await;
    assert_eq!(waiting.into_iter().next().unwrap().await.unwrap().unwrap().status(), 200);
    assert_eq!(other.await.unwrap().status(), 200);
    let again = tokio::spawn(long_poll_owned(srv.http_url("/api/poll?channel=wait0&since=1&wait=5"), "1"));
    tokio::time::sleep(QUIET).await;
    srv.api().publish("wait0", json!({"n": 2})).await;
    assert_eq!(again.await.unwrap().status(), 200);
}

async fn long_poll_owned(url: String, user: &'static str) -> reqwest::Response {
    http_client().get(url).bearer_auth(token(user)).send().await.expect("GET /api/poll")
}

// ---------------------------------------------------------------------------------------------
// Clients that stop reading
// ---------------------------------------------------------------------------------------------

/// The number of subscribers of `channel`, from the server API.
async fn subscribers(srv: &Server, channel: &str) -> u64 {
    let r = srv.api().ok("presence_stats", json!({"channel": channel})).await;
    num(&r, "num_clients") as u64
}

/// A client that stops reading blocks its connection's writes; once its queue overflowed,
/// nothing more is queued, but the connection itself (its task, buffers, subscriptions) would
/// stay as long as the client keeps the TCP connection open. A write that does not complete
/// within `client.write_timeout` ends the connection.
#[tokio::test]
async fn a_write_stuck_on_a_client_that_does_not_read_times_out() {
    let srv = Server::builder().client("write_timeout", "\"1s\"").start();
    let mut fine = srv.user("2").await;
    // A WebSocket client and an http_stream session, neither reading.
    let mut slow = Client::open_small_rcvbuf(&srv.addr, &srv.ws_url(), 4096).await;
    slow.connect(&token("1")).await;
    slow.subscribe("firehose").await;
    let stream = http_stream(&srv, "3").await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": "firehose"}}).to_string();
    let (status, _) = post_emulation(
        &http_client(),
        &srv,
        json!({"session": stream.session, "data": subscribe}).to_string(),
    )
    .await;
    assert_eq!(status, 204);
    tokio::time::sleep(QUIET).await;
    assert_eq!(subscribers(&srv, "firehose").await, 2);

    // ~10 MB to the channel, one publication at a time: each is written at once until the
    // socket buffers are full (a few MB), then a write blocks and the queue overflows.
    let api = srv.api();
    let payload = "x".repeat(32 * 1024);
    for i in 0..320 {
        api.publish("firehose", json!({"i": i, "p": payload})).await;
    }
    // Both stuck connections are gone within the timeout (plus slack); the other client is
    // still served.
    let gone = eventually(Duration::from_secs(5), || async {
        (subscribers(&srv, "firehose").await == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "stuck connections still subscribed: {}", subscribers(&srv, "firehose").await);
    fine.ok("rpc", json!({"method": "echo", "data": {"still": "here"}})).await;
    drop(stream.response);
}

/// Emulation sessions are connections like any other: they count toward
/// `client.max_connections_per_user` (one more gets the disconnect 3504 on its stream), and
/// their posted commands toward `client.commands_per_second` (error 111 on the stream).
#[tokio::test]
async fn emulation_sessions_count_toward_the_per_user_limits() {
    let srv =
        Server::builder().client("max_connections_per_user", "2").client("commands_per_second", "5").start();
    let mut first = http_stream(&srv, "1").await;
    let _second = http_stream(&srv, "1").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let connect = json!({"id": 1, "connect": {"token": token("1")}}).to_string();
    let third = http.post(srv.http_url("/connection/http_stream")).body(connect).send().await.unwrap();
    let text = tokio::time::timeout(T, third.text()).await.expect("the third stream ends").unwrap();
    assert!(text.contains("\"disconnect\":{\"code\":3504"), "{text}");

    // 20 commands in one post, 5 allowed per second: the rest answered 111.
    let pings: Vec<String> = (10..30).map(|id| json!({"id": id, "ping": {}}).to_string()).collect();
    let body = json!({"session": first.session, "data": pings.join("\n")}).to_string();
    assert_eq!(post_emulation(&http_client(), &srv, body).await.0, 204);
    let mut got = String::new();
    while got.matches("\"id\":").count() < 20 {
        let chunk = tokio::time::timeout(T, first.response.chunk()).await.expect("replies").unwrap();
        got.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    assert!(got.matches("\"code\":111").count() >= 10, "{got}");
}
