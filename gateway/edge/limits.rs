//! Rate and concurrency limits. Rates use GCRA (the generic cell rate algorithm: an exact token bucket kept
//! as one timestamp per key), so a burst passes exactly `burst` requests and then one per emission interval.
//! Counters live in process memory behind `RateStore`, which a shared store can implement later; a key's
//! entry exists only while it owes time, so idle keys vanish and memory stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Consumer,
    ClientIp,
    Route,
    Header(http::HeaderName),
}

/// A GCRA rate: `burst` at once, then one every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval_ns: u64,
    pub burst: u32,
    /// Requests per `period` as written, for the RateLimit-Limit header.
    pub limit: u32,
}

impl Gcra {
    pub fn new(count: u32, period: Duration, burst: u32) -> Self {
        Gcra {
            interval_ns: (period.as_nanos() / u128::from(count.max(1))) as u64,
            burst: burst.max(1),
            limit: count,
        }
    }

    /// Delay tolerance: how far ahead of now the theoretical arrival time may run.
    fn tolerance_ns(&self) -> u64 {
        self.interval_ns * u64::from(self.burst - 1)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the full burst is available again.
    pub reset_secs: u64,
    /// When refused: seconds until a request would pass.
    pub retry_after_secs: u64,
}

impl Decision {
    /// The `RateLimit-Limit`, `-Remaining` and `-Reset` headers of this decision (IETF draft names).
    pub fn write_headers(
        &self,
        head: &mut impl super::headers::HeaderEdits,
    ) -> pingora::Result<()> {
        head.set_static("ratelimit-limit", http::HeaderValue::from(self.limit))?;
        head.set_static(
            "ratelimit-remaining",
            http::HeaderValue::from(self.remaining),
        )?;
        head.set_static("ratelimit-reset", http::HeaderValue::from(self.reset_secs))
    }
}

/// Parse `100/minute`, `5/s`, `1000/day`.
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let (count, unit) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: write it as `N/second|minute|hour|day`"))?;
    let count: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}`: N must be a positive integer"))?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => {
            return Err(format!(
                "`{other}` is not a unit; use second, minute, hour or day"
            ))
        }
    };
    Ok((count, period))
}

const SHARDS: usize = 64;
/// Entries per shard before a shard is swept inline.
const SWEEP_AT: usize = 4096;

/// In-process counters, sharded to keep lock hold times and contention small.
#[derive(Debug)]
pub struct LocalRateStore {
    shards: Vec<Mutex<HashMap<u64, u64>>>,
}

impl Default for LocalRateStore {
    fn default() -> Self {
        LocalRateStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl LocalRateStore {
    /// Check and, when allowed, take one request for `key` at time `now_ns`.
    pub fn acquire(&self, key: u64, rate: &Gcra, now_ns: u64) -> Decision {
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, tat| *tat > now_ns);
        }
        let tat = shard.get(&key).copied().unwrap_or(now_ns).max(now_ns);
        let tolerance = rate.tolerance_ns();
        if tat - now_ns > tolerance {
            let wait = tat - now_ns - tolerance;
            return Decision {
                allowed: false,
                limit: rate.limit,
                remaining: 0,
                reset_secs: ceil_secs(tat - now_ns),
                retry_after_secs: ceil_secs(wait).max(1),
            };
        }
        let new_tat = tat + rate.interval_ns;
        shard.insert(key, new_tat);
        let owed = new_tat - now_ns;
        let remaining =
            ((tolerance + rate.interval_ns).saturating_sub(owed) / rate.interval_ns.max(1)) as u32;
        Decision {
            allowed: true,
            limit: rate.limit,
            remaining,
            reset_secs: ceil_secs(owed),
            retry_after_secs: 0,
        }
    }

    /// Drop every key that owes nothing any more.
    pub fn sweep(&self, now_ns: u64) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| *tat > now_ns);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Where rate counters live. Only process memory today; a shared store (Redis) becomes another variant.
#[derive(Debug)]
pub enum RateStore {
    Local(LocalRateStore),
}

impl RateStore {
    pub fn acquire(&self, key: u64, rate: &Gcra, now_ns: u64) -> Decision {
        match self {
            RateStore::Local(store) => store.acquire(key, rate, now_ns),
        }
    }
}

/// What a route's limits granted one request: the tightest rate decision (its `RateLimit-*` headers) and
/// the concurrency slots, held until the request is logged.
#[derive(Debug, Default)]
pub struct Admission {
    pub decision: Option<Decision>,
    pub in_flight: Vec<InFlightGuard>,
}

/// Why a route's limits refused a request.
#[derive(Debug, Clone)]
pub enum LimitRefusal {
    Rate {
        policy: Arc<str>,
        decision: Decision,
    },
    Concurrency {
        policy: Arc<str>,
    },
}

/// What the policies of one request count by.
#[derive(Debug, Clone, Copy)]
pub struct LimitSubject<'a> {
    pub consumer: Option<&'a str>,
    pub client_ip: Option<std::net::IpAddr>,
    pub route: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl LimitSubject<'_> {
    /// The counter of `policy` this request counts against. Client addresses use another seed than names,
    /// so that no name can collide with an address; a key the request lacks falls back to its address.
    fn key(&self, policy: &LimitPolicy) -> u64 {
        let by_ip = || {
            let mut buf = [0u8; 16];
            match self.client_ip {
                Some(ip) => counter_key(policy.seed ^ 1, super::client::ip_octets(ip, &mut buf)),
                None => counter_key(policy.seed ^ 1, b""),
            }
        };
        match &policy.key {
            LimitKey::Consumer => match self.consumer {
                Some(name) => counter_key(policy.seed, name.as_bytes()),
                None => by_ip(),
            },
            LimitKey::ClientIp => by_ip(),
            LimitKey::Route => counter_key(policy.seed, self.route.as_bytes()),
            LimitKey::Header(name) => match self.headers.get(name) {
                Some(value) => counter_key(policy.seed, value.as_bytes()),
                None => by_ip(),
            },
        }
    }
}

/// The process's limit state; it outlives config reloads so that a SIGHUP does not reset counters.
#[derive(Debug)]
pub struct Limiter {
    pub rates: RateStore,
    pub in_flight: Arc<InFlight>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            rates: RateStore::Local(LocalRateStore::default()),
            in_flight: Arc::new(InFlight::default()),
        }
    }
}

impl Limiter {
    /// Take a slot from every concurrency policy and a token from every rate policy of a route, in order,
    /// into `admission`; the first policy that has none refuses (slots already taken are given back when
    /// the admission is dropped).
    pub fn admit(
        &self,
        policies: &[Arc<LimitPolicy>],
        subject: &LimitSubject<'_>,
        admission: &mut Admission,
    ) -> Result<(), LimitRefusal> {
        let now = now_ns();
        for policy in policies {
            let key = subject.key(policy);
            if let Some(max) = policy.max_in_flight {
                match InFlight::try_acquire(&self.in_flight, key, max) {
                    Some(guard) => admission.in_flight.push(guard),
                    None => {
                        return Err(LimitRefusal::Concurrency {
                            policy: policy.name.clone(),
                        })
                    }
                }
            }
            if let Some(rate) = &policy.rate {
                let decision = self.rates.acquire(key, rate, now);
                if !decision.allowed {
                    admission.decision = Some(decision);
                    return Err(LimitRefusal::Rate {
                        policy: policy.name.clone(),
                        decision,
                    });
                }
                if admission
                    .decision
                    .is_none_or(|tightest| decision.remaining < tightest.remaining)
                {
                    admission.decision = Some(decision);
                }
            }
        }
        Ok(())
    }

    /// Forget rate keys idle long enough to be full again (run every few seconds).
    pub fn sweep(&self) {
        let RateStore::Local(store) = &self.rates;
        store.sweep(now_ns());
    }
}

/// Nanoseconds on the limiter's clock (monotonic, from process start).
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    // Start one hour in, so a fresh key's "now" is never below a tolerance subtraction.
    EPOCH.elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// Concurrent requests per key; the guard gives the slot back when dropped (after logging).
#[derive(Debug, Default)]
pub struct InFlight {
    shards: [Mutex<HashMap<u64, u32>>; 16],
}

#[derive(Debug)]
pub struct InFlightGuard {
    table: Arc<InFlight>,
    key: u64,
}

impl InFlight {
    /// Take a slot for `key` if fewer than `max` are taken.
    pub fn try_acquire(table: &Arc<InFlight>, key: u64, max: u32) -> Option<InFlightGuard> {
        let mut shard = table.shards[(key as usize) % 16]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = shard.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(InFlightGuard {
            table: table.clone(),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut shard = self.table.shards[(self.key as usize) % 16]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// A named policy from `limits:`.
#[derive(Debug)]
pub struct LimitPolicy {
    pub name: Arc<str>,
    pub rate: Option<Gcra>,
    pub max_in_flight: Option<u32>,
    pub key: LimitKey,
    /// Distinguishes this policy's counters from others' with the same key value.
    pub seed: u64,
}

/// Stable key of (policy, value) for the counter maps.
pub fn counter_key(seed: u64, value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(value, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn policy(name: &str, rate: Option<Gcra>, max: Option<u32>, key: LimitKey) -> Arc<LimitPolicy> {
        Arc::new(LimitPolicy {
            name: Arc::from(name),
            rate,
            max_in_flight: max,
            key,
            seed: counter_key(7, name.as_bytes()),
        })
    }

    #[test]
    fn admission_takes_every_policy_in_order_keyed_by_consumer_route_or_address() {
        let limiter = Limiter::default();
        let per_consumer = policy(
            "per-consumer",
            Some(Gcra::new(60, Duration::from_secs(60), 2)),
            None,
            LimitKey::Consumer,
        );
        let one_at_once = policy("one", None, Some(1), LimitKey::Route);
        let headers = http::HeaderMap::new();
        let alice = LimitSubject {
            consumer: Some("alice"),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            route: "r",
            headers: &headers,
        };
        let both = [per_consumer.clone(), one_at_once.clone()];
        let mut first = Admission::default();
        limiter.admit(&both, &alice, &mut first).unwrap();
        assert_eq!(first.decision.unwrap().remaining, 1);
        assert_eq!(first.in_flight.len(), 1);
        // The route's one slot is held until the first request is done.
        let mut second = Admission::default();
        assert!(matches!(
            limiter.admit(std::slice::from_ref(&one_at_once), &alice, &mut second),
            Err(LimitRefusal::Concurrency { .. })
        ));
        drop(first);
        limiter
            .admit(&[one_at_once], &alice, &mut Admission::default())
            .unwrap();

        // The burst of 2 is spent at the third request, whose refusal carries its decision.
        limiter
            .admit(
                std::slice::from_ref(&per_consumer),
                &alice,
                &mut Admission::default(),
            )
            .unwrap();
        let mut refused = Admission::default();
        match limiter.admit(std::slice::from_ref(&per_consumer), &alice, &mut refused) {
            Err(LimitRefusal::Rate { decision, .. }) => {
                assert!(!decision.allowed && decision.retry_after_secs > 0)
            }
            other => panic!("{other:?}"),
        }
        assert!(refused.decision.is_some_and(|d| !d.allowed));
        // Another consumer counts apart; without a consumer, the client address is the key.
        let bob = LimitSubject {
            consumer: Some("bob"),
            ..alice
        };
        limiter
            .admit(
                std::slice::from_ref(&per_consumer),
                &bob,
                &mut Admission::default(),
            )
            .unwrap();
        let anonymous = LimitSubject {
            consumer: None,
            ..alice
        };
        limiter
            .admit(&[per_consumer], &anonymous, &mut Admission::default())
            .unwrap();
    }

    #[test]
    fn a_burst_passes_exactly_burst_then_refills_at_the_rate() {
        let store = LocalRateStore::default();
        let rate = Gcra::new(10, Duration::from_secs(1), 5);
        let now = 1000 * SECOND;
        let decisions: Vec<Decision> = (0..8).map(|_| store.acquire(1, &rate, now)).collect();
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 5);
        assert_eq!(
            decisions.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0, 0, 0, 0]
        );
        assert_eq!(decisions[5].retry_after_secs, 1);
        // One emission interval (100 ms) later exactly one more passes.
        assert!(store.acquire(1, &rate, now + SECOND / 10).allowed);
        assert!(!store.acquire(1, &rate, now + SECOND / 10).allowed);
        // Another key is independent.
        assert!(store.acquire(2, &rate, now).allowed);
    }

    #[test]
    fn idle_keys_are_forgotten_so_memory_stays_bounded() {
        let store = LocalRateStore::default();
        let rate = Gcra::new(100, Duration::from_secs(1), 100);
        let now = 5 * SECOND;
        for key in 0..100_000u64 {
            assert!(
                store
                    .acquire(counter_key(7, &key.to_le_bytes()), &rate, now)
                    .allowed
            );
        }
        // Inline sweeps already keep each shard near SWEEP_AT once entries are paid off...
        assert!(store.len() <= 100_000);
        // ...and once every key has paid its 10 ms off, a sweep leaves nothing.
        store.sweep(now + SECOND);
        assert_eq!(store.len(), 0);
        // Keys still owing time are kept: a later burst that is paid off lazily triggers inline sweeps.
        for key in 0..100_000u64 {
            store.acquire(key, &rate, now + 2 * SECOND + key * 1_000_000);
        }
        assert!(store.len() < SHARDS * SWEEP_AT + SHARDS, "{}", store.len());
    }

    #[test]
    fn in_flight_slots_are_returned() {
        let table = Arc::new(InFlight::default());
        let a = InFlight::try_acquire(&table, 9, 2).unwrap();
        let _b = InFlight::try_acquire(&table, 9, 2).unwrap();
        assert!(InFlight::try_acquire(&table, 9, 2).is_none());
        drop(a);
        assert!(InFlight::try_acquire(&table, 9, 2).is_some());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            parse_rate("100/minute").unwrap(),
            (100, Duration::from_secs(60))
        );
        assert_eq!(parse_rate("5/s").unwrap(), (5, Duration::from_secs(1)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        assert!(parse_rate("lots").is_err());
    }
}
