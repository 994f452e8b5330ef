//! What a proxied request carries to its backend besides the client's own head: the `X-Forwarded-*`
//! headers (believed from trusted proxies only), the target as the route rewrites it, and the redirects
//! the edge answers itself. Plain functions over heads, unit-tested without a session.

use http::header::HOST;
use http::{HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use super::client::Caller;
use super::normalize::build_target;
use super::routes::{normalize_host, PathRewrite};

// Static names: Pingora's `insert_header` keeps such a name as it is instead of copying it.
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
const X_FORWARDED_HOST_NAME: &str = "x-forwarded-host";
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(X_FORWARDED_FOR_NAME);
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO_NAME);
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(X_FORWARDED_HOST_NAME);

/// The request's authority: the Host header, or the URI authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// `X-Forwarded-For` (the peer appended to a trusted proxy's list, else the peer alone),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (kept from a trusted proxy, else ours).
pub fn forwarded_headers(
    upstream: &mut RequestHeader,
    original: &RequestHeader,
    caller: &Caller,
    tls: bool,
) -> Result<()> {
    let peer = caller.peer.map(|ip| ip.to_string()).unwrap_or_default();
    let forwarded_for = match original
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if caller.trusted => format!("{existing}, {peer}"),
        _ => peer,
    };
    upstream.insert_header(X_FORWARDED_FOR_NAME, forwarded_for)?;
    if !(caller.trusted && original.headers.contains_key(&X_FORWARDED_PROTO)) {
        upstream.insert_header(X_FORWARDED_PROTO_NAME, if tls { "https" } else { "http" })?;
    }
    if !(caller.trusted && original.headers.contains_key(&X_FORWARDED_HOST)) {
        // The client's Host as it is (a shared buffer, not a copy), or the authority of an HTTP/2 request.
        let host = match original.headers.get(HOST) {
            Some(host) => Some(host.clone()),
            None => original
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if let Some(host) = host.filter(|h| !h.is_empty()) {
            upstream.insert_header(X_FORWARDED_HOST_NAME, host)?;
        }
    }
    Ok(())
}

/// The target the backend gets: the client's raw one for `forward_raw_path` routes (when the normaliser
/// changed it), else the normalised one with the route's path rewrite applied.
pub fn rewrite_target(
    upstream: &mut RequestHeader,
    rewrite: &PathRewrite,
    raw: Option<&Uri>,
) -> Result<()> {
    if let (PathRewrite::Raw, Some(raw)) = (rewrite, raw) {
        upstream.set_uri(raw.clone());
    } else if let Some(path) = rewrite.apply(upstream.uri.path()) {
        let uri = build_target(&path, upstream.uri.query())?;
        upstream.set_uri(uri);
    }
    Ok(())
}

/// A plain listener's redirect to HTTPS: `https://host[:port]/target`.
pub fn https_redirect(req: &RequestHeader, port: u16) -> Result<HeaderValue> {
    let host = normalize_host(request_host(req));
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    location(&format!("https://{host}{port}{uri}"))
}

/// A route's redirect: `to` with `{host}` and `{uri}` filled in.
pub fn route_redirect(to: &str, req: &RequestHeader) -> Result<HeaderValue> {
    let host = normalize_host(request_host(req));
    let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    location(&to.replace("{host}", &host).replace("{uri}", uri))
}

fn location(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "redirect location"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(peer: &str, trusted: bool) -> Caller {
        Caller {
            peer: Some(peer.parse().unwrap()),
            trusted,
            ..Caller::unknown()
        }
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn forwarding_headers_believe_only_trusted_proxies() {
        let original = request(
            "/a",
            &[
                ("host", "shop.test"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let mut upstream = original.clone();
        forwarded_headers(&mut upstream, &original, &caller("192.0.2.1", false), false).unwrap();
        assert_eq!(upstream.headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(upstream.headers["x-forwarded-proto"], "http");
        assert_eq!(upstream.headers["x-forwarded-host"], "shop.test");

        let mut upstream = original.clone();
        forwarded_headers(&mut upstream, &original, &caller("10.0.0.1", true), false).unwrap();
        assert_eq!(upstream.headers["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(upstream.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn targets_are_rewritten_or_kept_raw() {
        let mut upstream = request("/api/v1/x?q=1", &[]);
        rewrite_target(
            &mut upstream,
            &PathRewrite::ReplacePrefix {
                prefix: "/api".into(),
                with: String::new(),
            },
            None,
        )
        .unwrap();
        assert_eq!(upstream.uri, "/v1/x?q=1");

        let raw: Uri = "/a/../b%2fc".parse().unwrap();
        let mut upstream = request("/b", &[]);
        rewrite_target(&mut upstream, &PathRewrite::Raw, Some(&raw)).unwrap();
        assert_eq!(upstream.uri, raw);
    }

    #[test]
    fn redirects_fill_host_port_and_target() {
        let req = request("/pay?x=1", &[("host", "Shop.Test:8080")]);
        assert_eq!(
            https_redirect(&req, 8443).unwrap(),
            "https://shop.test:8443/pay?x=1"
        );
        assert_eq!(
            https_redirect(&req, 443).unwrap(),
            "https://shop.test/pay?x=1"
        );
        assert_eq!(
            route_redirect("https://{host}/new{uri}", &req).unwrap(),
            "https://shop.test/new/pay?x=1"
        );
    }
}
