//! The token keys of the configuration (`[auth]`), made into the core's [`Tokens`], and the
//! HTTP side of JWKS: the fetch of the key set (core has no HTTP) and its periodic refresh.

use crate::config::{AuthConfig, ConfigError};
use bytes::Bytes;
use hubbub_core::auth::{keys, Jwks, JwksFetch, JwksOptions, TokenKeys, Tokens};
use std::sync::Arc;
use std::time::Duration;

/// A JWKS document larger than this is refused (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// One fetch of the JWKS endpoint may take this long, connection included.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A PEM key setting: the PEM text itself, or the path of a file holding it.
fn read_pem(key: &str, value: &str) -> Result<String, ConfigError> {
    if value.contains("-----BEGIN") {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value).map_err(|e| ConfigError::Key {
        key: key.into(),
        message: format!("cannot read PEM file {value:?}: {e}"),
    })
}

fn public_key(key: &str, value: &str) -> Result<Option<keys::VerifyKey>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let pem = read_pem(key, value)?;
    keys::public_key_from_pem(&pem)
        .map(Some)
        .map_err(|e| ConfigError::Key { key: key.into(), message: e.to_string() })
}

/// Checks the keys of `[auth]` (the PEM keys parse, the JWKS endpoint is an http(s) URL):
/// `hubbub checkconfig` and every start.
pub fn validate(auth: &AuthConfig) -> Result<(), ConfigError> {
    let rsa = public_key("auth.rsa_public_key", &auth.rsa_public_key)?;
    if rsa.as_ref().is_some_and(|k| k.family != keys::KeyFamily::Rsa) {
        return Err(ConfigError::Key {
            key: "auth.rsa_public_key".into(),
            message: "this is not an RSA key".into(),
        });
    }
    let ec = public_key("auth.ecdsa_public_key", &auth.ecdsa_public_key)?;
    if ec.as_ref().is_some_and(|k| k.family == keys::KeyFamily::Rsa) {
        return Err(ConfigError::Key {
            key: "auth.ecdsa_public_key".into(),
            message: "this is not an EC key".into(),
        });
    }
    if !auth.jwks_public_endpoint.is_empty() {
        HttpJwks::new(&auth.jwks_public_endpoint)
            .map_err(|message| ConfigError::Key { key: "auth.jwks_public_endpoint".into(), message })?;
    }
    Ok(())
}

/// The token checker the configuration describes. The JWKS key set is not fetched here:
/// [`start_jwks_refresh`] does, in the background.
pub fn build(auth: &AuthConfig) -> Result<Tokens, ConfigError> {
    validate(auth)?;
    let jwks = match auth.jwks_public_endpoint.as_str() {
        "" => None,
        url => {
            let fetch = HttpJwks::new(url)
                .map_err(|message| ConfigError::Key { key: "auth.jwks_public_endpoint".into(), message })?;
            let options =
                JwksOptions { cache_ttl: auth.jwks_cache_ttl, refetch_interval: auth.jwks_refetch_interval };
            Some(Arc::new(Jwks::new(Arc::new(fetch), options)))
        }
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(Tokens::with_keys(TokenKeys {
        hmac_secret: auth.token_secret.clone(),
        rsa_public_key: public_key("auth.rsa_public_key", &auth.rsa_public_key)?,
        ecdsa_public_key: public_key("auth.ecdsa_public_key", &auth.ecdsa_public_key)?,
        jwks,
        audience: non_empty(&auth.audience),
        issuer: non_empty(&auth.issuer),
    }))
}

/// Fetches the key set once now and then every `auth.jwks_cache_ttl`, so that tokens find
/// fresh keys without waiting; a token naming an unknown key still triggers a fetch
/// (bounded by `auth.jwks_refetch_interval`). Ends with the runtime.
pub fn start_jwks_refresh(jwks: Arc<Jwks>, every: Duration) {
    tokio::spawn(async move {
        loop {
            match jwks.refresh().await {
                Ok(n) => tracing::info!(keys = n, "JWKS fetched"),
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS endpoint not read (tokens signed with its keys wait for it)")
                }
            }
            tokio::time::sleep(every.max(Duration::from_secs(1))).await;
        }
    });
}

/// GETs a JWKS document over HTTP/1.1, or HTTPS (TLS 1.3, the system's roots).
pub struct HttpJwks {
    uri: hyper::Uri,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl HttpJwks {
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tls_config()?),
            _ => return Err(format!("{url:?}: expected an http:// or https:// URL")),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{url:?}: no host"));
        }
        Ok(HttpJwks { uri, tls })
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let host = self.uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let port = self.uri.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.request(tcp).await,
            Some(config) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("bad TLS name: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.request(tls).await
            }
        }
    }

    async fn request<IO>(&self, io: IO) -> Result<Vec<u8>, String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use http_body_util::BodyExt;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, concat!("hubbub/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                    if out.len() + data.len() > MAX_JWKS_BYTES {
                        return Err(format!("document over {MAX_JWKS_BYTES} bytes"));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(out)
        }
        .await;
        driver.abort();
        result
    }
}

#[async_trait::async_trait]
impl JwksFetch for HttpJwks {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(JWKS_FETCH_TIMEOUT, self.get()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", JWKS_FETCH_TIMEOUT.as_secs())),
        }
    }
}

fn tls_config() -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
