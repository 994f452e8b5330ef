//! Build Pingora peers for a backend from a resolved socket address (never a host name: Pingora's
//! `HttpPeer::new` would resolve it with blocking DNS and panic on failure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use super::cluster::{Backend, Cluster, ClusterTimeouts};

/// Connection settings of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub idle: Duration,
}

impl PeerTimeouts {
    /// The timeouts of one attempt: the route's connect and read timeouts where it sets them, else the
    /// cluster's; both cut to what is left before the route's total `deadline`. `None` once it passed.
    pub fn for_attempt(
        connect: Option<Duration>,
        read: Option<Duration>,
        cluster: &ClusterTimeouts,
        deadline: Option<Instant>,
    ) -> Option<PeerTimeouts> {
        let mut timeouts = PeerTimeouts {
            connect: connect.unwrap_or(cluster.connect),
            read: read.unwrap_or(cluster.read),
            idle: cluster.idle,
        };
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            timeouts.connect = timeouts.connect.min(left);
            timeouts.read = timeouts.read.min(left);
        }
        Some(timeouts)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_timeouts_take_the_route_over_the_cluster_and_never_pass_the_deadline() {
        let cluster = ClusterTimeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        };
        let plain =
            PeerTimeouts::for_attempt(None, Some(Duration::from_secs(5)), &cluster, None).unwrap();
        assert_eq!(
            (plain.connect, plain.read, plain.idle),
            (
                Duration::from_secs(3),
                Duration::from_secs(5),
                Duration::from_secs(60)
            )
        );
        let soon = Instant::now() + Duration::from_secs(2);
        let cut = PeerTimeouts::for_attempt(None, None, &cluster, Some(soon)).unwrap();
        assert!(cut.connect <= Duration::from_secs(2) && cut.read <= Duration::from_secs(2));
        let past = Instant::now() - Duration::from_millis(1);
        assert!(PeerTimeouts::for_attempt(None, None, &cluster, Some(past)).is_none());
    }
}
