//! Channel history is memory every token holder can fill: in the default namespace any
//! client may publish to any channel name, and each channel keeps its last publications.
//! `engine.history_max_bytes` and `engine.history_max_streams` bound what all channels keep
//! together; over them the least recently published channels are dropped, and a client that
//! wanted one of them is told `recovered:false`. Reading a channel nobody published to
//! (subscribe, history, poll) keeps nothing at all.

mod common;
use common::*;
use serde_json::{json, Value};

/// RSS is read in KiB.
const MIB: u64 = 1024;

async fn history_stats(api: &Api) -> (u64, u64) {
    let info = api.ok("info", json!({})).await;
    let node = &info["nodes"][0];
    let n = |k: &str| node[k].as_u64().unwrap_or_else(|| panic!("info has no `{k}`: {info}"));
    (n("history_streams"), n("history_bytes"))
}

/// Five connections publish 60 KB payloads to fresh channel names. Without a budget each
/// channel kept its publication for 10 minutes (36 MB here); with a 4 MiB budget the
/// server stays within the budget plus a margin, the channel a client was positioned on
/// is gone (recovered:false), and everyone keeps working.
#[tokio::test]
async fn publishing_to_fresh_channels_stays_within_the_history_budget() {
    let mut builder = Server::builder();
    builder.extra_top = "engine.history_max_bytes = 4194304\n".into();
    let srv = builder.start();
    let api = srv.api();

    // A client positioned on a channel published to before the flood.
    let mut victim = srv.user("victim").await;
    let sub = victim.subscribe("victim-channel").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        api.publish("victim-channel", json!({ "n": n })).await;
    }
    victim.expect_push("victim-channel", "pub").await;
    victim.close_now().await;

    let base = srv.rss_kib();
    let payload = json!({ "blob": "x".repeat(60_000) });
    let mut flooders = Vec::new();
    for f in 0..5 {
        let mut c = srv.user(&format!("flood{f}")).await;
        let payload = payload.clone();
        flooders.push(tokio::spawn(async move {
            for i in 0..120 {
                c.publish(&format!("fresh-{f}-{i}"), payload.clone()).await;
            }
            c
        }));
    }
    for f in flooders {
        f.await.unwrap();
    }
    let grown = srv.rss_kib().saturating_sub(base);
    eprintln!("36 MB published to 600 fresh channels: RSS +{grown} KiB");
    let (streams, bytes) = history_stats(&api).await;
    eprintln!("{streams} streams, {bytes} bytes kept");
    assert!(bytes <= 4 << 20, "history holds {bytes} bytes, over the 4 MiB budget");
    // Budget (4 MiB) plus a margin for the allocator's retained pages and the frames in flight.
    assert!(grown < 20 * MIB, "RSS grew by {grown} KiB with a 4 MiB history budget");

    // The victim's channel was the least recently published: dropped, so not recoverable.
    let mut back = srv.user("victim").await;
    let r = back
        .subscribe_with(json!({"channel": "victim-channel", "recover": true, "offset": 1, "epoch": epoch}))
        .await;
    assert_ne!(r["recovered"], json!(true), "an evicted channel must not claim recovery: {r}");
    assert!(r["publications"].as_array().is_none_or(Vec::is_empty), "{r}");
    assert_ne!(r["epoch"], json!(epoch), "the dropped stream's epoch must not come back: {r}");

    // Everyone keeps working: a new channel still publishes, delivers and keeps history.
    let mut alice = srv.user("alice").await;
    alice.subscribe("after").await;
    api.publish("after", json!({"ok": 1})).await;
    let p = alice.expect_push("after", "pub").await;
    assert_eq!(p["data"], json!({"ok": 1}));
    let h = api.ok("history", json!({"channel": "after", "limit": -1})).await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 1, "{h}");
}

/// `engine.history_max_streams` bounds the number of channels with a stream, however small
/// their publications.
#[tokio::test]
async fn the_number_of_streams_is_bounded() {
    let mut builder = Server::builder();
    builder.extra_top = "engine.history_max_streams = 100\n".into();
    let srv = builder.start();
    let api = srv.api();
    for i in 0..400 {
        api.publish(&format!("many-{i}"), json!(i)).await;
    }
    let (streams, _) = history_stats(&api).await;
    assert!(streams <= 100, "{streams} streams kept with engine.history_max_streams = 100");
    // The newest is kept.
    let h = api.ok("history", json!({"channel": "many-399", "limit": -1})).await;
    assert_eq!(h["publications"][0]["data"], json!(399), "{h}");
}

/// Tens of thousands of reads of channels nobody published to: polls, history and
/// subscriptions. Each used to create a stream kept for 24 hours.
#[tokio::test]
async fn reading_unknown_channels_keeps_nothing() {
    let srv = Server::new();
    let api = srv.api();
    let tok = token("reader");
    let http = http_client();
    let url = srv.http_url("/api/poll");
    let base = srv.rss_kib();

    let mut tasks = Vec::new();
    for t in 0..8 {
        let http = http.clone();
        let url = url.clone();
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1_000 {
                let res = http
                    .get(&url)
                    .query(&[("channel", format!("never-{t}-{i}")), ("since", "0".into())])
                    .bearer_auth(&tok)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["offset"], json!(0), "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..1_500 {
        let h = api.ok("history", json!({"channel": format!("hist-{i}"), "limit": 10})).await;
        assert_eq!(h["offset"].as_u64().unwrap_or(0), 0, "{h}");
    }
    let mut c = srv.user("reader").await;
    for i in 0..500 {
        let ch = format!("sub-{i}");
        c.subscribe(&ch).await;
        c.ok("unsubscribe", json!({ "channel": ch })).await;
    }
    let (streams, bytes) = history_stats(&api).await;
    let grown = srv.rss_kib().saturating_sub(base);
    eprintln!("10,000 reads of unknown channels: {streams} streams, {bytes} bytes, RSS +{grown} KiB");
    assert_eq!((streams, bytes), (0, 0), "reads of unknown channels created streams");
    assert!(grown < 8 * MIB, "RSS grew by {grown} KiB from reads alone");
}

/// A subscriber positioned on a channel that has no stream yet recovers the channel's
/// first publications: the empty channel's epoch is the one its stream is created with.
#[tokio::test]
async fn the_empty_channels_position_recovers_its_first_publications() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("a").await;
    let sub = a.subscribe("born-later").await;
    assert_eq!(sub["offset"].as_u64().unwrap_or(0), 0, "{sub}");
    let epoch = sub["epoch"].as_str().expect("an epoch for the empty channel").to_owned();
    let h = api.ok("history", json!({"channel": "born-later"})).await;
    assert_eq!(h["epoch"], json!(epoch), "two reads of the empty channel disagree: {h}");
    a.close_now().await;

    for n in 1..=2 {
        api.publish("born-later", json!({ "n": n })).await;
    }
    let mut b = srv.user("a").await;
    let r = b
        .subscribe_with(json!({"channel": "born-later", "recover": true, "offset": 0, "epoch": epoch}))
        .await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(r["epoch"], json!(epoch), "{r}");
    let offsets: Vec<u64> =
        r["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![1, 2], "{r}");

    // A made-up epoch at offset 0 is not the empty channel's.
    let mut c = srv.user("c").await;
    let r = c
        .subscribe_with(json!({"channel": "other-empty", "recover": true, "offset": 0, "epoch": "made-up"}))
        .await;
    assert_ne!(r["recovered"], json!(true), "{r}");
}
