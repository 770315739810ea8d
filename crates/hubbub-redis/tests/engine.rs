//! The Redis engine against a real Redis: two engines in one process act as two nodes of a
//! cluster (each with its own events), under a key prefix of their own.
//! The fault test runs its own `redis-server` on a free port and kills it.

use hubbub_core::engine::{
    Broker, BrokerEvents, EngineConfig, EngineError, HistoryOptions, HistoryQuery, PresenceStats,
    PresenceStore,
};
use hubbub_protocol::{json_from_str, ClientInfo, Publication, StreamPosition};
use hubbub_redis::{RedisConfig, RedisEngine};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Publication { channel: String, offset: u64, data: String },
    Join(String, String),
    Leave(String, String),
    Control(Vec<u8>),
    Resync,
}

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl Collect {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    fn offsets(&self, channel: &str) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Publication { channel: c, offset, .. } if c == channel => Some(offset),
                _ => None,
            })
            .collect()
    }
    fn datas(&self, channel: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Publication { channel: c, data, .. } if c == channel => Some(data),
                _ => None,
            })
            .collect()
    }
    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
}

impl BrokerEvents for Collect {
    fn on_publication(&self, channel: &str, p: Publication) {
        let e = Event::Publication {
            channel: channel.into(),
            offset: p.offset,
            data: p.data.as_json().unwrap().into(),
        };
        self.0.lock().unwrap().push(e);
    }
    fn on_join(&self, channel: &str, info: ClientInfo) {
        self.0.lock().unwrap().push(Event::Join(channel.into(), info.client));
    }
    fn on_leave(&self, channel: &str, info: ClientInfo) {
        self.0.lock().unwrap().push(Event::Leave(channel.into(), info.client));
    }
    fn on_control(&self, message: &[u8]) {
        self.0.lock().unwrap().push(Event::Control(message.to_vec()));
    }
    fn on_resync(&self) {
        self.0.lock().unwrap().push(Event::Resync);
    }
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    let engine = EngineConfig { redis_url: url.into(), prefix: prefix.into(), ..Default::default() };
    RedisConfig::from_engine(&engine)
}

struct Node {
    engine: Arc<RedisEngine>,
    seen: Arc<Collect>,
}

async fn node_with(config: RedisConfig, id: &str) -> Node {
    let engine = Arc::new(RedisEngine::connect(config).await.expect("connect"));
    let seen = Arc::new(Collect::default());
    engine.start(id, seen.clone()).await.expect("start");
    Node { engine, seen }
}

async fn node(url: &str, prefix: &str, id: &str) -> Node {
    node_with(config(url, prefix), id).await
}

fn publication(data: &str) -> Publication {
    Publication { data: json_from_str(data).unwrap(), info: None, offset: 0, tags: None }
}

const H: HistoryOptions = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };

fn since(position: &StreamPosition) -> HistoryQuery {
    HistoryQuery { since: Some(position.clone()), ..Default::default() }
}

fn offsets(page: &[Publication]) -> Vec<u64> {
    page.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn fan_out_between_two_nodes_both_ways_in_order() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let (a, b) = (node(&url, &prefix, "a").await, node(&url, &prefix, "b").await);
    a.engine.subscribe("chat").await.unwrap();
    b.engine.subscribe("chat").await.unwrap();
    for n in 1..=20 {
        let from = if n % 2 == 0 { &a } else { &b };
        let pos = from.engine.publish("chat", publication(&n.to_string()), H).await.unwrap();
        assert_eq!(pos.offset, n);
    }
    for x in [&a, &b] {
        until("20 publications", || x.seen.offsets("chat").len() == 20).await;
        assert_eq!(x.seen.offsets("chat"), (1..=20).collect::<Vec<_>>());
        assert_eq!(x.seen.datas("chat"), (1..=20).map(|n| n.to_string()).collect::<Vec<_>>());
    }

    // Join and leave travel the same way.
    let info = ClientInfo { user: "u".into(), client: "c1".into(), conn_info: None, chan_info: None };
    a.engine.publish_join("chat", info.clone()).await.unwrap();
    a.engine.publish_leave("chat", info).await.unwrap();
    until("join and leave on b", || {
        b.seen.count(|e| matches!(e, Event::Join(c, id) | Event::Leave(c, id) if c == "chat" && id == "c1"))
            == 2
    })
    .await;

    // Without history, the caller's offset passes through (an application-kept stream).
    let kept = Publication { offset: 77, ..publication("\"room\"") };
    let pos = a.engine.publish("room", kept, HistoryOptions::default()).await.unwrap();
    assert_eq!(pos, StreamPosition::default());
    b.engine.subscribe("room").await.unwrap();
    let kept = Publication { offset: 78, ..publication("\"room\"") };
    a.engine.publish("room", kept, HistoryOptions::default()).await.unwrap();
    until("the room's publication on b", || b.seen.offsets("room") == vec![78]).await;

    // A node that unsubscribed gets nothing more; the other still does.
    b.engine.unsubscribe("chat").await.unwrap();
    a.engine.publish("chat", publication("21"), H).await.unwrap();
    until("21 on a", || a.seen.offsets("chat").len() == 21).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.seen.offsets("chat").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_two_nodes_get_contiguous_offsets_in_order() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let (a, b) = (node(&url, &prefix, "a").await, node(&url, &prefix, "b").await);
    a.engine.subscribe("hot").await.unwrap();
    b.engine.subscribe("hot").await.unwrap();
    let h = HistoryOptions { size: 2000, ttl: Duration::from_secs(60) };
    let mut tasks = Vec::new();
    for (name, n) in [("a", &a), ("b", &b)] {
        for i in 0..500 {
            let engine = n.engine.clone();
            tasks.push(tokio::spawn(async move {
                engine.publish("hot", publication(&format!("\"{name}{i}\"")), h).await.unwrap()
            }));
        }
    }
    let mut got: Vec<u64> = Vec::new();
    let mut epochs = std::collections::HashSet::new();
    for t in tasks {
        let pos = t.await.unwrap();
        got.push(pos.offset);
        epochs.insert(pos.epoch);
    }
    got.sort_unstable();
    assert_eq!(got, (1..=1000).collect::<Vec<_>>(), "offsets are not 1..1000 each once");
    assert_eq!(epochs.len(), 1);
    for x in [&a, &b] {
        until("1000 publications", || x.seen.offsets("hot").len() == 1000).await;
        assert_eq!(x.seen.offsets("hot"), (1..=1000).collect::<Vec<_>>(), "not in offset order");
    }
    // The stream holds them all in order, read in several batches, both ways.
    let all = a.engine.history("hot", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(offsets(&all.publications), (1..=1000).collect::<Vec<_>>());
    let rev = HistoryQuery { reverse: true, ..Default::default() };
    let all = b.engine.history("hot", rev, h).await.unwrap();
    assert_eq!(offsets(&all.publications), (1..=1000).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn history_recovery_empty_epoch_and_unrecoverable_positions() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let (a, b) = (node(&url, &prefix, "a").await, node(&url, &prefix, "b").await);
    let h = HistoryOptions { size: 3, ttl: Duration::from_secs(60) };

    // The empty channel: offset 0 in the epoch its stream will have, the same on both nodes.
    let empty =
        a.engine.history("c", HistoryQuery { limit: Some(0), ..Default::default() }, h).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(!empty.position.epoch.is_empty());
    let empty_b = b.engine.history("c", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(empty_b.position, empty.position);
    for n in 1..=2 {
        let pos = b.engine.publish("c", publication(&n.to_string()), h).await.unwrap();
        assert_eq!(pos, StreamPosition { offset: n, epoch: empty.position.epoch.clone() });
    }
    let page = a.engine.history("c", since(&empty.position), h).await.unwrap();
    assert_eq!(offsets(&page.publications), vec![1, 2]);
    assert_eq!(page.position.offset, 2);

    // Trimmed to the history size: the start is no longer recoverable, the end is.
    for n in 3..=5 {
        a.engine.publish("c", publication(&n.to_string()), h).await.unwrap();
    }
    let epoch = empty.position.epoch.clone();
    let at = |offset| StreamPosition { offset, epoch: epoch.clone() };
    let all = b.engine.history("c", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(offsets(&all.publications), vec![3, 4, 5]);
    assert_eq!(offsets(&b.engine.history("c", since(&at(3)), h).await.unwrap().publications), vec![4, 5]);
    assert!(b.engine.history("c", since(&at(2)), h).await.is_ok());
    assert_eq!(
        b.engine.history("c", since(&at(1)), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
    assert_eq!(
        b.engine.history("c", since(&at(6)), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
    let other = StreamPosition { offset: 4, epoch: "other".into() };
    assert_eq!(
        b.engine.history("c", since(&other), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
    let made_up = StreamPosition { offset: 0, epoch: "other".into() };
    assert_eq!(
        a.engine.history("never", since(&made_up), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );

    // Limit, reverse and a byte bound.
    let q = HistoryQuery { limit: Some(2), reverse: true, ..Default::default() };
    assert_eq!(offsets(&a.engine.history("c", q, h).await.unwrap().publications), vec![5, 4]);
    let q = HistoryQuery { since: Some(at(3)), limit: Some(1), ..Default::default() };
    assert_eq!(offsets(&a.engine.history("c", q, h).await.unwrap().publications), vec![4]);
    let q = HistoryQuery { max_bytes: Some(1), ..Default::default() };
    assert_eq!(
        offsets(&a.engine.history("c", q, h).await.unwrap().publications),
        vec![3],
        "the first always fits"
    );

    // Removing the history keeps the position: the top still recovers (with nothing).
    a.engine.remove_history("c").await.unwrap();
    let page = b.engine.history("c", since(&at(5)), h).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, at(5));
    assert_eq!(
        b.engine.history("c", since(&at(4)), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
    assert_eq!(a.engine.publish("c", publication("6"), h).await.unwrap(), at(6));
}

#[tokio::test]
async fn a_reset_stream_starts_over_in_a_new_epoch() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let mut cfg = config(&url, &prefix);
    cfg.history_meta_ttl = Duration::from_millis(300);
    let a = node_with(cfg, "a").await;
    let h = HistoryOptions { size: 10, ttl: Duration::from_millis(200) };
    let first = a.engine.publish("c", publication("1"), h).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = a.engine.publish("c", publication("2"), h).await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
    assert_eq!(
        a.engine.history("c", since(&first), h).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
}

#[tokio::test]
async fn history_survives_every_node() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let last = {
        let (a, b) = (node(&url, &prefix, "a").await, node(&url, &prefix, "b").await);
        a.engine.publish("c", publication("1"), H).await.unwrap();
        b.engine.publish("c", publication("2"), H).await.unwrap()
    };
    let c = node(&url, &prefix, "c").await;
    let page = c.engine.history("c", HistoryQuery::default(), H).await.unwrap();
    assert_eq!(page.position, last);
    assert_eq!(offsets(&page.publications), vec![1, 2]);
    assert_eq!(page.publications[1].data.as_json().unwrap(), "2");
    let next = c.engine.publish("c", publication("3"), H).await.unwrap();
    assert_eq!(next, StreamPosition { offset: 3, epoch: last.epoch });
}

#[tokio::test]
async fn control_to_one_node_and_to_all() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let (a, b) = (node(&url, &prefix, "a").await, node(&url, &prefix, "b").await);
    a.engine.publish_control(Some("b"), "to b".into()).await.unwrap();
    a.engine.publish_control(None, "to all".into()).await.unwrap();
    until("b's two messages", || b.seen.count(|e| matches!(e, Event::Control(_))) == 2).await;
    until("a's message", || a.seen.count(|e| matches!(e, Event::Control(_))) == 1).await;
    let control =
        |n: &Node| n.seen.events().into_iter().filter(|e| matches!(e, Event::Control(_))).collect::<Vec<_>>();
    assert_eq!(control(&b), vec![Event::Control(b"to b".to_vec()), Event::Control(b"to all".to_vec())]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(control(&a), vec![Event::Control(b"to all".to_vec())], "a got b's message");

    // Another cluster (prefix) on the same Redis hears nothing.
    let other = node(&url, &hubbub_testservices::unique_prefix(), "b").await;
    a.engine.publish_control(None, "again".into()).await.unwrap();
    until("b's third message", || b.seen.count(|e| matches!(e, Event::Control(_))) == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(other.seen.events().is_empty());
}

#[tokio::test]
async fn presence_across_nodes_and_a_dead_nodes_entries_expire() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let short = |id| {
        let mut c = config(&url, &prefix);
        c.presence_ttl = Duration::from_millis(600);
        node_with(c, id)
    };
    let (a, b) = (short("a").await, short("b").await);
    let info = |u: &str, c: &str| ClientInfo {
        user: u.into(),
        client: c.into(),
        conn_info: Some(json_from_str(r#"{"n":1}"#).unwrap()),
        chan_info: None,
    };
    a.engine.add("p", info("u1", "a1")).await.unwrap();
    a.engine.add("p", info("u2", "a2")).await.unwrap();
    b.engine.add("p", info("u1", "b1")).await.unwrap();
    let all = b.engine.presence("p").await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["a1"].user, "u1");
    assert_eq!(all["a1"].conn_info.as_ref().unwrap().as_json().unwrap(), r#"{"n":1}"#);
    assert_eq!(a.engine.stats("p").await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
    a.engine.remove("p", "a2").await.unwrap();
    assert_eq!(b.engine.stats("p").await.unwrap(), PresenceStats { num_clients: 2, num_users: 1 });

    // Well past the TTL, the live nodes' entries are still there (they refresh them)...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.engine.stats("p").await.unwrap().num_clients, 2);
    // ...and a node that died takes its entries with it within the TTL.
    drop(a);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let left = b.engine.presence("p").await.unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), vec!["b1"]);
    assert_eq!(b.engine.stats("p").await.unwrap(), PresenceStats { num_clients: 1, num_users: 1 });
    assert!(b.engine.presence("nobody").await.unwrap().is_empty());
}

/// A `redis-server` of this test's own, on a free port, killed with the test.
struct OwnRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        let url = format!("redis://127.0.0.1:{port}");
        until("redis-server to listen", || hubbub_testservices::reachable(&url)).await;
        OwnRedis { port, child: Some(child) }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

#[tokio::test]
async fn redis_going_away_fails_fast_and_comes_back_with_a_resync() {
    // Only to skip where the machine has no Redis at all (then no redis-server either).
    if hubbub_testservices::redis().is_none() {
        return;
    }
    let mut server = OwnRedis::start(hubbub_testservices::free_port()).await;
    let prefix = hubbub_testservices::unique_prefix();
    let mut cfg = config(&server.url(), &prefix);
    cfg.command_timeout = Duration::from_millis(500);
    let (a, b) = (node_with(cfg.clone(), "a").await, node_with(cfg.clone(), "b").await);
    a.engine.subscribe("c").await.unwrap();
    b.engine.publish("c", publication("1"), H).await.unwrap();
    until("the first publication", || a.seen.offsets("c") == vec![1]).await;

    // The PUB/SUB connections cut while Redis stays up: they come back by themselves, the
    // node hears that it may have missed something (once), and the stream goes on.
    let mut admin =
        redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let killed: u64 =
        redis::cmd("CLIENT").arg(&["KILL", "TYPE", "pubsub"]).query_async(&mut admin).await.unwrap();
    // (Redis counts as "pubsub" the connections that carry a topic: each node's control one,
    // and a's one for "c" when it is another.)
    assert!(killed >= 2, "{killed} PUB/SUB connections cut");
    until("a resync after the cut", || a.seen.count(|e| *e == Event::Resync) == 1).await;
    until("b's resync too", || b.seen.count(|e| *e == Event::Resync) == 1).await;
    let pos = b.engine.publish("c", publication("2"), H).await.unwrap();
    assert_eq!(pos.offset, 2);
    until("fan-out after the cut", || a.seen.offsets("c") == vec![1, 2]).await;
    drop(admin);

    server.kill().await;
    // Every command fails with Unavailable, and quickly.
    let started = Instant::now();
    let err = b.engine.publish("c", publication("\"x\""), H).await.unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(a.engine.history("c", HistoryQuery::default(), H).await.is_err());
    assert!(a.engine.presence("c").await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.engine.subscribe("d").await.is_err(), "subscribed while Redis is down");
    assert!(b.engine.publish_control(None, "x".into()).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(4), "commands hung: {:?}", started.elapsed());
    assert_eq!(a.seen.count(|e| *e == Event::Resync), 1);

    // Back on the same port (empty: no persistence): the subscription comes back, the node
    // hears that it may have missed something, and fan-out works again.
    let _server = OwnRedis::start(server.port).await;
    until("a resync on a", || a.seen.count(|e| *e == Event::Resync) == 2).await;
    let start = Instant::now();
    let pos = loop {
        match b.engine.publish("c", publication("3"), H).await {
            Ok(pos) => break pos,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "publish never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pos.offset, 1, "a new Redis has a new stream");
    until("fan-out after the outage", || a.seen.datas("c").last().map(String::as_str) == Some("3")).await;
    a.engine.subscribe("d").await.unwrap();
    b.engine.publish_control(Some("a"), "back".into()).await.unwrap();
    until("control after the outage", || a.seen.count(|e| *e == Event::Control(b"back".to_vec())) == 1).await;
    assert_eq!(a.seen.count(|e| *e == Event::Resync), 2, "one resync per outage");
}

/// A thousand clients waking at once (long polls, a reconnect storm) read at once: every
/// read is answered, none times out behind the others on the one command connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_reads_is_answered_whole() {
    let Some(url) = hubbub_testservices::redis() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let a = node(&url, &prefix, "a").await;
    let top = a.engine.publish("c", publication("1"), H).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let e = a.engine.clone();
            tokio::spawn(async move { e.history("c", HistoryQuery::default(), H).await })
        })
        .collect();
    for t in tasks {
        let page = t.await.unwrap().expect("a read failed");
        assert_eq!(page.position, top);
        assert_eq!(page.publications.len(), 1);
    }
    println!("1000 concurrent reads in {:?}", started.elapsed());
}
