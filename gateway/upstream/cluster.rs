//! A cluster of upstream backends: load-balancing selection (smooth weighted round robin or a ketama ring),
//! active health state, passive ejection and the resolved address of each backend. Selection is lock-free.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntGauge};

/// What the consistent-hash key is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

/// The backends one request has tried: which (a bit per index, the first 64), how many times, and the
/// one of the current attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempts {
    pub tried: u64,
    pub count: u32,
    pub backend: Option<usize>,
    pub addr: Option<SocketAddr>,
}

/// The value of cookie `name` in the Cookie headers of `headers`.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|header| {
            header.to_str().ok()?.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value.as_bytes())
            })
        })
}

/// How to check a backend in the background.
#[derive(Debug, Clone)]
pub struct HealthCheckSpec {
    pub http: Option<HttpCheck>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// The HTTP part of a health check (absent for TCP checks).
#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expected_status: Vec<u16>,
}

/// TLS towards the backends.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub verify: bool,
    /// The CA bundle, when not the system store.
    pub ca: Option<Arc<[pingora::utils::tls::WrappedX509]>>,
}

/// Passive ejection policy.
#[derive(Debug, Clone, Copy)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub cooldown: Duration,
}

/// Per-cluster connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ClusterTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub idle: Duration,
}

/// One upstream server and its live state.
#[derive(Debug)]
pub struct Backend {
    /// As configured (`host:port`): the identity in logs, metrics and the hash ring.
    pub address: Arc<str>,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    resolved: ArcSwapOption<SocketAddr>,
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Passive ejection, a circuit breaker: 0 closed; in the future, open (ejected); in the past, half-open:
    /// one probe request at a time until a success closes it or a failure opens it again.
    ejected_until_ms: AtomicU64,
    /// While half-open: until when the probe request out now holds the backend.
    probe_until_ms: AtomicU64,
    pub(crate) health_gauge: IntGauge,
    ejections: IntCounter,
}

impl Backend {
    pub fn new(
        address: &str,
        host: String,
        port: u16,
        weight: u32,
        gauge: IntGauge,
        ejections: IntCounter,
    ) -> Self {
        let literal = host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| Arc::new(SocketAddr::new(ip, port)));
        gauge.set(1);
        Backend {
            address: Arc::from(address),
            host,
            port,
            weight,
            resolved: ArcSwapOption::new(literal),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probe_until_ms: AtomicU64::new(0),
            health_gauge: gauge,
            ejections,
        }
    }

    /// True when the address is a host name that must be resolved.
    pub fn needs_dns(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }

    pub fn resolved(&self) -> Option<SocketAddr> {
        self.resolved.load().as_deref().copied()
    }

    pub fn set_resolved(&self, addr: SocketAddr) {
        if self.resolved() != Some(addr) {
            self.resolved.store(Some(Arc::new(addr)));
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Record the outcome of the active health check; returns true when the state flipped. A backend
    /// that passes its checks again is also forgiven its passive ejection: the probe is fresher evidence.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let flipped = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if flipped {
            self.health_gauge.set(i64::from(healthy));
            if healthy {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.ejected_until_ms.store(0, Ordering::Relaxed);
            }
        }
        flipped
    }

    fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Whether the breaker lets this request through: always when closed; when half-open, only the one
    /// request that claims the probe (held for `probe_ms`, then another may try), so a backend back from
    /// its cooldown is not hit by every waiting request at once.
    fn admits(&self, now_ms: u64, probe_ms: u64) -> bool {
        let ejected_until = self.ejected_until_ms.load(Ordering::Relaxed);
        if ejected_until == 0 {
            return true;
        }
        if ejected_until > now_ms {
            return false;
        }
        let probe = self.probe_until_ms.load(Ordering::Relaxed);
        probe <= now_ms
            && self
                .probe_until_ms
                .compare_exchange(
                    probe,
                    now_ms + probe_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The address a new request may use: resolved, passing health checks, and admitted by its breaker
    /// (which may claim the half-open probe for this request, so it is asked last).
    fn available_addr(&self, now_ms: u64, probe_ms: u64) -> Option<SocketAddr> {
        if !self.is_healthy() {
            return None;
        }
        let addr = self.resolved()?;
        self.admits(now_ms, probe_ms).then_some(addr)
    }

    /// Carry live state over from the same backend in the previous config generation.
    pub fn inherit(&self, previous: &Backend) {
        if let Some(addr) = previous.resolved() {
            if self.needs_dns() {
                self.set_resolved(addr);
            }
        }
        self.set_healthy(previous.is_healthy());
        self.ejected_until_ms.store(
            previous.ejected_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.probe_until_ms.store(
            previous.probe_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

/// Milliseconds since the process started: the clock of passive ejection.
pub fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// The selection structure, built once per config generation.
#[derive(Debug)]
enum Selector {
    /// Backend indices in smooth-weighted order; a shared cursor walks it.
    RoundRobin {
        slots: Vec<u16>,
        cursor: AtomicUsize,
    },
    /// Sorted (point, backend index) pairs of the ketama ring.
    Ring { points: Vec<(u64, u16)> },
}

/// How a cluster connects, balances and checks; everything but the backends themselves.
#[derive(Debug)]
pub struct ClusterSettings {
    pub hash_on: Option<HashOn>,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheckSpec>,
    pub passive: PassiveHealth,
    pub retries: u32,
    pub timeouts: ClusterTimeouts,
    pub dns_refresh: Duration,
}

/// A named, load-balanced group of backends.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    selector: Selector,
    pub settings: ClusterSettings,
    /// Keeps this cluster's pooled connections apart from other clusters' (Pingora's pool key ignores
    /// the CA bundle, so two clusters with one address and SNI but different trust must not share).
    pub pool_group: u64,
    /// No backend was available at the last first pick: the state whose changes are logged.
    exhausted: AtomicBool,
}

/// Points per unit of weight on the hash ring (ketama uses 160 per server).
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound of the ring size.
const MAX_RING_POINTS: u64 = 160 * 1024;
/// Upper bound of the round-robin table; weights are scaled down beyond it.
const MAX_SLOTS: u64 = 4096;

impl Cluster {
    pub fn new(
        name: Arc<str>,
        backends: Vec<Backend>,
        consistent_hash: bool,
        settings: ClusterSettings,
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight.max(1)).collect();
        let selector = if consistent_hash {
            Selector::Ring {
                points: build_ring(&backends),
            }
        } else {
            Selector::RoundRobin {
                slots: smooth_weighted_order(&weights),
                cursor: AtomicUsize::new(0),
            }
        };
        let mut identity = name.as_bytes().to_vec();
        if let Some(ca) = settings.tls.as_ref().and_then(|tls| tls.ca.as_ref()) {
            ca.iter()
                .for_each(|cert| identity.extend_from_slice(cert.borrow_raw_cert()));
        }
        Cluster {
            pool_group: xxhash_rust::xxh3::xxh3_64(&identity),
            name,
            backends,
            selector,
            settings,
            exhausted: AtomicBool::new(false),
        }
    }

    /// The consistent-hash key of a request: the configured header or cookie, else the client address
    /// (`client`, octets); `None` for clusters that do not hash.
    pub fn hash_key<'a>(
        &self,
        headers: &'a http::HeaderMap,
        client: impl FnOnce() -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        let hash_on = self.settings.hash_on.as_ref()?;
        let from_request = match hash_on {
            HashOn::ClientIp => None,
            HashOn::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => cookie_value(headers, name),
        };
        // Requests without the key stick by client address instead.
        from_request.or_else(client)
    }

    /// Pick the backend of the next attempt (not one already tried), and note it in `attempts`.
    pub fn pick(&self, key: Option<&[u8]>, attempts: &mut Attempts) -> Option<(usize, SocketAddr)> {
        attempts.count += 1;
        let picked = self.select(key, attempts.tried);
        if attempts.count == 1 {
            self.note_first_pick(picked.is_some());
        }
        let (index, addr) = picked?;
        if index < 64 {
            attempts.tried |= 1 << index;
        }
        attempts.backend = Some(index);
        attempts.addr = Some(addr);
        Some((index, addr))
    }

    /// Record whether a request's first pick found a backend, and log only the changes: one warning when
    /// the cluster runs out of available backends (every request then gets 503), one line when it has one
    /// again, instead of an error per request.
    pub fn note_first_pick(&self, found: bool) {
        if found {
            if self.exhausted.load(Ordering::Relaxed)
                && self.exhausted.swap(false, Ordering::Relaxed)
            {
                log::info!("cluster {}: a backend is available again", self.name);
            }
        } else if !self.exhausted.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cluster {}: no backend is available (unhealthy, ejected or unresolved); answering 503 \
                 until one is",
                self.name
            );
        }
    }

    /// Pick an available backend not in `tried` (a bitmask of backend indices). `key` is the
    /// consistent-hash key; without one a hash cluster falls back to walking its ring from a rotating point.
    pub fn select(&self, key: Option<&[u8]>, tried: u64) -> Option<(usize, SocketAddr)> {
        let now = now_ms();
        // A half-open backend's probe is held for one cooldown: long enough for any answer.
        let probe_ms = self.settings.passive.cooldown.as_millis() as u64;
        let usable = |index: usize| -> Option<SocketAddr> {
            if index < 64 && tried & (1 << index) != 0 {
                return None;
            }
            self.backends[index].available_addr(now, probe_ms)
        };
        match &self.selector {
            Selector::RoundRobin { slots, cursor } => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..slots.len()).find_map(|step| {
                    let index = slots[(start + step) % slots.len()] as usize;
                    usable(index).map(|addr| (index, addr))
                })
            }
            Selector::Ring { points } => {
                if points.is_empty() {
                    return None;
                }
                let start = match key {
                    Some(key) => {
                        let hash = xxhash_rust::xxh3::xxh3_64(key);
                        points.partition_point(|(point, _)| *point < hash)
                    }
                    None => now as usize,
                };
                (0..points.len()).find_map(|step| {
                    let index = points[(start + step) % points.len()].1 as usize;
                    usable(index).map(|addr| (index, addr))
                })
            }
        }
    }

    /// A request to this backend succeeded: reset its failure streak, and close its breaker when this was
    /// the half-open probe.
    pub fn record_success(&self, index: usize) {
        let backend = &self.backends[index];
        if backend.consecutive_failures.load(Ordering::Relaxed) != 0 {
            backend.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let ejected_until = backend.ejected_until_ms.load(Ordering::Relaxed);
        // Half-open (its cooldown over) and still the same ejection: a concurrent failure that ejects it
        // anew changes the value, and then this success does not close the breaker.
        if ejected_until != 0
            && ejected_until <= now_ms()
            && backend
                .ejected_until_ms
                .compare_exchange(ejected_until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            backend.probe_until_ms.store(0, Ordering::Relaxed);
            log::info!(
                "cluster {}: backend {} answered its probe; back in rotation",
                self.name,
                backend.address
            );
        }
    }

    /// A request to this backend failed; returns true when this failure ejected it.
    pub fn record_failure(&self, index: usize) -> bool {
        let threshold = self.settings.passive.consecutive_failures;
        if threshold == 0 {
            return false;
        }
        let backend = &self.backends[index];
        let now = now_ms();
        // Requests that were already on their way when it was ejected fail too: that is not another
        // ejection.
        if backend.is_ejected(now) {
            return false;
        }
        let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < threshold {
            return false;
        }
        // Half-open after the cooldown: the probe's failure ejects again at once, its success closes the
        // breaker.
        backend
            .consecutive_failures
            .store(threshold - 1, Ordering::Relaxed);
        let until = now + self.settings.passive.cooldown.as_millis() as u64;
        if backend.ejected_until_ms.fetch_max(until, Ordering::Relaxed) > now {
            // Another failure ejected it a moment ago.
            return false;
        }
        backend.probe_until_ms.store(0, Ordering::Relaxed);
        backend.ejections.inc();
        log::warn!(
            "cluster {}: backend {} ejected for {:?} after {failures} consecutive failures",
            self.name,
            backend.address,
            self.settings.passive.cooldown
        );
        true
    }
}

impl Cluster {
    /// Take a backend out for `duration` (e.g. a provider's `Retry-After` on 429).
    pub fn cool_down(&self, index: usize, duration: std::time::Duration) {
        let backend = &self.backends[index];
        let until = now_ms() + duration.as_millis() as u64;
        if backend.ejected_until_ms.fetch_max(until, Ordering::Relaxed) < until {
            backend.ejections.inc();
            log::warn!(
                "cluster {}: backend {} cooled down for {duration:?}",
                self.name,
                backend.address
            );
        }
    }
}

/// Smooth weighted round robin (as in NGINX): the order spreads heavy backends out instead of bunching them.
fn smooth_weighted_order(weights: &[u32]) -> Vec<u16> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale = total.div_ceil(MAX_SLOTS).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| (u64::from(w) / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("a cluster has at least one backend");
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

fn build_ring(backends: &[Backend]) -> Vec<(u64, u16)> {
    // 160 points per unit of weight, scaled down so big clusters keep the ring small.
    let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight.max(1))).sum();
    let per_weight = (MAX_RING_POINTS / total_weight.max(1)).clamp(1, RING_POINTS_PER_WEIGHT);
    let mut points = Vec::with_capacity((per_weight * total_weight) as usize);
    for (index, backend) in backends.iter().enumerate() {
        for replica in 0..u64::from(backend.weight.max(1)) * per_weight {
            let label = format!("{}-{replica}", backend.address);
            points.push((xxhash_rust::xxh3::xxh3_64(label.as_bytes()), index as u16));
        }
    }
    points.sort_unstable();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(address: &str, weight: u32) -> Backend {
        let (host, port) = address.rsplit_once(':').unwrap();
        Backend::new(
            address,
            host.to_string(),
            port.parse().unwrap(),
            weight,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        )
    }

    fn cluster(backends: Vec<Backend>, consistent_hash: bool) -> Cluster {
        let settings = ClusterSettings {
            hash_on: None,
            tls: None,
            health_check: None,
            passive: PassiveHealth {
                consecutive_failures: 2,
                cooldown: Duration::from_secs(60),
            },
            retries: 1,
            timeouts: ClusterTimeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            dns_refresh: Duration::from_secs(30),
        };
        Cluster::new(Arc::from("c"), backends, consistent_hash, settings)
    }

    #[test]
    fn hash_keys_come_from_the_header_or_cookie_else_the_client_and_picks_skip_tried_backends() {
        let mut hashed = cluster(
            vec![backend("127.0.0.1:1", 1), backend("127.0.0.1:2", 1)],
            true,
        );
        hashed.settings.hash_on = Some(HashOn::Cookie("session".into()));
        let mut headers = http::HeaderMap::new();
        headers.append("cookie", "a=1; session=abc".parse().unwrap());
        headers.append("cookie", "other=2".parse().unwrap());
        let client = || Some(&b"ip"[..]);
        assert_eq!(hashed.hash_key(&headers, client), Some(&b"abc"[..]));
        let none = http::HeaderMap::new();
        assert_eq!(hashed.hash_key(&none, client), Some(&b"ip"[..]));
        assert_eq!(cookie_value(&headers, "other"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&headers, "sess"), None);
        let plain = cluster(vec![backend("127.0.0.1:1", 1)], false);
        assert_eq!(plain.hash_key(&headers, client), None);

        // Each attempt takes a backend not tried yet, then none is left.
        let mut attempts = Attempts::default();
        let (first, _) = hashed.pick(Some(b"abc"), &mut attempts).unwrap();
        let (second, addr) = hashed.pick(Some(b"abc"), &mut attempts).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            (attempts.count, attempts.backend, attempts.addr),
            (2, Some(second), Some(addr))
        );
        assert!(hashed.pick(Some(b"abc"), &mut attempts).is_none());
        assert_eq!(attempts.count, 3);
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let c = cluster(
            vec![backend("127.0.0.1:1", 3), backend("127.0.0.1:2", 1)],
            false,
        );
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[c.select(None, 0).unwrap().0] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn tried_and_ejected_backends_are_skipped() {
        let c = cluster(
            vec![backend("127.0.0.1:1", 1), backend("127.0.0.1:2", 1)],
            false,
        );
        for _ in 0..10 {
            assert_eq!(c.select(None, 0b01).unwrap().0, 1);
        }
        assert!(!c.record_failure(1));
        assert!(c.record_failure(1));
        for _ in 0..10 {
            assert_eq!(c.select(None, 0).unwrap().0, 0);
        }
        assert!(c.select(None, 0b01).is_none());
        c.backends[0].set_healthy(false);
        assert!(c.select(None, 0).is_none());
    }

    #[test]
    fn an_ejection_counts_once_and_a_cooled_down_backend_takes_one_probe_at_a_time() {
        let c = cluster(vec![backend("127.0.0.1:1", 1)], false);
        assert!(!c.record_failure(0));
        assert!(c.record_failure(0));
        // Requests that were in flight fail after the ejection: no second ejection.
        for _ in 0..5 {
            assert!(!c.record_failure(0));
        }
        assert_eq!(c.backends[0].ejections.get(), 1);
        assert!(c.select(None, 0).is_none());
        // The cooldown is over: half-open.
        let end_cooldown = |backend: &Backend| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            backend
                .ejected_until_ms
                .store(now_ms() - 1, Ordering::Relaxed);
        };
        end_cooldown(&c.backends[0]);
        assert!(c.select(None, 0).is_some(), "the probe");
        assert!(c.select(None, 0).is_none(), "one probe at a time");
        c.record_success(0);
        assert!(c.select(None, 0).is_some() && c.select(None, 0).is_some());
        // Ejected again, and then a failed probe opens the breaker again at once.
        assert!(!c.record_failure(0));
        assert!(c.record_failure(0));
        end_cooldown(&c.backends[0]);
        assert!(c.select(None, 0).is_some());
        assert!(c.record_failure(0));
        assert_eq!(c.backends[0].ejections.get(), 3);
        assert!(c.select(None, 0).is_none());
    }

    #[test]
    fn consistent_hash_keeps_keys_on_their_backend() {
        let c = cluster(
            (1..=4)
                .map(|p| backend(&format!("127.0.0.1:{p}"), 1))
                .collect(),
            true,
        );
        let first: Vec<usize> = (0..100)
            .map(|k| c.select(Some(format!("user-{k}").as_bytes()), 0).unwrap().0)
            .collect();
        let again: Vec<usize> = (0..100)
            .map(|k| c.select(Some(format!("user-{k}").as_bytes()), 0).unwrap().0)
            .collect();
        assert_eq!(first, again);
        assert!(
            (0..4).all(|b| first.contains(&b)),
            "keys spread over every backend"
        );
        c.backends[2].set_healthy(false);
        for (k, &before) in first.iter().enumerate() {
            let after = c.select(Some(format!("user-{k}").as_bytes()), 0).unwrap().0;
            if before != 2 {
                assert_eq!(after, before, "keys of healthy backends stay put");
            } else {
                assert_ne!(after, 2);
            }
        }
    }
}
