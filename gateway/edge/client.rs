//! Who the client is: the trusted-proxy list, the real client address behind `X-Forwarded-For`, and the
//! request id (kept from trusted proxies, otherwise a fresh UUIDv7).

use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

/// Networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parse `10.0.0.0/8` or a bare `10.1.2.3`.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        let mut networks = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        i,
                        format!("`{entry}` is neither an IP address nor a CIDR like 10.0.0.0/8"),
                    )
                })?;
            networks.push(net);
        }
        Ok(TrustedProxies { networks })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address: the peer, or — when the peer is a trusted proxy — the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: Option<&HeaderValue>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let Some(list) = forwarded_for.and_then(|v| v.to_str().ok()) else {
        return peer;
    };
    let mut client = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted.contains(client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

/// Longest incoming request id we keep.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Keep an incoming id from a trusted proxy when it is short printable ASCII; else generate a UUIDv7.
pub fn request_id(incoming: Option<&HeaderValue>, peer_trusted: bool) -> HeaderValue {
    if peer_trusted {
        if let Some(value) = incoming {
            let bytes = value.as_bytes();
            if !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LEN
                && bytes.iter().all(|b| b.is_ascii_graphic())
            {
                return value.clone();
            }
        }
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let xff = HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.1.1.1");
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some(&xff), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("203.0.113.50"), Some(&xff), &trusted),
            ip("203.0.113.50")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.5"), Some(&xff), &trusted),
            ip("198.51.100.7")
        );
        let garbage = HeaderValue::from_static("nonsense");
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some(&garbage), &trusted),
            ip("10.0.0.5")
        );
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_peers() {
        let incoming = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&incoming), true), incoming);
        let generated = request_id(Some(&incoming), false);
        assert_ne!(generated, incoming);
        let uuid = uuid::Uuid::parse_str(generated.to_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(request_id(Some(&spaced), true), spaced);
    }
}
