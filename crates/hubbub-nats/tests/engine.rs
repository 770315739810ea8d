//! The NATS engine against a real NATS server with JetStream: two engines in one process
//! are two nodes sharing a prefix (each test its own prefix, so tests share the server).

use hubbub_core::engine::{
    Broker, BrokerEvents, EngineConfig, EngineError, HistoryOptions, HistoryQuery, PresenceStats,
    PresenceStore,
};
use hubbub_nats::{NatsConfig, NatsEngine};
use hubbub_protocol::{json_from_str, ClientInfo, Publication, StreamPosition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one node was delivered.
#[derive(Default)]
struct Seen {
    publications: Mutex<Vec<(String, u64, String)>>,
    joins: Mutex<Vec<(String, String)>>,
    leaves: Mutex<Vec<(String, String)>>,
    control: Mutex<Vec<Vec<u8>>>,
    resyncs: AtomicUsize,
}

impl BrokerEvents for Seen {
    fn on_publication(&self, channel: &str, p: Publication) {
        self.publications.lock().unwrap().push((
            channel.to_owned(),
            p.offset,
            p.data.as_json().unwrap().to_owned(),
        ));
    }
    fn on_join(&self, channel: &str, info: ClientInfo) {
        self.joins.lock().unwrap().push((channel.to_owned(), info.client));
    }
    fn on_leave(&self, channel: &str, info: ClientInfo) {
        self.leaves.lock().unwrap().push((channel.to_owned(), info.client));
    }
    fn on_control(&self, message: &[u8]) {
        self.control.lock().unwrap().push(message.to_vec());
    }
    fn on_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
}

impl Seen {
    fn offsets(&self, channel: &str) -> Vec<u64> {
        self.publications.lock().unwrap().iter().filter(|p| p.0 == channel).map(|p| p.1).collect()
    }
}

/// Waits (at most 10 s) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(url: &str, prefix: &str) -> NatsConfig {
    let engine = EngineConfig {
        nats_url: url.into(),
        prefix: prefix.into(),
        presence_ttl: Duration::from_secs(20),
        history_meta_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    NatsConfig::from_engine(&engine, Duration::from_secs(60))
}

async fn node(config: NatsConfig, id: &str) -> (NatsEngine, Arc<Seen>) {
    let engine = NatsEngine::connect(config).await.expect("connect");
    let seen = Arc::new(Seen::default());
    engine.start(id, seen.clone()).await.expect("start");
    (engine, seen)
}

/// Two nodes on the machine's NATS with a prefix of their own.
async fn two_nodes() -> Option<((NatsEngine, Arc<Seen>), (NatsEngine, Arc<Seen>))> {
    let url = hubbub_testservices::nats()?;
    let prefix = hubbub_testservices::unique_prefix();
    Some((node(config(&url, &prefix), "n1").await, node(config(&url, &prefix), "n2").await))
}

fn publication(n: u64) -> Publication {
    Publication { data: json_from_str(&n.to_string()).unwrap(), info: None, offset: 0, tags: None }
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo { user: user.into(), client: client.into(), conn_info: None, chan_info: None }
}

const KEEP: HistoryOptions = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };

fn offsets(page: &[Publication]) -> Vec<u64> {
    page.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn fan_out_both_ways_in_offset_order() {
    let Some(((a, seen_a), (b, seen_b))) = two_nodes().await else { return };
    // Characters a subject may not hold.
    let channel = "news:a.b *>/ü";
    a.subscribe(channel).await.unwrap();
    b.subscribe(channel).await.unwrap();
    for n in 1..=40u64 {
        let node = if n % 2 == 0 { &a } else { &b };
        let pos = node.publish(channel, publication(n), KEEP).await.unwrap();
        assert_eq!(pos.offset, n);
    }
    let all: Vec<u64> = (1..=40).collect();
    for seen in [&seen_a, &seen_b] {
        wait_for("40 publications", || seen.offsets(channel).len() >= 40).await;
        assert_eq!(seen.offsets(channel), all);
    }
    // Without history, an application's own offset passes through untouched.
    let mut own = publication(99);
    own.offset = 7;
    let pos = a.publish("rooms", own, HistoryOptions::default()).await.unwrap();
    assert_eq!(pos, StreamPosition::default());
    b.subscribe("rooms").await.unwrap();
    let mut own = publication(100);
    own.offset = 8;
    a.publish("rooms", own, HistoryOptions::default()).await.unwrap();
    // (Publication 7 may still reach b: a core publish returns once sent, not once routed.)
    wait_for("the room publication", || seen_b.offsets("rooms").last() == Some(&8)).await;

    a.publish_join(channel, info("u1", "c1")).await.unwrap();
    b.publish_leave(channel, info("u1", "c1")).await.unwrap();
    for seen in [&seen_a, &seen_b] {
        wait_for("join and leave", || {
            seen.joins.lock().unwrap().len() == 1 && seen.leaves.lock().unwrap().len() == 1
        })
        .await;
    }
    // Unsubscribed: nothing more arrives on that node.
    b.unsubscribe(channel).await.unwrap();
    a.publish(channel, publication(41), KEEP).await.unwrap();
    wait_for("publication 41 on a", || seen_a.offsets(channel).len() == 41).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen_b.offsets(channel).len(), 40);
    a.destroy().await.unwrap();
}

#[tokio::test]
async fn concurrent_publishes_from_two_nodes_get_contiguous_offsets_delivered_in_order() {
    let Some(((a, seen_a), (b, seen_b))) = two_nodes().await else { return };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let channel = "hot";
    a.subscribe(channel).await.unwrap();
    b.subscribe(channel).await.unwrap();
    const EACH: u64 = 300;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, node) in [a.clone(), b.clone()].into_iter().enumerate() {
        for n in 0..EACH {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                node.publish(channel, publication(i as u64 * EACH + n), KEEP).await.map(|p| p.offset)
            }));
        }
    }
    let mut assigned = Vec::new();
    for task in tasks {
        assigned.push(task.await.unwrap().expect("publish"));
    }
    let elapsed = started.elapsed();
    assigned.sort_unstable();
    let all: Vec<u64> = (1..=2 * EACH).collect();
    assert_eq!(assigned, all, "offsets handed out twice or skipped");
    for seen in [&seen_a, &seen_b] {
        wait_for("every publication", || seen.offsets(channel).len() >= all.len()).await;
        assert_eq!(seen.offsets(channel), all, "delivered out of offset order");
    }
    eprintln!(
        "{} contended publishes from 2 nodes to one channel in {elapsed:?} ({:.0}/s)",
        2 * EACH,
        (2 * EACH) as f64 / elapsed.as_secs_f64()
    );
    a.destroy().await.unwrap();
}

#[tokio::test]
async fn history_recovery_and_the_empty_epoch() {
    let Some(((a, _), (b, _))) = two_nodes().await else { return };
    let h = HistoryOptions { size: 3, ttl: Duration::from_secs(60) };
    // The empty channel reads at offset 0 in the epoch its stream is created with, on any node.
    let empty = a.history("c", HistoryQuery::default(), h).await.unwrap().position;
    assert_eq!(empty.offset, 0);
    assert_eq!(b.history("c", HistoryQuery::default(), h).await.unwrap().position, empty);
    for n in 1..=5 {
        let node = if n % 2 == 0 { &a } else { &b };
        let pos = node.publish("c", publication(n), h).await.unwrap();
        assert_eq!(pos, StreamPosition { offset: n, epoch: empty.epoch.clone() });
    }
    let since = |offset| HistoryQuery {
        since: Some(StreamPosition { offset, epoch: empty.epoch.clone() }),
        ..Default::default()
    };
    let all = b.history("c", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(offsets(&all.publications), vec![3, 4, 5]);
    assert_eq!(all.position, StreamPosition { offset: 5, epoch: empty.epoch.clone() });
    assert_eq!(offsets(&a.history("c", since(3), h).await.unwrap().publications), vec![4, 5]);
    assert_eq!(offsets(&a.history("c", since(2), h).await.unwrap().publications), vec![3, 4, 5]);
    assert!(a.history("c", since(5), h).await.unwrap().publications.is_empty());
    for lost in [0, 1, 6] {
        assert_eq!(
            a.history("c", since(lost), h).await.unwrap_err(),
            EngineError::UnrecoverablePosition,
            "{lost}"
        );
    }
    let other_epoch =
        HistoryQuery { since: Some(StreamPosition { offset: 4, epoch: "x".into() }), ..Default::default() };
    assert_eq!(a.history("c", other_epoch, h).await.unwrap_err(), EngineError::UnrecoverablePosition);
    let newest = HistoryQuery { limit: Some(2), reverse: true, ..Default::default() };
    assert_eq!(offsets(&a.history("c", newest, h).await.unwrap().publications), vec![5, 4]);
    let oldest = HistoryQuery { limit: Some(2), ..Default::default() };
    assert_eq!(offsets(&a.history("c", oldest, h).await.unwrap().publications), vec![3, 4]);
    let position_only = HistoryQuery { limit: Some(0), ..Default::default() };
    let page = a.history("c", position_only, h).await.unwrap();
    assert!(page.publications.is_empty() && page.position.offset == 5);
    // A byte bound takes the first publication whatever its size, then what fits.
    let tiny = HistoryQuery { max_bytes: Some(1), ..since(2) };
    assert_eq!(offsets(&a.history("c", tiny, h).await.unwrap().publications), vec![3]);
    // A subscriber positioned on the empty channel recovers the first publications.
    let fresh = b.history("fresh", HistoryQuery::default(), h).await.unwrap().position;
    assert_ne!(fresh.epoch, empty.epoch, "two channels share an epoch");
    a.publish("fresh", publication(1), h).await.unwrap();
    b.publish("fresh", publication(2), h).await.unwrap();
    let on_empty = HistoryQuery { since: Some(fresh.clone()), ..Default::default() };
    let page = a.history("fresh", on_empty, h).await.unwrap();
    assert_eq!(offsets(&page.publications), vec![1, 2]);
    assert_eq!(page.position, StreamPosition { offset: 2, epoch: fresh.epoch });
    let made_up =
        HistoryQuery { since: Some(StreamPosition { offset: 0, epoch: "x".into() }), ..Default::default() };
    assert_eq!(b.history("never", made_up, h).await.unwrap_err(), EngineError::UnrecoverablePosition);

    // History outlives the brokers: a new node reads it and continues the offsets.
    let url = hubbub_testservices::nats().unwrap();
    let prefix = a.prefix().to_owned();
    drop(b);
    let (c, _) = node(config(&url, &prefix), "n3").await;
    assert_eq!(
        offsets(&c.history("c", HistoryQuery::default(), h).await.unwrap().publications),
        vec![3, 4, 5]
    );
    assert_eq!(a.publish("c", publication(6), h).await.unwrap().offset, 6);
    assert_eq!(c.publish("c", publication(7), h).await.unwrap().offset, 7);

    // Removing history keeps the position.
    c.remove_history("c").await.unwrap();
    let page = a.history("c", HistoryQuery::default(), h).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, StreamPosition { offset: 7, epoch: empty.epoch.clone() });
    assert!(a.history("c", since(7), h).await.unwrap().publications.is_empty());
    assert_eq!(a.history("c", since(6), h).await.unwrap_err(), EngineError::UnrecoverablePosition);
    assert_eq!(a.publish("c", publication(8), h).await.unwrap().offset, 8);
    assert_eq!(offsets(&c.history("c", since(7), h).await.unwrap().publications), vec![8]);

    // Expired publications are not read; the position stays.
    let short = HistoryOptions { size: 10, ttl: Duration::from_millis(300) };
    a.publish("t", publication(1), short).await.unwrap();
    let top = a.publish("t", publication(2), short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let page = c.history("t", HistoryQuery::default(), short).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, top);
    let q = |offset| HistoryQuery {
        since: Some(StreamPosition { offset, epoch: top.epoch.clone() }),
        ..Default::default()
    };
    assert!(c.history("t", q(2), short).await.is_ok());
    assert_eq!(c.history("t", q(1), short).await.unwrap_err(), EngineError::UnrecoverablePosition);
    a.destroy().await.unwrap();
}

#[tokio::test]
async fn long_history_is_trimmed_and_read_in_pages() {
    let Some(((a, _), (b, _))) = two_nodes().await else { return };
    let h = HistoryOptions { size: 50, ttl: Duration::from_secs(60) };
    for n in 1..=200 {
        a.publish("long", publication(n), h).await.unwrap();
    }
    let page = b.history("long", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(offsets(&page.publications), (151..=200).collect::<Vec<_>>());
    let epoch = page.position.epoch;
    let q = HistoryQuery {
        since: Some(StreamPosition { offset: 160, epoch }),
        limit: Some(5),
        ..Default::default()
    };
    assert_eq!(offsets(&b.history("long", q, h).await.unwrap().publications), vec![161, 162, 163, 164, 165]);
    // The subject holds about 1.25 × the history size, not every publication.
    let stored = a.stored_messages("long").await.unwrap();
    assert!((50..=64).contains(&stored), "{stored} messages kept for a history of 50");
    a.destroy().await.unwrap();
}

#[tokio::test]
async fn control_reaches_one_node_or_all() {
    let Some(((a, seen_a), (b, seen_b))) = two_nodes().await else { return };
    a.publish_control(Some("n2"), "to n2".into()).await.unwrap();
    a.publish_control(None, "to all".into()).await.unwrap();
    b.publish_control(Some("n1"), "to n1".into()).await.unwrap();
    wait_for("control on n1", || seen_a.control.lock().unwrap().len() == 2).await;
    wait_for("control on n2", || seen_b.control.lock().unwrap().len() == 2).await;
    // One sender's messages arrive in its order; two senders' interleave.
    let sorted = |seen: &Seen| {
        let mut got = seen.control.lock().unwrap().clone();
        got.sort();
        got
    };
    assert_eq!(sorted(&seen_a), vec![b"to all".to_vec(), b"to n1".to_vec()]);
    assert_eq!(*seen_b.control.lock().unwrap(), vec![b"to n2".to_vec(), b"to all".to_vec()]);
    a.destroy().await.unwrap();
}

#[tokio::test]
async fn presence_across_nodes_and_a_dead_nodes_entries_expire() {
    let Some(url) = hubbub_testservices::nats() else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let short = |url: &str| NatsConfig { presence_ttl: Duration::from_millis(1500), ..config(url, &prefix) };
    let (a, _) = node(short(&url), "n1").await;
    let (b, _) = node(short(&url), "n2").await;
    let channel = "room:1 two";
    a.add(channel, info("u1", "c1")).await.unwrap();
    a.add(channel, info("u1", "c2")).await.unwrap();
    b.add(channel, info("u2", "c3")).await.unwrap();
    b.add("elsewhere", info("u3", "c4")).await.unwrap();
    for node in [&a, &b] {
        let p = node.presence(channel).await.unwrap();
        let mut clients: Vec<_> = p.keys().cloned().collect();
        clients.sort();
        assert_eq!(clients, vec!["c1", "c2", "c3"]);
        assert_eq!(node.stats(channel).await.unwrap(), PresenceStats { num_clients: 3, num_users: 2 });
    }
    b.remove(channel, "c3").await.unwrap();
    assert_eq!(a.stats(channel).await.unwrap(), PresenceStats { num_clients: 2, num_users: 1 });
    assert!(a.presence("nobody here").await.unwrap().is_empty());
    // Entries outlive the TTL while their node refreshes them...
    b.add(channel, info("u2", "c3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(a.stats(channel).await.unwrap().num_clients, 3);
    // ... and a dead node's go within it.
    b.shutdown();
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = a.presence(channel).await.unwrap();
        if !p.contains_key("c3") {
            assert!(p.contains_key("c1") && p.contains_key("c2"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dead node's entry did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.destroy().await.unwrap();
}
