//! Which browser origins may use the server: checked on every request that carries an
//! `Origin` header (WebSocket upgrades included), with CORS headers for allowed ones.
//!
//! `http.allowed_origins = []` (the default) allows only the same origin: the `Origin`'s
//! host and port equal the request's `Host`. Listed origins (`"https://app.example"`) are
//! allowed and echoed back with credentials allowed. `"*"` allows any other real origin, but
//! as `Access-Control-Allow-Origin: *` without credentials: a wildcard is never paired with
//! credentials, so no page anywhere can read answers made with the browser's credentials.
//! The opaque origin `null` (sandboxed frames, `file:` pages, some redirects: anyone can get
//! one) is refused unless listed itself. Requests without `Origin` (servers, curl, native
//! apps) are not browser requests and pass.

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

/// What a browser at some origin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Denied,
    /// The same origin or a listed one: echoed back, credentials allowed.
    Trusted,
    /// Any origin, through `"*"`: answered with `*`, without credentials.
    Any,
}

/// What a browser at `origin` may do with a server reached as `host`.
pub fn access(allowed: &[String], origin: &str, host: Option<&str>) -> Access {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Access::Trusted;
    }
    if origin == "null" {
        return Access::Denied;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
        return Access::Trusted;
    }
    if allowed.iter().any(|a| a == "*") {
        return Access::Any;
    }
    Access::Denied
}

/// Why an `http.allowed_origins` entry could never match a browser's `Origin` header
/// (`scheme://host[:port]`, no path, or `null`), for the config's validation.
pub fn invalid_allowed_origin(entry: &str) -> Option<String> {
    if entry == "*" || entry == "null" {
        return None;
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Some(format!("{entry:?}: expected \"*\", \"null\" or scheme://host[:port]"));
    };
    let valid_scheme =
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let valid_host = !rest.is_empty() && !rest.contains(['/', '?', '#', '*', ' ', '@']);
    (!valid_scheme || !valid_host)
        .then(|| format!("{entry:?}: an origin is scheme://host[:port], with no path or trailing slash"))
}

pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let access = access(&state.config.http.allowed_origins, &origin, host);
    if access == Access::Denied {
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
    match access {
        Access::Trusted => {
            if let Ok(value) = HeaderValue::from_str(&origin) {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
        }
        Access::Any => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        Access::Denied => unreachable!("refused above"),
    }
    // The answer depends on the Origin (trusted ones are echoed; others refused).
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_by_default_listed_or_any_when_configured() {
        assert_eq!(access(&[], "http://127.0.0.1:8000", Some("127.0.0.1:8000")), Access::Trusted);
        assert_eq!(access(&[], "http://evil.example", Some("127.0.0.1:8000")), Access::Denied);
        assert_eq!(access(&[], "http://127.0.0.1:8000", None), Access::Denied);
        let listed = vec!["https://app.example".to_string()];
        assert_eq!(access(&listed, "https://app.example", Some("api.example")), Access::Trusted);
        assert_eq!(access(&listed, "https://other.example", Some("api.example")), Access::Denied);
        let any = vec!["*".to_string()];
        assert_eq!(access(&any, "https://any.example", None), Access::Any);
        assert_eq!(access(&any, "null", Some("null")), Access::Denied);
        assert_eq!(access(&["null".to_string()], "null", None), Access::Trusted);
    }

    #[test]
    fn allowed_origins_must_be_able_to_match() {
        for ok in ["*", "null", "https://app.example", "http://127.0.0.1:8000", "app://x"] {
            assert_eq!(invalid_allowed_origin(ok), None, "{ok}");
        }
        for bad in ["https://app.example/", "app.example", "https://*.example", "https://a.example/path", ""]
        {
            assert!(invalid_allowed_origin(bad).is_some(), "{bad}");
        }
    }
}
