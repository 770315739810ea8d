//! Builds what the configuration names: the engine that connects this node to the others
//! (`[engine]`) and the database of the chat (`[store]`). A node that cannot reach either at
//! start stops with one line naming the key; later outages are the engine's and the store's
//! to ride out (retries with backoff, errors with the protocol's codes meanwhile).

use crate::config::Config;
use anyhow::Context;
use hubbub_core::engine::memory::{MemoryBroker, MemoryPresence};
use hubbub_core::engine::{Broker, EngineConfig, EngineKind, PresenceStore};
use hubbub_store::{ChatStore, StoreKind};
use std::path::Path;
use std::sync::Arc;

/// The engine of a node: its broker and its presence store.
pub struct Engine {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    /// The single-node engine, whose expired streams someone must sweep.
    pub memory: Option<Arc<MemoryBroker>>,
}

/// Connects the engine `engine.type` names. The memory engine keeps its streams in
/// `data_dir` when given one and `engine.persist` is on.
pub async fn connect_engine(config: &EngineConfig, data_dir: Option<&Path>) -> anyhow::Result<Engine> {
    match config.kind {
        EngineKind::Memory => {
            let broker = match data_dir.filter(|_| config.persist) {
                Some(dir) => {
                    let (memory, dir) = (config.memory(), dir.to_owned());
                    // Replaying the log is file I/O: off the runtime's threads.
                    tokio::task::spawn_blocking(move || MemoryBroker::open(memory, &dir))
                        .await?
                        .context("cannot open the channel history log (config key `engine.persist`)")?
                }
                None => MemoryBroker::with_config(config.memory()),
            };
            let broker = Arc::new(broker);
            Ok(Engine {
                broker: broker.clone(),
                presence: Arc::new(MemoryPresence::new()),
                memory: Some(broker),
            })
        }
        EngineKind::Redis => {
            let redis = hubbub_redis::RedisEngine::connect(hubbub_redis::RedisConfig::from_engine(config))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot reach Redis at engine.redis_url = {:?}: {e}", config.redis_url)
                })?;
            let redis = Arc::new(redis);
            Ok(Engine { broker: redis.clone(), presence: redis, memory: None })
        }
        EngineKind::Nats => anyhow::bail!("engine.type = \"nats\": not built yet"),
    }
}

/// Opens the store `store.type` names (SQLite: `hubbub.db` in `data_dir`).
pub async fn open_store(config: &Config, data_dir: &Path) -> anyhow::Result<Arc<dyn ChatStore>> {
    match config.store.kind {
        StoreKind::Sqlite => {
            let db = data_dir.join("hubbub.db");
            let store = hubbub_store::sqlite::SqliteStore::open(&db)
                .await
                .with_context(|| format!("cannot open the database {}", db.display()))?
                .with_limits(config.chat.store_limits());
            Ok(Arc::new(store))
        }
        StoreKind::Postgres => anyhow::bail!("store.type = \"postgres\": not built yet"),
    }
}
