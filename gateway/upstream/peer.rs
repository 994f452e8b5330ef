//! Build Pingora peers for a backend from a resolved socket address (never a host name: Pingora's
//! `HttpPeer::new` would resolve it with blocking DNS and panic on failure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use super::cluster::{Backend, Cluster};

/// Connection settings of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub idle: Duration,
}

/// A peer for `backend` at `addr`, with TLS, SNI and verification as the cluster says.
pub fn http_peer(
    cluster: &Cluster,
    backend: &Backend,
    addr: SocketAddr,
    timeouts: PeerTimeouts,
) -> HttpPeer {
    let (tls, sni) = match &cluster.settings.tls {
        Some(tls) => (
            true,
            tls.sni.clone().unwrap_or_else(|| backend.host.clone()),
        ),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    peer.group_key = cluster.pool_group;
    let options = &mut peer.options;
    options.connection_timeout = Some(timeouts.connect);
    options.total_connection_timeout = Some(timeouts.connect);
    options.read_timeout = Some(timeouts.read);
    options.idle_timeout = Some(timeouts.idle);
    if let Some(tls) = &cluster.settings.tls {
        options.verify_cert = tls.verify;
        options.verify_hostname = tls.verify;
        options.ca = tls.ca.clone();
    }
    peer
}

/// Pingora's CA type for the rustls backend, built once at config load from DER certificates that
/// rustls already accepted (so parsing cannot fail).
pub fn ca_list(ders: Vec<Vec<u8>>) -> Arc<[WrappedX509]> {
    ders.into_iter()
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect::<Vec<_>>()
        .into()
}
