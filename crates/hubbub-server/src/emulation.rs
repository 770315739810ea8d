//! `POST /emulation`: commands for a bidirectional-emulation session (http_stream, sse),
//! routed by the session id from its connect reply. Replies go out on the session's stream.

use crate::api::ApiError;
use crate::transport::stream::too_big;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use hubbub_core::outbox::Control;
use hubbub_protocol::codes::ERROR_NOT_AVAILABLE;
use hubbub_protocol::ProtocolError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

#[derive(Deserialize)]
struct EmulationRequest {
    session: String,
    #[serde(default)]
    node: String,
    /// The commands: a JSON string holding newline-separated commands (what centrifuge-js
    /// sends), or the command object itself.
    data: Box<RawValue>,
}

fn unknown_session() -> ApiError {
    let error =
        ProtocolError { code: ERROR_NOT_AVAILABLE.code, message: "unknown session".into(), temporary: false };
    ApiError::new(StatusCode::NOT_FOUND, error)
}

pub async fn handle(State(state): State<Arc<AppState>>, body: Bytes) -> Result<StatusCode, ApiError> {
    too_big(&state, &body)?;
    let request: EmulationRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("bad request: malformed emulation request: {e}")))?;
    let raw = request.data.get();
    let commands = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|e| ApiError::bad_request(format!("bad request: {e}")))?
    } else {
        raw.to_owned()
    };
    // Sessions of other nodes are not reachable from here yet (cross-node routing comes
    // with the multi-node engines).
    if !request.node.is_empty() && request.node != state.node.id {
        tracing::info!(node = %request.node, "emulation request for another node");
        return Err(unknown_session());
    }
    let Some(conn) = state.node.hub.session(&request.session) else {
        tracing::info!(session = %request.session, "emulation request for an unknown session");
        return Err(unknown_session());
    };
    conn.outbox.control(Control::Commands(commands));
    Ok(StatusCode::NO_CONTENT)
}
