//! `POST /emulation`: commands for a bidirectional-emulation session (http_stream, sse),
//! routed by the session id from its connect reply. Replies go out on the session's stream.
//! The body is JSON (`{"session","node","data"}`), or for a protobuf session an
//! `application/octet-stream` EmulationRequest whose `data` holds length-delimited Commands.
//!
//! Posted commands wait in the session's outbox until its connection task takes them, and
//! count toward its byte budget (`client.queue_max_bytes`) like the replies they cause: a
//! client that posts faster than it reads its stream is disconnected as slow (3008), and the
//! post that went over, like every later one, is answered 410 Gone.
//!
//! Behind a load balancer without sticky sessions, the POST may land on another node than
//! the session's stream: the request names the session's node (`node`, from the connect
//! reply, which centrifuge-js echoes), and the commands are forwarded to it over the
//! cluster's control channel. The POST is answered once that node queued them (or refused
//! them); a node that does not answer within about a heartbeat gives 504.

use crate::api::ApiError;
use crate::transport::stream::{is_binary, LimitedBody};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use hubbub_core::cluster::EmulationError;
use hubbub_protocol::codes::{ERROR_INTERNAL, ERROR_LIMIT_EXCEEDED, ERROR_NOT_AVAILABLE};
use hubbub_protocol::{Disconnect, ProtocolError};
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

/// The session refused the commands because it is closing: 410, saying why.
fn closed_session(disconnect: Disconnect) -> ApiError {
    let error = if disconnect == Disconnect::SLOW {
        ProtocolError {
            code: ERROR_LIMIT_EXCEEDED.code,
            message: "session closed: commands and replies waiting for its stream went over \
                      client.queue_max_bytes (disconnected with 3008 slow)"
                .into(),
            temporary: false,
        }
    } else {
        ProtocolError {
            code: ERROR_NOT_AVAILABLE.code,
            message: format!("session closed ({} {})", disconnect.code, disconnect.reason),
            temporary: false,
        }
    };
    ApiError::new(StatusCode::GONE, error)
}

/// The session, its node and the commands of a JSON emulation request.
fn json_request(body: &[u8]) -> Result<(String, String, Bytes), ApiError> {
    let request: EmulationRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad request: malformed emulation request: {e}")))?;
    let raw = request.data.get();
    let commands = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|e| ApiError::bad_request(format!("bad request: {e}")))?
    } else {
        raw.to_owned()
    };
    Ok((request.session, request.node, Bytes::from(commands)))
}

/// The same from a protobuf EmulationRequest.
fn protobuf_request(body: &[u8]) -> Result<(String, String, Bytes), ApiError> {
    let request = hubbub_protocol::protobuf::decode_emulation_request(body)
        .map_err(|e| ApiError::bad_request(format!("bad request: malformed emulation request: {e}")))?;
    Ok((request.session, request.node, request.data))
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<StatusCode, ApiError> {
    let (session, node, commands) =
        if is_binary(&headers) { protobuf_request(&body)? } else { json_request(&body)? };
    match state.node.emulation(&node, &session, commands).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(EmulationError::UnknownSession) => Err(unknown_session()),
        Err(EmulationError::Closed(disconnect)) => Err(closed_session(disconnect)),
        Err(e @ EmulationError::Timeout(_)) => {
            let error = ProtocolError { message: e.to_string(), ..ERROR_INTERNAL.into() };
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, error))
        }
        Err(EmulationError::Unavailable(error)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)),
    }
}
