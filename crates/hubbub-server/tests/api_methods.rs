//! The server HTTP API's methods and options beyond the basics (server_api.rs): batch, rpc,
//! refresh, publish options (skip_history, tags, b64data, idempotency_key) and the refusal
//! of unknown fields. The same operations are behind the gRPC API (grpc_api.rs).
mod common;

use common::*;
use serde_json::{json, Value};

/// Every method refuses a field it does not know, with 400 and a message naming it.
#[tokio::test]
async fn unknown_fields_are_400_naming_the_field() {
    let srv = Server::new();
    let api = srv.api();
    let cases = [
        ("publish", json!({"channel": "c", "data": {}, "skip_histroy": true})),
        ("broadcast", json!({"channels": ["c"], "data": {}, "skip_histroy": true})),
        ("subscribe", json!({"user": "u", "channel": "c", "skip_histroy": true})),
        ("unsubscribe", json!({"user": "u", "channel": "c", "skip_histroy": true})),
        ("disconnect", json!({"user": "u", "skip_histroy": true})),
        ("disconnect", json!({"user": "u", "disconnect": {"code": 4000, "skip_histroy": 1}})),
        ("refresh", json!({"user": "u", "skip_histroy": true})),
        ("presence", json!({"channel": "c", "skip_histroy": true})),
        ("presence_stats", json!({"channel": "c", "skip_histroy": true})),
        ("history", json!({"channel": "c", "skip_histroy": true})),
        ("history", json!({"channel": "c", "since": {"offset": 1, "epoch": "e", "skip_histroy": 1}})),
        ("history_remove", json!({"channel": "c", "skip_histroy": true})),
        ("channels", json!({"skip_histroy": true})),
        ("info", json!({"skip_histroy": true})),
        ("rpc", json!({"method": "echo", "skip_histroy": true})),
        ("batch", json!({"commands": [], "skip_histroy": true})),
        ("batch", json!({"commands": [{"publish": {"channel": "c", "data": {}, "skip_histroy": true}}]})),
    ];
    for (method, body) in cases {
        let (st, v) = api.call(method, body.clone()).await;
        assert_eq!(st, 400, "/api/{method} {body}: {v}");
        assert_eq!(v["error"]["code"], json!(107), "/api/{method} {body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("unknown field `skip_histroy`"), "/api/{method} {body}: {v}");
    }
    // An unknown command in a batch is refused the same way.
    let (st, v) = api.call("batch", json!({"commands": [{"pubilsh": {"channel": "c", "data": {}}}]})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("pubilsh"), "{v}");
}

#[tokio::test]
async fn batch_runs_commands_in_order_and_in_parallel() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("7").await;
    c.subscribe("bt").await;
    let (st, v) = api
        .call(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "bt", "data": {"n": 1}}},
                {"publish": {"channel": "nosuchns:x", "data": {"n": 2}}},
                {"broadcast": {"channels": ["bt", "chat:bt"], "data": {"n": 3}}},
                {"publish": {"channel": "", "data": {}}},
                {"history": {"channel": "bt", "limit": -1}},
                {"presence_stats": {"channel": "bt"}},
                {"presence": {"channel": "bt"}},
                {"channels": {"pattern": "bt"}},
                {"info": {}},
                {"rpc": {"method": "echo", "params": {"hi": true}}},
                {"subscribe": {"user": "7", "channel": "bt2"}},
                {"unsubscribe": {"user": "7", "channel": "bt2"}},
                {"refresh": {"user": "7", "expire_at": 0}},
                {"history_remove": {"channel": "chat:bt"}},
                {"disconnect": {"user": "nobody"}}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let replies = v["replies"].as_array().unwrap_or_else(|| panic!("no replies: {v}"));
    assert_eq!(replies.len(), 15, "{v}");
    assert_eq!(replies[0]["publish"]["offset"], json!(1), "{v}");
    assert_eq!(replies[1]["error"]["code"], json!(102), "{v}");
    assert_eq!(replies[2]["broadcast"]["responses"][0]["result"]["offset"], json!(2), "{v}");
    assert_eq!(replies[2]["broadcast"]["responses"][1]["result"]["offset"], json!(1), "{v}");
    assert_eq!(replies[3]["error"]["code"], json!(107), "{v}");
    let pubs = replies[4]["history"]["publications"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(pubs.iter().map(|p| p["data"]["n"].clone()).collect::<Vec<_>>(), [json!(1), json!(3)], "{v}");
    assert_eq!(replies[5]["presence_stats"], json!({"num_clients": 1, "num_users": 1}), "{v}");
    assert_eq!(replies[6]["presence"]["presence"][&c.client_id]["user"], json!("7"), "{v}");
    assert_eq!(replies[7]["channels"]["channels"]["bt"]["num_clients"], json!(1), "{v}");
    assert_eq!(replies[8]["info"]["nodes"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(replies[9]["rpc"]["data"], json!({"hi": true}), "{v}");
    for (i, method) in
        [(10, "subscribe"), (11, "unsubscribe"), (12, "refresh"), (13, "history_remove"), (14, "disconnect")]
    {
        assert_eq!(replies[i][method], json!({}), "{i} {v}");
    }
    assert_eq!(c.expect_push("bt", "pub").await["data"], json!({"n": 1}));
    assert_eq!(c.expect_push("bt", "pub").await["data"], json!({"n": 3}));
    c.expect_push("bt2", "subscribe").await;
    c.expect_push("bt2", "unsubscribe").await;

    // In parallel: every command runs, replies keep the commands' order.
    let commands: Vec<Value> =
        (0..50).map(|i| json!({"publish": {"channel": format!("par{i}"), "data": {"i": i}}})).collect();
    let (st, v) = api.call("batch", json!({"commands": commands, "parallel": true})).await;
    assert_eq!(st, 200, "{v}");
    let replies = v["replies"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(replies.len(), 50, "{v}");
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["publish"]["offset"], json!(1), "{i}: {v}");
        let h = api.ok("history", json!({"channel": format!("par{i}"), "limit": -1})).await;
        assert_eq!(h["publications"][0]["data"], json!({"i": i}), "{h}");
    }
    // An empty batch is an empty answer.
    assert_eq!(api.call("batch", json!({"commands": []})).await, (200, json!({"replies": []})));
}

#[tokio::test]
async fn batch_is_bounded_by_its_key() {
    let srv = Server::builder().env("HUBBUB_API_BATCH_MAX_COMMANDS", "3").start();
    let api = srv.api();
    let command = json!({"publish": {"channel": "bb", "data": {}}});
    let (st, v) = api.call("batch", json!({"commands": [command, command, command]})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = api.call("batch", json!({"commands": [command, command, command, command]})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("api.batch_max_commands"), "{v}");
    // Nothing of the refused batch was published.
    let h = api.ok("history", json!({"channel": "bb", "limit": 0})).await;
    assert_eq!(h["offset"], json!(3), "{h}");
}

#[tokio::test]
async fn idempotent_publish_is_stored_once() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("idem").await;
    let body = json!({"channel": "idem", "data": {"v": 1}, "idempotency_key": "order-17"});
    let first = api.ok("publish", body.clone()).await;
    let retry = api.ok("publish", body.clone()).await;
    assert_eq!(first, retry, "a retry is answered with the first result");
    assert_eq!(first["offset"], json!(1), "{first}");
    // Even with other data: the key decides.
    let again =
        api.ok("publish", json!({"channel": "idem", "data": {"v": 2}, "idempotency_key": "order-17"})).await;
    assert_eq!(again, first);
    let other =
        api.ok("publish", json!({"channel": "idem", "data": {"v": 3}, "idempotency_key": "order-18"})).await;
    assert_eq!(other["offset"], json!(2), "another key publishes: {other}");
    let h = api.ok("history", json!({"channel": "idem", "limit": -1})).await;
    let data: Vec<Value> = arr(&h, "publications").iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [json!({"v": 1}), json!({"v": 3})], "{h}");
    assert_eq!(c.expect_push("idem", "pub").await["data"], json!({"v": 1}));
    assert_eq!(c.expect_push("idem", "pub").await["data"], json!({"v": 3}));
    c.expect_no_push("idem", "pub", QUIET).await;

    // Concurrent retries: one publication.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = srv.api();
        tasks.push(tokio::spawn(async move {
            api.ok("publish", json!({"channel": "idem2", "data": {}, "idempotency_key": "k"})).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap()["offset"], json!(1));
    }
    // The key is per channel; a broadcast uses it on each of its channels.
    let b = api
        .ok("broadcast", json!({"channels": ["idem", "idem3"], "data": {}, "idempotency_key": "order-17"}))
        .await;
    assert_eq!(b["responses"][0]["result"], first, "{b}");
    assert_eq!(b["responses"][1]["result"]["offset"], json!(1), "{b}");
    let b2 = api
        .ok("broadcast", json!({"channels": ["idem", "idem3"], "data": {}, "idempotency_key": "order-17"}))
        .await;
    assert_eq!(b, b2);
}

#[tokio::test]
async fn idempotency_keys_expire_and_are_bounded() {
    let srv = Server::builder()
        .env("HUBBUB_API_IDEMPOTENCY_TTL", "1s")
        .env("HUBBUB_API_IDEMPOTENCY_MAX_KEYS", "2")
        .start();
    let api = srv.api();
    let publish = |key: &'static str| {
        let api = srv.api();
        async move { api.ok("publish", json!({"channel": "ik", "data": {}, "idempotency_key": key})).await }
    };
    assert_eq!(publish("a").await["offset"], json!(1));
    assert_eq!(publish("a").await["offset"], json!(1));
    // Two more keys push `a` out (max 2 keys): its retry publishes again.
    assert_eq!(publish("b").await["offset"], json!(2));
    assert_eq!(publish("c").await["offset"], json!(3));
    assert_eq!(publish("c").await["offset"], json!(3));
    assert_eq!(publish("a").await["offset"], json!(4));
    // After the window, a key is new again.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(publish("a").await["offset"], json!(5));
    let h = api.ok("history", json!({"channel": "ik", "limit": 0})).await;
    assert_eq!(h["offset"], json!(5), "{h}");
}

#[tokio::test]
async fn skip_history_delivers_without_keeping() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("sk").await;
    api.publish("sk", json!({"kept": 1})).await;
    let r = api.ok("publish", json!({"channel": "sk", "data": {"kept": 0}, "skip_history": true})).await;
    assert_eq!(r, json!({}), "no position for a publication not kept: {r}");
    let b = api.ok("broadcast", json!({"channels": ["sk"], "data": {"kept": 0}, "skip_history": true})).await;
    assert_eq!(b["responses"][0], json!({"result": {}}), "{b}");
    assert_eq!(c.expect_push("sk", "pub").await["data"], json!({"kept": 1}));
    let p = c.expect_push("sk", "pub").await;
    assert_eq!(p["data"], json!({"kept": 0}));
    assert!(p.get("offset").is_none(), "{p}");
    c.expect_push("sk", "pub").await;
    let h = api.ok("history", json!({"channel": "sk", "limit": -1})).await;
    assert_eq!(arr(&h, "publications").len(), 1, "{h}");
    assert_eq!(h["offset"], json!(1), "{h}");
}

#[tokio::test]
async fn tags_reach_subscribers_and_history() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("tg").await;
    let tags = json!({"kind": "price", "ticker": "ABC"});
    api.ok("publish", json!({"channel": "tg", "data": {"p": 1}, "tags": tags})).await;
    let p = c.expect_push("tg", "pub").await;
    assert_eq!(p["tags"], tags, "{p}");
    api.ok("broadcast", json!({"channels": ["tg"], "data": {"p": 2}, "tags": {"b": "1"}})).await;
    assert_eq!(c.expect_push("tg", "pub").await["tags"], json!({"b": "1"}));
    let h = api.ok("history", json!({"channel": "tg", "limit": -1})).await;
    assert_eq!(h["publications"][0]["tags"], tags, "{h}");
    // Tags are strings.
    let (st, _) = api.call("publish", json!({"channel": "tg", "data": {}, "tags": {"n": 1}})).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn b64data_is_decoded() {
    let srv = Server::new();
    let api = srv.api();
    let mut c = srv.user("1").await;
    c.subscribe("b64").await;
    // {"x":1} in base64.
    api.ok("publish", json!({"channel": "b64", "b64data": "eyJ4IjoxfQ=="})).await;
    assert_eq!(c.expect_push("b64", "pub").await["data"], json!({"x": 1}));
    api.ok("broadcast", json!({"channels": ["b64"], "b64data": "eyJ4IjoxfQ=="})).await;
    assert_eq!(c.expect_push("b64", "pub").await["data"], json!({"x": 1}));
    for body in [
        json!({"channel": "b64", "b64data": "not base64!"}),
        json!({"channel": "b64", "b64data": "eyJ4IjoxfQ==", "data": {}}),
        json!({"channel": "b64"}),
    ] {
        let (st, v) = api.call("publish", body.clone()).await;
        assert_eq!((st, v["error"]["code"].clone()), (400, json!(107)), "{body}: {v}");
    }
}

#[tokio::test]
async fn rpc_calls_a_registered_method() {
    let srv = Server::new();
    let api = srv.api();
    let r = api.ok("rpc", json!({"method": "echo", "params": {"a": [1, 2]}})).await;
    assert_eq!(r, json!({"data": {"a": [1, 2]}}));
    let (st, code) = api.err("rpc", json!({"method": "no_such_method"})).await;
    assert_eq!((st, code), (200, 104));
    let (st, code) = api.err("rpc", json!({"params": {}})).await;
    assert_eq!((st, code), (400, 107));
}

#[tokio::test]
async fn refresh_sets_and_ends_the_connection_lifetime() {
    let srv = Server::new();
    let api = srv.api();
    let mut a = srv.user("r1").await;
    let mut b = srv.user("r1").await;
    // A later expiry keeps the connection open; `expired` ends only the one named.
    api.ok("refresh", json!({"user": "r1", "expire_at": now() + 3600})).await;
    assert!(a.still_open_after(QUIET).await);
    api.ok("refresh", json!({"user": "r1", "client": b.client_id.clone(), "expired": true})).await;
    b.expect_close(3005, T).await;
    assert!(a.still_open_after(QUIET).await);
    let (st, code) = api.err("refresh", json!({"expired": true})).await;
    assert_eq!((st, code), (400, 107));
    let (st, code) = api.err("refresh", json!({"user": "r1", "expire_at": -5})).await;
    assert_eq!((st, code), (400, 107));
}

/// `POST /api` with newline-separated `{"method","params"}` commands (Centrifugo's older
/// API, which cent.js's `pipeline` still uses): one answer line per command, in order.
#[tokio::test]
async fn legacy_api_runs_newline_separated_commands() {
    let srv = Server::new();
    let http = http_client();
    let body = [
        json!({"method": "publish", "params": {"channel": "lg", "data": {"n": 1}}}),
        json!({"method": "history", "params": {"channel": "lg", "limit": -1}}),
        json!({"method": "no_such", "params": {}}),
        json!({"method": "publish", "params": {"channel": "lg", "data": {}, "bogus": 1}}),
        json!({"id": 7, "method": "info"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let resp = http
        .post(srv.http_url("/api"))
        .header("X-API-Key", API_KEY)
        .body(body)
        .send()
        .await
        .expect("POST /api");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0], json!({"result": {"offset": 1, "epoch": lines[0]["result"]["epoch"]}}), "{text}");
    assert_eq!(lines[1]["result"]["publications"][0]["data"], json!({"n": 1}), "{text}");
    assert_eq!(lines[2]["error"]["code"], json!(104), "{text}");
    assert_eq!(lines[3]["error"]["code"], json!(107), "{text}");
    assert!(lines[3]["error"]["message"].as_str().unwrap().contains("bogus"), "{text}");
    assert_eq!(lines[4]["id"], json!(7), "{text}");
    assert!(lines[4]["result"]["nodes"].is_array(), "{text}");
    // Without the key: 401.
    let resp = http.post(srv.http_url("/api")).body("{}").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
