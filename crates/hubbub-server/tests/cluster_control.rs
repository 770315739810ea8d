//! Control across nodes, with real `hubbub` processes on Redis and PostgreSQL: `info` lists
//! every live node, the server API's user commands reach the node holding the user's
//! connections, `channels` answers for the cluster, `/emulation` and long polls work on any
//! node. Each runs on Redis and again on NATS (`redis::` and `nats::` tests); skipped loudly
//! without the engine's server or PostgreSQL.

mod common;

use common::cluster::{Cluster, EngineKind, OwnRedis};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Runs each scenario on both engines: `redis::<name>` and `nats::<name>`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::EngineKind::Redis).await
            })*
        }
        mod nats {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::EngineKind::Nats).await
            })*
        }
    };
}

on_both_engines!(
    info_lists_every_node_with_its_counts_and_forgets_a_dead_one,
    api_disconnect_refresh_and_unsubscribe_reach_the_user_on_another_node,
    api_subscribe_on_one_node_subscribes_the_client_on_another,
    channels_answers_for_the_whole_cluster,
    emulation_commands_posted_to_any_node_reach_the_session,
    a_long_poll_on_one_node_gets_a_publication_made_on_another,
);

/// Node `i`'s `info` entry for itself must come first, and list `want` (names) in any order.
async fn assert_info_lists(cluster: &Cluster, i: usize, want: &[&str]) {
    let names = cluster.info_names(i).await;
    assert_eq!(
        names.first().map(String::as_str),
        Some(format!("n{i}").as_str()),
        "own node first: {names:?}"
    );
    let mut sorted = names.clone();
    sorted.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(sorted, want, "node n{i} lists {names:?}");
}

async fn info_lists_every_node_with_its_counts_and_forgets_a_dead_one(engine: EngineKind) {
    let Some(mut cluster) = Cluster::builder().engine(engine).nodes(3).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_info_lists(&cluster, i, &["n0", "n1", "n2"]).await;
    }
    // Counts travel with the heartbeats: two connections and a subscription on n2.
    let mut a = cluster.node(2).user("alice").await;
    let _b = cluster.node(2).user("bob").await;
    a.subscribe("news").await;
    let seen = eventually(Duration::from_secs(5), || async {
        let n2 = cluster.info_of(0, "n2").await?;
        (n2["num_clients"] == 2 && n2["num_users"] == 2 && n2["num_subs"] == 1 && n2["num_channels"] == 1)
            .then_some(n2)
    })
    .await;
    assert!(seen.is_some(), "n0 sees n2's counts: {:?}", cluster.info_of(0, "n2").await);

    // kill -9: gone from the others' info within three heartbeats (300ms each).
    cluster.kill(1);
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(5), || async {
        let n0 = cluster.info_names(0).await;
        let n2 = cluster.info_names(2).await;
        (!n0.contains(&"n1".to_string()) && !n2.contains(&"n1".to_string())).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(gone.is_some(), "a killed node stays in info");
    assert!(took < Duration::from_millis(3 * 300 + 700), "gone only after {took:?}");
    println!("a killed node left info after {took:?}");
    assert_info_lists(&cluster, 0, &["n0", "n2"]).await;

    // A graceful stop says goodbye: gone at once, not after three heartbeats.
    // (Without the goodbye it would stay 600 to 900 ms after its last heartbeat.)
    cluster.stop(2);
    let left = eventually(Duration::from_millis(400), || async {
        (cluster.info_names(0).await == ["n0"]).then_some(())
    })
    .await;
    assert!(left.is_some(), "a stopped node left at once: {:?}", cluster.info_names(0).await);

    // A node that comes back is listed again.
    cluster.restart(1);
    cluster.wait_formed(Duration::from_secs(5)).await;
}

async fn api_disconnect_refresh_and_unsubscribe_reach_the_user_on_another_node(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(2).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let api = cluster.node(0).api();

    // unsubscribe on n0 ends alice's subscription on n1.
    let mut alice = cluster.node(1).user("alice").await;
    alice.subscribe("news").await;
    api.ok("unsubscribe", json!({"user": "alice", "channel": "news"})).await;
    let push = alice.expect_push("news", "unsubscribe").await;
    assert_eq!(push["code"], 2000, "{push}");

    // refresh with expired ends the connection with 3005; bob on n0 is untouched.
    let mut bob = cluster.node(0).user("bob").await;
    let mut alice2 = cluster.node(1).user("alice").await;
    api.ok("refresh", json!({"user": "alice", "expired": true})).await;
    alice2.expect_close(3005, T).await;
    alice.expect_close(3005, T).await;
    assert!(bob.still_open_after(QUIET).await);

    // disconnect on n0 closes carol's connections on n1 with the code given.
    let mut carol = cluster.node(1).user("carol").await;
    api.ok("disconnect", json!({"user": "carol", "disconnect": {"code": 4001, "reason": "bye"}})).await;
    let reason = carol.expect_close(4001, T).await;
    assert_eq!(reason, "bye");
    // Without a code: the force-disconnect default (3503).
    let mut carol = cluster.node(1).user("carol").await;
    api.ok("disconnect", json!({"user": "carol"})).await;
    carol.expect_close(3503, T).await;
    assert!(bob.still_open_after(QUIET).await);
}

async fn api_subscribe_on_one_node_subscribes_the_client_on_another(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(3).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let mut alice = cluster.node(2).user("alice").await;
    cluster.node(0).api().ok("subscribe", json!({"user": "alice", "channel": "news"})).await;
    let push = alice.expect_push("news", "subscribe").await;
    assert_eq!(push["recoverable"], true, "{push}");
    // And she gets what is published on yet another node.
    cluster.node(1).api().publish("news", json!({"n": 1})).await;
    let publication = alice.expect_push("news", "pub").await;
    assert_eq!(publication["data"], json!({"n": 1}));
    // Only her client, when the API names it.
    let mut alice_phone = cluster.node(1).user("alice").await;
    let phone = alice_phone.client_id.clone();
    cluster
        .node(0)
        .api()
        .ok("subscribe", json!({"user": "alice", "channel": "sport", "client": phone}))
        .await;
    alice_phone.expect_push("sport", "subscribe").await;
    alice.expect_no_push("sport", "subscribe", QUIET).await;
}

async fn channels_answers_for_the_whole_cluster(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(3).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let mut a = cluster.node(1).user("a").await;
    let mut b = cluster.node(2).user("b").await;
    a.subscribe("chat:only-on-n1").await;
    a.subscribe("chat:both").await;
    b.subscribe("chat:both").await;
    b.subscribe("news").await;
    let result = cluster.node(0).api().ok("channels", json!({})).await;
    let channels = &result["channels"];
    assert_eq!(channels["chat:only-on-n1"]["num_clients"], 1, "{result}");
    assert_eq!(channels["chat:both"]["num_clients"], 2, "counts summed over nodes: {result}");
    assert_eq!(channels["news"]["num_clients"], 1, "{result}");
    assert!(result.get("missing_nodes").is_none(), "{result}");
    let result = cluster.node(0).api().ok("channels", json!({"pattern": "chat:*"})).await;
    let mut names: Vec<&String> = result["channels"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["chat:both", "chat:only-on-n1"], "{result}");
}

/// An http_stream session: its response (read as the test goes) and its connect result.
struct HttpStream {
    response: reqwest::Response,
    buffered: Vec<u8>,
    connect: Value,
}

impl HttpStream {
    async fn open(srv: &Server, user: &str) -> HttpStream {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let connect = json!({"id": 1, "connect": {"token": token(user)}}).to_string();
        let response = http
            .post(srv.http_url("/connection/http_stream"))
            .body(connect)
            .send()
            .await
            .expect("http_stream");
        assert_eq!(response.status(), 200);
        let mut stream = HttpStream { response, buffered: Vec::new(), connect: Value::Null };
        let reply = stream.next(T).await.expect("connect reply");
        stream.connect = reply["connect"].clone();
        assert!(stream.connect.is_object(), "{reply}");
        stream
    }

    /// The next line of the stream, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self.buffered.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=at).collect();
                return Some(serde_json::from_slice(&line[..line.len() - 1]).expect("a JSON line"));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.ok()??;
            self.buffered.extend_from_slice(&chunk);
        }
    }

    /// The reply with this id (pushes and pings before it are skipped).
    async fn reply(&mut self, id: u64) -> Value {
        loop {
            let line = self.next(T).await.unwrap_or_else(|| panic!("no reply {id} on the stream"));
            if line["id"] == id {
                return line;
            }
        }
    }
}

async fn post_emulation(srv: &Server, body: Value) -> (u16, Value) {
    let response =
        http_client().post(srv.http_url("/emulation")).body(body.to_string()).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn emulation_commands_posted_to_any_node_reach_the_session(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(2).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let mut stream = HttpStream::open(cluster.node(1), "alice").await;
    let session = stream.connect["session"].as_str().expect("session").to_owned();
    let node = stream.connect["node"].as_str().expect("the node id, echoed by centrifuge-js").to_owned();
    // What centrifuge-js posts: the commands as a JSON string.
    for (i, target) in [0, 1, 0].into_iter().enumerate() {
        let id = 2 + i as u64;
        let commands = json!({"id": id, "subscribe": {"channel": format!("news{i}")}}).to_string();
        let (status, body) =
            post_emulation(cluster.node(target), json!({"session": session, "node": node, "data": commands}))
                .await;
        assert_eq!(status, 204, "POST to n{target}: {body}");
        let reply = stream.reply(id).await;
        assert!(reply["subscribe"].is_object(), "{reply}");
    }
    // A session that does not exist on a live node, and a node that is not live: 404.
    let (status, body) = post_emulation(
        cluster.node(0),
        json!({"session": "nope", "node": node, "data": "{\"id\":9,\"ping\":{}}"}),
    )
    .await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!(108)), "{body}");
    let (status, _) = post_emulation(
        cluster.node(0),
        json!({"session": session, "node": "no-such-node", "data": "{\"id\":9,\"ping\":{}}"}),
    )
    .await;
    assert_eq!(status, 404);
}

async fn a_long_poll_on_one_node_gets_a_publication_made_on_another(engine: EngineKind) {
    let Some(cluster) = Cluster::builder().engine(engine).nodes(2).start().await else { return };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let first = cluster.node(0).api().publish("news", json!({"n": 1})).await;
    let (offset, epoch) = (first["offset"].as_u64().unwrap(), first["epoch"].as_str().unwrap().to_owned());
    let url =
        cluster.node(1).http_url(&format!("/api/poll?channel=news&since={offset}&epoch={epoch}&wait=10"));
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let response = http_client()
            .get(url)
            .bearer_auth(token("alice"))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.node(0).api().publish("news", json!({"n": 2})).await;
    let (status, body, took) = tokio::time::timeout(Duration::from_secs(15), poll).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    let publications = body["publications"].as_array().expect("publications");
    assert_eq!(publications.len(), 1, "{body}");
    assert_eq!(publications[0]["data"], json!({"n": 2}));
    assert!(
        took < Duration::from_secs(5),
        "the poll waited {took:?}: woken by the publication, not the timeout"
    );
}

/// A node whose PUB/SUB connection to Redis broke misses what is published meanwhile; once
/// it is back (on_resync), its subscriber that missed a publication is told to resubscribe
/// (unsubscribe push 2500, what makes centrifuge-js subscribe again and recover), and
/// recovering from its position brings the lost publication.
#[tokio::test]
async fn a_subscriber_that_missed_publications_while_pubsub_was_broken_recovers() {
    if hubbub_testservices::redis().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let Some(cluster) = Cluster::builder().nodes(2).engine_url(&redis.url).start().await else {
        return;
    };
    cluster.wait_formed(Duration::from_secs(10)).await;
    let mut bob = cluster.node(1).user("bob").await;
    let subscribed = bob.subscribe("news").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let api = cluster.node(0).api();
    api.publish("news", json!({"n": 1})).await;
    assert_eq!(bob.expect_push("news", "pub").await["offset"], 1);

    // Every PUB/SUB connection of this Redis is cut; n1 reconnects after a backoff of 50 ms
    // at least, and misses what is published before it is back.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().unwrap_or(0) >= 2,
        "both nodes' PUB/SUB connections killed: {killed}"
    );
    let lost = api.publish("news", json!({"n": 2})).await;
    assert_eq!(lost["offset"], 2);

    let push = bob.expect_push("news", "unsubscribe").await;
    assert_eq!(push["code"], 2500, "insufficient state: the SDK resubscribes: {push}");
    let again =
        bob.subscribe_with(json!({"channel": "news", "recover": true, "offset": 1, "epoch": epoch})).await;
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(offsets(&arr(&again, "publications")), vec![2], "{again}");
    // Live again afterwards.
    api.publish("news", json!({"n": 3})).await;
    assert_eq!(bob.expect_push("news", "pub").await["offset"], 3);
}
