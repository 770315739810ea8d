//! The protobuf protocol against the real server: raw Commands and Replies (our prost types)
//! over a real WebSocket (`cf_protocol=protobuf`, or the `centrifuge-protobuf`
//! subprotocol) and over HTTP streaming with `POST /emulation`, and what JSON clients see of
//! protobuf clients' payloads and the other way round.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub_protocol::protobuf::pb;
use hubbub_protocol::protobuf::prost::Message as _;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client speaking protobuf: Commands out as binary messages, Replies in.
struct PbClient {
    ws: Ws,
    next_id: u32,
    replies: Vec<pb::Reply>,
    pushes: VecDeque<pb::Push>,
    /// Close frame received: (code, reason).
    close: Option<(u16, String)>,
    /// Binary messages received, and the most Replies one carried.
    messages: usize,
    /// Server pings received (each answered).
    pings: usize,
    max_replies_per_message: usize,
}

impl PbClient {
    async fn open(srv: &Server) -> PbClient {
        PbClient::open_url(&format!("{}?cf_protocol=protobuf", srv.ws_url())).await
    }

    async fn open_url(url: &str) -> PbClient {
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        PbClient::from_ws(ws)
    }

    fn from_ws(ws: Ws) -> PbClient {
        PbClient {
            ws,
            next_id: 1,
            replies: Vec::new(),
            pushes: VecDeque::new(),
            close: None,
            messages: 0,
            pings: 0,
            max_replies_per_message: 0,
        }
    }

    /// Sends the commands in one binary message, giving each the next id (unless it is a
    /// pong or a `send`); returns their ids.
    async fn send(&mut self, mut commands: Vec<pb::Command>) -> Vec<u32> {
        let mut frame = Vec::new();
        let mut ids = Vec::new();
        for c in &mut commands {
            if c.send.is_none() && *c != pb::Command::default() {
                c.id = self.next_id;
                self.next_id += 1;
            }
            ids.push(c.id);
            frame.extend(c.encode_length_delimited_to_vec());
        }
        self.send_raw(Message::binary(frame)).await;
        ids
    }

    async fn send_raw(&mut self, message: Message) {
        let _ = tokio::time::timeout(T, self.ws.send(message)).await;
    }

    /// Reads one message; false on timeout or end.
    async fn pump(&mut self, deadline: Instant) -> bool {
        let rem = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(rem, self.ws.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                self.messages += 1;
                let mut buf = &bytes[..];
                let mut n = 0;
                while !buf.is_empty() {
                    let reply = pb::Reply::decode_length_delimited(&mut buf)
                        .unwrap_or_else(|e| panic!("server sent a bad protobuf reply: {e}"));
                    n += 1;
                    if reply == pb::Reply::default() {
                        // A ping: answer with an empty command.
                        self.pings += 1;
                        self.send(vec![pb::Command::default()]).await;
                    } else if reply.id > 0 {
                        self.replies.push(reply);
                    } else if let Some(push) = reply.push {
                        self.pushes.push_back(push);
                    }
                }
                self.max_replies_per_message = self.max_replies_per_message.max(n);
                true
            }
            Ok(Some(Ok(Message::Text(t)))) => panic!("text message on a protobuf connection: {t}"),
            Ok(Some(Ok(Message::Close(f)))) => {
                self.close =
                    Some(f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
                true
            }
            Ok(Some(Ok(_))) => true,
            _ => false,
        }
    }

    async fn reply(&mut self, id: u32) -> pb::Reply {
        let deadline = Instant::now() + T;
        loop {
            if let Some(i) = self.replies.iter().position(|r| r.id == id) {
                return self.replies.remove(i);
            }
            assert!(self.pump(deadline).await, "no reply {id} (close: {:?})", self.close);
        }
    }

    async fn call(&mut self, command: pb::Command) -> pb::Reply {
        let id = self.send(vec![command]).await[0];
        self.reply(id).await
    }

    /// A reply that is not an error.
    async fn ok(&mut self, command: pb::Command) -> pb::Reply {
        let reply = self.call(command).await;
        assert!(reply.error.is_none(), "error reply: {:?}", reply.error);
        reply
    }

    async fn error(&mut self, command: pb::Command) -> u32 {
        self.call(command).await.error.expect("an error reply").code
    }

    async fn connect(&mut self, token: &str) -> pb::ConnectResult {
        let c = pb::Command {
            connect: Some(pb::ConnectRequest { token: token.into(), ..Default::default() }),
            ..Default::default()
        };
        self.ok(c).await.connect.expect("connect result")
    }

    async fn subscribe(&mut self, channel: &str) -> pb::SubscribeResult {
        let c = pb::Command {
            subscribe: Some(pb::SubscribeRequest { channel: channel.into(), ..Default::default() }),
            ..Default::default()
        };
        self.ok(c).await.subscribe.expect("subscribe result")
    }

    async fn publish(&mut self, channel: &str, data: &[u8]) {
        self.ok(publish(channel, data)).await;
    }

    async fn next_push(&mut self, channel: &str) -> pb::Push {
        let deadline = Instant::now() + T;
        loop {
            if let Some(i) = self.pushes.iter().position(|p| p.channel == channel) {
                return self.pushes.remove(i).unwrap();
            }
            assert!(self.pump(deadline).await, "no push on {channel} (close: {:?})", self.close);
        }
    }

    /// The next publication pushed on `channel` (joins and leaves skipped).
    async fn next_pub(&mut self, channel: &str) -> pb::Publication {
        loop {
            if let Some(p) = self.next_push(channel).await.r#pub {
                return p;
            }
        }
    }

    async fn wait_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + T;
        while self.close.is_none() {
            assert!(self.pump(deadline).await, "connection not closed");
        }
        self.close.clone().unwrap()
    }
}

fn publish(channel: &str, data: &[u8]) -> pb::Command {
    pb::Command {
        publish: Some(pb::PublishRequest {
            channel: channel.into(),
            data: data.to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Bytes that are not JSON (and not UTF-8).
const BINARY: &[u8] = &[0, 1, 2, 0xfe, 0xff, b'\n', b'{'];

#[tokio::test]
async fn commands_replies_and_pushes_over_a_binary_websocket() {
    let srv = Server::new();
    let mut alice = PbClient::open(&srv).await;
    let connect = alice.connect(&token("alice")).await;
    assert!(is_uuid(&connect.client), "client id: {connect:?}");
    assert!(connect.ping > 0 && connect.pong);
    let sub = alice.subscribe("chat:pb").await;
    assert!(sub.recoverable && sub.positioned, "chat namespace forces recovery: {sub:?}");

    // A non-JSON payload goes out and comes back byte for byte, with the publisher's info.
    alice.publish("chat:pb", BINARY).await;
    let publication = alice.next_pub("chat:pb").await;
    assert_eq!(&publication.data[..], BINARY);
    assert_eq!(publication.offset, sub.offset + 1);
    assert_eq!(publication.info.as_ref().map(|i| i.user.as_str()), Some("alice"));

    // History carries the same bytes.
    let history = alice
        .ok(pb::Command {
            history: Some(pb::HistoryRequest { channel: "chat:pb".into(), limit: 10, ..Default::default() }),
            ..Default::default()
        })
        .await
        .history
        .unwrap();
    assert_eq!(history.publications.len(), 1);
    assert_eq!(&history.publications[0].data[..], BINARY);
    assert_eq!(history.epoch, sub.epoch);

    // Presence and its stats.
    let presence = alice
        .ok(pb::Command {
            presence: Some(pb::PresenceRequest { channel: "chat:pb".into() }),
            ..Default::default()
        })
        .await
        .presence
        .unwrap();
    assert_eq!(presence.presence[&connect.client].user, "alice");
    let stats = alice
        .ok(pb::Command {
            presence_stats: Some(pb::PresenceStatsRequest { channel: "chat:pb".into() }),
            ..Default::default()
        })
        .await
        .presence_stats
        .unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    // RPC: the built-in echo returns the bytes it was given.
    let rpc = alice
        .ok(pb::Command {
            rpc: Some(pb::RpcRequest { method: "echo".into(), data: BINARY.to_vec().into() }),
            ..Default::default()
        })
        .await
        .rpc
        .unwrap();
    assert_eq!(&rpc.data[..], BINARY);

    // Ping, and the errors JSON gives.
    assert!(alice
        .ok(pb::Command { ping: Some(pb::PingRequest {}), ..Default::default() })
        .await
        .ping
        .is_some());
    let unknown = pb::Command {
        rpc: Some(pb::RpcRequest { method: "nope".into(), ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(alice.error(unknown).await, 104);
    assert_eq!(alice.error(publish("nopub:x", b"1")).await, 103, "publish refused by the namespace");
    assert_eq!(alice.error(publish("chat:pb", b"")).await, 107, "a publish without data");
    let again = pb::Command {
        subscribe: Some(pb::SubscribeRequest { channel: "chat:pb".into(), ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(alice.error(again).await, 105);
    let unsub = pb::Command {
        unsubscribe: Some(pb::UnsubscribeRequest { channel: "chat:pb".into() }),
        ..Default::default()
    };
    assert!(alice.ok(unsub).await.unsubscribe.is_some());
}

#[tokio::test]
async fn batched_commands_get_replies_in_order() {
    let srv = Server::new();
    let mut c = PbClient::open(&srv).await;
    c.connect(&token("u1")).await;
    let ping = || pb::Command { ping: Some(pb::PingRequest {}), ..Default::default() };
    let subscribe = pb::Command {
        subscribe: Some(pb::SubscribeRequest { channel: "news".into(), ..Default::default() }),
        ..Default::default()
    };
    let ids = c.send(vec![subscribe, ping(), publish("news", b"[1]"), ping()]).await;
    for id in ids {
        c.reply(id).await;
    }
    assert_eq!(&c.next_pub("news").await.data[..], b"[1]");
}

#[tokio::test]
async fn json_and_protobuf_subscribers_share_a_channel() {
    let srv = Server::new();
    let mut pb_sub = PbClient::open(&srv).await;
    pb_sub.connect(&token("p")).await;
    pb_sub.subscribe("news").await;
    let mut json_sub = srv.user("j").await;
    json_sub.subscribe_with(json!({"channel": "news", "join_leave": true})).await;

    // A protobuf client publishes JSON bytes: JSON subscribers get the value itself.
    pb_sub.publish("news", br#"{"text": "hi"}"#).await;
    let push = json_sub.expect_push("news", "pub").await;
    assert_eq!(push["data"], json!({"text": "hi"}));
    assert_eq!(&pb_sub.next_pub("news").await.data[..], br#"{"text": "hi"}"#);

    // Non-JSON bytes: JSON subscribers get base64 in a string, flagged; protobuf ones the bytes.
    pb_sub.publish("news", BINARY).await;
    let push = json_sub.expect_push("news", "pub").await;
    assert_eq!(push["data"], json!("AAEC/v8Kew=="));
    assert_eq!(push["data_binary"], json!(true));
    assert_eq!(&pb_sub.next_pub("news").await.data[..], BINARY);

    // A JSON client's and the server API's data reach protobuf subscribers as their exact text.
    json_sub.publish("news", json!({"from": "json"})).await;
    assert_eq!(&pb_sub.next_pub("news").await.data[..], br#"{"from":"json"}"#);
    srv.api().publish("news", json!([1, 2])).await;
    assert_eq!(&pb_sub.next_pub("news").await.data[..], b"[1,2]");

    // History read by a JSON client shows the binary publication the same way.
    let history = json_sub.ok("history", json!({"channel": "news", "limit": 10})).await;
    let pubs = arr(&history, "publications");
    assert_eq!(pubs.len(), 4);
    assert_eq!(pubs[1]["data"], json!("AAEC/v8Kew=="));
    // Joins and leaves reach both kinds of subscriber.
    let mut late = PbClient::open(&srv).await;
    late.connect(&token("late")).await;
    let join = pb::Command {
        subscribe: Some(pb::SubscribeRequest {
            channel: "news".into(),
            join_leave: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    late.ok(join).await;
    json_sub.expect_presence_push("news", "join", "late").await;
}

#[tokio::test]
async fn the_subprotocol_selects_protobuf() {
    let srv = Server::new();
    let mut request = srv.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "centrifuge-protobuf".parse().unwrap());
    let (ws, response) =
        tokio::time::timeout(T, tokio_tungstenite::connect_async(request)).await.unwrap().unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "centrifuge-protobuf");
    let mut c = PbClient::from_ws(ws);
    c.connect(&token("sp")).await;
    c.subscribe("news").await;
    c.publish("news", BINARY).await;
    assert_eq!(&c.next_pub("news").await.data[..], BINARY);
}

#[tokio::test]
async fn bad_frames_and_unknown_protocols_are_refused() {
    let srv = Server::new();
    // Garbage: a length that runs past the end of the message.
    let mut c = PbClient::open(&srv).await;
    c.connect(&token("b")).await;
    c.send_raw(Message::binary(vec![0x0a, 0x05, 0x01])).await;
    assert_eq!(c.wait_close().await, (3501, "bad request".into()));
    // A text message on a protobuf connection.
    let mut c = PbClient::open(&srv).await;
    c.send_raw(Message::text(r#"{"id":1,"connect":{}}"#)).await;
    assert_eq!(c.wait_close().await.0, 3501);
    // Two methods in one command, as in JSON.
    let mut c = PbClient::open(&srv).await;
    c.connect(&token("b")).await;
    c.send(vec![pb::Command {
        ping: Some(pb::PingRequest {}),
        presence: Some(pb::PresenceRequest { channel: "news".into() }),
        ..Default::default()
    }])
    .await;
    assert_eq!(c.wait_close().await.0, 3501);
    // A binary message on a JSON connection.
    let mut j = srv.ws().await;
    j.send_binary(pb::Command::default().encode_length_delimited_to_vec()).await;
    assert_eq!(j.expect_close(3501, T).await, "bad request");
    // An unknown protocol: 400 with a JSON body, before any upgrade.
    let err =
        tokio_tungstenite::connect_async(format!("{}?cf_protocol=xml", srv.ws_url())).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("not an HTTP error: {err}")
    };
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("cf_protocol"), "{body}");
    // Other connections go on.
    let mut ok = PbClient::open(&srv).await;
    ok.connect(&token("fine")).await;
}

#[tokio::test]
async fn server_pings_are_empty_replies_and_pongs_empty_commands() {
    let srv = Server::builder().client("ping_interval", "\"1s\"").client("pong_timeout", "\"500ms\"").start();
    let mut c = PbClient::open(&srv).await;
    c.connect(&token("pinger")).await;
    // The client answers every ping (see `pump`): still open after several intervals.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        c.pump(until).await;
    }
    assert!(c.close.is_none(), "closed: {:?}", c.close);
    assert!(c.pings >= 2, "pings: {}", c.pings);
}

/// Reads the next length-delimited Replies from an HTTP stream into `buf` until `want` says
/// one is there.
async fn stream_reply(
    response: &mut reqwest::Response,
    buf: &mut Vec<u8>,
    want: impl Fn(&pb::Reply) -> bool,
) -> pb::Reply {
    let deadline = Instant::now() + T;
    loop {
        let mut slice = &buf[..];
        while let Ok(reply) = pb::Reply::decode_length_delimited(&mut slice) {
            let used = buf.len() - slice.len();
            buf.drain(..used);
            slice = &buf[..];
            if want(&reply) {
                return reply;
            }
        }
        let rem = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(rem, response.chunk()).await.expect("reply in time").unwrap();
        buf.extend_from_slice(&chunk.expect("stream still open"));
    }
}

#[tokio::test]
async fn http_streaming_with_protobuf_emulation() {
    let srv = Server::new();
    let http = http_client();
    let connect = pb::Command {
        id: 1,
        connect: Some(pb::ConnectRequest { token: token("streamer"), ..Default::default() }),
        ..Default::default()
    };
    let mut response = http
        .post(srv.http_url("/connection/http_stream"))
        .header("content-type", "application/octet-stream")
        .body(connect.encode_length_delimited_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let mut buf = Vec::new();
    let reply = stream_reply(&mut response, &mut buf, |r| r.id == 1).await;
    let result = reply.connect.expect("connect result");
    assert!(!result.session.is_empty());

    let post = |commands: Vec<pb::Command>| {
        let data: Vec<u8> = commands.iter().flat_map(|c| c.encode_length_delimited_to_vec()).collect();
        let request = pb::EmulationRequest {
            node: result.node.clone(),
            session: result.session.clone(),
            data: data.into(),
        };
        http.post(srv.http_url("/emulation"))
            .header("content-type", "application/octet-stream")
            .body(request.encode_to_vec())
            .send()
    };
    let subscribe = pb::Command {
        id: 2,
        subscribe: Some(pb::SubscribeRequest { channel: "news".into(), ..Default::default() }),
        ..Default::default()
    };
    let mut publish = publish("news", BINARY);
    publish.id = 3;
    assert_eq!(post(vec![subscribe, publish]).await.unwrap().status(), 204);
    assert!(stream_reply(&mut response, &mut buf, |r| r.id == 2).await.subscribe.is_some());
    let push =
        stream_reply(&mut response, &mut buf, |r| r.push.as_ref().is_some_and(|p| p.r#pub.is_some())).await;
    assert_eq!(&push.push.unwrap().r#pub.unwrap().data[..], BINARY);

    // A malformed protobuf emulation body: 400 with a JSON error.
    let bad = http
        .post(srv.http_url("/emulation"))
        .header("content-type", "application/octet-stream")
        .body(vec![0x12, 0x40])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("emulation request"), "{body}");

    // Garbage commands inside a well-formed request: the session ends with a disconnect push.
    let request = pb::EmulationRequest {
        node: result.node.clone(),
        session: result.session.clone(),
        data: vec![0x0a, 0x09].into(),
    };
    let status = http
        .post(srv.http_url("/emulation"))
        .header("content-type", "application/octet-stream")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let disconnect =
        stream_reply(&mut response, &mut buf, |r| r.push.as_ref().is_some_and(|p| p.disconnect.is_some()))
            .await;
    assert_eq!(disconnect.push.unwrap().disconnect.unwrap().code, 3501);
}
