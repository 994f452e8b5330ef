//! Consumers: named callers with groups and credentials. API keys are held only as SHA-256 digests; a
//! presented key is hashed and looked up by digest, then compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ring::digest::{digest, SHA256};

use crate::ai::routing::AiPolicy;

/// A known caller.
#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    pub groups: Vec<Arc<str>>,
    /// Pre-rendered `groups` for the upstream header.
    pub groups_header: String,
    /// Models and profiles this consumer may use on AI routes (empty: any the route allows).
    pub ai: AiPolicy,
}

/// SHA-256 of an API key.
pub type KeyDigest = [u8; 32];

pub fn key_digest(key: &[u8]) -> KeyDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

/// Lower-case hex of a digest (what `gateway hash-key` prints and the config holds).
pub fn digest_hex(digest: &KeyDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse 64 hex characters.
pub fn parse_digest_hex(hex: &str) -> Option<KeyDigest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Every consumer and the ways to find one.
#[derive(Debug, Default)]
pub struct ConsumerTable {
    by_name: HashMap<String, Arc<Consumer>>,
    by_key: HashMap<KeyDigest, Arc<Consumer>>,
    by_mtls_identity: HashMap<String, Arc<Consumer>>,
}

impl ConsumerTable {
    pub fn insert(&mut self, consumer: Arc<Consumer>, keys: &[KeyDigest], identities: &[String]) {
        for key in keys {
            self.by_key.insert(*key, consumer.clone());
        }
        for identity in identities {
            self.by_mtls_identity
                .insert(identity.clone(), consumer.clone());
        }
        self.by_name.insert(consumer.name.to_string(), consumer);
    }

    pub fn contains_key_digest(&self, key: &KeyDigest) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// The consumer owning this API key.
    pub fn by_api_key(&self, presented: &[u8]) -> Option<&Arc<Consumer>> {
        let presented = key_digest(presented);
        // Looking up by digest leaks nothing useful about the key: a guess's digest cannot be steered. The
        // final comparison still runs in constant time.
        let (stored, consumer) = self.by_key.get_key_value(&presented)?;
        let difference = stored
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (std::hint::black_box(difference) == 0).then_some(consumer)
    }

    /// The consumer of the first identity (CN, SAN or subject) that is configured.
    pub fn by_mtls<'a>(
        &self,
        mut identities: impl Iterator<Item = &'a str>,
    ) -> Option<&Arc<Consumer>> {
        identities.find_map(|identity| self.by_mtls_identity.get(identity))
    }
}

/// Keys generated for `generate_if_unset` entries, kept for the life of the process so reloads agree.
static GENERATED_KEYS: OnceLock<Mutex<HashMap<String, KeyDigest>>> = OnceLock::new();

/// The digest of a key generated for environment variable `env`; generates and prints it the first time.
pub fn generated_key_digest(env: &str) -> KeyDigest {
    let keys = GENERATED_KEYS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut keys = keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *keys.entry(env.to_string()).or_insert_with(|| {
        let key = random_key();
        // Printed once, on purpose: this is how the operator learns the key (never logged again).
        eprintln!(
            "WARNING: {env} is not set, so a random API key was generated for this run: {key}\n\
             WARNING: export {env} to choose the key; this one is not shown again."
        );
        key_digest(key.as_bytes())
    })
}

/// 32 random bytes as a `gw-` prefixed hex key.
fn random_key() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The system RNG does not fail on Linux; if it ever did, starting with a guessable key would be worse.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator");
    format!("gw-{}", digest_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_digest_only() {
        let mut table = ConsumerTable::default();
        let consumer = Arc::new(Consumer {
            name: Arc::from("a"),
            groups: vec![],
            groups_header: String::new(),
            ai: AiPolicy::default(),
        });
        let digest = key_digest(b"secret-key");
        assert_eq!(parse_digest_hex(&digest_hex(&digest)), Some(digest));
        table.insert(consumer, &[digest], &["CN=a".to_string()]);
        assert_eq!(&*table.by_api_key(b"secret-key").unwrap().name, "a");
        assert!(table.by_api_key(b"secret-kez").is_none());
        assert!(table.by_mtls(["x", "CN=a"].into_iter()).is_some());
        assert!(parse_digest_hex("zz").is_none());
        // The digest of the empty string, a well-known SHA-256 value.
        assert_eq!(
            digest_hex(&key_digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
