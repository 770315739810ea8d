//! `hubbub`: the real-time server and its command-line tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hubbub_core::auth::Tokens;
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

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file; every key can also be set with HUBBUB_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a connection token (or, with --channel, a subscription token) signed with the
    /// configured secret, or else with the one the server generated in its data_dir. The
    /// token is the last line of output.
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
        #[arg(long, conflicts_with = "channels")]
        channel: Option<String>,
        /// Channels the connection is subscribed to by the server (the `channels` claim,
        /// what the unidirectional transports such as uni_sse deliver), comma separated.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
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
        Command::Token { config, user, ttl, channel, channels } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            let secret = if config.auth.token_secret.is_empty() {
                let kept = hubbub_server::data_dir::read_secrets(&config.data_dir)?;
                kept.map(|s| s.token_secret).ok_or(DataDirError::NoSecret {
                    key: "auth.token_secret",
                    path: config.data_dir.join(hubbub_server::data_dir::SECRETS_FILE),
                })?
            } else {
                config.auth.token_secret
            };
            let ttl = parse_duration(&ttl).map_err(anyhow::Error::msg).context("--ttl")?;
            let tokens = Tokens::new(&secret);
            let token = match channel {
                Some(channel) => tokens.mint_subscription(&user, &channel, Some(ttl)),
                None => tokens.mint_connect(&user, Some(ttl), channels),
            };
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
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
