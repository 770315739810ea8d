//! The server's configuration: a TOML file, every key overridable by an environment
//! variable `HUBBUB_<KEY>` (`HUBBUB_<SECTION>_<KEY>` inside a section). Unknown keys and
//! bad values are errors that name the key.

use hubbub_core::channel::NamespaceConfig;
use hubbub_core::duration::serde_human;
use hubbub_core::engine::{EngineConfig, EngineKind};
use hubbub_core::ClientConfig;
use hubbub_store::{StoreConfig, StoreKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: String,
    /// Where the server keeps what it stores on disk.
    pub data_dir: PathBuf,
    /// Name of this node in `info`; unique per node of a cluster (default: the host and
    /// port it listens on).
    pub node_name: String,
    /// How long a graceful shutdown waits for connections to close.
    #[serde(with = "serde_human")]
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
    pub client: ClientConfig,
    pub http: HttpConfig,
    /// The server API's bounds (batch size, idempotency keys).
    pub api: hubbub_core::api::ApiConfig,
    /// The gRPC server API, on its own listener.
    pub grpc_api: GrpcApiConfig,
    pub chat: hubbub_chat::ChatConfig,
    /// How nodes reach each other (the engine) and the bounds of what it keeps.
    pub engine: EngineConfig,
    /// Where the chat keeps its data.
    pub store: StoreConfig,
    /// Channel namespaces; the one named "" is the default namespace.
    pub namespaces: Vec<NamespaceConfig>,
    /// Asynchronous consumers: outbox tables and streams whose entries are server API
    /// commands, executed once each (`crate::consumers`).
    pub consumers: Vec<crate::consumers::ConsumerConfig>,
    /// Backends that decide for the server, by name (Centrifugo's named proxies; see
    /// `src/proxy.rs` and docs/PROTOCOL.md).
    pub proxies: Vec<crate::proxy::ProxyConfig>,
    /// The proxy asked when a client connects without a token.
    pub connect_proxy_name: String,
    /// The proxy asked when a connection the connect proxy made expires.
    pub refresh_proxy_name: String,
    /// The proxy of RPC methods without a namespace that no application registered.
    pub rpc_proxy_name: String,
    /// The proxies of RPC methods `ns:method`, by namespace.
    pub rpc_namespaces: Vec<crate::proxy::RpcNamespaceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            data_dir: "./hubbub-data".into(),
            node_name: String::new(),
            shutdown_grace: Duration::from_secs(10),
            auth: AuthConfig::default(),
            client: ClientConfig::default(),
            http: HttpConfig::default(),
            api: Default::default(),
            grpc_api: GrpcApiConfig::default(),
            chat: hubbub_chat::ChatConfig::default(),
            engine: EngineConfig::default(),
            store: StoreConfig::default(),
            namespaces: vec![NamespaceConfig::default()],
            consumers: Vec::new(),
            proxies: Vec::new(),
            connect_proxy_name: String::new(),
            refresh_proxy_name: String::new(),
            rpc_proxy_name: String::new(),
            rpc_namespaces: Vec::new(),
        }
    }
}

/// How clients are authenticated. Centrifugo's `client.token.*` keys live here:
/// `hmac_secret_key` is `token_secret`, the others keep their names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret of HS256/384/512 connection and subscription tokens (and of the chat's
    /// access tokens). Empty: one is generated into `data_dir` at the first start.
    pub token_secret: String,
    /// Key of the server HTTP API. Empty: one is generated at start.
    pub api_key: String,
    /// Accept connections without a token (as user "").
    pub allow_anonymous: bool,
    /// Public key of RS256/384/512 and PS* tokens: PEM text, or the path of a PEM file.
    pub rsa_public_key: String,
    /// Public key of ES256 (P-256) or ES384 (P-384) tokens: PEM text, or a file's path.
    pub ecdsa_public_key: String,
    /// JWKS URL (http or https): RS*/ES* tokens with a `kid` are checked with that key of
    /// the set, fetched and cached.
    pub jwks_public_endpoint: String,
    /// Keys of the set older than this are fetched again.
    #[serde(with = "serde_human")]
    pub jwks_cache_ttl: Duration,
    /// The least time between two fetches of the set, however many tokens name unknown keys.
    #[serde(with = "serde_human")]
    pub jwks_refetch_interval: Duration,
    /// When set, every token must name this audience (`aud`).
    pub audience: String,
    /// When set, every token must name this issuer (`iss`).
    pub issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_secret: String::new(),
            api_key: String::new(),
            allow_anonymous: false,
            rsa_public_key: String::new(),
            ecdsa_public_key: String::new(),
            jwks_public_endpoint: String::new(),
            jwks_cache_ttl: Duration::from_secs(3600),
            jwks_refetch_interval: Duration::from_secs(10),
            audience: String::new(),
            issuer: String::new(),
        }
    }
}

/// HTTP-level settings shared by the HTTP transports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Browser origins allowed; empty: same origin only; `"*"`: any real origin, answered
    /// `*` without credentials; `"null"` only when listed.
    pub allowed_origins: Vec<String>,
    /// Longest `wait` a long poll may ask for.
    #[serde(with = "serde_human")]
    pub poll_max_wait: Duration,
    /// Largest body accepted by `/emulation` and the streaming transports' connect.
    pub max_request_body: usize,
    /// Long polls one token subject may keep waiting at once (each holds a listener in
    /// the hub); more are answered 429 at once.
    pub poll_max_waiters_per_user: usize,
    /// Longest the body of `/emulation` and of the streaming transports' connect may take
    /// to arrive (the request head has its own 30 s timeout): a client that sends a few
    /// bytes and stalls gets 408 instead of holding its connection forever.
    #[serde(with = "serde_human")]
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            poll_max_wait: Duration::from_secs(30),
            max_request_body: 65536,
            poll_max_waiters_per_user: 16,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// The gRPC server API (Centrifugo's `grpc_api*` keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcApiConfig {
    /// Serve it (off by default, as in Centrifugo).
    pub enabled: bool,
    /// The address to listen on (an IP address).
    pub address: String,
    /// The port; 0 picks a free one (printed at start).
    pub port: u16,
    /// The key clients send as metadata `authorization: apikey KEY`; empty: `auth.api_key`.
    pub key: String,
    /// Largest request accepted, in bytes (like the HTTP API's body limit).
    pub max_request_bytes: usize,
}

impl Default for GrpcApiConfig {
    fn default() -> Self {
        GrpcApiConfig {
            enabled: false,
            address: "127.0.0.1".into(),
            port: 10000,
            key: String::new(),
            max_request_bytes: 2 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// `message` is the parser's one line (its full display is a multi-line snippet).
    #[error("config file {path}, line {line}: {message}")]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("environment variable {var} names no config key{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownEnv { var: String, suggestion: Option<String> },
}

const ENV_PREFIX: &str = "HUBBUB_";

/// `HUBBUB_*` variables that are not config keys: read by CI and the test tooling (`.ci/run`,
/// tests/js, tests/e2e, web/vite.config.ts), never by the server. Every other unknown
/// `HUBBUB_*` variable is a misspelt key and stops the server.
pub const NON_CONFIG_ENV_VARS: &[&str] = &[
    "HUBBUB_REQUIRE_SERVICES",
    "HUBBUB_BIN",
    "HUBBUB_JS_VERBOSE",
    "HUBBUB_URL",
    "HUBBUB_TEST_REDIS_URL",
    "HUBBUB_TEST_NATS_URL",
    "HUBBUB_TEST_POSTGRES_URL",
];

/// Keys renamed to Centrifugo's names, whose old `HUBBUB_*` variables still work (the file
/// reads the old names through serde aliases).
const RENAMED_ENV: &[(&str, &str)] = &[("client_max_connections_per_user", "client_user_connection_limit")];

impl Config {
    /// Reads the file (if any), applies `HUBBUB_*` overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    line: e.span().map_or(0, |span| text[..span.start].matches('\n').count() + 1),
                    message: e.message().trim().to_owned(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            ConfigError::Key { key, message }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, message: &str| Err(ConfigError::Key { key: key.into(), message: message.into() });
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen", "expected an address like \"127.0.0.1:8000\"");
        }
        if self.client.ping_interval < Duration::from_secs(1) {
            return bad("client.ping_interval", "must be at least 1s");
        }
        if self.client.pong_timeout.is_zero() || self.client.pong_timeout >= self.client.ping_interval {
            return bad("client.pong_timeout", "must be above 0 and below client.ping_interval");
        }
        if self.client.max_message_size < 128 {
            return bad("client.max_message_size", "must be at least 128 bytes");
        }
        if self.client.queue_max_bytes < 1024 {
            return bad("client.queue_max_bytes", "must be at least 1024 bytes");
        }
        if self.client.write_timeout < Duration::from_millis(100) {
            return bad("client.write_timeout", "must be at least 100ms");
        }
        if self.client.max_answer_bytes > self.client.queue_max_bytes {
            return bad(
                "client.max_answer_bytes",
                "must be at most client.queue_max_bytes (an answer must fit the queue); 0 for half of it",
            );
        }
        if self.client.max_history_limit == 0 {
            return bad("client.max_history_limit", "must be above 0");
        }
        if self.client.commands_per_second == 0 {
            return bad("client.commands_per_second", "must be above 0");
        }
        if self.engine.history_max_bytes < 1 << 20 {
            return bad("engine.history_max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.engine.history_max_streams == 0 {
            return bad("engine.history_max_streams", "must be above 0");
        }
        if self.engine.history_meta_ttl.is_zero() {
            return bad("engine.history_meta_ttl", "must be above 0");
        }
        if self.engine.flush_interval < Duration::from_millis(1)
            || self.engine.flush_interval > Duration::from_secs(60)
        {
            return bad("engine.flush_interval", "must be between 1ms and 1m");
        }
        if self.engine.kind != EngineKind::Memory {
            // Every node must accept the tokens and the API key of every other.
            if self.auth.token_secret.is_empty() {
                return bad(
                    "auth.token_secret",
                    "must be set when engine.type is not \"memory\": every node of a cluster shares it",
                );
            }
            if self.auth.api_key.is_empty() {
                return bad(
                    "auth.api_key",
                    "must be set when engine.type is not \"memory\": every node of a cluster shares it",
                );
            }
            if self.store.kind == StoreKind::Sqlite {
                return bad("store.type", "must be \"postgres\" when engine.type is not \"memory\": the nodes of a cluster share one database");
            }
        }
        if self.store.kind == StoreKind::Postgres
            && !["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| self.store.postgres_url.starts_with(scheme))
        {
            return bad("store.postgres_url", "must be a postgres:// (or postgresql://) URL");
        }
        if self.engine.prefix.is_empty()
            || !self.engine.prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad("engine.prefix", "must be letters, digits, '_' or '-' (it starts keys and subjects)");
        }
        if self.engine.kind == EngineKind::Nats
            && (self.engine.nats_url.is_empty() || self.engine.nats_url.chars().any(char::is_whitespace))
        {
            return bad("engine.nats_url", "expected a NATS server address like \"nats://127.0.0.1:4222\"");
        }
        if self.engine.heartbeat_interval < Duration::from_millis(100) {
            return bad("engine.heartbeat_interval", "must be at least 100ms");
        }
        if !self.engine.position_check_interval.is_zero()
            && self.engine.position_check_interval < Duration::from_secs(1)
        {
            return bad("engine.position_check_interval", "must be at least 1s, or \"0s\" for never");
        }
        if self.engine.presence_ttl < self.engine.heartbeat_interval * 2 {
            return bad("engine.presence_ttl", "must be at least twice engine.heartbeat_interval");
        }
        if let Err((key, message)) = self.chat.validate() {
            return Err(ConfigError::Key { key, message });
        }
        if self.http.body_timeout < Duration::from_millis(100) {
            return bad("http.body_timeout", "must be at least 100ms");
        }
        if self.http.poll_max_waiters_per_user == 0 {
            return bad("http.poll_max_waiters_per_user", "must be at least 1");
        }
        if let Some(message) =
            self.http.allowed_origins.iter().find_map(|o| crate::origin::invalid_allowed_origin(o))
        {
            return bad("http.allowed_origins", &message);
        }
        if self.api.batch_max_commands == 0 {
            return bad("api.batch_max_commands", "must be at least 1");
        }
        if self.api.idempotency_ttl.is_zero() {
            return bad("api.idempotency_ttl", "must be above 0");
        }
        if self.api.idempotency_max_keys == 0 {
            return bad("api.idempotency_max_keys", "must be at least 1");
        }
        if self.api.idempotency_max_bytes < 1024 {
            return bad("api.idempotency_max_bytes", "must be at least 1024 bytes");
        }
        if self.grpc_api.address.parse::<std::net::IpAddr>().is_err() {
            return bad("grpc_api.address", "expected an IP address like \"127.0.0.1\"");
        }
        if self.grpc_api.max_request_bytes < 1024 {
            return bad("grpc_api.max_request_bytes", "must be at least 1024 bytes");
        }
        if let Err(message) = hubbub_core::channel::Namespaces::new(&self.namespaces) {
            return bad("namespaces", &message);
        }
        if let Err((key, message)) = crate::consumers::config::validate(&self.consumers) {
            return Err(ConfigError::Key { key, message });
        }
        if self.auth.jwks_refetch_interval < Duration::from_secs(1) {
            return bad(
                "auth.jwks_refetch_interval",
                "must be at least 1s (it bounds the fetches a flood of made-up key ids causes)",
            );
        }
        if self.auth.jwks_cache_ttl < self.auth.jwks_refetch_interval {
            return bad("auth.jwks_cache_ttl", "must be at least auth.jwks_refetch_interval");
        }
        crate::tokens::validate(&self.auth)?;
        let personal = &self.client.subscribe_to_user_personal_channel;
        if personal.enabled
            && !personal.personal_channel_namespace.is_empty()
            && !self.namespaces.iter().any(|ns| ns.name == personal.personal_channel_namespace)
        {
            return bad(
                "client.subscribe_to_user_personal_channel.personal_channel_namespace",
                "names no namespace of `namespaces`",
            );
        }
        if self.client.connection_rate_limit_per_ip > 0 && self.client.connection_rate_limit_max_ips == 0 {
            return bad("client.connection_rate_limit_max_ips", "must be above 0");
        }
        if let Err((key, message)) = crate::proxy::validate(self) {
            return Err(ConfigError::Key { key, message });
        }
        Ok(())
    }
}

/// Overrides keys from `HUBBUB_*` variables. The variable's name, after the prefix and in
/// lower case, is a top-level key or `<section>_<key>`; its value is read as a TOML value
/// (so numbers, booleans and `[{...}]` arrays work) and otherwise as a string. A variable
/// that names no key is an error suggesting the closest one, unless it is one of
/// [`NON_CONFIG_ENV_VARS`].
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("default config serializes");
    for (var, raw) in env {
        let Some(name) = var.strip_prefix(ENV_PREFIX) else { continue };
        if NON_CONFIG_ENV_VARS.contains(&var.as_str()) {
            continue;
        }
        let mut name = name.to_ascii_lowercase();
        if let Some((_, new)) = RENAMED_ENV.iter().find(|(old, _)| *old == name) {
            name = (*new).to_owned();
        }
        let value = parse_env_value(&raw);
        if defaults.contains_key(&name) {
            table.insert(name, value);
            continue;
        }
        let section = defaults.iter().find_map(|(section, v)| {
            let key = name.strip_prefix(section.as_str())?.strip_prefix('_')?;
            v.as_table()?.contains_key(key).then(|| (section.clone(), key.to_owned()))
        });
        if let Some((section, key)) = section {
            let entry =
                table.entry(section.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            let Some(t) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{section}` is not a table in the config file"),
                });
            };
            t.insert(key, value);
        } else {
            let suggestion = closest_env_var(&defaults, &name);
            return Err(ConfigError::UnknownEnv { var, suggestion });
        }
    }
    Ok(())
}

/// The `HUBBUB_*` variable of a config key nearest to `name` (lower case, prefix stripped),
/// if one is near enough to be a likely misspelling.
fn closest_env_var(defaults: &toml::Table, name: &str) -> Option<String> {
    let keys = defaults.iter().flat_map(|(key, value)| {
        let nested =
            value.as_table().into_iter().flat_map(move |t| t.keys().map(move |k| format!("{key}_{k}")));
        std::iter::once(key.clone()).chain(nested)
    });
    keys.map(|key| (strsim::levenshtein(name, &key), key))
        .filter(|(distance, key)| *distance <= (key.len() / 3).max(2))
        .min()
        .map(|(_, key)| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(Some(f.path()), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn reads_file_and_env_overrides() {
        let c = load(
            "listen = \"127.0.0.1:9\"\n[client]\nping_interval = \"10s\"\n[[namespaces]]\nname = \"chat\"\nhistory_ttl = \"1h\"\n",
            &[("HUBBUB_AUTH_TOKEN_SECRET", "s"), ("HUBBUB_CLIENT_MAX_CHANNELS", "7"), ("HUBBUB_REQUIRE_SERVICES", "1")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.client.ping_interval, Duration::from_secs(10));
        assert_eq!(c.client.max_channels, 7);
        assert_eq!(c.auth.token_secret, "s");
        assert_eq!(c.namespaces[0].history_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn proxies_from_env() {
        let c = load(
            "",
            &[
                (
                    "HUBBUB_PROXIES",
                    r#"[{ name = "app", endpoint = "http://127.0.0.1:3000/c", timeout = "2s" }]"#,
                ),
                ("HUBBUB_CONNECT_PROXY_NAME", "app"),
                ("HUBBUB_RPC_NAMESPACES", r#"[{ name = "billing", rpc_proxy_name = "app" }]"#),
            ],
        )
        .unwrap();
        assert_eq!(c.proxies[0].timeout, Duration::from_secs(2));
        assert_eq!(c.connect_proxy_name, "app");
        assert_eq!(c.rpc_namespaces[0].name, "billing");
        let e = load("", &[("HUBBUB_CONNECT_PROXY_NAME", "ghost")]).unwrap_err().to_string();
        assert!(e.contains("connect_proxy_name") && e.contains("ghost"), "{e}");
        let e = load("[[proxies]]\nname = \"a\"\nendpoint = \"grpc://x:1\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("proxies[0].endpoint"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[client]\nping_intervall = \"10s\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("client") && e.contains("ping_intervall"), "{e}");
        let e = load("[client]\nmax_channels = \"many\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("client.max_channels"), "{e}");
        let e =
            load("[[namespaces]]\nname = \"x\"\nhistory_ttl = \"forever\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("namespaces[0].history_ttl"), "{e}");
        let e = load("[engine]\nhistory_max_bytes = 1000\n", &[]).unwrap_err().to_string();
        assert!(e.contains("engine.history_max_bytes"), "{e}");
        let cluster = "[auth]\ntoken_secret = \"s\"\napi_key = \"k\"\n[store]\ntype = \"postgres\"\n";
        let e = load(&format!("{cluster}[engine]\ntype = \"nats\"\nnats_url = \"\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.nats_url"), "{e}");
        let e = load("", &[("HUBBUB_ENGINE_HISTORY_MAX_STREAMS", "0")]).unwrap_err().to_string();
        assert!(e.contains("engine.history_max_streams"), "{e}");
        let e = load("listen = \"nowhere\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = load("", &[("HUBBUB_CLIENT_MAX_CHANNELS", "lots")]).unwrap_err().to_string();
        assert!(e.contains("client.max_channels"), "{e}");
        let e = load("", &[("HUBBUB_CLIENT_PING_INTERVALL", "1s")]).unwrap_err().to_string();
        assert!(
            e.contains("HUBBUB_CLIENT_PING_INTERVALL") && e.contains("HUBBUB_CLIENT_PING_INTERVAL?"),
            "{e}"
        );
        let pg =
            "[[consumers]]\nname = \"o\"\ntype = \"postgresql\"\nenabled = true\n[consumers.postgresql]\n";
        let e = load(&format!("{pg}dsn = \"mysql://x\"\noutbox_table_name = \"outbox\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("consumers[0].postgresql.dsn"), "{e}");
        let e = load(&format!("{pg}dsn = \"postgres://h/d\"\noutbox_table_name = \"x; drop\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("consumers[0].postgresql.outbox_table_name"), "{e}");
        let e = load(
            &format!("{pg}dsn = \"postgres://h/d\"\noutbox_table_name = \"o\"\nnum_partitions = 0\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("consumers[0].postgresql.num_partitions"), "{e}");
        let e = load(&format!("{pg}dsn = \"postgres://h/d\"\noutbox_table_name = \"o\"\npartition_poll_intervall = \"1s\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("consumers[0].postgresql") && e.contains("partition_poll_intervall"), "{e}");
        let e = load("[[consumers]]\nname = \"o\"\ntype = \"kafka\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("consumers[0].type"), "{e}");
        let js = "[[consumers]]\nname = \"j\"\ntype = \"nats_jetstream\"\n[consumers.nats_jetstream]\n";
        let e = load(&format!("{js}stream_name = \"S\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("consumers[0].nats_jetstream.durable_consumer_name"), "{e}");
        let c = load(
            &format!("{js}stream_name = \"S\"\ndurable_consumer_name = \"d\"\n"),
            &[("HUBBUB_CONSUMERS", "[{name = \"o\", type = \"postgresql\", postgresql = {dsn = \"postgres://h/d\", outbox_table_name = \"o\"}}]")],
        )
        .unwrap();
        assert_eq!(c.consumers.len(), 1, "the environment replaces the list");
        assert_eq!(c.consumers[0].postgresql.partition_select_limit, 100);
        let e = load("", &[("HUBBUB_NOTHING_LIKE_ANY_KEY_AT_ALL", "1")]).unwrap_err().to_string();
        assert!(e.contains("HUBBUB_NOTHING_LIKE_ANY_KEY_AT_ALL") && !e.contains("did you mean"), "{e}");
    }

    #[test]
    fn renamed_keys_still_work_and_auth_keys_are_checked() {
        let c = load("[client]\nmax_connections_per_user = 3\n", &[]).unwrap();
        assert_eq!(c.client.user_connection_limit, 3);
        let c = load("", &[("HUBBUB_CLIENT_MAX_CONNECTIONS_PER_USER", "4")]).unwrap();
        assert_eq!(c.client.user_connection_limit, 4);
        let c = load("", &[("HUBBUB_CLIENT_USER_CONNECTION_LIMIT", "5")]).unwrap();
        assert_eq!(c.client.user_connection_limit, 5);
        let e = load(
            "[auth]\nrsa_public_key = \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("auth.rsa_public_key"), "{e}");
        let e = load("[client.subscribe_to_user_personal_channel]\nenabled = true\npersonal_channel_namespace = \"nope\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("personal_channel_namespace"), "{e}");
    }
}
