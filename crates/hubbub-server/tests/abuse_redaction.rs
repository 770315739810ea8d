//! Text its author removed must be readable by nobody: a member who joins a room after a
//! message was edited or deleted reads the room's whole event log (history, recovery,
//! `poll since=0`) and searches it, and the edited-away or deleted text is in none of it.
//! The store redacts the message's earlier events in the transaction of the edit or delete.

mod common;
use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const EDITED_AWAY: &str = "Quetzalcoatl-first-draft-4711";
const DELETED: &str = "Xylophone-regret-0815";

struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let res = rb.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!((200..300).contains(&status), "{path} → {status} {v}");
        v
    }

    async fn signup(&self, name: &str) -> (i64, String) {
        let res = self
            .http
            .post(format!("{}/api/auth/signup", self.base))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let b: Value = res.json().await.unwrap();
        (b["user"]["id"].as_i64().unwrap(), b["access_token"].as_str().unwrap().to_owned())
    }
}

#[track_caller]
fn assert_clean(what: &str, v: &Value) {
    let text = v.to_string();
    assert!(!text.contains(EDITED_AWAY), "{what} still shows the edited-away text: {text}");
    assert!(!text.contains(DELETED), "{what} still shows the deleted text: {text}");
}

#[tokio::test]
async fn a_later_member_reads_no_removed_text() {
    use reqwest::Method;
    let srv = Server::new();
    let rest = Rest { base: format!("http://{}", srv.addr), http: http_client() };
    let (_, alice) = rest.signup("alice").await;
    let room = rest.ok(Method::POST, "/api/rooms", &alice, Some(json!({"name": "Team"}))).await;
    let r = room["id"].as_i64().unwrap();
    let messages = format!("/api/rooms/{r}/messages");

    let m1 = rest
        .ok(
            Method::POST,
            &messages,
            &alice,
            Some(json!({"text": format!("plan: {EDITED_AWAY}"), "client_msg_id": "m1"})),
        )
        .await;
    let s1 = m1["seq"].as_i64().unwrap();
    rest.ok(
        Method::PATCH,
        &format!("{messages}/{s1}"),
        &alice,
        Some(json!({"text": "plan: second thoughts"})),
    )
    .await;
    let m2 = rest
        .ok(
            Method::POST,
            &messages,
            &alice,
            Some(
                json!({"text": format!("oops {DELETED} {}", "and more ".repeat(400)), "client_msg_id": "m2"}),
            ),
        )
        .await;
    let s2 = m2["seq"].as_i64().unwrap();
    rest.ok(Method::DELETE, &format!("{messages}/{s2}"), &alice, None).await;

    // Bob joins afterwards and reads everything there is to read.
    let (_, bob) = rest.signup("bob").await;
    rest.ok(Method::POST, &format!("/api/rooms/{r}/members"), &alice, Some(json!({"username": "bob"}))).await;
    let ch = format!("room:{r}");

    let mut c = Client::open(&srv.ws_url()).await;
    c.connect(&bob).await;
    let sub = c.subscribe(&ch).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let history = c.ok("history", json!({"channel": ch, "limit": -1})).await;
    assert!(history["publications"].as_array().is_some_and(|p| p.len() >= 4), "{history}");
    assert_clean("history", &history);
    c.ok("unsubscribe", json!({"channel": ch})).await;

    let recovered =
        c.subscribe_with(json!({"channel": ch, "recover": true, "offset": 0, "epoch": epoch})).await;
    assert_eq!(recovered["recovered"], json!(true), "{recovered}");
    assert!(!recovered["publications"].as_array().unwrap().is_empty(), "{recovered}");
    assert_clean("recovery", &recovered);

    let poll = rest.ok(Method::GET, &format!("/api/poll?channel=room%3A{r}&since=0"), &bob, None).await;
    assert!(!poll["publications"].as_array().unwrap().is_empty(), "{poll}");
    assert_clean("poll since=0", &poll);

    let page = rest.ok(Method::GET, &messages, &bob, None).await;
    assert_clean("the message list", &page);
    for word in ["Quetzalcoatl", "4711", "Xylophone", "regret"] {
        let hits = rest.ok(Method::GET, &format!("/api/search?q={word}"), &bob, None).await;
        assert_eq!(hits, json!([]), "search for {word}");
        let hits = rest.ok(Method::GET, &format!("/api/search?q={word}"), &alice, None).await;
        assert_eq!(hits, json!([]), "the author's own search for {word}");
    }
    let hits = rest.ok(Method::GET, "/api/search?q=thoughts", &bob, None).await;
    assert_eq!(hits.as_array().map(Vec::len), Some(1), "{hits}");

    // The edited message is still there, at its seq, with what it says now.
    let first = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["offset"].as_i64() == Some(s1))
        .cloned()
        .unwrap_or_else(|| panic!("no event at seq {s1}: {history}"));
    assert_eq!(first["data"]["message"]["text"], json!("plan: second thoughts"), "{first}");

    // Nor in the files, once the server stopped cleanly: freed space is overwritten
    // (secure_delete) and the WAL folded into the database.
    drop(c);
    let mut srv = srv;
    srv.sigterm();
    assert!(srv.wait_exit(std::time::Duration::from_secs(10)).is_some_and(|s| s.success()));
    for entry in std::fs::read_dir(srv.dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for removed in [EDITED_AWAY, DELETED] {
            let found = bytes.windows(removed.len()).any(|w| w == removed.as_bytes());
            assert!(!found, "{removed:?} is still in {}", path.display());
        }
    }
}
