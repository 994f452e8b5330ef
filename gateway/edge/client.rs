//! Who the client is (`Caller`): the trusted-proxy list, the real client address behind
//! `X-Forwarded-For`, the request id (kept from trusted proxies, otherwise a fresh UUIDv7), and the
//! consumer once authenticated.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::auth::Authenticated;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// Who is asking: the TCP peer, whether it is a trusted proxy, the client address behind it, the request's
/// id, and (once authenticated) the consumer.
#[derive(Debug)]
pub struct Caller {
    pub peer: Option<IpAddr>,
    pub trusted: bool,
    pub ip: Option<IpAddr>,
    pub request_id: HeaderValue,
    pub consumer: Option<Authenticated>,
}

impl Caller {
    /// An empty caller, before the request is read.
    pub fn unknown() -> Caller {
        Caller {
            peer: None,
            trusted: false,
            ip: None,
            request_id: HeaderValue::from_static(""),
            consumer: None,
        }
    }

    /// From the TCP peer and the request's `X-Forwarded-For` and `X-Request-ID` (believed only from a
    /// trusted proxy).
    pub fn identify(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &TrustedProxies) -> Caller {
        let is_trusted = peer.is_some_and(|peer| trusted.contains(peer));
        Caller {
            peer,
            trusted: is_trusted,
            ip: peer.map(|peer| client_ip(peer, headers.get(&X_FORWARDED_FOR), trusted)),
            request_id: request_id(headers.get(&X_REQUEST_ID), is_trusted),
            consumer: None,
        }
    }

    /// The consumer's name, once authenticated.
    pub fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_ref().map(|found| &*found.consumer)
    }
}

/// The octets of `ip`, written into `buf`.
pub fn ip_octets(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            &buf[..]
        }
    }
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
    fn a_caller_keeps_the_id_and_address_a_trusted_proxy_gives_and_no_one_else_s() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-request-id", HeaderValue::from_static("upstream-id-1"));
        let behind_proxy = Caller::identify(Some(ip("10.0.0.5")), &headers, &trusted);
        assert!(behind_proxy.trusted);
        assert_eq!(behind_proxy.ip, Some(ip("203.0.113.9")));
        assert_eq!(behind_proxy.request_id, "upstream-id-1");
        let direct = Caller::identify(Some(ip("198.51.100.7")), &headers, &trusted);
        assert!(!direct.trusted);
        assert_eq!(direct.ip, Some(ip("198.51.100.7")));
        assert_ne!(direct.request_id, "upstream-id-1");
        assert_eq!(direct.request_id.len(), 36, "a UUID");
        let mut octets = [0u8; 16];
        assert_eq!(ip_octets(ip("192.0.2.1"), &mut octets), &[192, 0, 2, 1]);
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
