//! The HTTP router: which path goes to which transport or handler.

use crate::{api, websocket, AppState};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/connection/websocket", get(websocket::upgrade))
        .route("/api/{method}", post(api::handle))
        .with_state(state)
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
