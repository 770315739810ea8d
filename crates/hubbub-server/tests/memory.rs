//! Memory per connection, measured on the real server process (`/proc/<pid>/status`): the
//! bench's target (< 8 KiB per idle WebSocket connection) kept as a regression test, since a
//! buffer kept alive per connection is invisible to every functional test. The bench
//! (`bench/run.sh`, `hubbub-bench idle`) measures the release build at 20,000 connections;
//! this runs the debug build at 2,000. Linux only (`/proc`).
#![cfg(all(target_os = "linux", target_env = "gnu"))]
mod common;

use common::*;
use std::time::Duration;

/// Raises this process's open-files limit to its hard limit: every client takes a descriptor
/// here and one in the server, which is started afterwards and inherits the limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a valid, exclusively borrowed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Opens `n` connected WebSocket clients.
async fn open(srv: &Server, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(srv.user(&format!("u{i}")).await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_idle_connection_stays_under_8_kib() {
    const N: usize = 2000;
    raise_fd_limit();
    let srv = Server::new();
    // Warm-up: the allocator's arenas, the hub's maps and the runtime's first buffers.
    let warm = open(&srv, 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = srv.rss_kib();
    let idle = open(&srv, N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = srv.rss_kib();
    let per = after.saturating_sub(before) as f64 / N as f64;
    eprintln!("server RSS {before} → {after} KiB for {N} connections: {per:.2} KiB each");
    assert!(per < 8.0, "{per:.2} KiB of server RSS per idle connection (target < 8)");
    drop((warm, idle));
}
