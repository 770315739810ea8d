//! The HTTP router: which path goes to which transport or handler.

use crate::transport::{stream, websocket};
use crate::{api, emulation, origin, poll, AppState};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// The server's routes plus the application's (`app`), all behind the origin check.
pub fn router(state: Arc<AppState>, app: Router) -> Router {
    let core = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/connection/websocket", get(websocket::bidirectional))
        .route("/connection/uni_websocket", get(websocket::unidirectional))
        .route("/connection/http_stream", post(stream::http_stream))
        .route("/connection/sse", get(stream::sse_get).post(stream::sse_post))
        .route("/connection/uni_http_stream", post(stream::uni_http_stream))
        .route("/connection/uni_sse", get(stream::uni_sse))
        .route("/emulation", post(emulation::handle))
        .route("/api/poll", get(poll::poll))
        .route("/api/{method}", post(api::handle))
        .with_state(state.clone());
    core.merge(app).layer(axum::middleware::from_fn_with_state(state, origin::guard))
}

async fn index() -> impl IntoResponse {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Hubbub</title></head>",
        "<body><h1>Hubbub</h1><p>Real-time server is running. WebSocket endpoint: ",
        "<code>/connection/websocket</code>; server API: <code>POST /api/&lt;method&gt;</code>.</p></body></html>"
    ))
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}
