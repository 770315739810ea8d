//! The PostgreSQL outbox consumer: the application inserts `(method, payload, partition)`
//! rows into its outbox table in the transaction that changes its own data; Hubbub executes
//! each row once, in id order per partition, then deletes it.
//!
//! Per partition, one task holds a connection and, on it, the session advisory lock
//! `(hashtext('hubbub_consumer:<name>'), partition)`: one node at a time works on a
//! partition, the others wait for the lock. A round: read the next rows (id order), record
//! in `hubbub_consumer_state` that everything up to the last of them is *claimed* (committed
//! before anything is published), then execute each row and delete it. A row at or below
//! the claimed mark when it is read may have been executed by an attempt that died before its
//! delete: its publications are looked for in history first ([`super::execute`]).

use super::config::PostgresConsumerConfig;
use super::execute::{self, Entry, Outcome};
use hubbub_core::Node;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The consumers' own state, in the outbox's database: the claimed mark per partition.
const STATE_DDL: &str = "CREATE TABLE IF NOT EXISTS hubbub_consumer_state (
    consumer TEXT NOT NULL,
    partition INTEGER NOT NULL,
    claimed_upto BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, partition)
)";

/// `application_name` of the consumers' connections (to find them in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "hubbub-consumer";

/// How long a node that takes a partition over with claimed rows waits before checking them:
/// the previous holder may have lost its connection (and with it the lock) while a publish of
/// its was still in flight; a publish ends within the engine's timeout (at most 5 s).
const TAKEOVER_GRACE: Duration = Duration::from_secs(6);

struct Consumer {
    name: String,
    config: PostgresConsumerConfig,
    options: PgConnectOptions,
    node: Arc<Node>,
    /// Per partition: woken by a NOTIFY naming it.
    wake: Vec<Notify>,
}

/// Checks the database and the table (an error names the key), creates the state table, and
/// starts the partition tasks (and the listener).
pub async fn start(
    key: &str,
    name: &str,
    config: &PostgresConsumerConfig,
    node: Arc<Node>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let options = PgConnectOptions::from_str(&config.dsn)
        .map_err(|e| anyhow::anyhow!("config key `{key}.dsn`: {e}"))?
        .application_name(APPLICATION_NAME);
    let mut conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| {
            anyhow::anyhow!("consumer {name}: connecting to the database timed out (config key `{key}.dsn`)")
        })?
        .map_err(|e| {
            anyhow::anyhow!("consumer {name}: cannot connect to the database (config key `{key}.dsn`): {e}")
        })?;
    let table = &config.outbox_table_name;
    sqlx::query(&format!("SELECT id, method, payload::text, partition FROM {table} LIMIT 0"))
        .execute(&mut conn)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "consumer {name}: cannot read the outbox table (config key `{key}.outbox_table_name`): {e}"
            )
        })?;
    // Nodes starting together: one creates the table, the others wait for it.
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('hubbub_consumer_state'))").execute(&mut *tx).await?;
    sqlx::query(STATE_DDL).execute(&mut *tx).await?;
    tx.commit().await?;
    let _ = conn.close().await;

    let consumer = Arc::new(Consumer {
        name: name.to_owned(),
        config: config.clone(),
        options,
        node,
        wake: (0..config.num_partitions).map(|_| Notify::new()).collect(),
    });
    let mut tasks = Vec::new();
    if !config.partition_notification_channel.is_empty() {
        tasks.push(tokio::spawn(consumer.clone().listen()));
    }
    for partition in 0..config.num_partitions as i32 {
        tasks.push(tokio::spawn(consumer.clone().run_partition(partition)));
    }
    Ok(tasks)
}

/// Doubling waits after failures, from 100 ms to 5 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff(Duration::ZERO)
    }
    pub(super) fn next(&mut self) -> Duration {
        self.0 = (self.0 * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        self.0
    }
    pub(super) fn reset(&mut self) {
        self.0 = Duration::ZERO;
    }
}

impl Consumer {
    /// LISTEN on the notification channel; a payload naming a partition wakes it. The
    /// listener reconnects by itself; polling goes on meanwhile.
    async fn listen(self: Arc<Self>) {
        let channel = &self.config.partition_notification_channel;
        let mut backoff = Backoff::new();
        loop {
            let result = async {
                let mut listener = PgListener::connect(&self.config.dsn).await?;
                listener.listen(channel).await?;
                loop {
                    let notification = listener.recv().await?;
                    match notification.payload().trim().parse::<usize>() {
                        Ok(p) if p < self.wake.len() => self.wake[p].notify_one(),
                        _ => tracing::warn!(
                            consumer = %self.name,
                            payload = notification.payload(),
                            "outbox notification that names no partition: ignored"
                        ),
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(consumer = %self.name, error = %e, "outbox notifications: listening again soon");
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// Until the partition has work: the poll interval, or a notification.
    async fn idle(&self, partition: i32) {
        let wake = &self.wake[partition as usize];
        tokio::select! {
            _ = tokio::time::sleep(self.config.partition_poll_interval) => {}
            _ = wake.notified() => {}
        }
    }

    async fn run_partition(self: Arc<Self>, partition: i32) {
        let mut backoff = Backoff::new();
        loop {
            if let Err(e) = self.hold_partition(partition, &mut backoff).await {
                tracing::warn!(
                    consumer = %self.name, partition, error = %e,
                    "outbox partition: database error, connecting again"
                );
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }

    /// Connects, waits for the partition's lock, then works on it until a database error
    /// (the connection, and with it the lock, is then gone).
    async fn hold_partition(&self, partition: i32, backoff: &mut Backoff) -> Result<(), sqlx::Error> {
        let mut conn = self.options.connect().await?;
        let lock_key = format!("hubbub_consumer:{}", self.name);
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), $2)")
                .bind(&lock_key)
                .bind(partition)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                break;
            }
            self.idle(partition).await;
        }
        tracing::info!(consumer = %self.name, partition, "consuming outbox partition");
        sqlx::query(
            "INSERT INTO hubbub_consumer_state (consumer, partition) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(partition)
        .execute(&mut conn)
        .await?;
        let table = &self.config.outbox_table_name;
        let select = format!(
            "SELECT id, method, payload::text FROM {table} WHERE partition = $1 ORDER BY id LIMIT $2"
        );
        let delete = format!("DELETE FROM {table} WHERE id = $1");
        let limit = i64::from(self.config.partition_select_limit);
        let mut taken_over = false;
        loop {
            let claimed: i64 = sqlx::query_scalar(
                "SELECT claimed_upto FROM hubbub_consumer_state WHERE consumer = $1 AND partition = $2",
            )
            .bind(&self.name)
            .bind(partition)
            .fetch_one(&mut conn)
            .await?;
            let rows: Vec<(i64, Option<String>, Option<String>)> =
                sqlx::query_as(&select).bind(partition).bind(limit).fetch_all(&mut conn).await?;
            let Some(&(last, _, _)) = rows.last() else {
                self.idle(partition).await;
                continue;
            };
            if !taken_over && rows[0].0 <= claimed {
                // Someone (maybe this node before a restart) claimed these rows and did not
                // finish: let a publish of theirs still in flight land before checking.
                tracing::info!(
                    consumer = %self.name, partition, claimed,
                    "outbox partition has claimed rows left: checking them against history after {TAKEOVER_GRACE:?}"
                );
                tokio::time::sleep(TAKEOVER_GRACE).await;
            }
            taken_over = true;
            if last > claimed {
                sqlx::query(
                    "UPDATE hubbub_consumer_state SET claimed_upto = $3 WHERE consumer = $1 AND partition = $2",
                )
                .bind(&self.name)
                .bind(partition)
                .bind(last)
                .execute(&mut conn)
                .await?;
            }
            let mut retry = false;
            for (id, method, payload) in &rows {
                let entry = Entry {
                    key: format!("{}:{id}", self.name),
                    method: method.as_deref().unwrap_or(""),
                    payload: payload.as_deref().unwrap_or("").as_bytes(),
                    maybe_done: *id <= claimed,
                };
                match execute::execute(&self.node, entry).await {
                    Outcome::Done => {}
                    Outcome::Skipped(why) => tracing::warn!(
                        consumer = %self.name, partition, id, method = method.as_deref().unwrap_or(""),
                        "outbox row skipped: {why}"
                    ),
                    Outcome::Retry(why) => {
                        tracing::warn!(consumer = %self.name, partition, id, "outbox row failed, trying it again: {why}");
                        retry = true;
                        break;
                    }
                }
                sqlx::query(&delete).bind(id).execute(&mut conn).await?;
            }
            if retry {
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            backoff.reset();
            if (rows.len() as i64) < limit {
                self.idle(partition).await;
            }
        }
    }
}
