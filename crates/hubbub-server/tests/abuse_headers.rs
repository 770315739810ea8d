//! What a hostile web page can do with a browser: frame the UI, sniff a JSON answer as
//! something else, read answers cross-origin. Every answer carries strict headers, and CORS
//! never pairs a wildcard with credentials.
mod common;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

/// A server whose `[http]` section is `http` (raw TOML lines).
fn server_with_http(http: &str) -> Server {
    let mut builder = Server::builder();
    builder.extra_top = format!("\n[http]\n{http}\n");
    builder.start()
}

async fn request(srv: &Server, method: Method, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap) {
    let mut rb = http_client().request(method, srv.http_url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let response = rb.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    (response.status().as_u16(), response.headers().clone())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

/// The headers every answer carries, whatever it is.
fn assert_strict(what: &str, headers: &HeaderMap) {
    assert_eq!(header(headers, "x-content-type-options"), Some("nosniff"), "{what}: {headers:?}");
    assert_eq!(header(headers, "x-frame-options"), Some("DENY"), "{what}: {headers:?}");
    assert_eq!(header(headers, "referrer-policy"), Some("no-referrer"), "{what}: {headers:?}");
    let csp =
        header(headers, "content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP: {headers:?}"));
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
}

/// The UI, a JSON answer, error answers (404 of the API, 403 of the origin check, 401, 405,
/// 413) and a preflight: all carry nosniff, a CSP with `frame-ancestors 'none'`,
/// `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.
#[tokio::test]
async fn every_answer_carries_strict_headers() {
    let srv = Server::new();
    let (status, ui) = request(&srv, Method::GET, "/", &[]).await;
    assert_eq!(status, 200);
    assert_strict("/", &ui);
    // The UI's policy: its own scripts, styles and connections only, nothing inline.
    let csp = header(&ui, "content-security-policy").unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    let (_, room) = request(&srv, Method::GET, "/rooms/42", &[]).await;
    assert_strict("/rooms/42", &room);

    let answers = [
        (Method::GET, "/health", vec![], 200),
        (Method::GET, "/favicon.svg", vec![], 200),
        (Method::POST, "/api/info", vec![("x-api-key", API_KEY)], 200),
        (Method::POST, "/api/info", vec![], 401),
        (Method::POST, "/api/nope", vec![("x-api-key", API_KEY)], 404),
        (Method::GET, "/api/me", vec![], 401),
        (Method::GET, "/missing.js", vec![], 404),
        (Method::GET, "/connection/websocket", vec![], 426),
        (Method::GET, "/api/poll?channel=news", vec![], 401),
        (Method::DELETE, "/health", vec![], 405),
        (Method::GET, "/health", vec![("origin", "https://evil.example")], 403),
    ];
    for (method, path, headers, expected) in answers {
        let (status, got) = request(&srv, method.clone(), path, &headers).await;
        assert_eq!(status, expected, "{method} {path}");
        assert_strict(&format!("{method} {path} ({status})"), &got);
        if path != "/favicon.svg" {
            // Nothing but the UI's page is a document: no policy lets it load anything.
            let csp = header(&got, "content-security-policy").unwrap();
            assert!(csp.contains("default-src 'none'"), "{method} {path}: {csp}");
        }
    }
}

/// The default (same origin only): a same-origin request is echoed; another origin is
/// refused (403) with the strict headers and no CORS grant.
#[tokio::test]
async fn same_origin_by_default() {
    let srv = Server::new();
    let own = format!("http://{}", srv.addr);
    let (status, got) = request(&srv, Method::GET, "/health", &[("origin", &own)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&got, "access-control-allow-origin"), Some(own.as_str()));
    for origin in ["https://evil.example", "null"] {
        let (status, got) = request(&srv, Method::GET, "/health", &[("origin", origin)]).await;
        assert_eq!(status, 403, "{origin}");
        assert_eq!(header(&got, "access-control-allow-origin"), None, "{origin}");
        assert_strict(origin, &got);
    }
}

/// `allowed_origins = ["*"]`: any real origin may read answers, but as `*`, never echoed
/// with credentials; `null` (sandboxed frames, files) is refused unless listed.
#[tokio::test]
async fn wildcard_origin_never_comes_with_credentials() {
    let srv = server_with_http("allowed_origins = [\"*\"]");
    let preflight = [
        ("origin", "https://any.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization, content-type"),
    ];
    for (method, path, headers) in [
        (Method::GET, "/health", vec![("origin", "https://any.example")]),
        (Method::POST, "/api/info", vec![("origin", "https://any.example"), ("x-api-key", API_KEY)]),
        (Method::OPTIONS, "/api/auth/login", preflight.to_vec()),
    ] {
        let (status, got) = request(&srv, method.clone(), path, &headers).await;
        assert!(status == 200 || status == 204, "{method} {path}: {status}");
        assert_eq!(header(&got, "access-control-allow-origin"), Some("*"), "{method} {path}: {got:?}");
        assert_eq!(header(&got, "access-control-allow-credentials"), None, "{method} {path}: {got:?}");
        assert_strict(&format!("{method} {path}"), &got);
        if method == Method::OPTIONS {
            let allowed = header(&got, "access-control-allow-headers").unwrap_or_default();
            assert!(allowed.contains("authorization"), "{allowed}");
        }
    }
    let (status, got) = request(&srv, Method::GET, "/health", &[("origin", "null")]).await;
    assert_eq!(status, 403, "null origin with [\"*\"]");
    assert_eq!(header(&got, "access-control-allow-origin"), None);
    let (status, _) = request(&srv, Method::OPTIONS, "/api/info", &[("origin", "null")]).await;
    assert_eq!(status, 403, "null origin preflight with [\"*\"]");
}

/// Listed origins (including `null` when an operator lists it) are echoed; credentials only
/// for them.
#[tokio::test]
async fn listed_origins_are_echoed() {
    let srv = server_with_http("allowed_origins = [\"https://app.example\", \"null\"]");
    for origin in ["https://app.example", "null"] {
        let preflight = [("origin", origin), ("access-control-request-method", "POST")];
        let (status, got) = request(&srv, Method::OPTIONS, "/api/info", &preflight).await;
        assert_eq!(status, 204, "{origin}");
        assert_eq!(header(&got, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&got, "access-control-allow-credentials"), Some("true"));
        assert!(header(&got, "vary").unwrap_or_default().to_ascii_lowercase().contains("origin"));
        assert_strict(origin, &got);
    }
    let (status, _) = request(&srv, Method::GET, "/health", &[("origin", "https://other.example")]).await;
    assert_eq!(status, 403);
}

/// An origin that can never match (a path, a trailing slash) is a config error naming the key.
#[test]
fn malformed_allowed_origin_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[http]\nallowed_origins = [\"https://app.example/\"]\n");
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&config).current_dir(dir.path());
    let (status, _out, err) = run_with_timeout(cmd, std::time::Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("http.allowed_origins"), "{err}");
}
