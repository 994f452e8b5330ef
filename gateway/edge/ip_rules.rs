//! Allow/deny lists of client networks for a listener or a route. Deny wins; a non-empty allow list admits
//! only its members. Evaluated on the client address after trusted-proxy processing.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Parse `10.0.0.0/8` or a bare address.
pub fn parse_network(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

impl IpRules {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        IpRules { allow, deny }
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_lists_are_exclusive() {
        let rules = IpRules::new(
            vec![parse_network("10.0.0.0/8").unwrap()],
            vec![parse_network("10.0.0.66").unwrap()],
        );
        assert!(rules.admits("10.1.2.3".parse().unwrap()));
        assert!(!rules.admits("10.0.0.66".parse().unwrap()));
        assert!(!rules.admits("192.0.2.1".parse().unwrap()));
        assert!(rules.admits("::ffff:10.1.2.3".parse().unwrap()));
        let deny_only = IpRules::new(vec![], vec![parse_network("192.0.2.0/24").unwrap()]);
        assert!(deny_only.admits("198.51.100.1".parse().unwrap()));
        assert!(!deny_only.admits("192.0.2.9".parse().unwrap()));
        assert!(parse_network("nope").is_none());
    }
}
