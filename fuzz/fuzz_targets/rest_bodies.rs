//! The REST bodies, end to end: the chat's REST API and the server HTTP API, in process (the
//! real routers, the real SQLite store in a temporary directory), fed requests whose method,
//! path, credentials, query and body the fuzzer picks. Every answer must be a clear one: never
//! a panic, never a 500, and every error is a JSON object with an `error`.
#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hubbub_server::config::Config;
use hubbub_server::App;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const API_KEY: &str = "fuzz-api-key";

/// The routes under test, `{room}` and `{seq}` filled in with ones that exist.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/auth/signup"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/me"),
    ("GET", "/api/rooms"),
    ("POST", "/api/rooms"),
    ("GET", "/api/rooms/{room}"),
    ("PATCH", "/api/rooms/{room}"),
    ("POST", "/api/rooms/{room}/members"),
    ("POST", "/api/dms"),
    ("GET", "/api/rooms/{room}/messages"),
    ("POST", "/api/rooms/{room}/messages"),
    ("PATCH", "/api/rooms/{room}/messages/{seq}"),
    ("DELETE", "/api/rooms/{room}/messages/{seq}"),
    ("POST", "/api/rooms/{room}/messages/{seq}/reactions"),
    ("POST", "/api/rooms/{room}/receipts"),
    ("POST", "/api/rooms/{room}/typing"),
    ("GET", "/api/notifications"),
    ("POST", "/api/notifications/read"),
    ("GET", "/api/search"),
    ("POST", "/api/publish"),
    ("POST", "/api/broadcast"),
    ("POST", "/api/subscribe"),
    ("POST", "/api/unsubscribe"),
    ("POST", "/api/disconnect"),
    ("POST", "/api/presence"),
    ("POST", "/api/presence_stats"),
    ("POST", "/api/history"),
    ("POST", "/api/history_remove"),
    ("POST", "/api/channels"),
    ("POST", "/api/info"),
    ("GET", "/api/poll"),
    ("POST", "/emulation"),
];

struct World {
    runtime: tokio::runtime::Runtime,
    app: Router,
    access_token: String,
    room: i64,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (app, access_token, room) = runtime.block_on(build());
        World { runtime, app, access_token, room }
    })
}

/// The server's router (every route, as `serve` builds it) over a fresh store, with one
/// user who has a room with a message. The per-user and per-address rate limits are raised
/// so that the fuzzer reaches the handlers behind them instead of a 429.
async fn build() -> (Router, String, i64) {
    let dir = std::env::temp_dir().join(format!("hubbub-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = hubbub_store::sqlite::SqliteStore::open(&dir.join("hubbub.db")).await.unwrap();
    let mut config = Config::default();
    config.auth.api_key = API_KEY.into();
    config.auth.token_secret = "fuzz-secret".into();
    // A long poll holds its answer at most this long (the fuzzer picks `wait`).
    config.http.poll_max_wait = std::time::Duration::from_secs(1);
    config.chat.sends_per_second = 1e9;
    config.chat.send_burst = 1 << 30;
    config.chat.signups_per_address = 1 << 30;
    config.chat.login_failures_per_account = 1 << 30;
    config.chat.login_failures_per_address = 1 << 30;
    let app = App::build(config, "fuzz".into(), Arc::new(store)).await.unwrap();
    let session = app.chat.signup("fuzzer", "fuzzer-password", "fuzz").await.unwrap();
    let room = app.chat.create_room(&session.user, "fuzz room").await.unwrap();
    let room_id = serde_json::to_value(&room).unwrap()["id"].as_i64().unwrap();
    app.chat.send(&session.user, room_id, "hello", "fuzz-seed-1", None).await.unwrap();
    (app.router, session.access_token, room_id)
}

/// Bytes as a URI query: percent-encoded except for unreserved characters, `=` and `&`.
fn query(bytes: &[u8]) -> String {
    let mut q = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~=&".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

fuzz_target!(|data: &[u8]| {
    let [route, credentials, rest @ ..] = data else { return };
    let w = world();
    let (method, template) = ROUTES[*route as usize % ROUTES.len()];
    let path = template.replace("{room}", &w.room.to_string()).replace("{seq}", "1");
    let mut request = Request::builder().method(method);
    match credentials % 4 {
        0 => {}
        1 => request = request.header("authorization", format!("Bearer {}", w.access_token)),
        2 => request = request.header("x-api-key", API_KEY),
        _ => request = request.header("authorization", format!("Bearer {}", String::from_utf8_lossy(rest))),
    }
    let request = if method == "GET" {
        request.uri(format!("{path}?{}", query(rest))).body(Body::empty())
    } else {
        request.uri(path).header("content-type", "application/json").body(Body::from(rest.to_vec()))
    };
    let Ok(mut request) = request else { return };
    // As the accept loop does: the peer's address, which the per-address limits key on.
    request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))));
    let (status, body) = w.runtime.block_on(async {
        let response = w.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (status, response.into_body().collect().await.unwrap().to_bytes())
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {template}: {body:?}");
    if status.is_client_error() {
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: not JSON ({e}): {body:?}"));
        assert!(json.get("error").is_some(), "{method} {template} {status}: no error: {json}");
    }
});
