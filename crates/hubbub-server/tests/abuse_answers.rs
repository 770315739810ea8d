//! Answers are bounded in bytes, not only in count (issue 10, finding 4): a channel or a room
//! filled with large messages must never produce an answer larger than
//! `client.max_answer_bytes` (by default half of a connection's queue budget), whoever asks
//! and however (`history` with `limit: -1`, `GET /api/poll?since=0`, the server API's
//! `history`, the chat's REST pages). What does not fit is paged, and paging reaches every
//! message, in order, none lost; many readers at once keep the server's memory flat.
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The default `client.max_answer_bytes`.
const CAP: usize = 512 * 1024;
/// An answer's own fields around its publications (ids, epoch, offset, brackets).
const ENVELOPE: usize = 1024;
/// Messages the channel is filled with, and their size: 2.4 MB in all, five answers' worth.
const MESSAGES: usize = 600;
const TEXT: usize = 4000;
/// Parallel readers hammering the server.
const READERS: usize = 6;

fn text(n: usize) -> String {
    format!("{n:05}{}", "x".repeat(TEXT - 5))
}

/// Publishes the messages through the server API, four requests in flight at a time (the
/// broker assigns the offsets 1..=MESSAGES).
async fn fill_channel(api: &Api, channel: &str) {
    let lanes = (0..4).map(|lane| async move {
        for n in (1..=MESSAGES).filter(|n| n % 4 == lane) {
            api.publish(channel, json!({ "n": n, "text": text(n) })).await;
        }
    });
    futures_util::future::join_all(lanes).await;
}

/// Pages through the channel's history over one WebSocket connection: every answer within
/// the cap, and the offsets 1..=MESSAGES in order.
async fn page_history(srv: &Server, user: &str, channel: &str) {
    let mut c = srv.user(user).await;
    c.subscribe(channel).await;
    let first = c.ok("history", json!({ "channel": channel, "limit": -1 })).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let mut seen: Vec<i64> = Vec::new();
    let mut answer = first;
    loop {
        let size = answer.to_string().len();
        assert!(size <= CAP + ENVELOPE, "a history answer of {size} bytes is over the cap");
        let pubs = arr(&answer, "publications");
        assert!(!pubs.is_empty() || seen.len() == MESSAGES, "an empty page before the end");
        seen.extend(offsets(&pubs));
        if seen.len() >= MESSAGES {
            break;
        }
        let since = *seen.last().unwrap();
        answer = c
            .ok(
                "history",
                json!({ "channel": channel, "limit": -1, "since": {"offset": since, "epoch": epoch} }),
            )
            .await;
    }
    assert_eq!(seen, (1..=MESSAGES as i64).collect::<Vec<_>>(), "history paging lost or reordered");
}

/// Pages through the channel with `GET /api/poll`, from `since=0`, each answer within the cap.
async fn page_polls(http: &reqwest::Client, srv: &Server, user: &str, channel: &str) {
    let mut since = 0i64;
    let mut seen: Vec<i64> = Vec::new();
    while seen.len() < MESSAGES {
        let url = srv.http_url(&format!("/api/poll?channel={channel}&since={since}"));
        let res = http.get(url).bearer_auth(token(user)).send().await.expect("poll");
        assert_eq!(res.status().as_u16(), 200);
        let body = res.bytes().await.expect("poll body");
        assert!(body.len() <= CAP + ENVELOPE, "a poll answer of {} bytes is over the cap", body.len());
        let v: Value = serde_json::from_slice(&body).expect("poll JSON");
        let pubs = arr(&v, "publications");
        assert!(!pubs.is_empty(), "an empty poll before the end, at {since}");
        seen.extend(offsets(&pubs));
        since = num(&v, "offset");
        assert_eq!(since, *seen.last().unwrap(), "the poll's offset is its last publication");
    }
    assert_eq!(seen, (1..=MESSAGES as i64).collect::<Vec<_>>(), "poll paging lost or reordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_poll_and_api_answers_are_bounded_and_page_through_everything() {
    let srv = Server::new();
    let api = srv.api();
    let channel = "big:flood";
    fill_channel(&api, channel).await;
    let rss_filled = srv.rss_kib();

    // The server API's history, everything at once: bounded too.
    let (status, body) = api
        .raw("history", &json!({"channel": channel, "limit": -1}).to_string(), &[("X-API-Key", API_KEY)])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.len() <= CAP + ENVELOPE, "an API history answer of {} bytes is over the cap", body.len());

    // Readers in parallel, over WebSocket and by polling, each paging through everything.
    let http = http_client();
    let mut rss_peak = rss_filled;
    let readers = async {
        let mut tasks = Vec::new();
        for i in 0..READERS {
            let (srv, http) = (&srv, &http);
            tasks.push(async move {
                let user = format!("reader{i}");
                page_history(srv, &user, channel).await;
                page_polls(http, srv, &user, channel).await;
            });
        }
        futures_util::future::join_all(tasks).await;
    };
    tokio::pin!(readers);
    loop {
        tokio::select! {
            _ = &mut readers => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => rss_peak = rss_peak.max(srv.rss_kib()),
        }
    }
    // Another client still works.
    let mut other = srv.user("other").await;
    other.subscribe(channel).await;
    other.ok("history", json!({ "channel": channel, "limit": 1 })).await;

    // Six readers of 2.4 MB each, at most 0.5 MB per answer: memory grows by a few answers,
    // not by whole copies of the channel per reader.
    let grown = rss_peak.saturating_sub(rss_filled);
    eprintln!("RSS filled {rss_filled} KiB, peak {rss_peak} KiB (+{grown} KiB)");
    assert!(grown < 48 * 1024, "{READERS} readers grew the server by {grown} KiB");
}

#[tokio::test]
async fn history_limit_is_capped_in_count() {
    let srv = Server::builder().client("max_history_limit", "10").start();
    let api = srv.api();
    for n in 1..=25 {
        api.publish("big:count", json!({ "n": n })).await;
    }
    let mut c = srv.user("1").await;
    c.subscribe("big:count").await;
    for limit in [-1, 1000, i32::MAX as i64] {
        let r = c.ok("history", json!({ "channel": "big:count", "limit": limit })).await;
        assert_eq!(offsets(&arr(&r, "publications")), (1..=10).collect::<Vec<_>>(), "limit {limit}: {r}");
    }
}

#[tokio::test]
async fn answer_cap_is_validated_against_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::builder()
        .client("queue_max_bytes", "65536")
        .client("max_answer_bytes", "131072")
        .render(dir.path());
    let path = write_config(dir.path(), &config);
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&path);
    let (status, _, stderr) = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(!status.success());
    assert!(stderr.contains("client.max_answer_bytes"), "the error names the key: {stderr}");
}

/// A chat room filled with 600 messages of 4,000 characters (through the REST API), then
/// read by several members at once: REST message pages, polls of the room's channel and
/// its history over WebSocket, each within the cap, and paging reaches every event in order.
/// A member who recovers the whole room on subscribe gets it in pieces, without 3008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_answers_are_bounded_and_page_through_everything() {
    let srv = Server::builder().chat("sends_per_second", "100000.0").chat("send_burst", "100000").start();
    let http = http_client();
    let url = |path: &str| srv.http_url(path);
    let signup = |name: &'static str| {
        let (http, url) = (&http, url(""));
        async move {
            let res = http
                .post(format!("{url}/api/auth/signup"))
                .json(&json!({"username": name, "password": "correct horse battery"}))
                .send()
                .await
                .expect("signup");
            assert_eq!(res.status().as_u16(), 201);
            let v: Value = res.json().await.unwrap();
            (
                v["user"]["username"].as_str().unwrap().to_owned(),
                v["access_token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (_, owner) = signup("owner").await;
    let res = http.post(url("/api/rooms")).bearer_auth(&owner).json(&json!({"name": "flood"})).send().await;
    let room: Value = res.expect("create room").json().await.unwrap();
    let room = room["id"].as_i64().expect("room id");
    let mut readers = Vec::new();
    for name in ["reader0", "reader1", "reader2", "reader3", "reader4", "reader5"] {
        let (username, token) = signup(name).await;
        let res = http
            .post(url(&format!("/api/rooms/{room}/members")))
            .bearer_auth(&owner)
            .json(&json!({ "username": username }))
            .send()
            .await
            .expect("invite");
        assert_eq!(res.status().as_u16(), 200);
        readers.push(token);
    }
    // Fill: four senders in flight at once.
    let lanes = (0..4).map(|lane| {
        let (http, owner, url) = (&http, &owner, url(&format!("/api/rooms/{room}/messages")));
        async move {
            for n in (1..=MESSAGES).filter(|n| n % 4 == lane) {
                let res = http
                    .post(&url)
                    .bearer_auth(owner)
                    .json(&json!({ "text": text(n), "client_msg_id": format!("m{n}") }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(res.status().as_u16(), 201);
            }
        }
    });
    futures_util::future::join_all(lanes).await;
    let rss_filled = srv.rss_kib();
    let channel = format!("room:{room}");

    let read = |token: String| {
        let (http, srv, channel) = (&http, &srv, channel.clone());
        async move {
            // REST pages, newest first, each asked `before` the oldest of the previous one.
            let mut seqs: Vec<i64> = Vec::new();
            let mut before = String::new();
            loop {
                let path = format!("/api/rooms/{room}/messages?limit=200{before}");
                let res = http.get(srv.http_url(&path)).bearer_auth(&token).send().await.expect("page");
                assert_eq!(res.status().as_u16(), 200);
                let body = res.bytes().await.unwrap();
                assert!(body.len() <= CAP + ENVELOPE, "a page of {} bytes is over the cap", body.len());
                let page: Vec<Value> = serde_json::from_slice(&body).unwrap();
                let Some(first) = page.first() else { break };
                before = format!("&before={}", first["seq"]);
                let page_seqs: Vec<i64> = page.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
                seqs.splice(0..0, page_seqs);
            }
            assert_eq!(seqs.len(), MESSAGES, "REST paging lost messages");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "REST pages out of order");

            // The room's event log by polling, from the start.
            let mut since = 0;
            let mut offsets_seen: Vec<i64> = Vec::new();
            loop {
                let path = format!("/api/poll?channel={channel}&since={since}");
                let res = http.get(srv.http_url(&path)).bearer_auth(&token).send().await.expect("poll");
                assert_eq!(res.status().as_u16(), 200);
                let body = res.bytes().await.unwrap();
                assert!(body.len() <= CAP + ENVELOPE, "a poll of {} bytes is over the cap", body.len());
                let v: Value = serde_json::from_slice(&body).unwrap();
                let pubs = arr(&v, "publications");
                if pubs.is_empty() {
                    break;
                }
                offsets_seen.extend(offsets(&pubs));
                since = num(&v, "offset");
            }
            let last = *offsets_seen.last().unwrap();
            assert_eq!(offsets_seen, (1..=last).collect::<Vec<_>>(), "poll paging lost or reordered events");

            // History over WebSocket, everything at once: one answer within the cap; and a
            // recovery of the whole log, in pieces.
            let mut c = Client::open(&srv.ws_url()).await;
            c.connect(&token).await;
            // Positioned (the room namespace forces it), not recovering: only the epoch.
            let r = c.subscribe_with(json!({"channel": channel})).await;
            let epoch = r["epoch"].as_str().unwrap().to_owned();
            let h = c.ok("history", json!({"channel": channel, "limit": -1})).await;
            let size = h.to_string().len();
            assert!(size <= CAP + ENVELOPE, "a history answer of {size} bytes is over the cap");
            c.ok("unsubscribe", json!({"channel": channel})).await;
            let r = c
                .subscribe_with(json!({"channel": channel, "recover": true, "offset": 0, "epoch": epoch}))
                .await;
            assert_eq!(r["recovered"], json!(true), "{}", r["recovered"]);
            let mut recovered = offsets(&arr(&r, "publications"));
            while recovered.len() < last as usize {
                let p = c
                    // Ephemeral events (presence, typing) have no offset: not part of the log.
                    .push_where(Duration::from_secs(10), |p| {
                        p["push"]["channel"] == json!(channel) && p["push"]["pub"]["offset"].is_u64()
                    })
                    .await
                    .unwrap_or_else(|| {
                        panic!("recovery stopped at {} of {last}: {:?}", recovered.len(), c.close)
                    });
                recovered.push(num(&p["push"]["pub"], "offset"));
            }
            assert_eq!(recovered, (1..=last).collect::<Vec<_>>(), "recovery lost or reordered events");
            assert!(c.close.is_none(), "closed while recovering: {:?}", c.close);
        }
    };
    let mut rss_peak = rss_filled;
    let all = futures_util::future::join_all(readers.into_iter().map(read));
    tokio::pin!(all);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => rss_peak = rss_peak.max(srv.rss_kib()),
        }
    }
    let grown = rss_peak.saturating_sub(rss_filled);
    eprintln!("chat: RSS filled {rss_filled} KiB, peak {rss_peak} KiB (+{grown} KiB)");
    assert!(grown < 64 * 1024, "{READERS} readers grew the server by {grown} KiB");
}
