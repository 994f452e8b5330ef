//! Who is calling: credentials (mTLS identity, `Authorization: Bearer` JWT or API key, API key headers or
//! query parameter) checked against a route's accepted methods, then the route's consumer/group allowlist.
//! Plain logic over the request head; the proxy turns failures into 401/403 answers.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderName;
use pingora::http::RequestHeader;

use super::consumers::{Consumer, ConsumerTable};
use super::jwt::{looks_like_jwt, JwtError, JwtVerifier};
use super::mtls::ClientIdentity;
use super::normalize::{build_target, hex_value};

/// What a route accepts and who may pass.
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    pub api_key: bool,
    pub jwt: bool,
    pub mtls: bool,
    pub consumers: Vec<String>,
    pub groups: Vec<String>,
}

impl RouteAuth {
    /// The codes this route's authentication can refuse with, for counters that start at zero.
    pub fn refusal_codes(&self) -> Vec<&'static str> {
        let mut codes = vec![AuthFailure::MissingCredentials.code()];
        if self.api_key {
            codes.push(AuthFailure::InvalidApiKey.code());
        }
        if self.jwt {
            codes.extend(super::jwt::JwtError::ALL.map(|e| AuthFailure::InvalidJwt(e).code()));
        }
        if self.mtls {
            codes.push(AuthFailure::UnknownClientCertificate.code());
        }
        if !self.consumers.is_empty() || !self.groups.is_empty() {
            codes.push(AuthFailure::ConsumerNotAllowed.code());
        }
        codes
    }
}

/// Where credentials are looked for, and how identity is forwarded.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub api_key_headers: Vec<HeaderName>,
    pub api_key_query: Option<String>,
    pub consumer_header: HeaderName,
    pub groups_header: HeaderName,
}

/// Everything needed to authenticate, compiled per config generation.
#[derive(Debug)]
pub struct AuthRuntime {
    pub settings: AuthSettings,
    pub consumers: ConsumerTable,
    pub jwt: JwtVerifier,
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Mtls,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub consumer: Arc<str>,
    /// The configured consumer (groups, AI policy), when there is one of that name.
    pub entry: Option<Arc<Consumer>>,
    pub method: AuthMethod,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingCredentials,
    InvalidApiKey,
    InvalidJwt(JwtError),
    UnknownClientCertificate,
    ConsumerNotAllowed,
}

impl AuthFailure {
    pub fn status(self) -> u16 {
        match self {
            AuthFailure::ConsumerNotAllowed => 403,
            _ => 401,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::InvalidApiKey => "invalid_api_key",
            AuthFailure::InvalidJwt(e) => e.code(),
            AuthFailure::UnknownClientCertificate => "unknown_client_certificate",
            AuthFailure::ConsumerNotAllowed => "consumer_not_allowed",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "this route needs credentials",
            AuthFailure::InvalidApiKey => "the API key is not valid",
            AuthFailure::InvalidJwt(_) => "the token is not valid",
            AuthFailure::UnknownClientCertificate => {
                "the client certificate belongs to no consumer"
            }
            AuthFailure::ConsumerNotAllowed => "this consumer may not use this route",
        }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(self) -> &'static str {
        match self {
            AuthFailure::InvalidJwt(_) | AuthFailure::InvalidApiKey => {
                r#"Bearer realm="gateway", error="invalid_token""#
            }
            _ => r#"Bearer realm="gateway""#,
        }
    }
}

/// The bearer token of an `Authorization: Bearer X` header.
fn bearer(req: &RequestHeader) -> Option<&str> {
    let value = req.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of query parameter `name` (not percent-decoded: keys are URL-safe).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then_some(value)
    })
}

/// Query parameters that carry credentials in common APIs (OAuth, JWT, signed URLs, API keys); their
/// values never reach a log line. Compared without regard to case.
const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "jwt",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "client_secret",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "authorization",
    "code",
    "signature",
    "sig",
    "session",
    "sessionid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// Whether a query parameter name (percent-encoded as it came) names a credential.
fn is_credential_param(raw_key: &str, configured: Option<&str>) -> bool {
    let decoded;
    let key = if raw_key.contains('%') || raw_key.contains('+') {
        decoded = percent_decode(raw_key);
        decoded.as_str()
    } else {
        raw_key
    };
    configured.is_some_and(|param| key == param)
        || CREDENTIAL_PARAMS
            .iter()
            .any(|name| key.eq_ignore_ascii_case(name))
}

/// `%XX` and `+` decoded; invalid escapes kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
            {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path and query with the values of credential parameters (the configured API key parameter and
/// `CREDENTIAL_PARAMS`) replaced, for logs; borrows when there are none.
pub fn redacted_path<'a>(req: &'a RequestHeader, param: Option<&str>) -> std::borrow::Cow<'a, str> {
    let full = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Some(query) = req.uri.query() else {
        return std::borrow::Cow::Borrowed(full);
    };
    let key_of = |pair: &'a str| pair.split('=').next().unwrap_or("");
    // One pass to the first credential; nothing before it is looked at again.
    let mut offset = 0;
    let first = query.split('&').find_map(|pair| {
        let at = offset;
        offset += pair.len() + 1;
        is_credential_param(key_of(pair), param).then_some(at)
    });
    let Some(first) = first else {
        return std::borrow::Cow::Borrowed(full);
    };
    let mut out = String::with_capacity(full.len());
    out.push_str(req.uri.path());
    out.push('?');
    out.push_str(&query[..first]);
    for (i, pair) in query[first..].split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if is_credential_param(key, param) => {
                out.push_str(key);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl AuthRuntime {
    /// Authenticate a request for a route, then apply its allowlist.
    pub async fn authenticate(
        &self,
        route: &RouteAuth,
        req: &RequestHeader,
        client_cert: Option<&ClientIdentity>,
    ) -> Result<Authenticated, AuthFailure> {
        let found = self.identify(route, req, client_cert).await?;
        let allowed = (route.consumers.is_empty() && route.groups.is_empty())
            || route.consumers.iter().any(|c| **c == *found.consumer)
            || found.entry.as_ref().is_some_and(|consumer| {
                consumer
                    .groups
                    .iter()
                    .any(|g| route.groups.iter().any(|r| **r == **g))
            });
        if allowed {
            Ok(found)
        } else {
            Err(AuthFailure::ConsumerNotAllowed)
        }
    }

    async fn identify(
        &self,
        route: &RouteAuth,
        req: &RequestHeader,
        client_cert: Option<&ClientIdentity>,
    ) -> Result<Authenticated, AuthFailure> {
        let mut failure = AuthFailure::MissingCredentials;
        if route.mtls {
            if let Some(identity) = client_cert {
                match self.consumers.by_mtls(identity.names()) {
                    Some(consumer) => return Ok(self.known(consumer, AuthMethod::Mtls)),
                    None => failure = AuthFailure::UnknownClientCertificate,
                }
            }
        }
        if let Some(token) = bearer(req) {
            if route.jwt && looks_like_jwt(token) {
                return match self.jwt.verify(token).await {
                    Ok((name, _issuer)) => Ok(self.named(&name, AuthMethod::Jwt)),
                    Err(e) => Err(AuthFailure::InvalidJwt(e)),
                };
            }
            if route.api_key {
                return self.api_key(token.as_bytes());
            }
        }
        if route.api_key {
            for header in &self.settings.api_key_headers {
                if let Some(key) = req.headers.get(header) {
                    return self.api_key(key.as_bytes());
                }
            }
            if let (Some(param), Some(query)) = (&self.settings.api_key_query, req.uri.query()) {
                if let Some(key) = query_value(query, param) {
                    return self.api_key(key.as_bytes());
                }
            }
        }
        Err(failure)
    }

    fn api_key(&self, key: &[u8]) -> Result<Authenticated, AuthFailure> {
        self.consumers
            .by_api_key(key)
            .map(|consumer| self.known(consumer, AuthMethod::ApiKey))
            .ok_or(AuthFailure::InvalidApiKey)
    }

    fn known(&self, consumer: &Arc<Consumer>, method: AuthMethod) -> Authenticated {
        Authenticated {
            consumer: consumer.name.clone(),
            entry: Some(consumer.clone()),
            method,
        }
    }

    /// A JWT subject: the configured consumer of that name, or an ad-hoc one without groups.
    fn named(&self, name: &str, method: AuthMethod) -> Authenticated {
        match self.consumers.by_name(name) {
            Some(consumer) => self.known(consumer, method),
            None => Authenticated {
                consumer: Arc::from(name),
                entry: None,
                method,
            },
        }
    }

    /// What the backend learns of the caller: identity headers come from the gateway only (the client's are
    /// removed), the credentials the route consumed are removed (header, bearer token, the API key query
    /// parameter), and an authenticated consumer is named with its groups.
    pub fn forward_identity(
        &self,
        route: Option<&RouteAuth>,
        consumer: Option<&Authenticated>,
        upstream: &mut RequestHeader,
    ) -> pingora::Result<()> {
        let settings = &self.settings;
        upstream.remove_header(&settings.consumer_header);
        upstream.remove_header(&settings.groups_header);
        if let Some(route) = route {
            self.strip_credentials(route, upstream)?;
        }
        if let Some(found) = consumer {
            upstream.insert_header(settings.consumer_header.clone(), &*found.consumer)?;
            if let Some(entry) = found.entry.as_ref().filter(|c| !c.groups_header.is_empty()) {
                upstream.insert_header(settings.groups_header.clone(), &entry.groups_header)?;
            }
        }
        Ok(())
    }

    /// Remove the credentials a route consumed so they never reach the upstream.
    fn strip_credentials(
        &self,
        route: &RouteAuth,
        upstream: &mut RequestHeader,
    ) -> pingora::Result<()> {
        if !(route.api_key || route.jwt) {
            return Ok(());
        }
        if bearer(upstream).is_some() {
            upstream.remove_header(&AUTHORIZATION);
        }
        if !route.api_key {
            return Ok(());
        }
        for header in &self.settings.api_key_headers {
            upstream.remove_header(header);
        }
        let (Some(param), Some(query)) = (&self.settings.api_key_query, upstream.uri.query())
        else {
            return Ok(());
        };
        if query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(param.as_str()))
        {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some(param.as_str()))
                .collect();
            let query = kept.join("&");
            let uri = build_target(upstream.uri.path(), (!query.is_empty()).then_some(&*query))?;
            upstream.set_uri(uri);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_parameters_are_redacted_for_logs() {
        let req = RequestHeader::build("GET", b"/p?a=1&api_key=secret&b=2", None).unwrap();
        let expected = "/p?a=1&api_key=REDACTED&b=2";
        assert_eq!(redacted_path(&req, Some("api_key")), expected);
        assert_eq!(redacted_path(&req, None), expected);
        let req = RequestHeader::build("GET", b"/p?a=1&my_key=secret", None).unwrap();
        assert_eq!(
            redacted_path(&req, Some("my_key")),
            "/p?a=1&my_key=REDACTED"
        );
        assert_eq!(redacted_path(&req, None), "/p?a=1&my_key=secret");
        let req = RequestHeader::build(
            "GET",
            b"/cb?Access_Token=eyJ.x.y&state=s&access%5Ftoken=t2&X-Amz-Signature=ab",
            None,
        )
        .unwrap();
        assert_eq!(
            redacted_path(&req, None),
            "/cb?Access_Token=REDACTED&state=s&access%5Ftoken=REDACTED&X-Amz-Signature=REDACTED"
        );
        let plain = RequestHeader::build("GET", b"/p?a=1&keyboard=2", None).unwrap();
        assert!(matches!(
            redacted_path(&plain, None),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn bearer_and_query_values_are_read() {
        let mut req = RequestHeader::build("GET", b"/?a=1&api_key=k1", None).unwrap();
        req.insert_header("authorization", "Bearer  tok ").unwrap();
        assert_eq!(bearer(&req), Some("tok"));
        assert_eq!(query_value(req.uri.query().unwrap(), "api_key"), Some("k1"));
        assert_eq!(query_value("api_key=", "api_key"), None);
        req.insert_header("authorization", "Basic xyz").unwrap();
        assert_eq!(bearer(&req), None);
    }
}
