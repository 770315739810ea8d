//! The chat's web UI, built into the binary: `web/dist` (the committed output of
//! `cd web && npm ci && npm run build`) embedded with rust-embed and served for every GET that
//! no other route takes.
//!
//! * `/assets/*` are content-hashed by Vite: cached for a year, `immutable`.
//! * Other files (`/favicon.svg`, ...) and `index.html`: `no-cache` (revalidated with the ETag).
//! * `/` and the UI's own paths (`/rooms/42`) get `index.html`: the UI reads the path itself.
//! * Unknown paths under the server's prefixes (`/api/`, `/connection/`, `/emulation`,
//!   `/health`) and paths that look like files (`/x.js`) get a plain 404, never the page.
//!
//! In a debug build rust-embed reads the files from disk at each request (a rebuilt UI shows
//! without recompiling); a release build carries them inside the binary.
//!
//! Wiring (crates/hubbub-server):
//!   Cargo.toml, [dependencies]:  rust-embed = "8"
//!   src/lib.rs:                  mod web;            (this file as src/web.rs)
//!   src/http.rs, in `router`:    drop `.route("/", get(index))` (and `fn index`), and end with
//!       core.merge(app).fallback(crate::web::serve).layer(axum::middleware::from_fn_with_state(state, origin::guard))

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../../web/dist/"]
struct Assets;

/// Paths the server owns: never answered with the UI's page.
const SERVER_PREFIXES: &[&str] = &["api/", "connection/", "emulation", "health"];

const HASHED: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found")
        .into_response()
}

/// Serves one embedded file, answering 304 when the client has this version (ETag).
fn file(path: &str, cache: &'static str, method: &Method, headers: &HeaderMap) -> Option<Response> {
    let file = Assets::get(path)?;
    let etag: String = {
        let hash = file.metadata.sha256_hash();
        let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        let mut r = Response::new(Body::empty());
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(file.data.len()));
        r
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Some(res)
}

/// The router's fallback: the UI's files, or its page for the UI's own paths.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    let path = uri.path().trim_start_matches('/');
    if path.contains("..") {
        return not_found();
    }
    if !path.is_empty() && path != "index.html" {
        let cache = if path.starts_with("assets/") { HASHED } else { REVALIDATE };
        if let Some(res) = file(path, cache, &method, &headers) {
            return res;
        }
        let last = path.rsplit('/').next().unwrap_or("");
        if SERVER_PREFIXES.iter().any(|p| path.starts_with(p))
            || path.starts_with("assets/")
            || last.contains('.')
        {
            return not_found();
        }
    }
    match file("index.html", REVALIDATE, &method, &headers) {
        Some(res) => res,
        // Built without the UI (web/dist empty): say how to get it.
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the web UI is not built: cd web && npm ci && npm run build",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("assets/index-abc.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }

    #[tokio::test]
    async fn index_for_ui_paths_404_for_server_paths_and_files() {
        let get = |p: &str| serve(Method::GET, p.parse().unwrap(), HeaderMap::new());
        for p in ["/", "/rooms/42", "/index.html"] {
            let r = get(p).await;
            assert_eq!(r.status(), StatusCode::OK, "{p}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(r.headers()[header::CACHE_CONTROL], REVALIDATE);
        }
        for p in ["/api/nope", "/connection/nope", "/missing.js", "/assets/missing.css", "/../Cargo.toml"] {
            assert_eq!(get(p).await.status(), StatusCode::NOT_FOUND, "{p}");
        }
        let js =
            Assets::iter().find(|f| f.starts_with("assets/") && f.ends_with(".js")).expect("a built bundle");
        let r = get(&format!("/{js}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], HASHED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, r.headers()[header::ETAG].clone());
        let r = serve(Method::GET, format!("/{js}").parse().unwrap(), again).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve(Method::POST, "/".parse().unwrap(), HeaderMap::new()).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
