//! Asynchronous consumers (`[[consumers]]`, Centrifugo's "async consumers"): the
//! application writes server API commands to its own PostgreSQL outbox table or to a NATS
//! JetStream stream, and Hubbub executes each one once, in order per partition (per stream),
//! surviving restarts of either side. See ARCHITECTURE.md, "Async consumers".
//!
//! `config.rs` the keys, `execute.rs` one entry through the server API's operation (and the
//! exactly-once check), `postgres.rs` and `nats.rs` the two sources.

pub mod config;
mod execute;
mod nats;
pub mod postgres;

pub use config::{ConsumerConfig, ConsumerKind};
pub use execute::ENTRY_TAG;

use hubbub_core::Node;
use std::sync::Arc;

/// The running consumers; dropping it stops them.
#[derive(Default)]
pub struct Consumers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts every enabled consumer. One whose source cannot be reached, or lacks its table or
/// stream, stops the start with an error naming its key; later outages are retried.
pub async fn start(configs: &[ConsumerConfig], node: Arc<Node>) -> anyhow::Result<Consumers> {
    let mut running = Consumers::default();
    for (i, config) in configs.iter().enumerate() {
        if !config.enabled {
            tracing::info!(consumer = %config.name, "consumer not enabled: not started");
            continue;
        }
        match config.kind {
            ConsumerKind::Postgresql => {
                let key = format!("consumers[{i}].postgresql");
                let tasks = postgres::start(&key, &config.name, &config.postgresql, node.clone()).await?;
                running.tasks.extend(tasks);
            }
            ConsumerKind::NatsJetstream => {
                let key = format!("consumers[{i}].nats_jetstream");
                running
                    .tasks
                    .push(nats::start(&key, &config.name, &config.nats_jetstream, node.clone()).await?);
            }
        }
        tracing::info!(consumer = %config.name, kind = ?config.kind, "consumer started");
    }
    Ok(running)
}
