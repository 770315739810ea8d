//! The async consumers (`[[consumers]]`) against the real sources: a PostgreSQL outbox table
//! in a database of the test's own, and a `nats-server -js` of the test's own (never the
//! machine's shared one), with the real `hubbub serve`.
//!
//! What must hold: every committed entry is executed once (a rolled-back one never), in
//! order per channel, through Hubbub's SIGKILL and restart, a dropped database connection, a
//! NATS restart, poison entries, and two nodes consuming one table.
mod common;

use common::cluster::Cluster;
use common::{eventually, Builder, Ns, Server, QUIET};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};

/// The namespace the consumers publish to: history kept, and a publication is acknowledged
/// only once it is on disk (so a SIGKILL loses no acknowledged publication).
fn server_builder(consumers_toml: &str) -> Builder {
    let mut b = Server::builder().ns(Ns::new("ob")
        .set("history_size", "1000")
        .set("durable_publish", "true")
        .set("history_ttl", "\"1h\""));
    b.extra_top = consumers_toml.to_owned();
    b
}

fn pg_consumer_toml(name: &str, dsn: &str, extra: &str) -> String {
    format!(
        "\n[[consumers]]\nname = \"{name}\"\ntype = \"postgresql\"\nenabled = true\n\
         [consumers.postgresql]\ndsn = \"{dsn}\"\noutbox_table_name = \"outbox\"\n{extra}\n"
    )
}

const OUTBOX_DDL: &str = "CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    method TEXT NOT NULL,
    payload JSONB NOT NULL,
    partition INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

async fn outbox_db() -> Option<(hubbub_testservices::TempDatabase, PgConnection)> {
    let db = hubbub_testservices::postgres_database().await?;
    let mut conn = PgConnection::connect(db.url()).await.expect("connect to the test database");
    conn.execute(OUTBOX_DDL).await.expect("create the outbox table");
    Some((db, conn))
}

/// The application's side: one row, in a transaction of its own, with its business data.
async fn insert(conn: &mut PgConnection, method: &str, payload: Value, partition: i32) {
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (method, payload, partition) VALUES ($1, $2::jsonb, $3)")
        .bind(method)
        .bind(payload.to_string())
        .bind(partition)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn outbox_len(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(conn).await.unwrap()
}

/// Every publication of `channel`'s history (oldest first) as `data.n`, with its tag.
async fn history_ns(server: &Server, channel: &str) -> Vec<(i64, String)> {
    let result = server.api().ok("history", json!({ "channel": channel, "limit": -1 })).await;
    result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = p["data"]["n"].as_i64().unwrap_or(-1);
            (n, p["tags"]["hubbub-entry"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// Waits until `f` holds, or fails with `what` and the server's log.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, server: &Server, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = eventually(timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await;
    assert!(done.is_some(), "{what} within {timeout:?}; server log:\n{}", tail(&server.stderr()));
}

fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(6000)..]
}

#[tokio::test]
async fn postgres_outbox_each_entry_once_in_order_rollback_and_poison() {
    let Some((db, mut app)) = outbox_db().await else { return };
    // A trigger that NOTIFYs the row's partition: with a poll interval of a minute, only the
    // notifications can make the entries arrive in time.
    app.execute(
        "CREATE FUNCTION outbox_wake() RETURNS trigger AS $$ BEGIN \
         PERFORM pg_notify('outbox_wake', NEW.partition::text); RETURN NEW; END $$ LANGUAGE plpgsql;",
    )
    .await
    .unwrap();
    app.execute(
        "CREATE TRIGGER outbox_wake AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_wake()",
    )
    .await
    .unwrap();
    let toml = pg_consumer_toml(
        "app",
        db.url(),
        "num_partitions = 2\npartition_poll_interval = \"60s\"\npartition_notification_channel = \"outbox_wake\"",
    );
    let server = server_builder(&toml).start();
    let mut client = server.user("alice").await;
    client.subscribe("ob:a").await;
    client.subscribe("ob:b").await;
    // Hubbub polls each partition once at start; let that pass so that only NOTIFY wakes it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for n in 0..20 {
        insert(&mut app, "publish", json!({"channel": "ob:a", "data": {"n": n}}), 0).await;
        insert(&mut app, "publish", json!({"channel": "ob:b", "data": {"n": n}}), 1).await;
        if n == 10 {
            // Rolled back: never published.
            let mut tx = app.begin().await.unwrap();
            sqlx::query("INSERT INTO outbox (method, payload, partition) VALUES ('publish', $1::jsonb, 0)")
                .bind(json!({"channel": "ob:a", "data": {"n": 999}}).to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            // Poison: an unknown method, a payload that is not a request, a request the
            // method refuses. Each is logged and skipped; what follows still arrives.
            insert(&mut app, "no_such_method", json!({"channel": "ob:a", "data": {"n": 1000}}), 0).await;
            insert(&mut app, "publish", json!("{not json"), 0).await;
            insert(&mut app, "publish", json!([1, 2, 3]), 0).await;
            insert(&mut app, "publish", json!({"data": {"n": 1001}}), 0).await;
            insert(&mut app, "publish", json!({"channel": "nosuchns:x", "data": {"n": 1002}}), 0).await;
        }
    }
    insert(&mut app, "broadcast", json!({"channels": ["ob:a", "ob:b"], "data": {"n": 20}}), 0).await;

    for channel in ["ob:a", "ob:b"] {
        let mut seen = Vec::new();
        while seen.len() < 21 {
            let ch = channel.to_owned();
            let push = client
                .push_where(Duration::from_secs(10), move |p| p["push"]["channel"] == ch.as_str())
                .await
                .unwrap_or_else(|| {
                    panic!("{channel}: only {seen:?} arrived; server log:\n{}", tail(&server.stderr()))
                });
            let publication = &push["push"]["pub"];
            assert!(
                publication["tags"]["hubbub-entry"].as_str().is_some_and(|t| t.starts_with("app:")),
                "a consumed publication carries its entry: {publication}"
            );
            seen.push(publication["data"]["n"].as_i64().unwrap());
        }
        // The broadcast (n = 20) is in partition 0 with ob:a's rows: ordered after them,
        // but not with ob:b's (partition 1).
        if channel == "ob:b" {
            let at = seen.iter().position(|&n| n == 20).expect("the broadcast reached ob:b");
            seen.remove(at);
            seen.push(20);
        }
        assert_eq!(seen, (0..=20).collect::<Vec<_>>(), "{channel}: each entry once, in order");
    }
    client.expect_no_push("ob:a", "pub", QUIET).await;
    client.expect_no_push("ob:b", "pub", Duration::from_millis(100)).await;
    assert_eq!(outbox_len(&mut app).await, 0, "every row, poison included, is deleted once done");
    let log = server.stderr();
    assert!(log.contains("outbox row skipped"), "poison rows are logged:\n{}", tail(&log));
    // History holds the same, once each (nothing the rolled-back transaction wrote).
    let ns: Vec<i64> = history_ns(&server, "ob:a").await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(ns, (0..=20).collect::<Vec<_>>());
}

/// The crash window itself, made on purpose: an entry was published (its tag is in the
/// channel's history) and claimed, but its row was not deleted (the node died in between).
/// The next start must find it in history and not publish it again, and go on with the rest.
#[tokio::test]
async fn postgres_outbox_entry_published_before_a_crash_is_not_published_again() {
    let Some((db, mut app)) = outbox_db().await else { return };
    let toml = pg_consumer_toml("app", db.url(), "partition_poll_interval = \"20ms\"");
    let mut server = server_builder(&toml).start();
    insert(&mut app, "publish", json!({"channel": "ob:c", "data": {"n": 0}}), 0).await;
    wait_for(Duration::from_secs(10), "the first row consumed and deleted", &server, || {
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            outbox_len(&mut conn).await == 0
        }
    })
    .await;
    server.kill9();
    // What a node that died between publish and delete leaves behind.
    insert(&mut app, "publish", json!({"channel": "ob:c", "data": {"n": 1}}), 0).await;
    insert(&mut app, "publish", json!({"channel": "ob:c", "data": {"n": 2}}), 0).await;
    let id: i64 = sqlx::query_scalar("SELECT min(id) FROM outbox").fetch_one(&mut app).await.unwrap();
    sqlx::query("UPDATE hubbub_consumer_state SET claimed_upto = $1 WHERE consumer = 'app'")
        .bind(id + 1)
        .execute(&mut app)
        .await
        .unwrap();
    server.restart();
    server
        .api()
        .ok(
            "publish",
            json!({"channel": "ob:c", "data": {"n": 1}, "tags": {"hubbub-entry": format!("app:{id}")}}),
        )
        .await;
    wait_for(Duration::from_secs(20), "the outbox emptied", &server, || {
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            outbox_len(&mut conn).await == 0
        }
    })
    .await;
    let history = history_ns(&server, "ob:c").await;
    let ns: Vec<i64> = history.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns, vec![0, 1, 2], "entry {id} was already published: once, not twice: {history:?}");
    assert!(server.stderr().contains("already published"), "{}", tail(&server.stderr()));
}

/// Rows keep coming while Hubbub is killed (SIGKILL) and started again, and while its
/// database connections are cut (pg_terminate_backend): every row is published once, in order.
#[tokio::test]
async fn postgres_outbox_survives_kill9_restart_and_dropped_connections() {
    let Some((db, mut app)) = outbox_db().await else { return };
    const ROWS: i64 = 400;
    let toml =
        pg_consumer_toml("app", db.url(), "partition_poll_interval = \"10ms\"\npartition_select_limit = 7");
    let mut server = server_builder(&toml).start();
    let writer = tokio::spawn({
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for n in 0..ROWS {
                insert(&mut conn, "publish", json!({"channel": "ob:k", "data": {"n": n}}), 0).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    let published = |server: &Server| {
        let api = server.api();
        async move {
            let r = api.ok("history", json!({"channel": "ob:k", "limit": 0})).await;
            r["offset"].as_u64().unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while published(&server).await < 60 {
        assert!(Instant::now() < deadline, "nothing consumed:\n{}", tail(&server.stderr()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    server.restart();
    // Mid-stream again: cut every connection of the consumer from the database side.
    let before = history_ns(&server, "ob:k").await.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while history_ns(&server, "ob:k").await.len() < before + 40 {
        assert!(Instant::now() < deadline, "nothing consumed after the restart:\n{}", tail(&server.stderr()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'hubbub-consumer' AND datname = current_database()) t",
    )
    .fetch_one(&mut app)
    .await
    .unwrap();
    assert!(cut >= 1, "the consumer's connection was found");
    writer.await.unwrap();
    wait_for(Duration::from_secs(60), "every row consumed", &server, || {
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            outbox_len(&mut conn).await == 0
        }
    })
    .await;
    let ns: Vec<i64> = history_ns(&server, "ob:k").await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(ns, (0..ROWS).collect::<Vec<_>>(), "every row once, in order");
}

/// Two nodes of a cluster (Redis engine: one history for both) run the same consumer on one
/// table; the node holding the partitions is killed mid-stream and the other takes over:
/// every row is published once, in order per channel. (Nodes that do not share history
/// cannot check each other's interrupted entries: a consumer running on several nodes needs
/// a cluster engine, see ARCHITECTURE.md.)
#[tokio::test]
async fn postgres_outbox_two_nodes_execute_each_row_once() {
    let Some((db, _app)) = outbox_db().await else { return };
    const ROWS: i64 = 200;
    let toml = pg_consumer_toml("app", db.url(), "num_partitions = 2\npartition_poll_interval = \"10ms\"");
    let Some(mut cluster) = Cluster::builder()
        .nodes(2)
        .configure(|mut b| {
            b.extra_top = toml;
            b.ns(Ns::new("ob").set("history_size", "1000").set("history_ttl", "\"1h\""))
        })
        .start()
        .await
    else {
        return;
    };
    let writer = tokio::spawn({
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for n in 0..ROWS {
                let (channel, partition) = if n % 2 == 0 { ("ob:even", 0) } else { ("ob:odd", 1) };
                insert(&mut conn, "publish", json!({"channel": channel, "data": {"n": n}}), partition).await;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }
    });
    // Kill whichever node holds partition 0 once it has published a part.
    let holder = |i: usize, cluster: &common::cluster::Cluster| {
        cluster.node(i).stderr().contains("consuming outbox partition consumer=app partition=0")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = history_ns(cluster.node(1), "ob:even").await.len();
        if done >= 20 && (holder(0, &cluster) || holder(1, &cluster)) {
            break;
        }
        assert!(Instant::now() < deadline, "nothing consumed:\n{}", tail(&cluster.node(0).stderr()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (dead, alive) = if holder(0, &cluster) { (0, 1) } else { (1, 0) };
    cluster.kill(dead);
    writer.await.unwrap();
    wait_for(Duration::from_secs(60), "every row consumed", cluster.node(alive), || {
        let url = db.url().to_owned();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            outbox_len(&mut conn).await == 0
        }
    })
    .await;
    let log = cluster.node(alive).stderr();
    assert!(
        log.contains("consuming outbox partition consumer=app partition=0"),
        "node {alive} took over:\n{}",
        tail(&log)
    );
    for (channel, first) in [("ob:even", 0), ("ob:odd", 1)] {
        let ns: Vec<i64> =
            history_ns(cluster.node(alive), channel).await.into_iter().map(|(n, _)| n).collect();
        let expected: Vec<i64> = (first..ROWS).step_by(2).collect();
        assert_eq!(ns, expected, "{channel}: every row once, in order");
    }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream
// ---------------------------------------------------------------------------------------------

/// A `nats-server -js` of the test's own on a free port (file storage in a temp folder), to
/// kill and start again. `None` (skipped loudly; a failure under HUBBUB_REQUIRE_SERVICES=1)
/// when it is not installed.
struct OwnNats {
    port: u16,
    url: String,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> Option<OwnNats> {
        let installed = std::process::Command::new("nats-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !installed {
            if hubbub_testservices::required() {
                panic!("nats-server is not installed; HUBBUB_REQUIRE_SERVICES=1, so this test may not skip");
            }
            eprintln!("\n!!!!! SKIPPED: nats-server is not installed !!!!!\n");
            return None;
        }
        let port = hubbub_testservices::free_port();
        let mut nats = OwnNats {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.up();
        Some(nats)
    }

    fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .unwrap();
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("js"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hubbub_testservices::reachable(&self.url) {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.down();
    }
}

fn nats_consumer_toml(url: &str, stream: &str) -> String {
    format!(
        "\n[[consumers]]\nname = \"js\"\ntype = \"nats_jetstream\"\nenabled = true\n\
         [consumers.nats_jetstream]\nurl = \"{url}\"\nstream_name = \"{stream}\"\n\
         subjects = [\"outbox.>\"]\ndurable_consumer_name = \"hubbub\"\nack_wait = \"5s\"\n"
    )
}

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    let client =
        async_nats::ConnectOptions::new().max_reconnects(None).connect(url).await.expect("connect to NATS");
    async_nats::jetstream::new(client)
}

/// Publishes until JetStream acknowledges (it may be restarting).
async fn js_publish(js: &async_nats::jetstream::Context, body: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            js.publish("outbox.app", body.to_string().into()).await?.await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("JetStream publish failed: {other:?}"),
        }
    }
}

/// Messages published to a stream are executed once each, in order, through Hubbub's SIGKILL
/// and restart and a restart of NATS itself; poison messages are skipped.
#[tokio::test]
async fn nats_jetstream_each_message_once_in_order_through_restarts() {
    let Some(mut nats) = OwnNats::start() else { return };
    let js = jetstream(&nats.url).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "APP".into(),
        subjects: vec!["outbox.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the stream");
    const MESSAGES: i64 = 300;
    // Published before Hubbub ever started: consumed too.
    js_publish(&js, json!({"method": "publish", "payload": {"channel": "ob:j", "data": {"n": 0}}})).await;
    let mut server = server_builder(&nats_consumer_toml(&nats.url, "APP")).start();
    let mut client = server.user("alice").await;
    client.subscribe("ob:j").await;
    for n in 1..20 {
        js_publish(&js, json!({"method": "publish", "payload": {"channel": "ob:j", "data": {"n": n}}})).await;
        if n == 10 {
            for poison in [
                json!("not a command"),
                json!({"method": "nope", "payload": {}}),
                json!({"method": "publish"}),
            ] {
                js_publish(&js, poison).await;
            }
            js.publish("outbox.app", "{{{ not json".into()).await.unwrap().await.unwrap();
        }
    }
    // n = 0 may have been consumed as Hubbub started, before this subscriber came (the
    // history read at the end has it, once).
    let mut seen = Vec::new();
    while seen.last() != Some(&19) {
        let push = client
            .push_where(Duration::from_secs(10), |p| p["push"]["channel"] == "ob:j")
            .await
            .unwrap_or_else(|| panic!("only {seen:?} arrived; server log:\n{}", tail(&server.stderr())));
        seen.push(push["push"]["pub"]["data"]["n"].as_i64().unwrap());
    }
    if seen.first() == Some(&0) {
        seen.remove(0);
    }
    assert_eq!(seen, (1..20).collect::<Vec<_>>(), "each message once, in order");
    client.expect_no_push("ob:j", "pub", QUIET).await;
    assert!(server.stderr().contains("JetStream message skipped"), "{}", tail(&server.stderr()));

    // Under a stream of messages: Hubbub killed and restarted, then NATS killed and restarted.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn({
        let url = nats.url.clone();
        async move {
            let js = jetstream(&url).await;
            for n in 20..MESSAGES {
                js_publish(
                    &js,
                    json!({"method": "publish", "payload": {"channel": "ob:j", "data": {"n": n}}}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let _ = done_tx.send(());
        }
    });
    let offset = |server: &Server| {
        let api = server.api();
        async move {
            api.ok("history", json!({"channel": "ob:j", "limit": 0})).await["offset"].as_u64().unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset(&server).await < 60 {
        assert!(Instant::now() < deadline, "nothing consumed:\n{}", tail(&server.stderr()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    server.restart();
    let count = |server: &Server| {
        let server_api = server.api();
        async move {
            let r = server_api.ok("history", json!({"channel": "ob:j", "limit": -1})).await;
            r["publications"].as_array().map_or(0, Vec::len)
        }
    };
    let before = count(&server).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&server).await < before + 30 {
        assert!(Instant::now() < deadline, "nothing consumed after the restart:\n{}", tail(&server.stderr()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.down();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the writer did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.unwrap();
    wait_for(Duration::from_secs(60), "every message consumed", &server, || {
        let server_api = server.api();
        async move {
            let r = server_api.ok("history", json!({"channel": "ob:j", "limit": -1})).await;
            r["publications"]
                .as_array()
                .and_then(|p| p.last())
                .is_some_and(|p| p["data"]["n"] == MESSAGES - 1)
        }
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let ns: Vec<i64> = history_ns(&server, "ob:j").await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(ns, (0..MESSAGES).collect::<Vec<_>>(), "every message once, in order");
}

/// A source that cannot be used stops the start with one line naming the key.
#[tokio::test]
async fn a_missing_table_or_stream_names_the_key() {
    let Some((db, _app)) = outbox_db().await else { return };
    let toml = format!(
        "\n[[consumers]]\nname = \"app\"\ntype = \"postgresql\"\nenabled = true\n\
         [consumers.postgresql]\ndsn = \"{}\"\noutbox_table_name = \"no_such_table\"\n",
        db.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hubbub.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{toml}", dir.path().join("d").display()),
    )
    .unwrap();
    let out = tokio::process::Command::new(common::BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("consumers[0].postgresql.outbox_table_name"), "{stderr}");
}
