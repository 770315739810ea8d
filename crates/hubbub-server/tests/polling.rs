//! Long polling and polling: `GET /api/poll?channel=CH&since=OFFSET&epoch=E&wait=SECONDS`
//! with `Authorization: Bearer <connection token>` (docs/PROTOCOL.md, "Long polling and
//! polling").
//!
//! Each test starts the real `hubbub` binary through `common` (temporary TOML config, killed
//! on drop) with the namespaces below, and polls it over plain HTTP. Every request has a
//! timeout; nothing here can hang.
//!
//! `cargo test -p hubbub-server --test polling -- --nocapture` shows the timings and the
//! memory per held poll.
mod common;

use std::time::{Duration, Instant};

use common::{jwt_with_secret, token, token_exp, Api, Ns, Server, API_KEY};
use serde_json::{json, Value};

/// Bound of any single HTTP request that is not a long poll.
const REQ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// A server (see [`PollServer::start`]), its server API, and the HTTP client the tests poll
/// with.
struct PollServer {
    srv: Server,
    api: Api,
    url: String,
    http: reqwest::Client,
}

impl PollServer {
    /// Namespaces: "" (history 100), `small` (history 3), `bare` (no history); no `[client]`
    /// keys, a 1 s shutdown grace.
    fn start() -> PollServer {
        let mut b = Server::builder().grace("\"1s\"").env("RUST_LOG", "info").env("NO_COLOR", "1");
        b.client.clear();
        b.namespaces = vec![
            Ns::new(""),
            Ns::new("small").set("history_size", "3"),
            Ns::new("bare").set("history_size", "0"),
        ];
        let srv = b.start();
        let api = srv.api();
        let url = srv.http_url("");
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("reqwest client");
        PollServer { srv, api, url, http }
    }

    /// Publishes via the server API; returns (offset, epoch).
    async fn publish(&self, channel: &str, data: Value) -> (u64, String) {
        let r = self.api.publish(channel, data).await;
        let offset = r["offset"].as_u64().unwrap_or_else(|| panic!("publish result without offset: {r}"));
        let epoch =
            r["epoch"].as_str().unwrap_or_else(|| panic!("publish result without epoch: {r}")).to_string();
        (offset, epoch)
    }

    /// `GET /api/poll?<query>` with an optional bearer token; the request itself times out
    /// after `timeout`. Returns (status, body).
    async fn poll(&self, query: &str, token: Option<&str>, timeout: Duration) -> (u16, Value) {
        poll_with(&self.http, &self.url, query, token, timeout).await
    }

    /// A poll from `since` (no wait) that must answer 200 with no publications.
    async fn assert_caught_up(&self, ch: &str, since: u64, epoch: &str, tok: &str) {
        let (st, b) = self.poll(&at(ch, since, epoch), Some(tok), REQ_TIMEOUT).await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(offsets(&b), Vec::<u64>::new(), "{b}");
    }
}

async fn poll_with(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    token: Option<&str>,
    timeout: Duration,
) -> (u16, Value) {
    let mut req = http.get(format!("{url}/api/poll?{query}")).timeout(timeout);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("GET /api/poll?{query}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_else(|e| panic!("GET /api/poll?{query}: body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Percent-encodes a query value (channels here have `:`, `#`, `,`).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query of a poll of `ch` from `since` in `epoch`.
fn at(ch: &str, since: u64, epoch: &str) -> String {
    format!("channel={}&since={since}&epoch={}", enc(ch), enc(epoch))
}

/// Offsets of the publications of a poll answer.
fn offsets(body: &Value) -> Vec<u64> {
    body["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications array: {body}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap_or_else(|| panic!("publication without offset: {p}")))
        .collect()
}

/// A 200 poll answer: `offset` and `epoch` present.
fn position(status: u16, body: &Value, what: &str) -> (u64, String) {
    assert_eq!(status, 200, "{what}: {body}");
    let offset = body["offset"].as_u64().unwrap_or_else(|| panic!("{what}: no offset: {body}"));
    let epoch = body["epoch"].as_str().unwrap_or_else(|| panic!("{what}: no epoch: {body}")).to_string();
    (offset, epoch)
}

/// Asserts an error answer: HTTP status and `error.code`.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64, what: &str) {
    assert_eq!(status, want_status, "{what}: HTTP status (body {body})");
    assert_eq!(body["error"]["code"].as_u64(), Some(want_code), "{what}: error code (body {body})");
}

/// Asserts a 410 "unrecoverable position" answer that gives the current position.
fn assert_unrecoverable(status: u16, body: &Value, offset: u64, epoch: &str, what: &str) {
    assert_error(status, body, 410, 112, what);
    assert_eq!(body["error"]["message"].as_str(), Some("unrecoverable position"), "{body}");
    assert_eq!(body["offset"].as_u64(), Some(offset), "{what}: current offset in the body: {body}");
    assert_eq!(body["epoch"].as_str(), Some(epoch), "{what}: current epoch in the body: {body}");
}

/// The tests measure time and memory: one at a time, so they do not disturb each other
/// on a small machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// What every test starts with: the serial lock (hold it for the whole test), a server, and
/// alice's connection token.
async fn start() -> (tokio::sync::MutexGuard<'static, ()>, PollServer, String) {
    let serial = serial().await;
    (serial, PollServer::start(), token("alice"))
}

/// Bounds a whole test body.
async fn bounded<F: std::future::Future<Output = T>, T>(limit: Duration, what: &str, f: F) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_poll_answers_within_50ms_of_a_publish() {
    let (_serial, s, tok) = start().await;
    bounded(Duration::from_secs(60), "test", async {
        let ch = uniq("wake");
        let (mut since, epoch) = s.publish(&ch, json!({"n": 0})).await;
        for round in 1..=3 {
            let http = s.http.clone();
            let url = s.url.clone();
            let q = format!("{}&wait=10", at(&ch, since, &epoch));
            let t = tok.clone();
            let started = Instant::now();
            let poll = tokio::spawn(async move {
                let r = poll_with(&http, &url, &q, Some(&t), Duration::from_secs(15)).await;
                (r, Instant::now())
            });
            // Held: nothing to answer yet.
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(!poll.is_finished(), "round {round}: the poll answered before any publication");
            let (offset, ep) = s.publish(&ch, json!({"n": round})).await;
            let published = Instant::now();
            let ((status, body), answered) = tokio::time::timeout(Duration::from_secs(12), poll)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the held poll did not answer after the publish"))
                .expect("poll task");
            assert_eq!(ep, epoch);
            assert_eq!(status, 200, "round {round}: {body}");
            let lag = answered.saturating_duration_since(published);
            println!(
                "round {round}: poll held {:?}, answered {:?} after the publish call returned",
                published - started,
                lag
            );
            assert_eq!(offsets(&body), vec![offset], "round {round}: the publication: {body}");
            assert_eq!(body["publications"][0]["data"], json!({"n": round}));
            assert_eq!(body["offset"].as_u64(), Some(offset), "round {round}: next since: {body}");
            assert_eq!(body["epoch"].as_str(), Some(epoch.as_str()));
            assert!(
                lag < Duration::from_millis(50),
                "round {round}: the poll answered {lag:?} after the publish (contract: at once, < 50 ms)"
            );
            since = offset;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_without_publication_returns_empty_when_wait_runs_out() {
    let (_serial, s, tok) = start().await;
    bounded(Duration::from_secs(30), "test", async {
        let ch = uniq("empty");
        let (since, epoch) = s.publish(&ch, json!({"n": 1})).await;
        let q = format!("{}&wait=1", at(&ch, since, &epoch));
        let started = Instant::now();
        let (status, body) = s.poll(&q, Some(&tok), Duration::from_secs(10)).await;
        let took = started.elapsed();
        println!("wait=1 with nothing new answered after {took:?}");
        assert_eq!(status, 200, "{body}");
        assert_eq!(offsets(&body), Vec::<u64>::new(), "no publications: {body}");
        assert_eq!(body["offset"].as_u64(), Some(since), "position unchanged: {body}");
        assert_eq!(body["epoch"].as_str(), Some(epoch.as_str()));
        assert!(took >= Duration::from_millis(900), "answered after {took:?}, before wait=1 ran out");
        assert!(took < Duration::from_millis(2500), "answered after {took:?}, long after wait=1 ran out");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_polling_answers_at_once() {
    let (_serial, s, tok) = start().await;
    bounded(Duration::from_secs(30), "test", async {
        let ch = uniq("plain");
        let (o1, epoch) = s.publish(&ch, json!({"n": 1})).await;
        let (o2, _) = s.publish(&ch, json!({"n": 2})).await;
        let (o3, _) = s.publish(&ch, json!({"n": 3})).await;
        let fast = Duration::from_millis(300);

        // Nothing new, wait=0 and no wait: empty, at once.
        for wait in ["&wait=0", ""] {
            let q = format!("{}{wait}", at(&ch, o3, &epoch));
            let started = Instant::now();
            let (status, body) = s.poll(&q, Some(&tok), Duration::from_secs(5)).await;
            let took = started.elapsed();
            assert_eq!(status, 200, "{q}: {body}");
            assert_eq!(offsets(&body), Vec::<u64>::new(), "{q}: {body}");
            assert_eq!(body["offset"].as_u64(), Some(o3), "{q}: {body}");
            assert!(took < fast, "{q}: plain polling took {took:?}");
        }

        // Publications after since exist: at once, whatever wait says.
        for wait in ["&wait=0", "", "&wait=10"] {
            let q = format!("{}{wait}", at(&ch, o1, &epoch));
            let started = Instant::now();
            let (status, body) = s.poll(&q, Some(&tok), Duration::from_secs(5)).await;
            let took = started.elapsed();
            assert_eq!(status, 200, "{q}: {body}");
            assert_eq!(offsets(&body), vec![o2, o3], "{q}: {body}");
            assert_eq!(body["publications"][0]["data"], json!({"n": 2}));
            assert_eq!(body["publications"][1]["data"], json!({"n": 3}));
            assert_eq!(body["offset"].as_u64(), Some(o3), "{q}: next since: {body}");
            assert_eq!(body["epoch"].as_str(), Some(epoch.as_str()));
            assert!(took < fast, "{q}: took {took:?} with publications already there");
        }

        // Without since: the current position, no publications.
        let (status, body) =
            s.poll(&format!("channel={}", enc(&ch)), Some(&tok), Duration::from_secs(5)).await;
        assert_eq!(position(status, &body, "no since"), (o3, epoch.clone()));
        assert_eq!(offsets(&body), Vec::<u64>::new(), "no since: no publications: {body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_positions_never_skip_or_repeat() {
    let (_serial, s, tok) = start().await;
    bounded(Duration::from_secs(60), "test", async {
        let ch = uniq("resume");
        // A fresh channel: its position is where the client starts.
        let (status, body) = s.poll(&format!("channel={}", enc(&ch)), Some(&tok), REQ_TIMEOUT).await;
        let (start, epoch) = position(status, &body, "position of a fresh channel");
        assert_eq!(start, 0, "a fresh channel starts at offset 0: {body}");

        const N: u64 = 100;
        let publisher = {
            let http = s.http.clone();
            let url = s.url.clone();
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for burst in 0..10u64 {
                    for i in 0..10u64 {
                        let n = burst * 10 + i + 1;
                        let res = http
                            .post(format!("{url}/api/publish"))
                            .header("X-API-Key", API_KEY)
                            .json(&json!({"channel": ch, "data": {"n": n}}))
                            .timeout(REQ_TIMEOUT)
                            .send()
                            .await
                            .expect("publish");
                        let v: Value = res.json().await.expect("publish body");
                        results.push(v);
                    }
                    tokio::time::sleep(Duration::from_millis(37 + burst * 11)).await;
                }
                results
            })
        };

        let mut since = start;
        let mut got: Vec<(u64, u64)> = Vec::new();
        let mut polls = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        while got.len() < N as usize && Instant::now() < deadline {
            let q = format!("{}&wait=5", at(&ch, since, &epoch));
            let (status, body) = s.poll(&q, Some(&tok), Duration::from_secs(10)).await;
            polls += 1;
            assert_eq!(status, 200, "poll {polls} ({q}): {body}");
            assert_eq!(body["epoch"].as_str(), Some(epoch.as_str()), "poll {polls}: {body}");
            for p in body["publications"].as_array().unwrap_or_else(|| panic!("poll {polls}: {body}")) {
                got.push((p["offset"].as_u64().expect("offset"), p["data"]["n"].as_u64().expect("data.n")));
            }
            let next = body["offset"].as_u64().unwrap_or_else(|| panic!("poll {polls}: no offset: {body}"));
            if let Some(&(last, _)) = got.last() {
                assert_eq!(
                    next,
                    last.max(since),
                    "poll {polls}: next since is the last offset delivered: {body}"
                );
            }
            since = next;
        }
        let results = publisher.await.expect("publisher");
        for r in &results {
            assert!(r.get("result").is_some(), "publish failed: {r}");
        }
        println!("collected {} publications in {polls} polls", got.len());
        let want: Vec<(u64, u64)> = (1..=N).map(|o| (start + o, o)).collect();
        assert_eq!(got, want, "every offset {}..={} exactly once, in order", start + 1, start + N);

        // Nothing more.
        s.assert_caught_up(&ch, since, &epoch, &tok).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_long_polls_on_one_server() {
    const POLLS: usize = 1000;
    let (_serial, s, _alice) = start().await;
    bounded(Duration::from_secs(90), "test", async {
        let ch = uniq("many");
        let (since, epoch) = s.publish(&ch, json!({"seed": true})).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = s.srv.rss_kib();

        // One connection per poll (HTTP/1.1: a held request occupies its connection).
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
        let q = format!("{}&wait=25", at(&ch, since, &epoch));
        let mut tasks = Vec::with_capacity(POLLS);
        // One user per poll: a user may keep only `http.poll_max_waiters_per_user` waiting.
        for i in 0..POLLS {
            let http = http.clone();
            let url = s.url.clone();
            let q = q.clone();
            let t = token(&format!("poller{i}"));
            tasks.push(tokio::spawn(async move { poll_with(&http, &url, &q, Some(&t), Duration::from_secs(40)).await }));
        }
        // Let every poll reach the server and be held.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let early = tasks.iter().filter(|t| t.is_finished()).count();
        assert_eq!(early, 0, "{early} polls answered before any publication");
        let rss_held = s.srv.rss_kib();
        let per_poll = (rss_held.saturating_sub(rss_before)) as f64 * 1024.0 / POLLS as f64;
        println!(
            "server RSS: {rss_before} KiB before, {rss_held} KiB with {POLLS} long polls held: {per_poll:.0} bytes per poll"
        );

        let (offset, _) = s.publish(&ch, json!({"wake": "all"})).await;
        let published = Instant::now();
        let mut ok = 0;
        let mut failures = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let left = Duration::from_secs(10).saturating_sub(published.elapsed()).max(Duration::from_millis(1));
            match tokio::time::timeout(left, task).await {
                Ok(Ok((200, body))) if offsets(&body) == vec![offset] => ok += 1,
                Ok(Ok((status, body))) => failures.push(format!("poll {i}: {status} {body}")),
                Ok(Err(e)) => failures.push(format!("poll {i}: task failed: {e}")),
                Err(_) => failures.push(format!("poll {i}: no answer within 10 s of the publish")),
            }
        }
        println!("{ok} of {POLLS} polls answered with the publication {:?} after it", published.elapsed());
        assert!(failures.is_empty(), "{} of {POLLS} polls failed; first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
        assert_eq!(ok, POLLS);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_errors() {
    let (_serial, s, alice) = start().await;
    bounded(Duration::from_secs(60), "test", async {
        let ch = uniq("errors");
        let (o1, epoch) = s.publish(&ch, json!({"n": 1})).await;
        let ok_q = at(&ch, o1, &epoch);

        // Tokens.
        let (st, b) = s.poll(&ok_q, None, REQ_TIMEOUT).await;
        assert_error(st, &b, 401, 101, "no token");
        let (st, b) = s.poll(&ok_q, Some("not.a.jwt"), REQ_TIMEOUT).await;
        assert_error(st, &b, 401, 101, "malformed token");
        let wrong = jwt_with_secret(json!({"sub": "alice"}), "wrong-secret");
        let (st, b) = s.poll(&ok_q, Some(&wrong), REQ_TIMEOUT).await;
        assert_error(st, &b, 401, 101, "wrongly signed token");
        let (st, b) = s.poll(&ok_q, Some(&token_exp("alice", -60)), REQ_TIMEOUT).await;
        assert_error(st, &b, 401, 109, "expired token");
        let (st, b) = s.poll(&ok_q, Some(&alice), REQ_TIMEOUT).await;
        assert_eq!(st, 200, "the same poll with a good token: {b}");

        // Channel permissions: those of subscribing.
        let (st, b) = s.poll("channel=user%2342", Some(&token("7")), REQ_TIMEOUT).await;
        assert_error(st, &b, 403, 103, "user#42 as user 7");
        let (st, b) = s.poll("channel=user%2342", Some(&token("42")), REQ_TIMEOUT).await;
        assert_eq!(st, 200, "user#42 as user 42: {b}");
        let (st, b) =
            s.poll(&format!("channel={}", enc(&format!("nosuchns:{ch}"))), Some(&alice), REQ_TIMEOUT).await;
        assert_error(st, &b, 404, 102, "unknown namespace");
        let (st, b) =
            s.poll(&format!("channel={}", enc(&format!("bare:{ch}"))), Some(&alice), REQ_TIMEOUT).await;
        assert_error(st, &b, 400, 108, "namespace without history");

        // Bad requests.
        let started = Instant::now();
        let (st, b) = s.poll(&format!("{ok_q}&wait=31"), Some(&alice), REQ_TIMEOUT).await;
        assert_error(st, &b, 400, 107, "wait=31 over poll_max_wait (30s)");
        assert!(started.elapsed() < Duration::from_secs(1), "the 400 for wait came at once");
        let (st, b) = s.poll(&format!("{}&wait=30", at(&ch, 0, &epoch)), Some(&alice), REQ_TIMEOUT).await;
        assert_eq!(st, 200, "wait=30 = poll_max_wait is allowed (publications there: at once): {b}");
        let (st, b) = s.poll(&format!("since={o1}&epoch={}", enc(&epoch)), Some(&alice), REQ_TIMEOUT).await;
        assert_error(st, &b, 400, 107, "missing channel");
        let (st, b) = s.poll("channel=", Some(&alice), REQ_TIMEOUT).await;
        assert_error(st, &b, 400, 107, "empty channel");
        for bad in ["wait=abc", "wait=-1", "since=abc", "since=-3", "wait=1.5x"] {
            let (st, b) = s
                .poll(&format!("channel={}&epoch={}&{bad}", enc(&ch), enc(&epoch)), Some(&alice), REQ_TIMEOUT)
                .await;
            assert_error(st, &b, 400, 107, &format!("bad number {bad}"));
        }

        // Wrong epoch: 410 with the current position.
        let (o2, _) = s.publish(&ch, json!({"n": 2})).await;
        let (st, b) = s
            .poll(&format!("channel={}&since={o1}&epoch=not-the-epoch", enc(&ch)), Some(&alice), REQ_TIMEOUT)
            .await;
        assert_unrecoverable(st, &b, o2, &epoch, "wrong epoch");
        // The given position is usable.
        s.assert_caught_up(&ch, o2, &epoch, &alice).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_since_is_410_with_the_current_position() {
    let (_serial, s, alice) = start().await;
    bounded(Duration::from_secs(30), "test", async {
        // `small` keeps 3 publications.
        let ch = format!("small:{}", uniq("pruned"));
        let mut last = (0, String::new());
        for n in 1..=10 {
            last = s.publish(&ch, json!({"n": n})).await;
        }
        let (top, epoch) = last;
        let (st, b) = s.poll(&format!("{}&wait=5", at(&ch, 2, &epoch)), Some(&alice), REQ_TIMEOUT).await;
        assert_unrecoverable(st, &b, top, &epoch, "since=2 after 10 publications with history_size 3");

        // The last 3 are still there: since = top-3 works.
        let (st, b) = s.poll(&at(&ch, top - 3, &epoch), Some(&alice), REQ_TIMEOUT).await;
        assert_eq!(st, 200, "since=top-3: {b}");
        assert_eq!(offsets(&b), vec![top - 2, top - 1, top], "{b}");
        // Continuing from the given position.
        s.assert_caught_up(&ch, top, &epoch, &alice).await;
    })
    .await;
}
