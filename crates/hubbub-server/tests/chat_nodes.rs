//! The chat on several nodes, in one process: three nodes built as the server builds them
//! (`App::build` with `engine.type = "redis"`) on the machine's real Redis, sharing one real
//! SQLite store the way nodes share a PostgreSQL database. Subscribers are registered in
//! each node's hub the way a session subscribes (held, position read, released), so what
//! is checked is the path of a room's events between nodes: the broker and each node's
//! room sequencer. Skips loudly without Redis (fails under HUBBUB_REQUIRE_SERVICES=1).

use hubbub_core::engine::{EngineKind, HistoryQuery};
use hubbub_core::hub::Connection;
use hubbub_server::config::Config;
use hubbub_server::App;
use hubbub_store::sqlite::SqliteStore;
use hubbub_store::{ChatStore, RoomId, User};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Nodes {
    apps: Vec<App>,
    store: Arc<dyn ChatStore>,
    _dir: tempfile::TempDir,
}

async fn nodes(n: usize) -> Option<Nodes> {
    let redis = hubbub_testservices::redis()?;
    let prefix = hubbub_testservices::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChatStore> = Arc::new(SqliteStore::open(&dir.path().join("hubbub.db")).await.unwrap());
    let mut apps = Vec::new();
    for i in 0..n {
        let mut config = Config::default();
        config.engine.kind = EngineKind::Redis;
        config.engine.redis_url = redis.clone();
        config.engine.prefix = prefix.clone();
        config.chat.sends_per_second = 1e6;
        config.chat.send_burst = 1_000_000;
        apps.push(App::build(config, format!("n{i}"), store.clone()).await.unwrap());
    }
    Some(Nodes { apps, store, _dir: dir })
}

impl Nodes {
    async fn user(&self, name: &str) -> User {
        self.store.create_user(name, "hash").await.unwrap()
    }

    /// A group of `owner` with the others as members.
    async fn group(&self, owner: &User, others: &[&User]) -> RoomId {
        let room = self.store.create_group("g", owner.id).await.unwrap().id;
        for user in others {
            self.store.add_member(room, user.id, hubbub_store::Role::Member).await.unwrap();
        }
        room
    }

    /// Subscribes a connection on node `i` as a session does: listen (held), read the
    /// position, release. Returns the connection and the offset its position covers.
    async fn subscribe(&self, i: usize, channel: &str) -> (Arc<Connection>, u64) {
        let node = &self.apps[i].node;
        let conn = Connection::new(64 << 20);
        if node.hub.subscribe(channel, &conn, false, true, channel.starts_with("room:")) {
            node.broker.subscribe(channel).await.unwrap();
        }
        let (ns, _) = node.namespaces.resolve(channel).unwrap();
        let covered = if node.has_stream(ns) {
            let query = HistoryQuery { limit: Some(0), ..Default::default() };
            node.read_stream(channel, ns, query).await.unwrap().position.offset
        } else {
            0
        };
        node.hub.release(channel, &conn, covered);
        (conn, covered)
    }
}

/// The pushes queued for `conn` so far (their `pub` objects).
fn pushes(conn: &Connection) -> Vec<Value> {
    let mut frames = Vec::new();
    while conn.outbox.drain_frames(&mut frames).is_some() {}
    frames.iter().map(|f| serde_json::from_slice::<Value>(f).unwrap()["push"]["pub"].clone()).collect()
}

/// Collects pushes for `conn` until `done` says so, within 10 s.
async fn collect_until(conn: &Connection, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    loop {
        got.extend(pushes(conn));
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: timed out with {} pushes: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stored_offsets(pushes: &[Value]) -> Vec<u64> {
    pushes.iter().filter_map(|p| p["offset"].as_u64()).filter(|&o| o > 0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_three_nodes_every_member_gets_every_event_in_order() {
    let Some(nodes) = nodes(3).await else { return };
    let users = [nodes.user("ann").await, nodes.user("bob").await, nodes.user("cat").await];
    let room = nodes.group(&users[0], &[&users[1], &users[2]]).await;
    let channel = format!("room:{room}");
    let mut subscribers = Vec::new();
    for i in 0..3 {
        subscribers.push(nodes.subscribe(i, &channel).await);
    }
    const EACH: usize = 60;
    let mut senders = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let chat = nodes.apps[i].chat.clone();
        let user = user.clone();
        senders.push(tokio::spawn(async move {
            for k in 0..EACH {
                chat.send(&user, room, &format!("{} {k}", user.username), &format!("{i}-{k}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let top = nodes.store.room(room).await.unwrap().unwrap().last_seq;
    for (i, (conn, covered)) in subscribers.iter().enumerate() {
        let got = collect_until(conn, &format!("node {i}"), |p| stored_offsets(p).last() == Some(&top)).await;
        let offsets = stored_offsets(&got);
        assert_eq!(
            offsets,
            (covered + 1..=top).collect::<Vec<_>>(),
            "node {i}: in seq order, no gap, no repeat"
        );
        assert_eq!(offsets.len(), 3 * EACH);
    }
    // Nothing more trickles in afterwards (no duplicates filled late).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (conn, _) in &subscribers {
        assert!(stored_offsets(&pushes(conn)).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_node_is_stored_once_and_delivered_once() {
    let Some(nodes) = nodes(3).await else { return };
    let ann = nodes.user("ann").await;
    let bob = nodes.user("bob").await;
    let room = nodes.group(&ann, &[&bob]).await;
    let channel = format!("room:{room}");
    let (conn, covered) = nodes.subscribe(2, &channel).await;
    let first = nodes.apps[0].chat.send(&ann, room, "hello", "retry-1", None).await.unwrap();
    // The client got no answer (its node died, say) and sends again through another one.
    let again = nodes.apps[1].chat.send(&ann, room, "hello", "retry-1", None).await.unwrap();
    assert_eq!(again.seq, first.seq, "the original is the answer");
    assert_eq!(nodes.store.room(room).await.unwrap().unwrap().last_seq, first.seq, "stored once");
    let got = collect_until(&conn, "retry", |p| !stored_offsets(p).is_empty()).await;
    assert_eq!(stored_offsets(&got), vec![first.seq]);
    assert_eq!(first.seq, covered + 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(stored_offsets(&pushes(&conn)).is_empty(), "the republished event is not delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_typing_and_unread_notices_cross_nodes() {
    let Some(nodes) = nodes(3).await else { return };
    let ann = nodes.user("ann").await;
    let bob = nodes.user("bob").await;
    let room = nodes.group(&ann, &[&bob]).await;
    let channel = format!("room:{room}");
    // Ann watches the room on node 2; Bob's personal channel is listened to on node 1.
    let (room_conn, _) = nodes.subscribe(2, &channel).await;
    let (bob_conn, _) = nodes.subscribe(1, &format!("user#{}", bob.id)).await;

    // Bob connects on node 0: online everywhere, and announced once.
    let bob_device = Connection::new(1 << 20);
    nodes.apps[0].node.add_connection(&bob.id.to_string(), &bob_device).unwrap();
    let is_presence = |online: bool| {
        move |p: &[Value]| p.iter().any(|p| p["data"]["type"] == "presence" && p["data"]["online"] == online)
    };
    collect_until(&room_conn, "bob online", is_presence(true)).await;
    for app in &nodes.apps {
        assert!(app.chat.is_online(bob.id).await, "online on any node means online");
    }
    let view = nodes.apps[2].chat.rooms(ann.id).await.unwrap();
    let member = view[0].members.iter().find(|m| m.id == bob.id).unwrap();
    assert!(member.online, "room views on another node see him online");

    // A second connection on another node announces nothing; closing the first neither.
    let bob_phone = Connection::new(1 << 20);
    nodes.apps[1].node.add_connection(&bob.id.to_string(), &bob_phone).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes.apps[0].node.remove_connection(&bob.id.to_string(), &bob_device);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet = pushes(&room_conn);
    assert!(!quiet.iter().any(|p| p["data"]["type"] == "presence"), "still online on node 1: {quiet:?}");
    assert!(nodes.apps[2].chat.is_online(bob.id).await);
    // The last connection anywhere closes: offline, announced, last seen stored.
    nodes.apps[1].node.remove_connection(&bob.id.to_string(), &bob_phone);
    collect_until(&room_conn, "bob offline", is_presence(false)).await;
    assert!(!nodes.apps[0].chat.is_online(bob.id).await);
    assert!(nodes.store.user(bob.id).await.unwrap().unwrap().last_seen.is_some());

    // Ann types on node 0: the room's subscribers on node 2 see it.
    nodes.apps[0].chat.typing(&ann, room).await.unwrap();
    collect_until(&room_conn, "typing", |p| p.iter().any(|p| p["data"]["type"] == "typing")).await;

    // Ann sends on node 0: Bob's personal channel on node 1 gets the notice with his unread
    // count; his read receipt on node 1 reaches the room's subscribers on node 2.
    let message = nodes.apps[0].chat.send(&ann, room, "hi bob", "n-1", None).await.unwrap();
    let notices = collect_until(&bob_conn, "unread notice", |p| {
        p.iter().any(|p| p["data"]["type"] == "message" && p["data"]["unread"] == 1)
    })
    .await;
    assert!(notices.iter().all(|p| p["offset"].as_u64().unwrap_or(0) == 0), "notices are ephemeral");
    nodes.apps[1].chat.mark(&bob, room, None, Some(message.seq)).await.unwrap();
    collect_until(&room_conn, "receipt", |p| {
        p.iter().any(|p| p["data"]["type"] == "receipt" && p["data"]["user_id"] == bob.id)
    })
    .await;
}
