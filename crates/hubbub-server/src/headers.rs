//! Browser security headers, on every answer of the server (the UI, JSON answers, errors,
//! preflights, streams), so that no page elsewhere can frame the UI, make a browser sniff a
//! JSON answer into something runnable, or learn the UI's URLs from a referrer.
//!
//! * The UI's page (`text/html`) gets a Content-Security-Policy suited to the built UI in
//!   `web/dist`: its own scripts, stylesheet and connections (fetch, EventSource, WebSocket to
//!   the same host) only. Nothing inline: the page has no inline script or style, and the UI
//!   sets styles through the CSSOM (`element.style`), which CSP does not govern.
//! * Every other answer is not a document anyone should render: `default-src 'none'`.
//! * All: `frame-ancestors 'none'` and `X-Frame-Options: DENY` (older browsers),
//!   `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.
//!
//! A handler that set one of these itself keeps its own value.

use axum::extract::Request;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The UI's page: what `web/dist/index.html` and its bundle load, nothing more.
const UI_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                         connect-src 'self'; font-src 'self'; manifest-src 'self'; object-src 'none'; \
                         base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Everything else: data, not documents.
const DATA_POLICY: &str = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn secure(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let html = h.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let policy = if html { UI_POLICY } else { DATA_POLICY };
    h.entry(CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(policy));
    h.entry(X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    h.entry(X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    h.entry(REFERRER_POLICY).or_insert(HeaderValue::from_static("no-referrer"));
    response
}
