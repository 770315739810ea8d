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

fn hubbub(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    let (status, out, err) = run_with_timeout(cmd, Duration::from_secs(20));
    (status.code(), out, err)
}

#[test]
fn genconfig_writes_a_valid_config_once_and_checkconfig_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a.toml");
    let second = dir.path().join("b.toml");
    let (code, _, err) = hubbub(&["genconfig", "--output", first.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    hubbub(&["genconfig", "-o", second.to_str().unwrap()]);
    let text = std::fs::read_to_string(&first).unwrap();
    let secret = |text: &str| {
        let line = text.lines().find(|l| l.starts_with("token_secret")).unwrap().to_string();
        assert!(line.len() > 60, "{line}");
        line
    };
    assert_ne!(secret(&text), secret(&std::fs::read_to_string(&second).unwrap()), "fresh secrets each time");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Never over an existing file.
    let (code, _, err) = hubbub(&["genconfig", "--output", first.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&first).unwrap(), text);

    let (code, out, err) = hubbub(&["checkconfig", "--config", first.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("valid"), "{out}");
    // A bad value: one line naming the key, exit 1.
    let broken = dir.path().join("c.toml");
    std::fs::write(&broken, text.replace("user_connection_limit = 100", "user_connection_limit = \"lots\""))
        .unwrap();
    let (code, _, err) = hubbub(&["checkconfig", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("client.user_connection_limit") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn checktoken_prints_the_claims_or_why_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Server::builder().render(&dir.path().join("data")));
    let config = config.to_str().unwrap();

    let good = jwt(json!({"sub": "42", "info": {"name": "Ann"}, "exp": now() + 60}));
    let (code, out, err) = hubbub(&["checktoken", "--config", config, &good]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"Ann\"") && out.contains("valid: connection token of user \"42\""), "{out}");

    let sub = sub_token("42", "$room");
    let (code, out, _) = hubbub(&["checktoken", "--config", config, &sub]);
    assert_eq!(code, Some(0));
    assert!(out.contains("subscription token of user \"42\" for channel \"$room\""), "{out}");

    for (token, why) in [
        (jwt_with_secret(json!({"sub": "42"}), "another secret"), "InvalidSignature"),
        (jwt(json!({"sub": "42", "exp": now() - 10})), "expired"),
        ("garbage".to_string(), "invalid"),
    ] {
        let (code, out, _) = hubbub(&["checktoken", "--config", config, &token]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("invalid") || out.contains(why), "{why}: {out}");
        assert!(out.contains(why), "{why}: {out}");
    }
}

#[tokio::test]
async fn token_signs_rs256_and_es256_with_claims_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("rsa.pem");
    let ec = dir.path().join("ec.pem");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("the openssl CLI");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa.to_str().unwrap(),
    ]);
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ec.to_str().unwrap()]);
    let rsa_pub = dir.path().join("rsa.pub");
    let ec_pub = dir.path().join("ec.pub");
    openssl(&["pkey", "-in", rsa.to_str().unwrap(), "-pubout", "-out", rsa_pub.to_str().unwrap()]);
    openssl(&["pkey", "-in", ec.to_str().unwrap(), "-pubout", "-out", ec_pub.to_str().unwrap()]);
    let mut builder = Server::builder();
    builder.extra_auth = format!(
        "rsa_public_key = {:?}\necdsa_public_key = {:?}\naudience = \"app\"\n",
        rsa_pub.to_str().unwrap(),
        ec_pub.to_str().unwrap()
    );
    let srv = builder.start();

    let token = srv.cli_token(&[
        "--key",
        rsa.to_str().unwrap(),
        "--user",
        "7",
        "--ttl",
        "10m",
        "--aud",
        "app",
        "--info",
        r#"{"name":"Seven"}"#,
        "--subs",
        r#"{"feed":{"data":{"hello":1}}}"#,
        "--meta",
        r#"{"plan":"gold"}"#,
        "--expire-at",
        "0",
    ]);
    let mut c = srv.ws().await;
    let reply = c.connect(&token).await;
    assert_eq!(reply["subs"]["feed"]["data"], json!({"hello": 1}), "{reply}");
    assert!(reply.get("expires").is_none(), "--expire-at 0: {reply}");

    let ec_token =
        srv.cli_token(&["--key", ec.to_str().unwrap(), "--kid", "e1", "--user", "8", "--aud", "app"]);
    let mut d = srv.ws().await;
    d.connect(&ec_token).await;
    let sub =
        srv.cli_token(&["--key", ec.to_str().unwrap(), "--user", "8", "--aud", "app", "--channel", "$vip"]);
    d.subscribe_with(json!({"channel": "$vip", "token": sub})).await;
    // Without the audience the server wants: refused.
    let no_aud = srv.cli_token(&["--key", rsa.to_str().unwrap(), "--user", "7"]);
    let mut e = srv.ws().await;
    e.send_cmd("connect", json!({"token": no_aud})).await;
    e.expect_close(3500, T).await;
    // And checktoken agrees with the server.
    let config = srv.config_path.to_str().unwrap().to_string();
    let (code, out, _) = hubbub(&["checktoken", "--config", &config, &ec_token]);
    assert_eq!(code, Some(0), "{out}");
}
