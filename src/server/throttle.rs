//! Throttling of failed client authentication, per source address and per
//! key id, with bounded memory.
//!
//! A failure is a `401` whose credential did not authenticate: on `/token`
//! and `<issuer>/token` (`invalid_client`), on `/introspect` (the caller's
//! key), and on the auth routes (an API key that is unknown, replaced,
//! revoked or expired; a wrong audience is not a failure of
//! authentication). After `N` failures within a window the next request
//! is answered `429` with `Retry-After`, before its credential is checked or
//! its body read, and counted in `latchkey_auth_throttled_total{by}`.
//!
//! - **By key id** (`--auth-failures-per-key-id`, 10 per
//!   `--auth-failure-window-seconds`, 10): the 12-character id inside a
//!   well-formed key (format and checksum pass), on every route. JWTs carry
//!   no id that can be trusted before their signature is checked, so they
//!   are counted by source only.
//! - **By source** (`--auth-failures-per-source`, 20 per window): the peer
//!   address (IPv6 by /64), on `/token`, `<issuer>/token` and `/introspect`
//!   only, which clients and backends call directly. Not on the auth routes:
//!   there every request comes from the proxy, and throttling its address
//!   would throttle the whole ingress.
//!
//! Each limit is a GCRA (a token bucket of `N` failures refilled over the
//! window: after a burst of `N`, one more every `window / N`), kept in a
//! map of at most [`CAPACITY`] entries per kind, 16 shards, each evicting
//! its oldest entry first when full (no scan): an attacker who wants its
//! own entry forgotten has to fail with that many other ids first, each of
//! which costs it a request. A limit of 0 turns that kind off.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries kept per kind (source, key id): a few MiB at most.
pub const CAPACITY: usize = 32_768;
const SHARDS: usize = 16;

/// The throttle's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Failures per source address per window (0: off).
    pub per_source: u32,
    /// Failures per key id per window (0: off).
    pub per_key_id: u32,
    pub window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            per_source: 20,
            per_key_id: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// What a throttled request was throttled by (the metric's `by` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Source,
    KeyId,
}

impl By {
    pub fn label(self) -> &'static str {
        match self {
            By::Source => "source",
            By::KeyId => "key_id",
        }
    }
}

struct Shard<K> {
    /// Key → theoretical arrival time (ms) of the GCRA.
    tat: HashMap<K, u64>,
    order: VecDeque<K>,
}

/// One GCRA limit over a bounded map of keys.
pub struct Limiter<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    /// `window / N`, in ms.
    interval_ms: u64,
    window_ms: u64,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    /// The latest instant (ms) until which any key may be blocked: before
    /// it nothing is looked up, so that requests without recent failures
    /// take no lock and hash nothing (every valid request asks).
    blocking_until_ms: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `n` failures per `window` (`None` when `n` is 0), at most `capacity` keys.
    pub fn new(n: u32, window: Duration, capacity: usize) -> Option<Self> {
        if n == 0 {
            return None;
        }
        let window_ms = (window.as_millis() as u64).max(1);
        Some(Limiter {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tat: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            interval_ms: (window_ms / u64::from(n)).max(1),
            window_ms,
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            blocking_until_ms: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K>> {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Whether some key may be blocked at `now_ms` (when not, [`blocked`]
    /// is `None` for every key, and a caller need not even find the key).
    ///
    /// [`blocked`]: Self::blocked
    pub fn may_block(&self, now_ms: u64) -> bool {
        self.blocking_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// `Some(seconds to wait)` when `key` has used up its failures at `now_ms`.
    pub fn blocked(&self, key: &K, now_ms: u64) -> Option<u64> {
        if self.blocking_until_ms.load(Ordering::Relaxed) <= now_ms {
            return None;
        }
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let allowed_at = self.allowed_at(*shard.tat.get(key)?);
        (allowed_at > now_ms).then(|| (allowed_at - now_ms).div_ceil(1000).max(1))
    }

    /// When a key whose GCRA stands at `tat` may fail again: it is blocked
    /// while more than N - 1 failures are outstanding.
    fn allowed_at(&self, tat: u64) -> u64 {
        tat.saturating_sub(self.window_ms - self.interval_ms.min(self.window_ms))
    }

    /// Records one failure of `key` at `now_ms`.
    pub fn failed(&self, key: &K, now_ms: u64) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = shard.tat.get_mut(key) {
            *tat = (*tat).max(now_ms) + self.interval_ms;
            let allowed_at = self.allowed_at(*tat);
            self.blocking_until_ms.fetch_max(allowed_at, Ordering::Relaxed);
            return;
        }
        if shard.tat.len() >= self.per_shard
            && let Some(oldest) = shard.order.pop_front()
        {
            shard.tat.remove(&oldest);
        }
        shard.tat.insert(key.clone(), now_ms + self.interval_ms);
        shard.order.push_back(key.clone());
        let allowed_at = self.allowed_at(now_ms + self.interval_ms);
        self.blocking_until_ms.fetch_max(allowed_at, Ordering::Relaxed);
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tat.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The source key of a peer address: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64 (one host usually has a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Both limits of the server.
pub struct Throttle {
    epoch: Instant,
    pub by_source: Option<Limiter<IpAddr>>,
    pub by_key_id: Option<Limiter<super::index::KeyId>>,
}

impl Throttle {
    pub fn new(config: Config) -> Self {
        Throttle {
            epoch: Instant::now(),
            by_source: Limiter::new(config.per_source, config.window, CAPACITY),
            by_key_id: Limiter::new(config.per_key_id, config.window, CAPACITY),
        }
    }

    /// Milliseconds since the throttle was made (its clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a request from `source` with `key_id` is to be refused now,
    /// and for how many seconds.
    pub fn blocked(
        &self,
        source: Option<&IpAddr>,
        key_id: Option<&super::index::KeyId>,
        now_ms: u64,
    ) -> Option<(By, u64)> {
        if let (Some(l), Some(s)) = (&self.by_source, source)
            && let Some(wait) = l.blocked(s, now_ms)
        {
            return Some((By::Source, wait));
        }
        if let (Some(l), Some(k)) = (&self.by_key_id, key_id)
            && let Some(wait) = l.blocked(k, now_ms)
        {
            return Some((By::KeyId, wait));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_failures_pass_then_the_key_waits_and_refills() {
        let l = Limiter::new(10, Duration::from_secs(10), 100).unwrap();
        let k = "key".to_string();
        for i in 0..10 {
            assert_eq!(l.blocked(&k, 0), None, "failure {i} is allowed");
            l.failed(&k, 0);
        }
        assert_eq!(l.blocked(&k, 0), Some(1));
        // Another key is not affected.
        assert_eq!(l.blocked(&"other".to_string(), 0), None);
        // One failure's worth refills per second.
        assert_eq!(l.blocked(&k, 999), Some(1));
        assert_eq!(l.blocked(&k, 1000), None);
        l.failed(&k, 1000);
        assert!(l.blocked(&k, 1000).is_some());
        // Ten seconds later everything is forgotten.
        assert_eq!(l.blocked(&k, 12_000), None);
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_oldest_first() {
        let l = Limiter::new(1, Duration::from_secs(60), 64).unwrap();
        for i in 0..10_000u32 {
            l.failed(&i, 0);
        }
        assert!(l.len() <= 64 + SHARDS, "{}", l.len());
        assert!(l.blocked(&9_999, 0).is_some());
        assert!(l.blocked(&0, 0).is_none(), "the oldest were forgotten");
    }

    #[test]
    fn ipv6_sources_count_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        assert!(Limiter::<u32>::new(0, Duration::from_secs(1), 10).is_none());
        let t = Throttle::new(Config {
            per_source: 0,
            per_key_id: 1,
            window: Duration::from_secs(10),
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(t.by_source.is_none());
        let id = *b"AbCdEfGhIjKl";
        t.by_key_id.as_ref().unwrap().failed(&id, 0);
        assert_eq!(t.blocked(Some(&ip), Some(&id), 0), Some((By::KeyId, 10)));
    }
}
