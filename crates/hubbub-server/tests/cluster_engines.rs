//! Real `hubbub serve` processes on each cluster engine (Redis, NATS) sharing one PostgreSQL
//! database: a client on either node sees the same channels, offsets, history and presence;
//! history outlives every node; a node rides out a Redis restart; a node that cannot reach
//! its engine says so in one line. Each test has its own key prefix and database (or its own
//! `redis-server`); skips loudly without the services (fails under
//! HUBBUB_REQUIRE_SERVICES=1).
mod common;

use common::cluster::{Cluster, EngineKind, OwnRedis};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Two nodes on `engine`: fan-out both ways, joins and leaves, history and presence from
/// either node, recovery on the other node.
async fn two_nodes_share_channels_history_and_presence(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(2).start().await else { return };
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let prefix = cluster.prefix.clone();

    let mut alice = n1.user("alice").await;
    let sub = alice.subscribe_with(json!({"channel": "news", "join_leave": true})).await;
    let epoch = sub["epoch"].as_str().expect("an epoch for the empty channel").to_owned();
    let mut bob = n2.user("bob").await;
    bob.subscribe("news").await;
    alice.expect_presence_push("news", "join", "bob").await;

    // Published through node 2's API: alice on node 1 gets it, in the epoch she was given.
    let r = n2.api().publish("news", json!({"n": 1})).await;
    assert_eq!((num(&r, "offset"), r["epoch"].as_str()), (1, Some(epoch.as_str())), "{r}");
    let p = alice.expect_push("news", "pub").await;
    assert_eq!((num(&p, "offset"), &p["data"]), (1, &json!({"n": 1})), "{p}");
    // Published by alice on node 1: bob on node 2 gets it, next offset.
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
    alice.expect_presence_push("news", "leave", "bob").await;
    let presence = n1.api().ok("presence", json!({"channel": "news"})).await;
    assert!(!presence.to_string().contains("\"bob\""), "{presence}");
    drop(cluster);
    if engine == EngineKind::Nats {
        // The stream and buckets of this test's prefix go with it.
        let url = hubbub_testservices::nats().expect("NATS was there a moment ago");
        let engine = hubbub_core::engine::EngineConfig { nats_url: url, prefix, ..Default::default() };
        let config = hubbub_nats::NatsConfig::from_engine(&engine, Duration::ZERO);
        hubbub_nats::NatsEngine::connect(config).await.unwrap().destroy().await.unwrap();
    }
}

#[tokio::test]
async fn two_nodes_on_redis_share_channels_history_and_presence() {
    two_nodes_share_channels_history_and_presence(EngineKind::Redis).await;
}

#[tokio::test]
async fn two_nodes_on_nats_share_channels_history_and_presence() {
    two_nodes_share_channels_history_and_presence(EngineKind::Nats).await;
}

#[tokio::test]
async fn history_outlives_every_node() {
    let Some(mut cluster) = Cluster::builder().nodes(1).start().await else { return };
    let first = cluster.node(0).api().publish("kept", json!({"n": 1})).await;
    cluster.stop(0);
    let n2 = cluster.add_node();
    let h = cluster.node(n2).api().ok("history", json!({"channel": "kept", "limit": -1})).await;
    assert_eq!(offsets(&arr(&h, "publications")), vec![1], "{h}");
    assert_eq!(h["epoch"], first["epoch"], "{h}");
}

#[tokio::test]
async fn a_node_that_cannot_reach_redis_says_so_in_one_line() {
    let Some(db) = hubbub_testservices::postgres_database().await else { return };
    let port = hubbub_testservices::free_port();
    let dir = tempfile::tempdir().unwrap();
    let builder = Server::builder()
        .env("HUBBUB_ENGINE_TYPE", "redis")
        .env("HUBBUB_ENGINE_REDIS_URL", &format!("redis://127.0.0.1:{port}"))
        .env("HUBBUB_STORE_TYPE", "postgres")
        .env("HUBBUB_STORE_POSTGRES_URL", db.url());
    let config = write_config(dir.path(), &builder.render(&dir.path().join("data")));
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&config);
    for (k, v) in &builder.env {
        cmd.env(k, v);
    }
    let (status, _, stderr) = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(!status.success());
    // The one line the binary prints for a fatal error (log lines may come before it).
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hubbub:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("engine.redis_url") && lines[0].contains(&port.to_string()), "{stderr}");
}

#[tokio::test]
async fn a_node_rides_out_a_redis_restart() {
    // Skips (loudly) where the machine has no Redis at all, so no redis-server either.
    if hubbub_testservices::redis().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let Some(cluster) = Cluster::builder().nodes(1).engine_url(&redis.url).start().await else { return };
    let node = cluster.node(0);
    let mut alice = node.user("alice").await;
    let epoch = alice.subscribe("news").await["epoch"].as_str().unwrap().to_owned();
    node.api().publish("news", json!({"n": 1})).await;
    assert_eq!(num(&alice.expect_push("news", "pub").await, "offset"), 1);

    // Redis gone: the API answers with an error at once, the node keeps running.
    let port = redis.port;
    drop(redis);
    let started = Instant::now();
    let (status, body) = node.api().call("publish", json!({"channel": "news", "data": {"n": 2}})).await;
    assert!(status >= 500 || body.get("error").is_some(), "{status} {body}");
    assert!(started.elapsed() < Duration::from_secs(7), "the API hung {:?}", started.elapsed());

    // Back (empty: no persistence): the node resubscribes, notices its subscriber's stream
    // is gone (another epoch) and tells alice to subscribe again (2500); she does, is told
    // she could not recover, and gets what is published next.
    let _redis = OwnRedis::start_on(port);
    let push = alice
        .push_where(Duration::from_secs(20), |p| {
            p["push"]["channel"] == "news" && p["push"].get("unsubscribe").is_some()
        })
        .await
        .expect("an unsubscribe push once Redis is back");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2500, "{push}");
    let r =
        alice.subscribe_with(json!({"channel": "news", "recover": true, "offset": 1, "epoch": epoch})).await;
    assert!(!flag(&r, "recovered"), "recovered from a Redis that lost everything: {r}");
    let r = node.api().publish("news", json!({"n": 3})).await;
    assert_eq!(num(&r, "offset"), 1, "{r}");
    let p = alice.expect_push("news", "pub").await;
    assert_eq!(p["data"], json!({"n": 3}), "{p}");
}
