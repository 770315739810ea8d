//! Graceful shutdown on SIGTERM.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn sigterm_closes_clients_with_3001_and_exits_within_grace() {
    let mut srv = Server::builder().grace("\"3s\"").start();
    let mut a = srv.user("1").await;
    let mut b = srv.user("2").await;
    a.subscribe("c").await;
    b.subscribe("c").await;
    let t0 = Instant::now();
    srv.sigterm();
    a.expect_close(3001, Duration::from_secs(5)).await;
    b.expect_close(3001, Duration::from_secs(5)).await;
    let st = srv.wait_exit(Duration::from_secs(6));
    assert!(st.is_some(), "server still running {:?} after SIGTERM (grace 3s)", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(5), "exit took {:?}, grace is 3s", t0.elapsed());
    eprintln!("exit status after SIGTERM: {:?}", st);
}

#[tokio::test]
async fn sigterm_exits_within_grace_even_with_unresponsive_client() {
    let mut srv = Server::builder().grace("\"2s\"").start();
    let mut stuck = srv.user("1").await; // never reads after this
    stuck.subscribe("c").await;
    let _stuck2 = srv.ws().await; // not even connected at protocol level
                                  // Make sure the server has pending output for the stuck client.
    for i in 0..20 {
        srv.api().publish("c", json!({"i": i})).await;
    }
    let t0 = Instant::now();
    srv.sigterm();
    let st = srv.wait_exit(Duration::from_secs(6));
    assert!(st.is_some(), "server did not exit within 6s of SIGTERM (grace 2s)");
    assert!(t0.elapsed() < Duration::from_secs(4), "exit took {:?}, grace 2s", t0.elapsed());
    // Once exited, nothing listens any more.
    let r = http_client().get(srv.http_url("/health")).send().await;
    assert!(r.is_err(), "still answering HTTP after exit");
    // The stuck client eventually sees the close (3001) or the end of the stream.
    let got = stuck.wait_close(Duration::from_secs(3)).await;
    assert!(matches!(got, Some((3001, _)) | None), "unexpected close for stuck client: {got:?}");
}
