//! Verification keys of JWT issuers, by family: from PEM public keys or from a JWKS document. Shared by
//! `jwt` (verification) and `jwks` (fetching).

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Key families: a key verifies only algorithms of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub fn family_of(alg: Algorithm) -> KeyFamily {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => KeyFamily::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyFamily::Rsa,
        ES256 | ES384 => KeyFamily::Ec,
        EdDSA => KeyFamily::Ed,
    }
}

/// One verification key.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub family: KeyFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "VerifyKey({:?}, {:?})", self.kid, self.family)
    }
}

/// Keys of a JWKS document, skipping entries that cannot verify anything.
pub fn keys_from_jwks(text: &str) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
            AlgorithmParameters::OctetKey(_) => KeyFamily::Hmac,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            }),
            Err(e) => log::warn!("JWKS key {:?} skipped: {e}", jwk.common.key_id),
        }
    }
    Ok(keys)
}

/// A PEM public key of any supported family.
pub fn key_from_pem(pem: &[u8]) -> Result<VerifyKey, String> {
    type Parser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(KeyFamily, Parser); 3] = [
        (KeyFamily::Rsa, DecodingKey::from_rsa_pem),
        (KeyFamily::Ec, DecodingKey::from_ec_pem),
        (KeyFamily::Ed, DecodingKey::from_ed_pem),
    ];
    attempts
        .iter()
        .find_map(|(family, parse)| {
            parse(pem).ok().map(|key| VerifyKey {
                kid: None,
                family: *family,
                key,
            })
        })
        .ok_or_else(|| "not a PEM RSA, EC or Ed25519 public key".to_string())
}
