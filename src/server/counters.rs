//! What the request path counts per key, and the recently retired keys the
//! index remembers so that a presented one can be attributed to its ApiKey.
//!
//! Also each ApiKey's [`Usage`] (its rate-limit buckets, last use and
//! retired count). Requests only touch atomics here; [`super::usage`] turns them into
//! `status.keyUsage` and `status.retiredKeyPresented` once per flush. The
//! counts held here are deltas: what this replica counted and has not
//! written yet. A successful write subtracts exactly what it wrote, so counts
//! made while it was in flight are kept for the next one.

use super::index::KeyId;
use super::shared_limit::Share;
use crate::crd::{KeyUsage, RateLimit};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a valid key's request was refused (the `status.keyUsage[].denied`
/// counters; the decision's labels `insufficient_scope`, `audience`,
/// `namespace`, `issuer`, `rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Scope = 0,
    Audience = 1,
    Namespace = 2,
    Issuer = 3,
    RateLimited = 4,
}

impl Denied {
    pub const ALL: [Denied; 5] = [
        Denied::Scope,
        Denied::Audience,
        Denied::Namespace,
        Denied::Issuer,
        Denied::RateLimited,
    ];

    /// The field of `status.keyUsage[].denied`.
    pub fn field(self) -> &'static str {
        match self {
            Denied::Scope => "scope",
            Denied::Audience => "audience",
            Denied::Namespace => "namespace",
            Denied::Issuer => "issuer",
            Denied::RateLimited => "rateLimited",
        }
    }
}

/// One key's use on this replica. Survives new versions of its ApiKey.
#[derive(Debug, Default)]
pub struct KeyCounters {
    /// Unix seconds of the last accepted request (0: none since start).
    pub last_used: AtomicI64,
    /// Accepted requests not written yet.
    pub allowed: AtomicU64,
    /// Refused requests not written yet, by [`Denied`].
    pub denied: [AtomicU64; 5],
}

/// A snapshot of [`KeyCounters`]' deltas, to write and then subtract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deltas {
    pub allowed: u64,
    pub denied: [u64; 5],
}

impl Deltas {
    pub fn is_empty(&self) -> bool {
        self.allowed == 0 && self.denied.iter().all(|d| *d == 0)
    }
}

impl KeyCounters {
    /// An accepted request at `now` (unix seconds).
    pub fn allow(&self, now: i64) {
        self.allowed.fetch_add(1, Ordering::Relaxed);
        // Stored once a second at most: a store on every request would make
        // the cores fight over the cache line.
        if self.last_used.load(Ordering::Relaxed) < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    pub fn deny(&self, why: Denied) {
        self.denied[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn deltas(&self) -> Deltas {
        Deltas {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: std::array::from_fn(|i| self.denied[i].load(Ordering::Relaxed)),
        }
    }

    /// After `written` reached the API server.
    pub fn written(&self, written: &Deltas) {
        self.allowed.fetch_sub(written.allowed, Ordering::Relaxed);
        for (counter, n) in self.denied.iter().zip(written.denied) {
            counter.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// One key's `status.keyUsage` entry, compactly (unix seconds, 0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredUsage {
    pub last_used: i64,
    pub allowed: i64,
    pub denied: [i64; 5],
}

impl From<&KeyUsage> for StoredUsage {
    fn from(u: &KeyUsage) -> Self {
        let d = &u.denied;
        Self {
            last_used: u.last_used_at.as_ref().map_or(0, |t| t.0.as_second()),
            allowed: u.allowed,
            denied: [d.scope, d.audience, d.namespace, d.issuer, d.rate_limited],
        }
    }
}

/// Retired keys presented to this replica for one ApiKey, not written yet.
#[derive(Debug, Default)]
pub struct RetiredCounter {
    pub count: AtomicU64,
    /// Unix seconds of the last one (0: none).
    pub last_at: AtomicI64,
    pub last_key: std::sync::Mutex<Option<KeyId>>,
}

impl RetiredCounter {
    pub fn presented(&self, key_id: &KeyId, now: i64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_at.fetch_max(now, Ordering::Relaxed);
        *self.last_key.lock().expect("retired lock") = Some(*key_id);
    }
}

/// How many retired keys the index remembers per ApiKey (the last ones).
pub const RETIRED_PER_API_KEY: usize = 16;

/// Recently retired keys: id → (SHA-256, `<namespace>/<name>` of the ApiKey
/// that listed it), at most [`RETIRED_PER_API_KEY`] per ApiKey (the oldest
/// goes first), forgotten with their ApiKey. A presented key is attributed
/// only when its hash matches, so a guessed id counts nothing.
#[derive(Debug, Default)]
pub struct RetiredKeys {
    by_id: HashMap<KeyId, ([u8; 32], Box<str>)>,
    by_object: HashMap<Box<str>, VecDeque<KeyId>>,
}

impl RetiredKeys {
    pub fn retire(&mut self, id: KeyId, sha256: [u8; 32], object: &str) {
        let ids = self.by_object.entry(object.into()).or_default();
        if ids.contains(&id) {
            return;
        }
        if ids.len() >= RETIRED_PER_API_KEY
            && let Some(oldest) = ids.pop_front()
        {
            self.by_id.remove(&oldest);
        }
        ids.push_back(id);
        self.by_id.insert(id, (sha256, object.into()));
    }

    /// A key listed again (never in practice: ids are random) is not retired.
    pub fn unretire(&mut self, id: &KeyId) {
        if let Some((_, object)) = self.by_id.remove(id)
            && let Some(ids) = self.by_object.get_mut(&object)
        {
            ids.retain(|i| i != id);
        }
    }

    /// Adds what `other` holds (a re-list's view) to what this holds.
    pub fn merge_from(&mut self, other: RetiredKeys) {
        for (object, ids) in other.by_object {
            for id in ids {
                if let Some((hash, _)) = other.by_id.get(&id) {
                    self.retire(id, *hash, &object);
                }
            }
        }
    }

    /// Keeps only the ApiKeys `keep` says still exist.
    pub fn retain_objects(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Box<str>> = self.by_object.keys().filter(|o| !keep(o)).cloned().collect();
        for object in gone {
            self.forget(&object);
        }
    }

    /// The ApiKey is gone: so is what it retired.
    pub fn forget(&mut self, object: &str) {
        for id in self.by_object.remove(object).into_iter().flatten() {
            self.by_id.remove(&id);
        }
        // Given back after many deletions (as the index's own tables).
        if self.by_object.capacity() > 1024 && self.by_object.len() * 4 < self.by_object.capacity() {
            self.by_object.shrink_to(self.by_object.len() * 2);
        }
        if self.by_id.capacity() > 1024 && self.by_id.len() * 4 < self.by_id.capacity() {
            self.by_id.shrink_to(self.by_id.len() * 2);
        }
    }

    /// The ApiKey that retired the key with this id and hash, compared in
    /// constant time.
    pub fn owner_of(&self, id: &KeyId, sha256: &[u8; 32]) -> Option<&str> {
        use subtle::ConstantTimeEq;
        let (hash, object) = self.by_id.get(id)?;
        bool::from(hash.ct_eq(sha256)).then_some(&**object)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Per-ApiKey state that changes on requests, not on watch events.
#[derive(Debug)]
pub struct Usage {
    pub rate_limit: Option<RateLimit>,
    pub limiter: Option<Box<DefaultDirectRateLimiter>>,
    /// This replica's share of the cluster's bucket (shared limits only).
    pub share: Option<Arc<Share>>,
    /// Unix seconds of the last accepted request (0: none since start).
    pub last_used: AtomicI64,
    /// Retired keys of this ApiKey presented here, not written yet.
    pub retired: Arc<RetiredCounter>,
}

impl Usage {
    pub(super) fn new(rate_limit: Option<RateLimit>, share: Option<Arc<Share>>) -> Self {
        let limiter = rate_limit.as_ref().map(|r| {
            let rps = NonZeroU32::new(r.requests_per_second).unwrap_or(NonZeroU32::MIN);
            let burst = r.burst.and_then(NonZeroU32::new).unwrap_or(rps);
            Box::new(RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)))
        });
        Self {
            rate_limit,
            limiter,
            share,
            last_used: AtomicI64::new(0),
            retired: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> KeyId {
        let mut id = [b'a'; crate::key::KEY_ID_LEN];
        id[0] = b'a' + n % 26;
        id[1] = b'a' + n / 26;
        id
    }

    #[test]
    fn deltas_written_are_subtracted_and_counts_made_meanwhile_kept() {
        let c = KeyCounters::default();
        c.allow(100);
        c.allow(100);
        c.deny(Denied::Scope);
        c.deny(Denied::RateLimited);
        let taken = c.deltas();
        assert_eq!(taken.allowed, 2);
        assert_eq!(taken.denied, [1, 0, 0, 0, 1]);
        // A request while the write is in flight.
        c.allow(101);
        c.written(&taken);
        assert_eq!(c.deltas().allowed, 1);
        assert_eq!(c.deltas().denied, [0; 5]);
        assert_eq!(c.last_used.load(Ordering::Relaxed), 101);
        c.allow(90);
        assert_eq!(c.last_used.load(Ordering::Relaxed), 101, "never backwards");
        assert!(!c.deltas().is_empty());
    }

    #[test]
    fn retired_keys_are_bounded_per_api_key_and_need_the_hash() {
        let mut r = RetiredKeys::default();
        for n in 0..(RETIRED_PER_API_KEY as u8 + 4) {
            r.retire(id(n), [n; 32], "shop/billing");
        }
        r.retire(id(200), [9; 32], "shop/other");
        assert_eq!(
            r.len(),
            RETIRED_PER_API_KEY + 1,
            "the last 16 of billing, 1 of other"
        );
        assert_eq!(r.owner_of(&id(0), &[0; 32]), None, "the oldest went first");
        let last = RETIRED_PER_API_KEY as u8 + 3;
        assert_eq!(r.owner_of(&id(last), &[last; 32]), Some("shop/billing"));
        assert_eq!(
            r.owner_of(&id(last), &[0; 32]),
            None,
            "a guessed id counts nothing"
        );
        r.unretire(&id(last));
        assert_eq!(r.owner_of(&id(last), &[last; 32]), None);
        r.forget("shop/billing");
        assert_eq!(r.len(), 1);
        assert_eq!(r.owner_of(&id(200), &[9; 32]), Some("shop/other"));
    }

    #[test]
    fn retired_presentations_keep_the_last_id_and_time() {
        let c = RetiredCounter::default();
        c.presented(&id(1), 50);
        c.presented(&id(2), 40);
        assert_eq!(c.count.load(Ordering::Relaxed), 2);
        assert_eq!(c.last_at.load(Ordering::Relaxed), 50);
        assert_eq!(*c.last_key.lock().unwrap(), Some(id(2)));
    }
}
