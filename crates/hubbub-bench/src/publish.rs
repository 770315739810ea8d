//! The publisher: HTTP/1.1 keep-alive POSTs to the server under test (Hubbub's
//! `POST /api/publish` with `X-API-Key`; the peers' `POST /publish/<channel>`), either
//! closed-loop (as fast as deliveries keep up, a bounded number of deliveries in flight) or
//! open-loop at a set rate.
//!
//! The HTTP client is a few lines over a `TcpStream` (requests with Content-Length,
//! responses with Content-Length): every server here answers that way, and it costs no
//! dependency.

use crate::client::{payload, Target};
use crate::servers::{Kind, API_KEY};
use crate::stats::Shared;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    line: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient { addr, conn: None, line: String::new() }
    }

    /// One POST; returns the status and the body. On any error the connection is dropped
    /// (and made again by the next call): a request is never sent twice.
    pub async fn post(&mut self, path: &str, headers: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(path, headers, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err("timed out".into())
            }
        }
    }

    async fn exchange(&mut self, path: &str, headers: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected");
        let request = request(self.addr, path, headers, body);
        conn.get_mut().write_all(&request).await.map_err(|e| format!("write: {e}"))?;
        read_response(conn, &mut self.line).await
    }
}

/// A request's bytes: POST with Content-Length.
fn request(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads one response (status line, headers, a Content-Length body).
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    conn: &mut R,
    line: &mut String,
) -> Result<(u16, Vec<u8>), String> {
    line.clear();
    if conn.read_line(line).await.map_err(|e| format!("read: {e}"))? == 0 {
        return Err("connection closed".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        if conn.read_line(line).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed in headers".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or("response without content-length")?;
    let mut answer = vec![0u8; length];
    conn.read_exact(&mut answer).await.map_err(|e| format!("read body: {e}"))?;
    Ok((status, answer))
}

type Answer = Result<(u16, Vec<u8>), String>;

/// HTTP/1.1 pipelining on one keep-alive connection: up to `depth` requests are written
/// before their answers are read, and the answers come back in request order. A server
/// handles a connection's requests one after the other, so a channel's publications stay
/// in order, while the publisher no longer waits a whole round trip per publication (a
/// busy server answers late, and one request at a time would measure that delay instead of
/// the server's throughput). On any error the connection is dropped: the requests in
/// flight are reported failed (never retried), the next request makes a new connection.
pub struct Pipeline<T> {
    addr: SocketAddr,
    depth: usize,
    conn: Option<(tokio::net::tcp::OwnedWriteHalf, tokio::sync::mpsc::Receiver<Answer>)>,
    /// What each request in flight was, oldest first.
    in_flight: std::collections::VecDeque<T>,
}

impl<T> Pipeline<T> {
    pub fn new(addr: SocketAddr, depth: usize) -> Self {
        Pipeline { addr, depth: depth.max(1), conn: None, in_flight: Default::default() }
    }

    /// Sends a request tagged `tag`; when `depth` are in flight, first waits for the oldest
    /// answer. Every answer received (or failure) is handed to `done` with its tag.
    pub async fn send(
        &mut self,
        tag: T,
        path: &str,
        headers: &str,
        body: &[u8],
        done: &mut impl FnMut(T, Answer),
    ) {
        while self.in_flight.len() >= self.depth {
            self.receive_one(done).await;
        }
        if self.conn.is_none() {
            match TcpStream::connect(self.addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    let (tx, rx) = tokio::sync::mpsc::channel(self.depth);
                    tokio::spawn(async move {
                        let mut read = BufReader::new(read);
                        let mut line = String::new();
                        loop {
                            let answer = read_response(&mut read, &mut line).await;
                            let failed = answer.is_err();
                            if tx.send(answer).await.is_err() || failed {
                                break;
                            }
                        }
                    });
                    self.conn = Some((write, rx));
                }
                Err(e) => return done(tag, Err(format!("connect: {e}"))),
            }
        }
        let bytes = request(self.addr, path, headers, body);
        let (write, _) = self.conn.as_mut().expect("connected");
        match write.write_all(&bytes).await {
            Ok(()) => self.in_flight.push_back(tag),
            Err(e) => {
                done(tag, Err(format!("write: {e}")));
                self.fail_all(done, "connection lost");
            }
        }
    }

    /// Waits for every answer still due.
    pub async fn finish(&mut self, done: &mut impl FnMut(T, Answer)) {
        while !self.in_flight.is_empty() {
            self.receive_one(done).await;
        }
    }

    async fn receive_one(&mut self, done: &mut impl FnMut(T, Answer)) {
        let Some((_, rx)) = self.conn.as_mut() else { return self.fail_all(done, "not connected") };
        match tokio::time::timeout(REQUEST_TIMEOUT, rx.recv()).await {
            Ok(Some(Ok(answer))) => {
                let tag = self.in_flight.pop_front().expect("an answer for a request in flight");
                done(tag, Ok(answer));
            }
            Ok(Some(Err(e))) => self.fail_all(done, &e),
            Ok(None) => self.fail_all(done, "connection closed"),
            Err(_) => self.fail_all(done, "timed out"),
        }
    }

    fn fail_all(&mut self, done: &mut impl FnMut(T, Answer), why: &str) {
        self.conn = None;
        for tag in self.in_flight.drain(..) {
            done(tag, Err(why.to_owned()));
        }
    }
}

/// Which publications were made: per channel, the last sequence number handed out, and the
/// ones whose publish failed (never accepted by the server, or unknown).
pub struct Book {
    pub seq: Vec<AtomicU64>,
    pub failed: Mutex<Vec<(u32, u64)>>,
    pub published: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Book {
    pub fn new(channels: u32) -> Arc<Book> {
        Arc::new(Book {
            seq: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            failed: Mutex::new(Vec::new()),
            published: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    fn failed(&self, channel: u32, seq: u64, why: String) {
        self.errors.fetch_add(1, Relaxed);
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).push((channel, seq));
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(why);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Accepted publications of `channel` with a sequence number in `from..=to`.
    fn accepted_in(&self, failed: &[(u32, u64)], channel: u32, from: u64, to: u64) -> u64 {
        if to < from {
            return 0;
        }
        let gone = failed.iter().filter(|&&(c, s)| c == channel && s >= from && s <= to).count() as u64;
        (to - from + 1).saturating_sub(gone)
    }

    /// Lost deliveries: for every subscription, accepted publications of its channel that
    /// it never received (in a gap, or after the last one it got).
    pub fn lost(&self, results: &[crate::stats::SubResult]) -> u64 {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut lost = 0;
        for r in results {
            let top = self.seq.get(r.channel as usize).map(|s| s.load(Relaxed)).unwrap_or(0);
            for &(from, to) in &r.gaps {
                lost += self.accepted_in(&failed, r.channel, from, to);
            }
            lost += self.accepted_in(&failed, r.channel, r.last + 1, top);
        }
        lost
    }
}

/// Everything a publishing task needs.
pub struct Publisher {
    pub target: Arc<Target>,
    pub shared: Arc<Shared>,
    pub book: Arc<Book>,
    pub channels: u32,
    pub pad: String,
    /// Requests in flight per publishing connection (HTTP/1.1 pipelining).
    pub pipeline: usize,
}

/// How a phase publishes.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Keep at most this many deliveries in flight (published but not yet received);
    /// `per_message` deliveries are expected per publication.
    Closed { window: u64, per_message: u64 },
    /// This many publications per second.
    Open { rate: f64 },
}

/// What a phase published.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    pub messages: u64,
    pub elapsed: Duration,
    /// The closed loop waited more than 3 s for deliveries: messages were lost.
    pub stalled: bool,
}

impl Publisher {
    /// Publishing tasks (one pipelined HTTP connection each): each channel belongs to one
    /// task, so that a channel's publications are made one after the other and arrive in
    /// order. Up to 16, so that many channels can keep a server busy.
    fn tasks(&self) -> u64 {
        [16u32, 8, 4, 2, 1].into_iter().find(|&k| self.channels.is_multiple_of(k)).unwrap_or(1) as u64
    }

    /// Publishes the next message of `channel` (answers are handled as they arrive).
    async fn publish(&self, pipe: &mut Pipeline<(u32, u64)>, channel: u32) {
        let seq = self.book.seq[channel as usize].fetch_add(1, Relaxed) + 1;
        let data = payload(channel, seq, self.shared.now_micros(), &self.pad);
        let name = self.target.channel_name(channel);
        let mut done = |tag, answer| self.answered(tag, answer);
        match self.target.kind {
            Kind::Hubbub => {
                let body = format!(r#"{{"channel":"{name}","data":{data}}}"#);
                let headers = format!("x-api-key: {API_KEY}\r\n");
                pipe.send((channel, seq), "/api/publish", &headers, body.as_bytes(), &mut done).await
            }
            _ => pipe.send((channel, seq), &format!("/publish/{name}"), "", data.as_bytes(), &mut done).await,
        }
    }

    /// Books a publish's answer.
    fn answered(&self, (channel, seq): (u32, u64), answer: Result<(u16, Vec<u8>), String>) {
        match answer {
            Ok((200, body)) if self.target.kind != Kind::Hubbub || body.starts_with(br#"{"result""#) => {
                self.book.published.fetch_add(1, Relaxed);
            }
            Ok((status, body)) => {
                self.book.failed(channel, seq, format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(e) => self.book.failed(channel, seq, e),
        }
    }

    /// Publishes for `duration` (message `i` goes to channel `i % channels`).
    pub async fn run(self: &Arc<Self>, mode: Mode, duration: Duration) -> Published {
        let tasks = self.tasks();
        let start = Instant::now();
        let deadline = start + duration;
        let mut handles = Vec::new();
        for k in 0..tasks {
            let me = self.clone();
            handles.push(tokio::spawn(async move {
                let mut pipe = Pipeline::new(me.target.addr, me.pipeline);
                let mut sent = 0u64;
                let mut stalled = false;
                let mut i = k;
                while Instant::now() < deadline {
                    match mode {
                        Mode::Closed { window, per_message } => {
                            let need = ((i + 1) * per_message).saturating_sub(window);
                            if !me.shared.wait_delivered(need).await {
                                stalled = true;
                                break;
                            }
                        }
                        Mode::Open { rate } => {
                            let at = start + Duration::from_secs_f64(i as f64 / rate);
                            if at >= deadline {
                                break;
                            }
                            tokio::time::sleep_until(at.into()).await;
                        }
                    }
                    me.publish(&mut pipe, (i % u64::from(me.channels)) as u32).await;
                    sent += 1;
                    i += tasks;
                }
                pipe.finish(&mut |tag, answer| me.answered(tag, answer)).await;
                (sent, stalled)
            }));
        }
        let mut out = Published::default();
        for h in handles {
            if let Ok((sent, stalled)) = h.await {
                out.messages += sent;
                out.stalled |= stalled;
            }
        }
        out.elapsed = start.elapsed();
        out
    }
}
