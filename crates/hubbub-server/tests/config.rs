//! Configuration file, env overrides, config errors naming the key, startup line.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Run `hubbub serve --config <rendered builder>` and expect it to fail; returns stderr.
fn serve_expect_failure(b: &Builder) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = write_config(dir.path(), &b.render(&data));
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&cfg).current_dir(dir.path());
    for (k, v) in &b.env {
        cmd.env(k, v);
    }
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(15));
    assert!(
        !st.success(),
        "bad config accepted (exit {st:?})\nconfig:\n{}\nstdout:\n{out}\nstderr:\n{err}",
        b.render(&data)
    );
    assert!(!out.contains("hubbub listening on"), "server started with a bad config; stdout: {out}");
    err
}

fn assert_names_key(err: &str, key: &str) {
    assert!(
        err.to_lowercase().contains(&key.to_lowercase()),
        "config error must name `{key}`; stderr was:\n{err}"
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    let b = Builder { extra_top: "bogus_top_key = 1\n".into(), ..Builder::default() };
    assert_names_key(&serve_expect_failure(&b), "bogus_top_key");
}

#[test]
fn unknown_client_key_is_named() {
    let b = Builder { extra_client: "ping_intervall = \"1s\"\n".into(), ..Builder::default() };
    assert_names_key(&serve_expect_failure(&b), "ping_intervall");
}

#[test]
fn unknown_auth_key_is_named() {
    let b = Builder { extra_auth: "tokn_secret = \"x\"\n".into(), ..Builder::default() };
    assert_names_key(&serve_expect_failure(&b), "tokn_secret");
}

#[test]
fn unknown_namespace_key_is_named() {
    let b = Builder::default().ns(Ns::new("extra").set("presense", "true"));
    assert_names_key(&serve_expect_failure(&b), "presense");
}

#[test]
fn bad_duration_value_is_named() {
    let b = Builder::default().client("ping_interval", "\"soon\"");
    assert_names_key(&serve_expect_failure(&b), "ping_interval");
}

#[test]
fn bad_integer_value_is_named() {
    let b = Builder::default().client("queue_max_bytes", "\"lots\"");
    assert_names_key(&serve_expect_failure(&b), "queue_max_bytes");
}

#[test]
fn bad_namespace_value_is_named() {
    let b = Builder::default().ns(Ns::new("extra").set("history_ttl", "\"forever\""));
    assert_names_key(&serve_expect_failure(&b), "history_ttl");
}

#[test]
fn bad_bool_value_is_named() {
    let b = Builder::default().ns(Ns::new("extra").set("presence", "\"maybe\""));
    assert_names_key(&serve_expect_failure(&b), "presence");
}

#[test]
fn bad_shutdown_grace_is_named() {
    let b = Builder::default().grace("\"a while\"");
    assert_names_key(&serve_expect_failure(&b), "shutdown_grace");
}

#[test]
fn bad_env_value_is_named() {
    let b = Builder::default().env("HUBBUB_CLIENT_PONG_TIMEOUT", "abc");
    assert_names_key(&serve_expect_failure(&b), "pong_timeout");
}

#[test]
fn missing_config_file_fails() {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg("/nonexistent/hubbub-test.toml");
    let (st, out, _err) = run_with_timeout(cmd, Duration::from_secs(15));
    assert!(!st.success(), "missing config file accepted; stdout: {out}");
}

#[test]
fn listening_line_is_the_only_stdout_line() {
    let srv = Server::new();
    std::thread::sleep(Duration::from_millis(200));
    let lines = srv.stdout_lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "stdout must hold exactly one line, got {lines:?}");
    let addr = lines[0].strip_prefix("hubbub listening on http://").unwrap();
    let sa: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("bad ADDR {addr:?}: {e}"));
    assert_eq!(sa.ip().to_string(), "127.0.0.1");
    assert_ne!(sa.port(), 0, "port 0 must be resolved to the bound port");
}

#[test]
fn all_duration_units_are_accepted() {
    let b = Builder::default()
        .client("ping_interval", "\"1m\"")
        .client("pong_timeout", "\"500ms\"")
        .grace("\"1h\"")
        .ns(Ns::new("units").set("history_ttl", "\"1d\""));
    let _srv = b.start();
    let b = Builder::default().ns(Ns::new("units").set("history_ttl", "\"25s\""));
    let _srv2 = b.start();
}

#[tokio::test]
async fn env_overrides_client_section() {
    let srv = Server::builder()
        .env("HUBBUB_CLIENT_PING_INTERVAL", "3s")
        .env("HUBBUB_CLIENT_PONG_TIMEOUT", "1s")
        .env("HUBBUB_CLIENT_MAX_CHANNELS", "1")
        .start();
    let mut c = srv.ws().await;
    let r = c.connect(&token("1")).await;
    assert_eq!(r["ping"], json!(3), "HUBBUB_CLIENT_PING_INTERVAL=3s: {r}");
    c.subscribe("a").await;
    assert_eq!(c.err("subscribe", json!({"channel": "b"})).await, 106, "HUBBUB_CLIENT_MAX_CHANNELS=1");
}

#[tokio::test]
async fn env_overrides_auth_section() {
    let srv = Server::builder()
        .env("HUBBUB_AUTH_API_KEY", "env-api-key")
        .env("HUBBUB_AUTH_TOKEN_SECRET", "env-secret")
        .env("HUBBUB_AUTH_ALLOW_ANONYMOUS", "true")
        .start();
    let (st, _) = Api::new(&srv.addr, "env-api-key").call("info", json!({})).await;
    assert_eq!(st, 200, "HUBBUB_AUTH_API_KEY not applied");
    let (st, _) = Api::new(&srv.addr, API_KEY).call("info", json!({})).await;
    assert_eq!(st, 401, "the file's api_key must be overridden by env");

    let mut c = srv.ws().await;
    c.connect(&jwt_with_secret(json!({"sub": "1"}), "env-secret")).await;
    let mut c = srv.ws().await;
    c.send_cmd("connect", json!({"token": token("1")})).await;
    c.expect_close(3500, T).await;
    let mut c = srv.ws().await;
    c.ok("connect", json!({})).await;
}

#[tokio::test]
async fn env_overrides_listen() {
    let mut b = Server::builder();
    b.listen = "203.0.113.1:8000".into(); // not bindable here (TEST-NET-3); the env fixes it
    let srv = b.env("HUBBUB_LISTEN", "127.0.0.1:0").start();
    let resp = http_client().get(srv.http_url("/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn unknown_section_is_named() {
    let b = Builder { extra_top: "[clinet]\nping_interval = \"1s\"\n".into(), ..Builder::default() };
    // extra_top is written before [auth]; the [clinet] table swallows nothing else.
    assert_names_key(&serve_expect_failure(&b), "clinet");
}

#[test]
fn bad_top_level_env_value_is_named() {
    let b = Builder::default().env("HUBBUB_SHUTDOWN_GRACE", "nope");
    assert_names_key(&serve_expect_failure(&b), "shutdown_grace");
}

#[tokio::test]
async fn serve_without_config_file_uses_env() {
    let b = Builder { use_config_file: false, ..Builder::default() }
        .env("HUBBUB_LISTEN", "127.0.0.1:0")
        .env("HUBBUB_AUTH_TOKEN_SECRET", SECRET)
        .env("HUBBUB_AUTH_API_KEY", API_KEY);
    let srv = b.start();
    let resp = http_client().get(srv.http_url("/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut c = srv.user("1").await;
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
    let (st, _) = srv.api().call("info", json!({})).await;
    assert_eq!(st, 200);
}

#[test]
fn misspelt_env_var_is_named_with_the_closest_key() {
    let b = Builder::default().env("HUBBUB_CLIENT_PING_INTERVALL", "10s");
    let err = serve_expect_failure(&b);
    assert_names_key(&err, "HUBBUB_CLIENT_PING_INTERVALL");
    assert!(err.contains("HUBBUB_CLIENT_PING_INTERVAL?"), "must suggest the closest key: {err}");
}

#[test]
fn non_config_hubbub_vars_of_the_tooling_are_allowed() {
    let _srv = Builder::default()
        .env("HUBBUB_REQUIRE_SERVICES", "1")
        .env("HUBBUB_BIN", "/somewhere/hubbub")
        .env("HUBBUB_JS_VERBOSE", "1")
        .env("HUBBUB_URL", "http://127.0.0.1:1")
        .start();
}

/// A config error is one line on stderr and exit status 1, even with RUST_BACKTRACE=1.
#[test]
fn config_error_is_one_line_even_with_backtraces_on() {
    for b in [
        Builder::default().env("HUBBUB_CLIENT_PONG_TIMEOUT", "abc"),
        Builder { extra_top: "listen = [\n".into(), ..Builder::default() },
        Builder::default().env("HUBBUB_AUTH_TOKN_SECRET", "x"),
    ] {
        let b = b.env("RUST_BACKTRACE", "1").env("RUST_LIB_BACKTRACE", "1");
        let err = serve_expect_failure(&b);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line, got:\n{err}");
        assert!(lines[0].starts_with("hubbub: "), "{err}");
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", "/nonexistent/hubbub.toml"]).env("RUST_BACKTRACE", "1");
    let (st, _, err) = run_with_timeout(cmd, Duration::from_secs(15));
    assert_eq!(st.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
