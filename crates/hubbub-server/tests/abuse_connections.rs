//! One token holder opening connection after connection: each is small, but without a
//! bound a single user holds as many as the process has file descriptors, each with its
//! session, outbox and hub entries. `client.user_connection_limit` (formerly `max_connections_per_user`, still read) bounds them; the
//! next one is refused with 3504 and the user's other connections, and everyone else's,
//! keep working. A closed connection frees its place.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn one_user_cannot_open_more_than_the_configured_connections() {
    let srv = Server::builder().client("user_connection_limit", "5").start();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(srv.user("mallory").await);
    }
    // Over the limit, however many times it is tried: refused, the others stay up.
    for _ in 0..20 {
        let mut extra = srv.ws().await;
        extra.send_cmd("connect", json!({ "token": token("mallory") })).await;
        extra.expect_close(3504, T).await;
    }
    for c in &mut held {
        assert_eq!(c.ok("rpc", json!({"method": "echo", "data": 1})).await["data"], 1);
    }
    // Someone else is not affected.
    let mut alice = srv.user("alice").await;
    alice.ok("rpc", json!({"method": "echo", "data": 2})).await;

    // A closed connection frees its place.
    let mut first = held.remove(0);
    first.close_now().await;
    let again = eventually(T, || async {
        let mut c = srv.ws().await;
        c.send_cmd("connect", json!({ "token": token("mallory") })).await;
        c.wait_close(QUIET).await.is_none().then_some(c)
    })
    .await;
    let mut again = again.expect("a freed place is not given back");
    again.ok("rpc", json!({"method": "echo", "data": 3})).await;
}

#[tokio::test]
async fn anonymous_connections_are_not_limited_per_user() {
    let srv = Server::builder().anonymous(true).client("max_connections_per_user", "2").start();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = srv.ws().await;
        c.ok("connect", json!({})).await;
        clients.push(c);
    }
}
