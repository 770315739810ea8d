//! The chat application (docs/CHAT.md) against the real `hubbub` binary: the REST API under
//! `/api`, the `chat.*` RPC methods over a real WebSocket, the `room:{id}` and `user#{id}`
//! channels (stored and ephemeral events), the authorization rules, bad inputs, and durable
//! recovery of a room's stream, also across a full server restart on the same data dir.
//!
//! Every test starts its own server (temp config + data dir, see `common`). Sign-ups cost an
//! argon2 hash each, so the tests use few users.
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

// ---------------------------------------------------------------------------------------------
// REST client
// ---------------------------------------------------------------------------------------------

/// One HTTP answer: status, parsed body (`Null` when empty), raw text, and what was asked.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
    text: String,
    what: String,
}

impl Resp {
    /// Expect `status`; return the body.
    #[track_caller]
    fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "{} → HTTP {} {}", self.what, self.status, self.text);
        self.body
    }

    /// Expect `status` with the chat's error shape `{"error":{"code":<code>,"message":"..."}}`.
    #[track_caller]
    fn err(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "{} → HTTP {} {} (expected {status} {code})",
            self.what, self.status, self.text
        );
        let e = &self.body["error"];
        assert_eq!(
            e["code"].as_str(),
            Some(code),
            "{} → HTTP {}: body is not {{\"error\":{{\"code\":\"{code}\",..}}}}: {}",
            self.what,
            self.status,
            self.text
        );
        assert!(
            e["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
            "{} → error without a message: {}",
            self.what,
            self.text
        );
    }

    /// Expect 204 No Content.
    #[track_caller]
    fn no_content(&self) {
        assert_eq!(self.status, 204, "{} → {} {}", self.what, self.status, self.text);
    }
}

#[derive(Clone)]
struct Http {
    base: String,
    http: reqwest::Client,
}

fn shorten(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut i = 200;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}… ({} bytes)", &s[..i], s.len())
    }
}

impl Http {
    fn new(addr: &str) -> Http {
        Http { base: format!("http://{addr}"), http: http_client() }
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<String>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.header("Authorization", format!("Bearer {t}"));
        }
        let what = format!("{method} {path} {}", body.as_deref().map(shorten).unwrap_or_default());
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json").body(b);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(format!("<not JSON> {text}")))
        };
        Resp { status, body, text, what }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.raw("GET", path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.raw("POST", path, token, Some(body.to_string())).await
    }

    async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.raw("PATCH", path, token, Some(body.to_string())).await
    }

    async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.raw("DELETE", path, token, None).await
    }
}

/// Percent-encodes everything but ASCII letters and digits (query values, path segments).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A signed-up user.
#[derive(Clone, Debug)]
struct User {
    id: i64,
    name: String,
    access: String,
    refresh: String,
}

impl User {
    fn tok(&self) -> Option<&str> {
        Some(&self.access)
    }
}

#[track_caller]
fn session(b: &Value) -> User {
    User {
        id: b["user"]["id"].as_i64().unwrap_or_else(|| panic!("no user.id in {b}")),
        name: b["user"]["username"].as_str().unwrap_or_else(|| panic!("no user.username in {b}")).into(),
        access: b["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {b}")).into(),
        refresh: b["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh_token in {b}")).into(),
    }
}

async fn signup(h: &Http, name: &str) -> User {
    let b = h.post("/api/auth/signup", None, json!({"username": name, "password": PASSWORD})).await.ok(201);
    session(&b)
}

async fn create_room(h: &Http, owner: &User, name: &str) -> i64 {
    let b = h.post("/api/rooms", owner.tok(), json!({ "name": name })).await.ok(201);
    b["id"].as_i64().unwrap_or_else(|| panic!("room without id: {b}"))
}

async fn invite(h: &Http, by: &User, room: i64, who: &User) -> Value {
    h.post(&format!("/api/rooms/{room}/members"), by.tok(), json!({ "username": who.name })).await.ok(200)
}

/// Sends over REST; expects 201; returns the message.
async fn send(h: &Http, u: &User, room: i64, text: &str, cmid: &str) -> Value {
    h.post(&format!("/api/rooms/{room}/messages"), u.tok(), json!({"text": text, "client_msg_id": cmid}))
        .await
        .ok(201)
}

#[track_caller]
fn seq(m: &Value) -> i64 {
    m["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {m}"))
}

/// The room as `u` sees it in GET /api/rooms.
async fn room_in_list(h: &Http, u: &User, room: i64) -> Value {
    let rooms = h.get("/api/rooms", u.tok()).await.ok(200);
    rooms
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/rooms is not a list: {rooms}"))
        .iter()
        .find(|r| r["id"].as_i64() == Some(room))
        .cloned()
        .unwrap_or_else(|| panic!("room {room} not in {}'s GET /api/rooms: {rooms}", u.name))
}

#[track_caller]
fn member<'a>(room: &'a Value, user: &User) -> &'a Value {
    room["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"].as_i64() == Some(user.id)))
        .unwrap_or_else(|| panic!("{} is not in the members of {room}", user.name))
}

fn member_ids(room: &Value) -> BTreeSet<i64> {
    room["members"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["id"].as_i64()).collect())
        .unwrap_or_default()
}

fn seqs(list: &Value) -> Vec<i64> {
    list.as_array().unwrap_or_else(|| panic!("not a list: {list}")).iter().map(seq).collect()
}

/// A new server with alice, bob and carol signed up (in that order).
async fn trio() -> (Server, Http, User, User, User) {
    let srv = Server::new();
    let h = Http::new(&srv.addr);
    let alice = signup(&h, "alice").await;
    let bob = signup(&h, "bob").await;
    let carol = signup(&h, "carol").await;
    (srv, h, alice, bob, carol)
}

/// A new server where alice and bob signed up, and alice created the room "Team" (`r`, its
/// channel `ch`) and invited bob.
struct Team {
    srv: Server,
    h: Http,
    alice: User,
    bob: User,
    r: i64,
    ch: String,
}

async fn team() -> Team {
    let srv = Server::new();
    let h = Http::new(&srv.addr);
    let alice = signup(&h, "alice").await;
    let bob = signup(&h, "bob").await;
    let r = create_room(&h, &alice, "Team").await;
    invite(&h, &alice, r, &bob).await;
    Team { srv, h, alice, bob, r, ch: room_ch(r) }
}

/// Bob subscribes to the team room and hears two messages alice sends over RPC (in order, no
/// gap); then his connection closes. Returns alice's connection, the room's epoch and the
/// offset bob got to.
async fn bob_hears_two_then_goes_away(t: &Team) -> (Client, String, i64) {
    let Team { srv, alice, bob, r, ch, .. } = t;
    let mut bw = ws(&srv.addr, bob).await;
    let sub = bw.subscribe(ch).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let o0 = num(&sub, "offset");
    let mut aw = ws(&srv.addr, alice).await;
    for i in 1..=2 {
        rpc_send(&mut aw, *r, &format!("before {i}"), &format!("b{i}")).await;
        assert_eq!(num(&stored_event(&mut bw, ch).await, "offset"), o0 + i);
    }
    bw.close_now().await;
    drop(bw);
    (aw, epoch, o0 + 2)
}

// ---------------------------------------------------------------------------------------------
// WebSocket: connection, RPC, channel events
// ---------------------------------------------------------------------------------------------

/// A WebSocket connected with the user's access token.
async fn ws(addr: &str, u: &User) -> Client {
    let mut c = Client::open(&format!("ws://{addr}/connection/websocket")).await;
    c.connect(&u.access).await;
    c
}

fn room_ch(room: i64) -> String {
    format!("room:{room}")
}

fn user_ch(u: &User) -> String {
    format!("user#{}", u.id)
}

async fn rpc(c: &mut Client, method: &str, data: Value) -> Value {
    c.call("rpc", json!({ "method": method, "data": data })).await
}

/// RPC that must succeed; returns `rpc.data`.
async fn rpc_ok(c: &mut Client, method: &str, data: Value) -> Value {
    let r = rpc(c, method, data.clone()).await;
    if let Some(e) = r.get("error") {
        panic!("rpc {method} {data} failed: {e}");
    }
    let res = r.get("rpc").unwrap_or_else(|| panic!("rpc {method} {data}: reply without `rpc`: {r}"));
    res.get("data").cloned().unwrap_or(Value::Null)
}

/// `chat.send` over RPC that must succeed; returns the message.
async fn rpc_send(c: &mut Client, room: i64, text: &str, cmid: &str) -> Value {
    rpc_ok(c, "chat.send", json!({"room_id": room, "text": text, "client_msg_id": cmid})).await
}

/// RPC that must fail; returns the protocol error code.
async fn rpc_err(c: &mut Client, method: &str, data: Value) -> i64 {
    let r = rpc(c, method, data.clone()).await;
    let code = error_code(&r).unwrap_or_else(|| panic!("rpc {method} {data}: expected an error, got {r}"));
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "rpc {method} {data}: error {code} without a message: {r}");
    code
}

/// Next publication (`push.pub`) on `channel` satisfying `pred`, in arrival order.
async fn pub_where<F: Fn(&Value) -> bool>(
    c: &mut Client,
    channel: &str,
    timeout: Duration,
    pred: F,
) -> Option<Value> {
    let ch = channel.to_string();
    c.push_where(timeout, move |p| {
        p["push"]["channel"].as_str() == Some(ch.as_str())
            && p["push"].get("pub").is_some()
            && pred(&p["push"]["pub"])
    })
    .await
    .map(|p| p["push"]["pub"].clone())
}

/// Next event of type `ty` on `channel` (waits up to T); returns `push.pub`.
async fn event(c: &mut Client, channel: &str, ty: &str) -> Value {
    let t = ty.to_string();
    match pub_where(c, channel, T, move |p| p["data"]["type"].as_str() == Some(t.as_str())).await {
        Some(p) => p,
        None => panic!("no `{ty}` event on {channel} within {T:?}; pushes pending: {:?}", c.pushes),
    }
}

/// Next stored event (one with an offset) on `channel`, whatever its type.
async fn stored_event(c: &mut Client, channel: &str) -> Value {
    match pub_where(c, channel, T, |p| num(p, "offset") > 0).await {
        Some(p) => p,
        None => panic!("no stored event on {channel} within {T:?}; pushes pending: {:?}", c.pushes),
    }
}

async fn no_event(c: &mut Client, channel: &str, ty: &str, dur: Duration) {
    let t = ty.to_string();
    if let Some(p) = pub_where(c, channel, dur, move |p| p["data"]["type"].as_str() == Some(t.as_str())).await
    {
        panic!("unexpected `{ty}` event on {channel}: {p}");
    }
}

async fn no_stored_event(c: &mut Client, channel: &str, dur: Duration) {
    if let Some(p) = pub_where(c, channel, dur, |p| num(p, "offset") > 0).await {
        panic!("unexpected stored event on {channel}: {p}");
    }
}

/// Ephemeral events carry no offset (absent or 0).
#[track_caller]
fn assert_ephemeral(p: &Value) {
    assert_eq!(num(p, "offset"), 0, "an ephemeral event must have no offset: {p}");
}

// ---------------------------------------------------------------------------------------------
// A second server process on the same config and data dir (restart)
// ---------------------------------------------------------------------------------------------

struct Restarted {
    child: Child,
    addr: String,
    stderr_path: PathBuf,
}

impl Restarted {
    /// Starts `hubbub serve --config <srv's config>` again: same data dir, same environment
    /// (the store's database, in tests/chat_postgres.rs), new port.
    fn start(srv: &Server) -> Restarted {
        let stderr_path = srv.dir.path().join("stderr-restarted.log");
        let file = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&srv.config_path)
            .envs(srv.builder.env.iter().map(|(k, v)| (k, v)))
            .current_dir(srv.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn hubbub serve (restart)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let rem = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match rx.recv_timeout(rem) {
                Ok(line) => {
                    if let Some(a) = line.trim().strip_prefix("hubbub listening on http://") {
                        break a.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "restarted server did not print its listening line (exit {status:?}); stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        };
        Restarted { child, addr, stderr_path }
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            let tail = if err.len() > 6000 { &err[err.len() - 6000..] } else { &err[..] };
            eprintln!("---- restarted hubbub stderr (tail) ----\n{tail}\n---- end ----");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accounts_signup_login_me_refresh_logout() {
    let srv = Server::new();
    let h = Http::new(&srv.addr);

    // Sign-up: 201 with the user, a connection JWT (sub = user id) and a refresh token.
    let b =
        h.post("/api/auth/signup", None, json!({"username": "alice", "password": PASSWORD})).await.ok(201);
    let alice = session(&b);
    assert_eq!(b["user"]["username"], "alice", "{b}");
    assert!(b["user"]["created_at"].as_i64().is_some_and(|t| t > 0), "created_at: {b}");
    assert!(b["user"].as_object().unwrap().contains_key("last_seen"), "user without last_seen: {b}");
    assert_eq!(b["expires_in"], json!(900), "access_token_ttl is 15 min by default: {b}");
    let claims = decode_jwt(&alice.access);
    assert_eq!(claims["sub"], json!(alice.id.to_string()), "access token sub must be the user id: {claims}");
    let exp = claims["exp"].as_i64().unwrap_or_else(|| panic!("access token without exp: {claims}"));
    assert!((now() + 850..=now() + 905).contains(&exp), "exp {exp} not ~15 min from now");
    assert!(!alice.refresh.is_empty() && alice.refresh != alice.access);

    // The access token works for REST (Bearer) ...
    let me = h.get("/api/me", alice.tok()).await.ok(200);
    assert_eq!(me["id"].as_i64(), Some(alice.id), "{me}");
    assert_eq!(me["username"], "alice");
    // ... and as the connection token.
    let mut c = ws(&srv.addr, &alice).await;
    assert_eq!(rpc_ok(&mut c, "chat.rooms", json!({})).await, json!([]), "no rooms yet");

    // Without / with a bad token: 401.
    h.get("/api/me", None).await.err(401, "unauthorized");
    h.get("/api/me", Some("garbage")).await.err(401, "unauthorized");
    let forged = jwt_with_secret(json!({"sub": alice.id.to_string()}), "not-the-secret");
    h.get("/api/me", Some(&forged)).await.err(401, "unauthorized");
    h.get("/api/me", Some(&token("999999"))).await.err(401, "unauthorized");
    h.get("/api/me", Some(&token_exp(&alice.id.to_string(), -60))).await.err(401, "unauthorized");

    // Usernames are unique ignoring case.
    for name in ["alice", "ALICE"] {
        h.post("/api/auth/signup", None, json!({"username": name, "password": PASSWORD}))
            .await
            .err(409, "conflict");
    }
    // Bad usernames / passwords: 400.
    let long = "x".repeat(33);
    for name in ["ab", "_alice", ".alice", "-alice", "has space", "a/b", "semi;colon", "", long.as_str()] {
        h.post("/api/auth/signup", None, json!({"username": name, "password": PASSWORD}))
            .await
            .err(400, "bad_request");
    }
    for pw in ["", "1234567"] {
        h.post("/api/auth/signup", None, json!({"username": "shortpw", "password": pw}))
            .await
            .err(400, "bad_request");
    }
    // Edge names that are fine: 3 and 32 characters, all allowed punctuation.
    signup(&h, "a.b-c_9").await;
    signup(&h, &"y".repeat(32)).await;
    // Malformed bodies: 400 with a JSON error.
    for body in ["{bad", "[1,2]", "{\"username\": 5, \"password\": \"xxxxxxxxxx\"}", "{\"username\":\"zed\"}"]
    {
        h.raw("POST", "/api/auth/signup", None, Some(body.into())).await.err(400, "bad_request");
        h.raw("POST", "/api/auth/login", None, Some(body.into())).await.err(400, "bad_request");
    }

    // Log-in: 200, same shape; wrong credentials 401.
    let b = h.post("/api/auth/login", None, json!({"username": "alice", "password": PASSWORD})).await.ok(200);
    let login = session(&b);
    assert_eq!(login.id, alice.id, "{b}");
    assert_eq!(b["expires_in"], json!(900));
    assert_ne!(login.refresh, alice.refresh);
    h.post("/api/auth/login", None, json!({"username": "alice", "password": "wrong password"}))
        .await
        .err(401, "unauthorized");
    h.post("/api/auth/login", None, json!({"username": "nobody", "password": PASSWORD}))
        .await
        .err(401, "unauthorized");

    // Refresh rotates: a new pair, the old refresh token used up.
    let b = h.post("/api/auth/refresh", None, json!({"refresh_token": alice.refresh})).await.ok(200);
    let r1 = session(&b);
    assert_eq!(r1.id, alice.id);
    assert_ne!(r1.refresh, alice.refresh, "refresh must rotate");
    assert_eq!(h.get("/api/me", r1.tok()).await.ok(200)["id"].as_i64(), Some(alice.id));
    let r2 = session(&h.post("/api/auth/refresh", None, json!({"refresh_token": r1.refresh})).await.ok(200));
    assert_ne!(r2.refresh, r1.refresh);
    // Reuse of a used token: 401, and the whole family is revoked (its successor too).
    h.post("/api/auth/refresh", None, json!({"refresh_token": r1.refresh})).await.err(401, "unauthorized");
    h.post("/api/auth/refresh", None, json!({"refresh_token": r2.refresh})).await.err(401, "unauthorized");
    h.post("/api/auth/refresh", None, json!({"refresh_token": alice.refresh})).await.err(401, "unauthorized");
    // Another login's family is not affected.
    let l1 =
        session(&h.post("/api/auth/refresh", None, json!({"refresh_token": login.refresh})).await.ok(200));
    // Logout revokes.
    let r = h.post("/api/auth/logout", None, json!({"refresh_token": l1.refresh})).await;
    r.no_content();
    h.post("/api/auth/refresh", None, json!({"refresh_token": l1.refresh})).await.err(401, "unauthorized");
    // Garbage / missing refresh token.
    h.post("/api/auth/refresh", None, json!({"refresh_token": "not-a-token"})).await.err(401, "unauthorized");
    h.post("/api/auth/refresh", None, json!({})).await.err(400, "bad_request");
    h.raw("POST", "/api/auth/refresh", None, Some("{oops".into())).await.err(400, "bad_request");
}

#[tokio::test]
async fn login_rate_limit_per_account_and_address() {
    let srv = Server::new();
    let h = Http::new(&srv.addr);
    signup(&h, "dave").await;
    signup(&h, "erin").await;
    let login = |name: &str, pw: &str| json!({"username": name, "password": pw});

    // 5 failures per minute for an account are answered 401; then 429, even with the
    // right password.
    for i in 0..5 {
        let r = h.post("/api/auth/login", None, login("dave", &format!("wrong-{i}-password"))).await;
        r.err(401, "unauthorized");
    }
    h.post("/api/auth/login", None, login("dave", "wrong-again-password"))
        .await
        .err(429, "too_many_requests");
    h.post("/api/auth/login", None, login("dave", PASSWORD)).await.err(429, "too_many_requests");
    // Another account from the same address is still fine.
    h.post("/api/auth/login", None, login("erin", PASSWORD)).await.ok(200);

    // 20 failures per minute from one address (5 above + 15 on unknown accounts, at most 1
    // each) → 429 for every account from that address.
    for i in 0..15 {
        h.post("/api/auth/login", None, login(&format!("ghost{i}"), PASSWORD)).await.err(401, "unauthorized");
    }
    h.post("/api/auth/login", None, login("erin", PASSWORD)).await.err(429, "too_many_requests");
}

// ---------------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------------

/// Every route of docs/CHAT.md / the OpenAPI document (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/signup"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh"),
    ("post", "/api/auth/logout"),
    ("get", "/api/me"),
    ("get", "/api/rooms"),
    ("post", "/api/rooms"),
    ("get", "/api/rooms/{id}"),
    ("patch", "/api/rooms/{id}"),
    ("post", "/api/rooms/{id}/members"),
    ("delete", "/api/rooms/{id}/members/me"),
    ("post", "/api/dms"),
    ("get", "/api/rooms/{id}/messages"),
    ("post", "/api/rooms/{id}/messages"),
    ("patch", "/api/rooms/{id}/messages/{seq}"),
    ("delete", "/api/rooms/{id}/messages/{seq}"),
    ("post", "/api/rooms/{id}/messages/{seq}/reactions"),
    ("delete", "/api/rooms/{id}/messages/{seq}/reactions/{emoji}"),
    ("post", "/api/rooms/{id}/receipts"),
    ("post", "/api/rooms/{id}/typing"),
    ("get", "/api/notifications"),
    ("post", "/api/notifications/read"),
    ("get", "/api/search"),
    ("get", "/api/openapi.json"),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let srv = Server::new();
    let h = Http::new(&srv.addr);
    let doc = h.get("/api/openapi.json", None).await.ok(200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi version: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string(), "info.title");
    let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("no paths object in {doc}"));
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            documented.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<_> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(missing.is_empty(), "routes missing from /api/openapi.json: {missing:?}");
    // Every schema reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap_or_else(|| panic!("no components.schemas"));
    let text = doc.to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        assert!(schemas.contains_key(&name), "unresolved schema reference {name}");
    }
    // And every documented route is served: without a token the authenticated ones answer
    // 401 with the chat's error, the others 400 (empty body) — never the router's 404/405.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "1").replace("{seq}", "1").replace("{emoji}", "x");
        let secured = paths[path.as_str()][method.as_str()].get("security").is_some();
        let r = h.raw(&method.to_uppercase(), &concrete, None, None).await;
        if path == "/api/openapi.json" {
            assert_eq!(r.status, 200);
        } else if secured {
            r.err(401, "unauthorized");
        } else {
            r.err(400, "bad_request");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rooms, membership and authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rooms_membership_dms_and_authorization() {
    let (srv, h, alice, bob, carol) = trio().await;

    // Create: the caller owns it.
    let b = h.post("/api/rooms", alice.tok(), json!({"name": "Team"})).await.ok(201);
    let room = b["id"].as_i64().unwrap();
    assert_eq!(b["kind"], "group", "{b}");
    assert_eq!(b["name"], "Team");
    assert_eq!(b["channel"], json!(room_ch(room)));
    assert_eq!(b["role"], "owner");
    assert_eq!(b["unread"], json!(0));
    assert_eq!(member_ids(&b), BTreeSet::from([alice.id]), "{b}");
    for name in ["", "   "] {
        h.post("/api/rooms", alice.tok(), json!({ "name": name })).await.err(400, "bad_request");
    }
    h.raw("POST", "/api/rooms", alice.tok(), Some("{\"name\":".into())).await.err(400, "bad_request");

    // Invite (owner): bob joins; again is harmless; unknown user 404.
    let b = invite(&h, &alice, room, &bob).await;
    assert_eq!(member_ids(&b), BTreeSet::from([alice.id, bob.id]), "{b}");
    assert_eq!(member(&b, &bob)["role"], "member");
    let b = invite(&h, &alice, room, &bob).await;
    assert_eq!(b["members"].as_array().unwrap().len(), 2, "bob twice in {b}");
    h.post(&format!("/api/rooms/{room}/members"), alice.tok(), json!({"username": "nobody"}))
        .await
        .err(404, "not_found");
    assert_eq!(h.get(&format!("/api/rooms/{room}"), bob.tok()).await.ok(200)["role"], "member");

    let mut bw = ws(&srv.addr, &bob).await;
    let sub = bw.subscribe(&room_ch(room)).await;
    assert!(flag(&sub, "recoverable"), "room channels are recoverable: {sub}");
    assert!(sub["epoch"].as_str().is_some_and(|e| !e.is_empty()), "room channel epoch: {sub}");
    let mut aw = ws(&srv.addr, &alice).await;
    let mut cw = ws(&srv.addr, &carol).await;

    // A non-member can do nothing in the room (subscribing: see
    // `room_channels_are_for_members_only`).
    let r = room;
    for (method, data) in [
        ("chat.send", json!({"room_id": r, "text": "hi", "client_msg_id": "c-1"})),
        ("chat.messages", json!({"room_id": r})),
        ("chat.typing", json!({"room_id": r})),
        ("chat.mark", json!({"room_id": r, "read_seq": 1})),
        ("chat.react", json!({"room_id": r, "seq": 1, "emoji": "👍"})),
        ("chat.edit", json!({"room_id": r, "seq": 1, "text": "x"})),
        ("chat.delete", json!({"room_id": r, "seq": 1})),
    ] {
        assert_eq!(rpc_err(&mut cw, method, data.clone()).await, 103, "non-member {method} {data}");
    }
    let ct = carol.tok();
    h.get(&format!("/api/rooms/{r}"), ct).await.err(403, "forbidden");
    h.get(&format!("/api/rooms/{r}/messages"), ct).await.err(403, "forbidden");
    h.post(&format!("/api/rooms/{r}/messages"), ct, json!({"text": "hi", "client_msg_id": "c-2"}))
        .await
        .err(403, "forbidden");
    h.post(&format!("/api/rooms/{r}/members"), ct, json!({"username": "carol"})).await.err(403, "forbidden");
    h.patch(&format!("/api/rooms/{r}"), ct, json!({"name": "Mine"})).await.err(403, "forbidden");
    h.post(&format!("/api/rooms/{r}/typing"), ct, json!({})).await.err(403, "forbidden");
    h.post(&format!("/api/rooms/{r}/receipts"), ct, json!({"read_seq": 1})).await.err(403, "forbidden");
    h.post(&format!("/api/rooms/{r}/messages/1/reactions"), ct, json!({"emoji": "👍"}))
        .await
        .err(403, "forbidden");
    h.delete(&format!("/api/rooms/{r}/members/me"), ct).await.err(403, "forbidden");
    let rooms = h.get("/api/rooms", ct).await.ok(200);
    assert_eq!(rooms, json!([]), "carol's room list: {rooms}");

    // Only the owner/admin invites and renames.
    h.post(&format!("/api/rooms/{r}/members"), bob.tok(), json!({"username": "carol"}))
        .await
        .err(403, "forbidden");
    h.patch(&format!("/api/rooms/{r}"), bob.tok(), json!({"name": "Bob's"})).await.err(403, "forbidden");
    // Nothing was stored by the refused calls.
    no_stored_event(&mut bw, &room_ch(r), QUIET).await;
    let b = h.patch(&format!("/api/rooms/{r}"), alice.tok(), json!({"name": "Team 2"})).await.ok(200);
    assert_eq!(b["name"], "Team 2", "{b}");
    let ev = event(&mut bw, &room_ch(r), "room_updated").await;
    assert_eq!(ev["data"]["room"]["name"], "Team 2", "{ev}");
    assert!(num(&ev, "offset") > 0, "room_updated is a stored event: {ev}");
    let ids: BTreeSet<i64> =
        ev["data"]["member_ids"].as_array().unwrap().iter().filter_map(Value::as_i64).collect();
    assert_eq!(ids, BTreeSet::from([alice.id, bob.id]), "{ev}");
    h.patch(&format!("/api/rooms/{r}"), alice.tok(), json!({"name": ""})).await.err(400, "bad_request");

    // Clients cannot publish to a room channel.
    assert_eq!(bw.err("publish", json!({"channel": room_ch(r), "data": {"type": "message"}})).await, 103);

    // Nobody edits or deletes another's message.
    let m1 = send(&h, &alice, r, "alice's words", "a-1").await;
    let m2 = rpc_send(&mut bw, r, "bob's words", "b-1").await;
    let (s1, s2) = (seq(&m1), seq(&m2));
    h.patch(&format!("/api/rooms/{r}/messages/{s1}"), bob.tok(), json!({"text": "mine now"}))
        .await
        .err(403, "forbidden");
    h.delete(&format!("/api/rooms/{r}/messages/{s1}"), bob.tok()).await.err(403, "forbidden");
    assert_eq!(rpc_err(&mut bw, "chat.edit", json!({"room_id": r, "seq": s1, "text": "mine"})).await, 103);
    assert_eq!(rpc_err(&mut bw, "chat.delete", json!({"room_id": r, "seq": s1})).await, 103);
    h.patch(&format!("/api/rooms/{r}/messages/{s2}"), alice.tok(), json!({"text": "owner edit"}))
        .await
        .err(403, "forbidden");
    assert_eq!(rpc_err(&mut aw, "chat.edit", json!({"room_id": r, "seq": s2, "text": "owner"})).await, 103);
    let list = h.get(&format!("/api/rooms/{r}/messages"), alice.tok()).await.ok(200);
    let texts: Vec<_> = list.as_array().unwrap().iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, vec![json!("alice's words"), json!("bob's words")], "{list}");
    // Search does not reach into others' rooms.
    let hits = h.get("/api/search?q=words", ct).await.ok(200);
    assert_eq!(hits, json!([]), "carol searched alice's room: {hits}");

    // Unknown rooms: 404 (REST) / 102 (RPC).
    let u = 999_999;
    let at = alice.tok();
    h.get(&format!("/api/rooms/{u}"), at).await.err(404, "not_found");
    h.get(&format!("/api/rooms/{u}/messages"), at).await.err(404, "not_found");
    h.post(&format!("/api/rooms/{u}/messages"), at, json!({"text": "x", "client_msg_id": "u-1"}))
        .await
        .err(404, "not_found");
    h.patch(&format!("/api/rooms/{u}"), at, json!({"name": "x"})).await.err(404, "not_found");
    h.post(&format!("/api/rooms/{u}/members"), at, json!({"username": "bob"})).await.err(404, "not_found");
    h.post(&format!("/api/rooms/{u}/receipts"), at, json!({"read_seq": 1})).await.err(404, "not_found");
    h.post(&format!("/api/rooms/{u}/typing"), at, json!({})).await.err(404, "not_found");
    h.delete(&format!("/api/rooms/{u}/members/me"), at).await.err(404, "not_found");
    assert_eq!(
        rpc_err(&mut aw, "chat.send", json!({"room_id": u, "text": "x", "client_msg_id": "u-2"})).await,
        102
    );
    assert_eq!(rpc_err(&mut aw, "chat.messages", json!({"room_id": u})).await, 102);
    assert_eq!(rpc_err(&mut aw, "chat.typing", json!({"room_id": u})).await, 102);
    // Unknown messages in a known room: 404.
    h.patch(&format!("/api/rooms/{r}/messages/{u}"), at, json!({"text": "x"})).await.err(404, "not_found");
    h.delete(&format!("/api/rooms/{r}/messages/{u}"), at).await.err(404, "not_found");
    h.post(&format!("/api/rooms/{r}/messages/{u}/reactions"), at, json!({"emoji": "👍"}))
        .await
        .err(404, "not_found");
    // Bad numbers in the path: 400.
    h.get("/api/rooms/abc", at).await.err(400, "bad_request");
    h.get("/api/rooms/1.5/messages", at).await.err(400, "bad_request");
    h.patch("/api/rooms/abc", at, json!({"name": "x"})).await.err(400, "bad_request");
    h.post("/api/rooms/abc/messages", at, json!({"text": "x", "client_msg_id": "p-1"}))
        .await
        .err(400, "bad_request");
    h.patch(&format!("/api/rooms/{r}/messages/xyz"), at, json!({"text": "x"})).await.err(400, "bad_request");
    h.delete(&format!("/api/rooms/{r}/messages/-"), at).await.err(400, "bad_request");
    h.post("/api/rooms/abc/receipts", at, json!({"read_seq": 1})).await.err(400, "bad_request");
    h.post("/api/rooms/abc/typing", at, json!({})).await.err(400, "bad_request");
    h.delete("/api/rooms/abc/members/me", at).await.err(400, "bad_request");
    h.post(&format!("/api/rooms/{r}/messages/1e3/reactions"), at, json!({"emoji": "x"}))
        .await
        .err(400, "bad_request");

    // DMs: the same pair always gets the same room, from either side.
    let d1 = h.post("/api/dms", alice.tok(), json!({"username": "bob"})).await.ok(200);
    assert_eq!(d1["kind"], "dm", "{d1}");
    assert_eq!(member_ids(&d1), BTreeSet::from([alice.id, bob.id]), "{d1}");
    let dm = d1["id"].as_i64().unwrap();
    assert_ne!(dm, r);
    let d2 = h.post("/api/dms", bob.tok(), json!({"username": "alice"})).await.ok(200);
    assert_eq!(d2["id"].as_i64(), Some(dm), "bob→alice must be alice→bob's room: {d2}");
    let d3 = h.post("/api/dms", alice.tok(), json!({"username": "bob"})).await.ok(200);
    assert_eq!(d3["id"].as_i64(), Some(dm), "{d3}");
    let dms = h.get("/api/rooms", alice.tok()).await.ok(200);
    let n = dms.as_array().unwrap().iter().filter(|x| x["kind"] == "dm").count();
    assert_eq!(n, 1, "one DM for the pair: {dms}");
    h.post("/api/dms", alice.tok(), json!({"username": "alice"})).await.err(400, "bad_request");
    h.post("/api/dms", alice.tok(), json!({"username": "nobody"})).await.err(404, "not_found");
    h.post("/api/dms", alice.tok(), json!({})).await.err(400, "bad_request");
    h.get(&format!("/api/rooms/{dm}/messages"), ct).await.err(403, "forbidden");
    assert_eq!(
        rpc_err(&mut cw, "chat.send", json!({"room_id": dm, "text": "psst", "client_msg_id": "c-9"})).await,
        103
    );
    bw.subscribe(&room_ch(dm)).await;

    // Leaving: bob can no longer read or send.
    let r_leave = h.delete(&format!("/api/rooms/{r}/members/me"), bob.tok()).await;
    r_leave.no_content();
    h.get(&format!("/api/rooms/{r}/messages"), bob.tok()).await.err(403, "forbidden");
    h.post(
        &format!("/api/rooms/{r}/messages"),
        bob.tok(),
        json!({"text": "still here?", "client_msg_id": "b-9"}),
    )
    .await
    .err(403, "forbidden");
    let rooms = h.get("/api/rooms", bob.tok()).await.ok(200);
    assert!(rooms.as_array().unwrap().iter().all(|x| x["id"].as_i64() != Some(r)), "{rooms}");
    let b = h.get(&format!("/api/rooms/{r}"), alice.tok()).await.ok(200);
    assert_eq!(member_ids(&b), BTreeSet::from([alice.id]), "{b}");

    // Moderation: the owner (or an admin) may delete another's message, leaving a tombstone;
    // editing stays the author's alone (checked above), and plain members delete only their own.
    let b = invite(&h, &alice, r, &carol).await;
    assert!(member_ids(&b).contains(&carol.id));
    let mc = send(&h, &carol, r, "carol's words", "c-3").await;
    let sc = seq(&mc);
    h.patch(&format!("/api/rooms/{r}/messages/{sc}"), alice.tok(), json!({"text": "moderated"}))
        .await
        .err(403, "forbidden");
    let d = h.delete(&format!("/api/rooms/{r}/messages/{sc}"), alice.tok()).await.ok(200);
    assert_eq!(d["deleted"], json!(true), "{d}");
    assert_eq!(d["text"], json!(""), "{d}");
    let list = h.get(&format!("/api/rooms/{r}/messages?after={}", sc - 1), carol.tok()).await.ok(200);
    assert_eq!(list[0]["deleted"], json!(true), "{list}");
}

/// Only members subscribe to `room:{id}` (103 otherwise), also through recovery and long
/// polling; a member who leaves loses the subscription. Every rule is checked and the broken
/// ones are listed together.
#[tokio::test]
async fn room_channels_are_for_members_only() {
    let (srv, h, alice, bob, carol) = trio().await;
    let r = create_room(&h, &alice, "Team").await;
    invite(&h, &alice, r, &bob).await;
    let dm =
        h.post("/api/dms", alice.tok(), json!({"username": "bob"})).await.ok(200)["id"].as_i64().unwrap();
    let mut bw = ws(&srv.addr, &bob).await;
    let sub = bw.subscribe(&room_ch(r)).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    send(&h, &alice, r, "members only", "m1").await;
    stored_event(&mut bw, &room_ch(r)).await;

    let mut failures: Vec<String> = Vec::new();
    let attempts = [
        json!({"channel": room_ch(r)}),
        json!({"channel": room_ch(r), "recover": true, "offset": 0, "epoch": epoch}),
        json!({"channel": room_ch(dm)}),
        json!({"channel": user_ch(&bob)}),
    ];
    for params in attempts {
        let mut cw = ws(&srv.addr, &carol).await;
        let reply = cw.call("subscribe", params.clone()).await;
        if error_code(&reply) != Some(103) {
            failures.push(format!("non-member carol: subscribe {params} → {reply} (expected error 103)"));
        }
    }
    // Long polling has the permissions of subscribing (docs/PROTOCOL.md).
    let poll =
        h.get(&format!("/api/poll?channel={}&since=0&epoch={epoch}", enc(&room_ch(r))), carol.tok()).await;
    if poll.status != 403 {
        failures.push(format!(
            "non-member carol: {} → HTTP {} {} (expected 403)",
            poll.what,
            poll.status,
            shorten(&poll.text)
        ));
    }

    // Bob leaves: his subscription ends, and he cannot subscribe again.
    let r_leave = h.delete(&format!("/api/rooms/{r}/members/me"), bob.tok()).await;
    r_leave.no_content();
    let ch = room_ch(r);
    let gone = bw
        .push_where(T, |p| {
            p["push"]["channel"].as_str() == Some(ch.as_str()) && p["push"].get("unsubscribe").is_some()
        })
        .await;
    if gone.is_none() {
        failures
            .push(format!("bob left room {r} but got no unsubscribe push for {ch}; pushes: {:?}", bw.pushes));
    }
    let mut bw2 = ws(&srv.addr, &bob).await;
    let reply = bw2.call("subscribe", json!({"channel": ch})).await;
    if error_code(&reply) != Some(103) {
        failures.push(format!("former member bob: subscribe {ch} → {reply} (expected error 103)"));
    }
    assert!(failures.is_empty(), "room channel permissions broken:\n  {}", failures.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Messages: send / edit / delete / react over REST and RPC, bad inputs, retries, paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn messages_send_edit_delete_react_bad_input_retry_paging() {
    let Team { srv, h, alice, bob, r, ch } = team().await;

    let mut bw = ws(&srv.addr, &bob).await;
    let sub = bw.subscribe(&ch).await;
    let mut last = num(&sub, "offset");
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    assert!(last >= 1, "the invite is a stored event: {sub}");
    let mut aw = ws(&srv.addr, &alice).await;

    // Every stored event bob sees next must be `ty` at offset last+1.
    async fn next_stored(bw: &mut Client, ch: &str, last: &mut i64, ty: &str) -> Value {
        let p = stored_event(bw, ch).await;
        assert_eq!(num(&p, "offset"), *last + 1, "stored events must come in seq order with no gap: {p}");
        assert_eq!(p["data"]["type"], json!(ty), "{p}");
        *last += 1;
        p
    }

    // chat.send over RPC: the message, acknowledged with its seq.
    let m1 = rpc_send(&mut aw, r, "hello bob", "c1").await;
    assert_eq!(m1["room_id"].as_i64(), Some(r), "{m1}");
    assert_eq!(m1["sender_id"].as_i64(), Some(alice.id));
    assert_eq!(m1["sender"], "alice");
    assert_eq!(m1["text"], "hello bob");
    assert_eq!(m1["client_msg_id"], "c1");
    assert_eq!(m1["deleted"], json!(false));
    assert_eq!(m1["reactions"], json!([]));
    assert!(m1["created_at"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(seq(&m1), last + 1, "a message's seq is the room's next seq");
    let p = next_stored(&mut bw, &ch, &mut last, "message").await;
    assert_eq!(p["data"]["message"], m1, "the event carries the message as acknowledged");

    // POST over REST.
    let m2 = send(&h, &alice, r, "second", "c2").await;
    assert_eq!(seq(&m2), last + 1);
    let p = next_stored(&mut bw, &ch, &mut last, "message").await;
    assert_eq!(p["data"]["message"]["text"], "second");
    // reply_to an existing message; an unknown one is bad input.
    let m3 = h
        .post(
            &format!("/api/rooms/{r}/messages"),
            alice.tok(),
            json!({"text": "re", "client_msg_id": "c3", "reply_to": seq(&m1)}),
        )
        .await
        .ok(201);
    assert_eq!(m3["reply_to"].as_i64(), Some(seq(&m1)), "{m3}");
    next_stored(&mut bw, &ch, &mut last, "message").await;
    h.post(
        &format!("/api/rooms/{r}/messages"),
        alice.tok(),
        json!({"text": "re", "client_msg_id": "c4", "reply_to": 99999}),
    )
    .await
    .err(400, "bad_request");
    assert_eq!(
        rpc_err(
            &mut aw,
            "chat.send",
            json!({"room_id": r, "text": "re", "client_msg_id": "c5", "reply_to": 99999})
        )
        .await,
        107
    );

    // Bad inputs, REST.
    let path = format!("/api/rooms/{r}/messages");
    let at = alice.tok();
    h.post(&path, at, json!({"text": "", "client_msg_id": "e1"})).await.err(400, "bad_request");
    h.post(&path, at, json!({"text": "  \n\t ", "client_msg_id": "e2"})).await.err(400, "bad_request");
    h.post(&path, at, json!({"text": "x".repeat(4001), "client_msg_id": "e3"})).await.err(413, "too_large");
    h.post(&path, at, json!({"text": "no id"})).await.err(400, "bad_request");
    h.post(&path, at, json!({"text": "empty id", "client_msg_id": ""})).await.err(400, "bad_request");
    h.post(&path, at, json!({"client_msg_id": "e4"})).await.err(400, "bad_request");
    h.post(&path, at, json!({"text": 42, "client_msg_id": "e5"})).await.err(400, "bad_request");
    // NUL is refused whatever the store (PostgreSQL text cannot hold it).
    h.post(&path, at, json!({"text": "a\u{0}b", "client_msg_id": "e7"})).await.err(400, "bad_request");
    h.post(&path, at, json!({"text": "ok", "client_msg_id": "e\u{0}8"})).await.err(400, "bad_request");
    for body in ["{\"text\":", "not json", "[]"] {
        h.raw("POST", &path, at, Some(body.into())).await.err(400, "bad_request");
    }
    // Bad inputs, RPC: 107.
    for data in [
        json!({"room_id": r, "text": "", "client_msg_id": "e6"}),
        json!({"room_id": r, "text": "x".repeat(4001), "client_msg_id": "e7"}),
        json!({"room_id": r, "text": "no id"}),
        json!({"room_id": r, "text": "x", "client_msg_id": ""}),
        json!({"text": "no room", "client_msg_id": "e8"}),
        json!({"room_id": "one", "text": "x", "client_msg_id": "e9"}),
    ] {
        assert_eq!(rpc_err(&mut aw, "chat.send", data.clone()).await, 107, "chat.send {data}");
    }
    // The longest allowed message is fine.
    let m4 = send(&h, &alice, r, &"x".repeat(4000), "c6").await;
    let p = next_stored(&mut bw, &ch, &mut last, "message").await;
    assert_eq!(seq(&p["data"]["message"]), seq(&m4), "refused messages must not be stored or published");

    // The same client_msg_id returns the original (same seq), stores and publishes nothing.
    let d = send(&h, &alice, r, "dup", "dup-1").await;
    next_stored(&mut bw, &ch, &mut last, "message").await;
    let again =
        h.post(&path, at, json!({"text": "dup (retry with other text)", "client_msg_id": "dup-1"})).await;
    assert!(matches!(again.status, 200 | 201), "{} → {} {}", again.what, again.status, again.text);
    assert_eq!(seq(&again.body), seq(&d), "retry must return the original: {}", again.text);
    assert_eq!(again.body["text"], "dup");
    let via_rpc = rpc_send(&mut aw, r, "dup", "dup-1").await;
    assert_eq!(seq(&via_rpc), seq(&d), "{via_rpc}");
    no_stored_event(&mut bw, &ch, QUIET).await;
    assert_eq!(h.get(&format!("/api/rooms/{r}"), at).await.ok(200)["last_seq"].as_i64(), Some(last));
    // Another sender's same client_msg_id is another message.
    let other = rpc_send(&mut bw, r, "bob dup", "dup-1").await;
    assert_eq!(seq(&other), last + 1, "{other}");
    next_stored(&mut bw, &ch, &mut last, "message").await;

    // Edit (own): REST and RPC; the event carries the whole message.
    let e = h.patch(&format!("{path}/{}", seq(&m1)), at, json!({"text": "hello bob (edited)"})).await.ok(200);
    assert_eq!(e["text"], "hello bob (edited)", "{e}");
    assert_eq!(seq(&e), seq(&m1));
    assert!(e["edited_at"].as_i64().is_some(), "edited_at: {e}");
    let p = next_stored(&mut bw, &ch, &mut last, "edit").await;
    assert_eq!(p["data"]["message"]["seq"].as_i64(), Some(seq(&m1)), "{p}");
    assert_eq!(p["data"]["message"]["text"], "hello bob (edited)");
    let e =
        rpc_ok(&mut aw, "chat.edit", json!({"room_id": r, "seq": seq(&m2), "text": "second (edited)"})).await;
    assert_eq!(e["text"], "second (edited)", "{e}");
    next_stored(&mut bw, &ch, &mut last, "edit").await;
    h.patch(&format!("{path}/{}", seq(&m1)), at, json!({"text": " "})).await.err(400, "bad_request");
    h.patch(&format!("{path}/{}", seq(&m1)), at, json!({"text": "x".repeat(4001)}))
        .await
        .err(413, "too_large");
    h.raw("PATCH", &format!("{path}/{}", seq(&m1)), at, Some("{".into())).await.err(400, "bad_request");
    assert_eq!(rpc_err(&mut aw, "chat.edit", json!({"room_id": r, "seq": seq(&m1), "text": ""})).await, 107);

    // Reactions: add / remove over REST and RPC.
    let react_path = format!("{path}/{}/reactions", seq(&m1));
    let m = h.post(&react_path, bob.tok(), json!({"emoji": "👍"})).await.ok(200);
    assert_eq!(m["reactions"], json!([{"emoji": "👍", "user_ids": [bob.id]}]), "{m}");
    let p = next_stored(&mut bw, &ch, &mut last, "reaction").await;
    assert_eq!(p["data"]["message"]["reactions"], m["reactions"], "{p}");
    let m = rpc_ok(&mut aw, "chat.react", json!({"room_id": r, "seq": seq(&m1), "emoji": "🎉"})).await;
    let emojis: BTreeSet<String> = m["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["emoji"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(emojis, BTreeSet::from(["👍".to_string(), "🎉".to_string()]), "{m}");
    next_stored(&mut bw, &ch, &mut last, "reaction").await;
    let m = h.delete(&format!("{react_path}/{}", enc("👍")), bob.tok()).await.ok(200);
    assert_eq!(m["reactions"], json!([{"emoji": "🎉", "user_ids": [alice.id]}]), "{m}");
    next_stored(&mut bw, &ch, &mut last, "reaction").await;
    let m =
        rpc_ok(&mut aw, "chat.react", json!({"room_id": r, "seq": seq(&m1), "emoji": "🎉", "add": false}))
            .await;
    assert_eq!(m["reactions"], json!([]), "{m}");
    next_stored(&mut bw, &ch, &mut last, "reaction").await;
    h.post(&react_path, bob.tok(), json!({"emoji": ""})).await.err(400, "bad_request");
    h.post(&react_path, bob.tok(), json!({})).await.err(400, "bad_request");

    // Delete (own): a tombstone.
    let del = h.delete(&format!("{path}/{}", seq(&m2)), at).await.ok(200);
    assert_eq!(del["deleted"], json!(true), "{del}");
    assert_eq!(del["text"], "", "a tombstone has no text: {del}");
    let p = next_stored(&mut bw, &ch, &mut last, "delete").await;
    assert_eq!(p["data"]["message"]["deleted"], json!(true), "{p}");
    assert_eq!(p["data"]["message"]["seq"].as_i64(), Some(seq(&m2)));
    let del = rpc_ok(&mut aw, "chat.delete", json!({"room_id": r, "seq": seq(&m3)})).await;
    assert_eq!(del["deleted"], json!(true), "{del}");
    next_stored(&mut bw, &ch, &mut last, "delete").await;
    h.patch(&format!("{path}/{}", seq(&m2)), at, json!({"text": "zombie"})).await.err(404, "not_found");
    let code = rpc_err(&mut aw, "chat.edit", json!({"room_id": r, "seq": seq(&m2), "text": "z"})).await;
    assert!(matches!(code, 102 | 107), "editing a tombstone over RPC: error {code}");

    // chat.rooms.
    let rooms = rpc_ok(&mut bw, "chat.rooms", json!({})).await;
    let mine = rooms.as_array().unwrap().iter().find(|x| x["id"].as_i64() == Some(r)).cloned();
    let mine = mine.unwrap_or_else(|| panic!("room {r} not in chat.rooms: {rooms}"));
    assert_eq!(mine["channel"], json!(ch));
    assert_eq!(mine["last_seq"].as_i64(), Some(last), "{mine}");
    assert_eq!(mine["name"], "Team");
    let rest_rooms = h.get("/api/rooms", bob.tok()).await.ok(200);
    assert_eq!(rest_rooms, rooms, "chat.rooms answers the same JSON as GET /api/rooms");

    // Paging: 10 more messages.
    let mut page = Vec::new();
    for i in 0..10 {
        page.push(seq(&send(&h, &alice, r, &format!("page {i}"), &format!("page-{i}")).await));
        next_stored(&mut bw, &ch, &mut last, "message").await;
    }
    let get = |q: String| {
        let h = h.clone();
        let t = alice.access.clone();
        async move { h.get(&format!("/api/rooms/{r}/messages{q}"), Some(&t)).await }
    };
    assert_eq!(seqs(&get("?limit=3".into()).await.ok(200)), page[7..10].to_vec(), "latest 3, oldest first");
    assert_eq!(seqs(&get(format!("?before={}&limit=3", page[5])).await.ok(200)), page[2..5].to_vec());
    assert_eq!(seqs(&get(format!("?after={}&limit=3", page[5])).await.ok(200)), page[6..9].to_vec());
    assert_eq!(seqs(&get(format!("?after={}", page[9])).await.ok(200)), Vec::<i64>::new());
    let all = get(String::new()).await.ok(200);
    let all_seqs = seqs(&all);
    assert!(all_seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {all_seqs:?}");
    assert_eq!(all_seqs.last(), page.last());
    assert!(all_seqs.contains(&seq(&m1)));
    let dup_count = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["client_msg_id"] == "dup-1" && m["sender"] == "alice")
        .count();
    assert_eq!(dup_count, 1, "a retried client_msg_id must be stored once");
    get("?before=abc".into()).await.err(400, "bad_request");
    get("?limit=many".into()).await.err(400, "bad_request");
    get(format!("?before={}&after={}", page[5], page[1])).await.err(400, "bad_request");
    // Paging over RPC.
    let got = rpc_ok(&mut aw, "chat.messages", json!({"room_id": r, "before": page[5], "limit": 2})).await;
    assert_eq!(seqs(&got), page[3..5].to_vec(), "{got}");
    let got = rpc_ok(&mut aw, "chat.messages", json!({"room_id": r, "after": page[7]})).await;
    assert_eq!(seqs(&got), page[8..10].to_vec(), "{got}");
    let got = rpc_ok(&mut aw, "chat.messages", json!({"room_id": r, "limit": 1})).await;
    assert_eq!(seqs(&got), vec![page[9]], "{got}");
    let got = rpc_ok(&mut aw, "chat.messages", json!({"room_id": r})).await;
    assert_eq!(got, all, "chat.messages answers the same JSON as GET .../messages");
    assert_eq!(rpc_err(&mut aw, "chat.messages", json!({"room_id": r, "before": 5, "after": 1})).await, 107);
    assert_eq!(rpc_err(&mut aw, "chat.nope", json!({})).await, 104, "unknown RPC method");

    // Nothing else was published, and the epoch never changed.
    no_stored_event(&mut bw, &ch, QUIET).await;
    let sub2 = {
        let mut c = ws(&srv.addr, &bob).await;
        c.subscribe(&ch).await
    };
    assert_eq!(num(&sub2, "offset"), last, "{sub2}");
    assert_eq!(sub2["epoch"], json!(epoch));
}

// ---------------------------------------------------------------------------------------------
// Receipts and unread counts across two devices
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn receipts_monotonic_pushed_and_unread_across_devices() {
    let Team { srv, h, alice, bob, r, ch } = team().await;
    let bch = user_ch(&bob);

    let mut aw = ws(&srv.addr, &alice).await;
    aw.subscribe(&ch).await;
    // Bob's two devices.
    let mut b1 = ws(&srv.addr, &bob).await;
    let mut b2 = ws(&srv.addr, &bob).await;
    b1.subscribe(&bch).await;
    b2.subscribe(&bch).await;

    let mut ms = Vec::new();
    for i in 1..=3 {
        ms.push(seq(&send(&h, &alice, r, &format!("message {i}"), &format!("m{i}")).await));
    }
    // Each device hears of each message, with the unread count.
    for dev in [&mut b1, &mut b2] {
        for (i, s) in ms.iter().enumerate() {
            let p = event(dev, &bch, "message").await;
            let d = &p["data"];
            assert_eq!(d["room_id"].as_i64(), Some(r), "{p}");
            assert_eq!(d["seq"].as_i64(), Some(*s), "{p}");
            assert_eq!(d["from"], "alice", "{p}");
            assert_eq!(d["preview"], json!(format!("message {}", i + 1)), "{p}");
            assert_eq!(d["unread"].as_i64(), Some(i as i64 + 1), "{p}");
        }
    }
    let room = room_in_list(&h, &bob, r).await;
    assert_eq!(room["unread"].as_i64(), Some(3), "{room}");
    assert_eq!(room["last_seq"].as_i64(), Some(ms[2]));
    assert_eq!(seq(&room["last_message"]), ms[2]);
    assert_eq!(
        room_in_list(&h, &alice, r).await["unread"].as_i64(),
        Some(0),
        "one's own messages are not unread"
    );

    // Device 1 reads up to the 2nd message.
    let mk = rpc_ok(&mut b1, "chat.mark", json!({"room_id": r, "read_seq": ms[1]})).await;
    assert_eq!(mk["room_id"].as_i64(), Some(r), "{mk}");
    assert_eq!(mk["user_id"].as_i64(), Some(bob.id));
    assert_eq!(mk["read_seq"].as_i64(), Some(ms[1]));
    assert!(mk["delivered_seq"].as_i64().is_some_and(|d| d >= ms[1]), "{mk}");
    // The room hears it as an ephemeral receipt.
    let p = event(&mut aw, &ch, "receipt").await;
    assert_ephemeral(&p);
    assert_eq!(p["data"]["user_id"].as_i64(), Some(bob.id), "{p}");
    assert_eq!(p["data"]["read_seq"].as_i64(), Some(ms[1]), "{p}");
    // The other device updates its unread count.
    let p = event(&mut b2, &bch, "unread").await;
    assert_eq!(p["data"]["room_id"].as_i64(), Some(r), "{p}");
    assert_eq!(p["data"]["unread"].as_i64(), Some(1), "{p}");
    assert_eq!(room_in_list(&h, &bob, r).await["unread"].as_i64(), Some(1));

    // An older marker never moves one back (RPC and REST).
    let mk = rpc_ok(&mut b2, "chat.mark", json!({"room_id": r, "read_seq": ms[0]})).await;
    assert_eq!(mk["read_seq"].as_i64(), Some(ms[1]), "read moved back: {mk}");
    assert_eq!(room_in_list(&h, &bob, r).await["unread"].as_i64(), Some(1));
    let rp = format!("/api/rooms/{r}/receipts");
    let mk = h.post(&rp, bob.tok(), json!({"delivered_seq": ms[2]})).await.ok(200);
    assert_eq!(mk["delivered_seq"].as_i64(), Some(ms[2]), "{mk}");
    assert_eq!(mk["read_seq"].as_i64(), Some(ms[1]), "{mk}");
    let d2 = ms[2];
    let p = pub_where(&mut aw, &ch, T, move |p| {
        p["data"]["type"] == "receipt" && p["data"]["delivered_seq"].as_i64() == Some(d2)
    })
    .await;
    let p = p.unwrap_or_else(|| panic!("no receipt with delivered_seq {d2}; pushes: {:?}", aw.pushes));
    assert_ephemeral(&p);
    assert_eq!(p["data"]["read_seq"].as_i64(), Some(ms[1]), "{p}");
    let mk = h.post(&rp, bob.tok(), json!({"delivered_seq": ms[0], "read_seq": ms[0]})).await.ok(200);
    assert_eq!((mk["delivered_seq"].as_i64(), mk["read_seq"].as_i64()), (Some(ms[2]), Some(ms[1])), "{mk}");
    // Read never passes the room's last seq.
    let mk = h.post(&rp, bob.tok(), json!({"read_seq": 1_000_000})).await.ok(200);
    assert_eq!(mk["read_seq"].as_i64(), Some(ms[2]), "read_seq beyond the last seq: {mk}");
    assert_eq!(room_in_list(&h, &bob, r).await["unread"].as_i64(), Some(0));
    let p = pub_where(&mut b1, &bch, T, |p| p["data"]["type"] == "unread" && p["data"]["unread"] == json!(0))
        .await;
    assert!(p.is_some(), "device 1 was not told unread 0; pushes: {:?}", b1.pushes);
    // Alice sees bob's markers in the member list.
    let room = room_in_list(&h, &alice, r).await;
    let mb = member(&room, &bob);
    assert_eq!((mb["read_seq"].as_i64(), mb["delivered_seq"].as_i64()), (Some(ms[2]), Some(ms[2])), "{room}");

    // No receipt the room heard ever moved a marker back.
    aw.drain_for(Duration::from_millis(200)).await;
    let mut prev = (ms[1], 0);
    for p in aw.pushes.iter().map(|p| &p["push"]["pub"]).filter(|p| p["data"]["type"] == "receipt") {
        let cur =
            (p["data"]["read_seq"].as_i64().unwrap_or(-1), p["data"]["delivered_seq"].as_i64().unwrap_or(-1));
        assert!(cur.0 >= prev.0 && cur.1 >= prev.1, "receipt moved back: {p} after {prev:?}");
        assert_eq!(p["data"]["user_id"].as_i64(), Some(bob.id), "{p}");
        prev = cur;
    }

    // Bad receipts.
    h.post(&rp, bob.tok(), json!({})).await.err(400, "bad_request");
    h.post(&rp, bob.tok(), json!({"read_seq": -1})).await.err(400, "bad_request");
    h.raw("POST", &rp, bob.tok(), Some("{read_seq:1}".into())).await.err(400, "bad_request");
    assert_eq!(rpc_err(&mut b1, "chat.mark", json!({"room_id": r})).await, 107);

    // A new message counts again; receipts took no seq from the stream.
    let s4 = seq(&send(&h, &alice, r, "message 4", "m4").await);
    assert_eq!(s4, ms[2] + 1, "ephemeral receipts must not take seqs");
    let p = event(&mut b2, &bch, "message").await;
    assert_eq!(p["data"]["unread"].as_i64(), Some(1), "{p}");
    assert_eq!(room_in_list(&h, &bob, r).await["unread"].as_i64(), Some(1));
}

// ---------------------------------------------------------------------------------------------
// Typing and presence
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn typing_throttled_and_presence_first_and_last_connection() {
    let Team { srv, h, alice, bob, r, ch } = team().await;
    let mut aw = ws(&srv.addr, &alice).await;
    aw.subscribe(&ch).await;
    let is_bob =
        move |p: &Value| p["data"]["type"] == "presence" && p["data"]["user_id"].as_i64() == Some(bob.id);

    // Bob's first connection: online.
    let mut b1 = ws(&srv.addr, &bob).await;
    let p = pub_where(&mut aw, &ch, T, is_bob)
        .await
        .unwrap_or_else(|| panic!("no presence event for bob online"));
    assert_ephemeral(&p);
    assert_eq!(p["data"]["online"], json!(true), "{p}");
    assert_eq!(member(&room_in_list(&h, &alice, r).await, &bob)["online"], json!(true));
    // A second connection is not news.
    let mut b2 = ws(&srv.addr, &bob).await;
    if let Some(p) = pub_where(&mut aw, &ch, QUIET, is_bob).await {
        panic!("presence event on bob's second connection: {p}");
    }

    // Typing: forwarded (ephemeral), then throttled (2 s by default) for REST and RPC alike.
    let t0 = Instant::now();
    let ok = rpc_ok(&mut b1, "chat.typing", json!({"room_id": r})).await;
    assert!(ok.is_null() || ok == json!({}), "chat.typing answers {{}}: {ok}");
    let p = event(&mut aw, &ch, "typing").await;
    assert_ephemeral(&p);
    assert_eq!(p["data"]["user_id"].as_i64(), Some(bob.id), "{p}");
    assert_eq!(p["data"]["username"], "bob", "{p}");
    assert_eq!(p["data"]["expires_ms"], json!(5000), "{p}");
    rpc_ok(&mut b1, "chat.typing", json!({"room_id": r})).await;
    let rt = h.post(&format!("/api/rooms/{r}/typing"), bob.tok(), json!({})).await;
    rt.no_content();
    rpc_ok(&mut b2, "chat.typing", json!({"room_id": r})).await;
    assert!(t0.elapsed() < Duration::from_millis(1500), "too slow to check the throttle");
    no_event(&mut aw, &ch, "typing", QUIET).await;
    // After the throttle interval, forwarded again.
    let wait = Duration::from_millis(2300).saturating_sub(t0.elapsed());
    tokio::time::sleep(wait).await;
    let rt = h.post(&format!("/api/rooms/{r}/typing"), bob.tok(), json!({})).await;
    rt.no_content();
    let p = event(&mut aw, &ch, "typing").await;
    assert_eq!(p["data"]["user_id"].as_i64(), Some(bob.id), "{p}");
    // Typing is never stored: the next message takes the next seq after the invite.
    let room = room_in_list(&h, &alice, r).await;
    let m = send(&h, &alice, r, "hi", "h1").await;
    assert_eq!(seq(&m), room["last_seq"].as_i64().unwrap() + 1);

    // Closing one of two connections: still online; closing the last: offline, last_seen.
    b1.close_now().await;
    if let Some(p) = pub_where(&mut aw, &ch, Duration::from_millis(600), is_bob).await {
        panic!("presence event while bob still has a connection: {p}");
    }
    b2.close_now().await;
    let p = pub_where(&mut aw, &ch, T, is_bob)
        .await
        .unwrap_or_else(|| panic!("no presence event for bob offline"));
    assert_ephemeral(&p);
    assert_eq!(p["data"]["online"], json!(false), "{p}");
    assert!(p["data"]["last_seen"].as_i64().is_some_and(|t| t > 0), "{p}");
    let room = room_in_list(&h, &alice, r).await;
    let mb = member(&room, &bob);
    assert_eq!(mb["online"], json!(false), "{room}");
    assert!(mb["last_seen"].as_i64().is_some(), "{room}");
}

// ---------------------------------------------------------------------------------------------
// Notifications and search
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn notifications_mentions_invitations_and_scoped_search() {
    let (srv, h, alice, bob, carol) = trio().await;
    let bch = user_ch(&bob);
    let mut bw = ws(&srv.addr, &bob).await;
    bw.subscribe(&bch).await;
    let mut cw = ws(&srv.addr, &carol).await;
    cw.subscribe(&user_ch(&carol)).await;

    // Invitation.
    let r = create_room(&h, &alice, "Team").await;
    invite(&h, &alice, r, &bob).await;
    let p = event(&mut bw, &bch, "notification").await;
    let inv = p["data"]["notification"].clone();
    assert_eq!(inv["kind"], "invite", "{p}");
    assert_eq!(inv["room_id"].as_i64(), Some(r), "{p}");
    assert_eq!(inv["read"], json!(false), "{p}");
    assert!(inv["id"].as_i64().is_some(), "{p}");

    // Mention.
    let m = send(&h, &alice, r, "hello @bob, the quick brown fox", "n1").await;
    let p = event(&mut bw, &bch, "notification").await;
    let men = p["data"]["notification"].clone();
    assert_eq!(men["kind"], "mention", "{p}");
    assert_eq!(men["room_id"].as_i64(), Some(r), "{p}");
    assert_eq!(men["seq"].as_i64(), Some(seq(&m)), "{p}");
    assert_eq!(men["read"], json!(false));
    // A mention of a non-member notifies nobody; a message without mention notifies nobody.
    send(&h, &alice, r, "@carol are you there? lazy dog sleeps", "n2").await;
    no_event(&mut cw, &user_ch(&carol), "notification", QUIET).await;
    no_event(&mut bw, &bch, "notification", Duration::from_millis(100)).await;
    assert_eq!(h.get("/api/notifications", carol.tok()).await.ok(200), json!([]));

    // GET /api/notifications: newest first, with read state.
    let list = h.get("/api/notifications", bob.tok()).await.ok(200);
    let ids: Vec<_> = list.as_array().unwrap().iter().map(|n| n["id"].as_i64()).collect();
    assert_eq!(ids, vec![men["id"].as_i64(), inv["id"].as_i64()], "{list}");
    assert_eq!(list[0]["kind"], "mention");
    assert_eq!(list[1]["kind"], "invite");
    assert!(list.as_array().unwrap().iter().all(|n| n["read"] == json!(false)), "{list}");
    let one = h.get("/api/notifications?limit=1", bob.tok()).await.ok(200);
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    h.get("/api/notifications?limit=lots", bob.tok()).await.err(400, "bad_request");
    h.get("/api/notifications", None).await.err(401, "unauthorized");

    // Mark one read, then all.
    let rr = h.post("/api/notifications/read", bob.tok(), json!({"ids": [inv["id"]]})).await;
    rr.no_content();
    let list = h.get("/api/notifications", bob.tok()).await.ok(200);
    assert_eq!((list[0]["read"].clone(), list[1]["read"].clone()), (json!(false), json!(true)), "{list}");
    // Someone else cannot mark bob's notifications read.
    let rc = h.post("/api/notifications/read", carol.tok(), json!({"ids": [men["id"]]})).await;
    assert!(rc.status < 500, "{} → {} {}", rc.what, rc.status, rc.text);
    let list = h.get("/api/notifications", bob.tok()).await.ok(200);
    assert_eq!(list[0]["read"], json!(false), "carol marked bob's notification read: {list}");
    h.raw("POST", "/api/notifications/read", bob.tok(), Some("{\"ids\":".into()))
        .await
        .err(400, "bad_request");
    let rr = h.post("/api/notifications/read", bob.tok(), json!({})).await;
    rr.no_content();
    let list = h.get("/api/notifications", bob.tok()).await.ok(200);
    assert!(list.as_array().unwrap().iter().all(|n| n["read"] == json!(true)), "{list}");

    // Search: full text, in the caller's rooms only.
    let cr = create_room(&h, &carol, "Private").await;
    let cm = send(&h, &carol, cr, "quick carol secret", "s1").await;
    let search = |u: &User, q: &str| {
        let h = h.clone();
        let t = u.access.clone();
        let q = q.to_string();
        async move { h.get(&format!("/api/search?q={}", enc(&q)), Some(&t)).await }
    };
    let hits = search(&bob, "quick").await.ok(200);
    let arr_hits = hits.as_array().unwrap();
    assert_eq!(arr_hits.len(), 1, "bob's search for quick: {hits}");
    assert_eq!(arr_hits[0]["room_id"].as_i64(), Some(r));
    assert_eq!(arr_hits[0]["room_name"], "Team");
    assert_eq!(arr_hits[0]["seq"].as_i64(), Some(seq(&m)));
    assert_eq!(arr_hits[0]["sender"], "alice");
    assert!(
        arr_hits[0]["snippet"].as_str().is_some_and(|s| s.contains("[quick]")),
        "snippet marks the match: {hits}"
    );
    assert_eq!(search(&bob, "secret").await.ok(200), json!([]), "bob found carol's private message");
    let hits = search(&carol, "quick").await.ok(200);
    assert_eq!(seqs(&hits), vec![seq(&cm)], "carol's search: {hits}");
    assert_eq!(hits[0]["room_id"].as_i64(), Some(cr));
    assert_eq!(
        search(&carol, "fox").await.ok(200),
        json!([]),
        "carol found a message of a room she is not in"
    );
    assert_eq!(seqs(&search(&bob, "qui").await.ok(200)), vec![seq(&m)], "prefix search");
    assert_eq!(seqs(&search(&bob, "fox quick").await.ok(200)), vec![seq(&m)], "every word, any order");
    assert_eq!(search(&bob, "quick zebra").await.ok(200), json!([]));
    assert_eq!(search(&bob, "\"quick* OR (").await.status, 200, "search text is not query syntax");
    let lazy = search(&alice, "lazy").await.ok(200);
    assert_eq!(lazy.as_array().map(Vec::len), Some(1), "{lazy}");
    let lazy_seq = seq(&lazy[0]);
    h.delete(&format!("/api/rooms/{r}/messages/{lazy_seq}"), alice.tok()).await.ok(200);
    assert_eq!(search(&alice, "lazy").await.ok(200), json!([]), "deleted messages are not found");
    search(&bob, "").await.err(400, "bad_request");
    h.get("/api/search", bob.tok()).await.err(400, "bad_request");
    h.get("/api/search?q=quick", None).await.err(401, "unauthorized");
    h.get("/api/search?q=quick&limit=x", bob.tok()).await.err(400, "bad_request");
}

// ---------------------------------------------------------------------------------------------
// Durable stream: recovery after being away, ordered publication, restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn recovery_after_being_away_and_ordered_concurrent_sends() {
    let t = team().await;
    let (mut aw, epoch, last) = bob_hears_two_then_goes_away(&t).await;
    let Team { srv, h, alice, bob, r, ch } = t;

    // While bob is away: 5 messages and an edit.
    let mut sent = Vec::new();
    for i in 1..=5 {
        let m = if i % 2 == 0 {
            send(&h, &alice, r, &format!("away {i}"), &format!("w{i}")).await
        } else {
            rpc_send(&mut aw, r, &format!("away {i}"), &format!("w{i}")).await
        };
        sent.push(seq(&m));
    }
    rpc_ok(&mut aw, "chat.edit", json!({"room_id": r, "seq": sent[0], "text": "away 1 (edited)"})).await;
    assert_eq!(sent, (last + 1..=last + 5).collect::<Vec<_>>());

    let mut bw = ws(&srv.addr, &bob).await;
    let rec =
        bw.subscribe_with(json!({"channel": ch, "recover": true, "offset": last, "epoch": epoch})).await;
    assert!(flag(&rec, "recovered"), "recovered: {rec}");
    assert_eq!(rec["epoch"], json!(epoch), "{rec}");
    let pubs = arr(&rec, "publications");
    assert_eq!(offsets(&pubs), (last + 1..=last + 6).collect::<Vec<_>>(), "exactly what was missed: {rec}");
    let kinds: Vec<_> = pubs.iter().map(|p| p["data"]["type"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(kinds, ["message", "message", "message", "message", "message", "edit"], "{rec}");
    let texts: Vec<_> = pubs[..5].iter().map(|p| p["data"]["message"]["text"].clone()).collect();
    // The edit redacted the first message's own event: it carries the text as it now is.
    let expected = ["away 1 (edited)", "away 2", "away 3", "away 4", "away 5"].map(|t| json!(t));
    assert_eq!(texts, expected);
    assert_eq!(pubs[5]["data"]["message"]["text"], "away 1 (edited)");
    assert_eq!(num(&rec, "offset"), last + 6, "{rec}");
    let live = rpc_send(&mut aw, r, "live", "l1").await;
    let p = stored_event(&mut bw, &ch).await;
    assert_eq!(num(&p, "offset"), last + 7, "{p}");
    assert_eq!(seq(&live), last + 7);
    no_stored_event(&mut bw, &ch, QUIET).await;

    // From the beginning of the stream: every event once, in order.
    let mut c = ws(&srv.addr, &bob).await;
    let rec = c.subscribe_with(json!({"channel": ch, "recover": true, "offset": 0, "epoch": epoch})).await;
    assert!(flag(&rec, "recovered"), "{rec}");
    assert_eq!(offsets(&arr(&rec, "publications")), (1..=last + 7).collect::<Vec<_>>(), "{rec}");
    // Another epoch: not recovered, no publications.
    let mut c = ws(&srv.addr, &bob).await;
    let rec = c
        .subscribe_with(json!({"channel": ch, "recover": true, "offset": 1, "epoch": "not-the-epoch"}))
        .await;
    assert!(!flag(&rec, "recovered"), "{rec}");
    assert!(arr(&rec, "publications").is_empty(), "{rec}");

    // Concurrent senders: every message acknowledged with a distinct seq, published in seq
    // order with no gap.
    let start = last + 7;
    let mut tasks = Vec::new();
    for t in 0..3 {
        let h = h.clone();
        let tok = alice.access.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let body =
                    json!({"text": format!("burst {t}-{i}"), "client_msg_id": format!("burst-{t}-{i}")});
                let m = h.post(&format!("/api/rooms/{r}/messages"), Some(&tok), body).await.ok(201);
                got.push(seq(&m));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("senders timed out").unwrap(),
        );
    }
    all.sort();
    assert_eq!(all, (start + 1..=start + 30).collect::<Vec<_>>(), "seqs of concurrent sends");
    let mut seen = Vec::new();
    for _ in 0..30 {
        seen.push(num(&stored_event(&mut bw, &ch).await, "offset"));
    }
    assert_eq!(seen, (start + 1..=start + 30).collect::<Vec<_>>(), "published in seq order, no gap");
    no_stored_event(&mut bw, &ch, QUIET).await;
}

#[tokio::test]
async fn recovery_after_full_server_restart_on_same_data_dir() {
    let t = team().await;
    let (mut aw, epoch, last) = bob_hears_two_then_goes_away(&t).await;
    let Team { mut srv, h, alice, bob, r, ch } = t;

    // Sent (and acknowledged) while bob is away; then the server dies at once (SIGKILL).
    let mut expected = Vec::new();
    for i in 1..=5 {
        let text = format!("missed {i}");
        let m = rpc_send(&mut aw, r, &text, &format!("m{i}")).await;
        assert_eq!(seq(&m), last + i, "{m}");
        expected.push(text);
    }
    let m = send(&h, &alice, r, "missed 6 (rest)", "m6").await;
    assert_eq!(seq(&m), last + 6);
    expected.push("missed 6 (rest)".into());
    drop(aw);
    srv.child.kill().expect("kill the server");
    assert!(srv.wait_exit(Duration::from_secs(10)).is_some(), "server did not die");

    // A new process, same config and data dir.
    let srv2 = Restarted::start(&srv);
    let h2 = Http::new(&srv2.addr);
    let mut bw = ws(&srv2.addr, &bob).await;
    let rec =
        bw.subscribe_with(json!({"channel": ch, "recover": true, "offset": last, "epoch": epoch})).await;
    assert!(flag(&rec, "recovered"), "recovered after restart: {rec}");
    assert_eq!(rec["epoch"], json!(epoch), "the room's epoch must survive a restart: {rec}");
    let pubs = arr(&rec, "publications");
    assert_eq!(
        offsets(&pubs),
        (last + 1..=last + 6).collect::<Vec<_>>(),
        "every missed event, in order: {rec}"
    );
    let texts: Vec<_> =
        pubs.iter().map(|p| p["data"]["message"]["text"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(texts, expected);
    assert!(pubs.iter().all(|p| p["data"]["type"] == "message"), "{rec}");

    // Live again, no duplicate.
    let mut aw = ws(&srv2.addr, &alice).await;
    let m = rpc_send(&mut aw, r, "after restart", "a1").await;
    assert_eq!(seq(&m), last + 7, "seqs continue after a restart: {m}");
    let p = stored_event(&mut bw, &ch).await;
    assert_eq!(num(&p, "offset"), last + 7, "{p}");
    assert_eq!(p["data"]["message"]["text"], "after restart");
    no_stored_event(&mut bw, &ch, QUIET).await;
    // A retry of a message acknowledged before the crash is still deduplicated.
    let again = rpc_send(&mut aw, r, "missed 1", "m1").await;
    assert_eq!(seq(&again), last + 1, "{again}");
    no_stored_event(&mut bw, &ch, QUIET).await;

    // Everything else survived too: accounts, refresh tokens, rooms, unread counts.
    h2.post("/api/auth/login", None, json!({"username": "alice", "password": PASSWORD})).await.ok(200);
    h2.post("/api/auth/refresh", None, json!({"refresh_token": bob.refresh})).await.ok(200);
    let room = room_in_list(&h2, &bob, r).await;
    assert_eq!(room["unread"].as_i64(), Some(9), "2 + 6 + 1 unread messages from alice: {room}");
    assert_eq!(room["last_seq"].as_i64(), Some(last + 7));
    let list = h2.get(&format!("/api/rooms/{r}/messages?after={last}"), bob.tok()).await.ok(200);
    assert_eq!(seqs(&list), (last + 1..=last + 7).collect::<Vec<_>>(), "{list}");
    let mut c = ws(&srv2.addr, &bob).await;
    let fresh = c.subscribe(&ch).await;
    assert_eq!(num(&fresh, "offset"), last + 7, "{fresh}");
    assert_eq!(fresh["epoch"], json!(epoch));
}

/// A reaction change stores the whole message as a room event: one member adding distinct
/// "emoji" in a loop would grow the event log quadratically. Reactions are bounded per user
/// and per message (`chat.max_reactions_per_user`, `chat.max_distinct_reactions`), the refusal
/// is 409 `limit_exceeded` (106 over RPC), and it stores nothing.
#[tokio::test]
async fn reactions_are_bounded_per_user_and_per_message() {
    let srv = Server::builder()
        .env("HUBBUB_CHAT_MAX_REACTIONS_PER_USER", "3")
        .env("HUBBUB_CHAT_MAX_DISTINCT_REACTIONS", "4")
        .start();
    let h = Http::new(&srv.addr);
    let alice = signup(&h, "alice").await;
    let bob = signup(&h, "bob").await;
    let r = create_room(&h, &alice, "Team").await;
    invite(&h, &alice, r, &bob).await;
    let m = send(&h, &bob, r, "react to me", "b1").await;
    let path = format!("/api/rooms/{r}/messages/{}/reactions", seq(&m));
    for i in 0..50 {
        let resp = h.post(&path, alice.tok(), json!({ "emoji": format!("e{i}") })).await;
        if i < 3 {
            resp.ok(200);
        } else {
            resp.err(409, "limit_exceeded");
        }
    }
    h.post(&path, bob.tok(), json!({"emoji": "b"})).await.ok(200);
    h.post(&path, bob.tok(), json!({"emoji": "c"})).await.err(409, "limit_exceeded");
    let mut bw = srv.ws().await;
    bw.connect(&bob.access).await;
    assert_eq!(
        rpc_err(&mut bw, "chat.react", json!({"room_id": r, "seq": seq(&m), "emoji": "z"})).await,
        106
    );
    let m = h.post(&path, bob.tok(), json!({"emoji": "e0"})).await.ok(200);
    assert_eq!(m["reactions"].as_array().map(Vec::len), Some(4), "{m}");
    let mine = m["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["user_ids"].to_string().contains(&alice.id.to_string()))
        .count();
    assert_eq!(mine, 3, "{m}");
}

/// Every chat body is read only up to a bound, and the refusal is the chat's JSON error:
/// `/api/auth/*` up to `chat.auth_max_body`, every other route up to `chat.max_body`.
#[tokio::test]
async fn oversized_bodies_get_a_json_413_on_every_route() {
    let srv = Server::builder().env("HUBBUB_CHAT_MAX_BODY", "2048").start();
    let h = Http::new(&srv.addr);
    let alice = signup(&h, "alice").await;
    let r = create_room(&h, &alice, "Team").await;
    let m = send(&h, &alice, r, "hello", "a1").await;
    let big = json!({ "name": "x".repeat(3000), "text": "y".repeat(3000) });
    for (method, path) in [
        ("POST", "/api/rooms".to_string()),
        ("POST", "/api/dms".to_string()),
        ("PATCH", format!("/api/rooms/{r}")),
        ("POST", format!("/api/rooms/{r}/messages")),
        ("PATCH", format!("/api/rooms/{r}/messages/{}", seq(&m))),
        ("POST", "/api/notifications/read".to_string()),
        ("POST", "/api/auth/login".to_string()),
    ] {
        h.raw(method, &path, alice.tok(), Some(big.to_string())).await.err(413, "too_large");
    }
    // Under the bound, the same routes work.
    h.post(
        &format!("/api/rooms/{r}/messages"),
        alice.tok(),
        json!({"text": "z".repeat(1500), "client_msg_id": "a2"}),
    )
    .await
    .ok(201);
}
