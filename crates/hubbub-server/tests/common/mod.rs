//! Shared harness for the Hubbub integration tests.
//!
//! * [`Builder`] / [`Server`]: write a temporary TOML config, spawn the real `hubbub serve`
//!   binary, wait for `hubbub listening on http://ADDR`, kill it on drop (stderr log is
//!   printed when the test panicked).
//! * [`Client`]: a WebSocket client speaking the JSON protocol (auto ids, replies matched by
//!   id, pushes collected on the side, `{}` pings answered unless disabled, close frames
//!   recorded, newline-batched frames split).
//! * [`Api`]: the server HTTP API (`POST /api/<method>` with `X-API-Key`).
//! * JWT helpers (HS256 via `jsonwebtoken`) and the `hubbub token` CLI.
//! * [`cluster::Cluster`]: N real nodes on Redis or NATS and one PostgreSQL database.
//!
//! Every wait in here has a timeout; nothing can hang forever.
#![allow(dead_code)]

pub mod cluster;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "hubbub-test-secret-0123456789";
pub const API_KEY: &str = "hubbub-test-api-key";
pub const BIN: &str = env!("CARGO_BIN_EXE_hubbub");

/// Default time to wait for a reply / an expected event.
pub const T: Duration = Duration::from_secs(5);
/// Time to wait to be reasonably sure something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(400);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One `[[namespaces]]` entry; values are raw TOML.
#[derive(Clone, Debug)]
pub struct Ns {
    pub name: String,
    pub kv: Vec<(String, String)>,
}

impl Ns {
    /// A namespace with every key written explicitly, using the documented defaults.
    pub fn new(name: &str) -> Ns {
        let kv = [
            ("presence", "true"),
            ("join_leave", "true"),
            ("force_push_join_leave", "false"),
            ("history_size", "100"),
            ("history_ttl", "\"10m\""),
            ("force_recovery", "true"),
            ("force_positioning", "false"),
            ("allow_publish_for_client", "true"),
            ("allow_subscribe_for_client", "true"),
            ("allow_presence_for_subscriber", "true"),
            ("allow_history_for_subscriber", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Ns { name: name.to_string(), kv }
    }

    /// Set a key to a raw TOML value (`"3"`, `"false"`, `"\"5s\""`).
    pub fn set(mut self, key: &str, raw: &str) -> Ns {
        if let Some(e) = self.kv.iter_mut().find(|(k, _)| k == key) {
            e.1 = raw.to_string();
        } else {
            self.kv.push((key.to_string(), raw.to_string()));
        }
        self
    }

    fn render(&self) -> String {
        let mut s = String::from("[[namespaces]]\n");
        s.push_str(&format!("name = {}\n", toml_str(&self.name)));
        for (k, v) in &self.kv {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap() // a JSON string is a valid TOML basic string here
}

/// The namespaces every test server has (unless replaced with [`Builder::ns`]).
///
/// * `""`       default namespace, documented defaults
/// * `chat`     same as default
/// * `nopub`    allow_publish_for_client = false
/// * `nosub`    allow_subscribe_for_client = false
/// * `nopres`   presence = false
/// * `nohist`   history_size = 0 (no history), force_recovery = false
/// * `small`    history_size = 3
/// * `fjl`      force_push_join_leave = true
/// * `nojl`     join_leave = false
/// * `noperm`   allow_presence_for_subscriber = false, allow_history_for_subscriber = false
/// * `pos`      force_positioning = true
/// * `big`      history_size = 1000
pub fn default_namespaces() -> Vec<Ns> {
    vec![
        Ns::new(""),
        Ns::new("chat"),
        Ns::new("nopub").set("allow_publish_for_client", "false"),
        Ns::new("nosub").set("allow_subscribe_for_client", "false"),
        Ns::new("nopres").set("presence", "false"),
        Ns::new("nohist").set("history_size", "0").set("force_recovery", "false"),
        Ns::new("small").set("history_size", "3"),
        Ns::new("fjl").set("force_push_join_leave", "true"),
        Ns::new("nojl").set("join_leave", "false"),
        Ns::new("noperm")
            .set("allow_presence_for_subscriber", "false")
            .set("allow_history_for_subscriber", "false"),
        Ns::new("pos").set("force_positioning", "true"),
        Ns::new("big").set("history_size", "1000"),
    ]
}

#[derive(Clone, Debug)]
pub struct Builder {
    /// Pass `--config FILE` (false: run `hubbub serve` with env only).
    pub use_config_file: bool,
    pub listen: String,
    pub anonymous: bool,
    pub token_secret: String,
    pub api_key: String,
    pub shutdown_grace: String,
    /// `[client]` keys, raw TOML values.
    pub client: Vec<(String, String)>,
    /// `[chat]` keys, raw TOML values.
    pub chat: Vec<(String, String)>,
    pub namespaces: Vec<Ns>,
    /// Extra raw TOML appended to the top level (before any table).
    pub extra_top: String,
    /// Extra raw TOML appended at the end of `[client]`.
    pub extra_client: String,
    /// Extra raw TOML appended at the end of `[auth]`.
    pub extra_auth: String,
    pub env: Vec<(String, String)>,
}

impl Default for Builder {
    fn default() -> Self {
        let client = [
            ("ping_interval", "\"25s\""),
            ("pong_timeout", "\"8s\""),
            ("queue_max_bytes", "1048576"),
            ("max_message_size", "65536"),
            // Higher than the documented default so that ordinary tests never hit 111.
            ("commands_per_second", "10000"),
            ("max_channels", "128"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Builder {
            use_config_file: true,
            listen: "127.0.0.1:0".to_string(),
            anonymous: false,
            token_secret: SECRET.to_string(),
            api_key: API_KEY.to_string(),
            shutdown_grace: "\"5s\"".to_string(),
            client,
            // Higher than the documented defaults so that ordinary tests never hit 429/111.
            chat: vec![
                ("sends_per_second".to_string(), "100000.0".to_string()),
                ("send_burst".to_string(), "10000".to_string()),
                ("signups_per_address".to_string(), "10000".to_string()),
            ],
            namespaces: default_namespaces(),
            extra_top: String::new(),
            extra_client: String::new(),
            extra_auth: String::new(),
            env: Vec::new(),
        }
    }
}

impl Builder {
    pub fn anonymous(mut self, yes: bool) -> Self {
        self.anonymous = yes;
        self
    }
    /// Set a `[client]` key to a raw TOML value.
    pub fn client(mut self, key: &str, raw: &str) -> Self {
        if let Some(e) = self.client.iter_mut().find(|(k, _)| k == key) {
            e.1 = raw.to_string();
        } else {
            self.client.push((key.to_string(), raw.to_string()));
        }
        self
    }
    /// Set a `[chat]` key to a raw TOML value.
    pub fn chat(mut self, key: &str, raw: &str) -> Self {
        if let Some(e) = self.chat.iter_mut().find(|(k, _)| k == key) {
            e.1 = raw.to_string();
        } else {
            self.chat.push((key.to_string(), raw.to_string()));
        }
        self
    }
    /// Add a namespace, replacing one with the same name.
    pub fn ns(mut self, ns: Ns) -> Self {
        self.namespaces.retain(|n| n.name != ns.name);
        self.namespaces.push(ns);
        self
    }
    pub fn grace(mut self, raw: &str) -> Self {
        self.shutdown_grace = raw.to_string();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn render(&self, data_dir: &Path) -> String {
        let mut s = String::new();
        s.push_str(&format!("listen = {}\n", toml_str(&self.listen)));
        s.push_str(&format!("data_dir = {}\n", toml_str(&data_dir.to_string_lossy())));
        s.push_str(&format!("shutdown_grace = {}\n", self.shutdown_grace));
        s.push_str(&self.extra_top);
        s.push_str("\n[auth]\n");
        s.push_str(&format!("token_secret = {}\n", toml_str(&self.token_secret)));
        s.push_str(&format!("api_key = {}\n", toml_str(&self.api_key)));
        s.push_str(&format!("allow_anonymous = {}\n", self.anonymous));
        s.push_str(&self.extra_auth);
        s.push_str("\n[client]\n");
        for (k, v) in &self.client {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str(&self.extra_client);
        s.push_str("\n[chat]\n");
        for (k, v) in &self.chat {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push('\n');
        for ns in &self.namespaces {
            s.push_str(&ns.render());
            s.push('\n');
        }
        s
    }

    pub fn start(self) -> Server {
        Server::start(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

pub struct Server {
    pub addr: String,
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    pub stdout_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub builder: Builder,
    exited: Option<ExitStatus>,
    /// The server's own PostgreSQL database, when it keeps the chat there (see
    /// [`chat_on_postgres`]): dropped after the process is stopped.
    _database: Option<hubbub_testservices::TempDatabase>,
}

/// The test binary `chat_postgres` runs the chat's tests (tests/chat_api.rs) with the store on
/// PostgreSQL: there every server not configured otherwise gets a database of its own
/// (`store.type` and `store.postgres_url` through the environment), kept across its restarts.
/// Without a PostgreSQL server it says so loudly and the test runs on SQLite (under
/// `HUBBUB_REQUIRE_SERVICES=1` it fails).
fn chat_on_postgres(builder: &mut Builder) -> Option<hubbub_testservices::TempDatabase> {
    if env!("CARGO_CRATE_NAME") != "chat_postgres"
        || builder.env.iter().any(|(k, _)| k == "HUBBUB_STORE_TYPE")
    {
        return None;
    }
    // `start` is synchronous and may run inside the test's runtime: a thread of its own.
    let database = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(hubbub_testservices::postgres_database())
    })
    .join()
    .expect("creating the test database")?;
    builder.env.push(("HUBBUB_STORE_TYPE".into(), "postgres".into()));
    builder.env.push(("HUBBUB_STORE_POSTGRES_URL".into(), database.url().into()));
    Some(database)
}

/// Write `text` as a config file inside `dir`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("hubbub.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

impl Server {
    /// Start a server with the default test configuration.
    pub fn new() -> Server {
        Builder::default().start()
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    fn start(mut builder: Builder) -> Server {
        let database = chat_on_postgres(&mut builder);
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let config_path = write_config(dir.path(), &builder.render(&data_dir));
        let stderr_path = dir.path().join("stderr.log");
        let (child, addr, lines) = Self::launch(&builder, dir.path(), &config_path, &stderr_path);
        Server {
            addr,
            child,
            dir,
            config_path,
            stderr_path,
            stdout_lines: lines,
            builder,
            exited: None,
            _database: database,
        }
    }

    /// Starts the server again on the same configuration and data dir (a new port: `addr`
    /// changes) once the previous process is gone (after [`Server::wait_exit`] or
    /// [`Server::kill9`]). Its stderr is appended to the same log.
    pub fn restart(&mut self) {
        assert!(self.wait_exit(Duration::from_secs(10)).is_some(), "restart: the server is still running");
        let (child, addr, lines) =
            Self::launch(&self.builder, self.dir.path(), &self.config_path, &self.stderr_path);
        self.child = child;
        self.addr = addr;
        self.stdout_lines = lines;
        self.exited = None;
    }

    /// SIGKILL: the process ends at once, nothing is flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the killed server");
        self.exited = Some(status);
    }

    /// Spawns `hubbub serve` and waits for its `listening` line.
    fn launch(
        builder: &Builder,
        dir: &Path,
        config_path: &Path,
        stderr_path: &Path,
    ) -> (Child, String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let stderr_file = std::fs::OpenOptions::new().create(true).append(true).open(stderr_path).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        if builder.use_config_file {
            cmd.arg("--config").arg(config_path);
        }
        cmd.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr_file));
        for (k, v) in &builder.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hubbub serve");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let reader = BufReader::new(stdout);
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut addr = None;
        while addr.is_none() {
            let rem = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(rem.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("hubbub listening on http://") {
                        addr = Some(rest.trim().to_string());
                    }
                }
                Err(_) => break,
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait().ok();
            let err = std::fs::read_to_string(stderr_path).unwrap_or_default();
            panic!(
                "server did not print `hubbub listening on http://ADDR` within {STARTUP_TIMEOUT:?} \
                 (exit status: {status:?})\nstdout: {:?}\nstderr:\n{}\nconfig:\n{}",
                lines.lock().unwrap(),
                tail(&err, 4000),
                std::fs::read_to_string(config_path).unwrap_or_default()
            );
        };
        (child, addr, lines)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident memory, in KiB (Linux: `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A WebSocket connection that has not sent `connect` yet.
    pub async fn ws(&self) -> Client {
        Client::open(&self.ws_url()).await
    }

    /// A WebSocket connection authenticated as `user` (token with only `sub`).
    pub async fn user(&self, user: &str) -> Client {
        let mut c = self.ws().await;
        c.connect(&token(user)).await;
        c
    }

    pub fn api(&self) -> Api {
        Api::new(&self.addr, &self.builder.api_key)
    }

    /// Send SIGTERM using the `kill` command.
    pub fn sigterm(&self) {
        let st = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().expect("run kill");
        assert!(st.success(), "kill -TERM failed: {st:?}");
    }

    /// Wait for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run `hubbub token --config <this config> ARGS...` and return the last stdout line.
    pub fn cli_token(&self, args: &[&str]) -> String {
        cli_token(&self.config_path, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- hubbub stderr (tail) ----\n{}\n---- end stderr ----", tail(&self.stderr(), 6000));
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut i = s.len() - n;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        &s[i..]
    }
}

/// Run a command with a timeout, collecting stdout/stderr. Panics on timeout.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let o = to.join().unwrap_or_default();
            let e = te.join().unwrap_or_default();
            panic!(
                "command {cmd:?} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                tail(&o, 3000),
                tail(&e, 3000)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, to.join().unwrap_or_default(), te.join().unwrap_or_default())
}

/// `hubbub token --config FILE ARGS...` → last non-empty stdout line.
pub fn cli_token(config: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("token").arg("--config").arg(config).args(args);
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(st.success(), "`hubbub token {args:?}` failed: {st:?}\nstdout:\n{out}\nstderr:\n{err}");
    out.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("`hubbub token` printed nothing on stdout; stderr:\n{err}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// HS256 JWT with arbitrary claims, signed with the test secret.
pub fn jwt(claims: Value) -> String {
    jwt_with_secret(claims, SECRET)
}

pub fn jwt_with_secret(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// Connection token `{"sub": user}` (no exp).
pub fn token(user: &str) -> String {
    jwt(json!({ "sub": user }))
}

/// Connection token expiring `secs` from now (negative: already expired).
pub fn token_exp(user: &str, secs: i64) -> String {
    jwt(json!({ "sub": user, "exp": now() + secs }))
}

/// Subscription token for `channel`.
pub fn sub_token(user: &str, channel: &str) -> String {
    jwt(json!({ "sub": user, "channel": channel }))
}

pub fn sub_token_exp(user: &str, channel: &str, secs: i64) -> String {
    jwt(json!({ "sub": user, "channel": channel, "exp": now() + secs }))
}

/// Decode (and verify) a JWT signed with the test secret.
pub fn decode_jwt(token: &str) -> Value {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()), &v)
        .unwrap_or_else(|e| panic!("token {token:?} does not verify with the test secret: {e}"))
        .claims
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Replies by id, not yet taken.
    pub replies: HashMap<u64, Value>,
    /// `{"push":...}` messages not yet taken.
    pub pushes: VecDeque<Value>,
    /// Anything that is neither a reply, a push nor a ping.
    pub other: Vec<Value>,
    /// Answer server `{}` pings with `{}`.
    pub auto_pong: bool,
    /// Number of `{}` pings received.
    pub pings: usize,
    /// Close frame received: (code, reason). 1005 if the frame had no code.
    pub close: Option<(u16, String)>,
    /// Stream ended (EOF or error).
    pub ended: bool,
    pub error: Option<String>,
    /// Number of text frames received and the maximum number of JSON lines in one.
    pub frames: usize,
    pub max_lines_per_frame: usize,
    /// Client id from the connect reply.
    pub client_id: String,
}

impl Client {
    pub async fn open(url: &str) -> Client {
        let (ws, _resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("websocket connect to {url} timed out"))
            .unwrap_or_else(|e| panic!("websocket connect to {url} failed: {e}"));
        Client::from_ws(ws)
    }

    /// Open a connection whose upgrade request carries extra headers.
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("websocket url");
        for (name, value) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (ws, _resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("websocket connect to {url} timed out"))
            .unwrap_or_else(|e| panic!("websocket connect to {url} failed: {e}"));
        Client::from_ws(ws)
    }

    /// Open a connection whose TCP receive buffer is tiny (for slow-consumer tests).
    pub async fn open_small_rcvbuf(addr: &str, url: &str, rcvbuf: u32) -> Client {
        let sa: std::net::SocketAddr = addr.parse().expect("addr");
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = tokio::time::timeout(T, sock.connect(sa))
            .await
            .expect("tcp connect timeout")
            .expect("tcp connect");
        let (ws, _resp) =
            tokio::time::timeout(T, tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)))
                .await
                .expect("ws handshake timeout")
                .expect("ws handshake");
        Client::from_ws(ws)
    }

    fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            next_id: 1,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            other: Vec::new(),
            auto_pong: true,
            pings: 0,
            close: None,
            ended: false,
            error: None,
            frames: 0,
            max_lines_per_frame: 0,
            client_id: String::new(),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Send one text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(T, self.ws.send(Message::text(text.to_string())))
            .await
            .expect("websocket send timed out")
            .unwrap_or_else(|e| panic!("websocket send failed: {e} (close: {:?})", self.close));
    }

    /// Send a text frame, ignoring errors (the server may already have closed).
    pub async fn send_text_lossy(&mut self, text: &str) {
        let _ = tokio::time::timeout(T, self.ws.send(Message::text(text.to_string()))).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        let _ = tokio::time::timeout(T, self.ws.send(Message::binary(data))).await;
    }

    /// Build `{"id":N, method: params}` and return (id, json text).
    pub fn command(&mut self, method: &str, params: Value) -> (u64, String) {
        let id = self.next_id();
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(id));
        m.insert(method.into(), params);
        (id, Value::Object(m).to_string())
    }

    /// Send a command (in its own frame) and return its id.
    pub async fn send_cmd(&mut self, method: &str, params: Value) -> u64 {
        let (id, text) = self.command(method, params);
        self.send_text(&text).await;
        id
    }

    /// Send several commands newline-separated in ONE frame; returns their ids.
    pub async fn send_batch(&mut self, cmds: &[(&str, Value)]) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        for (m, p) in cmds {
            let (id, t) = self.command(m, p.clone());
            ids.push(id);
            lines.push(t);
        }
        self.send_text(&lines.join("\n")).await;
        ids
    }

    /// Read one message from the socket (until `deadline`). False on timeout or end.
    pub async fn pump(&mut self, deadline: Instant) -> bool {
        if self.ended {
            return false;
        }
        let rem = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(rem, self.ws.next()).await {
            Err(_) => false,
            Ok(None) => {
                self.ended = true;
                false
            }
            Ok(Some(Err(e))) => {
                self.ended = true;
                self.error = Some(e.to_string());
                false
            }
            Ok(Some(Ok(msg))) => {
                self.handle(msg).await;
                true
            }
        }
    }

    async fn handle(&mut self, msg: Message) {
        match msg {
            Message::Text(t) => {
                self.frames += 1;
                let mut n = 0;
                for line in t.as_str().split('\n') {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    n += 1;
                    let v: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("server sent a line that is not JSON ({e}): {line:?}"));
                    self.dispatch(v).await;
                }
                self.max_lines_per_frame = self.max_lines_per_frame.max(n);
            }
            Message::Binary(b) => {
                self.other.push(json!({ "binary_len": b.len() }));
            }
            Message::Close(f) => {
                self.close = Some(match f {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                });
            }
            _ => {}
        }
    }

    async fn dispatch(&mut self, v: Value) {
        if v.as_object().map(|o| o.is_empty()).unwrap_or(false) {
            self.pings += 1;
            if self.auto_pong && self.close.is_none() {
                let _ = tokio::time::timeout(T, self.ws.send(Message::text("{}"))).await;
            }
            return;
        }
        let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
        if id > 0 {
            self.replies.insert(id, v);
        } else if v.get("push").is_some() {
            self.pushes.push_back(v);
        } else {
            self.other.push(v);
        }
    }

    fn state(&self) -> String {
        format!(
            "close={:?} ended={} error={:?} pending pushes={:?} other={:?}",
            self.close, self.ended, self.error, self.pushes, self.other
        )
    }

    /// Wait for the reply with `id`.
    pub async fn reply(&mut self, id: u64) -> Value {
        self.reply_within(id, T).await
    }

    pub async fn reply_within(&mut self, id: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            if !self.pump(deadline).await {
                if let Some(r) = self.replies.remove(&id) {
                    return r;
                }
                panic!("no reply with id {id} within {timeout:?}; {}", self.state());
            }
        }
    }

    /// Send a command and return the full reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_cmd(method, params).await;
        self.reply(id).await
    }

    /// Send a command; expect success; return the result object (`reply[method]`).
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params.clone()).await;
        expect_result(&r, method, &params)
    }

    /// Send a command; expect an error; return the error code.
    pub async fn err(&mut self, method: &str, params: Value) -> i64 {
        let r = self.call(method, params.clone()).await;
        error_code(&r).unwrap_or_else(|| panic!("expected an error for {method} {params}, got reply {r}"))
    }

    /// Send `connect` with a token and expect success; returns the connect result.
    pub async fn connect(&mut self, token: &str) -> Value {
        let r = self.ok("connect", json!({ "token": token, "name": "rust-test" })).await;
        self.client_id = r["client"].as_str().unwrap_or_default().to_string();
        r
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok("subscribe", json!({ "channel": channel })).await
    }

    pub async fn subscribe_with(&mut self, params: Value) -> Value {
        self.ok("subscribe", params).await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.ok("publish", json!({ "channel": channel, "data": data })).await
    }

    /// Wait for a push matching `pred`; removes and returns it.
    pub async fn push_where<F: Fn(&Value) -> bool>(&mut self, timeout: Duration, pred: F) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.pushes.iter().position(&pred) {
                return self.pushes.remove(pos);
            }
            if !self.pump(deadline).await {
                if let Some(pos) = self.pushes.iter().position(&pred) {
                    return self.pushes.remove(pos);
                }
                return None;
            }
        }
    }

    /// Wait for a push of `kind` (`pub`, `join`, `leave`, `unsubscribe`, `subscribe`,
    /// `message`, `disconnect`) on `channel`; returns the inner object (`push[kind]`).
    pub async fn expect_push(&mut self, channel: &str, kind: &str) -> Value {
        let ch = channel.to_string();
        let k = kind.to_string();
        match self
            .push_where(T, move |p| {
                p["push"]["channel"].as_str() == Some(ch.as_str()) && p["push"].get(&k).is_some()
            })
            .await
        {
            Some(p) => p["push"][kind].clone(),
            None => panic!("no `{kind}` push on channel {channel:?} within {T:?}; {}", self.state()),
        }
    }

    /// Wait for a join/leave push on `channel` about `user`; returns `push[kind]`.
    pub async fn expect_presence_push(&mut self, channel: &str, kind: &str, user: &str) -> Value {
        let (ch, k, u) = (channel.to_string(), kind.to_string(), user.to_string());
        match self
            .push_where(T, move |p| {
                p["push"]["channel"].as_str() == Some(ch.as_str())
                    && p["push"][k.as_str()]["info"]["user"].as_str() == Some(u.as_str())
            })
            .await
        {
            Some(p) => p["push"][kind].clone(),
            None => {
                panic!("no `{kind}` push for user {user:?} on {channel:?} within {T:?}; {}", self.state())
            }
        }
    }

    /// Assert that no push of `kind` on `channel` arrives within `dur`.
    pub async fn expect_no_push(&mut self, channel: &str, kind: &str, dur: Duration) {
        let ch = channel.to_string();
        let k = kind.to_string();
        if let Some(p) = self
            .push_where(dur, move |p| {
                p["push"]["channel"].as_str() == Some(ch.as_str()) && p["push"].get(&k).is_some()
            })
            .await
        {
            panic!("unexpected `{kind}` push on {channel:?}: {p}");
        }
    }

    /// Read everything for `dur` (answering pings, collecting pushes).
    pub async fn drain_for(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            if !self.pump(deadline).await && self.ended {
                return;
            }
        }
    }

    /// Wait for a close frame; `None` if the stream ended without one or nothing came.
    pub async fn wait_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.close.is_some() {
                return self.close.clone();
            }
            if !self.pump(deadline).await {
                return self.close.clone();
            }
        }
    }

    /// Wait for a close frame with `code`; panics with details otherwise. Returns the reason.
    pub async fn expect_close(&mut self, code: u16, timeout: Duration) -> String {
        match self.wait_close(timeout).await {
            Some((c, reason)) if c == code => reason,
            Some((c, reason)) => {
                panic!("expected close code {code}, got close {c} {reason:?}; {}", self.state())
            }
            None => {
                panic!("expected close code {code} within {timeout:?}, got no close frame; {}", self.state())
            }
        }
    }

    /// True if the connection is still open (no close, no EOF) after reading for `dur`.
    pub async fn still_open_after(&mut self, dur: Duration) -> bool {
        self.drain_for(dur).await;
        !self.ended && self.close.is_none()
    }

    /// Close politely (ignores errors).
    pub async fn close_now(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// `reply[method]` when the reply is a success, else panic with the reply.
pub fn expect_result(reply: &Value, method: &str, params: &Value) -> Value {
    if let Some(e) = reply.get("error") {
        panic!("{method} {params} failed: {e} (reply {reply})");
    }
    match reply.get(method) {
        Some(r) => r.clone(),
        None => panic!("reply to {method} {params} has no `{method}` field: {reply}"),
    }
}

pub fn error_code(reply: &Value) -> Option<i64> {
    reply.get("error").map(|e| {
        e.get("code").and_then(Value::as_i64).unwrap_or_else(|| panic!("error without numeric code: {reply}"))
    })
}

/// Numeric field, absent = 0 (protobuf-style omission of zero values).
pub fn num(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        None | Some(Value::Null) => 0,
        Some(x) => x.as_i64().unwrap_or_else(|| panic!("`{key}` is not an integer in {v}")),
    }
}

/// Boolean field, absent = false.
pub fn flag(v: &Value, key: &str) -> bool {
    match v.get(key) {
        None | Some(Value::Null) => false,
        Some(x) => x.as_bool().unwrap_or_else(|| panic!("`{key}` is not a bool in {v}")),
    }
}

/// Array field, absent = empty.
pub fn arr(v: &Value, key: &str) -> Vec<Value> {
    match v.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(x) => x.as_array().unwrap_or_else(|| panic!("`{key}` is not an array in {v}")).clone(),
    }
}

/// Offsets of a publication list.
pub fn offsets(pubs: &[Value]) -> Vec<i64> {
    pubs.iter().map(|p| num(p, "offset")).collect()
}

pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && s.chars().enumerate().all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------

pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

impl Api {
    pub fn new(addr: &str, key: &str) -> Api {
        Api { base: format!("http://{addr}"), key: key.to_string(), http: http_client() }
    }

    /// POST /api/<method> with a raw body and the given headers → (status, body text).
    pub async fn raw(&self, method: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut rb = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("POST /api/{method} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, text)
    }

    /// POST with the right key → (status, parsed JSON body).
    pub async fn call(&self, method: &str, body: Value) -> (u16, Value) {
        let (st, text) = self.raw(method, &body.to_string(), &[("X-API-Key", &self.key)]).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("/api/{method} {body} answered {st} with non-JSON body ({e}): {text:?}")
        });
        (st, v)
    }

    /// Expect 200 + `{"result":...}`; return the result.
    pub async fn ok(&self, method: &str, body: Value) -> Value {
        let (st, v) = self.call(method, body.clone()).await;
        assert_eq!(st, 200, "/api/{method} {body} → HTTP {st}: {v}");
        if let Some(e) = v.get("error") {
            panic!("/api/{method} {body} returned error {e}");
        }
        v.get("result").cloned().unwrap_or_else(|| panic!("/api/{method} {body}: no `result` in {v}"))
    }

    /// Expect an `{"error":...}` body; return (status, code).
    pub async fn err(&self, method: &str, body: Value) -> (u16, i64) {
        let (st, v) = self.call(method, body.clone()).await;
        let code = v
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("/api/{method} {body}: expected an error, got {st} {v}"));
        (st, code)
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.ok("publish", json!({ "channel": channel, "data": data })).await
    }
}

/// Poll `f` until it returns Some, for up to `timeout`.
pub async fn eventually<F, Fut, R>(timeout: Duration, mut f: F) -> Option<R>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<R>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f().await {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
