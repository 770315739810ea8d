//! The NATS JetStream consumer: the application publishes `{"method": .., "payload": {..}}`
//! (or the payload alone, the method in `method_header`) to a subject of its stream; Hubbub
//! consumes it through a durable pull consumer and acknowledges each message once executed.
//!
//! The durable consumer is created with `max_ack_pending = 1`: JetStream hands out the next
//! message only once the previous one is acknowledged, whichever node holds it, so the
//! stream's order is the execution order on any number of nodes. A message's stream sequence
//! is its entry id. Before executing one, its sequence is written as the consumer's *claimed*
//! mark in the KV bucket `hubbub_consumers` (key: the consumer's name), in the same NATS: a
//! message below the mark was executed already (acknowledged without executing again: a NATS
//! restart may forget acks, whose state it writes lazily, and deliver old messages again as
//! new), one at the mark may have been (its publications are looked for in history first,
//! [`super::execute`]), one above it is new.

use super::config::NatsJetStreamConsumerConfig;
use super::execute::{self, Entry, Outcome};
use super::postgres::Backoff;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use hubbub_core::Node;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

type Consumer = async_nats::jetstream::consumer::Consumer<pull::Config>;

/// The KV bucket of the consumers' claimed marks (key: consumer name, value: a stream
/// sequence in decimal).
const MARKS_BUCKET: &str = "hubbub_consumers";

/// Connects, finds the stream and creates (or updates) the durable consumer: an error names
/// the key. Then consumes in a task.
pub async fn start(
    key: &str,
    name: &str,
    config: &NatsJetStreamConsumerConfig,
    node: Arc<Node>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("hubbub-consumer-{name}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(config.url.as_str())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "consumer {name}: cannot reach NATS at {} (config key `{key}.url`): {e}",
                config.url
            )
        })?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&config.stream_name).await.map_err(|e| {
        anyhow::anyhow!(
            "consumer {name}: no stream {:?} (config key `{key}.stream_name`): {e}",
            config.stream_name
        )
    })?;
    let _ = stream.info().await;
    let consumer_config = pull::Config {
        durable_name: Some(config.durable_consumer_name.clone()),
        filter_subject: config.subjects.first().cloned().unwrap_or_default(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        deliver_policy: DeliverPolicy::All,
        // One message in flight for the whole consumer: the stream's order is kept across
        // nodes (see the module's comment).
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer: Consumer = stream
        .get_or_create_consumer(&config.durable_consumer_name, consumer_config)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "consumer {name}: cannot create the durable consumer {:?} (config key `{key}.durable_consumer_name`): {e}",
                config.durable_consumer_name
            )
        })?;
    let marks = match js.get_key_value(MARKS_BUCKET).await {
        Ok(store) => store,
        Err(_) => {
            // The bucket's stream as the KV convention has it, made directly (as the NATS
            // engine does): the client's `create_key_value` asks for account limits in a form
            // servers before 2.10 do not answer in. Another node may create it meanwhile.
            let _ = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: format!("KV_{MARKS_BUCKET}"),
                    subjects: vec![format!("$KV.{MARKS_BUCKET}.>")],
                    max_messages_per_subject: 1,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    discard: async_nats::jetstream::stream::DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await;
            js.get_key_value(MARKS_BUCKET).await.map_err(|e| {
                anyhow::anyhow!("consumer {name}: cannot create the KV bucket {MARKS_BUCKET} (config key `{key}.url`): {e}")
            })?
        }
    };
    let worker = Worker { name: name.to_owned(), method_header: config.method_header.clone(), node, marks };
    Ok(tokio::spawn(worker.run(consumer)))
}

struct Worker {
    name: String,
    method_header: String,
    node: Arc<Node>,
    marks: async_nats::jetstream::kv::Store,
}

/// The body of a message when no `method_header` is configured.
#[derive(Deserialize)]
struct Command {
    #[serde(default)]
    method: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
}

impl Worker {
    async fn run(self, consumer: Consumer) {
        let mut backoff = Backoff::new();
        loop {
            match self.consume(&consumer, &mut backoff).await {
                Ok(()) => tracing::warn!(consumer = %self.name, "JetStream messages ended: pulling again"),
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "JetStream consumer: pulling again soon")
                }
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    async fn consume(&self, consumer: &Consumer, backoff: &mut Backoff) -> Result<(), async_nats::Error> {
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    // Heartbeats missed (NATS away): the stream goes on once it is back.
                    tracing::warn!(consumer = %self.name, error = %e, "JetStream consumer");
                    continue;
                }
            };
            let (sequence, delivered) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered),
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "JetStream message without metadata: skipped");
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            // The claimed mark, read fresh: another node may have moved it.
            let claimed = match self.marks.get(self.name.as_str()).await {
                Ok(value) => {
                    value.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok()).unwrap_or(0)
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "reading the claimed mark: trying again");
                    let _ = message.ack_with(AckKind::Nak(Some(backoff.next()))).await;
                    continue;
                }
            };
            if sequence < claimed {
                tracing::info!(consumer = %self.name, sequence, claimed, "JetStream message already executed: acknowledged again");
                let _ = message.double_ack().await;
                continue;
            }
            if sequence > claimed {
                if let Err(e) = self.marks.put(self.name.as_str(), sequence.to_string().into()).await {
                    tracing::warn!(consumer = %self.name, error = %e, "writing the claimed mark: trying again");
                    let _ = message.ack_with(AckKind::Nak(Some(backoff.next()))).await;
                    continue;
                }
            }
            let outcome = self.execute(&message, sequence, sequence == claimed || delivered > 1).await;
            match outcome {
                Outcome::Done => {}
                Outcome::Skipped(why) => {
                    tracing::warn!(consumer = %self.name, sequence, "JetStream message skipped: {why}")
                }
                Outcome::Retry(why) => {
                    tracing::warn!(consumer = %self.name, sequence, "JetStream message failed, trying it again: {why}");
                    let delay = backoff.next();
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    continue;
                }
            }
            backoff.reset();
            // Confirmed by the server; if the answer is lost, the message comes again with
            // `delivered > 1` and is found in history.
            if let Err(e) = message.double_ack().await {
                tracing::warn!(consumer = %self.name, sequence, error = %e, "JetStream ack not confirmed");
            }
        }
        Ok(())
    }

    async fn execute(
        &self,
        message: &async_nats::jetstream::Message,
        sequence: u64,
        maybe_done: bool,
    ) -> Outcome {
        let key = format!("{}:{sequence}", self.name);
        if !self.method_header.is_empty() {
            let method = message
                .headers
                .as_ref()
                .and_then(|h| h.get(self.method_header.as_str()))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let entry = Entry { key, method: &method, payload: &message.payload, maybe_done };
            return execute::execute(&self.node, entry).await;
        }
        let command: Command = match serde_json::from_slice(&message.payload) {
            Ok(command) => command,
            Err(e) => {
                return Outcome::Skipped(format!("message is not {{\"method\", \"payload\"}} JSON: {e}"))
            }
        };
        let entry = Entry {
            key,
            method: &command.method,
            payload: command.payload.as_ref().map_or("null", |p| p.get()).as_bytes(),
            maybe_done,
        };
        execute::execute(&self.node, entry).await
    }
}
