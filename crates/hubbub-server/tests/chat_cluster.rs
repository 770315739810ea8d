//! The chat across real nodes: three `hubbub` processes on the machine's Redis (engine) and
//! PostgreSQL (store, a database of the test's own), members connected over WebSocket to
//! different nodes. Concurrent senders on different nodes: every member receives every
//! event of the room in seq order, with no gap and no repeat; a retry sent to another node is
//! stored once; presence, typing and unread notices cross nodes. Skips loudly without Redis
//! or PostgreSQL (fails under HUBBUB_REQUIRE_SERVICES=1).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

struct Nodes {
    servers: Vec<Server>,
    http: reqwest::Client,
    _db: hubbub_testservices::TempDatabase,
}

async fn nodes(n: usize) -> Option<Nodes> {
    let redis = hubbub_testservices::redis()?;
    let db = hubbub_testservices::postgres_database().await?;
    let prefix = hubbub_testservices::unique_prefix();
    let servers = (0..n)
        .map(|i| {
            Server::builder()
                .env("HUBBUB_NODE_NAME", &format!("n{i}"))
                .env("HUBBUB_ENGINE_TYPE", "redis")
                .env("HUBBUB_ENGINE_REDIS_URL", &redis)
                .env("HUBBUB_ENGINE_PREFIX", &prefix)
                .env("HUBBUB_STORE_TYPE", "postgres")
                .env("HUBBUB_STORE_POSTGRES_URL", db.url())
                .start()
        })
        .collect();
    Some(Nodes { servers, http: http_client(), _db: db })
}

struct Member {
    id: i64,
    name: String,
    access: String,
}

impl Nodes {
    async fn post(&self, node: usize, path: &str, token: Option<&str>, body: Value) -> Value {
        let mut request = self.http.post(self.servers[node].http_url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path} on node {node}: {status} {body}");
        body
    }

    async fn get(&self, node: usize, path: &str, token: &str) -> Value {
        let response =
            self.http.get(self.servers[node].http_url(path)).bearer_auth(token).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    async fn signup(&self, node: usize, name: &str) -> Member {
        let b =
            self.post(node, "/api/auth/signup", None, json!({"username": name, "password": PASSWORD})).await;
        Member {
            id: b["user"]["id"].as_i64().unwrap(),
            name: name.to_owned(),
            access: b["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A group of `owner` (created on node 0) with the others invited.
    async fn group(&self, owner: &Member, others: &[&Member]) -> i64 {
        let room = self.post(0, "/api/rooms", Some(&owner.access), json!({"name": "g"})).await["id"]
            .as_i64()
            .unwrap();
        for (i, m) in others.iter().enumerate() {
            let path = format!("/api/rooms/{room}/members");
            self.post(i % self.servers.len(), &path, Some(&owner.access), json!({"username": m.name})).await;
        }
        room
    }

    /// A WebSocket of `member` on node `node`, subscribed to `channels`; returns it with the
    /// offset each subscription starts after.
    async fn client(&self, node: usize, member: &Member, channels: &[&str]) -> (Client, Vec<u64>) {
        let mut c = self.servers[node].ws().await;
        c.connect(&member.access).await;
        let mut offsets = Vec::new();
        for channel in channels {
            let sub = c.subscribe(channel).await;
            assert!(sub.get("error").is_none(), "subscribe {channel}: {sub}");
            offsets.push(sub["offset"].as_u64().unwrap_or(0));
        }
        (c, offsets)
    }
}

async fn rpc_send(c: &mut Client, room: i64, text: &str, cmid: &str) -> Value {
    let r = c
        .call(
            "rpc",
            json!({"method": "chat.send", "data": {"room_id": room, "text": text, "client_msg_id": cmid}}),
        )
        .await;
    r["rpc"]["data"].clone()
}

/// The next `n` stored events (offset > 0) on `channel`, in the order they arrived.
async fn stored_events(c: &mut Client, channel: &str, n: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < n {
        let ch = channel.to_owned();
        let p = c
            .push_where(Duration::from_secs(10), move |p| {
                p["push"]["channel"] == ch.as_str() && p["push"]["pub"]["offset"].as_u64().unwrap_or(0) > 0
            })
            .await
            .unwrap_or_else(|| {
                panic!("{channel}: only {} of {n} stored events arrived: {offsets:?}", offsets.len())
            });
        offsets.push(p["push"]["pub"]["offset"].as_u64().unwrap());
    }
    offsets
}

/// The next publication on `channel` whose data has `type` = `ty` and satisfies `pred`.
async fn event(c: &mut Client, channel: &str, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let (ch, t) = (channel.to_owned(), ty.to_owned());
    c.push_where(Duration::from_secs(10), move |p| {
        p["push"]["channel"] == ch.as_str()
            && p["push"]["pub"]["data"]["type"] == t.as_str()
            && pred(&p["push"]["pub"])
    })
    .await
    .unwrap_or_else(|| panic!("no {ty} event on {channel}"))["push"]["pub"]
        .clone()
}

#[tokio::test]
async fn members_on_three_nodes_get_concurrent_senders_events_in_order() {
    let Some(nodes) = nodes(3).await else { return };
    let ann = nodes.signup(0, "ann").await;
    let bob = nodes.signup(1, "bob").await;
    let cat = nodes.signup(2, "cat").await;
    let room = nodes.group(&ann, &[&bob, &cat]).await;
    let channel = format!("room:{room}");
    let members = [&ann, &bob, &cat];
    assert_eq!(members.len(), nodes.servers.len());
    const EACH: usize = 40;
    // Everyone listens first, then all send at once.
    let mut listening = Vec::new();
    for (i, member) in members.iter().enumerate() {
        listening.push(nodes.client(i, member, &[&channel]).await);
    }
    let mut tasks = Vec::new();
    for (i, (mut c, offsets)) in listening.into_iter().enumerate() {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..EACH {
                let m = rpc_send(&mut c, room, &format!("{i}:{k}"), &format!("{i}-{k}")).await;
                assert!(m["seq"].as_u64().is_some(), "send {i}-{k}: {m}");
            }
            (offsets[0], stored_events(&mut c, &channel, 3 * EACH).await, c)
        }));
    }
    let mut clients = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (start, offsets, c) = task.await.unwrap();
        assert_eq!(
            offsets,
            (start + 1..=start + 3 * EACH as u64).collect::<Vec<_>>(),
            "member on node {i}: every event in seq order, no gap, no repeat"
        );
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let ch = channel.clone();
        let more = c
            .push_where(Duration::from_millis(300), move |p| {
                p["push"]["channel"] == ch.as_str() && p["push"]["pub"]["offset"].as_u64().unwrap_or(0) > 0
            })
            .await;
        assert!(more.is_none(), "node {i}: an event twice: {more:?}");
    }
}

#[tokio::test]
async fn retry_on_another_node_presence_typing_and_unread_across_nodes() {
    let Some(nodes) = nodes(3).await else { return };
    let ann = nodes.signup(0, "ann").await;
    let bob = nodes.signup(0, "bob").await;
    let room = nodes.group(&ann, &[&bob]).await;
    let channel = format!("room:{room}");
    let bob_channel = format!("user#{}", bob.id);
    // Bob listens on node 2, to the room and to his own channel.
    let (mut bob_ws, offsets) = nodes.client(2, &bob, &[&channel, &bob_channel]).await;

    // Ann comes online on node 0: Bob hears it on node 2, and node 1 reports her online.
    let (mut ann_ws, _) = nodes.client(0, &ann, &[&channel]).await;
    event(&mut bob_ws, &channel, "presence", |p| {
        p["data"]["user_id"] == ann.id && p["data"]["online"] == true
    })
    .await;
    let rooms = nodes.get(1, "/api/rooms", &bob.access).await;
    let member = rooms[0]["members"].as_array().unwrap().iter().find(|m| m["id"] == ann.id).unwrap().clone();
    assert_eq!(member["online"], true, "online on any node: {member}");

    // A send over REST on node 0, then its retry (same client_msg_id) on node 1: one message,
    // one event for Bob, and an unread count of 1 on his channel.
    let path = format!("/api/rooms/{room}/messages");
    let body = json!({"text": "hello", "client_msg_id": "once"});
    let first = nodes.post(0, &path, Some(&ann.access), body.clone()).await;
    let retry = nodes.post(1, &path, Some(&ann.access), body).await;
    assert_eq!(first["seq"], retry["seq"], "the retry is answered with the original");
    assert_eq!(stored_events(&mut bob_ws, &channel, 1).await, vec![offsets[0] + 1]);
    event(&mut bob_ws, &bob_channel, "message", |p| p["data"]["unread"] == 1).await;

    // Typing on node 0 reaches node 2; Bob's read receipt on node 2 reaches Ann on node 0.
    ann_ws.call("rpc", json!({"method": "chat.typing", "data": {"room_id": room}})).await;
    event(&mut bob_ws, &channel, "typing", |p| p["data"]["user_id"] == ann.id).await;
    let seq = first["seq"].as_u64().unwrap();
    let mark =
        bob_ws.call("rpc", json!({"method": "chat.mark", "data": {"room_id": room, "read_seq": seq}})).await;
    assert!(mark.get("error").is_none(), "{mark}");
    event(&mut ann_ws, &channel, "receipt", |p| p["data"]["user_id"] == bob.id).await;

    // Ann leaves (her only connection, on node 0): offline for Bob on node 2.
    drop(ann_ws);
    event(&mut bob_ws, &channel, "presence", |p| {
        p["data"]["user_id"] == ann.id && p["data"]["online"] == false
    })
    .await;
    let more = stored_events_within(&mut bob_ws, &channel, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "the retry's event came twice: {more:?}");
}

/// Stored events on `channel` arriving within `dur`.
async fn stored_events_within(c: &mut Client, channel: &str, dur: Duration) -> Vec<u64> {
    let ch = channel.to_owned();
    let mut got = Vec::new();
    while let Some(p) = c
        .push_where(dur, |p| {
            p["push"]["channel"] == ch.as_str() && p["push"]["pub"]["offset"].as_u64().unwrap_or(0) > 0
        })
        .await
    {
        got.push(p["push"]["pub"]["offset"].as_u64().unwrap());
    }
    got
}
