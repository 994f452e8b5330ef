//! JWT verification with algorithms pinned per issuer. Keys come from an HMAC secret, PEM public keys, a
//! JWKS file or a JWKS URL (see `jwks.rs`). `alg: none` cannot be expressed, and a key is only ever used
//! with algorithms of its own family, so HS256 signed with an RSA public key is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::JwksSource;
pub use super::keys::{family_of, key_from_pem, keys_from_jwks, KeyFamily, VerifyKey};

/// Why a token was refused; the `code` goes to metrics, logs and the error body (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    UnknownIssuer,
    CriticalHeader,
}

impl JwtError {
    /// Every kind, for metrics that start at zero.
    pub const ALL: [JwtError; 11] = [
        JwtError::Malformed,
        JwtError::AlgorithmNotAllowed,
        JwtError::UnknownKey,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::MissingClaim,
        JwtError::UnknownIssuer,
        JwtError::CriticalHeader,
    ];

    pub fn code(self) -> &'static str {
        match self {
            JwtError::Malformed => "jwt_malformed",
            JwtError::AlgorithmNotAllowed => "jwt_algorithm_not_allowed",
            JwtError::UnknownKey => "jwt_unknown_key",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::WrongIssuer => "jwt_wrong_issuer",
            JwtError::WrongAudience => "jwt_wrong_audience",
            JwtError::MissingClaim => "jwt_missing_claim",
            JwtError::UnknownIssuer => "jwt_unknown_issuer",
            JwtError::CriticalHeader => "jwt_unsupported_critical_header",
        }
    }
}

/// Parse an algorithm name as written in the config.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse::<Algorithm>().ok()
}

/// One configured issuer.
#[derive(Debug)]
pub struct JwtIssuer {
    pub name: Arc<str>,
    pub issuer: Option<String>,
    algorithms: Vec<Algorithm>,
    validations: HashMap<Algorithm, Validation>,
    static_keys: Vec<VerifyKey>,
    /// Keys from the JWKS source, replaced whole on each successful fetch.
    pub fetched: ArcSwap<Vec<VerifyKey>>,
    pub jwks: Option<JwksSource>,
    pub cache_ttl: Duration,
    min_refetch: Duration,
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    consumer_claim: String,
}

/// Settings of an issuer, from the config.
pub struct IssuerSpec {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub static_keys: Vec<VerifyKey>,
    pub initial_jwks: Vec<VerifyKey>,
    pub jwks: Option<JwksSource>,
    pub cache_ttl: Duration,
    pub min_refetch: Duration,
    pub leeway: Duration,
    pub consumer_claim: String,
}

impl JwtIssuer {
    /// Reload the keys of a JWKS issuer every `cache_ttl`, keeping the last good set when a load fails;
    /// returns at once for an issuer without JWKS. Runs for as long as its config generation.
    pub async fn keep_keys_fresh(self: Arc<Self>) {
        let Some(source) = self.jwks.clone() else {
            return;
        };
        loop {
            match source.load().await {
                Ok(keys) => self.fetched.store(Arc::new(keys)),
                Err(e) => log::warn!("JWT issuer {}: keeping the last good keys: {e}", self.name),
            }
            tokio::time::sleep(self.cache_ttl).await;
        }
    }

    pub fn new(spec: IssuerSpec) -> Self {
        let validations = spec
            .algorithms
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                // A configured issuer or audience is a claim the token must carry, not only one that must
                // be right when present.
                let mut required = vec!["exp"];
                if spec.issuer.is_some() {
                    required.push("iss");
                }
                if !spec.audiences.is_empty() {
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                validation.leeway = spec.leeway.as_secs();
                validation.validate_nbf = true;
                match &spec.issuer {
                    Some(iss) => validation.set_issuer(&[iss]),
                    None => validation.iss = None,
                }
                if spec.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&spec.audiences);
                }
                (alg, validation)
            })
            .collect();
        JwtIssuer {
            name: Arc::from(spec.name.as_str()),
            issuer: spec.issuer,
            algorithms: spec.algorithms,
            validations,
            static_keys: spec.static_keys,
            fetched: ArcSwap::from_pointee(spec.initial_jwks),
            jwks: spec.jwks,
            cache_ttl: spec.cache_ttl,
            min_refetch: spec.min_refetch,
            last_refetch: tokio::sync::Mutex::new(None),
            consumer_claim: spec.consumer_claim,
        }
    }

    /// Verify a token and return the consumer named by the configured claim.
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let family = family_of(header.alg);
        let mut result = self.try_keys(token, header.alg, family, header.kid.as_deref());
        if result == Err(JwtError::UnknownKey)
            && self.jwks.is_some()
            && self.refetch_allowed().await
        {
            result = self.try_keys(token, header.alg, family, header.kid.as_deref());
        }
        let claims = result?;
        match claims.get(&self.consumer_claim) {
            Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
            Some(Value::Number(number)) => Ok(number.to_string()),
            _ => Err(JwtError::MissingClaim),
        }
    }

    fn try_keys(
        &self,
        token: &str,
        alg: Algorithm,
        family: KeyFamily,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, JwtError> {
        let validation = self
            .validations
            .get(&alg)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        let fetched = self.fetched.load();
        let candidates = self.static_keys.iter().chain(fetched.iter()).filter(|key| {
            key.family == family
                && match (kid, &key.kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    (Some(_), None) => true,
                    (None, _) => true,
                }
        });
        let mut outcome = Err(JwtError::UnknownKey);
        for candidate in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind::*;
                    let mapped = match error.kind() {
                        InvalidSignature | InvalidEcdsaKey | InvalidRsaKey(_) | Crypto(_) => {
                            JwtError::BadSignature
                        }
                        ExpiredSignature => JwtError::Expired,
                        ImmatureSignature => JwtError::NotYetValid,
                        InvalidIssuer => JwtError::WrongIssuer,
                        InvalidAudience => JwtError::WrongAudience,
                        MissingRequiredClaim(_) => JwtError::MissingClaim,
                        InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
                        _ => JwtError::Malformed,
                    };
                    // A signature mismatch may mean "another key"; claim errors are final.
                    if mapped != JwtError::BadSignature {
                        return Err(mapped);
                    }
                    outcome = Err(mapped);
                }
            }
        }
        outcome
    }

    /// Refetch the JWKS now unless one happened within `min_refetch`; true when keys may have changed.
    async fn refetch_allowed(&self) -> bool {
        let mut last = self.last_refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        match &self.jwks {
            // Boxed: a JWKS fetch (connect, TLS, HTTP) is a large future, and inline it would be part of
            // every authenticated request's state, API keys included.
            Some(source) => match Box::pin(source.load()).await {
                Ok(keys) => {
                    self.fetched.store(Arc::new(keys));
                    true
                }
                Err(e) => {
                    log::warn!(
                        "JWT issuer {}: refetching keys failed, keeping the last good set: {e}",
                        self.name
                    );
                    false
                }
            },
            None => false,
        }
    }
}

/// All issuers; picks the one a token belongs to.
#[derive(Debug, Default)]
pub struct JwtVerifier {
    pub issuers: Vec<Arc<JwtIssuer>>,
}

impl JwtVerifier {
    /// Verify against the issuer named by the token's (unverified) `iss`, or the only issuer.
    pub async fn verify(&self, token: &str) -> Result<(String, Arc<str>), JwtError> {
        // A header that does not parse (including `alg: none`, which has no algorithm here) is malformed
        // whichever issuer the token claims.
        jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if names_critical_extensions(token) {
            return Err(JwtError::CriticalHeader);
        }
        let issuer = match self.issuers.as_slice() {
            [] => return Err(JwtError::UnknownIssuer),
            [only] => only,
            many => {
                let claimed = unverified_issuer(token);
                many.iter()
                    .find(|i| i.issuer.is_some() && i.issuer.as_deref() == claimed.as_deref())
                    .or_else(|| many.iter().find(|i| i.issuer.is_none()))
                    .ok_or(JwtError::UnknownIssuer)?
            }
        };
        issuer
            .verify(token)
            .await
            .map(|consumer| (consumer, issuer.name.clone()))
    }
}

/// Whether the token's header has a `crit` member. RFC 7515 4.1.11: a token whose `crit` names an
/// extension the recipient does not understand is invalid, and this gateway understands none (an
/// empty `crit` is itself invalid).
fn names_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let encoded = token.split('.').next().unwrap_or("");
    let Ok(header) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return true;
    };
    // Parsed only when the name occurs at all, which no ordinary token does.
    memchr::memmem::find(&header, b"\"crit\"").is_some()
        && serde_json::from_slice::<Map<String, Value>>(&header)
            .map_or(true, |members| members.contains_key("crit"))
}

/// The `iss` claim read without verification, only to choose which issuer verifies the token.
fn unverified_issuer(token: &str) -> Option<String> {
    let mut validation = Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(
        token,
        &DecodingKey::from_secret(&[]),
        &validation,
    )
    .ok()?;
    data.claims.get("iss")?.as_str().map(str::to_string)
}

/// Does this bearer value look like a JWT (three base64url segments)?
pub fn looks_like_jwt(value: &str) -> bool {
    let mut parts = value.split('.');
    let shaped = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    shaped(parts.next())
        && shaped(parts.next())
        && parts.next().is_some_and(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 appendix A.1-A.3 compact tokens (payload: iss "joe", exp in 2011).
    const A1_HS256: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const A2_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    const A3_ES256: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    /// The published keys of RFC 7515 appendix A (public parts), as a JWKS.
    const RFC_JWKS: &str = r#"{"keys":[
        {"kty":"oct","kid":"a1","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"},
        {"kty":"RSA","kid":"a2","e":"AQAB","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"},
        {"kty":"EC","kid":"a3","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    ]}"#;

    fn verify_ignoring_exp(
        token: &str,
        key: &VerifyKey,
    ) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
        let alg = jsonwebtoken::decode_header(token)?.alg;
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map(|d| d.claims)
    }

    #[test]
    fn rfc7515_appendix_a_tokens_verify_with_their_published_keys() {
        let keys = keys_from_jwks(RFC_JWKS).unwrap();
        let key = |kid: &str| keys.iter().find(|k| k.kid.as_deref() == Some(kid)).unwrap();
        for (token, kid, family) in [
            (A1_HS256, "a1", KeyFamily::Hmac),
            (A2_RS256, "a2", KeyFamily::Rsa),
            (A3_ES256, "a3", KeyFamily::Ec),
        ] {
            assert_eq!(key(kid).family, family);
            let claims =
                verify_ignoring_exp(token, key(kid)).unwrap_or_else(|e| panic!("{kid}: {e}"));
            assert_eq!(claims["iss"], "joe");
        }
        // A flipped payload byte breaks each signature.
        for (token, kid) in [(A1_HS256, "a1"), (A2_RS256, "a2"), (A3_ES256, "a3")] {
            let tampered = token.replacen(".eyJpc3MiOiJqb2Ui", ".eyJpc3MiOiJqb2Ei", 1);
            assert!(verify_ignoring_exp(&tampered, key(kid)).is_err(), "{kid}");
        }
    }

    #[test]
    fn rfc7515_tokens_are_expired_under_normal_validation() {
        let keys = keys_from_jwks(RFC_JWKS).unwrap();
        let issuer = JwtIssuer::new(IssuerSpec {
            name: "rfc".into(),
            issuer: Some("joe".into()),
            audiences: vec![],
            algorithms: vec![Algorithm::HS256, Algorithm::RS256, Algorithm::ES256],
            static_keys: vec![],
            initial_jwks: keys,
            jwks: None,
            cache_ttl: Duration::from_secs(60),
            min_refetch: Duration::from_secs(60),
            leeway: Duration::from_secs(30),
            consumer_claim: "iss".into(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for token in [A1_HS256, A2_RS256, A3_ES256] {
            assert_eq!(
                runtime.block_on(issuer.verify(token)),
                Err(JwtError::Expired)
            );
        }
    }

    #[test]
    fn jwt_shapes_are_recognised() {
        assert!(looks_like_jwt(A1_HS256));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("gw-0123abcd"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }
}
