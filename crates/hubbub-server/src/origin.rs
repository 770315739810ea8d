//! Which browser origins may use the server: checked on every request that carries an
//! `Origin` header (WebSocket upgrades included), with CORS headers for allowed ones.
//!
//! `http.allowed_origins = []` (the default) allows only the same origin: the `Origin`'s
//! host and port equal the request's `Host`. `["*"]` allows any. Requests without `Origin`
//! (servers, curl, native apps) are not browser requests and pass.

use crate::api::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hubbub_protocol::codes::ERROR_PERMISSION_DENIED;
use hubbub_protocol::ProtocolError;
use std::sync::Arc;

/// Whether a browser at `origin` may talk to a server reached as `host`.
pub fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
}

pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if !origin_allowed(&state.config.http.allowed_origins, &origin, host) {
        tracing::info!(%origin, path = %request.uri().path(), "origin not allowed");
        let error = ProtocolError {
            message: format!("origin {origin} is not allowed (http.allowed_origins)"),
            ..ERROR_PERMISSION_DENIED.into()
        };
        return ApiError::new(StatusCode::FORBIDDEN, error).into_response();
    }
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, last-event-id"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn same_origin_by_default_listed_or_any_when_configured() {
        assert!(origin_allowed(&[], "http://127.0.0.1:8000", Some("127.0.0.1:8000")));
        assert!(!origin_allowed(&[], "http://evil.example", Some("127.0.0.1:8000")));
        assert!(!origin_allowed(&[], "http://127.0.0.1:8000", None));
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&listed, "https://app.example", Some("api.example")));
        assert!(!origin_allowed(&listed, "https://other.example", Some("api.example")));
        assert!(origin_allowed(&["*".to_string()], "https://any.example", None));
    }
}
