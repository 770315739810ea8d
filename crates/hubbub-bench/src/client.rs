//! The load generator's connections: one tokio task per WebSocket connection, speaking one
//! of three protocols to the server under test:
//!
//! * Hubbub: the Centrifugo client protocol v2 (JSON): `connect` with an HS256 JWT, then
//!   `subscribe` (with recovery positions after a reconnect); pushes
//!   `{"push":{"channel":..,"pub":{"data":..,"offset":N}}}`, several per frame separated by
//!   `\n`; pings `{}` answered with `{}`.
//! * raw-ws: `sub <group>` → `ok <group>`; every text frame is a payload.
//! * Socket.IO 4 over its plain WebSocket transport (Engine.IO v4 framing, exactly what
//!   `socket.io-client` with `transports: ["websocket"]` sends): `0{..}` open, `40` connect,
//!   `42<n>["sub",room]` → `43<n>["ok"]`, events `42["m",{..}]`, ping `2` → pong `3`.
//!
//! Every publication's payload starts with `{"c":<channel>,"s":<seq>,"t":<µs>` so that the
//! same scanner reads it from each protocol without a JSON parse: latency from `t`, lost and
//! duplicated messages from `s` (per channel, in order).

use crate::servers::{Kind, TOKEN_SECRET};
use crate::stats::{record_latencies, Shared, SubResult};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Client connections come from 127.0.0.2 .. 127.0.0.(1 + SOURCE_ADDRS): each source
/// address has its own ephemeral port range, so more than 64k connections are possible.
pub const SOURCE_ADDRS: usize = 32;
/// Read buffer per client connection (the default 128 KiB would cost gigabytes).
const READ_BUFFER: usize = 4096;
/// One session's set-up (TCP, WebSocket, handshake, subscriptions) must finish in this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per connection, when reconnecting (connect-storm).
const MAX_ATTEMPTS: u32 = 100;

/// The server under test, as the clients see it.
pub struct Target {
    pub kind: Kind,
    /// Where the publisher and the set-up requests go.
    pub addr: SocketAddr,
    /// Where the WebSocket connections go: connection `i` to `nodes[i % len]` (the nodes
    /// of a cluster); empty: all to `addr`.
    pub nodes: Vec<SocketAddr>,
    /// Prefix of Hubbub channel names (`r:` for the namespace with history).
    pub namespace: String,
    /// Reconnect (with recovery where the protocol has it) when the connection is lost.
    pub reconnect: bool,
    /// First reconnect attempt after a random delay up to this (then backing off).
    pub jitter: Duration,
}

impl Target {
    /// The server connection `index` opens its WebSocket to.
    pub fn node(&self, index: usize) -> SocketAddr {
        if self.nodes.is_empty() {
            self.addr
        } else {
            self.nodes[index % self.nodes.len()]
        }
    }

    pub fn channel_name(&self, channel: u32) -> String {
        match self.kind {
            Kind::Hubbub => format!("{}b{channel}", self.namespace),
            _ => format!("b{channel}"),
        }
    }
}

/// Builds the payload of publication `seq` of `channel`, sent at `t` (µs), padded.
pub fn payload(channel: u32, seq: u64, t: u64, pad: &str) -> String {
    format!(r#"{{"c":{channel},"s":{seq},"t":{t},"p":"{pad}"}}"#)
}

pub fn digits(b: &[u8], i: &mut usize) -> Option<u64> {
    let start = *i;
    let mut v: u64 = 0;
    while *i < b.len() && b[*i].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add(u64::from(b[*i] - b'0'));
        *i += 1;
    }
    (*i > start).then_some(v)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads `(channel, seq, t)` from the first payload in `b`; also returns where it ends.
pub fn scan_payload(b: &[u8]) -> Option<(u32, u64, u64, usize)> {
    let mut i = find(b, br#"{"c":"#)? + 5;
    let c = digits(b, &mut i)?;
    i += b.get(i..)?.starts_with(br#","s":"#).then_some(5)?;
    let s = digits(b, &mut i)?;
    i += b.get(i..)?.starts_with(br#","t":"#).then_some(5)?;
    let t = digits(b, &mut i)?;
    Some((c as u32, s, t, i))
}

/// One subscription of a connection; survives reconnects.
struct Sub {
    channel: u32,
    last: u64,
    gaps: Vec<(u64, u64)>,
    received: u64,
    dups: u64,
    /// Hubbub stream position, for recovery.
    offset: u64,
    epoch: String,
}

impl Sub {
    fn new(channel: u32) -> Sub {
        Sub { channel, last: 0, gaps: Vec::new(), received: 0, dups: 0, offset: 0, epoch: String::new() }
    }

    fn on_seq(&mut self, seq: u64) {
        if seq <= self.last {
            self.dups += 1;
            return;
        }
        if seq > self.last + 1 {
            self.gaps.push((self.last + 1, seq - 1));
        }
        self.last = seq;
        self.received += 1;
    }

    fn result(&self) -> SubResult {
        SubResult {
            channel: self.channel,
            last: self.last,
            gaps: self.gaps.clone(),
            received: self.received,
            dups: self.dups,
        }
    }
}

/// Why a session ended.
enum Ended {
    /// The harness asked everyone to stop.
    Stopped,
    /// Set-up failed (the message says where).
    Failed(String),
    /// The connection was lost after set-up.
    Lost,
}

/// One WebSocket session and what it needs to process incoming messages.
struct Session<'a> {
    ws: Ws,
    target: &'a Target,
    shared: &'a Shared,
    subs: &'a mut [Sub],
    /// Latencies of the current message, recorded in one go.
    lat: Vec<u64>,
    /// Replies and acknowledgements, for the set-up code.
    replies: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Session<'_> {
    fn on_payload(&mut self, bytes: &[u8], now: u64) -> Option<usize> {
        let (c, s, t, end) = scan_payload(bytes)?;
        let sub = if self.subs.len() == 1 {
            &mut self.subs[0]
        } else {
            self.subs.iter_mut().find(|x| x.channel == c)?
        };
        sub.on_seq(s);
        self.lat.push(now.saturating_sub(t));
        if self.target.kind == Kind::Hubbub {
            let rest = &bytes[end..];
            if let Some(p) = find(rest, br#""offset":"#) {
                let mut i = p + 9;
                if let Some(offset) = digits(rest, &mut i) {
                    sub.offset = offset;
                }
            }
        }
        Some(end)
    }

    /// Processes one text message: deliveries are counted, pings answered, anything else
    /// kept in `replies`.
    async fn on_text(&mut self, text: &str) -> Result<(), Ended> {
        let now = self.shared.now_micros();
        let mut pong: Option<&'static str> = None;
        match self.target.kind {
            Kind::Hubbub => {
                for line in text.split('\n') {
                    if line == "{}" {
                        pong = Some("{}");
                    } else if line.starts_with(r#"{"push":"#) {
                        self.on_payload(line.as_bytes(), now);
                    } else if !line.is_empty() {
                        self.replies.push(line.to_owned());
                    }
                }
            }
            Kind::Raw => {
                if text.starts_with("ok ") {
                    self.replies.push(text.to_owned());
                } else {
                    self.on_payload(text.as_bytes(), now);
                }
            }
            Kind::SocketIo => {
                if text == "2" {
                    pong = Some("3");
                } else if text.starts_with(r#"42["m","#) {
                    self.on_payload(text.as_bytes(), now);
                } else if text == "1" || text.starts_with("41") {
                    return Err(Ended::Lost);
                } else {
                    self.replies.push(text.to_owned());
                }
            }
        }
        let n = self.lat.len() as u64;
        if n > 0 {
            record_latencies(&self.lat);
            self.lat.clear();
            self.shared.deliver(n);
        }
        if let Some(p) = pong {
            self.ws.send(Message::text(p)).await.map_err(|_| Ended::Lost)?;
        }
        Ok(())
    }

    /// Waits for the next message and processes it.
    async fn pump(&mut self) -> Result<(), Ended> {
        tokio::select! {
            biased;
            _ = self.stop.changed() => Err(Ended::Stopped),
            msg = self.ws.next() => match msg {
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Err(Ended::Lost),
                Some(Ok(_)) => Ok(()),
            },
        }
    }

    /// Pumps until `done` says the replies so far are enough.
    async fn until(
        &mut self,
        mut done: impl FnMut(&mut Vec<String>, &mut [Sub], &Shared) -> Result<bool, String>,
    ) -> Result<(), Ended> {
        loop {
            if done(&mut self.replies, self.subs, self.shared).map_err(Ended::Failed)? {
                return Ok(());
            }
            self.pump().await.map_err(|e| match e {
                Ended::Lost => Ended::Failed("connection lost during set-up".into()),
                other => other,
            })?;
        }
    }
}

fn token(user: usize) -> String {
    let claims = serde_json::json!({ "sub": format!("u{user}") });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .expect("HS256 signing")
}

fn source_addr(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCE_ADDRS) as u8)), 0)
}

/// TCP connection from a spread source address, then the WebSocket handshake.
pub async fn open(target: &Target, index: usize) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.set_reuseaddr(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket.bind(source_addr(index)).map_err(|e| format!("bind {}: {e}", source_addr(index)))?;
    let addr = target.node(index);
    let stream = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let path = match target.kind {
        Kind::Hubbub => "/connection/websocket",
        Kind::Raw => "/ws",
        Kind::SocketIo => "/socket.io/?EIO=4&transport=websocket",
    };
    let url = format!("ws://{addr}{path}");
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    Ok(ws)
}

/// The protocol's own handshake (Hubbub `connect`, Socket.IO open + namespace connect).
async fn handshake(s: &mut Session<'_>, index: usize) -> Result<(), Ended> {
    match s.target.kind {
        Kind::Hubbub => {
            let cmd = format!(r#"{{"id":1,"connect":{{"token":"{}","name":"hubbub-bench"}}}}"#, token(index));
            s.ws.send(Message::text(cmd)).await.map_err(|e| Ended::Failed(format!("send connect: {e}")))?;
            s.until(|replies, _, _| {
                for r in replies.drain(..) {
                    if r.starts_with(r#"{"id":1,"#) {
                        return if r.contains(r#""connect":"#) {
                            Ok(true)
                        } else {
                            Err(format!("connect refused: {r}"))
                        };
                    }
                }
                Ok(false)
            })
            .await
        }
        Kind::Raw => Ok(()),
        Kind::SocketIo => {
            s.until(|replies, _, _| Ok(replies.drain(..).any(|r| r.starts_with('0')))).await?;
            s.ws.send(Message::text("40")).await.map_err(|e| Ended::Failed(format!("send 40: {e}")))?;
            s.until(|replies, _, _| {
                for r in replies.drain(..) {
                    if r.starts_with("40") {
                        return Ok(true);
                    }
                    if r.starts_with("44") {
                        return Err(format!("socket.io connect error: {r}"));
                    }
                }
                Ok(false)
            })
            .await
        }
    }
}

/// Applies a Hubbub subscribe reply: recovered publications, stream position.
fn on_subscribe_reply(sub: &mut Sub, reply: &serde_json::Value, recovering: bool, shared: &Shared) {
    if recovering {
        if reply.get("recovered").and_then(|v| v.as_bool()) == Some(true) {
            shared.recovered.fetch_add(1, Relaxed);
        } else {
            shared.not_recovered.fetch_add(1, Relaxed);
        }
    }
    if let Some(publications) = reply.get("publications").and_then(|v| v.as_array()) {
        for p in publications {
            if let Some(seq) = p.get("data").and_then(|d| d.get("s")).and_then(|s| s.as_u64()) {
                sub.on_seq(seq);
                shared.recovered_pubs.fetch_add(1, Relaxed);
            }
        }
    }
    sub.epoch = reply.get("epoch").and_then(|v| v.as_str()).unwrap_or("").to_owned();
    sub.offset = reply.get("offset").and_then(|v| v.as_u64()).unwrap_or(0);
}

/// Subscribes to every channel of the connection, with recovery positions when `recover`.
async fn subscribe(s: &mut Session<'_>, recover: bool) -> Result<(), Ended> {
    let n = s.subs.len();
    if n == 0 {
        return Ok(());
    }
    let send_err = |e: tokio_tungstenite::tungstenite::Error| Ended::Failed(format!("send subscribe: {e}"));
    match s.target.kind {
        Kind::Hubbub => {
            let mut frame = String::new();
            let mut recovering = vec![false; n];
            for (j, sub) in s.subs.iter().enumerate() {
                let id = 2 + j;
                let channel = s.target.channel_name(sub.channel);
                if !frame.is_empty() {
                    frame.push('\n');
                }
                if recover && !sub.epoch.is_empty() {
                    recovering[j] = true;
                    frame.push_str(&format!(
                        r#"{{"id":{id},"subscribe":{{"channel":"{channel}","recover":true,"offset":{},"epoch":"{}"}}}}"#,
                        sub.offset, sub.epoch
                    ));
                } else {
                    frame.push_str(&format!(r#"{{"id":{id},"subscribe":{{"channel":"{channel}"}}}}"#));
                }
            }
            s.ws.send(Message::text(frame)).await.map_err(send_err)?;
            let mut pending = n;
            s.until(|replies, subs, shared| {
                for r in replies.drain(..) {
                    let v: serde_json::Value =
                        serde_json::from_str(&r).map_err(|e| format!("bad reply {r}: {e}"))?;
                    let Some(id) = v.get("id").and_then(|i| i.as_u64()) else { continue };
                    let j = id as usize;
                    if j < 2 || j >= 2 + n {
                        continue;
                    }
                    if let Some(err) = v.get("error") {
                        return Err(format!("subscribe refused: {err}"));
                    }
                    if let Some(reply) = v.get("subscribe") {
                        on_subscribe_reply(&mut subs[j - 2], reply, recovering[j - 2], shared);
                        pending -= 1;
                    }
                }
                Ok(pending == 0)
            })
            .await
        }
        Kind::Raw => {
            for j in 0..n {
                let channel = s.target.channel_name(s.subs[j].channel);
                s.ws.feed(Message::text(format!("sub {channel}"))).await.map_err(send_err)?;
            }
            s.ws.flush().await.map_err(send_err)?;
            let mut pending = n;
            s.until(|replies, _, _| {
                pending -= replies.drain(..).filter(|r| r.starts_with("ok ")).count().min(pending);
                Ok(pending == 0)
            })
            .await
        }
        Kind::SocketIo => {
            for j in 0..n {
                let channel = s.target.channel_name(s.subs[j].channel);
                s.ws.feed(Message::text(format!(r#"42{j}["sub","{channel}"]"#))).await.map_err(send_err)?;
            }
            s.ws.flush().await.map_err(send_err)?;
            let mut pending = n;
            s.until(|replies, _, _| {
                pending -= replies.drain(..).filter(|r| r.starts_with("43")).count().min(pending);
                Ok(pending == 0)
            })
            .await
        }
    }
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, Ended>>, what: &str) -> Result<T, Ended> {
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Ended::Failed(format!("{what}: timed out"))))
}

/// One session: set-up, then reading until it ends.
async fn run_session(
    target: &Target,
    shared: &Shared,
    index: usize,
    subs: &mut [Sub],
    first: bool,
    setup_limit: &Semaphore,
) -> Ended {
    let stop = shared.stop.subscribe();
    let permit = if first { setup_limit.acquire().await.ok() } else { None };
    let ws = match timed(async { open(target, index).await.map_err(Ended::Failed) }, "open").await {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    let mut s = Session { ws, target, shared, subs, lat: Vec::new(), replies: Vec::new(), stop };
    if let Err(e) = timed(handshake(&mut s, index), "handshake").await {
        return e;
    }
    drop(permit);
    if first {
        shared.connected.fetch_add(1, Relaxed);
        let mut gate = shared.subscribe_gate.subscribe();
        while !*gate.borrow_and_update() {
            tokio::select! {
                _ = gate.changed() => {}
                r = s.pump() => if let Err(e) = r { return e },
            }
        }
    }
    if let Err(e) = timed(subscribe(&mut s, !first), "subscribe").await {
        return e;
    }
    if first {
        shared.subscribed.fetch_add(1, Relaxed);
    } else {
        shared.resubscribed.fetch_add(1, Relaxed);
    }
    loop {
        if let Err(e) = s.pump().await {
            if matches!(e, Ended::Lost) {
                // Ended by the server or broken: close our side at once.
                let _ = s.ws.close(None).await;
            }
            return e;
        }
    }
}

/// A small xorshift generator for reconnect jitter.
fn jitter(seed: &mut u64, max_ms: u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(if max_ms == 0 { 0 } else { *seed % max_ms })
}

/// One connection: sessions until stopped (several only when `target.reconnect`).
async fn connection(
    target: Arc<Target>,
    shared: Arc<Shared>,
    index: usize,
    channels: Vec<u32>,
    setup_limit: Arc<Semaphore>,
) {
    let mut subs: Vec<Sub> = channels.into_iter().map(Sub::new).collect();
    let mut stop = shared.stop.subscribe();
    let mut seed = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sessions = 0u32;
    let mut failures_in_row = 0u32;
    for _attempt in 0..MAX_ATTEMPTS {
        if *stop.borrow_and_update() {
            break;
        }
        match run_session(&target, &shared, index, &mut subs, sessions == 0, &setup_limit).await {
            Ended::Stopped => break,
            Ended::Failed(why) => {
                shared.error(format!("{} connection {index}: {why}", target.kind.name()));
                failures_in_row += 1;
            }
            Ended::Lost => {
                shared.lost_connections.fetch_add(1, Relaxed);
                sessions += 1;
                failures_in_row = 0;
            }
        }
        if !target.reconnect {
            break;
        }
        // Everyone reconnects within the jitter window, then backs off on failures.
        let window = target.jitter.as_millis() as u64;
        let delay = if failures_in_row == 0 {
            jitter(&mut seed, window)
        } else {
            let cap = (window.max(50) << failures_in_row.min(5)).min(3_000);
            Duration::from_millis(cap / 2) + jitter(&mut seed, cap / 2)
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    shared.push_results(subs.iter().map(Sub::result));
    shared.finished.fetch_add(1, Relaxed);
}

/// Starts one task per connection; `plan[i]` are the channels of connection `i`. At most
/// `concurrency` first set-ups (TCP + WebSocket + handshake) are in flight at once.
pub fn spawn_all(target: Arc<Target>, shared: &Arc<Shared>, plan: Vec<Vec<u32>>, concurrency: usize) {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    for (index, channels) in plan.into_iter().enumerate() {
        tokio::spawn(connection(target.clone(), shared.clone(), index, channels, limit.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_payloads_in_every_framing() {
        let p = payload(3, 17, 123456, "xx");
        assert_eq!(scan_payload(p.as_bytes()).map(|(c, s, t, _)| (c, s, t)), Some((3, 17, 123456)));
        let hubbub = format!(r#"{{"push":{{"channel":"b3","pub":{{"data":{p},"offset":17}}}}}}"#);
        assert_eq!(scan_payload(hubbub.as_bytes()).map(|(c, s, t, _)| (c, s, t)), Some((3, 17, 123456)));
        let sio = format!(r#"42["m",{p}]"#);
        assert_eq!(scan_payload(sio.as_bytes()).map(|(c, s, t, _)| (c, s, t)), Some((3, 17, 123456)));
        assert_eq!(scan_payload(b"{}"), None);
    }

    #[test]
    fn counts_gaps_and_duplicates() {
        let mut sub = Sub::new(0);
        for s in [1, 2, 5, 5, 6, 3] {
            sub.on_seq(s);
        }
        assert_eq!(sub.last, 6);
        assert_eq!(sub.gaps, vec![(3, 4)]);
        assert_eq!(sub.received, 4);
        assert_eq!(sub.dups, 2);
    }
}
