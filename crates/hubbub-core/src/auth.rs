//! Connection and subscription JWTs (HS256): verification for sessions, minting for the CLI
//! and tests.

use hubbub_protocol::Json;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Claims of a connection token.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectClaims {
    /// The user id; empty for an anonymous connection.
    pub sub: String,
    /// Expiry, Unix seconds. Absent: the connection never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, Unix seconds (RFC 7519 allows fractions). Checked here rather than only
    /// by jsonwebtoken, which treats a value it cannot read as a `u64` (a fraction, 1e49) as
    /// absent and accepts the token: found by the `jwt` fuzz target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    /// Becomes `conn_info` in presence and publications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
    /// Channels the server subscribes the connection to at connect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
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
    /// Becomes `chan_info` in presence and publications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Signs and verifies tokens with one shared secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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

impl Tokens {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_aud = false;
        // `nbf` (not before) is checked too: a token valid only later is refused now.
        validation.validate_nbf = true;
        Tokens {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        match jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    /// Verifies a connection token (also the chat's access token). A subscription token
    /// (one with a `channel` claim) is not one.
    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims: ConnectClaims = self.verify(token)?;
        check_not_before(claims.nbf)?;
        if !claims.channel.is_empty() {
            return Err(TokenError::Invalid("a subscription token is not a connection token".into()));
        }
        Ok(claims)
    }

    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        let claims: SubscriptionClaims = self.verify(token)?;
        check_not_before(claims.nbf)?;
        if claims.channel.is_empty() {
            return Err(TokenError::Invalid("subscription token without channel".into()));
        }
        Ok(claims)
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// A connection token for `user`, valid for `ttl` (forever when `None`).
    pub fn mint_connect(&self, user: &str, ttl: Option<Duration>, channels: Vec<String>) -> String {
        let now = unix_now();
        self.sign(&ConnectClaims {
            sub: user.to_owned(),
            exp: ttl.map(|t| now + t.as_secs().max(1)),
            iat: Some(now),
            nbf: None,
            info: None,
            channels,
            channel: String::new(),
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
            nbf: None,
            info: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = Tokens::new("s3cret");
        let tok = t.mint_connect("42", Some(Duration::from_secs(60)), vec!["news".into()]);
        let c = t.verify_connect(&tok).unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(c.channels, vec!["news".to_string()]);
        assert!(matches!(Tokens::new("other").verify_connect(&tok), Err(TokenError::Invalid(_))));
        assert!(matches!(t.verify_connect("garbage"), Err(TokenError::Invalid(_))));

        let expired =
            t.sign(&ConnectClaims { sub: "1".into(), exp: Some(unix_now() - 10), ..Default::default() });
        assert_eq!(t.verify_connect(&expired).unwrap_err(), TokenError::Expired);

        let sub = t.mint_subscription("42", "$secret", None);
        assert_eq!(t.verify_subscription(&sub).unwrap().channel, "$secret");
    }

    #[test]
    fn each_kind_only_where_it_belongs() {
        let t = Tokens::new("s3cret");
        let sub = t.mint_subscription("42", "$secret", None);
        assert!(matches!(t.verify_connect(&sub), Err(TokenError::Invalid(_))));
        let conn = t.mint_connect("42", None, Vec::new());
        assert!(matches!(t.verify_subscription(&conn), Err(TokenError::Invalid(_))));
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
        assert!(matches!(t.verify_connect(&later), Err(TokenError::Invalid(_))));
        let sub_later = t.sign(&Nbf { sub: "1", channel: "$x", nbf: unix_now() + 3600 });
        assert!(matches!(t.verify_subscription(&sub_later), Err(TokenError::Invalid(_))));
        let now = t.sign(&Nbf { sub: "1", channel: "", nbf: unix_now().saturating_sub(1) });
        assert_eq!(t.verify_connect(&now).unwrap().sub, "1");
        // A date jsonwebtoken cannot read as a u64 is still a date in the future.
        for nbf in [serde_json::json!(1.9755555555055548e49), serde_json::json!(unix_now() as f64 + 3600.5)] {
            let later = t.sign(&serde_json::json!({ "sub": "1", "nbf": nbf }));
            assert!(matches!(t.verify_connect(&later), Err(TokenError::Invalid(_))), "{nbf}");
            let sub_later = t.sign(&serde_json::json!({ "sub": "1", "channel": "$x", "nbf": nbf }));
            assert!(matches!(t.verify_subscription(&sub_later), Err(TokenError::Invalid(_))), "{nbf}");
        }
        let text = t.sign(&serde_json::json!({ "sub": "1", "nbf": "tomorrow" }));
        assert!(t.verify_connect(&text).is_err());
        let fraction_ago = t.sign(&serde_json::json!({ "sub": "1", "nbf": unix_now() as f64 - 0.5 }));
        assert!(t.verify_connect(&fraction_ago).is_ok());
    }
}
