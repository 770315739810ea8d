//! The chat scenarios, against Hubbub only (the peers have no accounts, rooms or storage):
//!
//! * `chat`: users, group rooms and members made through the REST API, every user connected
//!   and subscribed to its rooms, then messages sent with the `chat.send` RPC from random
//!   members: a closed loop (a window of messages in flight) finds the highest sustained
//!   rate, then an open loop at a set rate measures latency.
//! * `connect-storm --rooms`: subscribers of `room:{id}` channels, the server restarted on
//!   the same `data_dir`, messages sent by separate sender connections right after it is
//!   back (before the subscribers are), and the subscribers recover from their last offset.

use crate::chat::{self, Account, ChatRun, ConnHandle, ConnSpec, Retry, RoomBook, SendCmd};
use crate::client::Target;
use crate::publish::Mode;
use crate::report::{Column, Fmt};
use crate::scenarios::{block, kib_per, max_ms, ms, note_errors, start, stop_clients, wait_for, Common};
use crate::servers::{hubbub_data_dir, Kind, Nodes, ServerProc};
use crate::stats::{take_latencies, Shared};
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// Parallel HTTP connections for sign-ups, rooms and invitations.
const SETUP_TASKS: usize = 8;

/// `common` with its own work folder (so its own `data_dir`), emptied first.
fn own_work(common: &Common, name: &str) -> Common {
    let mut c = common.clone();
    c.programs.work = c.programs.work.join(name);
    let _ = std::fs::remove_dir_all(&c.programs.work);
    c
}

/// Size of the server's database (with its WAL), MiB.
fn db_mib(common: &Common) -> Option<f64> {
    let dir = hubbub_data_dir(&common.programs);
    let entries = std::fs::read_dir(dir).ok()?;
    let bytes: u64 = entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    Some(bytes as f64 / 1024.0 / 1024.0)
}

fn target(server: &ServerProc, reconnect: bool, jitter: Duration) -> Arc<Target> {
    Arc::new(Target {
        kind: Kind::Hubbub,
        addr: server.addr,
        nodes: Vec::new(),
        namespace: String::new(),
        reconnect,
        jitter,
    })
}

fn user_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}")).collect()
}

// ---------------------------------------------------------------------------------------
// chat

#[derive(Clone, Copy, Debug)]
pub struct ChatShape {
    pub users: usize,
    pub rooms: usize,
    pub members: usize,
    /// Messages per second of the open-loop phase; 0: half the closed loop's rate.
    pub rate: f64,
    pub phase: Duration,
    /// Closed loop: messages in flight (sent, not yet acknowledged).
    pub window: u64,
}

struct ChatPhase {
    sent: u64,
    acked: u64,
    deliveries: u64,
    secs: f64,
    cpu: f64,
    client_cpu: f64,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
    stalled: bool,
}

/// Sends for `duration`, from random members of random rooms, and waits (bounded) for the
/// acknowledgements and deliveries.
async fn chat_phase(
    run: &Arc<ChatRun>,
    users: &Arc<Vec<ConnHandle>>,
    server: &Nodes,
    mode: Mode,
    duration: Duration,
    per_message: u64,
    seed: u64,
) -> ChatPhase {
    let shared = &run.shared;
    shared.delivered.store(0, Relaxed);
    run.acks.store(0, Relaxed);
    let _ = take_latencies();
    let _ = run.take_ack_latencies();
    let cpu0 = server.cpu_seconds();
    let me = std::process::id();
    let client0 = crate::sys::cpu_seconds(me).unwrap_or(0.0);
    let start = Instant::now();
    let deadline = start + duration;
    let mut sent = 0u64;
    let mut stalled = false;
    match mode {
        Mode::Open { rate } => {
            let mut seed = seed | 1;
            for i in 0u64.. {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (room, user) = chat::pick(run, &mut seed);
                let _ = users[user].sends.send(SendCmd { room, done: None });
                sent += 1;
            }
        }
        Mode::Closed { window, per_message } => {
            let mut lanes = Vec::new();
            for lane in 0..window {
                let run = run.clone();
                let users = users.clone();
                lanes.push(tokio::spawn(async move {
                    let mut seed = (seed ^ (lane + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
                    let (mut sent, mut stalled) = (0u64, false);
                    while Instant::now() < deadline {
                        let need = run.acks.load(Relaxed).saturating_sub(window) * per_message;
                        if !run.shared.wait_delivered(need).await {
                            stalled = true;
                            break;
                        }
                        let (room, user) = chat::pick(&run, &mut seed);
                        let (done, acked) = oneshot::channel();
                        let _ = users[user].sends.send(SendCmd { room, done: Some(done) });
                        sent += 1;
                        if tokio::time::timeout(Duration::from_secs(10), acked).await.is_err() {
                            stalled = true;
                            break;
                        }
                    }
                    (sent, stalled)
                }));
            }
            for lane in lanes {
                if let Ok((s, st)) = lane.await {
                    sent += s;
                    stalled |= st;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let acked_at_end = run.acks.load(Relaxed);
    let delivered_at_end = shared.delivered.load(Relaxed);
    let cpu1 = server.cpu_seconds();
    let client1 = crate::sys::cpu_seconds(me).unwrap_or(0.0);
    wait_for(Duration::from_secs(5), || {
        let acked = run.acks.load(Relaxed);
        acked + run.send_errors.load(Relaxed) >= sent && shared.delivered.load(Relaxed) >= acked * per_message
    })
    .await;
    let closed = matches!(mode, Mode::Closed { .. });
    ChatPhase {
        sent,
        // Closed loop: what was done while sending; open loop: everything sent.
        acked: if closed { acked_at_end } else { run.acks.load(Relaxed) },
        deliveries: if closed { delivered_at_end } else { shared.delivered.load(Relaxed) },
        secs,
        cpu: cpu1 - cpu0,
        client_cpu: client1 - client0,
        latency: take_latencies(),
        ack_latency: run.take_ack_latencies(),
        stalled,
    }
}

fn phase_rows(col: &mut Column, p: &ChatPhase, label: &str, main: bool) {
    let better = |l: &str, hint: &str| if main { format!("{l} ({hint})") } else { l.to_owned() };
    col.metric(&format!("{label}: messages sent/s"), Some(p.sent as f64 / p.secs), Fmt::Int);
    col.metric(
        &better(&format!("{label}: messages stored (acknowledged)/s"), "higher is better"),
        Some(p.acked as f64 / p.secs),
        Fmt::Int,
    );
    col.metric(
        &format!("{label}: deliveries/s (to the other members)"),
        Some(p.deliveries as f64 / p.secs),
        Fmt::Int,
    );
    col.metric(&format!("{label}: server CPU, % of one core"), Some(p.cpu / p.secs * 100.0), Fmt::Int);
    col.plain(
        &format!("{label}: load generator CPU, % of one core"),
        Some(p.client_cpu / p.secs * 100.0),
        Fmt::Int,
    );
    col.metric(
        &format!("{label}: server CPU per stored message, µs"),
        (p.acked > 0).then(|| p.cpu * 1e6 / p.acked as f64),
        Fmt::Int,
    );
    col.metric(&format!("{label}: send → delivery p50, ms"), ms(&p.latency, 0.5), Fmt::Dec(2));
    col.metric(&format!("{label}: send → delivery p99, ms"), ms(&p.latency, 0.99), Fmt::Dec(2));
    col.metric(&format!("{label}: send → delivery p99.9, ms"), ms(&p.latency, 0.999), Fmt::Dec(2));
    col.metric(&format!("{label}: send → delivery max, ms"), max_ms(&p.latency), Fmt::Dec(2));
    col.metric(&format!("{label}: send → ack p50, ms"), ms(&p.ack_latency, 0.5), Fmt::Dec(2));
    col.metric(&format!("{label}: send → ack p99, ms"), ms(&p.ack_latency, 0.99), Fmt::Dec(2));
    col.metric(&format!("{label}: send → ack p99.9, ms"), ms(&p.ack_latency, 0.999), Fmt::Dec(2));
}

pub async fn chat(common: &Common, shape: ChatShape) -> Column {
    let common = own_work(common, "chat");
    match start(Kind::Hubbub, &common, 0).await {
        Ok(server) => chat_on(Nodes::one(server), &common, shape).await,
        Err(e) => {
            let mut col = Column::default();
            col.notes.push(e);
            col
        }
    }
}

/// The chat workload on running servers: set-up requests to the first node, user `u`
/// connected to node `u % nodes` (so members of one room sit on different nodes).
pub async fn chat_on(server: Nodes, common: &Common, shape: ChatShape) -> Column {
    let mut col = Column::default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_start = server.rss_kib();
    let (n, r) = (shape.users.max(2), shape.rooms.max(1));
    let m = shape.members.clamp(2, n);
    // Room `i` has users `i*M .. i*M+M` (mod N); its first member owns it.
    let members: Vec<Vec<usize>> = (0..r).map(|i| (0..m).map(|j| (i * m + j) % n).collect()).collect();
    let t = Instant::now();
    let accounts = match chat::signup_all(server.addr(), &user_names(n), SETUP_TASKS).await {
        Ok(a) => a,
        Err(e) => {
            col.notes.push(format!("sign-up failed: {e}"));
            return col;
        }
    };
    let t_signup = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let owners: Vec<&Account> = members.iter().map(|ms| &accounts[ms[0]]).collect();
    let room_ids = match chat::create_rooms(server.addr(), &owners, SETUP_TASKS).await {
        Ok(ids) => ids,
        Err(e) => {
            col.notes.push(format!("room creation failed: {e}"));
            return col;
        }
    };
    let invites: Vec<(i64, &Account, &Account)> = members
        .iter()
        .zip(&room_ids)
        .flat_map(|(ms, &id)| {
            let accounts = &accounts;
            ms[1..].iter().map(move |&u| (id, &accounts[ms[0]], &accounts[u]))
        })
        .collect();
    if let Err(e) = chat::invite_all(server.addr(), &invites, SETUP_TASKS).await {
        col.notes.push(format!("invitations failed: {e}"));
        return col;
    }
    let t_rooms = t.elapsed().as_secs_f64();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = server.rss_kib();
    let shared = Shared::new(true);
    let rooms: Vec<RoomBook> =
        room_ids.iter().zip(&members).map(|(&id, ms)| RoomBook::new(id, ms.clone())).collect();
    let run = ChatRun::new(
        shared.clone(),
        Arc::new(Target {
            kind: Kind::Hubbub,
            addr: server.addr(),
            nodes: server.addrs(),
            namespace: String::new(),
            reconnect: false,
            jitter: Duration::ZERO,
        }),
        rooms,
        "x".repeat(common.payload),
    );
    let limit = Arc::new(Semaphore::new(common.concurrency.max(1)));
    let t = Instant::now();
    let users: Vec<ConnHandle> = (0..n)
        .map(|u| {
            let rooms = (0..r).filter(|&i| members[i].contains(&u)).map(|i| i as u32).collect();
            let token = accounts[u].token.as_str().into();
            chat::spawn(
                &run,
                ConnSpec { index: u, user: u, token, rooms, retry: Retry::Never, counted: true },
                limit.clone(),
            )
        })
        .collect();
    let users = Arc::new(users);
    wait_for(Duration::from_secs(300), || {
        shared.subscribed.load(Relaxed) + shared.setup_errors.load(Relaxed) >= n as u64
    })
    .await;
    let t_connect = t.elapsed().as_secs_f64();
    let subscribed = shared.subscribed.load(Relaxed);
    // Presence announcements of everyone coming online settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = server.rss_kib();

    let per_message = (m - 1) as u64;
    let closed = Mode::Closed { window: shape.window.max(1), per_message };
    let _ =
        chat_phase(&run, &users, &server, closed, shape.phase.min(Duration::from_secs(1)), per_message, 1)
            .await;
    let max = chat_phase(&run, &users, &server, closed, shape.phase, per_message, 2).await;
    let max_rate = max.acked as f64 / max.secs;
    let rate = if shape.rate > 0.0 { shape.rate } else { max_rate / 2.0 };
    let fixed = if rate > 0.0 {
        Some(chat_phase(&run, &users, &server, Mode::Open { rate }, shape.phase, per_message, 3).await)
    } else {
        None
    };
    let rss2 = server.rss_kib();
    let lost_connections = shared.lost_connections.load(Relaxed);
    stop_clients(&shared, n as u64).await;
    let results = std::mem::take(&mut *run.results.lock().unwrap_or_else(|p| p.into_inner()));
    let (lost, unacked) = run.lost_and_unacked(&results);
    let dups: u64 = results.iter().map(|r| r.dups).sum();
    let gaps: u64 = results.iter().map(|r| r.offset_gaps).sum();
    let backwards: u64 = results.iter().map(|r| r.offset_backwards).sum();
    note_errors(&mut col, &shared);
    if let Some(e) = run.first_send_error() {
        col.notes.push(format!("{} sends refused, first: {e}", run.send_errors.load(Relaxed)));
    }
    if max.stalled {
        col.notes
            .push("closed loop stalled (no acknowledgement for 10 s, or deliveries stopped for 3 s)".into());
    }
    let stop_secs = block(|| server.stop(Duration::from_secs(15))).as_secs_f64();
    let db = db_mib(common);

    col.plain("users (one connection each)", Some(n as f64), Fmt::Int);
    col.plain("rooms", Some(r as f64), Fmt::Int);
    col.plain("members per room", Some(m as f64), Fmt::Int);
    col.plain("connections subscribed (to all their rooms)", Some(subscribed as f64), Fmt::Int);
    col.metric("sign-ups/s (argon2id)", Some(n as f64 / t_signup), Fmt::Int);
    col.plain("server RSS at start, MiB", Some(rss_start as f64 / 1024.0), Fmt::Dec(1));
    col.plain(
        "server RSS after sign-ups, rooms and invitations, MiB",
        Some(rss0 as f64 / 1024.0),
        Fmt::Dec(1),
    );
    col.metric("rooms and invitations, s", Some(t_rooms), Fmt::Dec(2));
    col.metric(
        "connection set-up rate (incl. subscriptions), conn/s",
        Some(subscribed as f64 / t_connect),
        Fmt::Int,
    );
    col.metric(
        "memory per connection (subscribed), KiB",
        kib_per(rss1 as i64 - rss0 as i64, subscribed),
        Fmt::Dec(2),
    );
    phase_rows(&mut col, &max, "max", true);
    col.plain("open loop: messages/s asked", Some(rate), Fmt::Int);
    if let Some(p) = &fixed {
        phase_rows(&mut col, p, "open loop", false);
    }
    col.plain("server RSS at the end, MiB", Some(rss2 as f64 / 1024.0), Fmt::Dec(1));
    col.plain("database size at the end, MiB", db, Fmt::Dec(1));
    col.plain("server shutdown (SIGTERM → exit), s", Some(stop_secs), Fmt::Dec(2));
    col.plain("messages sent (all phases)", Some(run.sent.load(Relaxed) as f64), Fmt::Int);
    col.plain("messages acknowledged", Some(run.acked_total() as f64), Fmt::Int);
    col.plain(
        "sends refused or unanswered",
        Some((run.sent.load(Relaxed) - run.acked_total()) as f64),
        Fmt::Int,
    );
    col.plain("lost deliveries (acknowledged, never received)", Some(lost as f64), Fmt::Int);
    col.plain("duplicated deliveries", Some(dups as f64), Fmt::Int);
    col.plain("offset gaps (publications skipped)", Some(gaps as f64), Fmt::Int);
    col.plain("offsets out of order", Some(backwards as f64), Fmt::Int);
    col.plain("received, never acknowledged", Some(unacked as f64), Fmt::Int);
    col.plain("connections lost", Some(lost_connections as f64), Fmt::Int);
    col.plain("set-up errors", Some(shared.setup_errors.load(Relaxed) as f64), Fmt::Int);
    col
}

// ---------------------------------------------------------------------------------------
// connect-storm on rooms

#[derive(Clone, Copy, Debug)]
pub struct RoomStorm {
    pub connections: u64,
    pub rooms: usize,
    pub users: usize,
    /// Messages per second, all along (queued by the senders while the server is down).
    pub rate: f64,
    pub jitter: Duration,
    /// Sender connections (the rooms' owner, subscribed to nothing).
    pub senders: usize,
}

pub async fn connect_storm_rooms(common: &Common, storm: RoomStorm) -> Column {
    let mut col = Column::default();
    let common = own_work(common, "storm-rooms");
    let server = match start(Kind::Hubbub, &common, 0).await {
        Ok(s) => s,
        Err(e) => {
            col.notes.push(e);
            return col;
        }
    };
    let port = server.addr.port();
    let (r, s) = (storm.rooms.max(1), storm.senders.max(1));
    let u = storm.users.max(r);
    let n = storm.connections.max(u as u64);
    // The owner ("sender") is user index `u`; user `i` is a member of room `i % R`.
    let mut names = user_names(u);
    names.push("sender".into());
    let accounts = match chat::signup_all(server.addr, &names, SETUP_TASKS).await {
        Ok(a) => a,
        Err(e) => {
            col.notes.push(format!("sign-up failed: {e}"));
            return col;
        }
    };
    let owner = &accounts[u];
    let room_ids = match chat::create_rooms(server.addr, &vec![owner; r], SETUP_TASKS).await {
        Ok(ids) => ids,
        Err(e) => {
            col.notes.push(format!("room creation failed: {e}"));
            return col;
        }
    };
    let invites: Vec<(i64, &Account, &Account)> =
        (0..u).map(|i| (room_ids[i % r], owner, &accounts[i])).collect();
    if let Err(e) = chat::invite_all(server.addr, &invites, SETUP_TASKS).await {
        col.notes.push(format!("invitations failed: {e}"));
        return col;
    }

    let shared = Shared::new(true);
    let rooms: Vec<RoomBook> =
        room_ids.iter().enumerate().map(|(i, &id)| RoomBook::new(id, (i..u).step_by(r).collect())).collect();
    let run =
        ChatRun::new(shared.clone(), target(&server, true, storm.jitter), rooms, "x".repeat(common.payload));
    let limit = Arc::new(Semaphore::new(common.concurrency.max(1)));
    for i in 0..n as usize {
        let user = i % u;
        let spec = ConnSpec {
            index: i,
            user,
            token: accounts[user].token.as_str().into(),
            rooms: vec![(user % r) as u32],
            retry: Retry::Jitter,
            counted: true,
        };
        let _ = chat::spawn(&run, spec, limit.clone());
    }
    let senders: Vec<ConnHandle> = (0..s)
        .map(|k| {
            let spec = ConnSpec {
                index: n as usize + k,
                user: u,
                token: owner.token.as_str().into(),
                rooms: Vec::new(),
                retry: Retry::Fast { attempts: 1000 },
                counted: false,
            };
            chat::spawn(&run, spec, Arc::new(Semaphore::new(1)))
        })
        .collect();
    let senders = Arc::new(senders);
    wait_for(Duration::from_secs(300), || {
        shared.subscribed.load(Relaxed) + shared.setup_errors.load(Relaxed) >= n
            && senders.iter().all(|h| *h.sessions.borrow() >= 1)
    })
    .await;
    let subscribed = shared.subscribed.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Messages all along, round-robin over the rooms and the senders; while a sender is
    // away they wait in its queue and go out as soon as it is back.
    let (send_stop, send_stopped) = tokio::sync::watch::channel(false);
    let background = {
        let senders = senders.clone();
        let rate = storm.rate;
        tokio::spawn(async move {
            let start = Instant::now();
            let limit = Duration::from_secs(600);
            for i in 0u64.. {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if *send_stopped.borrow() || at - start > limit {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let room = (i % r as u64) as u32;
                let _ = senders[(i % s as u64) as usize].sends.send(SendCmd { room, done: None });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The restart: SIGTERM (graceful shutdown), then the same binary on the same port and
    // the same data_dir.
    let acks_before = run.acks.load(Relaxed);
    let t0 = Instant::now();
    let stop_secs = block(|| server.stop(Duration::from_secs(15))).as_secs_f64();
    let restarted = start(Kind::Hubbub, &common, port).await;
    let t_listen = t0.elapsed().as_secs_f64();
    let server = match restarted {
        Ok(s) => s,
        Err(e) => {
            col.notes.push(format!("restart failed: {e}"));
            let _ = send_stop.send(true);
            let _ = background.await;
            stop_clients(&shared, n + s as u64).await;
            return col;
        }
    };
    // As soon as the senders are back: one message to every room.
    wait_for(Duration::from_secs(20), || senders.iter().all(|h| *h.sessions.borrow() >= 2)).await;
    let t_senders = t0.elapsed().as_secs_f64();
    let back_at_burst = shared.resubscribed.load(Relaxed);
    let mut burst = Vec::new();
    for room in 0..r {
        let (done, acked) = oneshot::channel();
        let _ = senders[room % s].sends.send(SendCmd { room: room as u32, done: Some(done) });
        burst.push(acked);
    }
    let mut burst_acked = 0u64;
    let burst_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for acked in burst {
        if let Ok(Ok(true)) = tokio::time::timeout_at(burst_deadline, acked).await {
            burst_acked += 1;
        }
    }
    let t_burst = t0.elapsed().as_secs_f64();
    let back_at_burst_stored = shared.resubscribed.load(Relaxed);
    let all_back =
        wait_for(Duration::from_secs(120), || shared.resubscribed.load(Relaxed) >= subscribed).await;
    let t_all = t0.elapsed().as_secs_f64();
    let back = shared.resubscribed.load(Relaxed);
    let acks_during = run.acks.load(Relaxed) - acks_before;
    // Keep sending a little: everything from now on must arrive live.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = send_stop.send(true);
    let _ = background.await;
    wait_for(Duration::from_secs(10), || {
        run.acks.load(Relaxed) + run.send_errors.load(Relaxed) >= run.sent.load(Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_clients(&shared, n + s as u64).await;
    let results = std::mem::take(&mut *run.results.lock().unwrap_or_else(|p| p.into_inner()));
    let (lost, unacked) = run.lost_and_unacked(&results);
    let dups: u64 = results.iter().map(|r| r.dups).sum();
    let gaps: u64 = results.iter().map(|r| r.offset_gaps).sum();
    let backwards: u64 = results.iter().map(|r| r.offset_backwards).sum();
    note_errors(&mut col, &shared);
    if let Some(e) = run.first_send_error() {
        col.notes.push(format!("{} sends refused, first: {e}", run.send_errors.load(Relaxed)));
    }
    if !all_back {
        col.notes.push(format!("only {back} of {subscribed} connections came back within 120 s"));
    }
    block(|| server.stop(Duration::from_secs(15)));

    col.plain("users (members, one room each)", Some(u as f64), Fmt::Int);
    col.plain("rooms", Some(r as f64), Fmt::Int);
    col.plain("sender connections (rooms' owner, not subscribed)", Some(s as f64), Fmt::Int);
    col.plain("connections subscribed before the restart", Some(subscribed as f64), Fmt::Int);
    col.plain("connections back after the restart", Some(back as f64), Fmt::Int);
    col.metric("old server's shutdown, s", Some(stop_secs), Fmt::Dec(2));
    col.metric("server down (SIGTERM → listening again), s", Some(t_listen), Fmt::Dec(2));
    col.metric("senders back (SIGTERM → connected), s", Some(t_senders), Fmt::Dec(2));
    col.metric("one message per room stored (SIGTERM → all acknowledged), s", Some(t_burst), Fmt::Dec(2));
    col.plain("  of them acknowledged", Some(burst_acked as f64), Fmt::Int);
    col.plain("connections back when that burst was sent", Some(back_at_burst as f64), Fmt::Int);
    col.plain("connections back when it was all stored", Some(back_at_burst_stored as f64), Fmt::Int);
    crate::scenarios::storm_rows(&mut col, &shared, back, t_listen, t_all);
    col.plain(
        "messages recovered in subscribe replies (deliveries)",
        Some(shared.recovered_pubs.load(Relaxed) as f64),
        Fmt::Int,
    );
    col.plain("messages sent", Some(run.sent.load(Relaxed) as f64), Fmt::Int);
    col.plain("messages acknowledged (stored)", Some(run.acked_total() as f64), Fmt::Int);
    col.plain("  acknowledged between SIGTERM and everyone back", Some(acks_during as f64), Fmt::Int);
    col.plain(
        "sends repeated after a reconnect (same client_msg_id)",
        Some(run.retried.load(Relaxed) as f64),
        Fmt::Int,
    );
    col.plain("sends refused", Some(run.send_errors.load(Relaxed) as f64), Fmt::Int);
    col.plain("live deliveries received", Some(shared.delivered.load(Relaxed) as f64), Fmt::Int);
    col.plain("lost deliveries (acknowledged, never received)", Some(lost as f64), Fmt::Int);
    col.plain("duplicated deliveries", Some(dups as f64), Fmt::Int);
    col.plain("offset gaps (publications skipped)", Some(gaps as f64), Fmt::Int);
    col.plain("offsets out of order", Some(backwards as f64), Fmt::Int);
    col.plain("received, never acknowledged", Some(unacked as f64), Fmt::Int);
    col
}
