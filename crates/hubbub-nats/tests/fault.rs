//! The NATS engine when its server goes away: a NATS server of this test's own (never the
//! machine's shared one) is killed and started again on the same port and store.

use hubbub_core::engine::{
    Broker, BrokerEvents, EngineConfig, EngineError, HistoryOptions, HistoryQuery, PresenceStore,
};
use hubbub_nats::{NatsConfig, NatsEngine};
use hubbub_protocol::{json_from_str, ClientInfo, Publication};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Default)]
struct Seen {
    offsets: Mutex<Vec<u64>>,
    resyncs: AtomicUsize,
}

impl BrokerEvents for Seen {
    fn on_publication(&self, _: &str, p: Publication) {
        self.offsets.lock().unwrap().push(p.offset);
    }
    fn on_join(&self, _: &str, _: ClientInfo) {}
    fn on_leave(&self, _: &str, _: ClientInfo) {}
    fn on_control(&self, _: &[u8]) {}
    fn on_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `nats-server -js` on `port` with its store in `dir`, once it accepts connections.
async fn nats_server(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server (Debian package nats-server) must be installed for this test");
    let url = format!("nats://127.0.0.1:{port}");
    wait_for("nats-server to listen", || hubbub_testservices::reachable(&url)).await;
    child
}

fn publication(n: u64) -> Publication {
    Publication { data: json_from_str(&n.to_string()).unwrap(), info: None, offset: 0, tags: None }
}

/// Runs `op`, which must fail with `Unavailable` at once (not after a timeout's wait).
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, EngineError>>,
) {
    let started = Instant::now();
    let result =
        tokio::time::timeout(Duration::from_secs(10), op).await.unwrap_or_else(|_| panic!("{what} hung"));
    assert!(matches!(result, Err(EngineError::Unavailable(_))), "{what}: {result:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{what} took {:?}", started.elapsed());
}

#[tokio::test]
async fn nats_going_away_fails_fast_and_comes_back_with_a_resync() {
    if hubbub_testservices::nats().is_none() {
        return; // no NATS on this machine: no nats-server binary either
    }
    let dir = tempfile::tempdir().unwrap();
    let port = hubbub_testservices::free_port();
    let mut server = nats_server(port, dir.path()).await;
    let url = format!("nats://127.0.0.1:{port}");
    let engine = EngineConfig { nats_url: url.clone(), prefix: "fault".into(), ..Default::default() };
    let config = NatsConfig::from_engine(&engine, Duration::from_secs(60));
    let h = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };
    let a = NatsEngine::connect(config.clone()).await.unwrap();
    let b = NatsEngine::connect(config).await.unwrap();
    let (seen_a, seen_b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    a.start("n1", seen_a.clone()).await.unwrap();
    b.start("n2", seen_b.clone()).await.unwrap();
    b.subscribe("c").await.unwrap();
    for n in 1..=3 {
        assert_eq!(a.publish("c", publication(n), h).await.unwrap().offset, n);
    }
    wait_for("the first publications", || seen_b.offsets.lock().unwrap().len() == 3).await;

    server.kill().await.unwrap();
    // The client notices the closed connection; from then on every command fails at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.publish_control(None, "x".into()).await.is_ok()
        || b.publish_control(None, "x".into()).await.is_ok()
    {
        assert!(Instant::now() < deadline, "the engines did not notice the server is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fails_fast("publish", a.publish("c", publication(4), h)).await;
    fails_fast("history", b.history("c", HistoryQuery::default(), h)).await;
    fails_fast("subscribe", b.subscribe("other")).await;
    fails_fast(
        "presence add",
        a.add("c", ClientInfo { user: "u".into(), client: "c1".into(), conn_info: None, chan_info: None }),
    )
    .await;
    fails_fast("presence", a.presence("c")).await;
    fails_fast(
        "join",
        a.publish_join(
            "c",
            ClientInfo { user: "u".into(), client: "c1".into(), conn_info: None, chan_info: None },
        ),
    )
    .await;
    assert_eq!(seen_b.resyncs.load(Ordering::SeqCst), 0);

    // Back on the same port and store: the clients reconnect, subscribe again and resync.
    let _server = nats_server(port, dir.path()).await;
    wait_for("a resync on both nodes", || {
        seen_a.resyncs.load(Ordering::SeqCst) == 1 && seen_b.resyncs.load(Ordering::SeqCst) == 1
    })
    .await;
    // History survived the server's restart and the offsets continue; fan-out works again.
    assert_eq!(a.publish("c", publication(4), h).await.unwrap().offset, 4);
    wait_for("publication 4 on b", || seen_b.offsets.lock().unwrap().len() == 4).await;
    assert_eq!(*seen_b.offsets.lock().unwrap(), vec![1, 2, 3, 4]);
    let page = b.history("c", HistoryQuery::default(), h).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // One resync per outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen_b.resyncs.load(Ordering::SeqCst), 1);

    // Back without its store: the engine makes its stream and buckets again; the channel
    // starts over in a new epoch, and a position in the old one is unrecoverable.
    drop(_server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.publish_control(None, "x".into()).await.is_ok() {
        assert!(Instant::now() < deadline, "the engine did not notice the server is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let empty_dir = tempfile::tempdir().unwrap();
    let _server = nats_server(port, empty_dir.path()).await;
    wait_for("a second resync", || {
        seen_a.resyncs.load(Ordering::SeqCst) == 2 && seen_b.resyncs.load(Ordering::SeqCst) == 2
    })
    .await;
    let fresh = a.publish("c", publication(1), h).await.unwrap();
    assert_eq!(fresh.offset, 1);
    assert_ne!(fresh.epoch, page.position.epoch);
    wait_for("the new stream's publication on b", || seen_b.offsets.lock().unwrap().len() == 5).await;
    let old = HistoryQuery { since: Some(page.position.clone()), ..Default::default() };
    assert_eq!(b.history("c", old, h).await.unwrap_err(), EngineError::UnrecoverablePosition);
}
