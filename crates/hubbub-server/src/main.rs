//! `hubbub`: the real-time server and its command-line tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hubbub_core::auth::Tokens;
use hubbub_core::duration::parse_duration;
use hubbub_server::config::Config;
use std::path::PathBuf;

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

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file; every key can also be set with HUBBUB_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a connection token (or, with --channel, a subscription token) signed with the
    /// configured secret. The token is the last line of output.
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// User id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 30s, 10m, 1h, 7d. Default: 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Make a subscription token for this channel instead.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Run the load generator (`hubbub-bench`, built beside this binary with
    /// `cargo build --release -p hubbub-bench`); arguments are passed on.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            limit_allocator_retention();
            hubbub_server::init_logging();
            let config = Config::load(config.as_deref(), std::env::vars())?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(hubbub_server::serve(config))
        }
        Command::Bench { args } => {
            let exe = std::env::current_exe()?;
            let bench = exe.with_file_name("hubbub-bench");
            let status = std::process::Command::new(&bench).args(&args).status().with_context(|| {
                format!("cannot run {} (build it: cargo build --release -p hubbub-bench)", bench.display())
            })?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Token { config, user, ttl, channel } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            if config.auth.token_secret.is_empty() {
                anyhow::bail!(
                    "config key `auth.token_secret` is empty: set it so that the server accepts the token"
                );
            }
            let ttl = parse_duration(&ttl).map_err(anyhow::Error::msg).context("--ttl")?;
            let tokens = Tokens::new(&config.auth.token_secret);
            let token = match channel {
                Some(channel) => tokens.mint_subscription(&user, &channel, Some(ttl)),
                None => tokens.mint_connect(&user, Some(ttl), Vec::new()),
            };
            println!("{token}");
            Ok(())
        }
    }
}
