//! What a first-time user meets: `hubbub serve` without any configuration keeps the secrets it
//! generates in data_dir (mode 0600), so a restart keeps every token valid; one data_dir is
//! one server (a second one says which folder is locked, by which pid, and exits non-zero).
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A server configured by nothing but its listen address and data_dir: no secret, no API key.
fn bare_server(data_dir: &Path) -> Server {
    Builder { use_config_file: false, ..Builder::default() }
        .env("HUBBUB_LISTEN", "127.0.0.1:0")
        .env("HUBBUB_DATA_DIR", &data_dir.to_string_lossy())
        .start()
}

/// `hubbub token` for a data_dir, without a config file: it signs with the kept secret.
fn token_for(data_dir: &Path, user: &str) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--user", user]).env("HUBBUB_DATA_DIR", data_dir);
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(st.success(), "hubbub token failed: {err}");
    out.lines().last().unwrap().trim().to_owned()
}

fn stop(mut srv: Server) {
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()), "no clean exit");
}

fn kept_secrets(data_dir: &Path) -> toml::Table {
    std::fs::read_to_string(data_dir.join("secrets.toml")).unwrap().parse().unwrap()
}

#[tokio::test]
async fn generated_secrets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let srv = bare_server(&data);
    let file = data.join("secrets.toml");
    let warning = srv.stderr();
    assert!(warning.contains(&file.display().to_string()), "the warning must say where: {warning}");
    let kept = kept_secrets(&data);
    let api_key = kept["api_key"].as_str().unwrap().to_owned();
    assert!(!warning.contains(&api_key), "the log must not hold the secrets: {warning}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "secrets.toml must be readable by its owner only");
    }
    let token = token_for(&data, "42");
    let mut c = srv.ws().await;
    c.connect(&token).await;
    let (st, _) = Api::new(&srv.addr, &api_key).call("info", json!({})).await;
    assert_eq!(st, 200, "the kept api_key must be the server's");
    stop(srv);

    // The same data_dir again: same secrets, so the token made before still connects; a
    // file made readable by others meanwhile is owner-only again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let srv = bare_server(&data);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(kept_secrets(&data), kept, "the secrets must be reused, not generated again");
    let mut c = srv.ws().await;
    c.connect(&token).await;
    let (st, _) = Api::new(&srv.addr, &api_key).call("info", json!({})).await;
    assert_eq!(st, 200, "the api_key must survive the restart");
}

#[test]
fn a_second_server_on_the_same_data_dir_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = bare_server(&data);

    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("HUBBUB_LISTEN", "127.0.0.1:0")
        .env("HUBBUB_DATA_DIR", &data)
        .env("RUST_BACKTRACE", "1");
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(15));
    assert!(!st.success(), "a second server started on a locked data_dir: {out}");
    assert!(!out.contains("hubbub listening on"), "{out}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{err}");
    assert!(lines[0].contains(&data.display().to_string()), "must name the data_dir: {err}");
    assert!(lines[0].contains(&format!("pid {}", first.pid())), "must name the holder's pid: {err}");

    // The first one is untouched, and once it is gone the folder is free again.
    assert!(first.stderr().lines().all(|l| !l.contains("ERROR")), "{}", first.stderr());
    stop(first);
    let again = bare_server(&data);
    stop(again);
}
