//! Connection and subscription tokens of every kind against the real server: HS256 with the
//! secret, RS256 and ES256 from PEM files (keys made by the `openssl` CLI here), RS256 and
//! ES256 from a JWKS endpoint (a real HTTP server in the test, its keys rotated), `aud` and
//! `iss` checks, and each way a token fails: bad signature, wrong audience or issuer,
//! expired, unknown key id, the JWKS endpoint down. Also the claims a token grants (`info`,
//! `b64info`, `channels`, `subs`, `meta`, `expire_at`), the personal channel and insecure mode.
mod common;

use base64::Engine;
use common::*;
use hubbub_core::auth::{keys::sign_key_from_pem, sign_with_key};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `openssl ARGS`, panicking with its stderr on failure; returns stdout.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("the openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A key pair made by openssl: the private key's PEM file and the public key's.
struct KeyPair {
    private: PathBuf,
    public: PathBuf,
}

impl KeyPair {
    fn rsa(dir: &Path, name: &str) -> KeyPair {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let p = private.to_str().unwrap();
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p]);
        openssl(&["pkey", "-in", p, "-pubout", "-out", public.to_str().unwrap()]);
        KeyPair { private, public }
    }

    /// P-256; `sec1`: the private key as `EC PRIVATE KEY` (what `openssl ecparam` writes).
    fn ec(dir: &Path, name: &str, sec1: bool) -> KeyPair {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let p = private.to_str().unwrap();
        if sec1 {
            openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p]);
        } else {
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p]);
        }
        openssl(&["pkey", "-in", p, "-pubout", "-out", public.to_str().unwrap()]);
        KeyPair { private, public }
    }

    fn sign(&self, kid: Option<&str>, claims: Value) -> String {
        let key = sign_key_from_pem(&std::fs::read_to_string(&self.private).unwrap()).unwrap();
        sign_with_key(&key, kid, &claims).unwrap()
    }

    /// The public key as a JWK with key id `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let public = self.public.to_str().unwrap();
        let der = openssl(&["pkey", "-pubin", "-in", public, "-outform", "DER"]);
        let text = String::from_utf8(openssl(&["pkey", "-pubin", "-in", public, "-noout", "-text"])).unwrap();
        if text.contains("ASN1 OID") || text.contains("NIST CURVE") {
            // An uncompressed P-256 point ends the SubjectPublicKeyInfo: 0x04 || x || y.
            let point = &der[der.len() - 64..];
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                   "x": b64(&point[..32]), "y": b64(&point[32..])})
        } else {
            let modulus =
                String::from_utf8(openssl(&["rsa", "-pubin", "-in", public, "-noout", "-modulus"])).unwrap();
            let hex = modulus.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&n), "e": "AQAB"})
        }
    }
}

/// A JWKS endpoint: a tiny HTTP/1.1 server answering every request with the current
/// document, counting requests.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Value>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let document = Arc::new(Mutex::new(json!({ "keys": keys })));
        let requests = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer { url, document, requests, task }
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.document.lock().unwrap() = json!({ "keys": keys });
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

fn with_auth(extra: &str) -> Builder {
    let mut builder = Server::builder();
    builder.extra_auth = extra.to_string();
    builder
}

/// Connects with `token` and expects the close code `code`.
async fn refused_with_close(srv: &Server, token: &str, code: u16) {
    let mut c = srv.ws().await;
    c.send_cmd("connect", json!({ "token": token })).await;
    c.expect_close(code, T).await;
}

#[tokio::test]
async fn rs256_and_es256_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    let ec = KeyPair::ec(dir.path(), "ec", false);
    let ec_sec1 = KeyPair::ec(dir.path(), "ec1", true);
    let other_rsa = KeyPair::rsa(dir.path(), "other");
    // The RSA key as a file's path, the EC key as PEM text in the config.
    let ec_text = std::fs::read_to_string(&ec.public).unwrap();
    let srv = with_auth(&format!(
        "rsa_public_key = {}\necdsa_public_key = \"\"\"\n{ec_text}\"\"\"\n",
        toml_path(&rsa.public)
    ))
    .start();

    let mut c = srv.ws().await;
    assert!(c.connect(&rsa.sign(None, json!({"sub": "42"}))).await["client"].is_string());
    let mut c = srv.ws().await;
    c.connect(&ec.sign(None, json!({"sub": "43", "exp": now() + 60}))).await;
    // HS256 with the secret still works beside them.
    let mut c = srv.ws().await;
    c.connect(&token("44")).await;

    // Bad signature: another RSA key; an EC key the server does not have.
    refused_with_close(&srv, &other_rsa.sign(None, json!({"sub": "42"})), 3500).await;
    refused_with_close(&srv, &ec_sec1.sign(None, json!({"sub": "42"})), 3500).await;
    // Expired: error 109, the client refreshes.
    let mut c = srv.ws().await;
    assert_eq!(
        c.err("connect", json!({"token": rsa.sign(None, json!({"sub": "1", "exp": now() - 5}))})).await,
        109
    );

    // Subscription tokens signed with RSA: a private channel, with info and expire_at.
    let mut c = srv.ws().await;
    c.connect(&rsa.sign(None, json!({"sub": "42"}))).await;
    let sub = rsa.sign(
        None,
        json!({"sub": "42", "channel": "$vip", "info": {"seat": 7}, "exp": now() + 5, "expire_at": now() + 3600}),
    );
    let reply = c.subscribe_with(json!({"channel": "$vip", "token": sub})).await;
    assert!(num(&reply, "ttl") > 3000, "expire_at wins over exp: {reply}");
    let presence = c.ok("presence", json!({"channel": "$vip"})).await;
    assert!(presence.to_string().contains("\"seat\":7"), "{presence}");
    let forged = other_rsa.sign(None, json!({"sub": "42", "channel": "$other"}));
    assert_eq!(c.err("subscribe", json!({"channel": "$other", "token": forged})).await, 103);
}

#[tokio::test]
async fn a_bad_key_setting_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ec = KeyPair::ec(dir.path(), "ec", false);
    for (extra, key) in [
        (format!("rsa_public_key = {}\n", toml_path(&ec.public)), "auth.rsa_public_key"),
        ("ecdsa_public_key = \"/nonexistent/key.pem\"\n".to_string(), "auth.ecdsa_public_key"),
        ("jwks_public_endpoint = \"ftp://idp/jwks\"\n".to_string(), "auth.jwks_public_endpoint"),
        ("jwks_refetch_interval = \"10ms\"\n".to_string(), "auth.jwks_refetch_interval"),
    ] {
        let mut builder = with_auth(&extra);
        builder.namespaces = Vec::new();
        let config = write_config(dir.path(), &builder.render(&dir.path().join("data")));
        let mut cmd = Command::new(BIN);
        cmd.arg("checkconfig").arg("--config").arg(&config);
        let (status, _, err) = run_with_timeout(cmd, Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{extra}: {err}");
        assert!(err.contains(key) && err.lines().count() == 1, "{extra}: {err}");
    }
}

#[tokio::test]
async fn audience_and_issuer_checks() {
    let srv = with_auth("audience = \"hubbub\"\nissuer = \"https://idp.example\"\n").start();
    for (claims, ok) in [
        (json!({"sub": "1", "aud": "hubbub", "iss": "https://idp.example"}), true),
        (json!({"sub": "1", "aud": ["other", "hubbub"], "iss": "https://idp.example"}), true),
        (json!({"sub": "1"}), false),
        (json!({"sub": "1", "aud": "hubbub"}), false),
        (json!({"sub": "1", "aud": "other", "iss": "https://idp.example"}), false),
        (json!({"sub": "1", "aud": "hubbub", "iss": "https://evil.example"}), false),
    ] {
        if ok {
            srv.ws().await.connect(&jwt(claims)).await;
        } else {
            refused_with_close(&srv, &jwt(claims), 3500).await;
        }
    }
    // What `hubbub token` makes carries the configured audience and issuer.
    let made = srv.cli_token(&["--user", "5"]);
    srv.ws().await.connect(&made).await;
    // Subscription tokens are checked too.
    let mut c = srv.ws().await;
    c.connect(&made).await;
    let no_aud = sub_token("5", "$x");
    assert_eq!(c.err("subscribe", json!({"channel": "$x", "token": no_aud})).await, 103);
    let good = jwt(json!({"sub": "5", "channel": "$x", "aud": "hubbub", "iss": "https://idp.example"}));
    c.subscribe_with(json!({"channel": "$x", "token": good})).await;
}

#[tokio::test]
async fn jwks_keys_rotation_unknown_kids_and_the_endpoint_down() {
    let dir = tempfile::tempdir().unwrap();
    let rsa1 = KeyPair::rsa(dir.path(), "rsa1");
    let rsa2 = KeyPair::rsa(dir.path(), "rsa2");
    let ec = KeyPair::ec(dir.path(), "ec", false);
    let jwks = JwksServer::start(vec![rsa1.jwk("k1"), ec.jwk("e1")]).await;
    let srv = with_auth(&format!(
        "jwks_public_endpoint = {:?}\njwks_refetch_interval = \"1s\"\njwks_cache_ttl = \"1h\"\n",
        jwks.url
    ))
    .start();

    let mut c = srv.ws().await;
    c.connect(&rsa1.sign(Some("k1"), json!({"sub": "1"}))).await;
    let mut c = srv.ws().await;
    c.connect(&ec.sign(Some("e1"), json!({"sub": "2"}))).await;
    // A key of the set used for another algorithm's token, a token signed with a key
    // that is not the one its kid names: refused.
    refused_with_close(&srv, &rsa2.sign(Some("k1"), json!({"sub": "1"})), 3500).await;
    refused_with_close(&srv, &ec.sign(Some("k1"), json!({"sub": "1"})), 3500).await;

    // A flood of made-up key ids: refused, and the endpoint asked at most once per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = jwks.requests();
    let started = std::time::Instant::now();
    for i in 0..40 {
        refused_with_close(&srv, &rsa2.sign(Some(&format!("made-up-{i}")), json!({"sub": "1"})), 3500).await;
    }
    let fetched = jwks.requests() - before;
    let allowed = started.elapsed().as_secs() as usize + 1;
    assert!(fetched <= allowed, "{fetched} fetches for 40 made-up kids in {:?}", started.elapsed());

    // Rotation: k2 appears in the set; a token naming it gets through once fetched.
    jwks.set_keys(vec![rsa1.jwk("k1"), rsa2.jwk("k2")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = srv.ws().await;
    c.connect(&rsa2.sign(Some("k2"), json!({"sub": "3"}))).await;
    // Subscription tokens come from the JWKS too.
    let sub = rsa2.sign(Some("k2"), json!({"sub": "3", "channel": "$jwks"}));
    c.subscribe_with(json!({"channel": "$jwks", "token": sub})).await;

    // The endpoint goes down: known keys keep working; a new kid is "try again" (100,
    // temporary), not "invalid token" (which would make the client give up).
    jwks.task.abort();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = srv.ws().await;
    c.connect(&rsa1.sign(Some("k1"), json!({"sub": "1"}))).await;
    let rsa3 = KeyPair::rsa(dir.path(), "rsa3");
    let mut c = srv.ws().await;
    let reply = c.call("connect", json!({"token": rsa3.sign(Some("k3"), json!({"sub": "1"}))})).await;
    assert_eq!(error_code(&reply), Some(100), "{reply}");
    assert_eq!(reply["error"]["temporary"], json!(true), "{reply}");
}

#[tokio::test]
async fn claims_grant_info_channels_subs_meta_and_expiry() {
    let srv = Server::new();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let claims = json!({
        "sub": "9",
        "exp": now() + 30,
        "expire_at": now() + 7200,
        "b64info": b64(r#"{"name":"Nine"}"#),
        "channels": ["news"],
        "subs": {"feed": {"data": {"welcome": true}, "info": {"role": "reader"}}},
        "meta": {"secret_tenant": "t-1"},
    });
    let mut c = srv.ws().await;
    let reply = c.connect(&jwt(claims)).await;
    assert!(
        flag(&reply, "expires") && num(&reply, "ttl") > 7000,
        "expire_at is the connection's expiry: {reply}"
    );
    assert!(reply["subs"].get("news").is_some(), "{reply}");
    assert_eq!(reply["subs"]["feed"]["data"], json!({"welcome": true}), "{reply}");
    let mut other = srv.user("10").await;
    other.subscribe("feed").await;
    let presence = other.ok("presence", json!({"channel": "feed"})).await.to_string();
    assert!(presence.contains("Nine") && presence.contains("reader"), "{presence}");
    assert!(!presence.contains("secret_tenant"), "meta is never sent to clients: {presence}");
    assert!(!reply.to_string().contains("secret_tenant"), "{reply}");

    // A `subs` override: this subscription keeps out of the channel's presence.
    let mut quiet = srv.ws().await;
    quiet
        .connect(&jwt(json!({"sub": "11", "subs": {"feed": {"override": {"presence": {"value": false}}}}})))
        .await;
    let presence = other.ok("presence", json!({"channel": "feed"})).await.to_string();
    assert!(presence.contains("Nine") && !presence.contains("\"11\""), "{presence}");

    // expire_at 0: the connection never expires, whatever `exp` says.
    let mut c = srv.ws().await;
    let reply = c.connect(&jwt(json!({"sub": "9", "exp": now() + 30, "expire_at": 0}))).await;
    assert!(!flag(&reply, "expires"), "{reply}");
    // A b64info that is not base64 makes the token invalid.
    refused_with_close(&srv, &jwt(json!({"sub": "9", "b64info": "%%%"})), 3500).await;
}

#[tokio::test]
async fn personal_channel_subscription() {
    let mut builder = Server::builder().anonymous(true).ns(Ns::new("personal"));
    builder.extra_client =
        "subscribe_to_user_personal_channel = { enabled = true, personal_channel_namespace = \"personal\" }\n".into();
    let srv = builder.start();
    let mut c = srv.ws().await;
    let reply = c.connect(&token("42")).await;
    assert!(reply["subs"].get("personal:#42").is_some(), "{reply}");
    srv.api().publish("personal:#42", json!({"note": 1})).await;
    c.expect_push("personal:#42", "pub").await;
    // Anonymous connections have no personal channel.
    let mut anonymous = srv.ws().await;
    let reply = anonymous.ok("connect", json!({})).await;
    assert!(reply.get("subs").is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())), "{reply}");
}

#[tokio::test]
async fn insecure_mode_allows_everything_and_says_so() {
    let srv = Server::builder().client("insecure", "true").start();
    let mut c = srv.ws().await;
    c.ok("connect", json!({})).await;
    // A private channel without a token, a user-limited one of someone else, a namespace
    // that refuses client publishes and keeps presence and history from non-subscribers.
    c.subscribe("$private").await;
    c.subscribe("#7").await;
    c.subscribe("nosub:x").await;
    c.publish("nopub:x", json!({"x": 1})).await;
    c.publish("$private", json!({"x": 1})).await;
    c.expect_push("$private", "pub").await;
    c.ok("presence", json!({"channel": "noperm:x"})).await;
    c.ok("history", json!({"channel": "noperm:x"})).await;
    // A bad token is still refused.
    refused_with_close(&srv, "not-a-token", 3500).await;
    let warnings =
        srv.stderr().lines().filter(|l| l.contains("WARN") && l.contains("client.insecure")).count();
    assert_eq!(warnings, 1, "{}", srv.stderr());
}
