//! Starting and stopping the servers under test, each as its own process: Hubbub with a
//! temporary config, the raw WebSocket baseline, and the Socket.IO peer on Node.

use crate::sys;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN_SECRET: &str = "hubbub-bench-token-secret-0123456789abcdef";
pub const API_KEY: &str = "hubbub-bench-api-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hubbub,
    Raw,
    SocketIo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hubbub => "hubbub",
            Kind::Raw => "raw-ws",
            Kind::SocketIo => "socket.io",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "hubbub" => Some(Kind::Hubbub),
            "raw" | "raw-ws" => Some(Kind::Raw),
            "socketio" | "socket.io" => Some(Kind::SocketIo),
            _ => None,
        }
    }
}

/// Where the servers' programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    pub hubbub: PathBuf,
    pub raw: PathBuf,
    pub socketio_dir: PathBuf,
    pub node: String,
    /// Temporary files (configs, logs, data) go here.
    pub work: PathBuf,
}

pub struct ServerProc {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

/// Hubbub's config for the bench: the default namespace is plain fan-out (no presence, no
/// history, like the peers); namespace `r` keeps history for recovery (connect-storm). The
/// chat's `room` namespace is the server's own (durable, in `data_dir`); access tokens live
/// an hour instead of 15 minutes so that a long run never meets an expiry, and a sender's
/// message budget and the sign-ups from one address are far above what the bench makes.
fn hubbub_config(data_dir: &Path) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{data}"
shutdown_grace = "3s"

[auth]
token_secret = "{TOKEN_SECRET}"
api_key = "{API_KEY}"

[client]
ping_interval = "25s"
pong_timeout = "8s"
queue_max_bytes = 1048576
max_message_size = 65536
commands_per_second = 1000
max_channels = 128

[chat]
access_token_ttl = "1h"
sends_per_second = 100000.0
send_burst = 10000
signups_per_address = 1000000
max_rooms_per_user = 1000000
max_members_per_room = 1000000

[[namespaces]]
name = ""
presence = false
join_leave = false
history_size = 0
force_recovery = false

[[namespaces]]
name = "r"
presence = false
join_leave = false
history_size = 10000
history_ttl = "10m"
force_recovery = true
"#,
        data = data_dir.display()
    )
}

/// Hubbub's `data_dir` (kept across restarts within one run of a scenario).
pub fn hubbub_data_dir(programs: &Programs) -> PathBuf {
    programs.work.join("hubbub-data")
}

impl ServerProc {
    /// Starts a server; `port` 0 picks a free one. Waits for its `listening on` line.
    pub fn start(kind: Kind, programs: &Programs, port: u16) -> Result<ServerProc, String> {
        Self::start_with(kind, programs, port, &[])
    }

    /// [`ServerProc::start`] with extra environment variables (Hubbub: config overrides).
    pub fn start_with(
        kind: Kind,
        programs: &Programs,
        port: u16,
        env: &[(String, String)],
    ) -> Result<ServerProc, String> {
        std::fs::create_dir_all(&programs.work).map_err(|e| format!("{}: {e}", programs.work.display()))?;
        let log = programs.work.join(format!("{}.log", kind.name()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match kind {
            Kind::Hubbub => {
                let data = hubbub_data_dir(programs);
                std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
                let config = programs.work.join("hubbub.toml");
                std::fs::write(&config, hubbub_config(&data)).map_err(|e| e.to_string())?;
                let mut cmd = Command::new(&programs.hubbub);
                cmd.arg("serve").arg("--config").arg(&config);
                cmd.env("HUBBUB_LISTEN", format!("127.0.0.1:{port}"));
                cmd.env("RUST_LOG", "warn");
                cmd
            }
            Kind::Raw => {
                let mut cmd = Command::new(&programs.raw);
                cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
                cmd
            }
            Kind::SocketIo => {
                let mut cmd = Command::new(&programs.node);
                cmd.arg("server.js").current_dir(&programs.socketio_dir).env("PORT", port.to_string());
                cmd
            }
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the first line with the address, then keeps draining stdout.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some((_, addr)) = line.split_once("listening on http://") {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(format!("{} did not print its address; log tail:\n{tail}", kind.name()));
            }
        };
        let addr: SocketAddr =
            addr.parse().map_err(|e| format!("{}: bad address {addr}: {e}", kind.name()))?;
        Ok(ServerProc { addr, pid: child.id(), child })
    }

    pub fn rss_kib(&self) -> u64 {
        sys::rss_kib(self.pid).unwrap_or(0)
    }

    pub fn cpu_seconds(&self) -> f64 {
        sys::cpu_seconds(self.pid).unwrap_or(0.0)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns how long it took.
    pub fn stop(mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        sys::signal(self.pid, libc::SIGTERM);
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        started.elapsed()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The servers one measurement runs against: one process, or the nodes of a cluster. CPU
/// time and memory are the sum over all of them; the first is the one the publisher and the
/// set-up requests talk to.
pub struct Nodes {
    pub procs: Vec<ServerProc>,
}

impl Nodes {
    pub fn one(server: ServerProc) -> Nodes {
        Nodes { procs: vec![server] }
    }

    pub fn addr(&self) -> SocketAddr {
        self.procs[0].addr
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(ServerProc::rss_kib).sum()
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(ServerProc::cpu_seconds).sum()
    }

    /// Stops every node (each within `grace`); returns the longest it took.
    pub fn stop(self, grace: Duration) -> Duration {
        self.procs.into_iter().map(|p| p.stop(grace)).max().unwrap_or_default()
    }
}
