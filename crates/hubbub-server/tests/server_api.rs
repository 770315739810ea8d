//! The server HTTP API and the other HTTP endpoints.
mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn api_key_header_variants() {
    let srv = Server::new();
    let api = srv.api();
    let body = json!({"channel": "c", "data": {"x": 1}}).to_string();

    let (st, text) = api.raw("publish", &body, &[("X-API-Key", API_KEY)]).await;
    assert_eq!(st, 200, "{text}");
    let (st, text) = api.raw("publish", &body, &[("Authorization", &format!("apikey {API_KEY}"))]).await;
    assert_eq!(st, 200, "Authorization: apikey KEY must work: {text}");

    for headers in [vec![("X-API-Key", "wrong-key")], vec![("Authorization", "apikey wrong-key")], vec![]] {
        let (st, text) = api.raw("publish", &body, &headers).await;
        assert_eq!(st, 401, "headers {headers:?}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("401 body not JSON ({e}): {text:?}"));
        assert_eq!(v["error"]["code"], json!(101), "headers {headers:?}: {v}");
    }
}

/// A body over axum's limit (2 MB) is answered with the API's JSON error, not plain text.
#[tokio::test]
async fn api_oversized_body_is_413_json() {
    let srv = Server::new();
    let body = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(3 << 20));
    let (st, text) = srv.api().raw("publish", &body, &[("X-API-Key", API_KEY)]).await;
    assert_eq!(st, 413, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert_eq!(v["error"]["code"], json!(107), "{v}");
}

#[tokio::test]
async fn api_malformed_body_is_400_107() {
    let srv = Server::new();
    let api = srv.api();
    let (st, text) = api.raw("publish", "{not json", &[("X-API-Key", API_KEY)]).await;
    assert_eq!(st, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert_eq!(v["error"]["code"], json!(107), "{v}");
}

#[tokio::test]
async fn api_unknown_method_is_404_104() {
    let srv = Server::new();
    let (st, v) = srv.api().call("no_such_method", json!({})).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], json!(104), "{v}");
}

#[tokio::test]
async fn api_publish_result_and_channel_errors() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("p").await;
    let r = api.publish("p", json!({"k": "v"})).await;
    assert_eq!(num(&r, "offset"), 1, "{r}");
    assert!(r["epoch"].as_str().map(|e| !e.is_empty()).unwrap_or(false), "{r}");
    let p = c.expect_push("p", "pub").await;
    assert_eq!(p["data"], json!({"k": "v"}));
    assert_eq!(num(&p, "offset"), 1);

    let (st, code) = api.err("publish", json!({"channel": "nosuchns:x", "data": {}})).await;
    assert_eq!((st, code), (200, 102), "unknown namespace → 200 + error 102");
}

#[tokio::test]
async fn api_broadcast() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("b1").await;
    b.subscribe("chat:b2").await;
    let r = api
        .ok("broadcast", json!({"channels": ["b1", "chat:b2", "nosuchns:b3"], "data": {"all": true}}))
        .await;
    let resp = r["responses"].as_array().unwrap_or_else(|| panic!("no responses array: {r}"));
    assert_eq!(resp.len(), 3, "{r}");
    for ok in &resp[..2] {
        assert!(ok.get("error").is_none(), "{r}");
        assert_eq!(num(&ok["result"], "offset"), 1, "{r}");
        assert!(ok["result"]["epoch"].is_string(), "{r}");
    }
    assert_eq!(resp[2]["error"]["code"], json!(102), "{r}");
    assert_eq!(a.expect_push("b1", "pub").await["data"], json!({"all": true}));
    assert_eq!(b.expect_push("chat:b2", "pub").await["data"], json!({"all": true}));
}

#[tokio::test]
async fn api_presence_and_stats() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("pr").await;
    b.subscribe("pr").await;
    let p = api.ok("presence", json!({"channel": "pr"})).await;
    let m = p["presence"].as_object().unwrap_or_else(|| panic!("{p}"));
    assert_eq!(m.len(), 2, "{p}");
    assert_eq!(m[&a.client_id]["user"], json!("1"), "{p}");
    assert_eq!(m[&b.client_id]["client"], json!(b.client_id.clone()), "{p}");
    let s = api.ok("presence_stats", json!({"channel": "pr"})).await;
    assert_eq!((num(&s, "num_clients"), num(&s, "num_users")), (2, 2), "{s}");
    let (_st, code) = api.err("presence", json!({"channel": "nopres:x"})).await;
    assert_eq!(code, 108);
}

#[tokio::test]
async fn api_channels() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("chan1").await;
    b.subscribe("chan1").await;
    b.subscribe("chan2").await;
    let r = api.ok("channels", json!({})).await;
    let ch = r["channels"].as_object().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(num(&ch["chan1"], "num_clients"), 2, "{r}");
    assert_eq!(num(&ch["chan2"], "num_clients"), 1, "{r}");
    let r = api.ok("channels", json!({"pattern": "chan1"})).await;
    let ch = r["channels"].as_object().unwrap_or_else(|| panic!("{r}"));
    assert!(ch.contains_key("chan1") && !ch.contains_key("chan2"), "pattern filter: {r}");
    b.ok("unsubscribe", json!({"channel": "chan2"})).await;
    let gone = eventually(std::time::Duration::from_secs(3), || {
        let api = srv.api();
        async move {
            let r = api.ok("channels", json!({})).await;
            (!r["channels"].as_object().map(|m| m.contains_key("chan2")).unwrap_or(false)).then_some(())
        }
    })
    .await;
    assert!(gone.is_some(), "channel with no subscribers still listed");
}

#[tokio::test]
async fn api_info() {
    let srv = Server::new();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    let _c = srv.user("2").await;
    a.subscribe("i1").await;
    b.subscribe("i2").await;
    let r = srv.api().ok("info", json!({})).await;
    let nodes = r["nodes"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(nodes.len(), 1, "{r}");
    let n = &nodes[0];
    assert!(n["uid"].as_str().map(|s| !s.is_empty()).unwrap_or(false), "{r}");
    assert!(n["name"].is_string(), "{r}");
    assert_eq!(n["version"], json!("0.1.0"), "{r}");
    assert_eq!(num(n, "num_clients"), 3, "{r}");
    assert_eq!(num(n, "num_users"), 2, "{r}");
    assert_eq!(num(n, "num_channels"), 2, "{r}");
    assert!(n.get("uptime").map(|u| u.is_number()).unwrap_or(false), "{r}");
}

#[tokio::test]
async fn api_subscribe_unsubscribe_disconnect_results() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("5").await;
    assert_eq!(api.ok("subscribe", json!({"user": "5", "channel": "s"})).await, json!({}));
    c.expect_push("s", "subscribe").await;
    assert_eq!(api.ok("unsubscribe", json!({"user": "5", "channel": "s"})).await, json!({}));
    c.expect_push("s", "unsubscribe").await;
    assert_eq!(api.ok("disconnect", json!({"user": "5"})).await, json!({}));
    c.expect_close(3503, T).await;
}

#[tokio::test]
async fn get_root_and_health() {
    let srv = Server::new();
    let http = http_client();
    let resp = http.get(srv.http_url("/")).send().await.expect("GET /");
    assert_eq!(resp.status().as_u16(), 200);
    let ct =
        resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
    assert!(ct.contains("text/html"), "GET / content-type {ct:?}");
    let body = resp.text().await.unwrap();
    assert!(body.to_lowercase().contains("<html") || body.to_lowercase().contains("<!doctype"), "{body}");

    let resp = http.get(srv.http_url("/health")).send().await.expect("GET /health");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("health JSON");
    assert_eq!(v, json!({"status": "ok"}));
}

#[tokio::test]
async fn api_channel_problems_are_200_with_error_body() {
    let srv = Server::new();
    let api = srv.api();
    for (method, body) in [
        ("subscribe", json!({"user": "1", "channel": "nosuchns:x"})),
        ("presence", json!({"channel": "nosuchns:x"})),
        ("presence_stats", json!({"channel": "nosuchns:x"})),
        ("history", json!({"channel": "nosuchns:x", "limit": -1})),
        ("history_remove", json!({"channel": "nosuchns:x"})),
    ] {
        let (st, code) = api.err(method, body.clone()).await;
        assert_eq!((st, code), (200, 102), "/api/{method} {body}");
    }
    let (st, code) = api.err("history", json!({"channel": "nohist:x", "limit": -1})).await;
    assert_eq!((st, code), (200, 108), "history in a namespace without history");
}
