//! A cluster loses nothing when a part of it dies (issue 11, "a node dies").
//!
//! Three real `hubbub` processes share an engine (Redis, then NATS) and a PostgreSQL database.
//! Chat users are connected to different nodes and send concurrently over their connections
//! (`chat.send` RPC, each send with its own `client_msg_id`, one at a time per user, so an
//! acknowledgement means "stored"). In the middle of the load:
//! * `kill9_*`: one node is killed with SIGKILL. Its users reconnect to another node (the test
//!   plays the load balancer: the next node that answers), re-subscribe with recovery from the
//!   last offset they saw, and retry the send that was not acknowledged with the same
//!   `client_msg_id`. The dead node's presence entries must be gone within
//!   `engine.presence_ttl`.
//! * `broker_restart_*`: the test's own `redis-server` / `nats-server` (never the machine's
//!   shared one) is killed and started again; nodes must ride it out and every client must
//!   end up in sync (recovered, gap filled, or told to reconnect and then recovered).
//!
//! At the end every room is read back: every acknowledged message present exactly once, in
//! its sender's order, nothing that was never sent, and every user has seen every room's
//! events exactly once in offset order, with no gap.
mod common;

use common::cluster::{Cluster, EngineKind};
use common::{http_client, API_KEY};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery";
/// Users (each one connection); user `i` starts on node `i % nodes`.
const USERS: usize = 6;
const ROOMS: usize = 2;
/// Messages each user sends, alternating rooms.
const SENDS: usize = 30;
/// How long one RPC may take before the connection is taken as dead.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a user may spend finding a node that answers.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// How long one message may take to be acknowledged, retries included.
const SEND_FOR: Duration = Duration::from_secs(90);
/// `engine.heartbeat_interval` and `engine.presence_ttl` of the nodes: short, so that the
/// test sees a dead node's presence entries expire.
const HEARTBEAT: Duration = Duration::from_millis(500);
const PRESENCE_TTL: Duration = Duration::from_secs(3);

type Registry = Arc<std::sync::Mutex<Vec<(usize, String)>>>;
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ---------------------------------------------------------------------------------------------
// REST helpers
// ---------------------------------------------------------------------------------------------

async fn rest(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = http_client().request(m, format!("http://{addr}{path}")).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        rb = rb.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn rest_ok(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    let (status, v) = rest(addr, method, path, token, body).await;
    assert!((200..300).contains(&status), "{method} {path} on {addr} → {status} {v}");
    v
}

/// `POST /api/<method>` of the server API.
async fn rest_api(addr: &str, method: &str, body: Value) -> (u16, Value) {
    let resp = http_client()
        .post(format!("http://{addr}/api/{method}"))
        .header("X-API-Key", API_KEY)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("api {method} on {addr}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

struct User {
    id: i64,
    name: String,
    token: String,
}

async fn signup(addr: &str, name: &str) -> User {
    let b = rest_ok(
        addr,
        "POST",
        "/api/auth/signup",
        None,
        Some(json!({"username": name, "password": PASSWORD})),
    )
    .await;
    User {
        id: b["user"]["id"].as_i64().unwrap(),
        name: name.to_string(),
        token: b["access_token"].as_str().unwrap().to_string(),
    }
}

/// Every message of a room, oldest first (paged with `after`).
async fn read_room(addr: &str, token: &str, room: i64) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let page = rest_ok(
            addr,
            "GET",
            &format!("/api/rooms/{room}/messages?after={after}&limit=200"),
            Some(token),
            None,
        )
        .await;
        let items =
            page.as_array().cloned().or_else(|| page["messages"].as_array().cloned()).unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        let mut items = items;
        items.sort_by_key(|m| m["seq"].as_i64().unwrap_or(0));
        after = items.last().unwrap()["seq"].as_i64().unwrap();
        out.extend(items);
    }
}

// ---------------------------------------------------------------------------------------------
// A user's device: one connection that survives node deaths
// ---------------------------------------------------------------------------------------------

/// Why a connection is no longer usable.
#[derive(Debug)]
struct Dropped(String);

/// What a device knows of one room's stream.
#[derive(Default, Debug)]
struct RoomView {
    epoch: String,
    /// Last offset delivered (by a subscribe reply or a push).
    offset: i64,
    /// Offset the device started from (its first subscribe).
    start: i64,
}

/// A user's one connection: connects to a node, reconnects to the next one that answers when
/// its node goes away, re-subscribes with recovery, and checks every room offset it receives
/// (each exactly once, in order, no gap; violations are collected, not panicked, so the test
/// reports all of them with context).
struct Device {
    name: String,
    token: String,
    addrs: Vec<String>,
    node: usize,
    ws: Option<Ws>,
    /// Lines received and not handled yet (see [`Device::read`]).
    inbox: std::collections::VecDeque<Value>,
    next_id: u64,
    rooms: BTreeMap<i64, RoomView>,
    /// `(node, client id)` of every connection this device had.
    clients: Vec<(usize, String)>,
    reconnects: usize,
    /// Every device's `(node, client id)`, shared: the presence check needs the dead node's.
    registry: Registry,
    /// Subscribe replies that said `recovered: false` (a room's stream must always recover).
    violations: Vec<String>,
    log: Vec<String>,
    started: Instant,
}

impl Device {
    fn new(
        name: &str,
        token: &str,
        addrs: Vec<String>,
        node: usize,
        rooms: &[i64],
        registry: Registry,
    ) -> Device {
        Device {
            name: name.into(),
            token: token.into(),
            addrs,
            node,
            ws: None,
            inbox: Default::default(),
            next_id: 0,
            rooms: rooms
                .iter()
                .map(|&r| (r, RoomView { offset: -1, start: -1, ..Default::default() }))
                .collect(),
            clients: Vec::new(),
            reconnects: 0,
            registry,
            violations: Vec::new(),
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    fn note(&mut self, what: String) {
        let ms = self.started.elapsed().as_millis();
        self.log.push(format!("{ms:>6}ms {what}"));
    }

    fn violation(&mut self, what: String) {
        self.note(format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    async fn write(&mut self, text: String) -> Result<(), Dropped> {
        let ws = self.ws.as_mut().ok_or_else(|| Dropped("not connected".into()))?;
        match tokio::time::timeout(Duration::from_secs(5), ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Dropped(format!("write: {e}"))),
            Err(_) => Err(Dropped("write timed out".into())),
        }
    }

    /// Handles what arrives, in order (pings answered, pushes checked), until a reply comes
    /// (returned) or `deadline` passes (`None`). A frame may carry a reply and then pushes:
    /// the lines after the reply wait in `inbox`, so the reply is applied before them.
    async fn read(&mut self, deadline: Instant) -> Result<Option<Value>, Dropped> {
        loop {
            while let Some(v) = self.inbox.pop_front() {
                if v.as_object().is_some_and(|o| o.is_empty()) {
                    self.write("{}".into()).await?;
                } else if let Some(push) = v.get("push") {
                    self.on_push(push);
                } else {
                    return Ok(Some(v));
                }
            }
            let ws = self.ws.as_mut().ok_or_else(|| Dropped("not connected".into()))?;
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, ws.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(Dropped("connection ended".into())),
                Ok(Some(Err(e))) => return Err(Dropped(format!("read: {e}"))),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    for line in t.as_str().split('\n').map(str::trim).filter(|l| !l.is_empty()) {
                        let v: Value = serde_json::from_str(line)
                            .map_err(|e| Dropped(format!("not JSON ({e}): {line}")))?;
                        self.inbox.push_back(v);
                    }
                }
                Message::Close(f) => return Err(Dropped(format!("closed by the server: {f:?}"))),
                _ => {}
            }
        }
    }

    /// A room publication with an offset must be the next one; offset 0 (typing, receipts,
    /// presence) is ephemeral and not checked.
    fn deliver(&mut self, room: i64, offset: i64, how: &str) {
        let Some(view) = self.rooms.get_mut(&room) else { return };
        if offset == 0 {
            return;
        }
        let expected = view.offset + 1;
        if offset == expected {
            view.offset = offset;
        } else if offset < expected {
            self.violation(format!(
                "room {room}: offset {offset} delivered again ({how}; had {})",
                expected - 1
            ));
        } else {
            self.violation(format!("room {room}: gap, got offset {offset} after {} ({how})", expected - 1));
            if let Some(view) = self.rooms.get_mut(&room) {
                view.offset = offset;
            }
        }
    }

    fn on_push(&mut self, push: &Value) {
        let Some(room) =
            push["channel"].as_str().and_then(|c| c.strip_prefix("room:")).and_then(|r| r.parse().ok())
        else {
            return;
        };
        if let Some(publication) = push.get("pub") {
            let offset = publication["offset"].as_i64().unwrap_or(0);
            self.deliver(room, offset, "push");
        } else if push.get("unsubscribe").is_some() {
            // The server dropped this subscription: reconnecting subscribes again.
            self.note(format!("room {room}: unsubscribe push {push}"));
            self.ws = None;
        }
    }

    /// Sends a command and waits for its reply.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, Dropped> {
        self.next_id += 1;
        let id = self.next_id;
        self.write(json!({ "id": id, method: params }).to_string()).await?;
        let deadline = Instant::now() + RPC_TIMEOUT;
        loop {
            if Instant::now() >= deadline {
                return Err(Dropped(format!("no reply to {method} within {RPC_TIMEOUT:?}")));
            }
            if let Some(r) = self.read(deadline).await? {
                if r["id"].as_u64() == Some(id) {
                    return Ok(r);
                }
            }
        }
    }

    /// Connects to this node or the next ones that answer (the load balancer's job), then
    /// subscribes to every room, recovering from the last offset seen.
    async fn reconnect(&mut self) {
        let until = Instant::now() + RECONNECT_FOR;
        let mut attempt = 0;
        loop {
            match self.try_connect(self.node).await {
                Ok(()) => return,
                Err(Dropped(why)) => {
                    self.note(format!("node {} refused: {why}", self.node));
                    self.ws = None;
                    self.node = (self.node + 1) % self.addrs.len();
                    attempt += 1;
                    assert!(
                        Instant::now() < until,
                        "{}: no node accepted a connection within {RECONNECT_FOR:?}; log:\n{}",
                        self.name,
                        self.log.join("\n")
                    );
                    if attempt % self.addrs.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    async fn try_connect(&mut self, node: usize) -> Result<(), Dropped> {
        let url = format!("ws://{}/connection/websocket", self.addrs[node]);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Dropped("connect timed out".into()))?
            .map_err(|e| Dropped(format!("connect: {e}")))?;
        self.ws = Some(ws);
        let r = self.call("connect", json!({ "token": self.token, "name": "failover-test" })).await?;
        let client = r["connect"]["client"]
            .as_str()
            .ok_or_else(|| Dropped(format!("connect refused: {r}")))?
            .to_string();
        self.note(format!("connected to node {node} as {client}"));
        self.clients.push((node, client.clone()));
        self.registry.lock().unwrap().push((node, client));
        // A channel with presence: the presence check looks for this connection in it.
        let r = self.call("subscribe", json!({ "channel": "lobby" })).await?;
        if r.get("error").is_some() {
            return Err(Dropped(format!("subscribe lobby: {r}")));
        }
        let rooms: Vec<i64> = self.rooms.keys().copied().collect();
        for room in rooms {
            let view = &self.rooms[&room];
            let first = view.offset < 0;
            let params = if first {
                json!({ "channel": format!("room:{room}") })
            } else {
                json!({ "channel": format!("room:{room}"), "recover": true, "epoch": view.epoch, "offset": view.offset })
            };
            let r = self.call("subscribe", params).await?;
            let Some(res) = r.get("subscribe") else {
                return Err(Dropped(format!("subscribe room:{room}: {r}")));
            };
            let epoch = res["epoch"].as_str().unwrap_or_default().to_string();
            if first {
                let offset = res["offset"].as_i64().unwrap_or(0);
                let view = self.rooms.get_mut(&room).unwrap();
                (view.epoch, view.offset, view.start) = (epoch, offset, offset);
                continue;
            }
            if res["recovered"].as_bool() != Some(true) {
                self.violation(format!(
                    "room {room}: not recovered after reconnecting to node {node}: {res}"
                ));
            }
            let publications = res["publications"].as_array().cloned().unwrap_or_default();
            let n = publications.len();
            for p in publications {
                self.deliver(room, p["offset"].as_i64().unwrap_or(0), "recovery");
            }
            // A backlog larger than one answer continues as pushes (all deliveries are checked).
            let view = self.rooms.get_mut(&room).unwrap();
            view.epoch = epoch;
            let at = view.offset;
            self.note(format!("room {room}: recovered {n} publications, at {at}"));
        }
        Ok(())
    }

    /// `chat.send` until acknowledged, reconnecting and retrying with the same `client_msg_id`
    /// whenever the connection dies first. Returns the stored message.
    async fn send(&mut self, room: i64, text: &str, cmid: &str) -> Value {
        let until = Instant::now() + SEND_FOR;
        loop {
            assert!(
                Instant::now() < until,
                "{}: {cmid} not acknowledged within {SEND_FOR:?}; log:\n{}",
                self.name,
                self.log.join("\n")
            );
            if self.ws.is_none() {
                self.reconnects += 1;
                self.node = (self.node + 1) % self.addrs.len();
                self.reconnect().await;
            }
            let data = json!({ "room_id": room, "text": text, "client_msg_id": cmid });
            match self.call("rpc", json!({ "method": "chat.send", "data": data })).await {
                Ok(r) => {
                    if let Some(m) = r.get("rpc").map(|x| &x["data"]) {
                        return m.clone();
                    }
                    // A node that lost its store or broker answers with an error: retry.
                    self.note(format!("send {cmid} answered {r}; retrying"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Dropped(why)) => {
                    self.note(format!("send {cmid} not acknowledged ({why}); reconnecting to retry"));
                    self.ws = None;
                }
            }
        }
    }

    /// Reads until every room reached `targets` (its last seq), reconnecting when needed.
    async fn sync_to(&mut self, targets: &BTreeMap<i64, i64>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if targets.iter().all(|(r, &t)| self.rooms[r].offset >= t) {
                return true;
            }
            if self.ws.is_none() {
                self.reconnects += 1;
                self.node = (self.node + 1) % self.addrs.len();
                self.reconnect().await;
                continue;
            }
            let step = (Instant::now() + Duration::from_millis(500)).min(deadline);
            if let Err(Dropped(why)) = self.read(step).await {
                self.note(format!("dropped while syncing: {why}"));
                self.ws = None;
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// What happens in the middle of the load.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL this node.
    Kill(usize),
    /// Kill the test's own broker, wait this long, start it again.
    BrokerRestart(Duration),
}

/// What one sender did: every message acknowledged, in send order: (room, cmid, seq).
struct Sent {
    acked: Vec<(i64, String, i64)>,
}

async fn scenario(cluster: &mut Cluster, mut broker: Option<&mut OwnBroker>, fault: Fault) {
    let addrs: Vec<String> = cluster.running().map(|(_, s)| s.addr.clone()).collect();
    let nodes = addrs.len();
    let t0 = Instant::now();

    // Users and rooms: everyone in every room; signed up on different nodes.
    let tag = &cluster.prefix[1..7];
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(signup(&addrs[i % nodes], &format!("u{i}_{tag}")).await);
    }
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = rest_ok(
            &addrs[r % nodes],
            "POST",
            "/api/rooms",
            Some(&users[0].token),
            Some(json!({"name": format!("room {r}")})),
        )
        .await;
        let id = room["id"]
            .as_i64()
            .or_else(|| room["room"]["id"].as_i64())
            .unwrap_or_else(|| panic!("room id in {room}"));
        for u in &users[1..] {
            rest_ok(
                &addrs[(r + 1) % nodes],
                "POST",
                &format!("/api/rooms/{id}/members"),
                Some(&users[0].token),
                Some(json!({"username": u.name})),
            )
            .await;
        }
        rooms.push(id);
    }
    eprintln!("setup: {USERS} users, rooms {rooms:?}, {:?}", t0.elapsed());

    // Devices: user i on node i % nodes, subscribed to every room.
    let acks = Arc::new(AtomicUsize::new(0));
    let registry: Registry = Arc::default();
    let (go_tx, go_rx) = watch::channel(None::<BTreeMap<i64, i64>>);
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut d = Device::new(&u.name, &u.token, addrs.clone(), i % nodes, &rooms, registry.clone());
        let acks = acks.clone();
        let mut go_rx = go_rx.clone();
        let rooms = rooms.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        let user_id = u.id;
        tasks.push(tokio::spawn(async move {
            d.reconnect().await;
            let _ = ready_tx.send(());
            let mut sent = Sent { acked: Vec::new() };
            for k in 0..SENDS {
                let room = rooms[k % rooms.len()];
                let cmid = format!("{user_id}-{k}");
                let m = d.send(room, &format!("message {k} from {}", d.name), &cmid).await;
                let seq = m["seq"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{}: acknowledged message without seq: {m}", d.name));
                assert_eq!(
                    m["client_msg_id"].as_str(),
                    Some(cmid.as_str()),
                    "{}: the ack is of another message: {m}",
                    d.name
                );
                sent.acked.push((room, cmid, seq));
                acks.fetch_add(1, Ordering::SeqCst);
            }
            // Wait for the test to say how far every room goes, then catch up to it.
            let targets = loop {
                if let Some(t) = go_rx.borrow().clone() {
                    break t;
                }
                // Keep reading (pings, pushes) while waiting, on whatever node.
                if d.ws.is_none() {
                    d.reconnect().await;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), go_rx.changed()).await;
                if d.ws.is_some() {
                    if let Err(Dropped(why)) = d.read(Instant::now() + Duration::from_millis(50)).await {
                        d.note(format!("dropped while waiting: {why}"));
                        d.ws = None;
                    }
                }
            };
            let synced = d.sync_to(&targets, Duration::from_secs(30)).await;
            (d, sent, synced)
        }));
    }
    for r in ready {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("devices connect")
            .expect("device task alive");
    }
    eprintln!("devices connected, load starts, {:?}", t0.elapsed());

    // The fault, a third of the way through the load.
    let total = USERS * SENDS;
    let wait_until = Instant::now() + Duration::from_secs(120);
    while acks.load(Ordering::SeqCst) < total / 3 {
        assert!(Instant::now() < wait_until, "the load did not reach a third within 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = acks.load(Ordering::SeqCst);
    let mut killed_at = None;
    match fault {
        Fault::Kill(i) => {
            // The presence entries of the node about to die: its connections in `lobby`.
            let survivor = &addrs[(i + 1) % nodes];
            let before = presence_clients(survivor).await;
            eprintln!("lobby presence before the kill: {} connections", before.len());
            let dead = cluster.kill(i);
            killed_at = Some(Instant::now());
            eprintln!("---- stderr of the killed node (tail) ----\n{}", tail(&dead.stderr(), 3000));
            eprintln!("SIGKILL node {i} after {at} of {total} acknowledged sends, {:?}", t0.elapsed());
        }
        Fault::BrokerRestart(pause) => {
            let b = broker.as_mut().expect("broker restart needs the test's own broker");
            b.down();
            eprintln!("{} killed after {at} of {total} acknowledged sends, {:?}", b.name(), t0.elapsed());
            tokio::time::sleep(pause).await;
            b.up();
            eprintln!("{} started again, {:?}", b.name(), t0.elapsed());
        }
    }

    // The dead node's presence entries expire within presence_ttl (+ two heartbeats of
    // slack), watched while the load goes on.
    let presence_watch = if let (Fault::Kill(i), Some(killed_at)) = (fault, killed_at) {
        let survivor = addrs[(i + 1) % nodes].clone();
        let dead: HashSet<String> =
            registry.lock().unwrap().iter().filter(|(n, _)| *n == i).map(|(_, c)| c.clone()).collect();
        assert!(!dead.is_empty(), "no device was on the killed node");
        let ttl = PRESENCE_TTL + HEARTBEAT * 2;
        Some(tokio::spawn(async move {
            loop {
                let present = presence_clients(&survivor).await;
                let left: Vec<String> = dead.iter().filter(|c| present.contains(*c)).cloned().collect();
                if left.is_empty() {
                    return Ok(killed_at.elapsed());
                }
                if killed_at.elapsed() > ttl {
                    return Err(format!(
                        "{} of the killed node's {} presence entries still there {:?} after the kill: {left:?}",
                        left.len(),
                        dead.len(),
                        killed_at.elapsed()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    } else {
        None
    };

    // Every send finishes; then every room's last seq is what everyone must reach.
    let mut results = Vec::new();
    // Sends finish first (their tasks then wait for the targets).
    let load_deadline = Instant::now() + Duration::from_secs(180);
    while acks.load(Ordering::SeqCst) < total {
        assert!(
            Instant::now() < load_deadline,
            "the load did not finish within 180 s: {} of {total} acknowledged",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("all {total} sends acknowledged, {:?}", t0.elapsed());
    let reader = &cluster.running().next().expect("a node still runs").1.addr.clone();
    let mut room_msgs = BTreeMap::new();
    let mut targets = BTreeMap::new();
    for &room in &rooms {
        let msgs = read_room(reader, &users[0].token, room).await;
        let last = rest_ok(reader, "GET", &format!("/api/rooms/{room}"), Some(&users[0].token), None).await;
        let last_seq = last["last_seq"]
            .as_i64()
            .or_else(|| last["room"]["last_seq"].as_i64())
            .unwrap_or_else(|| msgs.iter().filter_map(|m| m["seq"].as_i64()).max().unwrap_or(0));
        targets.insert(room, last_seq);
        room_msgs.insert(room, msgs);
    }
    go_tx.send(Some(targets.clone())).unwrap();
    for t in tasks {
        results.push(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("device finishes")
                .expect("device task"),
        );
    }
    eprintln!("devices synced, {:?}", t0.elapsed());

    // --- checks -----------------------------------------------------------------------------
    let mut problems: Vec<String> = Vec::new();

    // 1. Every room read back: acknowledged messages exactly once, at their seq, in order.
    let mut acked_by_room: HashMap<i64, HashMap<String, i64>> = HashMap::new();
    for (_, sent, _) in &results {
        let mut last_seq_per_room: HashMap<i64, i64> = HashMap::new();
        for (room, cmid, seq) in &sent.acked {
            if let Some(prev) = last_seq_per_room.insert(*room, *seq) {
                if *seq <= prev {
                    problems.push(format!(
                        "room {room}: {cmid} acknowledged at seq {seq}, after its sender's seq {prev}"
                    ));
                }
            }
            acked_by_room.entry(*room).or_default().insert(cmid.clone(), *seq);
        }
    }
    let sent_ids: HashSet<String> = (0..USERS)
        .flat_map(|i| (0..SENDS).map(move |k| (i, k)))
        .map(|(i, k)| format!("{}-{k}", users[i].id))
        .collect();
    for (&room, msgs) in &room_msgs {
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut prev = 0;
        for m in msgs {
            let cmid = m["client_msg_id"].as_str().unwrap_or_default().to_string();
            let seq = m["seq"].as_i64().unwrap_or(-1);
            if seq <= prev {
                problems.push(format!("room {room}: seq {seq} after {prev} in the read-back"));
            }
            prev = seq;
            if !sent_ids.contains(&cmid) {
                problems.push(format!("room {room}: a message nobody sent: {m}"));
            }
            if let Some(first) = seen.insert(cmid.clone(), seq) {
                problems.push(format!("room {room}: {cmid} stored twice, at seqs {first} and {seq}"));
            }
        }
        let acked = acked_by_room.get(&room).cloned().unwrap_or_default();
        for (cmid, seq) in &acked {
            match seen.get(cmid) {
                None => problems.push(format!("room {room}: acknowledged {cmid} (seq {seq}) is missing")),
                Some(s) if s != seq => {
                    problems.push(format!("room {room}: {cmid} acknowledged at seq {seq}, stored at {s}"))
                }
                _ => {}
            }
        }
        eprintln!(
            "room {room}: {} messages read back, {} acknowledged, last seq {}",
            msgs.len(),
            acked.len(),
            targets[&room]
        );
    }
    let acked_total: usize = acked_by_room.values().map(HashMap::len).sum();
    if acked_total != total {
        problems.push(format!("{acked_total} distinct acknowledged messages, expected {total}"));
    }

    // 2. Every device saw every room's events once, in order, up to the end.
    let mut reconnected = 0;
    for (d, _, synced) in &results {
        if !synced {
            problems.push(format!(
                "{}: not in sync: {:?}, targets {targets:?}",
                d.name,
                d.rooms.iter().map(|(r, v)| (*r, v.offset)).collect::<Vec<_>>()
            ));
        }
        for v in &d.violations {
            problems.push(format!("{}: {v}", d.name));
        }
        if d.reconnects > 0 {
            reconnected += 1;
        }
    }
    eprintln!("{reconnected} of {USERS} devices reconnected");

    // 3. The killed node's connections left presence within presence_ttl.
    if let Some(watch) = presence_watch {
        if reconnected == 0 {
            problems.push("no device reconnected after the node was killed".into());
        }
        match watch.await.expect("presence watcher") {
            Ok(after) => eprintln!("the killed node's presence entries were gone {after:?} after the kill"),
            Err(e) => problems.push(e),
        }
    }

    if !problems.is_empty() {
        for (d, _, _) in &results {
            eprintln!("---- {} (node history {:?}) ----\n{}", d.name, d.clients, d.log.join("\n"));
        }
        panic!("{} problems:\n{}", problems.len(), problems.join("\n"));
    }
}

/// Client ids present in `lobby`, asked of `addr`.
async fn presence_clients(addr: &str) -> HashSet<String> {
    let (_, v) = rest_api(addr, "presence", json!({"channel": "lobby"})).await;
    v["result"]["presence"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Three nodes on `engine` (at `url`, or the machine's shared server), short heartbeats and
/// presence expiry. `None` when a service is missing (skipped loudly).
async fn three_nodes(engine: EngineKind, url: Option<&str>) -> Option<Cluster> {
    let mut builder = Cluster::builder()
        .nodes(3)
        .engine(engine)
        .heartbeat(&format!("{}ms", HEARTBEAT.as_millis()))
        .configure(|b| b.env("HUBBUB_ENGINE_PRESENCE_TTL", &format!("{}ms", PRESENCE_TTL.as_millis())));
    if let Some(url) = url {
        builder = builder.engine_url(url);
    }
    builder.start().await
}

async fn kill9(engine: EngineKind) {
    let Some(mut cluster) = three_nodes(engine, None).await else { return };
    scenario(&mut cluster, None, Fault::Kill(1)).await;
}

async fn broker_restart(engine: EngineKind) {
    let Some(mut broker) = OwnBroker::start(engine) else { return };
    let Some(mut cluster) = three_nodes(engine, Some(&broker.url.clone())).await else { return };
    scenario(&mut cluster, Some(&mut broker), Fault::BrokerRestart(Duration::from_secs(2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_node_under_chat_load_redis() {
    kill9(EngineKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_node_under_chat_load_nats() {
    kill9(EngineKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_chat_load() {
    broker_restart(EngineKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_chat_load() {
    broker_restart(EngineKind::Nats).await;
}

// ---------------------------------------------------------------------------------------------
// A broker of the test's own
// ---------------------------------------------------------------------------------------------

/// A `redis-server` (no persistence) or `nats-server -js` of the test's own on a free port,
/// with its data in a temp folder, to kill and start again under load. The machine's shared
/// servers are never touched.
struct OwnBroker {
    engine: EngineKind,
    port: u16,
    url: String,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    /// `None` (skipped loudly; a failure under `HUBBUB_REQUIRE_SERVICES=1`) when the server's
    /// binary is not installed.
    fn start(engine: EngineKind) -> Option<OwnBroker> {
        let (bin, scheme) = match engine {
            EngineKind::Redis => ("redis-server", "redis"),
            EngineKind::Nats => ("nats-server", "nats"),
        };
        let installed = std::process::Command::new(bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let msg = format!("{bin} is not installed");
            if hubbub_testservices::required() {
                panic!("{msg}; HUBBUB_REQUIRE_SERVICES=1, so this test may not skip");
            }
            eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
            return None;
        }
        let port = hubbub_testservices::free_port();
        let mut broker = OwnBroker {
            engine,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        broker.up();
        Some(broker)
    }

    fn name(&self) -> &'static str {
        match self.engine {
            EngineKind::Redis => "redis-server",
            EngineKind::Nats => "nats-server",
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts the server (again) on its port; waits until it accepts connections.
    fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("broker log");
        let port = self.port.to_string();
        let mut cmd = std::process::Command::new(self.name());
        match self.engine {
            EngineKind::Redis => {
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            }
            EngineKind::Nats => {
                cmd.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"]).arg(self.dir.path().join("js"))
            }
        };
        cmd.current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", self.name())));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hubbub_testservices::reachable(&self.url) {
            assert!(
                Instant::now() < deadline,
                "{} on port {} did not come up:\n{}",
                self.name(),
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: a crash).
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.down();
    }
}
