//! The memory engine keeps channel streams in `data_dir` (`engine.persist`): the real binary
//! is stopped (SIGTERM, or SIGKILL) and started again on the same data dir, and clients
//! recover what they missed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array().map(|a| a.iter().map(|p| num(p, "offset")).collect()).unwrap_or_default()
}

fn datas(pubs: &Value) -> Vec<u64> {
    pubs.as_array().map(|a| a.iter().map(|p| num(&p["data"], "n")).collect()).unwrap_or_default()
}

/// Publishes `{"n": from..to}` through the server API; returns the last position.
async fn publish_range(api: &Api, channel: &str, from: u64, to: u64) -> (u64, String) {
    let mut last = (0, String::new());
    for n in from..to {
        let r = api.publish(channel, json!({"n": n})).await;
        last = (num(&r, "offset"), r["epoch"].as_str().unwrap_or_default().to_owned());
    }
    last
}

fn with_engine(builder: Builder, engine: &str) -> Builder {
    let mut builder = builder;
    builder.extra_top.push_str(&format!("\n[engine]\n{engine}\n"));
    builder
}

#[tokio::test]
async fn a_graceful_restart_keeps_every_stream_and_clients_recover() {
    let mut srv = Server::builder().start();
    let api = srv.api();
    // A client that saw the first 10 of "news", and one positioned on a channel that is
    // still empty.
    let mut a = srv.user("1").await;
    let r = a.subscribe("news").await;
    let epoch = r["epoch"].as_str().expect("epoch").to_owned();
    let empty = a.subscribe("later").await;
    publish_range(&api, "news", 1, 11).await;
    for n in 1..=10 {
        assert_eq!(num(&a.expect_push("news", "pub").await, "offset"), n);
    }
    a.close_now().await;
    drop(a);
    publish_range(&api, "news", 11, 51).await;
    // Many channels, as after a connect storm.
    for c in 0..50 {
        publish_range(&api, &format!("chat:c{c}"), 1, 4).await;
    }

    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "no clean exit");
    srv.restart();
    let api = srv.api();

    let mut b = srv.user("1").await;
    let r = b.subscribe_with(json!({"channel": "news", "recover": true, "offset": 10, "epoch": epoch})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(r["epoch"], json!(epoch), "{r}");
    assert_eq!(offsets(&r["publications"]), (11..=50).collect::<Vec<_>>(), "{r}");
    assert_eq!(datas(&r["publications"]), (11..=50).collect::<Vec<_>>(), "{r}");
    // The stream goes on: the next publication is 51, in the same epoch, live.
    let (offset, e) = publish_range(&api, "news", 51, 52).await;
    assert_eq!((offset, e.as_str()), (51, epoch.as_str()));
    assert_eq!(num(&b.expect_push("news", "pub").await, "offset"), 51);
    // The empty channel's position still matches: its first publications are recovered.
    publish_range(&api, "later", 1, 3).await;
    let r = b
        .subscribe_with(json!({"channel": "later", "recover": true, "offset": 0, "epoch": empty["epoch"]}))
        .await;
    assert_eq!((r["recovered"].clone(), offsets(&r["publications"])), (json!(true), vec![1, 2]), "{r}");
    for c in 0..50 {
        let h = api.ok("history", json!({"channel": format!("chat:c{c}"), "limit": -1})).await;
        assert_eq!(offsets(&h["publications"]), vec![1, 2, 3], "chat:c{c}: {h}");
    }
    assert!(!srv.stderr().contains("not closed cleanly"), "{}", srv.stderr());
}

#[tokio::test]
async fn after_sigkill_every_acknowledged_durable_publish_is_there() {
    // An hour between syncs: only the durable publishes' own syncs make them durable.
    let builder = with_engine(Server::builder(), "flush_interval = \"1m\"")
        .ns(Ns::new("safe").set("durable_publish", "true").set("history_size", "100000"));
    let mut srv = builder.start();
    let api = srv.api();
    // Publishers hammer the channel; the server is killed while they do.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (url, acked) = (srv.http_url("/api/publish"), acked.clone());
        tasks.push(tokio::spawn(async move {
            // Not `Api`: a request cut by the kill is the end of this publisher, not a panic.
            let http = http_client();
            for i in 0.. {
                let n = t * 1_000_000 + i;
                let body = json!({"channel": "safe:log", "data": {"n": n}});
                let sent = http.post(&url).header("X-API-Key", API_KEY).json(&body).send();
                let Ok(Ok(resp)) = tokio::time::timeout(T, sent).await else { break };
                let Ok(r) = resp.json::<Value>().await else { break };
                let Some(offset) = r["result"]["offset"].as_u64() else { break };
                acked.lock().unwrap().push((n, offset));
            }
        }));
    }
    drop(api);
    let waited = eventually(Duration::from_secs(10), || {
        let len = acked.lock().unwrap().len();
        async move { (len >= 300).then_some(()) }
    })
    .await;
    assert!(waited.is_some(), "publishes were not acknowledged");
    srv.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let acked = acked.lock().unwrap().clone();

    srv.restart();
    let h = srv.api().ok("history", json!({"channel": "safe:log", "limit": -1})).await;
    let kept: std::collections::HashMap<u64, u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (num(p, "offset"), num(&p["data"], "n")))
        .collect();
    for (n, offset) in &acked {
        assert_eq!(kept.get(offset), Some(n), "acknowledged publish {n} at offset {offset} lost");
    }
    assert!(srv.stderr().contains("not closed cleanly"), "{}", srv.stderr());
}

#[tokio::test]
async fn after_sigkill_what_is_older_than_the_flush_interval_is_there() {
    let mut srv = with_engine(Server::builder(), "flush_interval = \"100ms\"").start();
    let api = srv.api();
    let mut a = srv.user("1").await;
    let r = a.subscribe("feed").await;
    let epoch = r["epoch"].as_str().expect("epoch").to_owned();
    publish_range(&api, "feed", 1, 5).await;
    for n in 1..=4 {
        assert_eq!(num(&a.expect_push("feed", "pub").await, "offset"), n);
    }
    a.close_now().await;
    drop(a);
    publish_range(&api, "feed", 5, 21).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    srv.kill9();

    srv.restart();
    let api = srv.api();
    let mut b = srv.user("1").await;
    let r = b.subscribe_with(json!({"channel": "feed", "recover": true, "offset": 4, "epoch": epoch})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(datas(&r["publications"]), (5..=20).collect::<Vec<_>>(), "{r}");
    // What comes next never reuses an offset a client might have seen before the crash.
    let (offset, e) = publish_range(&api, "feed", 21, 22).await;
    assert_eq!(e, epoch);
    assert!(offset > 20 + 1000, "offset {offset} after a crash");
    let p = b.expect_push("feed", "pub").await;
    assert_eq!(num(&p, "offset"), offset);
}

#[tokio::test]
async fn without_persist_a_restart_starts_over() {
    let mut srv = with_engine(Server::builder(), "persist = false").start();
    let (_, epoch) = publish_range(&srv.api(), "news", 1, 4).await;
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(15)).is_some());
    srv.restart();
    let h = srv.api().ok("history", json!({"channel": "news", "limit": -1})).await;
    assert_eq!(offsets(&h["publications"]), Vec::<u64>::new(), "{h}");
    assert_ne!(h["epoch"], json!(epoch), "{h}");
    assert!(!srv.dir.path().join("data/streams.log").exists());
}
