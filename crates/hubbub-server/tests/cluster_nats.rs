//! Two real `hubbub serve` processes on the NATS engine (and one PostgreSQL database): a
//! client on either node sees the same channels, offsets, history and presence.
mod common;

use common::*;
use serde_json::json;

fn nats_node(url: &str, prefix: &str, database: &str) -> Server {
    Server::builder()
        .env("HUBBUB_ENGINE_TYPE", "nats")
        .env("HUBBUB_ENGINE_NATS_URL", url)
        .env("HUBBUB_ENGINE_PREFIX", prefix)
        .env("HUBBUB_STORE_TYPE", "postgres")
        .env("HUBBUB_STORE_POSTGRES_URL", database)
        .start()
}

#[tokio::test]
async fn two_nodes_on_nats_share_channels_history_and_presence() {
    let Some(url) = hubbub_testservices::nats() else { return };
    let Some(db) = hubbub_testservices::postgres_database().await else { return };
    let prefix = hubbub_testservices::unique_prefix();
    let n1 = nats_node(&url, &prefix, db.url());
    let n2 = nats_node(&url, &prefix, db.url());

    let mut alice = n1.user("alice").await;
    let sub = alice.subscribe_with(json!({"channel": "news", "join_leave": true})).await;
    let epoch = sub["epoch"].as_str().expect("an epoch for the empty channel").to_owned();
    let mut bob = n2.user("bob").await;
    bob.subscribe("news").await;
    // Her own join comes back from NATS to her node too; then bob's.
    let mut join = alice.expect_push("news", "join").await;
    if join["info"]["user"] == "alice" {
        join = alice.expect_push("news", "join").await;
    }
    assert_eq!(join["info"]["user"], "bob", "bob's join reached node 1: {join}");

    // Published through node 2's API: alice on node 1 gets it, in the epoch she was given.
    let r = n2.api().publish("news", json!({"n": 1})).await;
    assert_eq!((num(&r, "offset"), r["epoch"].as_str()), (1, Some(epoch.as_str())), "{r}");
    let p = alice.expect_push("news", "pub").await;
    assert_eq!((num(&p, "offset"), &p["data"]), (1, &json!({"n": 1})), "{p}");
    // Published by alice on node 1: bob on node 2 gets both, in order.
    alice.publish("news", json!({"n": 2})).await;
    let p = bob.expect_push("news", "pub").await;
    assert_eq!(num(&p, "offset"), 1, "{p}");
    let p = bob.expect_push("news", "pub").await;
    assert_eq!((num(&p, "offset"), &p["data"]), (2, &json!({"n": 2})), "{p}");

    // Either node answers history and presence for the whole cluster.
    let h = n1.api().ok("history", json!({"channel": "news", "limit": -1})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![1, 2], "{h}");
    let presence = n2.api().ok("presence", json!({"channel": "news"})).await;
    let mut users: Vec<&str> =
        presence["presence"].as_object().unwrap().values().map(|i| i["user"].as_str().unwrap()).collect();
    users.sort_unstable();
    assert_eq!(users, vec!["alice", "bob"], "{presence}");

    // A client that saw offset 1 on node 1 recovers offset 2 on node 2.
    let mut carol = n2.user("carol").await;
    let r =
        carol.subscribe_with(json!({"channel": "news", "recover": true, "offset": 1, "epoch": epoch})).await;
    assert!(flag(&r, "recovered"), "{r}");
    assert_eq!(offsets(&arr(&r, "publications")), vec![2], "{r}");

    // Bob leaves: alice on node 1 hears it, and presence on node 1 no longer lists him.
    bob.ok("unsubscribe", json!({"channel": "news"})).await;
    let leave = alice.expect_push("news", "leave").await;
    assert_eq!(leave["info"]["user"], "bob", "{leave}");
    let presence = n1.api().ok("presence", json!({"channel": "news"})).await;
    assert!(!presence.to_string().contains("\"bob\""), "{presence}");

    // The stream and buckets of this test's prefix go with it.
    drop((n1, n2));
    let engine = hubbub_core::engine::EngineConfig { nats_url: url, prefix, ..Default::default() };
    let config = hubbub_nats::NatsConfig::from_engine(&engine, std::time::Duration::ZERO);
    hubbub_nats::NatsEngine::connect(config).await.unwrap().destroy().await.unwrap();
}
