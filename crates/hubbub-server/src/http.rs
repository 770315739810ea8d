//! The HTTP router: which path goes to which transport or handler.

use crate::transport::{stream, websocket};
use crate::{api, emulation, headers, origin, poll, AppState};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// The server's routes plus the application's (`app`), all behind the origin check.
pub fn router(state: Arc<AppState>, app: Router) -> Router {
    // New connections pass the node's and the address's limits first (limits.rs).
    let connections = Router::new()
        .route("/connection/websocket", get(websocket::bidirectional))
        .route("/connection/uni_websocket", get(websocket::unidirectional))
        .route("/connection/http_stream", post(stream::http_stream))
        .route("/connection/sse", get(stream::sse_get).post(stream::sse_post))
        .route("/connection/uni_http_stream", post(stream::uni_http_stream))
        .route("/connection/uni_sse", get(stream::uni_sse))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::limits::guard));
    let core = Router::new()
        .route("/health", get(health))
        .merge(connections)
        .route("/emulation", post(emulation::handle))
        .route("/api/poll", get(poll::poll))
        .route("/api", post(api::handle_legacy))
        .route("/api/{method}", post(api::handle))
        .with_state(state.clone());
    core.merge(app)
        .fallback(crate::web::serve)
        .layer(axum::middleware::from_fn_with_state(state, origin::guard))
        // Outermost: the origin check's refusals get the headers too.
        .layer(axum::middleware::from_fn(headers::secure))
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}
