//! Proxies against a real backend: `tests/proxy_backend.py` (Python's http.server), started
//! by each test, and the real `hubbub serve`. Each proxy kind's result, refusal (the backend's
//! error reaches the client), disconnect, and a backend that is slow, down, answers garbage,
//! a 500 or more than `max_response_bytes`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The backend process, killed on drop.
struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start() -> Backend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxy_backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the proxy backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("backend port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("backend said {line:?}"));
        Backend { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on: connections to it are refused.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `[[proxies]]` entry; `extra` is raw TOML (a timeout of 1 s unless it sets one).
fn proxy(name: &str, endpoint: &str, extra: &str) -> String {
    let timeout = if extra.contains("timeout") { "" } else { "timeout = \"1s\"\n" };
    format!("[[proxies]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\n{timeout}{extra}\n")
}

/// A server whose every proxy points at `backend`, plus the failing ones.
fn server(backend: &Backend) -> Server {
    let dead = format!("http://127.0.0.1:{}/rpc", dead_port());
    let headers = "http_headers = [\"X-Test\", \"Cookie\"]\nstatic_http_headers = { \"X-Static\" = \"s3cret\" }\ninclude_connection_meta = true";
    let mut top = String::from(
        "connect_proxy_name = \"connect\"\nrefresh_proxy_name = \"refresh\"\nrpc_proxy_name = \"rpc\"\n\
         rpc_namespaces = [{ name = \"slow\", rpc_proxy_name = \"slow\" }, { name = \"down\", rpc_proxy_name = \"down\" }, \
         { name = \"garbage\", rpc_proxy_name = \"garbage\" }, { name = \"huge\", rpc_proxy_name = \"huge\" }, \
         { name = \"s500\", rpc_proxy_name = \"s500\" }, { name = \"b64\", rpc_proxy_name = \"b64\" }]\n",
    );
    top += &proxy("connect", &backend.url("/connect"), headers);
    top += &proxy("refresh", &backend.url("/refresh"), headers);
    top += &proxy("subscribe", &backend.url("/subscribe"), headers);
    top += &proxy("sub_refresh", &backend.url("/sub_refresh"), "");
    top += &proxy("publish", &backend.url("/publish"), "");
    top += &proxy("rpc", &backend.url("/rpc"), headers);
    top += &proxy("slow", &backend.url("/slow"), "timeout = \"300ms\"");
    top += &proxy("down", &dead, "");
    top += &proxy("garbage", &backend.url("/garbage"), "");
    top += &proxy("huge", &backend.url("/huge"), "max_response_bytes = 4096");
    top += &proxy("s500", &backend.url("/status500"), "");
    top += &proxy("b64", &backend.url("/rpc"), "binary_encoding = true");
    let mut b = Server::builder();
    b.extra_top = top;
    b.ns(Ns::new("sp")
        .set("allow_subscribe_for_client", "false")
        .set("subscribe_proxy_name", "\"subscribe\"")
        .set("sub_refresh_proxy_name", "\"sub_refresh\""))
        .ns(Ns::new("pp").set("allow_publish_for_client", "false").set("publish_proxy_name", "\"publish\""))
        .ns(Ns::new("slow").set("subscribe_proxy_name", "\"slow\""))
        .ns(Ns::new("down").set("subscribe_proxy_name", "\"down\""))
        .ns(Ns::new("garbage").set("subscribe_proxy_name", "\"garbage\""))
        .ns(Ns::new("huge").set("subscribe_proxy_name", "\"huge\""))
        .start()
}

async fn proxied(s: &Server, data: Value) -> (Client, Value) {
    let mut c = Client::open_with_headers(
        &s.ws_url(),
        &[("X-Test", "forwarded"), ("Cookie", "sid=42"), ("X-Other", "kept back")],
    )
    .await;
    let r = c.call("connect", json!({ "name": "rust-test", "data": data })).await;
    (c, r)
}

#[tokio::test]
async fn connect_proxy_decides_who_connects() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, r) = proxied(&s, json!({ "user": "alice" })).await;
    let result = expect_result(&r, "connect", &json!({}));
    assert_eq!(result["data"], json!({ "welcome": true, "name": "rust-test", "cookie": "sid=42" }), "{r}");
    assert!(result.get("expires").is_none(), "a proxied connection is refreshed by the server: {r}");
    // The backend's `channels` and `subs` are server-side subscriptions, `subs` with options.
    assert!(result["subs"].get("news").is_some(), "{r}");
    assert_eq!(result["subs"]["feed"]["data"], json!({ "first": 1 }), "{r}");
    // The user and info reach presence.
    let p = c.ok("presence", json!({ "channel": "news" })).await;
    let me = p["presence"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(
        (me["user"].clone(), me["conn_info"].clone()),
        (json!("alice"), json!({ "name": "Alice" })),
        "{p}"
    );
    // `feed`: presence overridden off (the namespace has it on).
    let p = c.ok("presence", json!({ "channel": "feed" })).await;
    assert_eq!(p["presence"], json!({}), "{p}");

    // A token still goes the token's way, not the proxy's.
    let mut t = s.ws().await;
    let r = t.connect(&token("bob")).await;
    assert!(r.get("data").is_none(), "{r}");

    // Refusal: the backend's error reaches the client as it is.
    let (_, r) = proxied(&s, json!({ "mode": "error" })).await;
    assert_eq!(r["error"], json!({ "code": 4001, "message": "who are you" }), "{r}");
    // Disconnect: the connection closes with the backend's code and reason.
    let (mut c, _) = {
        let mut c = Client::open(&s.ws_url()).await;
        c.send_cmd("connect", json!({ "data": { "mode": "disconnect" } })).await;
        (c, ())
    };
    assert_eq!(c.expect_close(4501, T).await, "banned");
}

#[tokio::test]
async fn connect_proxy_on_a_unidirectional_stream() {
    let backend = Backend::start();
    let s = server(&backend);
    let mut response = reqwest::Client::new()
        .post(s.http_url("/connection/uni_http_stream"))
        .header("Cookie", "sid=9")
        .body(json!({ "name": "uni", "data": { "user": "erin" } }).to_string())
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains('\n') {
        let chunk =
            tokio::time::timeout(T, response.chunk()).await.unwrap().unwrap().expect("a connect push");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let push: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let connect = &push["connect"];
    assert_eq!(connect["data"], json!({ "welcome": true, "name": "uni", "cookie": "sid=9" }), "{push}");
    assert!(connect["subs"].get("news").is_some(), "{push}");
}

#[tokio::test]
async fn connect_proxy_failures_are_internal_errors() {
    let backend = Backend::start();
    let s = server(&backend);
    for mode in ["slow", "garbage", "huge"] {
        let started = Instant::now();
        let (mut c, r) = proxied(&s, json!({ "mode": mode })).await;
        assert_eq!(r["error"]["code"], 100, "{mode}: {r}");
        assert_eq!(r["error"]["temporary"], true, "{mode}: {r}");
        assert!(started.elapsed() < Duration::from_millis(2500), "{mode} took {:?}", started.elapsed());
        // Not connected: anything else is a protocol violation.
        c.send_cmd("rpc", json!({ "method": "whoami" })).await;
        c.expect_close(3501, T).await;
    }
    // Unidirectional: the failure is a disconnect (3004), as the client cannot be answered.
    let url = s.http_url("/connection/uni_http_stream");
    let body = reqwest::Client::new()
        .post(&url)
        .body(json!({ "data": { "mode": "garbage" } }).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("3004"), "{body}");
    assert!(s.stderr().contains("proxy connect (connect): not a proxy answer"), "one line says why");
}

#[tokio::test]
async fn connect_proxy_down() {
    let mut b = Server::builder();
    b.extra_top = format!(
        "connect_proxy_name = \"connect\"\n{}",
        proxy("connect", &format!("http://127.0.0.1:{}/connect", dead_port()), "")
    );
    let s = b.start();
    let mut c = s.ws().await;
    let r = c.call("connect", json!({})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert!(s.stderr().contains("cannot connect"), "{}", s.stderr());
}

#[tokio::test]
async fn refresh_proxy_extends_then_expires() {
    let backend = Backend::start();
    let s = server(&backend);
    let started = Instant::now();
    let (mut c, r) = proxied(&s, json!({ "mode": "short" })).await;
    expect_result(&r, "connect", &json!({}));
    // Expires after 1 s; the first refresh gives one more second, the second says expired.
    // (Without the proxy, the close would wait for client.expired_close_delay: 25 s.)
    c.expect_close(3005, Duration::from_secs(8)).await;
    let took = started.elapsed();
    // At least a second: the first refresh extended the connection.
    assert!(took > Duration::from_millis(950) && took < Duration::from_secs(7), "{took:?}");
}

#[tokio::test]
async fn refresh_proxy_disconnects() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, r) = proxied(&s, json!({ "mode": "short", "user": "kicker" })).await;
    expect_result(&r, "connect", &json!({}));
    assert_eq!(c.expect_close(4504, Duration::from_secs(5)).await, "refresh kick");
}

#[tokio::test]
async fn subscribe_proxy() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, _) = proxied(&s, json!({ "user": "carol" })).await;
    // The namespace forbids client subscriptions; the proxy allows them, with info and data.
    let r = c.subscribe("sp:room").await;
    assert_eq!(r["data"], json!({ "motd": "hello carol" }), "{r}");
    let p = c.ok("presence", json!({ "channel": "sp:room" })).await;
    let me = p["presence"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(me["chan_info"], json!({ "role": "reader" }), "{p}");
    assert_eq!(r["recoverable"], true, "the namespace forces recovery: {r}");
    // `override`: this subscription without presence and without forced recovery.
    let r = c.subscribe("sp:plain").await;
    assert!(r.get("recoverable").is_none(), "force_recovery overridden: {r}");
    let p = c.ok("presence", json!({ "channel": "sp:plain" })).await;
    assert_eq!(p["presence"], json!({}), "presence overridden: {p}");
    c.ok("unsubscribe", json!({ "channel": "sp:plain" })).await;
    // Refusal passes through; the connection goes on.
    assert_eq!(c.err("subscribe", json!({ "channel": "sp:deny" })).await, 403);
    // Failures are error 100, within the proxy's timeout.
    for ch in ["slow:a", "down:a", "garbage:a", "huge:a"] {
        let started = Instant::now();
        let r = c.call("subscribe", json!({ "channel": ch })).await;
        assert_eq!(r["error"]["code"], 100, "{ch}: {r}");
        assert!(started.elapsed() < Duration::from_secs(2), "{ch} took {:?}", started.elapsed());
    }
    assert!(c.still_open_after(QUIET).await);
    // A subscription token is checked as usual, without asking the proxy.
    let r = c.subscribe_with(json!({ "channel": "sp:tok", "token": sub_token("carol", "sp:tok") })).await;
    assert!(r.get("data").is_none(), "{r}");
    let r = c.call("subscribe", json!({ "channel": "sp:tok2", "token": sub_token("bob", "sp:tok2") })).await;
    assert_eq!(r["error"]["code"], 103, "the token is bob's: {r}");
    // Disconnect.
    c.send_cmd("subscribe", json!({ "channel": "sp:kick" })).await;
    assert_eq!(c.expect_close(4502, T).await, "kicked");
}

#[tokio::test]
async fn sub_refresh_proxy_expires_the_subscription() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, _) = proxied(&s, json!({})).await;
    let r = c.subscribe("sp:short").await;
    assert!(r.get("expires").is_none(), "refreshed by the server, not the client: {r}");
    c.expect_close(3006, Duration::from_secs(6)).await;
    // An expire_at already past is expired too (never a loop of refreshes).
    let (mut c, _) = proxied(&s, json!({})).await;
    c.subscribe("sp:pastshort").await;
    c.expect_close(3006, Duration::from_secs(6)).await;
}

#[tokio::test]
async fn publish_proxy() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, _) = proxied(&s, json!({})).await;
    c.subscribe("pp:upper").await;
    c.subscribe("pp:skip").await;
    c.publish("pp:upper", json!({ "text": "hi" })).await;
    let p = c.expect_push("pp:upper", "pub").await;
    assert_eq!(p["data"], json!({ "text": "HI" }), "the backend's data replaces the client's: {p}");
    assert_eq!(p["offset"], 1, "{p}");
    c.publish("pp:skip", json!({ "text": "gone" })).await;
    let p = c.expect_push("pp:skip", "pub").await;
    assert_eq!(p["data"], json!({ "text": "gone" }), "{p}");
    let h = c.ok("history", json!({ "channel": "pp:skip", "limit": -1 })).await;
    let kept = h["publications"].as_array().map_or(0, Vec::len);
    assert!(kept == 0 && h.get("offset").is_none(), "skip_history keeps nothing: {h}");
    assert_eq!(c.err("publish", json!({ "channel": "pp:deny", "data": {} })).await, 403);
    // Without a publish proxy the namespace's rule holds.
    assert_eq!(c.err("publish", json!({ "channel": "nopub:x", "data": {} })).await, 103);
}

#[tokio::test]
async fn rpc_proxy_forwards_what_is_configured() {
    let backend = Backend::start();
    let s = server(&backend);
    let (mut c, r) = proxied(&s, json!({ "user": "dave" })).await;
    let client = r["connect"]["client"].as_str().unwrap().to_owned();
    let r = c.ok("rpc", json!({ "method": "whoami", "data": { "q": 1 } })).await;
    let req = &r["data"]["request"];
    assert_eq!(req["client"], json!(client), "{r}");
    assert_eq!(req["user"], "dave");
    assert_eq!(req["transport"], "websocket");
    assert_eq!((req["protocol"].clone(), req["encoding"].clone()), (json!("json"), json!("json")));
    assert_eq!(req["method"], "whoami");
    assert_eq!(req["data"], json!({ "q": 1 }));
    assert_eq!(req["meta"], json!({ "tenant": 7 }), "include_connection_meta: {r}");
    let headers = &r["data"]["headers"];
    assert_eq!(headers["x-test"], "forwarded", "{r}");
    assert_eq!(headers["cookie"], "sid=42");
    assert_eq!(headers["x-static"], "s3cret");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-other").is_none(), "only the configured headers: {r}");
    // Built-in methods stay the node's.
    assert_eq!(c.ok("rpc", json!({ "method": "echo", "data": 5 })).await["data"], 5);
    // Binary encoding: b64data both ways.
    let r = c.ok("rpc", json!({ "method": "b64:x", "data": { "q": 2 } })).await;
    let req = &r["data"]["request"];
    assert!(req.get("data").is_none() && req["encoding"] == "binary", "{r}");
    assert_eq!(req["b64data"], "eyJxIjoyfQ==", "{r}");
    // Refusal passes through (with `temporary`).
    let r = c.call("rpc", json!({ "method": "deny" })).await;
    assert_eq!(r["error"], json!({ "code": 4003, "message": "no such thing", "temporary": true }), "{r}");
    // Failures: 100, the connection goes on.
    for method in ["slow:x", "down:x", "garbage:x", "huge:x", "s500:x"] {
        let started = Instant::now();
        let r = c.call("rpc", json!({ "method": method })).await;
        assert_eq!(r["error"]["code"], 100, "{method}: {r}");
        assert!(started.elapsed() < Duration::from_secs(2), "{method} took {:?}", started.elapsed());
    }
    // A method of a namespace without a proxy is unknown.
    assert_eq!(c.err("rpc", json!({ "method": "nobody:x" })).await, 104);
    assert!(c.still_open_after(QUIET).await);
    c.send_cmd("rpc", json!({ "method": "kick" })).await;
    assert_eq!(c.expect_close(4503, T).await, "rpc kick");
}

#[tokio::test]
async fn proxy_config_errors_name_the_key() {
    for (top, key) in [
        ("connect_proxy_name = \"nope\"\n".to_string(), "connect_proxy_name"),
        (
            format!("refresh_proxy_name = \"p\"\n{}", proxy("p", "http://127.0.0.1:1/", "")),
            "refresh_proxy_name",
        ),
        (proxy("p", "https://example.com/", ""), "proxies[0].endpoint"),
        (proxy("p", "http://127.0.0.1:1/", "max_response_bytes = 10"), "proxies[0].max_response_bytes"),
        (proxy("p", "http://127.0.0.1:1/", "http_headers = [\"bad header\"]"), "proxies[0].http_headers"),
    ] {
        let mut b = Server::builder();
        b.extra_top = top.clone();
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &b.render(dir.path()));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&path);
        let (status, _, stderr) = run_with_timeout(cmd, Duration::from_secs(20));
        assert!(!status.success() && stderr.contains(key), "{top}: {stderr}");
    }
    let mut b = Server::builder();
    b.namespaces = vec![Ns::new("").set("publish_proxy_name", "\"ghost\"")];
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &b.render(dir.path()));
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(&path);
    let (status, _, stderr) = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(!status.success() && stderr.contains("namespaces[0].publish_proxy_name"), "{stderr}");
}
