//! Client certificates (mTLS): the rustls verifier for a listener's client CA bundle, and the identity of a
//! verified client (subject, CN and SANs) attached to the connection at the end of the handshake.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Who the verified client certificate names.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// The subject as `CN=...,O=...`.
    pub subject: String,
    pub common_name: Option<String>,
    /// DNS names, URIs and e-mail addresses from the subjectAltName extension.
    pub alt_names: Vec<String>,
}

impl ClientIdentity {
    /// Every name a consumer's `mtls_identities` may list: CN, SANs, then the full subject.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .map(String::as_str)
            .chain(self.alt_names.iter().map(String::as_str))
            .chain(std::iter::once(self.subject.as_str()))
    }

    fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) | GeneralName::URI(n) | GeneralName::RFC822Name(n) => {
                        alt_names.push(n.to_string())
                    }
                    _ => {}
                }
            }
        }
        Some(ClientIdentity {
            subject: subject.to_string(),
            common_name,
            alt_names,
        })
    }
}

/// A verifier for client certificates issued by the CAs in `ca_ders`; `required` refuses handshakes without one.
pub fn client_verifier(
    ca_ders: &[Vec<u8>],
    required: bool,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ca_ders {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("unusable client CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| format!("cannot build the client certificate verifier: {e}"))
}

/// Attaches the verified client's identity to the connection.
pub struct IdentityCallback;

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let identity = ClientIdentity::from_der(tls.peer_certificate_der()?)?;
        Some(Arc::new(identity))
    }
}
