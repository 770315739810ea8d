//! Keys from a JSON Web Key Set (`auth.jwks_public_endpoint`): cached, refreshed when the
//! cache is older than `auth.jwks_cache_ttl` or a token names a key id the cache does not
//! hold. Core does no HTTP: the server hands in a [`JwksFetch`] that GETs the document.
//!
//! Key ids come from tokens, which anyone can make up. So a key id is never stored (only
//! the keys of the fetched document are, at most [`MAX_JWKS_KEYS`]), and whatever the
//! tokens say, the endpoint is fetched at most once per `auth.jwks_refetch_interval`, one
//! fetch at a time: a flood of made-up key ids costs the identity provider one request per
//! interval and this server no memory.

use super::keys::{KeyFamily, VerifyKey};
use super::TokenError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys kept from one document at most; the rest are ignored (with a warning).
pub const MAX_JWKS_KEYS: usize = 64;

/// Fetches the key set document. The implementation bounds its time and size.
#[async_trait::async_trait]
pub trait JwksFetch: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Vec<u8>, String>;
}

#[derive(Debug, Clone, Copy)]
pub struct JwksOptions {
    /// Keys older than this are fetched again before use (a failed fetch keeps them).
    pub cache_ttl: Duration,
    /// The least time between two fetches, whatever tokens arrive.
    pub refetch_interval: Duration,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    /// Why the last fetch failed, while it is the latest word on the endpoint.
    failure: Option<String>,
    fetches: u64,
}

/// The key set of one endpoint.
pub struct Jwks {
    fetcher: Arc<dyn JwksFetch>,
    options: JwksOptions,
    state: Mutex<State>,
    /// One fetch at a time; a token waiting here finds the result of the fetch before it.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({:?})", self.options)
    }
}

impl Jwks {
    pub fn new(fetcher: Arc<dyn JwksFetch>, options: JwksOptions) -> Self {
        Jwks { fetcher, options, state: Mutex::default(), fetching: tokio::sync::Mutex::new(()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches made so far (for tests and `checktoken`).
    pub fn fetches(&self) -> u64 {
        self.state().fetches
    }

    /// Key ids held now.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state().keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The cached key `kid`, if held (and, with `fresh`, not older than the cache's ttl).
    fn cached(&self, kid: &str, fresh: bool) -> Option<Arc<VerifyKey>> {
        let state = self.state();
        if fresh && state.fetched.is_none_or(|at| at.elapsed() >= self.options.cache_ttl) {
            return None;
        }
        state.keys.get(kid).cloned()
    }

    /// The key a token names, fetching the set again when it is stale or lacks the key,
    /// within the refetch bound. A key the endpoint does not have is `Invalid`; an endpoint
    /// that cannot be read, with no cached key of that id, is `Unavailable`.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(key) = self.cached(kid, true) {
            return Ok(key);
        }
        let may_fetch = self.state().attempted.is_none_or(|at| at.elapsed() >= self.options.refetch_interval);
        if may_fetch {
            if let Err(e) = self.fetch_now().await {
                tracing::warn!(error = %e, "JWKS endpoint not read: keeping the keys fetched before");
            }
        }
        if let Some(key) = self.cached(kid, false) {
            return Ok(key);
        }
        match &self.state().failure {
            Some(why) => Err(TokenError::Unavailable(format!("JWKS endpoint: {why}"))),
            None => Err(TokenError::Invalid(format!("unknown key id {kid:?}"))),
        }
    }

    /// Fetches the set now (at start and by the periodic refresh), whatever the refetch
    /// bound says; one at a time with [`Jwks::key`]. Returns how many keys it holds.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> Result<usize, String> {
        {
            let mut state = self.state();
            state.attempted = Some(Instant::now());
            state.fetches += 1;
        }
        let result = self.fetcher.fetch().await.and_then(|body| parse_key_set(&body));
        let mut state = self.state();
        match result {
            Ok(keys) => {
                let n = keys.len();
                state.keys = keys;
                state.fetched = Some(Instant::now());
                state.failure = None;
                Ok(n)
            }
            Err(e) => {
                state.failure = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// The usable keys of a JWKS document by key id: RSA and EC (P-256, P-384) public keys
/// meant for signatures. Symmetric (`oct`) keys are never taken from a document.
pub fn parse_key_set(body: &[u8]) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyFamily::Ec(Algorithm::ES256),
                EllipticCurve::P384 => KeyFamily::Ec(Algorithm::ES384),
                _ => continue,
            },
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        if keys.len() == MAX_JWKS_KEYS {
            tracing::warn!("JWKS document holds more than {MAX_JWKS_KEYS} keys: the rest are ignored");
            break;
        }
        keys.insert(kid, Arc::new(VerifyKey { family, key }));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An EC P-256 key as a JWK (coordinates of a real point).
    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    struct Counting {
        calls: AtomicU64,
        body: Mutex<Result<String, String>>,
    }

    #[async_trait::async_trait]
    impl JwksFetch for Counting {
        async fn fetch(&self) -> Result<Vec<u8>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.body.lock().unwrap().clone().map(String::into_bytes)
        }
    }

    fn set(kids: &[&str]) -> String {
        let keys: Vec<String> =
            kids.iter().map(|k| EC_JWK.replacen('{', &format!("{{\"kid\":\"{k}\","), 1)).collect();
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }

    #[tokio::test]
    async fn made_up_kids_cost_one_fetch_per_interval_and_no_memory() {
        let fetcher = Arc::new(Counting { calls: AtomicU64::new(0), body: Mutex::new(Ok(set(&["a"]))) });
        let options = JwksOptions {
            cache_ttl: Duration::from_secs(3600),
            refetch_interval: Duration::from_millis(300),
        };
        let jwks = Jwks::new(fetcher.clone(), options);
        assert!(jwks.key("a").await.is_ok());
        let started = Instant::now();
        for i in 0..10_000 {
            assert!(matches!(jwks.key(&format!("made-up-{i}")).await, Err(TokenError::Invalid(_))));
        }
        let bound = 1 + started.elapsed().as_secs() + 1;
        let calls = fetcher.calls.load(Ordering::SeqCst);
        assert!(calls <= bound, "{calls} fetches for 10000 made-up kids in {:?}", started.elapsed());
        assert_eq!(jwks.key_ids(), vec!["a".to_string()]);
        // A rotation: the new key is found once the interval has passed.
        *fetcher.body.lock().unwrap() = Ok(set(&["a", "b"]));
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert!(jwks.key("b").await.is_ok());
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), calls + 1);
    }

    #[tokio::test]
    async fn an_endpoint_down_keeps_known_keys_and_says_unavailable_for_others() {
        let fetcher = Arc::new(Counting { calls: AtomicU64::new(0), body: Mutex::new(Ok(set(&["a"]))) });
        let options = JwksOptions { cache_ttl: Duration::ZERO, refetch_interval: Duration::ZERO };
        let jwks = Jwks::new(fetcher.clone(), options);
        assert_eq!(jwks.refresh().await, Ok(1));
        *fetcher.body.lock().unwrap() = Err("connection refused".into());
        assert!(jwks.key("a").await.is_ok(), "a stale key is better than none");
        assert!(matches!(jwks.key("b").await, Err(TokenError::Unavailable(_))));
        *fetcher.body.lock().unwrap() = Ok("{\"keys\": 5}".into());
        assert!(matches!(jwks.key("b").await, Err(TokenError::Unavailable(_))));
    }

    #[test]
    fn symmetric_and_unnamed_keys_are_never_taken() {
        let doc = r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(parse_key_set(doc.as_bytes()).unwrap().is_empty());
        let many = set(&(0..100)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
        assert_eq!(parse_key_set(many.as_bytes()).unwrap().len(), MAX_JWKS_KEYS);
    }
}
