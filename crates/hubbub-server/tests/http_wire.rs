//! The HTTP/1.1 and WebSocket wire as clients may really use it: pipelined requests, and a
//! first WebSocket frame sent in the same write as the upgrade request. Raw TCP, so that
//! nothing between the test and the server smooths it over.
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(srv: &Server) -> TcpStream {
    TcpStream::connect(&srv.addr).await.expect("connect")
}

/// Reads until `done` says the bytes so far are complete, or fails after [`T`].
async fn read_until(tcp: &mut TcpStream, mut done: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while !done(&got) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out; got so far: {:?}", String::from_utf8_lossy(&got)))
            .expect("read");
        assert!(n > 0, "connection closed; got: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The payload of a complete unmasked server frame at the start of `frame` (7- or 16-bit
/// length), or `None` while it is incomplete.
fn frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let (len, start) = match *frame.get(1)? {
        126 => (u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize, 4),
        n if n < 126 => (n as usize, 2),
        n => panic!("unexpected length byte {n} (masked, or a 64-bit length)"),
    };
    frame.get(start..start + len)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Several publish requests written at once on one connection (HTTP/1.1 pipelining) are all
/// answered, in order, and published in order.
#[tokio::test]
async fn pipelined_publishes_are_answered_and_delivered_in_order() {
    let srv = Server::new();
    let mut sub = srv.user("1").await;
    sub.subscribe("pipe").await;

    let mut requests = String::new();
    for n in 0..5 {
        let body = json!({"channel": "pipe", "data": {"n": n}}).to_string();
        requests.push_str(&format!(
            "POST /api/publish HTTP/1.1\r\nHost: test\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let mut tcp = connect(&srv).await;
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let answers = read_until(&mut tcp, |got| count(got, b"{\"result\":") == 5).await;
    assert_eq!(count(&answers, b"HTTP/1.1 200 OK"), 5, "{}", String::from_utf8_lossy(&answers));

    for n in 0..5 {
        let push = sub
            .push_where(Duration::from_secs(5), |p| {
                p["push"]["channel"] == "pipe" && p["push"].get("pub").is_some()
            })
            .await
            .unwrap_or_else(|| panic!("publication {n} not delivered"));
        assert_eq!(push["push"]["pub"]["data"]["n"], n, "{push}");
    }
}

/// A client frame (masked, as clients must) in the same write as the upgrade request: hyper
/// reads it with the request, and the session still gets it.
#[tokio::test]
async fn websocket_frame_sent_with_the_upgrade_request_is_read() {
    let srv = Server::new();
    let command = json!({"id": 1, "connect": {"token": token("1")}}).to_string();
    let mut wire =
        b"GET /connection/websocket HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    wire.push(0x81); // FIN, text
    assert!(command.len() > 125 && command.len() < 65536);
    wire.push(0x80 | 126);
    wire.extend_from_slice(&(command.len() as u16).to_be_bytes());
    wire.extend_from_slice(&mask);
    wire.extend(command.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let mut tcp = connect(&srv).await;
    tcp.write_all(&wire).await.unwrap();
    let got = read_until(&mut tcp, |got| {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        frame_payload(&got[end + 4..]).is_some()
    })
    .await;
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..end]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "accept key of RFC 6455 §1.3: {head}");
    let frame = &got[end..];
    assert_eq!(frame[0], 0x81, "a text frame");
    let reply: Value = serde_json::from_slice(frame_payload(frame).unwrap()).expect("JSON reply");
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["client"].is_string(), "{reply}");
}
