//! Connect, tokens, refresh, expiry, rpc, send, heartbeat.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn connect_reply_shape_with_jwt() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let r = c.call("connect", json!({"token": token("42"), "name": "js"})).await;
    assert!(r.get("error").is_none(), "connect failed: {r}");
    assert_eq!(r["id"], json!(1), "reply id: {r}");
    let res = &r["connect"];
    assert!(is_uuid(res["client"].as_str().unwrap_or("")), "client not a uuid: {r}");
    assert_eq!(res["version"], json!("0.1.0"), "{r}");
    assert_eq!(res["ping"], json!(25), "ping must be ping_interval in seconds: {r}");
    assert_eq!(res["pong"], json!(true), "{r}");
    assert!(is_uuid(res["session"].as_str().unwrap_or("")), "session not a uuid: {r}");
    assert!(res["node"].as_str().map(|s| !s.is_empty()).unwrap_or(false), "node missing: {r}");
    assert!(!flag(res, "expires"), "no exp in token → no expires: {r}");
    assert!(res.get("ttl").is_none() || num(res, "ttl") == 0, "no exp → no ttl: {r}");
    assert!(
        res.get("subs").is_none() || res["subs"].as_object().map(|o| o.is_empty()).unwrap_or(false),
        "no channels claim → no subs: {r}"
    );
    // Two connections get different client ids.
    let mut c2 = srv.ws().await;
    let r2 = c2.connect(&token("42")).await;
    assert_ne!(r2["client"], res["client"]);
}

#[tokio::test]
async fn connect_with_cli_token() {
    let srv = Server::new();
    let tok = srv.cli_token(&["--user", "42"]);
    assert_eq!(tok.split('.').count(), 3, "CLI output is not a JWT: {tok:?}");
    let claims = decode_jwt(&tok);
    assert_eq!(claims["sub"], json!("42"), "claims: {claims}");
    let mut c = srv.ws().await;
    let r = c.connect(&tok).await;
    assert!(is_uuid(r["client"].as_str().unwrap_or("")), "{r}");
}

#[tokio::test]
async fn cli_token_ttl_and_channel() {
    let srv = Server::new();
    let tok = srv.cli_token(&["--user", "42", "--ttl", "1h"]);
    let claims = decode_jwt(&tok);
    assert_eq!(claims["sub"], json!("42"));
    let exp = claims["exp"].as_i64().unwrap_or_else(|| panic!("no exp with --ttl: {claims}"));
    assert!((exp - (now() + 3600)).abs() <= 60, "exp {exp} not ≈ now+1h: {claims}");
    let mut c = srv.ws().await;
    let r = c.connect(&tok).await;
    assert_eq!(r["expires"], json!(true), "{r}");

    // --channel makes a subscription token usable for a `$` channel.
    let st = srv.cli_token(&["--user", "42", "--channel", "$secret"]);
    let sc = decode_jwt(&st);
    assert_eq!(sc["sub"], json!("42"), "{sc}");
    assert_eq!(sc["channel"], json!("$secret"), "{sc}");
    c.subscribe_with(json!({"channel": "$secret", "token": st})).await;
}

#[tokio::test]
async fn connect_with_exp_has_expires_and_ttl() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let r = c.connect(&token_exp("42", 3600)).await;
    assert_eq!(r["expires"], json!(true), "{r}");
    let ttl = num(&r, "ttl");
    assert!((3580..=3600).contains(&ttl), "ttl {ttl} not ≈ 3600: {r}");
}

#[tokio::test]
async fn no_token_anonymous_not_allowed_is_101() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let code = c.err("connect", json!({})).await;
    assert_eq!(code, 101);
    let mut c = srv.ws().await;
    let code = c.err("connect", json!({"token": ""})).await;
    assert_eq!(code, 101);
}

#[tokio::test]
async fn anonymous_allowed_connects_as_empty_user() {
    let srv = Server::builder().anonymous(true).start();
    let mut c = srv.ws().await;
    let r = c.ok("connect", json!({})).await;
    assert!(is_uuid(r["client"].as_str().unwrap_or("")), "{r}");
    c.subscribe("anon").await;
    let p = c.ok("presence", json!({"channel": "anon"})).await;
    let entry = &p["presence"][r["client"].as_str().unwrap()];
    assert!(entry.is_object(), "own client missing from presence: {p}");
    assert_eq!(entry.get("user").cloned().unwrap_or(json!("")), json!(""), "{p}");
}

#[tokio::test]
async fn expired_token_is_109_and_socket_stays_open() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let code = c.err("connect", json!({"token": token_exp("42", -60)})).await;
    assert_eq!(code, 109);
    assert!(c.still_open_after(QUIET).await, "socket closed after 109: {:?}", c.close);
    // A fresh connect on the same socket works.
    let r = c.connect(&token("42")).await;
    assert!(is_uuid(r["client"].as_str().unwrap_or("")), "{r}");
}

#[tokio::test]
async fn malformed_token_closes_3500() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    c.send_cmd("connect", json!({"token": "not-a-jwt"})).await;
    let reason = c.expect_close(3500, T).await;
    assert_eq!(reason, "invalid token");
}

#[tokio::test]
async fn wrongly_signed_token_closes_3500() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let bad = jwt_with_secret(json!({"sub": "42"}), "some-other-secret");
    c.send_cmd("connect", json!({"token": bad})).await;
    let reason = c.expect_close(3500, T).await;
    assert_eq!(reason, "invalid token");
}

#[tokio::test]
async fn command_before_connect_closes_3501() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    c.send_cmd("subscribe", json!({"channel": "c"})).await;
    let reason = c.expect_close(3501, T).await;
    assert_eq!(reason, "bad request");

    let mut c = srv.ws().await;
    c.send_cmd("rpc", json!({"method": "echo", "data": {}})).await;
    c.expect_close(3501, T).await;
}

#[tokio::test]
async fn token_info_becomes_conn_info() {
    let srv = Server::new();
    let mut a = srv.ws().await;
    let info = json!({"name": "Alice", "n": 1});
    let ra = a.connect(&jwt(json!({"sub": "1", "info": info}))).await;
    let cid = ra["client"].as_str().unwrap().to_string();
    a.subscribe("room").await;
    let mut b = srv.user("2").await;
    b.subscribe("room").await;
    let p = b.ok("presence", json!({"channel": "room"})).await;
    let e = &p["presence"][&cid];
    assert_eq!(e["user"], json!("1"), "{p}");
    assert_eq!(e["client"], json!(cid), "{p}");
    assert_eq!(e["conn_info"], info, "conn_info must be the token info: {p}");
    // Publication info carries it as well.
    a.publish("room", json!({"x": 1})).await;
    let pubv = b.expect_push("room", "pub").await;
    assert_eq!(pubv["info"]["user"], json!("1"), "{pubv}");
    assert_eq!(pubv["info"]["client"], json!(cid), "{pubv}");
    assert_eq!(pubv["info"]["conn_info"], info, "{pubv}");
}

#[tokio::test]
async fn token_channels_claim_makes_server_side_subscriptions() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let r = c.connect(&jwt(json!({"sub": "42", "channels": ["news", "chat:lobby"]}))).await;
    let subs = r["subs"].as_object().unwrap_or_else(|| panic!("connect reply without subs: {r}"));
    assert!(subs.contains_key("news"), "{r}");
    assert!(subs.contains_key("chat:lobby"), "{r}");
    srv.api().publish("news", json!({"n": 1})).await;
    let p = c.expect_push("news", "pub").await;
    assert_eq!(p["data"], json!({"n": 1}), "{p}");
    srv.api().publish("chat:lobby", json!({"n": 2})).await;
    let p = c.expect_push("chat:lobby", "pub").await;
    assert_eq!(p["data"], json!({"n": 2}), "{p}");
    // Client-side subscribe to an already server-subscribed channel → 105.
    assert_eq!(c.err("subscribe", json!({"channel": "news"})).await, 105);
}

#[tokio::test]
async fn refresh_returns_client_version_expires_ttl() {
    let srv = Server::new();
    let mut c = srv.ws().await;
    let cr = c.connect(&token_exp("42", 60)).await;
    let r = c.ok("refresh", json!({"token": token_exp("42", 7200)})).await;
    assert_eq!(r["client"], cr["client"], "{r}");
    assert_eq!(r["version"], json!("0.1.0"), "{r}");
    assert_eq!(r["expires"], json!(true), "{r}");
    let ttl = num(&r, "ttl");
    assert!((7180..=7200).contains(&ttl), "ttl {ttl} not ≈ 7200: {r}");
}

#[tokio::test]
async fn connection_expires_with_3005() {
    let srv = Server::builder().client("expired_close_delay", "\"1s\"").start();
    let mut c = srv.ws().await;
    let t0 = std::time::Instant::now();
    c.connect(&token_exp("42", 2)).await;
    c.expect_close(3005, Duration::from_secs(10)).await;
    // exp is whole seconds (≥1s away) plus a 1s close delay.
    assert!(t0.elapsed() >= Duration::from_millis(1900), "closed too early: {:?}", t0.elapsed());
}

#[tokio::test]
async fn expired_connection_is_tolerated_for_expired_close_delay() {
    let srv = Server::builder().client("expired_close_delay", "\"3s\"").start();
    let mut c = srv.ws().await;
    c.connect(&token_exp("42", 1)).await;
    // Past exp but within the delay: still open, and a refresh rescues it.
    assert!(c.still_open_after(Duration::from_millis(2200)).await, "closed within the delay: {:?}", c.close);
    c.ok("refresh", json!({"token": token_exp("42", 3600)})).await;
    assert!(c.still_open_after(Duration::from_secs(3)).await, "refreshed connection closed: {:?}", c.close);
}

#[tokio::test]
async fn refresh_prevents_expiry() {
    let srv = Server::builder().client("expired_close_delay", "\"1s\"").start();
    let mut c = srv.ws().await;
    c.connect(&token_exp("42", 2)).await;
    c.ok("refresh", json!({"token": token_exp("42", 3600)})).await;
    assert!(
        c.still_open_after(Duration::from_secs(4)).await,
        "refreshed connection was closed: {:?}",
        c.close
    );
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

#[tokio::test]
async fn rpc_echo_and_unknown_method() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    let data = json!({"hello": "world", "n": [1, 2, 3]});
    let r = c.ok("rpc", json!({"method": "echo", "data": data})).await;
    assert_eq!(r["data"], data, "{r}");
    assert_eq!(c.err("rpc", json!({"method": "nope", "data": {}})).await, 104);
}

#[tokio::test]
async fn send_has_no_reply() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    c.send_text(&json!({"send": {"data": {"x": 1}}}).to_string()).await;
    c.drain_for(QUIET).await;
    assert!(c.close.is_none() && !c.ended, "send closed the connection: {:?}", c.close);
    assert!(c.replies.is_empty(), "send got a reply: {:?}", c.replies);
    assert!(c.other.is_empty(), "unexpected messages after send: {:?}", c.other);
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

#[tokio::test]
async fn unknown_method_is_104() {
    let srv = Server::new();
    let mut c = srv.user("42").await;
    assert_eq!(c.err("bogus_method", json!({})).await, 104);
    // A command with only an id.
    let id = c.next_id();
    c.send_text(&json!({"id": id}).to_string()).await;
    let r = c.reply(id).await;
    assert_eq!(error_code(&r), Some(104), "{r}");
    // Still usable.
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

#[tokio::test]
async fn server_pings_and_client_pongs_keep_connection() {
    let srv = Server::builder().client("ping_interval", "\"1s\"").client("pong_timeout", "\"500ms\"").start();
    let mut c = srv.ws().await;
    let r = c.connect(&token("42")).await;
    assert_eq!(r["ping"], json!(1), "{r}");
    assert_eq!(r["pong"], json!(true), "{r}");
    assert!(c.still_open_after(Duration::from_millis(4500)).await, "closed: {:?}", c.close);
    assert!(c.pings >= 2, "expected ≥2 `{{}}` pings in 4.5s with ping_interval 1s, got {}", c.pings);
    assert!(c.pings <= 7, "too many pings in 4.5s with ping_interval 1s: {}", c.pings);
    c.ok("rpc", json!({"method": "echo", "data": {}})).await;
}

#[tokio::test]
async fn no_pong_closes_3012() {
    let srv = Server::builder().client("ping_interval", "\"1s\"").client("pong_timeout", "\"500ms\"").start();
    let mut c = srv.ws().await;
    c.auto_pong = false;
    c.connect(&token("42")).await;
    let reason = c.expect_close(3012, Duration::from_secs(8)).await;
    assert_eq!(reason, "no pong");
    assert!(c.pings >= 1, "closed for no pong without any ping being sent");
}
