//! The chat workload's client side: accounts and rooms made through the chat's REST API,
//! and chat connections (one WebSocket each, the Hubbub client protocol) that subscribe to
//! `room:{id}` channels and send messages with the `chat.send` RPC.
//!
//! A message's text is a small JSON object, `{"r":<room>,"s":<seq>,"u":<sender>,"t":<µs>,"p":..}`
//! (room index, the harness's sequence number within the room, sender's user index, send
//! time), which arrives JSON-escaped inside the publication
//! `{"type":"message","message":{..,"text":"{\"r\":..}"}}`. Each subscription keeps the set
//! of sequence numbers it received (lost and duplicated messages, compared with the set the
//! server acknowledged) and checks that the publication offsets follow each other with no
//! gap (the room's stream is durable: after a reconnect, recovery must fill the gap).

use crate::client::{digits, find, open, Target, Ws};
use crate::publish::HttpClient;
use crate::stats::{record_latencies, Shared};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

pub const PASSWORD: &str = "hubbub-bench-password";
/// Set-up (TCP, WebSocket, connect, subscriptions) of one session must finish in this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Ids of RPC commands start here (connect is 1, subscriptions 2..).
const FIRST_RPC_ID: u64 = 10_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// REST set-up

/// A signed-up user.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub token: String,
}

/// One REST call: path, bearer token, JSON body.
pub type Call = (String, Option<String>, Value);

async fn call(http: &mut HttpClient, (path, token, body): &Call) -> Result<Value, String> {
    let headers = token.as_ref().map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let (status, answer) = http.post(path, &headers, body.to_string().as_bytes()).await?;
    if !(200..300).contains(&status) {
        return Err(format!("POST {path}: HTTP {status}: {}", String::from_utf8_lossy(&answer)));
    }
    serde_json::from_slice(&answer).map_err(|e| format!("POST {path}: bad answer: {e}"))
}

/// Makes the calls on `tasks` keep-alive connections in parallel; the answers in order.
pub async fn post_all(addr: SocketAddr, calls: Vec<Call>, tasks: usize) -> Result<Vec<Value>, String> {
    let calls = Arc::new(calls);
    let tasks = tasks.clamp(1, calls.len().max(1));
    let mut handles = Vec::new();
    for k in 0..tasks {
        let calls = calls.clone();
        handles.push(tokio::spawn(async move {
            let mut http = HttpClient::new(addr);
            let mut out = Vec::new();
            for i in (k..calls.len()).step_by(tasks) {
                out.push((i, call(&mut http, &calls[i]).await?));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut answers = vec![Value::Null; calls.len()];
    for h in handles {
        for (i, v) in h.await.map_err(|e| format!("set-up task: {e}"))?? {
            answers[i] = v;
        }
    }
    Ok(answers)
}

/// Signs up users `names` (in parallel): `POST /api/auth/signup`.
pub async fn signup_all(addr: SocketAddr, names: &[String], tasks: usize) -> Result<Vec<Account>, String> {
    let calls = names
        .iter()
        .map(|n| ("/api/auth/signup".to_owned(), None, json!({ "username": n, "password": PASSWORD })))
        .collect();
    let answers = post_all(addr, calls, tasks).await?;
    answers
        .into_iter()
        .map(|a| {
            let name = a.pointer("/user/username").and_then(Value::as_str);
            let token = a.get("access_token").and_then(Value::as_str);
            match (name, token) {
                (Some(name), Some(token)) => Ok(Account { name: name.to_owned(), token: token.to_owned() }),
                _ => Err(format!("sign-up answer without user.username or access_token: {a}")),
            }
        })
        .collect()
}

/// Creates one group room per owner (`POST /api/rooms`); returns the rooms' ids.
pub async fn create_rooms(addr: SocketAddr, owners: &[&Account], tasks: usize) -> Result<Vec<i64>, String> {
    let calls = owners
        .iter()
        .enumerate()
        .map(|(r, o)| {
            ("/api/rooms".to_owned(), Some(o.token.clone()), json!({ "name": format!("bench room {r}") }))
        })
        .collect();
    post_all(addr, calls, tasks)
        .await?
        .into_iter()
        .map(|a| a.get("id").and_then(Value::as_i64).ok_or_else(|| format!("room answer without id: {a}")))
        .collect()
}

/// Invites: `(room id, owner, invitee)` each as `POST /api/rooms/{id}/members`.
pub async fn invite_all(
    addr: SocketAddr,
    invites: &[(i64, &Account, &Account)],
    tasks: usize,
) -> Result<(), String> {
    let calls = invites
        .iter()
        .map(|(room, owner, who)| {
            (format!("/api/rooms/{room}/members"), Some(owner.token.clone()), json!({ "username": who.name }))
        })
        .collect();
    post_all(addr, calls, tasks).await.map(|_| ())
}

// ---------------------------------------------------------------------------------------
// What was sent and acknowledged

/// A growable set of small integers.
#[derive(Default, Clone, Debug)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Adds `i`; false if it was there already.
    pub fn insert(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let m = 1u64 << (i % 64);
        let new = self.0[w] & m == 0;
        self.0[w] |= m;
        new
    }

    /// How many of `self` are not in `other`.
    pub fn count_not_in(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(w, &a)| u64::from((a & !other.0.get(w).copied().unwrap_or(0)).count_ones()))
            .sum()
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// One room, as the harness knows it.
pub struct RoomBook {
    pub id: i64,
    /// User indices of the members that subscribe.
    pub members: Vec<usize>,
    /// The harness's sequence numbers (in the text), handed out as messages are sent.
    pub next_seq: AtomicU64,
    /// Sequence numbers the server acknowledged (stored).
    pub acked: Mutex<Bits>,
}

impl RoomBook {
    pub fn new(id: i64, members: Vec<usize>) -> RoomBook {
        RoomBook { id, members, next_seq: AtomicU64::new(0), acked: Mutex::new(Bits::default()) }
    }
}

/// What one subscription (connection × room) saw, across reconnects.
#[derive(Debug, Clone)]
pub struct TrackResult {
    pub room: u32,
    pub seen: Bits,
    pub dups: u64,
    /// Offsets skipped (the next publication's offset was higher than the one expected).
    pub offset_gaps: u64,
    /// Publications whose offset was not above the last one.
    pub offset_backwards: u64,
}

/// Everything the connections and senders of one chat run share.
pub struct ChatRun {
    pub shared: Arc<Shared>,
    pub target: Arc<Target>,
    pub rooms: Vec<RoomBook>,
    pub pad: String,
    /// Messages written to a socket for the first time.
    pub sent: AtomicU64,
    /// RPC replies with the stored message.
    pub acks: AtomicU64,
    pub send_errors: AtomicU64,
    /// Sends repeated (same `client_msg_id`) after a reconnect because no reply had come.
    pub retried: AtomicU64,
    pub first_send_error: Mutex<Option<String>>,
    /// Send → acknowledgement, µs.
    pub ack_latency: Mutex<Histogram<u64>>,
    /// Copies of their own messages that senders received (not counted as deliveries).
    pub own: AtomicU64,
    /// Messages whose text was unreadable or of an unknown room.
    pub foreign: AtomicU64,
    pub results: Mutex<Vec<TrackResult>>,
}

impl ChatRun {
    pub fn new(shared: Arc<Shared>, target: Arc<Target>, rooms: Vec<RoomBook>, pad: String) -> Arc<ChatRun> {
        Arc::new(ChatRun {
            shared,
            target,
            rooms,
            pad,
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            first_send_error: Mutex::new(None),
            ack_latency: Mutex::new(crate::stats::new_histogram()),
            own: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            results: Mutex::new(Vec::new()),
        })
    }

    pub fn take_ack_latencies(&self) -> Histogram<u64> {
        let mut h = lock(&self.ack_latency);
        let out = h.clone();
        h.reset();
        out
    }

    fn send_error(&self, why: String) {
        self.send_errors.fetch_add(1, Relaxed);
        let mut first = lock(&self.first_send_error);
        if first.is_none() {
            *first = Some(why);
        }
    }

    pub fn first_send_error(&self) -> Option<String> {
        lock(&self.first_send_error).clone()
    }

    /// Per subscription, acknowledged messages of its room it never received; and
    /// received messages that were never acknowledged.
    pub fn lost_and_unacked(&self, results: &[TrackResult]) -> (u64, u64) {
        let acked: Vec<Bits> = self.rooms.iter().map(|r| lock(&r.acked).clone()).collect();
        let mut lost = 0;
        let mut unacked = 0;
        for r in results {
            let a = &acked[r.room as usize];
            lost += a.count_not_in(&r.seen);
            unacked += r.seen.count_not_in(a);
        }
        (lost, unacked)
    }

    pub fn acked_total(&self) -> u64 {
        self.rooms.iter().map(|r| lock(&r.acked).len()).sum()
    }
}

/// A message to send from a connection (the sequence number and time are taken when it is
/// written). `done` hears whether it was acknowledged.
pub struct SendCmd {
    pub room: u32,
    pub done: Option<oneshot::Sender<bool>>,
}

/// Reads `(room, seq, user, t)` from an escaped bench text (`{\"r\":1,\"s\":2,..}`) in `b`.
pub fn scan_text(b: &[u8]) -> Option<(u32, u64, u64, u64)> {
    fn field(b: &[u8], i: &mut usize, name: &[u8]) -> Option<u64> {
        *i += b.get(*i..)?.starts_with(name).then_some(name.len())?;
        digits(b, i)
    }
    let mut i = find(b, br#"{\"r\":"#)? + 7;
    let r = digits(b, &mut i)?;
    let s = field(b, &mut i, br#",\"s\":"#)?;
    let u = field(b, &mut i, br#",\"u\":"#)?;
    let t = field(b, &mut i, br#",\"t\":"#)?;
    Some((r as u32, s, u, t))
}

/// The text of message `seq` of room `room` from user `user`, sent at `t` (µs).
pub fn text(room: u32, seq: u64, user: usize, t: u64, pad: &str) -> String {
    format!(r#"{{"r":{room},"s":{seq},"u":{user},"t":{t},"p":"{pad}"}}"#)
}

// ---------------------------------------------------------------------------------------
// Connections

/// One subscription of a connection; survives reconnects.
struct Track {
    room: u32,
    room_id: i64,
    epoch: String,
    /// Offset of the last publication (or of the stream when subscribed).
    offset: u64,
    /// The offset the next publication must have; 0 before the first subscription.
    next: u64,
    offset_gaps: u64,
    offset_backwards: u64,
    seen: Bits,
    dups: u64,
}

impl Track {
    fn result(&self) -> TrackResult {
        TrackResult {
            room: self.room,
            seen: self.seen.clone(),
            dups: self.dups,
            offset_gaps: self.offset_gaps,
            offset_backwards: self.offset_backwards,
        }
    }

    fn on_offset(&mut self, offset: u64) {
        if offset == 0 {
            return; // ephemeral event (typing, receipt, presence): not in the stream
        }
        if self.next != 0 {
            if offset > self.next {
                self.offset_gaps += offset - self.next;
            } else if offset < self.next {
                self.offset_backwards += 1;
            }
        }
        self.next = self.next.max(offset + 1);
        self.offset = self.offset.max(offset);
    }
}

/// A send written to the socket and not acknowledged yet.
struct Pending {
    room: u32,
    seq: u64,
    t: u64,
    /// The `data` of the RPC, kept to send it again (same `client_msg_id`) after a reconnect.
    data: String,
    done: Option<oneshot::Sender<bool>>,
}

/// How a connection comes back after losing its session.
#[derive(Clone, Copy, Debug)]
pub enum Retry {
    /// Not at all.
    Never,
    /// After a random delay within the target's jitter window, backing off on failures.
    Jitter,
    /// Every 20 ms, as long as `attempts` last (the senders of connect-storm).
    Fast { attempts: u32 },
}

/// One chat connection: a user's token, its rooms, and (for senders) a queue of messages.
pub struct ConnSpec {
    pub index: usize,
    /// The user's index (written in the texts it sends).
    pub user: usize,
    pub token: Arc<str>,
    /// Room indices to subscribe to (`room:{id}`).
    pub rooms: Vec<u32>,
    pub retry: Retry,
    /// Counted in `subscribed` / `resubscribed` (the senders of connect-storm are not).
    pub counted: bool,
}

enum Ended {
    Stopped,
    Failed(String),
    Lost,
}

struct Conn {
    run: Arc<ChatRun>,
    spec: ConnSpec,
    tracks: Vec<Track>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    lat: Vec<u64>,
    /// Set-up progress of the current session.
    connected: bool,
    subscribing: usize,
    recovering: bool,
    /// Session number, for the harness (0 = never connected).
    sessions: watch::Sender<u32>,
}

impl Conn {
    fn track_of(&mut self, room_id: i64) -> Option<&mut Track> {
        self.tracks.iter_mut().find(|t| t.room_id == room_id)
    }

    /// A publication of `room_id` (the whole push line, or a publication of a subscribe
    /// reply serialized again). `live`: latency and deliveries are counted.
    fn on_publication(&mut self, room_id: i64, line: &[u8], live: bool, now: u64) {
        let user = self.spec.user as u64;
        let offset = line
            .windows(9)
            .rposition(|w| w == br#""offset":"#)
            .and_then(|p| digits(line, &mut (p + 9)))
            .unwrap_or(0);
        let bench = scan_text(line);
        let run = self.run.clone();
        let Some(track) = self.track_of(room_id) else {
            run.foreign.fetch_add(1, Relaxed);
            return;
        };
        track.on_offset(offset);
        let Some((r, s, u, t)) = bench else { return };
        if r != track.room {
            run.foreign.fetch_add(1, Relaxed);
            return;
        }
        if !track.seen.insert(s) {
            track.dups += 1;
            return;
        }
        if u == user {
            run.own.fetch_add(1, Relaxed);
        } else if live {
            self.lat.push(now.saturating_sub(t));
        } else {
            run.shared.recovered_pubs.fetch_add(1, Relaxed);
        }
    }

    fn on_subscribe_reply(&mut self, j: usize, reply: &Value, now: u64) {
        let shared = self.run.shared.clone();
        let recovering = self.recovering && !self.tracks[j].epoch.is_empty();
        let recovered = reply.get("recovered").and_then(Value::as_bool) == Some(true);
        if recovering {
            if recovered {
                shared.recovered.fetch_add(1, Relaxed);
            } else {
                shared.not_recovered.fetch_add(1, Relaxed);
            }
        }
        let room_id = self.tracks[j].room_id;
        if let Some(publications) = reply.get("publications").and_then(Value::as_array) {
            for p in publications {
                self.on_publication(room_id, p.to_string().as_bytes(), false, now);
            }
        }
        let track = &mut self.tracks[j];
        let offset = reply.get("offset").and_then(Value::as_u64).unwrap_or(0);
        track.epoch = reply.get("epoch").and_then(Value::as_str).unwrap_or("").to_owned();
        if recovering && !recovered {
            // Not recoverable: start again from the stream's position (the lost messages
            // show up as lost).
            track.next = offset + 1;
        } else if track.next != 0 && offset + 1 > track.next {
            track.offset_gaps += offset + 1 - track.next;
            track.next = offset + 1;
        } else if track.next == 0 {
            track.next = offset + 1;
        }
        track.offset = track.offset.max(offset);
    }

    fn on_rpc_reply(&mut self, id: u64, after_id: &str, line: &str, now: u64) {
        let Some(p) = self.pending.remove(&id) else { return };
        let run = &self.run;
        // `{"id":N,"rpc":{"data":{..message..}}}`, or `{"id":N,"error":{..}}`.
        let ok = after_id.starts_with(r#","rpc":"#);
        if ok {
            lock(&run.rooms[p.room as usize].acked).insert(p.seq);
            run.acks.fetch_add(1, Relaxed);
            let _ = lock(&run.ack_latency).record(now.saturating_sub(p.t).max(1));
        } else {
            run.send_error(format!("chat.send refused: {line}"));
        }
        if let Some(done) = p.done {
            let _ = done.send(ok);
        }
    }

    /// Handles one line of a frame; `pong` is set when a ping must be answered.
    fn on_line(&mut self, line: &str, now: u64, pong: &mut bool) -> Result<(), Ended> {
        let b = line.as_bytes();
        if line == "{}" {
            *pong = true;
        } else if line.starts_with(r#"{"push":"#) {
            const ROOM: &[u8] = br#""channel":"room:"#;
            if let Some(p) = find(b, ROOM) {
                let mut i = p + ROOM.len();
                if let Some(room_id) = digits(b, &mut i) {
                    if find(b, br#""pub":"#).is_some() {
                        self.on_publication(room_id as i64, b, true, now);
                    }
                }
            }
        } else if let Some(rest) = line.strip_prefix(r#"{"id":"#) {
            let mut i = 0;
            let id = digits(rest.as_bytes(), &mut i).unwrap_or(0);
            if id == 1 {
                if !line.contains(r#""connect":"#) {
                    return Err(Ended::Failed(format!("connect refused: {line}")));
                }
                self.connected = true;
            } else if id >= 2 && id < 2 + self.tracks.len() as u64 {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| Ended::Failed(format!("bad reply {line}: {e}")))?;
                if let Some(err) = v.get("error") {
                    return Err(Ended::Failed(format!("subscribe refused: {err}")));
                }
                if let Some(reply) = v.get("subscribe") {
                    self.on_subscribe_reply((id - 2) as usize, reply, now);
                    self.subscribing = self.subscribing.saturating_sub(1);
                }
            } else if id >= FIRST_RPC_ID {
                self.on_rpc_reply(id, &rest[i..], line, now);
            }
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str) -> Result<bool, Ended> {
        let now = self.run.shared.now_micros();
        let mut pong = false;
        for line in text.split('\n') {
            self.on_line(line, now, &mut pong)?;
        }
        if !self.lat.is_empty() {
            record_latencies(&self.lat);
            self.run.shared.deliver(self.lat.len() as u64);
            self.lat.clear();
        }
        Ok(pong)
    }

    /// Reads one message and processes it.
    async fn pump(&mut self, ws: &mut Ws, stop: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => return Err(Ended::Stopped),
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                if self.on_text(text.as_str())? {
                    ws.send(Message::text("{}")).await.map_err(|_| Ended::Lost)?;
                }
                Ok(())
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Err(Ended::Lost),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Writes a new send: sequence number and time taken now.
    fn new_send(&mut self, cmd: SendCmd) -> (u64, String) {
        let run = self.run.clone();
        let book = &run.rooms[cmd.room as usize];
        let seq = book.next_seq.fetch_add(1, Relaxed) + 1;
        let t = run.shared.now_micros();
        let body = text(cmd.room, seq, self.spec.user, t, &run.pad);
        let data = format!(
            r#"{{"room_id":{},"text":{},"client_msg_id":"r{}s{seq}"}}"#,
            book.id,
            serde_json::to_string(&body).expect("a string"),
            cmd.room
        );
        let id = self.next_id;
        self.next_id += 1;
        let frame = rpc_frame(id, &data);
        self.pending.insert(id, Pending { room: cmd.room, seq, t, data, done: cmd.done });
        run.sent.fetch_add(1, Relaxed);
        (id, frame)
    }

    async fn session(
        &mut self,
        first: bool,
        cmds: &mut Option<mpsc::UnboundedReceiver<SendCmd>>,
        limit: &Semaphore,
    ) -> Ended {
        let mut stop = self.run.shared.stop.subscribe();
        if *stop.borrow_and_update() {
            return Ended::Stopped;
        }
        let permit = if first { limit.acquire().await.ok() } else { None };
        let setup = tokio::time::timeout(SETUP_TIMEOUT, self.setup(first, &mut stop)).await;
        drop(permit);
        let mut ws = match setup {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return e,
            Err(_) => return Ended::Failed("set-up timed out".into()),
        };
        let shared = self.run.shared.clone();
        if self.spec.counted {
            let counter = if first { &shared.subscribed } else { &shared.resubscribed };
            counter.fetch_add(1, Relaxed);
        }
        self.sessions.send_modify(|n| *n += 1);
        // Sends that got no reply in the last session go again, with the same client_msg_id
        // (the server answers with the message it stored, if it did).
        let again: Vec<(u64, Pending)> = std::mem::take(&mut self.pending).into_iter().collect();
        for (_, p) in again {
            let id = self.next_id;
            self.next_id += 1;
            let frame = rpc_frame(id, &p.data);
            self.pending.insert(id, p);
            self.run.retried.fetch_add(1, Relaxed);
            if ws.send(Message::text(frame)).await.is_err() {
                return Ended::Lost;
            }
        }
        loop {
            let ended = match cmds {
                Some(rx) => tokio::select! {
                    biased;
                    r = self.pump(&mut ws, &mut stop) => r.err(),
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => {
                            let (_, frame) = self.new_send(cmd);
                            ws.send(Message::text(frame)).await.err().map(|_| Ended::Lost)
                        }
                        None => { *cmds = None; None }
                    },
                },
                None => self.pump(&mut ws, &mut stop).await.err(),
            };
            if let Some(e) = ended {
                if matches!(e, Ended::Lost) {
                    let _ = ws.close(None).await;
                }
                return e;
            }
        }
    }

    /// TCP, WebSocket, `connect` with the access token, then every room's subscription
    /// (with recovery from the last position after the first session).
    async fn setup(&mut self, first: bool, stop: &mut watch::Receiver<bool>) -> Result<Ws, Ended> {
        let target = self.run.target.clone();
        let mut ws = open(&target, self.spec.index).await.map_err(Ended::Failed)?;
        self.connected = false;
        let cmd = format!(r#"{{"id":1,"connect":{{"token":"{}","name":"hubbub-bench"}}}}"#, self.spec.token);
        ws.send(Message::text(cmd)).await.map_err(|e| Ended::Failed(format!("send connect: {e}")))?;
        while !self.connected {
            self.pump(&mut ws, stop).await.map_err(during_setup)?;
        }
        if self.tracks.is_empty() {
            return Ok(ws);
        }
        self.recovering = !first;
        let mut frame = String::new();
        for (j, t) in self.tracks.iter().enumerate() {
            if !frame.is_empty() {
                frame.push('\n');
            }
            let id = 2 + j;
            if !first && !t.epoch.is_empty() {
                frame.push_str(&format!(
                    r#"{{"id":{id},"subscribe":{{"channel":"room:{}","recover":true,"offset":{},"epoch":"{}"}}}}"#,
                    t.room_id, t.offset, t.epoch
                ));
            } else {
                frame.push_str(&format!(r#"{{"id":{id},"subscribe":{{"channel":"room:{}"}}}}"#, t.room_id));
            }
        }
        self.subscribing = self.tracks.len();
        ws.send(Message::text(frame)).await.map_err(|e| Ended::Failed(format!("send subscribe: {e}")))?;
        while self.subscribing > 0 {
            self.pump(&mut ws, stop).await.map_err(during_setup)?;
        }
        Ok(ws)
    }
}

fn during_setup(e: Ended) -> Ended {
    match e {
        Ended::Lost => Ended::Failed("connection lost during set-up".into()),
        other => other,
    }
}

fn rpc_frame(id: u64, data: &str) -> String {
    format!(r#"{{"id":{id},"rpc":{{"method":"chat.send","data":{data}}}}}"#)
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A started connection: its queue of messages to send, and its session counter.
pub struct ConnHandle {
    pub sends: mpsc::UnboundedSender<SendCmd>,
    pub sessions: watch::Receiver<u32>,
}

/// Starts one connection task. At most `limit` first set-ups are in flight at once.
pub fn spawn(run: &Arc<ChatRun>, spec: ConnSpec, limit: Arc<Semaphore>) -> ConnHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (sessions, sessions_rx) = watch::channel(0u32);
    let tracks = spec
        .rooms
        .iter()
        .map(|&room| Track {
            room,
            room_id: run.rooms[room as usize].id,
            epoch: String::new(),
            offset: 0,
            next: 0,
            offset_gaps: 0,
            offset_backwards: 0,
            seen: Bits::default(),
            dups: 0,
        })
        .collect();
    let conn = Conn {
        run: run.clone(),
        spec,
        tracks,
        pending: BTreeMap::new(),
        next_id: FIRST_RPC_ID,
        lat: Vec::new(),
        connected: false,
        subscribing: 0,
        recovering: false,
        sessions,
    };
    tokio::spawn(connection(conn, rx, limit));
    ConnHandle { sends: tx, sessions: sessions_rx }
}

async fn connection(mut c: Conn, rx: mpsc::UnboundedReceiver<SendCmd>, limit: Arc<Semaphore>) {
    let shared = c.run.shared.clone();
    let mut cmds = Some(rx);
    let mut stop = shared.stop.subscribe();
    let mut seed = (c.spec.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sessions = 0u32;
    let mut failures = 0u32;
    let attempts = match c.spec.retry {
        Retry::Never => 1,
        Retry::Jitter => 100,
        Retry::Fast { attempts } => attempts,
    };
    for _ in 0..attempts {
        match c.session(sessions == 0, &mut cmds, &limit).await {
            Ended::Stopped => break,
            Ended::Failed(why) => {
                shared.error(format!("chat connection {}: {why}", c.spec.index));
                failures += 1;
            }
            Ended::Lost => {
                shared.lost_connections.fetch_add(1, Relaxed);
                sessions += 1;
                failures = 0;
            }
        }
        if *stop.borrow_and_update() {
            break;
        }
        let window = c.run.target.jitter.as_millis() as u64;
        let delay = match c.spec.retry {
            Retry::Never => break,
            Retry::Fast { .. } => Duration::from_millis(20),
            Retry::Jitter if failures == 0 => Duration::from_millis(xorshift(&mut seed) % window.max(1)),
            Retry::Jitter => {
                let cap = (window.max(50) << failures.min(5)).min(3_000);
                Duration::from_millis(cap / 2 + xorshift(&mut seed) % (cap / 2).max(1))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    // Sends never answered: not acknowledged.
    for (_, p) in std::mem::take(&mut c.pending) {
        if let Some(done) = p.done {
            let _ = done.send(false);
        }
    }
    if let Some(mut rx) = cmds {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Some(done) = cmd.done {
                let _ = done.send(false);
            }
        }
    }
    lock(&c.run.results).extend(c.tracks.iter().map(Track::result));
    shared.finished.fetch_add(1, Relaxed);
}

/// A random room and a random member of it (user index), from `seed`.
pub fn pick(run: &ChatRun, seed: &mut u64) -> (u32, usize) {
    let room = (xorshift(seed) % run.rooms.len() as u64) as usize;
    let members = &run.rooms[room].members;
    let user = members[(xorshift(seed) % members.len() as u64) as usize];
    (room as u32, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_escaped_texts() {
        let t = text(3, 17, 42, 123456, "xx");
        let publication =
            json!({ "data": { "type": "message", "message": { "seq": 9, "text": t } }, "offset": 9 });
        let line = format!(r#"{{"push":{{"channel":"room:5","pub":{publication}}}}}"#);
        assert_eq!(scan_text(line.as_bytes()), Some((3, 17, 42, 123456)));
        assert_eq!(scan_text(br#"{"type":"presence"}"#), None);
    }

    #[test]
    fn bit_sets() {
        let mut a = Bits::default();
        assert!(a.insert(3));
        assert!(!a.insert(3));
        a.insert(200);
        let mut b = Bits::default();
        b.insert(3);
        assert_eq!(a.count_not_in(&b), 1);
        assert_eq!(b.count_not_in(&a), 0);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn offsets_must_follow() {
        let mut t = Track {
            room: 0,
            room_id: 1,
            epoch: String::new(),
            offset: 0,
            next: 5,
            offset_gaps: 0,
            offset_backwards: 0,
            seen: Bits::default(),
            dups: 0,
        };
        for o in [5, 6, 0, 9, 9, 10] {
            t.on_offset(o);
        }
        assert_eq!((t.offset_gaps, t.offset_backwards, t.next), (2, 1, 11));
    }
}
