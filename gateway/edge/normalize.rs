//! The request normaliser: runs once, before routing, so that routing, auth, limits, logs and the
//! upstream all see the same request. It turns the request target into one canonical origin-form path
//! (RFC 3986 dot-segment removal, percent-encoded unreserved characters decoded, slashes merged),
//! takes the host of an absolute-form target as the Host (RFC 9112 3.2.2), and leaves exactly one
//! unambiguous framing header. What cannot be made unambiguous is refused with 400.
//!
//! It never forwards bytes it did not check: the normalised target replaces the client's, unless a
//! route asks for the raw one (`proxy.forward_raw_path`, documented as unsafe).

use std::borrow::Cow;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Uri, Version};
use pingora::http::RequestHeader;

/// What to do with `%2F` and `%5C` (and a raw `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400: the request could mean two different paths to two different parsers.
    Reject,
    /// Keep them encoded (`%2F`, `%5C`): they are not path separators here, and the backend gets
    /// them encoded too.
    Keep,
}

/// What to do with header names that contain `_` (NGINX's `underscores_in_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Remove the header before anything reads it (NGINX's default): `Content_Length` can never be
    /// taken for `Content-Length` by a backend that folds `_` into `-`.
    Drop,
    /// 400.
    Reject,
    /// Keep and forward them.
    Allow,
}

/// `server.normalize`: how requests are made canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalizeSettings {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub underscores_in_headers: Underscores,
}

impl Default for NormalizeSettings {
    fn default() -> Self {
        NormalizeSettings {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            underscores_in_headers: Underscores::Drop,
        }
    }
}

/// Why a request was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Target,
    Path,
    EscapedSlash,
    MissingHost,
    Host,
    Framing,
    Underscore,
}

impl Malformed {
    /// Stable code, also the access log's `error` field.
    pub fn code(self) -> &'static str {
        match self {
            Malformed::Target => "bad_request_target",
            Malformed::Path => "bad_path",
            Malformed::EscapedSlash => "escaped_slash_in_path",
            Malformed::MissingHost => "missing_host",
            Malformed::Host => "bad_host",
            Malformed::Framing => "bad_framing",
            Malformed::Underscore => "underscore_in_header_name",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Malformed::Target => "the request target must be an absolute path or an http(s) URL",
            Malformed::Path => {
                "the path has a control character, NUL, invalid percent-encoding or is not UTF-8"
            }
            Malformed::EscapedSlash => "encoded `/` or `\\` (%2F, %5C) or a `\\` in the path",
            Malformed::MissingHost => "HTTP/1.1 requests need a Host header",
            Malformed::Host => "the Host header is not a valid host[:port]",
            Malformed::Framing => {
                "Transfer-Encoding must be exactly `chunked`, once; Content-Length once"
            }
            Malformed::Underscore => "header names with `_` are not accepted here",
        }
    }
}

/// Make `req` canonical in place. Returns the client's original target when it was changed (the
/// value a `forward_raw_path` route sends instead), `None` when it was already canonical.
pub fn normalize_request(
    req: &mut RequestHeader,
    settings: &NormalizeSettings,
) -> Result<Option<Uri>, Malformed> {
    if !req.raw_path_is_utf8() {
        return Err(Malformed::Path);
    }
    let absolute_host = match req.raw_path().first() {
        Some(b'/') => None,
        Some(b'*') if req.method == Method::OPTIONS && req.raw_path() == b"*" => {
            check_headers(req, settings)?;
            return Ok(None);
        }
        _ => {
            let authority = absolute_form_authority(req.raw_path()).ok_or(Malformed::Target)?;
            Some(HeaderValue::from_bytes(authority).map_err(|_| Malformed::Host)?)
        }
    };
    let absolute = absolute_host.is_some();
    if let Some(host) = absolute_host {
        // Pingora has checked that a Host header, if any, equals this authority; the authority is the
        // host from here on, for routing and for the backend alike.
        req.insert_header(HOST, host).map_err(|_| Malformed::Host)?;
    }
    check_headers(req, settings)?;

    let normal = normalize_path(req.uri.path(), settings)?;
    if !absolute && matches!(normal, Cow::Borrowed(_)) {
        return Ok(None);
    }
    let mut target = normal.into_owned();
    if let Some(query) = req.uri.query() {
        target.push('?');
        target.push_str(query);
    }
    // HTTP/2 requests keep their scheme and authority; only the path and query change.
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(target.try_into().map_err(|_| Malformed::Path)?);
    let uri = Uri::from_parts(parts).map_err(|_| Malformed::Path)?;
    // The original as it would have been forwarded (an absolute-form target's authority now lives in
    // Host).
    let original = req.uri.clone();
    req.set_uri(uri);
    Ok(Some(original))
}

/// The authority of an `http://` or `https://` absolute-form target.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty()).then_some(authority)
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &bytes[prefix.len()..])
}

/// Host present where required and well-formed; one framing header; underscores per policy.
fn check_headers(req: &mut RequestHeader, settings: &NormalizeSettings) -> Result<(), Malformed> {
    match req.headers.get(HOST) {
        Some(host) if !is_valid_host(host.as_bytes()) => return Err(Malformed::Host),
        Some(_) => {}
        // HTTP/2 carries the host in `:authority`; HTTP/1.0 may have none.
        None if req.version == Version::HTTP_11 => return Err(Malformed::MissingHost),
        None => {}
    }
    check_framing(req)?;
    if settings.underscores_in_headers != Underscores::Allow {
        let has_underscore = req.headers.keys().any(|name| name.as_str().contains('_'));
        if has_underscore {
            if settings.underscores_in_headers == Underscores::Reject {
                return Err(Malformed::Underscore);
            }
            let names: Vec<_> = req
                .headers
                .keys()
                .filter(|name| name.as_str().contains('_'))
                .cloned()
                .collect();
            for name in names {
                req.remove_header(&name);
            }
        }
    }
    Ok(())
}

/// `Transfer-Encoding` exactly `chunked` in one field; `Content-Length` in one field with one value.
/// Pingora has already refused differing lengths and dropped `Content-Length` beside
/// `Transfer-Encoding`; identical repeats (`5, 5` or two fields) are merged into one here.
fn check_framing(req: &mut RequestHeader) -> Result<(), Malformed> {
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        let single = codings.next().is_none();
        let chunked = coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
        if !(single && chunked) {
            return Err(Malformed::Framing);
        }
        return Ok(());
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(());
    };
    if lengths.next().is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let mut value: Option<u64> = None;
    for field in req.headers.get_all(CONTENT_LENGTH) {
        for part in field.as_bytes().split(|&b| b == b',') {
            let part = std::str::from_utf8(part.trim_ascii()).map_err(|_| Malformed::Framing)?;
            let n = part.parse::<u64>().map_err(|_| Malformed::Framing)?;
            if value.is_some_and(|v| v != n) {
                return Err(Malformed::Framing);
            }
            value = Some(n);
        }
    }
    let value = value.ok_or(Malformed::Framing)?;
    req.insert_header(CONTENT_LENGTH, value)
        .map_err(|_| Malformed::Framing)
}

/// The request's declared body length: after `normalize_request`, at most one `Content-Length` value.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// `host[:port]`: reg-name, IPv4 or `[IPv6]` characters only (RFC 3986 3.2.2), no userinfo.
fn is_valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` needs the slow path: percent signs, backslashes, control bytes, `//`, or a
/// segment that starts with a dot (`/.`, `/..`, `/.x`).
fn needs_work(path: &[u8], merge_slashes: bool) -> bool {
    path.first() != Some(&b'/')
        || path.iter().enumerate().any(|(i, &b)| match b {
            b'%' | b'\\' => true,
            b if b < 0x20 || b == 0x7f => true,
            b'/' => match path.get(i + 1) {
                Some(b'/') => merge_slashes,
                Some(b'.') => true,
                _ => false,
            },
            _ => false,
        })
}

/// The canonical form of an origin-form path; borrowed when it already is canonical.
pub fn normalize_path<'a>(
    path: &'a str,
    settings: &NormalizeSettings,
) -> Result<Cow<'a, str>, Malformed> {
    let bytes = path.as_bytes();
    if !needs_work(bytes, settings.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    if bytes.first() != Some(&b'/') {
        return Err(Malformed::Target);
    }
    let decoded = decode_unreserved(bytes, settings.escaped_slashes)?;
    let normal = remove_dot_segments(&decoded, settings.merge_slashes);
    if normal == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode percent-encoded unreserved characters (once: `%252e` stays `%252E`), upper-case the hex of
/// every other escape, and refuse NUL, control bytes and invalid escapes.
fn decode_unreserved(bytes: &[u8], escaped_slashes: EscapedSlashes) -> Result<String, Malformed> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(Malformed::Path);
                };
                let value = hi << 4 | lo;
                if is_unreserved(value) {
                    out.push(value);
                } else if value < 0x20 || value == 0x7f {
                    return Err(Malformed::Path);
                } else if (value == b'/' || value == b'\\')
                    && escaped_slashes == EscapedSlashes::Reject
                {
                    return Err(Malformed::EscapedSlash);
                } else {
                    out.extend_from_slice(&[b'%', HEX[hi as usize], HEX[lo as usize]]);
                }
                i += 3;
            }
            b'\\' if escaped_slashes == EscapedSlashes::Reject => {
                return Err(Malformed::EscapedSlash)
            }
            b'\\' => {
                out.extend_from_slice(b"%5C");
                i += 1;
            }
            b if b < 0x20 || b == 0x7f => return Err(Malformed::Path),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Malformed::Path)
}

/// RFC 3986 5.2.4 over a path that starts with `/`; `..` above the root stays at the root. With
/// `merge_slashes`, empty segments go too (`//a` is `/a`).
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            "" if last => trailing_slash = true,
            "" if merge_slashes => {}
            other => {
                segments.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// `path` with `query` (if any) as a request target.
pub fn build_target(path: &str, query: Option<&str>) -> pingora::Result<Uri> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    text.parse::<Uri>().map_err(|_| {
        pingora::Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "the rewritten target is not a valid URI",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, Malformed> {
        normalize_path(path, &NormalizeSettings::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a.b/c-d_e~f", "/api/v1/x?"] {
            let settings = NormalizeSettings::default();
            assert!(matches!(
                normalize_path(path, &settings),
                Ok(Cow::Borrowed(_))
            ));
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(normal("/public/../secure/x").unwrap(), "/secure/x");
        assert_eq!(normal("/./secure").unwrap(), "/secure");
        assert_eq!(normal("/a/b/..").unwrap(), "/a/");
        assert_eq!(normal("/a/.").unwrap(), "/a/");
        assert_eq!(normal("/..").unwrap(), "/");
        assert_eq!(normal("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(normal("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(normal("/a/..b/c").unwrap(), "/a/..b/c");
    }

    #[test]
    fn encoded_dots_and_unreserved_characters_are_decoded_once() {
        assert_eq!(normal("/public/%2e%2e/secure").unwrap(), "/secure");
        assert_eq!(normal("/public/%2E%2E/secure").unwrap(), "/secure");
        assert_eq!(normal("/%73ecure").unwrap(), "/secure");
        assert_eq!(normal("/a%2fb").unwrap_err(), Malformed::EscapedSlash);
        // Encoded percent signs stay encoded: no double decoding.
        assert_eq!(normal("/%252e%252e/x").unwrap(), "/%252e%252e/x");
        assert_eq!(normal("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(normal("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn slashes_merge_unless_configured_otherwise() {
        assert_eq!(normal("//secure").unwrap(), "/secure");
        assert_eq!(normal("/a///b//").unwrap(), "/a/b/");
        let keep = NormalizeSettings {
            merge_slashes: false,
            ..NormalizeSettings::default()
        };
        assert_eq!(normalize_path("//secure", &keep).unwrap(), "//secure");
        assert_eq!(normalize_path("/a//../b", &keep).unwrap(), "/a/b");
    }

    #[test]
    fn nul_controls_bad_escapes_and_backslashes_are_refused() {
        assert_eq!(normal("/a%00b").unwrap_err(), Malformed::Path);
        assert_eq!(normal("/a%0d%0ab").unwrap_err(), Malformed::Path);
        assert_eq!(normal("/a\u{0}b").unwrap_err(), Malformed::Path);
        assert_eq!(normal("/a%zz").unwrap_err(), Malformed::Path);
        assert_eq!(normal("/a%4").unwrap_err(), Malformed::Path);
        assert_eq!(normal("/a\\..\\b").unwrap_err(), Malformed::EscapedSlash);
        assert_eq!(normal("/a%5cb").unwrap_err(), Malformed::EscapedSlash);
        assert_eq!(normal("\u{0}/secure").unwrap_err(), Malformed::Target);
        let keep = NormalizeSettings {
            escaped_slashes: EscapedSlashes::Keep,
            ..NormalizeSettings::default()
        };
        assert_eq!(normalize_path("/a%2fb/..", &keep).unwrap(), "/");
        assert_eq!(normalize_path("/x/a%2fb", &keep).unwrap(), "/x/a%2Fb");
        assert_eq!(normalize_path("/a\\b", &keep).unwrap(), "/a%5Cb");
    }

    fn request(raw: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", raw, None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn absolute_form_targets_take_their_authority_as_host() {
        let mut req = request(b"http://internal.test/x/../y?q=1", &[]);
        let original = normalize_request(&mut req, &NormalizeSettings::default()).unwrap();
        assert_eq!(req.headers.get(HOST).unwrap(), "internal.test");
        assert_eq!(req.uri.to_string(), "/y?q=1");
        assert_eq!(req.raw_path(), b"/y?q=1");
        assert_eq!(original.unwrap().to_string(), "/x/../y?q=1");
        let mut other = request(b"ftp://internal.test/x", &[("host", "internal.test")]);
        assert_eq!(
            normalize_request(&mut other, &NormalizeSettings::default()).unwrap_err(),
            Malformed::Target
        );
    }

    #[test]
    fn http11_without_host_is_refused() {
        let mut req = request(b"/x", &[]);
        assert_eq!(
            normalize_request(&mut req, &NormalizeSettings::default()).unwrap_err(),
            Malformed::MissingHost
        );
        let mut old = request(b"/x", &[]);
        old.set_version(Version::HTTP_10);
        assert!(normalize_request(&mut old, &NormalizeSettings::default()).is_ok());
        let mut bad = request(b"/x", &[("host", "a b")]);
        assert_eq!(
            normalize_request(&mut bad, &NormalizeSettings::default()).unwrap_err(),
            Malformed::Host
        );
    }

    #[test]
    fn repeated_identical_lengths_become_one() {
        let mut req = request(
            b"/x",
            &[
                ("host", "a"),
                ("content-length", "5, 5"),
                ("content-length", "5"),
            ],
        );
        normalize_request(&mut req, &NormalizeSettings::default()).unwrap();
        let lengths: Vec<_> = req.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"]);
        let mut chunked_twice = request(
            b"/x",
            &[("host", "a"), ("transfer-encoding", "chunked, chunked")],
        );
        assert_eq!(
            normalize_request(&mut chunked_twice, &NormalizeSettings::default()).unwrap_err(),
            Malformed::Framing
        );
    }

    #[test]
    fn underscored_names_are_dropped_rejected_or_kept() {
        let headers = [("host", "a"), ("content_length", "5"), ("x-ok", "1")];
        let mut req = request(b"/x", &headers);
        normalize_request(&mut req, &NormalizeSettings::default()).unwrap();
        assert!(req.headers.get("content_length").is_none());
        assert!(req.headers.get("x-ok").is_some());
        let reject = NormalizeSettings {
            underscores_in_headers: Underscores::Reject,
            ..NormalizeSettings::default()
        };
        let mut req = request(b"/x", &headers);
        assert_eq!(
            normalize_request(&mut req, &reject).unwrap_err(),
            Malformed::Underscore
        );
        let allow = NormalizeSettings {
            underscores_in_headers: Underscores::Allow,
            ..NormalizeSettings::default()
        };
        let mut req = request(b"/x", &headers);
        normalize_request(&mut req, &allow).unwrap();
        assert!(req.headers.get("content_length").is_some());
    }
}
