//! `raw-ws`: the bench's baseline, a WebSocket fan-out server that does nothing but forward
//! pre-encoded frames to the clients of a group. It stands for what this machine can do with
//! tokio and tungstenite when there is no protocol at all: no auth, no JSON, no history.
//!
//! * `GET /<anything>` upgrades to a WebSocket. The client sends `sub <group>` (text), the
//!   server answers `ok <group>`.
//! * `POST /publish/<group>` with a body: the body, unchanged, is sent as one text frame to
//!   every client of the group (answer `200 {}`).
//!
//! Each client has a bounded queue (like Hubbub's outbox); a client whose queue is full is
//! dropped. Prints `raw-ws listening on http://ADDR` once bound.
//!
//! Usage: `raw-ws [--listen 127.0.0.1:0]`

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames queued per client before it counts as too slow.
const QUEUE: usize = 8192;
/// Tungstenite's usual read buffer (Hubbub's is 1 KiB: client frames are small).
const READ_BUFFER: usize = 4096;
/// Frames are written when this much is buffered, or at the flush after the queue is drained.
const WRITE_BATCH: usize = 64 * 1024;

type Groups = Mutex<HashMap<String, HashMap<u64, mpsc::Sender<Utf8Bytes>>>>;

struct State {
    groups: Groups,
    next_id: AtomicU64,
}

fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            _ => {
                eprintln!("usage: raw-ws [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(serve(listen));
}

async fn serve(listen: String) {
    let listener = bind(&listen).unwrap_or_else(|e| {
        eprintln!("raw-ws: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    let addr = listener.local_addr().expect("local addr");
    println!("raw-ws listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let state = Arc::new(State { groups: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) });
    // SIGTERM's default action ends the process: nothing to clean up.
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if is_post(&stream).await {
                http_publish(stream, &state).await;
            } else {
                websocket(stream, &state).await;
            }
        });
    }
}

/// A listening socket with a deep accept queue (tokio's `TcpListener::bind` asks for 128),
/// so that bursts of connections are not dropped and retried a second later.
fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr =
        listen.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Looks at the first bytes without consuming them.
async fn is_post(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 5];
    for _ in 0..100 {
        match stream.peek(&mut buf).await {
            Ok(n) if n >= 5 => return &buf == b"POST ",
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
    false
}

fn lock(
    groups: &Groups,
) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, mpsc::Sender<Utf8Bytes>>>> {
    groups.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keep-alive HTTP/1.1 `POST /publish/<group>` with a Content-Length body.
async fn http_publish(stream: TcpStream, state: &State) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let answer: &[u8] = match (path.strip_prefix("/publish/"), Utf8Bytes::try_from(Bytes::from(body))) {
            (Some(group), Ok(frame)) => {
                let mut groups = lock(&state.groups);
                if let Some(members) = groups.get_mut(group) {
                    // A full queue: the client is too slow; dropping its sender ends it.
                    members.retain(|_, tx| tx.try_send(frame.clone()).is_ok());
                }
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            }
            _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn websocket(stream: TcpStream, state: &State) {
    // Frames fed are buffered and written together at the flush: one write for everything
    // queued, as Hubbub does.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(WRITE_BATCH);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    // Once subscribed, only the groups hold the sender: a client dropped from them for
    // being slow sees its queue close and ends.
    let weak = tx.downgrade();
    let mut own = Some(tx);
    let mut joined: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                // Everything queued goes out in one write.
                if ws.feed(Message::Text(frame)).await.is_err() {
                    break;
                }
                let mut more = 0;
                while more < 1024 {
                    let Ok(frame) = rx.try_recv() else { break };
                    if ws.feed(Message::Text(frame)).await.is_err() {
                        break;
                    }
                    more += 1;
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(group) = text.as_str().strip_prefix("sub ") {
                        let Some(tx) = own.take().or_else(|| weak.upgrade()) else { break };
                        lock(&state.groups).entry(group.to_owned()).or_default().insert(id, tx);
                        joined.push(group.to_owned());
                        if ws.send(Message::Text(format!("ok {group}").into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let mut groups = lock(&state.groups);
    for group in joined {
        if let Some(members) = groups.get_mut(&group) {
            members.remove(&id);
            if members.is_empty() {
                groups.remove(&group);
            }
        }
    }
}
