//! The JWT parser and its checks. Two shapes of input:
//! * any string, verified as a connection and as a subscription token: an error or claims,
//!   never a panic;
//! * a header and claims of the fuzzer's choosing, correctly signed with the server's secret
//!   (so the claims decoder and the time checks are reached, not only the signature check):
//!   whatever is accepted must be HS256, unexpired and already valid (`nbf`).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hubbub_core::auth::{unix_now, Tokens};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret";

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(SECRET))
}

/// A token over exactly these header and claims bytes, signed with the server's secret.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs any message");
    format!("{message}.{signature}")
}

/// The claims' numeric date `key`, when the claims are a JSON object holding a number there.
fn numeric_date(claims: &serde_json::Value, key: &str) -> Option<f64> {
    claims.get(key)?.as_f64()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let t = tokens();
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let _ = t.verify_connect_local(&text);
        let _ = t.verify_subscription_local(&text);
        return;
    }
    // Header and claims, split at the first 0xff (which never occurs in UTF-8 JSON).
    let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
    };
    let token = signed(header, claims);
    let connect = t.verify_connect_local(&token);
    let subscription = t.verify_subscription_local(&token);
    if connect.is_err() && subscription.is_err() {
        return;
    }
    // The decoder skips unknown members without validating their strings (a lone surrogate
    // escape or bytes that are not UTF-8 in a claim nobody reads): harmless, and beyond what
    // `Value` can hold, so such tokens are not checked further.
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<serde_json::Value>(header),
        serde_json::from_slice::<serde_json::Value>(claims),
    ) else {
        return;
    };
    // serde also reads a struct from a JSON array, field by field: `["JWT","HS256"]` is a
    // header whose `alg` is HS256 (harmless: it still had to be signed with the secret).
    if header.is_object() {
        assert_eq!(header["alg"], "HS256", "a token with another algorithm was accepted");
    }
    let now = unix_now() as f64;
    if let Some(exp) = numeric_date(&claims, "exp") {
        assert!(exp >= now, "an expired token was accepted: {claims}");
    }
    if let Some(nbf) = numeric_date(&claims, "nbf") {
        assert!(nbf <= now + 1.0, "a token not valid yet was accepted: {claims}");
    }
    if connect.is_ok() {
        let channel = claims.get("channel").and_then(|c| c.as_str()).unwrap_or("");
        assert!(channel.is_empty(), "a subscription token was accepted as a connection token: {claims}");
    }
});
