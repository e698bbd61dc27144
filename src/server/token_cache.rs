//! The verified-token cache: bounded in bytes, with a share per client.
//!
//! A verified JWT is remembered by its SHA-256 so that a repeated token
//! costs a hash lookup, not a signature check. The cache is an attack
//! surface (issue 13: a key holder whose policy allows big tokens filled a
//! 100,000-entry map with distinct valid tokens, 285–664 MiB of RSS, and
//! every insert into the full map scanned it under the write lock), so:
//!
//! - **Bounded in bytes, honestly.** Each entry is weighed by the caller
//!   (claims, header values, extras, the slot and the map entry, plus an
//!   allocator's per-allocation overhead; see `tokens::cache_weight`), and
//!   the sum never exceeds `total_bytes` (default 32 MiB,
//!   `--token-cache-bytes`). Vacated slots and map buckets are reused, and
//!   their inline size is part of each entry's weight, so the peak is bounded
//!   too.
//! - **No scan on the request path.** 16 shards, each a CLOCK (second
//!   chance) ring behind its own `RwLock`: a hit takes the shard's read lock
//!   and sets the entry's reference bit (a relaxed store, skipped when set);
//!   an insert advances the shard's hand, clearing bits and evicting the
//!   first entry that is expired or unreferenced. Every bit the hand clears
//!   was set by one request, so the hand's work is amortised O(1) per
//!   request, and one sweep is bounded by the shard's size. Expired entries
//!   are never served: a hit on one removes it; the hand evicts them first;
//!   and [`ByteCache::sweep_expired`] (a background task every 10 s, off the
//!   request path) drops the rest shard by shard.
//! - **A share per client.** Bytes are also accounted per client (the
//!   token's `client_id`): a client at `per_client_bytes` (default 1/8 of the
//!   total, `--token-cache-client-bytes`) gets its further tokens verified
//!   but not cached, so one key holder cannot evict everybody else's tokens;
//!   its own entries leave as they expire. Evicting everybody else takes
//!   more than `total / per_client` distinct clients, i.e. that many valid
//!   API keys.
//!
//! Why our own and not `moka` or `quick_cache`: neither keeps a per-key-group
//! byte account (the share), moka adds a background housekeeping thread and
//! many dependencies, and the whole policy above fits in this file with
//! tests. The CLOCK ring is the textbook approximation of LRU that needs no
//! list manipulation on a hit (and so only a read lock).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// The default bound of the whole cache (`--token-cache-bytes`).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;
const SHARDS: usize = 16;

/// The bytes an allocation of `n` bytes costs the process (glibc malloc:
/// 16-byte granularity plus a 16-byte header, a fair rule of thumb).
pub fn alloc(n: usize) -> usize {
    if n == 0 { 0 } else { n.div_ceil(16) * 16 + 16 }
}

/// How big the cache may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total_bytes: usize,
    pub per_client_bytes: usize,
}

impl Limits {
    /// `total` bytes, each client at most an eighth of them.
    pub fn new(total: usize) -> Self {
        Limits {
            total_bytes: total,
            per_client_bytes: total / 8,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(DEFAULT_CACHE_BYTES)
    }
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<R> {
    Hit(R),
    /// Present but expired: removed now, never served.
    Expired,
    Miss,
}

/// Why an insert did not cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached {
    /// The entry alone is bigger than a shard's or a client's budget.
    TooBig,
    /// The client holds its whole share already.
    ClientShare,
    /// Another request cached the same token first.
    Present,
}

struct Slot<C, V> {
    hash: [u8; 32],
    client: C,
    value: V,
    expires_at: i64,
    size: usize,
    referenced: AtomicBool,
}

struct Shard<C, V> {
    map: HashMap<[u8; 32], usize>,
    slots: Vec<Option<Slot<C, V>>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
}

impl<C, V> Default for Shard<C, V> {
    fn default() -> Self {
        Shard {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
        }
    }
}

/// The inline bytes of one entry besides the value's heap: its slot in the
/// ring, its map bucket (key, index, control byte, at the map's 7/8 load)
/// and its place in the free list.
pub fn entry_overhead<C, V>() -> usize {
    std::mem::size_of::<Option<Slot<C, V>>>() + (32 + 8 + 1) * 8 / 7 + 8
}

/// A byte-bounded cache of values of clients `C`, keyed by SHA-256.
pub struct ByteCache<C, V> {
    shards: Box<[RwLock<Shard<C, V>>]>,
    shard_bytes: usize,
    per_client_bytes: usize,
    clients: Mutex<HashMap<C, usize>>,
    evictions: AtomicU64,
    refused_share: AtomicU64,
}

impl<C: Hash + Eq + Clone, V> ByteCache<C, V> {
    pub fn new(limits: Limits) -> Self {
        ByteCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            shard_bytes: limits.total_bytes / SHARDS,
            per_client_bytes: limits.per_client_bytes,
            clients: Mutex::default(),
            evictions: AtomicU64::new(0),
            refused_share: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: &[u8; 32]) -> &RwLock<Shard<C, V>> {
        // SHA-256 output is uniform: its first byte picks the shard.
        &self.shards[hash[0] as usize % SHARDS]
    }

    /// Runs `f` on the value cached under `hash`, unless it expired
    /// (`now > expires_at`), under the shard's read lock.
    pub fn get<R>(&self, hash: &[u8; 32], now: i64, f: impl FnOnce(&V) -> R) -> Lookup<R> {
        {
            let shard = self.shard(hash).read().unwrap_or_else(|e| e.into_inner());
            let Some(slot) = shard.map.get(hash).and_then(|&i| shard.slots[i].as_ref()) else {
                return Lookup::Miss;
            };
            if now <= slot.expires_at {
                if !slot.referenced.load(Ordering::Relaxed) {
                    slot.referenced.store(true, Ordering::Relaxed);
                }
                return Lookup::Hit(f(&slot.value));
            }
        }
        let mut shard = self.shard(hash).write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = shard.map.get(hash)
            && shard.slots[i].as_ref().is_some_and(|s| now > s.expires_at)
        {
            self.evict(&mut shard, i);
        }
        Lookup::Expired
    }

    /// Caches `value` of `client` under `hash` until `expires_at`, weighing
    /// `size` bytes (see [`alloc`] and [`entry_overhead`]).
    pub fn insert(
        &self,
        hash: [u8; 32],
        client: C,
        value: V,
        expires_at: i64,
        size: usize,
        now: i64,
    ) -> Result<(), NotCached> {
        if size > self.shard_bytes || size > self.per_client_bytes {
            return Err(NotCached::TooBig);
        }
        {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let used = clients.entry(client.clone()).or_insert(0);
            if *used + size > self.per_client_bytes {
                if *used == 0 {
                    clients.remove(&client);
                }
                self.refused_share.fetch_add(1, Ordering::Relaxed);
                return Err(NotCached::ClientShare);
            }
            *used += size;
        }
        let mut shard = self.shard(&hash).write().unwrap_or_else(|e| e.into_inner());
        if shard.map.contains_key(&hash) {
            self.release(&client, size);
            return Err(NotCached::Present);
        }
        // CLOCK: at most two turns of the hand (the first clears every bit).
        let mut budget = 2 * shard.slots.len() + 1;
        while shard.bytes + size > self.shard_bytes && budget > 0 {
            budget -= 1;
            self.clock_step(&mut shard, now);
        }
        if shard.bytes + size > self.shard_bytes {
            self.release(&client, size);
            return Err(NotCached::TooBig);
        }
        let slot = Slot {
            hash,
            client,
            value,
            expires_at,
            size,
            referenced: AtomicBool::new(false),
        };
        let i = match shard.free.pop() {
            Some(i) => {
                shard.slots[i] = Some(slot);
                i
            }
            None => {
                shard.slots.push(Some(slot));
                shard.slots.len() - 1
            }
        };
        shard.map.insert(hash, i);
        shard.bytes += size;
        Ok(())
    }

    /// One step of the hand: evicts the slot under it if it is expired or
    /// unreferenced, else clears its bit.
    fn clock_step(&self, shard: &mut Shard<C, V>, now: i64) {
        if shard.slots.is_empty() {
            return;
        }
        let i = shard.hand % shard.slots.len();
        shard.hand = i + 1;
        let evict = match shard.slots[i].as_mut() {
            None => false,
            Some(s) => now > s.expires_at || !std::mem::replace(s.referenced.get_mut(), false),
        };
        if evict {
            self.evict(shard, i);
        }
    }

    fn evict(&self, shard: &mut Shard<C, V>, i: usize) {
        if let Some(slot) = shard.slots[i].take() {
            shard.map.remove(&slot.hash);
            shard.bytes -= slot.size;
            shard.free.push(i);
            self.release(&slot.client, slot.size);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(&self, client: &C, size: usize) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = clients.get_mut(client) {
            *used = used.saturating_sub(size);
            if *used == 0 {
                clients.remove(client);
            }
        }
    }

    /// Drops every expired entry, one shard at a time (a background task's
    /// work, never a request's).
    pub fn sweep_expired(&self, now: i64) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            for i in 0..shard.slots.len() {
                if shard.slots[i].as_ref().is_some_and(|s| now > s.expires_at) {
                    self.evict(&mut shard, i);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.read().unwrap_or_else(|e| e.into_inner());
            (n + s.map.len(), b + s.bytes)
        })
    }

    /// Bytes held for `client`.
    pub fn client_bytes(&self, client: &C) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(client).copied().unwrap_or(0)
    }

    /// Entries evicted so far, and inserts refused for a full client share.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.evictions.load(Ordering::Relaxed),
            self.refused_share.load(Ordering::Relaxed),
        )
    }

    pub fn limits(&self) -> Limits {
        Limits {
            total_bytes: self.shard_bytes * SHARDS,
            per_client_bytes: self.per_client_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> [u8; 32] {
        crate::key::sha256(&i.to_le_bytes())
    }

    type Cache = ByteCache<u32, Vec<u8>>;

    fn put(c: &Cache, i: u64, client: u32, size: usize) -> Result<(), NotCached> {
        c.insert(hash(i), client, vec![0; 8], 1_000, size, 0)
    }

    #[test]
    fn a_flood_from_one_client_stays_within_its_share_and_the_total() {
        let c = Cache::new(Limits {
            total_bytes: 1 << 20,
            per_client_bytes: 1 << 17,
        });
        // Another client's tokens, cached first.
        for i in 0..20 {
            put(&c, 1_000_000 + i, 2, 4096).unwrap();
        }
        let mut refused = 0;
        for i in 0..100_000 {
            if put(&c, i, 1, 6 * 1024) == Err(NotCached::ClientShare) {
                refused += 1;
            }
        }
        assert!(c.client_bytes(&1) <= 1 << 17);
        assert!(refused > 99_000, "{refused}");
        let (entries, bytes) = c.usage();
        assert!(bytes <= 1 << 20, "{bytes}");
        assert_eq!(entries, 20 + (1 << 17) / (6 * 1024));
        // Everything of client 2 is still there.
        for i in 0..20 {
            assert_eq!(c.get(&hash(1_000_000 + i), 0, |v| v.len()), Lookup::Hit(8));
        }
    }

    #[test]
    fn many_clients_stay_under_the_total_and_hot_entries_survive() {
        let c = Cache::new(Limits {
            total_bytes: 1 << 20,
            per_client_bytes: 1 << 20,
        });
        put(&c, 7, 0, 1000).unwrap();
        for i in 0..50_000u64 {
            // The hot entry is used between inserts: CLOCK keeps it.
            assert_eq!(c.get(&hash(7), 0, |_| ()), Lookup::Hit(()));
            put(&c, 100 + i, (i % 5_000) as u32, 3000).unwrap();
            assert!(c.usage().1 <= 1 << 20);
        }
        assert_eq!(c.get(&hash(7), 0, |_| ()), Lookup::Hit(()));
        assert!(c.counters().0 > 40_000);
    }

    #[test]
    fn expired_entries_are_never_served_and_are_dropped() {
        let c = Cache::new(Limits::new(1 << 20));
        c.insert(hash(1), 1, vec![1], 100, 500, 0).unwrap();
        c.insert(hash(2), 1, vec![2], 100, 500, 0).unwrap();
        c.insert(hash(3), 2, vec![3], 300, 500, 0).unwrap();
        assert_eq!(c.get(&hash(1), 100, |v| v[0]), Lookup::Hit(1));
        assert_eq!(c.get(&hash(1), 101, |v| v[0]), Lookup::Expired);
        assert_eq!(c.get(&hash(1), 0, |v| v[0]), Lookup::Miss);
        assert_eq!(c.client_bytes(&1), 500);
        assert_eq!(c.sweep_expired(200), 1);
        assert_eq!(c.client_bytes(&1), 0);
        assert_eq!(c.usage(), (1, 500));
        // The freed share is usable again.
        c.insert(hash(4), 1, vec![4], 1000, 500, 200).unwrap();
        assert_eq!(c.get(&hash(4), 200, |v| v[0]), Lookup::Hit(4));
    }

    #[test]
    fn a_duplicate_or_oversized_entry_is_not_cached_and_not_counted() {
        let c = Cache::new(Limits::new(1 << 20));
        c.insert(hash(1), 1, vec![1], 100, 500, 0).unwrap();
        assert_eq!(
            c.insert(hash(1), 1, vec![1], 100, 500, 0),
            Err(NotCached::Present)
        );
        assert_eq!(c.client_bytes(&1), 500);
        assert_eq!(
            c.insert(hash(2), 1, vec![1], 100, 1 << 19, 0),
            Err(NotCached::TooBig)
        );
        assert_eq!(c.client_bytes(&1), 500);
    }
}
