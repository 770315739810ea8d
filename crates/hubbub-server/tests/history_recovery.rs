//! History (limit / since / reverse / pruning) and recovery on subscribe.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Publish `n` messages `{"n": i}` via the API; returns the epoch (checked constant) and
/// asserts the offsets are consecutive starting after `start`.
async fn publish_n(api: &Api, channel: &str, start: i64, n: i64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let r = api.publish(channel, json!({"n": start + i})).await;
        assert_eq!(num(&r, "offset"), start + i, "API publish offset: {r}");
        let e = r["epoch"].as_str().unwrap_or_else(|| panic!("API publish without epoch: {r}")).to_string();
        assert!(!e.is_empty(), "empty epoch: {r}");
        if epoch.is_empty() {
            epoch = e;
        } else {
            assert_eq!(epoch, e, "epoch changed between publications");
        }
    }
    epoch
}

fn datas(pubs: &[Value]) -> Vec<i64> {
    pubs.iter().map(|p| p["data"]["n"].as_i64().unwrap_or(-1)).collect()
}

#[tokio::test]
async fn history_limit_since_reverse() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("h").await;
    let e = publish_n(&api, "h", 0, 5).await;

    // Position only.
    for params in [json!({"channel": "h"}), json!({"channel": "h", "limit": 0})] {
        let r = c.ok("history", params.clone()).await;
        assert!(arr(&r, "publications").is_empty(), "{params} → {r}");
        assert_eq!(num(&r, "offset"), 5, "{params} → {r}");
        assert_eq!(r["epoch"], json!(e), "{params} → {r}");
    }
    // All kept.
    let r = c.ok("history", json!({"channel": "h", "limit": -1})).await;
    let pubs = arr(&r, "publications");
    assert_eq!(offsets(&pubs), vec![1, 2, 3, 4, 5], "{r}");
    assert_eq!(datas(&pubs), vec![1, 2, 3, 4, 5], "{r}");
    assert_eq!(num(&r, "offset"), 5);
    assert_eq!(r["epoch"], json!(e));
    // Limited, forward: the oldest ones.
    let r = c.ok("history", json!({"channel": "h", "limit": 2})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![1, 2], "{r}");
    // Reverse: newest first.
    let r = c.ok("history", json!({"channel": "h", "limit": 2, "reverse": true})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![5, 4], "{r}");
    let r = c.ok("history", json!({"channel": "h", "limit": -1, "reverse": true})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![5, 4, 3, 2, 1], "{r}");
    // Since.
    let r = c.ok("history", json!({"channel": "h", "limit": -1, "since": {"offset": 2, "epoch": e}})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![3, 4, 5], "{r}");
    let r = c.ok("history", json!({"channel": "h", "limit": 1, "since": {"offset": 2, "epoch": e}})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![3], "{r}");
    let r = c.ok("history", json!({"channel": "h", "limit": -1, "since": {"offset": 5, "epoch": e}})).await;
    assert!(arr(&r, "publications").is_empty(), "{r}");
    assert_eq!(num(&r, "offset"), 5);
    // Wrong epoch.
    assert_eq!(
        c.err(
            "history",
            json!({"channel": "h", "limit": -1, "since": {"offset": 2, "epoch": "not-the-epoch"}})
        )
        .await,
        112
    );
}

#[tokio::test]
async fn history_pruned_by_size() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("small:h").await;
    let e = publish_n(&api, "small:h", 0, 6).await;
    let r = c.ok("history", json!({"channel": "small:h", "limit": -1})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![4, 5, 6], "history_size=3: {r}");
    assert_eq!(num(&r, "offset"), 6);
    // Since an offset that is still covered.
    let r =
        c.ok("history", json!({"channel": "small:h", "limit": -1, "since": {"offset": 3, "epoch": e}})).await;
    assert_eq!(offsets(&arr(&r, "publications")), vec![4, 5, 6], "{r}");
    // Since a pruned offset.
    assert_eq!(
        c.err("history", json!({"channel": "small:h", "limit": -1, "since": {"offset": 1, "epoch": e}}))
            .await,
        112
    );
}

#[tokio::test]
async fn history_errors() {
    let srv = Server::new();
    let mut c = srv.user("1").await;
    c.subscribe("nohist:x").await;
    assert_eq!(c.err("history", json!({"channel": "nohist:x", "limit": -1})).await, 108);
    // allow_history_for_subscriber = false → not allowed.
    c.subscribe("noperm:x").await;
    assert_eq!(c.err("history", json!({"channel": "noperm:x", "limit": -1})).await, 103);
    assert_eq!(c.err("history", json!({"channel": "nosuchns:x"})).await, 102);
}

#[tokio::test]
async fn recovery_after_reconnect() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("1").await;
    let r = a.subscribe("r").await;
    let epoch = r["epoch"].as_str().expect("epoch").to_string();
    publish_n(&api, "r", 0, 2).await;
    let p1 = a.expect_push("r", "pub").await;
    let p2 = a.expect_push("r", "pub").await;
    assert_eq!((num(&p1, "offset"), num(&p2, "offset")), (1, 2));
    a.close_now().await;
    drop(a);

    publish_n(&api, "r", 2, 3).await;

    let mut b = srv.user("1").await;
    let r = b.subscribe_with(json!({"channel": "r", "recover": true, "offset": 2, "epoch": epoch})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(r["was_recovering"], json!(true), "{r}");
    assert_eq!(r["recoverable"], json!(true), "{r}");
    assert_eq!(r["epoch"], json!(epoch), "{r}");
    assert_eq!(num(&r, "offset"), 5, "{r}");
    let pubs = arr(&r, "publications");
    assert_eq!(offsets(&pubs), vec![3, 4, 5], "{r}");
    assert_eq!(datas(&pubs), vec![3, 4, 5], "{r}");

    // No duplicates as pushes; live publications continue from 6.
    api.publish("r", json!({"n": 6})).await;
    let p = b.expect_push("r", "pub").await;
    assert_eq!(num(&p, "offset"), 6, "first live push after recovery: {p}");
    b.drain_for(Duration::from_millis(200)).await;
    assert!(
        !b.pushes.iter().any(|p| p["push"].get("pub").is_some()),
        "extra publications after recovery: {:?}",
        b.pushes
    );
}

#[tokio::test]
async fn recovery_when_up_to_date() {
    let srv = Server::new();
    let api = srv.api();
    let e = publish_n(&api, "r", 0, 3).await;
    let mut c = srv.user("1").await;
    let r = c.subscribe_with(json!({"channel": "r", "recover": true, "offset": 3, "epoch": e})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");
    assert_eq!(num(&r, "offset"), 3);
}

#[tokio::test]
async fn recovery_with_wrong_epoch_is_not_recovered() {
    let srv = Server::new();
    let api = srv.api();
    publish_n(&api, "r", 0, 3).await;
    let mut c = srv.user("1").await;
    let r =
        c.subscribe_with(json!({"channel": "r", "recover": true, "offset": 1, "epoch": "bogus-epoch"})).await;
    assert!(!flag(&r, "recovered"), "wrong epoch must give recovered:false: {r}");
    assert!(arr(&r, "publications").is_empty(), "no publications on failed recovery: {r}");
    assert_eq!(r["was_recovering"], json!(true), "{r}");
    assert_eq!(num(&r, "offset"), 3, "current position: {r}");
    assert!(r["epoch"].as_str().map(|e| e != "bogus-epoch").unwrap_or(false), "{r}");
}

#[tokio::test]
async fn recovery_from_pruned_offset_is_not_recovered() {
    let srv = Server::new();
    let api = srv.api();
    let e = publish_n(&api, "small:r", 0, 6).await;
    let mut c = srv.user("1").await;
    let r = c.subscribe_with(json!({"channel": "small:r", "recover": true, "offset": 1, "epoch": e})).await;
    assert!(!flag(&r, "recovered"), "pruned history must give recovered:false: {r}");
    assert!(arr(&r, "publications").is_empty(), "{r}");
    assert_eq!(num(&r, "offset"), 6, "{r}");
    // The boundary case still recovers: offset 3 → 4,5,6 are all kept.
    let mut c2 = srv.user("1").await;
    let r = c2.subscribe_with(json!({"channel": "small:r", "recover": true, "offset": 3, "epoch": e})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(offsets(&arr(&r, "publications")), vec![4, 5, 6], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_during_concurrent_publishing_is_in_order_without_duplicates() {
    let srv = Server::new();
    let api = srv.api();
    let e = publish_n(&api, "big:live", 0, 20).await;
    const LAST: i64 = 120;
    let publisher = {
        let api = srv.api();
        tokio::spawn(async move {
            for i in 21..=LAST {
                let r = api.publish("big:live", json!({"n": i})).await;
                assert_eq!(num(&r, "offset"), i, "{r}");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut c = srv.user("1").await;
    let r = c.subscribe_with(json!({"channel": "big:live", "recover": true, "offset": 20, "epoch": e})).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    let mut seen: Vec<i64> = offsets(&arr(&r, "publications"));
    let mut data: Vec<i64> = datas(&arr(&r, "publications"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.last().copied().unwrap_or(20) < LAST && std::time::Instant::now() < deadline {
        match c
            .push_where(Duration::from_secs(5), |p| {
                p["push"]["channel"] == json!("big:live") && p["push"].get("pub").is_some()
            })
            .await
        {
            Some(p) => {
                seen.push(num(&p["push"]["pub"], "offset"));
                data.push(p["push"]["pub"]["data"]["n"].as_i64().unwrap_or(-1));
            }
            None => break,
        }
    }
    tokio::time::timeout(Duration::from_secs(20), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher failed");
    c.drain_for(Duration::from_millis(200)).await;
    for p in c.pushes.iter().filter(|p| p["push"].get("pub").is_some()) {
        seen.push(num(&p["push"]["pub"], "offset"));
    }
    let expected: Vec<i64> = (21..=LAST).collect();
    assert_eq!(seen, expected, "recovered + live offsets must be 21..={LAST} exactly once, in order");
    assert_eq!(data, expected, "data must match offsets");
}

#[tokio::test]
async fn history_remove_via_api() {
    let srv = Server::new();
    let api = srv.api();
    publish_n(&api, "hr", 0, 3).await;
    let r = api.ok("history_remove", json!({"channel": "hr"})).await;
    assert_eq!(r, json!({}));
    let h = api.ok("history", json!({"channel": "hr", "limit": -1})).await;
    assert!(arr(&h, "publications").is_empty(), "history not removed: {h}");
}

#[tokio::test]
async fn api_history_matches_client_history() {
    let srv = Server::new();
    let api = srv.api();
    let e = publish_n(&api, "ah", 0, 4).await;
    let h = api.ok("history", json!({"channel": "ah", "limit": -1})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![1, 2, 3, 4], "{h}");
    assert_eq!(datas(&arr(&h, "publications")), vec![1, 2, 3, 4], "{h}");
    assert_eq!(num(&h, "offset"), 4);
    assert_eq!(h["epoch"], json!(e));
    let h = api.ok("history", json!({"channel": "ah", "limit": 2, "reverse": true})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![4, 3], "{h}");
    let h =
        api.ok("history", json!({"channel": "ah", "limit": -1, "since": {"offset": 2, "epoch": e}})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![3, 4], "{h}");
    let h = api.ok("history", json!({"channel": "ah"})).await;
    assert!(arr(&h, "publications").is_empty(), "no limit → position only: {h}");
    assert_eq!(num(&h, "offset"), 4);
    let (_st, code) =
        api.err("history", json!({"channel": "ah", "limit": -1, "since": {"offset": 1, "epoch": "x"}})).await;
    assert_eq!(code, 112);
}

#[tokio::test]
async fn history_ttl_expires_publications() {
    let srv = Server::builder().ns(Ns::new("ttl").set("history_ttl", "\"1s\"")).start();
    let api = srv.api();
    publish_n(&api, "ttl:x", 0, 2).await;
    let h = api.ok("history", json!({"channel": "ttl:x", "limit": -1})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![1, 2], "{h}");
    let expired = eventually(Duration::from_secs(6), || {
        let api = srv.api();
        async move {
            let h = api.ok("history", json!({"channel": "ttl:x", "limit": -1})).await;
            arr(&h, "publications").is_empty().then_some(())
        }
    })
    .await;
    assert!(expired.is_some(), "publications still in history long after history_ttl=1s");
}

/// Issue 10, finding 8: a recovery larger than a connection's queue budget, while another
/// channel keeps the connection busy, is sent in pieces (the reply, then publication pushes,
/// then the live ones), never answered by a slow-consumer disconnect (3008). The client
/// reads through a small socket buffer, so the busy channel's pushes wait in its queue when
/// the subscribe reply is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backlog_recovers_in_pieces_while_another_channel_is_busy() {
    const MISSED: i64 = 800;
    const LIVE: i64 = 50;
    let srv = Server::new();
    let api = srv.api();
    let channel = "big:backlog";
    let mut before = srv.user("1").await;
    let r = before.subscribe(channel).await;
    let epoch = r["epoch"].as_str().expect("epoch").to_owned();
    before.close_now().await;

    // 800 publications of ~1.8 KB missed: 1.4 MB, over the 1 MiB queue.
    let text = "y".repeat(1800);
    let lanes = (0..4).map(|lane| {
        let (api, text) = (&api, &text);
        async move {
            for n in (0..MISSED / 4).map(|i| i * 4 + lane) {
                api.publish(channel, json!({ "n": n, "text": text })).await;
            }
        }
    });
    futures_util::future::join_all(lanes).await;

    // Another channel keeps publishing while the client recovers.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let busy_publisher = tokio::spawn({
        let (api, busy) = (srv.api(), busy.clone());
        async move {
            let filler = "z".repeat(2000);
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                api.publish("busy", json!({ "filler": filler })).await;
            }
        }
    });
    let mut c = Client::open_small_rcvbuf(&srv.addr, &srv.ws_url(), 8192).await;
    c.connect(&token("1")).await;
    c.subscribe("busy").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = c
        .send_cmd("subscribe", json!({"channel": channel, "recover": true, "offset": 0, "epoch": epoch}))
        .await;
    // Live publications while the backlog is still being sent: they come after it, once.
    for n in 0..LIVE {
        api.publish(channel, json!({ "n": MISSED + n })).await;
    }
    let reply = c.reply_within(id, Duration::from_secs(15)).await;
    let result =
        reply.get("subscribe").unwrap_or_else(|| panic!("subscribe failed: {reply}; close {:?}", c.close));
    assert_eq!(result["recovered"], json!(true), "{result}");
    let in_reply = offsets(&arr(result, "publications"));
    assert!(in_reply.len() < MISSED as usize, "the reply carries what fits, not {}", in_reply.len());
    let mut seen = in_reply;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < (MISSED + LIVE) as usize && std::time::Instant::now() < deadline {
        match c.push_where(Duration::from_secs(5), |p| p["push"]["channel"] == json!(channel)).await {
            Some(p) => seen.push(num(&p["push"]["pub"], "offset")),
            None => break,
        }
        c.pushes.retain(|p| p["push"]["channel"] != json!("busy"));
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    busy_publisher.await.unwrap();
    assert_eq!(c.close, None, "the recovering client was disconnected");
    assert_eq!(seen, (1..=MISSED + LIVE).collect::<Vec<_>>(), "every publication once, in order");
    assert!(c.still_open_after(QUIET).await, "connection closed after the recovery: {:?}", c.close);
}
