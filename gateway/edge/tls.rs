//! Downstream TLS: certificates loaded from PEM files, chosen by SNI (exact, then wildcard, then the
//! default), swappable at run time for SIGHUP reloads; the listener's rustls config (with rotating session
//! ticket keys); plus the development certificate generator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates of one listener.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix including the dot: `*.example.com` -> `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn add(&mut self, key: Arc<CertifiedKey>, server_names: &[String], is_default: bool) {
        for name in server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => self.wildcard.insert(suffix.to_string(), key.clone()),
                None => self.exact.insert(name, key.clone()),
            };
        }
        if is_default || self.default.is_none() {
            self.default = Some(key);
        }
    }

    /// The certificate for an SNI name (already lowercase), or the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            // Wildcards cover exactly one label, as in RFC 6125.
            if let Some(dot) = name.find('.') {
                if let Some(key) = self.wildcard.get(&name[dot..]) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// rustls resolver over a swappable store; one per TLS listener, created once at start.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> Self {
        SniResolver {
            store: ArcSwap::from_pointee(store),
        }
    }

    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let lowered;
        let name = match sni {
            Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = name.to_ascii_lowercase();
                Some(lowered.as_str())
            }
            other => other,
        };
        self.store.load().lookup(name)
    }
}

/// Sessions a listener without tickets remembers (about 1 KiB each).
const SESSION_CACHE_SIZE: usize = 4096;

/// The rustls config of one TLS listener: TLS 1.2 and 1.3 on ring, the certificate chosen by SNI, ALPN
/// (`h2` then `http/1.1`, or `http/1.1` alone), an optional client certificate verifier, and resumption.
///
/// With `session_tickets`, resumption is stateless: tickets are sealed with keys that rustls rotates every
/// 6 hours (a ticket lives 12), one key set per listener shared by all its threads, so a client resumes on
/// any thread without a server-side cache entry (NGINX's `ssl_session_tickets on`). One key set per listener
/// keeps a session of a listener without mTLS from resuming on one that asks for client certificates. The
/// server keeps no session cache then (NGINX's default: tickets on, `ssl_session_cache` off). Without
/// tickets, sessions are cached in memory instead (session ids for TLS 1.2, stateful tickets for 1.3).
pub fn server_config(
    resolver: Arc<SniResolver>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    h2: bool,
    session_tickets: bool,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // Without h2 no ALPN is offered at all, as before: a client offering only h2 still gets HTTP/1.1.
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    if session_tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("session ticket keys: {e}"))?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    } else {
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    }
    Ok(Arc::new(config))
}

/// Load a PEM chain and key into a signing key, checking that they belong together.
pub fn load_certified_key(cert_path: &str, key_path: &str) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read certificate file {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certificate file {cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert_path}"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read a private key from {key_path}: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        format!("certificate {cert_path} and key {key_path} do not form a usable pair: {e}")
    })?;
    Ok(certified)
}

/// Read every certificate of a PEM CA bundle as DER.
pub fn load_ca_bundle(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in CA file {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in CA file {path}"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("CA file {path} holds an unusable certificate: {e}"))?;
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// Write a self-signed certificate for `localhost`, `127.0.0.1` and `::1` to the given paths.
pub fn generate_dev_certificate(cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| format!("generating a certificate: {e}"))?;
    // A subject that says what it is to whoever inspects it (browsers, `openssl s_client`).
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "gateway development certificate (self-signed, localhost)",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "gateway");
    let signing_key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let cert = params
        .self_signed(&signing_key)
        .map_err(|e| format!("generating a certificate: {e}"))?;
    let certified = rcgen::CertifiedKey { cert, signing_key };
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
    }
    std::fs::write(cert_path, certified.cert.pem())
        .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
    Ok(())
}

/// Write a file readable only by its owner.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_lookup_prefers_exact_then_wildcard_then_default() {
        let dir = tempfile_dir();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        for p in [&a, &b, &c] {
            generate_dev_certificate(&p.with_extension("crt"), &p.with_extension("key")).unwrap();
        }
        let load = |p: &Path| {
            Arc::new(
                load_certified_key(
                    p.with_extension("crt").to_str().unwrap(),
                    p.with_extension("key").to_str().unwrap(),
                )
                .unwrap(),
            )
        };
        let (ka, kb, kc) = (load(&a), load(&b), load(&c));
        let mut store = CertStore::default();
        store.add(ka.clone(), &["api.example.com".into()], false);
        store.add(kb.clone(), &["*.example.com".into()], false);
        store.add(kc.clone(), &[], true);
        assert!(Arc::ptr_eq(
            &store.lookup(Some("api.example.com")).unwrap(),
            &ka
        ));
        assert!(Arc::ptr_eq(
            &store.lookup(Some("www.example.com")).unwrap(),
            &kb
        ));
        assert!(Arc::ptr_eq(
            &store.lookup(Some("a.b.example.com")).unwrap(),
            &kc
        ));
        assert!(Arc::ptr_eq(&store.lookup(None).unwrap(), &kc));
        assert!(load_certified_key(
            a.with_extension("crt").to_str().unwrap(),
            b.with_extension("key").to_str().unwrap()
        )
        .is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
