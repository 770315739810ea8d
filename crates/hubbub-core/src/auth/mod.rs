//! Connection and subscription JWTs: verification for sessions (HS256/384/512 with the
//! shared secret, RS*/PS* and ES256/ES384 with a PEM public key or the keys of a JWKS
//! endpoint; optional `aud` and `iss` checks), minting for the CLI, the chat and tests.
//!
//! Which key checks a token depends on its algorithm only, never on what else the token
//! says: HS* the HMAC secret; RS*/PS*/ES* the JWKS key its `kid` names when an endpoint is
//! configured, otherwise the configured PEM key of that family. A key is only used with
//! its own family of algorithms (see [`keys::KeyFamily`]).

pub mod jwks;
pub mod keys;

use crate::grant::{ConnectGrant, SubscribeOptions};
use base64::Engine;
use hubbub_protocol::Json;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use jwks::{Jwks, JwksFetch, JwksOptions};
pub use keys::{KeyError, KeyFamily, SignKey, VerifyKey};

/// Claims of a connection token (Centrifugo's names and meanings).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectClaims {
    /// The user id; empty for an anonymous connection.
    pub sub: String,
    /// Expiry of the token, Unix seconds; also of the connection unless `expire_at` says
    /// otherwise. Absent: the token never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, Unix seconds (RFC 7519 allows fractions). Checked here rather than only
    /// by jsonwebtoken, which treats a value it cannot read as a `u64` (a fraction, 1e49) as
    /// absent and accepts the token: found by the `jwt` fuzz target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    /// Audience: a string or a list (checked by jsonwebtoken against `auth.audience`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<serde_json::Value>,
    /// Becomes `conn_info` in presence and publications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
    /// `info` as base64 (binary info; here it must decode to JSON until payloads are bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Channels the server subscribes the connection to at connect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeOptions>,
    /// Kept server-side with the connection, never sent to clients; given to proxies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Json>,
    /// When the connection expires (Unix seconds), instead of `exp`; 0: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// Never set in a connection token: a token with a `channel` claim is a subscription
    /// token, and [`Tokens::verify_connect`] refuses it (as Centrifugo does), so that a
    /// token handed out for one channel cannot open a connection or call the chat's API.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// Claims of a subscription token for a private channel.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionClaims {
    pub sub: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, Unix seconds; see [`ConnectClaims::nbf`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<serde_json::Value>,
    /// Becomes `chan_info` in presence and publications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// When the subscription expires instead of `exp`; 0: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

impl SubscriptionClaims {
    /// When the subscription expires (Unix seconds; `None`: never): `expire_at`, else `exp`.
    pub fn expires_at(&self) -> Option<u64> {
        expiry(self.exp, self.expire_at)
    }

    /// `info`, or `b64info` decoded.
    pub fn channel_info(&self) -> Result<Option<Json>, TokenError> {
        info_of(self.info.clone(), self.b64info.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key cannot be had now (the JWKS endpoint is down): not the token's fault, the
    /// client should try again later.
    #[error("token not verified now: {0}")]
    Unavailable(String),
}

/// How tokens are checked: the keys and the optional claim checks.
#[derive(Default)]
pub struct TokenKeys {
    /// HS* secret; empty: HS* tokens are refused.
    pub hmac_secret: String,
    pub rsa_public_key: Option<VerifyKey>,
    pub ecdsa_public_key: Option<VerifyKey>,
    pub jwks: Option<Arc<Jwks>>,
    /// Tokens must carry this `aud` (and subscription tokens too), when set.
    pub audience: Option<String>,
    /// Tokens must carry this `iss`, when set.
    pub issuer: Option<String>,
}

/// Signs and verifies tokens.
pub struct Tokens {
    encoding: Option<EncodingKey>,
    hmac: Option<DecodingKey>,
    rsa: Option<VerifyKey>,
    ecdsa: Option<VerifyKey>,
    jwks: Option<Arc<Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Refuses a token whose `nbf` is still in the future (no leeway, like `exp`).
fn check_not_before(nbf: Option<f64>) -> Result<(), TokenError> {
    match nbf {
        Some(nbf) if nbf > unix_now() as f64 => Err(TokenError::Invalid("token not valid yet (nbf)".into())),
        _ => Ok(()),
    }
}

/// Connection or subscription expiry: `expire_at` when present (0: never), else `exp`.
fn expiry(exp: Option<u64>, expire_at: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => exp,
    }
}

/// `info`, or else `b64info` decoded (binary info stays binary).
fn info_of(info: Option<Json>, b64info: Option<&str>) -> Result<Option<Json>, TokenError> {
    match (info, b64info) {
        (Some(info), _) => Ok(Some(info)),
        (None, Some(b64)) => decode_b64_json(b64).map(Some).map_err(TokenError::Invalid),
        (None, None) => Ok(None),
    }
}

/// Base64 (standard alphabet, as Centrifugo's `b64*` fields): a payload, JSON when the
/// bytes are a JSON text, binary otherwise (see `hubbub_protocol::payload`).
pub fn decode_b64_json(b64: &str) -> Result<Json, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "b64 field is not base64".to_string())?;
    Ok(hubbub_protocol::Payload::from_bytes(&bytes))
}

impl ConnectClaims {
    /// What the token grants: its claims checked and decoded (`b64info`, the `subs`'
    /// `b64info`/`b64data`, `expire_at` over `exp`).
    pub fn into_grant(self) -> Result<ConnectGrant, TokenError> {
        let info = info_of(self.info, self.b64info.as_deref())?;
        let mut subs = BTreeMap::new();
        for (channel, mut options) in self.subs {
            options.info = info_of(options.info.take(), options.b64info.take().as_deref())?;
            if let Some(b64) = options.b64data.take() {
                if options.data.is_none() {
                    options.data = Some(decode_b64_json(&b64).map_err(TokenError::Invalid)?);
                }
            }
            subs.insert(channel, options);
        }
        Ok(ConnectGrant {
            user: self.sub,
            info,
            channels: self.channels,
            subs,
            meta: self.meta,
            expire_at: expiry(self.exp, self.expire_at),
        })
    }
}

impl Tokens {
    /// HS256 with one shared secret, no other key, no `aud`/`iss` check.
    pub fn new(secret: &str) -> Self {
        Tokens::with_keys(TokenKeys { hmac_secret: secret.to_owned(), ..Default::default() })
    }

    pub fn with_keys(keys: TokenKeys) -> Self {
        let secret = (!keys.hmac_secret.is_empty()).then_some(keys.hmac_secret.as_bytes());
        Tokens {
            encoding: secret.map(EncodingKey::from_secret),
            hmac: secret.map(DecodingKey::from_secret),
            rsa: keys.rsa_public_key,
            ecdsa: keys.ecdsa_public_key,
            jwks: keys.jwks,
            audience: keys.audience,
            issuer: keys.issuer,
        }
    }

    /// The JWKS key set, if an endpoint is configured.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        // `nbf` (not before) is checked too: a token valid only later is refused now.
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        validation
    }

    /// The algorithm of a token and the key held here for it, if it needs no fetch:
    /// `Err(Some(kid))` when the JWKS must be asked for key `kid`.
    fn local_key(&self, token: &str) -> Result<(Algorithm, Result<&DecodingKey, String>), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let alg = header.alg;
        let refuse = |why: &str| Err(TokenError::Invalid(format!("{alg:?} token: {why}")));
        use Algorithm::*;
        let key = match alg {
            HS256 | HS384 | HS512 => match &self.hmac {
                Some(key) => Ok(key),
                None => return refuse("no HMAC secret is configured"),
            },
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 => {
                let configured = if matches!(alg, ES256 | ES384) { &self.ecdsa } else { &self.rsa };
                match (&self.jwks, header.kid, configured) {
                    (Some(_), Some(kid), _) => Err(kid),
                    (_, _, Some(key)) if key.family.accepts(alg) => Ok(&key.key),
                    (_, _, Some(_)) => return refuse("the configured key is for another algorithm"),
                    (Some(_), None, None) => return refuse("no `kid` to find its JWKS key by"),
                    (None, _, None) => return refuse("no key for this algorithm is configured"),
                }
            }
            EdDSA => return refuse("algorithm not accepted"),
        };
        Ok((alg, key))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<T, TokenError> {
        match jsonwebtoken::decode::<T>(token, key, &self.validation(alg)) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    /// Verifies with whichever key the token needs, asking the JWKS endpoint if need be.
    async fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        match self.local_key(token)? {
            (alg, Ok(key)) => self.decode(token, alg, key),
            (alg, Err(kid)) => {
                let jwks = self.jwks.as_ref().expect("a kid to look up only with a JWKS");
                let key = jwks.key(&kid).await?;
                if !key.family.accepts(alg) {
                    return Err(TokenError::Invalid(format!(
                        "{alg:?} token: key {kid:?} is for another algorithm"
                    )));
                }
                self.decode(token, alg, &key.key)
            }
        }
    }

    /// Verifies with the keys held here only (the HMAC secret, PEM keys): a token whose
    /// key is in the JWKS is `Unavailable`. For callers that cannot wait.
    fn verify_local<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        match self.local_key(token)? {
            (alg, Ok(key)) => self.decode(token, alg, key),
            (_, Err(_)) => Err(TokenError::Unavailable("the token's key is in the JWKS".into())),
        }
    }

    fn check_connect(claims: ConnectClaims) -> Result<ConnectGrant, TokenError> {
        check_not_before(claims.nbf)?;
        if !claims.channel.is_empty() {
            return Err(TokenError::Invalid("a subscription token is not a connection token".into()));
        }
        claims.into_grant()
    }

    fn check_subscription(claims: SubscriptionClaims) -> Result<SubscriptionClaims, TokenError> {
        check_not_before(claims.nbf)?;
        if claims.channel.is_empty() {
            return Err(TokenError::Invalid("subscription token without channel".into()));
        }
        Ok(claims)
    }

    /// Verifies a connection token: what it grants. A subscription token (one with a
    /// `channel` claim) is not one.
    pub async fn verify_connect(&self, token: &str) -> Result<ConnectGrant, TokenError> {
        Self::check_connect(self.verify(token).await?)
    }

    /// [`Tokens::verify_connect`] without fetching keys (the chat's own access tokens are
    /// HS256; the fuzz target).
    pub fn verify_connect_local(&self, token: &str) -> Result<ConnectGrant, TokenError> {
        Self::check_connect(self.verify_local(token)?)
    }

    pub async fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        Self::check_subscription(self.verify(token).await?)
    }

    pub fn verify_subscription_local(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        Self::check_subscription(self.verify_local(token)?)
    }

    /// Signs claims with the HMAC secret (HS256), adding the configured `aud` and `iss`
    /// when the claims have none, so that tokens this server makes pass its own checks.
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let key = self.encoding.as_ref().expect("minting needs the HMAC secret (always set by the server)");
        let mut value = serde_json::to_value(claims).expect("claims serialize");
        if let Some(map) = value.as_object_mut() {
            if let Some(aud) = &self.audience {
                map.entry("aud").or_insert_with(|| aud.clone().into());
            }
            if let Some(iss) = &self.issuer {
                map.entry("iss").or_insert_with(|| iss.clone().into());
            }
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &value, key)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// A connection token for `user`, valid for `ttl` (forever when `None`).
    pub fn mint_connect(&self, user: &str, ttl: Option<Duration>, channels: Vec<String>) -> String {
        let now = unix_now();
        self.sign(&ConnectClaims {
            sub: user.to_owned(),
            exp: ttl.map(|t| now + t.as_secs().max(1)),
            iat: Some(now),
            channels,
            ..Default::default()
        })
    }

    /// A subscription token for `user` on `channel`.
    pub fn mint_subscription(&self, user: &str, channel: &str, ttl: Option<Duration>) -> String {
        let now = unix_now();
        self.sign(&SubscriptionClaims {
            sub: user.to_owned(),
            channel: channel.to_owned(),
            exp: ttl.map(|t| now + t.as_secs().max(1)),
            iat: Some(now),
            ..Default::default()
        })
    }
}

/// Signs `claims` with a private key (RS256, or ES256/ES384 by the key's curve), with `kid`
/// in the header if given: tokens as an identity provider makes them (CLI, tests).
pub fn sign_with_key<T: Serialize>(key: &SignKey, kid: Option<&str>, claims: &T) -> Result<String, String> {
    let mut header = Header::new(key.algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.key).map_err(|e| format!("cannot sign: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = Tokens::new("s3cret");
        let tok = t.mint_connect("42", Some(Duration::from_secs(60)), vec!["news".into()]);
        let c = t.verify_connect_local(&tok).unwrap();
        assert_eq!(c.user, "42");
        assert_eq!(c.channels, vec!["news".to_string()]);
        assert!(matches!(Tokens::new("other").verify_connect_local(&tok), Err(TokenError::Invalid(_))));
        assert!(matches!(t.verify_connect_local("garbage"), Err(TokenError::Invalid(_))));

        let expired =
            t.sign(&ConnectClaims { sub: "1".into(), exp: Some(unix_now() - 10), ..Default::default() });
        assert_eq!(t.verify_connect_local(&expired).unwrap_err(), TokenError::Expired);

        let sub = t.mint_subscription("42", "$secret", None);
        assert_eq!(t.verify_subscription_local(&sub).unwrap().channel, "$secret");
    }

    #[test]
    fn each_kind_only_where_it_belongs() {
        let t = Tokens::new("s3cret");
        let sub = t.mint_subscription("42", "$secret", None);
        assert!(matches!(t.verify_connect_local(&sub), Err(TokenError::Invalid(_))));
        let conn = t.mint_connect("42", None, Vec::new());
        assert!(matches!(t.verify_subscription_local(&conn), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn not_before_is_checked() {
        #[derive(Serialize)]
        struct Nbf<'a> {
            sub: &'a str,
            channel: &'a str,
            nbf: u64,
        }
        let t = Tokens::new("s3cret");
        let later = t.sign(&Nbf { sub: "1", channel: "", nbf: unix_now() + 3600 });
        assert!(matches!(t.verify_connect_local(&later), Err(TokenError::Invalid(_))));
        let sub_later = t.sign(&Nbf { sub: "1", channel: "$x", nbf: unix_now() + 3600 });
        assert!(matches!(t.verify_subscription_local(&sub_later), Err(TokenError::Invalid(_))));
        let now = t.sign(&Nbf { sub: "1", channel: "", nbf: unix_now().saturating_sub(1) });
        assert_eq!(t.verify_connect_local(&now).unwrap().user, "1");
        // A date jsonwebtoken cannot read as a u64 is still a date in the future.
        for nbf in [serde_json::json!(1.9755555555055548e49), serde_json::json!(unix_now() as f64 + 3600.5)] {
            let later = t.sign(&serde_json::json!({ "sub": "1", "nbf": nbf }));
            assert!(matches!(t.verify_connect_local(&later), Err(TokenError::Invalid(_))), "{nbf}");
            let sub_later = t.sign(&serde_json::json!({ "sub": "1", "channel": "$x", "nbf": nbf }));
            assert!(matches!(t.verify_subscription_local(&sub_later), Err(TokenError::Invalid(_))), "{nbf}");
        }
        let text = t.sign(&serde_json::json!({ "sub": "1", "nbf": "tomorrow" }));
        assert!(t.verify_connect_local(&text).is_err());
        let fraction_ago = t.sign(&serde_json::json!({ "sub": "1", "nbf": unix_now() as f64 - 0.5 }));
        assert!(t.verify_connect_local(&fraction_ago).is_ok());
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn expire_at_info_and_subs_become_the_grant() {
        let t = Tokens::new("s3cret");
        let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"name":"Ann"}"#);
        let data = base64::engine::general_purpose::STANDARD.encode(br#"{"hi":1}"#);
        let token = t.sign(&serde_json::json!({
            "sub": "7", "exp": unix_now() + 60, "expire_at": 0, "b64info": b64,
            "meta": {"tenant": 3}, "channels": ["news"],
            "subs": {"feed": {"b64data": data, "info": {"x": 1}}}
        }));
        let grant = t.verify_connect_local(&token).unwrap();
        assert_eq!(grant.expire_at, None, "expire_at 0: the connection never expires");
        assert_eq!(grant.info.unwrap().as_json().unwrap(), r#"{"name":"Ann"}"#);
        assert_eq!(grant.meta.unwrap().as_json().unwrap(), r#"{"tenant":3}"#);
        assert_eq!(grant.subs["feed"].data.as_ref().unwrap().as_json().unwrap(), r#"{"hi":1}"#);
        assert_eq!(grant.subs["feed"].info.as_ref().unwrap().as_json().unwrap(), r#"{"x":1}"#);
        let later = unix_now() + 500;
        let token = t.sign(&serde_json::json!({"sub": "7", "exp": unix_now() + 60, "expire_at": later}));
        assert_eq!(t.verify_connect_local(&token).unwrap().expire_at, Some(later));
        let bad = t.sign(&serde_json::json!({"sub": "7", "b64info": "***"}));
        assert!(matches!(t.verify_connect_local(&bad), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let keys = || TokenKeys {
            hmac_secret: "s".into(),
            audience: Some("hubbub".into()),
            issuer: Some("idp".into()),
            ..Default::default()
        };
        let t = Tokens::with_keys(keys());
        let plain = Tokens::new("s");
        // What this server mints carries them.
        assert!(t.verify_connect_local(&t.mint_connect("1", None, vec![])).is_ok());
        for claims in [
            serde_json::json!({"sub": "1"}),
            serde_json::json!({"sub": "1", "aud": "hubbub"}),
            serde_json::json!({"sub": "1", "iss": "idp"}),
            serde_json::json!({"sub": "1", "aud": "other", "iss": "idp"}),
            serde_json::json!({"sub": "1", "aud": "hubbub", "iss": "other"}),
        ] {
            assert!(
                matches!(t.verify_connect_local(&plain.sign(&claims)), Err(TokenError::Invalid(_))),
                "{claims}"
            );
        }
        let ok = plain.sign(&serde_json::json!({"sub": "1", "aud": ["x", "hubbub"], "iss": "idp"}));
        assert!(t.verify_connect_local(&ok).is_ok());
    }

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        // Without an HMAC secret, HS256 tokens are refused whatever key they were made with.
        let t = Tokens::with_keys(TokenKeys::default());
        let token = Tokens::new("x").mint_connect("1", None, vec![]);
        assert!(matches!(t.verify_connect_local(&token), Err(TokenError::Invalid(_))));
    }
}
