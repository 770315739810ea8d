//! `hubbub`: the real-time server and its command-line tools.

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use hubbub_core::auth::keys::sign_key_from_pem;
use hubbub_core::auth::{sign_with_key, unix_now};
use hubbub_core::duration::parse_duration;
use hubbub_server::config::Config;
use hubbub_server::data_dir::DataDirError;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hubbub",
    version,
    about = "Real-time messaging server (Centrifugo protocol v2) with a chat application"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `token` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file; every key can also be set with HUBBUB_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a token, signed with the configured HMAC secret (or the one the server generated
    /// in its data_dir), or with a private key (--key: RS256, or ES256/ES384 by the curve).
    /// A connection token, or with --channel a subscription token. The token is the last
    /// line of output.
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// User id (the token's `sub`); empty for an anonymous connection token.
        #[arg(long, short = 'u', default_value = "")]
        user: String,
        /// Lifetime, e.g. 30s, 10m, 1h, 7d; 0 for a token that never expires. Default: 1h.
        #[arg(long, short = 't', default_value = "1h")]
        ttl: String,
        /// Make a subscription token for this channel instead.
        #[arg(long, conflicts_with_all = ["channels", "subs", "meta"])]
        channel: Option<String>,
        /// Channels the connection is subscribed to by the server (the `channels` claim,
        /// what the unidirectional transports such as uni_sse deliver), comma separated.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// The `info` claim: JSON, shown to others in presence and publications.
        #[arg(long)]
        info: Option<String>,
        /// The `subs` claim: JSON object of channel → options ({"info", "data", ...}).
        #[arg(long)]
        subs: Option<String>,
        /// The `meta` claim: JSON kept by the server, never sent to clients.
        #[arg(long)]
        meta: Option<String>,
        /// The `expire_at` claim: when the connection (or subscription) expires, Unix
        /// seconds, instead of the token's `exp`; 0: never.
        #[arg(long)]
        expire_at: Option<u64>,
        /// The `aud` claim (default: the configured auth.audience, if any).
        #[arg(long)]
        aud: Option<String>,
        /// The `iss` claim (default: the configured auth.issuer, if any).
        #[arg(long)]
        iss: Option<String>,
        /// Sign with this PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) instead of the
        /// HMAC secret.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The `kid` header, naming the key in a JWKS.
        #[arg(long, requires = "key")]
        kid: Option<String>,
    },
    /// Verify a token with the configured keys (fetching the JWKS if configured): print its
    /// claims and exit 0, or the reason it is refused and exit 1.
    Checktoken {
        #[arg(long)]
        config: Option<PathBuf>,
        token: String,
    },
    /// Write a commented starter configuration with fresh random secrets (never over an
    /// existing file).
    Genconfig {
        /// Where to write it.
        #[arg(long, short = 'o', default_value = "hubbub.toml")]
        output: PathBuf,
    },
    /// Check a configuration file (and the HUBBUB_* variables): exit 0 if the server would
    /// start with it, else print the error naming the key and exit 1.
    Checkconfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the load generator (`hubbub-bench`, built beside this binary with
    /// `cargo build --release -p hubbub-bench`); arguments are passed on.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `hubbub bench --help` prints when `hubbub-bench` is not built (when it is, its own
/// help is printed).
const BENCH_HELP: &str = "\
Run the load generator, hubbub-bench, with these arguments.

Usage: hubbub bench <SCENARIO> [OPTIONS]
       hubbub bench <SCENARIO> --help

Scenarios: idle, fanout, many, connect-storm, chat (each against hubbub, raw-ws and Socket.IO;
bench/run.sh runs the standard set and writes tables to bench/results/).

hubbub-bench is a separate binary, looked for beside this one; build it with
  cargo build --release -p hubbub-bench";

/// glibc raises its mmap threshold after a large block is freed, so the next ones (argon2id
/// takes ~19 MiB per password hash) come from per-thread arenas that keep them: a burst of
/// sign-ups left ~800 MiB resident. A fixed threshold keeps large blocks mapped and returned.
fn limit_allocator_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called once at start, before threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Errors end the process with one line on stderr and exit status 1, whatever
/// `RUST_BACKTRACE` says (returning `Err` from `main` would print a backtrace with it).
fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hubbub: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, each on one line.
fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> =
        e.chain().map(|cause| cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    parts.join(": ")
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            limit_allocator_retention();
            let config = Config::load(config.as_deref(), std::env::vars())?;
            hubbub_server::init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(hubbub_server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { args } => bench(&args),
        Command::Token {
            config,
            user,
            ttl,
            channel,
            channels,
            info,
            subs,
            meta,
            expire_at,
            aud,
            iss,
            key,
            kid,
        } => {
            let ttl = parse_duration(&ttl).map_err(anyhow::Error::msg).context("--ttl")?;
            let json = |flag: &str, value: Option<String>| -> anyhow::Result<Option<serde_json::Value>> {
                value
                    .map(|v| serde_json::from_str(&v).with_context(|| format!("{flag}: not JSON")))
                    .transpose()
            };
            let now = unix_now();
            let mut claims = serde_json::json!({ "sub": user, "iat": now });
            if !ttl.is_zero() {
                claims["exp"] = (now + ttl.as_secs().max(1)).into();
            }
            match &channel {
                Some(channel) => claims["channel"] = channel.clone().into(),
                None if !channels.is_empty() => claims["channels"] = channels.into(),
                None => {}
            }
            for (name, value) in [
                ("info", json("--info", info)?),
                ("subs", json("--subs", subs)?),
                ("meta", json("--meta", meta)?),
                ("aud", aud.map(Into::into)),
                ("iss", iss.map(Into::into)),
                ("expire_at", expire_at.map(Into::into)),
            ] {
                if let Some(value) = value {
                    claims[name] = value;
                }
            }
            let token = match key {
                Some(path) => {
                    let pem = std::fs::read_to_string(&path)
                        .with_context(|| format!("--key: cannot read {}", path.display()))?;
                    let key = sign_key_from_pem(&pem).with_context(|| format!("--key {}", path.display()))?;
                    sign_with_key(&key, kid.as_deref(), &claims).map_err(anyhow::Error::msg)?
                }
                None => {
                    let config = config_with_secret(config.as_deref())?;
                    let tokens = hubbub_server::tokens::build(&config.auth)?;
                    tokens.sign(&claims)
                }
            };
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Checktoken { config, token } => {
            let config = config_with_secret(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(checktoken(&config, &token))
        }
        Command::Genconfig { output } => {
            genconfig(&output)?;
            println!("wrote {} (mode 0600: it holds secrets)", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkconfig { config: path } => {
            let config = Config::load(Some(&path), std::env::vars())?;
            hubbub_server::tokens::build(&config.auth)?;
            println!("{}: valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration, with the HMAC secret the server generated in its data_dir when the
/// configuration sets none.
fn config_with_secret(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let mut config = Config::load(path, std::env::vars())?;
    if config.auth.token_secret.is_empty() {
        let kept = hubbub_server::data_dir::read_secrets(&config.data_dir)?;
        config.auth.token_secret = kept.map(|s| s.token_secret).ok_or(DataDirError::NoSecret {
            key: "auth.token_secret",
            path: config.data_dir.join(hubbub_server::data_dir::SECRETS_FILE),
        })?;
    }
    Ok(config)
}

/// `hubbub checktoken`: the verdict of the server's own checks on one token.
async fn checktoken(config: &Config, token: &str) -> anyhow::Result<ExitCode> {
    let tokens = hubbub_server::tokens::build(&config.auth)?;
    if let Some(jwks) = tokens.jwks() {
        if let Err(e) = jwks.refresh().await {
            eprintln!("JWKS endpoint {}: {e}", config.auth.jwks_public_endpoint);
        }
    }
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let is_subscription = claims
        .as_ref()
        .and_then(|c| c.get("channel"))
        .and_then(|c| c.as_str())
        .is_some_and(|c| !c.is_empty());
    let verdict = if is_subscription {
        tokens
            .verify_subscription(token)
            .await
            .map(|c| format!("subscription token of user {:?} for channel {:?}", c.sub, c.channel))
    } else {
        tokens.verify_connect(token).await.map(|g| format!("connection token of user {:?}", g.user))
    };
    if let Some(claims) = &claims {
        println!("{}", serde_json::to_string_pretty(claims)?);
    }
    match verdict {
        Ok(what) => {
            println!("valid: {what}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The starter configuration `hubbub genconfig` writes.
const STARTER_CONFIG: &str = r#"# hubbub configuration (written by `hubbub genconfig`). Every key can also be set with an
# environment variable HUBBUB_<SECTION>_<KEY>, e.g. HUBBUB_CLIENT_INSECURE=true.
# `hubbub checkconfig --config THIS_FILE` checks it; docs/PROTOCOL.md lists every key.

listen = "127.0.0.1:8000"
data_dir = "./hubbub-data"

[auth]
# HMAC secret of HS256 connection and subscription tokens (Centrifugo's hmac_secret_key).
token_secret = "{TOKEN_SECRET}"
# Key of the server HTTP API (header `X-API-Key`).
api_key = "{API_KEY}"
# Connect without a token, as the anonymous user "".
allow_anonymous = false
# RS256/ES256 tokens: a PEM public key (the text, or a file's path), or a JWKS endpoint.
# rsa_public_key = "/etc/hubbub/rsa.pub.pem"
# ecdsa_public_key = "/etc/hubbub/ec.pub.pem"
# jwks_public_endpoint = "https://idp.example.com/.well-known/jwks.json"
# When set, tokens must carry this `aud` / `iss`.
# audience = "hubbub"
# issuer = "https://idp.example.com"

[client]
# Browsers' origins are checked by http.allowed_origins.
# Connections per user on this node; per node; requests per second per node and per address.
user_connection_limit = 100
connection_limit = 0
connection_rate_limit = 0
connection_rate_limit_per_ip = 0
# Everything allowed, no token needed: demos and test suites only (logged at every start).
insecure = false

[client.subscribe_to_user_personal_channel]
# Subscribe every user to `#<user>` (or `<namespace>:#<user>`) at connect.
enabled = false
personal_channel_namespace = ""

[http]
# allowed_origins = ["https://app.example.com"]

# The default namespace; add more with [[namespaces]] name = "..."
[[namespaces]]
name = ""
presence = true
join_leave = true
history_size = 100
history_ttl = "10m"
"#;

fn genconfig(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let text = STARTER_CONFIG
        .replace("{TOKEN_SECRET}", &hubbub_server::data_dir::generate())
        .replace("{API_KEY}", &hubbub_server::data_dir::generate());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} exists: not overwritten (remove it, or give --output)", path.display())
        }
        _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Runs `hubbub-bench` from beside this binary with `args`. `--help` works without it.
fn bench(args: &[String]) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let bench = exe.with_file_name("hubbub-bench");
    let wants_help = args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h" || a == "help");
    if !bench.is_file() {
        if wants_help {
            println!("{BENCH_HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!(
            "{} is not built: cargo build --release -p hubbub-bench (hubbub bench --help says more)",
            bench.display()
        );
    }
    let status = std::process::Command::new(&bench)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}
