//! The command line: `hubbub bench` finds `hubbub-bench` beside itself and `--help` works
//! without it; `hubbub token --channels` makes the token the unidirectional transports need.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A copy of the binary alone in a folder (no hubbub-bench beside it).
fn lone_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let exe = dir.join("hubbub");
    std::fs::copy(BIN, &exe).unwrap();
    exe
}

#[test]
fn bench_help_works_without_hubbub_bench() {
    let dir = tempfile::tempdir().unwrap();
    let exe = lone_binary(dir.path());
    for args in [&["bench", "--help"][..], &["bench", "fanout", "--help"], &["bench"]] {
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(10));
        assert!(st.success(), "hubbub {args:?} failed: {err}");
        assert!(out.contains("fanout") && out.contains("cargo build --release -p hubbub-bench"), "{out}");
    }
    // Without --help, a missing hubbub-bench is one line that says how to build it.
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "fanout"]).env("RUST_BACKTRACE", "1");
    let (st, _, err) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cargo build --release -p hubbub-bench"), "{err}");
}

#[cfg(unix)]
#[test]
fn bench_passes_its_arguments_and_status_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = lone_binary(dir.path());
    let bench = dir.path().join("hubbub-bench");
    std::fs::write(&bench, "#!/bin/sh\necho \"bench got: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&bench, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "fanout", "--help"]);
    let (st, out, _) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(3));
    assert_eq!(out.trim(), "bench got: fanout --help");
}

#[tokio::test]
async fn token_channels_subscribes_a_uni_sse_connection() {
    let srv = Server::new();
    let token = srv.cli_token(&["--user", "7", "--channels", "news,sport"]);
    let claims = decode_jwt(&token);
    assert_eq!(claims["channels"], json!(["news", "sport"]), "{claims}");
    let mut c = srv.ws().await;
    let reply = c.connect(&token).await;
    assert!(reply["subs"].get("news").is_some() && reply["subs"].get("sport").is_some(), "{reply}");
}
