//! Builds what the configuration names: the engine that connects this node to the others
//! (`[engine]`) and the database of the chat (`[store]`). A node that cannot reach either at
//! start stops with one line naming the key; later outages are the engine's and the store's
//! to ride out (retries with backoff, errors with the protocol's codes meanwhile).

use crate::config::Config;
use anyhow::Context;
use hubbub_core::channel::NamespaceConfig;
use hubbub_core::engine::memory::{MemoryBroker, MemoryPresence};
use hubbub_core::engine::{Broker, EngineConfig, EngineKind, PresenceStore};
use hubbub_nats::{NatsConfig, NatsEngine};
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
/// `data_dir` when given one and `engine.persist` is on. `namespaces` are the node's (a
/// broker that keeps streams for the whole cluster sizes them for the longest history any
/// namespace asks).
pub async fn connect_engine(
    config: &EngineConfig,
    data_dir: Option<&Path>,
    namespaces: &[NamespaceConfig],
) -> anyhow::Result<Engine> {
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
        EngineKind::Nats => {
            let longest_ttl = namespaces.iter().map(|ns| ns.history_ttl).max().unwrap_or_default();
            let nats = NatsConfig::from_engine(config, longest_ttl);
            let engine = Arc::new(NatsEngine::connect(nats).await.with_context(|| {
                format!("cannot reach NATS at {} (config key `engine.nats_url`)", config.nats_url)
            })?);
            Ok(Engine { broker: engine.clone(), presence: engine, memory: None })
        }
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
        StoreKind::Postgres => {
            let url = &config.store.postgres_url;
            let store = hubbub_store::postgres::PgStore::open(url)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "store.postgres_url = {:?}: cannot open the database: {e}",
                        redact_password(url)
                    )
                })?
                .with_limits(config.chat.store_limits());
            Ok(Arc::new(store))
        }
    }
}

/// `url` without its password (`postgres://user:secret@host/db` → `postgres://user:***@host/db`),
/// for error messages and logs.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact_password("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1/hubbub"),
            "postgres://postgres@127.0.0.1/hubbub"
        );
        assert_eq!(redact_password("nonsense"), "nonsense");
    }
}
