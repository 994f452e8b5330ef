//! JWKS sources of JWT issuers: a file, or a URL fetched with Pingora's HTTP client (DNS resolved
//! asynchronously, TLS verified with SNI). `JwtIssuer::keep_keys_fresh` reloads them every cache TTL and
//! keeps the last good key set when a fetch fails.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::keys::{keys_from_jwks, VerifyKey};
use crate::upstream::url::HttpUrl;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an issuer's JWKS comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(JwksUrl),
}

/// A parsed JWKS URL.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    pub text: String,
    url: HttpUrl,
}

impl JwksUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(JwksUrl {
            text: text.to_string(),
            url: HttpUrl::parse(text)?,
        })
    }
}

impl JwksSource {
    /// Read or fetch the key set.
    pub async fn load(&self) -> Result<Vec<VerifyKey>, String> {
        let text = match self {
            JwksSource::File(path) => tokio::task::spawn_blocking({
                let path = path.clone();
                move || {
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("reading {}: {e}", path.display()))
                }
            })
            .await
            .map_err(|e| e.to_string())??,
            JwksSource::Url(url) => tokio::time::timeout(FETCH_TIMEOUT, fetch(url))
                .await
                .map_err(|_| format!("fetching {} timed out", url.text))??,
        };
        keys_from_jwks(&text)
    }
}

static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

async fn fetch(jwks: &JwksUrl) -> Result<String, String> {
    let (text, url) = (&jwks.text, &jwks.url);
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", url.host))?;
    let sni = if url.tls {
        url.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, url.tls, sni);
    peer.options.connection_timeout = Some(FETCH_TIMEOUT);
    peer.options.read_timeout = Some(FETCH_TIMEOUT);
    let (mut session, _) = CONNECTOR
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connecting to {}: {e}", text))?;
    let mut request = RequestHeader::build("GET", url.path_and_query.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    request
        .insert_header("host", &url.host)
        .map_err(|e| e.to_string())?;
    request
        .insert_header("accept", "application/json")
        .map_err(|e| e.to_string())?;
    request
        .insert_header("user-agent", "gateway-jwks")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err(format!("{} answered {status}", text));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("{} sent more than {MAX_JWKS_BYTES} bytes", text));
        }
    }
    String::from_utf8(body).map_err(|_| format!("{} sent a body that is not UTF-8", text))
}
