//! `http://` / `https://` URLs of upstream services (AI providers, JWKS endpoints) split into what a peer and
//! a request need.

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub tls: bool,
    /// Host without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, `/` when empty.
    pub path_and_query: String,
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{text}`: use an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{text}` has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_string(), |pq| pq.as_str().to_string());
        Ok(HttpUrl {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// `host` or `host:port` when the port is not the scheme's default: the Host header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        let url = HttpUrl::parse("https://api.example.com/v1/").unwrap();
        assert_eq!(
            (
                url.tls,
                url.host.as_str(),
                url.port,
                url.path_and_query.as_str()
            ),
            (true, "api.example.com", 443, "/v1/")
        );
        assert_eq!(url.authority(), "api.example.com");
        let url = HttpUrl::parse("http://[::1]:8000/jwks?x=1").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.authority()),
            ("::1", 8000, "[::1]:8000".to_string())
        );
        assert!(HttpUrl::parse("ftp://x").is_err());
        assert!(HttpUrl::parse("not a url").is_err());
    }
}
