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

/// Nanoseconds on the limiter's clock (monotonic, from process start).
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    // Start one hour in, so a fresh key's "now" is never below a tolerance subtraction.
    EPOCH.elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// Sweeps idle rate keys every few seconds.
pub struct LimitSweeper {
    pub limiter: Arc<Limiter>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LimitSweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let RateStore::Local(store) = &self.limiter.rates;
                    store.sweep(now_ns());
                }
            }
        }
    }
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
