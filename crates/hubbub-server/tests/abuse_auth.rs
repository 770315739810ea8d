//! Attacks on authentication and on the chat's per-user budgets (issue 10, findings 1, 2, 9,
//! the chat-send half of 4 and the last-seen half of 16): parallel password guesses, huge
//! credentials, tokens used where they do not belong or before they are valid, login timing,
//! and message floods over REST and RPC.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// A minimal REST client for the chat API.
#[derive(Clone)]
struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    fn new(srv: &Server) -> Http {
        Http { base: format!("http://{}", srv.addr), http: http_client() }
    }

    /// A client whose connections come from `ip` (any 127.x.y.z reaches the server on
    /// loopback), to play several addresses.
    fn from_address(srv: &Server, ip: std::net::Ipv4Addr) -> Http {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .local_address(std::net::IpAddr::V4(ip))
            .build()
            .unwrap();
        Http { base: format!("http://{}", srv.addr), http }
    }

    /// (status, JSON body or Null) of a request with a raw body.
    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.header("Authorization", format!("Bearer {t}"));
        }
        let resp = rb.header("Content-Type", "application/json").body(body).send().await;
        let resp = match resp {
            Ok(r) => r,
            // A server that refuses a huge body may close before reading all of it.
            Err(e) => return (0, json!({ "transport_error": e.to_string() })),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "not_json": text }))
        };
        (status, body)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.raw("POST", path, token, body.to_string()).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.raw("GET", path, token, String::new()).await
    }

    async fn login(&self, name: &str, password: &str) -> (u16, Value) {
        self.post("/api/auth/login", None, json!({ "username": name, "password": password })).await
    }

    /// Signs up `name`; returns (user id, access token).
    async fn signup(&self, name: &str) -> (i64, String) {
        let (st, b) =
            self.post("/api/auth/signup", None, json!({ "username": name, "password": PASSWORD })).await;
        assert_eq!(st, 201, "signup {name}: {b}");
        (b["user"]["id"].as_i64().unwrap(), b["access_token"].as_str().unwrap().to_owned())
    }
}

/// The error code of a chat REST error body (`{"error":{"code":..}}`).
fn code(b: &Value) -> &str {
    b["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {b}"))
}

// ---------------------------------------------------------------------------------------------
// Finding 1: parallel guesses
// ---------------------------------------------------------------------------------------------

/// 40 concurrent log-ins for one account (39 wrong, then the right one): at most
/// `login_failures_per_account` (5) are checked at all; every other one is a 429 without a
/// password check, whether the right password came early or late.
#[tokio::test]
async fn parallel_login_guesses_stop_at_the_limit() {
    let srv = Server::new();
    let h = Http::new(&srv);
    h.signup("alice").await;

    let mut attempts: Vec<_> =
        (0..39).map(|i| (h.clone(), format!("wrong-password-{i}"))).collect::<Vec<_>>();
    attempts.push((h.clone(), PASSWORD.to_owned()));
    let answers =
        join_all(attempts.into_iter().map(|(h, pw)| async move { h.login("alice", &pw).await })).await;
    let count = |s: u16| answers.iter().filter(|(st, _)| *st == s).count();
    let (ok, wrong, limited) = (count(200), count(401), count(429));
    assert_eq!(ok + wrong + limited, 40, "unexpected answers: {answers:?}");
    assert!(ok + wrong <= 5, "{} passwords were checked (limit 5): {ok} × 200, {wrong} × 401", ok + wrong);
    for (st, b) in &answers {
        if *st == 429 {
            assert_eq!(code(b), "too_many_requests", "{b}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 2: the failed-login tracker
// ---------------------------------------------------------------------------------------------

/// 100 log-ins with 1.9 MB usernames (and huge passwords): refused by size before they are
/// parsed or tracked (413, JSON), memory stays flat, and ordinary log-ins keep working.
#[tokio::test]
async fn huge_credentials_are_refused_before_anything_is_kept() {
    let srv = Server::new();
    let h = Http::new(&srv);
    h.signup("bob").await;
    let before = srv.rss_kib();

    let huge = "x".repeat(1_900_000);
    for round in 0..10 {
        let answers = join_all((0..10).map(|i| {
            let h = h.clone();
            let name = format!("{huge}{round}-{i}");
            async move { h.login(&name, PASSWORD).await }
        }))
        .await;
        for (st, b) in answers {
            assert!(st == 413 || st == 0, "a 1.9 MB log-in body answered {st}: {b}");
            if st == 413 {
                assert_eq!(code(&b), "too_large", "{b}");
            }
        }
    }
    // Within the body limit, a username or a password longer than any account can have is
    // refused before the tracker and the hash (400).
    let (st, b) = h.login(&"y".repeat(1000), PASSWORD).await;
    assert_eq!((st, code(&b)), (400, "bad_request"), "{b}");
    let (st, b) = h.login("bob", &"p".repeat(2000)).await;
    assert_eq!((st, code(&b)), (400, "bad_request"), "{b}");

    let grown = srv.rss_kib().saturating_sub(before);
    assert!(grown < 40 * 1024, "RSS grew by {grown} KiB after 100 huge log-ins");
    let (st, b) = h.login("bob", PASSWORD).await;
    assert_eq!(st, 200, "bob cannot log in after the attack: {b}");
}

/// The tracker holds at most `limiter_max_keys` accounts (and as many addresses); when it
/// is full, log-ins that would need a new entry are refused (429) rather than tracked, and
/// entries expire after `login_window`, after which log-ins work again.
#[tokio::test]
async fn failed_login_tracker_is_capped_and_expires() {
    let srv = Server::builder().chat("login_window", "\"3s\"").chat("limiter_max_keys", "20").start();
    let h = Http::new(&srv);
    h.signup("carol").await;

    // Distinct unknown accounts from distinct addresses, all at once (each takes its slots
    // on arrival, before its password check): 20 fill the tracker.
    let answers = join_all((0..30u8).map(|i| {
        let from = Http::from_address(&srv, std::net::Ipv4Addr::new(127, 0, 1, 1 + i));
        async move { from.login(&format!("ghost{i}"), PASSWORD).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(st, _)| *st).collect();
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{answers:?}");
    let failed = statuses.iter().filter(|s| **s == 401).count();
    assert!(failed <= 20, "{failed} failures were tracked in a tracker of 20 entries: {statuses:?}");
    assert!(failed >= 10, "only {failed} log-ins were tried: {statuses:?}");

    // After the window every entry has expired.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (st, b) = h.login("carol", PASSWORD).await;
    assert_eq!(st, 200, "log-in after the window: {b}");
}

/// Sign-ups from one address are limited (`signups_per_address` per `signup_window`; a
/// taken name counts too, so sign-up cannot enumerate names quickly); another address is
/// not affected.
#[tokio::test]
async fn signups_per_address_are_limited() {
    let srv = Server::builder().chat("signups_per_address", "3").start();
    let h = Http::new(&srv);
    h.signup("ina").await;
    h.signup("jon").await;
    let (st, b) = h.post("/api/auth/signup", None, json!({ "username": "ina", "password": PASSWORD })).await;
    assert_eq!((st, code(&b)), (409, "conflict"), "{b}");
    let (st, b) = h.post("/api/auth/signup", None, json!({ "username": "kim", "password": PASSWORD })).await;
    assert_eq!((st, code(&b)), (429, "too_many_requests"), "{b}");
    let other = Http::from_address(&srv, std::net::Ipv4Addr::new(127, 0, 2, 1));
    other.signup("kim").await;
}

/// Behind a reverse proxy (`client_address_header`), the address counted is the last one of
/// that header, not the proxy's own.
#[tokio::test]
async fn the_address_behind_a_proxy_comes_from_the_configured_header() {
    let srv = Server::builder()
        .chat("signups_per_address", "1")
        .chat("client_address_header", "\"X-Forwarded-For\"")
        .start();
    let signup = |name: &'static str, forwarded: &'static str| {
        let url = srv.http_url("/api/auth/signup");
        async move {
            let resp = http_client()
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Forwarded-For", forwarded)
                .body(json!({ "username": name, "password": PASSWORD }).to_string())
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(signup("lea", "203.0.113.9, 198.51.100.1").await, 201);
    assert_eq!(signup("max", "203.0.113.10, 198.51.100.1").await, 429, "same last address");
    assert_eq!(signup("max", "198.51.100.2").await, 201);
    // IPv6 counts by /64.
    assert_eq!(signup("ned", "2001:db8::1").await, 201);
    assert_eq!(signup("ole", "2001:db8::2").await, 429, "same /64");
}

// ---------------------------------------------------------------------------------------------
// Finding 9: tokens
// ---------------------------------------------------------------------------------------------

/// A token whose `nbf` is an hour away is refused everywhere a connection token is taken:
/// connect (disconnect 3500, as Centrifugo), the REST API (401 JSON), long polling (401).
#[tokio::test]
async fn tokens_not_valid_yet_are_refused() {
    let srv = Server::new();
    let h = Http::new(&srv);
    let (id, _) = h.signup("dave").await;
    let early = jwt(json!({ "sub": id.to_string(), "nbf": now() + 3600, "exp": now() + 7200 }));

    let mut c = srv.ws().await;
    c.send_cmd("connect", json!({ "token": early })).await;
    c.expect_close(3500, T).await;

    let (st, b) = h.get("/api/me", Some(&early)).await;
    assert_eq!((st, code(&b)), (401, "unauthorized"), "{b}");
    let (st, b) = h.get("/api/poll?channel=news", Some(&early)).await;
    assert_eq!(st, 401, "poll with a token not valid yet: {b}");

    // A token valid from a second ago still works.
    let fine = jwt(json!({ "sub": id.to_string(), "nbf": now() - 1, "exp": now() + 60 }));
    let (st, b) = h.get("/api/me", Some(&fine)).await;
    assert_eq!(st, 200, "{b}");
    srv.user(&id.to_string()).await;
}

/// A connection token of `user` that is not valid for another hour.
fn not_yet_valid(user: &str) -> String {
    jwt(json!({ "sub": user, "nbf": now() + 3600 }))
}

/// A subscription token (it has a `channel` claim) is not a connection token: refused at
/// connect and refresh (3500, also on the unidirectional transports), by the REST API (401)
/// and by long polling (401). A connection
/// token is not a subscription token either (103).
#[tokio::test]
async fn each_kind_of_token_is_accepted_only_where_it_belongs() {
    let srv = Server::new();
    let h = Http::new(&srv);
    let (id, access) = h.signup("erin").await;
    let user = id.to_string();
    let sub = sub_token(&user, "$secret");

    let mut c = srv.ws().await;
    c.send_cmd("connect", json!({ "token": sub })).await;
    c.expect_close(3500, T).await;

    let (st, b) = h.get("/api/me", Some(&sub)).await;
    assert_eq!((st, code(&b)), (401, "unauthorized"), "{b}");
    let (st, b) = h.get("/api/poll?channel=news", Some(&sub)).await;
    assert_eq!(st, 401, "poll with a subscription token: {b}");

    // The unidirectional transports take a connection token in their connect body.
    for token in [&sub, &not_yet_valid(&user)] {
        let resp = http_client()
            .post(srv.http_url("/connection/uni_http_stream"))
            .header("Content-Type", "application/json")
            .body(json!({ "token": token }).to_string())
            .send()
            .await
            .unwrap();
        let text = tokio::time::timeout(T, resp.text()).await.expect("uni_http_stream ends").unwrap();
        assert!(text.contains("3500"), "uni_http_stream with a wrong kind of token: {text}");
    }

    // Refreshing a connection with a subscription token.
    let mut c = srv.ws().await;
    c.connect(&access).await;
    c.send_cmd("refresh", json!({ "token": sub })).await;
    c.expect_close(3500, T).await;

    // A connection token for a private channel's subscription, and the refresh token (not a
    // JWT) as an access token.
    let mut c = srv.ws().await;
    c.connect(&access).await;
    assert_eq!(c.err("subscribe", json!({ "channel": "$secret", "token": access })).await, 103);
    let (_, b) = h.post("/api/auth/login", None, json!({ "username": "erin", "password": PASSWORD })).await;
    let refresh = b["refresh_token"].as_str().unwrap().to_owned();
    let (st, b) = h.get("/api/me", Some(&refresh)).await;
    assert_eq!((st, code(&b)), (401, "unauthorized"), "{b}");
    // An access token is not a refresh token.
    let (st, b) = h.post("/api/auth/refresh", None, json!({ "refresh_token": access })).await;
    assert_eq!((st, code(&b)), (401, "unauthorized"), "{b}");
}

/// A log-in for an unknown username takes about as long as one with a wrong password for a
/// real account: both check a password hash.
#[tokio::test]
async fn login_timing_does_not_reveal_usernames() {
    let srv = Server::new();
    let h = Http::new(&srv);
    h.signup("frank").await;
    // Warm up (first hash, connection pool).
    h.login("frank", PASSWORD).await;

    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let (st, _) = h.login("frank", &format!("wrong-password-{i}")).await;
        assert_eq!(st, 401);
        known.push(t.elapsed());
        let t = Instant::now();
        let (st, _) = h.login(&format!("nobody{i}"), PASSWORD).await;
        assert_eq!(st, 401);
        unknown.push(t.elapsed());
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[known.len() / 2], unknown[unknown.len() / 2]);
    assert!(u * 2 >= k, "unknown usernames answer in {u:?}, wrong passwords in {k:?}");
}

// ---------------------------------------------------------------------------------------------
// Finding 16: last seen of connections that are not chat accounts
// ---------------------------------------------------------------------------------------------

/// A connection whose user is not a chat account (a token from the CLI, numeric or not)
/// comes and goes without a warning in the log.
#[tokio::test]
async fn non_accounts_disconnect_without_warnings() {
    let srv = Server::new();
    for user in ["424242", "someone"] {
        let mut c = srv.user(user).await;
        c.close_now().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = srv.stderr();
    assert!(!log.contains("last seen not stored"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Finding 4 (second half): chat sends per user
// ---------------------------------------------------------------------------------------------

/// Sends are limited per user by one budget shared by REST and RPC: past `send_burst`
/// REST answers 429 (JSON) and RPC error 111; other users are not affected, and the budget
/// refills (each slot `send_burst / sends_per_second` after it was used).
#[tokio::test]
async fn chat_sends_are_rate_limited_per_user_over_rest_and_rpc() {
    let srv = Server::builder().chat("sends_per_second", "2.0").chat("send_burst", "5").start();
    let h = Http::new(&srv);
    let (_, greta) = h.signup("greta").await;
    let (_, hans) = h.signup("hans").await;
    // Hans makes the room (creating it and inviting spend 2 of his 5).
    let (st, b) = h.post("/api/rooms", Some(&hans), json!({ "name": "flood" })).await;
    assert_eq!(st, 201, "{b}");
    let room = b["id"].as_i64().unwrap();
    let (st, b) =
        h.post(&format!("/api/rooms/{room}/members"), Some(&hans), json!({"username": "greta"})).await;
    assert_eq!(st, 200, "{b}");

    let send = |token: String, i: usize| {
        let h = h.clone();
        async move {
            h.post(
                &format!("/api/rooms/{room}/messages"),
                Some(&token),
                json!({ "text": format!("m{i}"), "client_msg_id": format!("{token:.8}-{i}") }),
            )
            .await
        }
    };
    let answers = join_all((0..10).map(|i| send(greta.clone(), i))).await;
    let created = answers.iter().filter(|(st, _)| *st == 201).count();
    let limited: Vec<_> = answers.iter().filter(|(st, _)| *st == 429).collect();
    assert_eq!(created, 5, "{created} of 10 sends accepted (burst 5): {answers:?}");
    assert_eq!(created + limited.len(), 10, "{answers:?}");
    for (_, b) in limited {
        assert_eq!(code(b), "too_many_requests", "{b}");
    }

    // The same budget over RPC.
    let mut c = srv.ws().await;
    c.connect(&greta).await;
    let r = c.call("rpc", json!({ "method": "chat.send", "data": {"room_id": room, "text": "rpc", "client_msg_id": "rpc-1"} })).await;
    assert_eq!(error_code(&r), Some(111), "{r}");

    // Another user still sends.
    let (st, b) = send(hans.clone(), 100).await;
    assert_eq!(st, 201, "{b}");

    // The budget refills: a slot comes back send_burst / sends_per_second = 2.5 s after use.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let r = c.call("rpc", json!({ "method": "chat.send", "data": {"room_id": room, "text": "rpc", "client_msg_id": "rpc-2"} })).await;
    assert_eq!(error_code(&r), None, "{r}");
}
