//! Cluster-wide rate limits (`--rate-limit-redis-url`): each replica's
//! local share of an ApiKey's bucket. Pure: atomics and a queue, no client
//! and no clock; the Redis side is the adapter [`super::redis_limit`],
//! which calls [`Share::plan`] and [`Share::settled`] from its settle loop.
//!
//! The cluster's bucket is one GCRA per ApiKey in Redis (its theoretical
//! arrival time). A replica **leases** requests from it in advance and the
//! request path spends the lease with one compare-and-swap ([`Share::spend`]):
//! it never waits on Redis. The settle loop asks for more when the lease
//! runs low (every tick, or at once when it runs out), about as many as the
//! replica was asked for since the last settle (1 to `burst`), and gives the
//! rest back when the key has been quiet here for [`IDLE_TICKS`] ticks.
//!
//! A key this replica has not settled yet (its first request here, or after
//! a quiet second) is **cold**: its requests are judged by the per-replica
//! bucket and each one accepted is owed to the cluster (a negative lease),
//! paid at the next settle, which follows at once. While Redis is down
//! ([`Settlements::up`] false) every key is judged by the per-replica
//! bucket, and nothing is owed.
//!
//! A hot key whose lease runs dry before the next settle lands is judged
//! the same way (per-replica bucket, owed) as long as Redis granted all it
//! asked for at the last settle: the lease ran dry because demand grew
//! faster than the settle loop, not because the cluster's bucket is empty.
//! Once Redis grants less than asked, a dry lease refuses. Without this, a
//! key far under its limit was refused for a round trip each time demand
//! outgrew its lease (39k refusals in 5 s at 40k req/s with a limit of
//! 100k/s, found by `e2e/bench-auth redis-limits`).
//!
//! Accepted requests in the cluster over `t` seconds: at most
//! `rate × t + burst` for requests spent from leases, plus what cold keys
//! accept before their first settle (each replica's cold requests of one
//! Redis round trip; at most `burst` each) and what dry leases accept the
//! same way, which is then owed and paid back out of later leases: at most
//! `R × burst` more with `R` replicas, never more over a longer window.

use crate::crd::{ApiKey, RateLimit};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Quiet ticks after which a key's lease goes back to the cluster and the
/// key turns cold.
pub const IDLE_TICKS: u32 = 20;

/// The settle loop's end of the shares: which keys spent since it last
/// looked, whether Redis answers, and the wake-up when a lease runs out.
#[derive(Default)]
pub struct Settlements {
    up: AtomicBool,
    joined: Mutex<Vec<Arc<Share>>>,
    /// Woken when a lease runs out or a key turns active.
    pub wake: tokio::sync::Notify,
}

impl Settlements {
    /// Whether Redis answered the last settles (else: per-replica limits).
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// The shares that turned active since the last call.
    pub fn take_joined(&self) -> Vec<Arc<Share>> {
        std::mem::take(&mut *self.joined.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn join(&self, share: Arc<Share>) {
        self.joined.lock().unwrap_or_else(|e| e.into_inner()).push(share);
        self.wake.notify_one();
    }
}

/// How one request was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent from this replica's lease of the cluster's bucket.
    Shared,
    /// The lease is used up and Redis granted less than asked last time
    /// (the cluster's bucket is empty): refused (the settle loop is woken).
    Refused,
    /// Cold key, Redis down, or a lease that ran dry before its refill: the
    /// per-replica bucket decides; call
    /// [`Share::spent_locally`] when it accepts.
    Local,
}

/// What the settle loop asks Redis for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Requests given back (> 0) or owed (< 0).
    pub give: i64,
    /// Requests wanted.
    pub want: u32,
    /// The key leaves the loop after this settle (quiet here).
    pub leaving: bool,
}

/// One replica's share of one ApiKey's cluster-wide bucket.
pub struct Share {
    /// The Redis key's suffix: a hash of `namespace/name` (never key material).
    pub id: [u8; 16],
    /// Microseconds per request at the sustained rate.
    pub interval_us: u64,
    pub burst: u32,
    /// Requests leased and not spent (< 0: owed).
    credit: AtomicI64,
    /// Requests asked for since the last plan.
    demand: AtomicU32,
    /// Settled with Redis since it last turned cold.
    hot: AtomicBool,
    /// In the settle loop (or on its way there).
    queued: AtomicBool,
    /// The loop's count of quiet ticks (only the loop touches it).
    quiet: AtomicU32,
    /// Redis granted less than asked at the last settle: a dry lease refuses.
    starved: AtomicBool,
    settlements: Arc<Settlements>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("credit", &self.credit.load(Ordering::Relaxed))
            .field("hot", &self.hot.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Redis key's suffix for the ApiKey `namespace/name` (a namespace name
/// has no `/`, so no two ApiKeys share one).
pub fn share_id(namespace: &str, name: &str) -> [u8; 16] {
    let digest = crate::key::sha256(format!("{namespace}/{name}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// This replica's share of `api_key`'s bucket, when it has a rate limit.
pub fn share_of(settlements: &Arc<Settlements>, api_key: &ApiKey) -> Option<Arc<Share>> {
    let limit = api_key.spec.rate_limit.as_ref()?;
    let meta = &api_key.metadata;
    let (ns, name) = (meta.namespace.as_deref(), meta.name.as_deref());
    let id = share_id(ns.unwrap_or_default(), name.unwrap_or_default());
    Some(Arc::new(Share::new(id, limit, settlements.clone())))
}

impl Share {
    pub fn new(id: [u8; 16], limit: &RateLimit, settlements: Arc<Settlements>) -> Self {
        let rps = u64::from(limit.requests_per_second.max(1));
        Share {
            id,
            interval_us: (1_000_000 / rps).max(1),
            burst: limit.burst.unwrap_or(limit.requests_per_second).max(1),
            credit: AtomicI64::new(0),
            demand: AtomicU32::new(0),
            hot: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            quiet: AtomicU32::new(0),
            starved: AtomicBool::new(false),
            settlements,
        }
    }

    /// One request of this key (the request path): from the lease when the
    /// key is hot and Redis up, else [`Spend::Local`].
    pub fn spend(self: &Arc<Self>) -> Spend {
        self.demand.fetch_add(1, Ordering::Relaxed);
        if !self.queued.load(Ordering::Relaxed) && !self.queued.swap(true, Ordering::AcqRel) {
            self.settlements.join(self.clone());
        }
        if !(self.hot.load(Ordering::Acquire) && self.settlements.up()) {
            return Spend::Local;
        }
        let mut credit = self.credit.load(Ordering::Relaxed);
        loop {
            if credit <= 0 {
                self.settlements.wake.notify_one();
                return if self.starved.load(Ordering::Acquire) {
                    Spend::Refused
                } else {
                    Spend::Local
                };
            }
            match self
                .credit
                .compare_exchange_weak(credit, credit - 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Spend::Shared,
                Err(now) => credit = now,
            }
        }
    }

    /// The per-replica bucket accepted a [`Spend::Local`] request: owed to
    /// the cluster while Redis is up.
    pub fn spent_locally(&self) {
        if self.settlements.up() {
            self.credit.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Seconds a refused client should wait: one request's interval.
    pub fn retry_after(&self) -> u64 {
        self.interval_us.div_ceil(1_000_000).max(1)
    }

    /// The settle loop's tick: what to ask Redis for this key, if anything.
    pub fn plan(&self) -> Option<Ask> {
        let demand = self.demand.swap(0, Ordering::AcqRel);
        let quiet = if demand == 0 {
            self.quiet.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.quiet.store(0, Ordering::Relaxed);
            0
        };
        if quiet >= IDLE_TICKS {
            // Cold from now on: what is left goes back (or what is owed is paid).
            self.hot.store(false, Ordering::Release);
            let credit = self.credit.load(Ordering::Acquire);
            return Some(Ask {
                give: credit,
                want: 0,
                leaving: true,
            });
        }
        let credit = self.credit.load(Ordering::Acquire);
        let target = i64::from(demand.clamp(1, self.burst));
        (credit < target).then(|| Ask {
            give: credit.min(0),
            want: u32::try_from(target - credit.max(0)).unwrap_or(self.burst),
            leaving: false,
        })
    }

    /// Redis granted `granted` for `ask`.
    pub fn settled(&self, ask: Ask, granted: u32) {
        self.credit
            .fetch_add(i64::from(granted) - ask.give, Ordering::AcqRel);
        if ask.leaving {
            self.quiet.store(0, Ordering::Relaxed);
            self.queued.store(false, Ordering::Release);
        } else {
            self.starved.store(granted < ask.want, Ordering::Release);
            self.hot.store(true, Ordering::Release);
        }
    }

    /// Redis went away: cold, the lease forgotten, out of the loop.
    pub fn drop_lease(&self) {
        self.hot.store(false, Ordering::Release);
        self.credit.store(0, Ordering::Release);
        self.quiet.store(0, Ordering::Relaxed);
        self.starved.store(false, Ordering::Release);
        self.queued.store(false, Ordering::Release);
    }
}

/// The cluster's bucket as the Redis script keeps it (a model for tests and
/// the README's figures): `tat` is the theoretical arrival time in µs.
pub fn settle_model(tat: &mut u64, now_us: u64, share: (u64, u32), ask: Ask) -> u32 {
    let (interval, burst) = share;
    let mut t = (*tat).max(now_us);
    let give = ask.give.unsigned_abs().saturating_mul(interval);
    t = if ask.give > 0 {
        t.saturating_sub(give).max(now_us)
    } else {
        t.saturating_add(give)
    };
    let room = (now_us + u64::from(burst) * interval).saturating_sub(t) / interval;
    let granted = room.min(u64::from(ask.want)) as u32;
    *tat = t + u64::from(granted) * interval;
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(rps: u32, burst: u32, s: &Arc<Settlements>) -> Arc<Share> {
        let limit = RateLimit {
            requests_per_second: rps,
            burst: Some(burst),
        };
        Arc::new(Share::new(share_id("ns", "a"), &limit, s.clone()))
    }

    fn settle(share: &Share, tat: &mut u64, now_us: u64) {
        if let Some(ask) = share.plan() {
            let g = settle_model(tat, now_us, (share.interval_us, share.burst), ask);
            share.settled(ask, g);
        }
    }

    #[test]
    fn a_cold_key_is_local_and_owes_what_it_accepts() {
        let s = Arc::new(Settlements::default());
        s.set_up(true);
        let a = share(20, 20, &s);
        assert_eq!(a.spend(), Spend::Local);
        a.spent_locally();
        assert_eq!(s.take_joined().len(), 1, "the key joined the loop");
        assert_eq!(a.spend(), Spend::Local);
        a.spent_locally();
        assert!(s.take_joined().is_empty(), "joined once");
        let ask = a.plan().unwrap();
        assert_eq!(
            ask,
            Ask {
                give: -2,
                want: 2,
                leaving: false
            }
        );
        let mut tat = 0;
        let g = settle_model(&mut tat, 1_000_000, (a.interval_us, a.burst), ask);
        assert_eq!(g, 2);
        assert_eq!(tat, 1_000_000 + 4 * 50_000, "two owed, two leased");
        a.settled(ask, g);
        assert_eq!(
            (a.spend(), a.spend(), a.spend()),
            (Spend::Shared, Spend::Shared, Spend::Local),
            "all it asked was granted: a dry lease is judged locally"
        );
    }

    #[test]
    fn a_dry_lease_refuses_once_redis_grants_less_than_asked() {
        let s = Arc::new(Settlements::default());
        s.set_up(true);
        let a = share(20, 20, &s);
        let mut tat = 0;
        for _ in 0..3 {
            assert_eq!(a.spend(), Spend::Local);
            a.spent_locally();
        }
        // The cluster's bucket has room for 1 more after the 3 owed.
        let ask = a.plan().unwrap();
        assert_eq!((ask.give, ask.want), (-3, 3));
        tat = tat.max(1_000_000 + 16 * 50_000);
        let g = settle_model(&mut tat, 1_000_000, (a.interval_us, a.burst), ask);
        assert_eq!(g, 1, "room for one");
        a.settled(ask, g);
        assert_eq!((a.spend(), a.spend()), (Spend::Shared, Spend::Refused));
        // A later settle that grants all it asks lifts the refusal.
        let ask = a.plan().unwrap();
        let g = settle_model(&mut tat, 3_000_000, (a.interval_us, a.burst), ask);
        assert_eq!(g, ask.want);
        a.settled(ask, g);
        while a.spend() == Spend::Shared {}
        assert_eq!(a.spend(), Spend::Local);
    }

    #[test]
    fn redis_down_is_local_and_owes_nothing() {
        let s = Arc::new(Settlements::default());
        let a = share(20, 20, &s);
        for _ in 0..5 {
            assert_eq!(a.spend(), Spend::Local);
            a.spent_locally();
        }
        assert_eq!(a.credit.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_quiet_key_gives_its_lease_back_and_turns_cold() {
        let s = Arc::new(Settlements::default());
        s.set_up(true);
        let a = share(10, 10, &s);
        a.spend();
        let mut tat = 0;
        settle(&a, &mut tat, 0);
        assert_eq!(a.spend(), Spend::Shared);
        // The tick that sees the spend, then quiet ones.
        for _ in 0..IDLE_TICKS {
            settle(&a, &mut tat, 0);
        }
        assert!(a.hot.load(Ordering::Relaxed));
        let ask = a.plan().unwrap();
        assert!(ask.leaving && ask.give >= 0, "{ask:?}");
        a.settled(ask, 0);
        assert_eq!(a.credit.load(Ordering::Relaxed), 0);
        assert_eq!(a.spend(), Spend::Local);
        assert_eq!(s.take_joined().len(), 2, "it joined again");
    }

    /// Three replicas, each asked for 70 requests a second of one key
    /// (20/s, burst 20), settling every 10 ms, over 10 s: the cluster
    /// accepts about 20 × 10 + 20.
    #[test]
    fn three_replicas_share_one_bucket() {
        let s: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::new(Settlements::default());
                s.set_up(true);
                s
            })
            .collect();
        let shares: Vec<_> = s.iter().map(|s| share(20, 20, s)).collect();
        let local: Vec<_> = (0..3).map(|_| std::cell::Cell::new(20u32)).collect();
        let (mut tat, mut accepted) = (0u64, 0u32);
        for ms in 0..10_000u64 {
            let now = 1_000_000 + ms * 1000;
            for (i, sh) in shares.iter().enumerate() {
                // One request every ~14 ms per replica, offset per replica.
                if (ms + i as u64 * 5).is_multiple_of(14) {
                    match sh.spend() {
                        Spend::Shared => accepted += 1,
                        Spend::Refused => {}
                        Spend::Local if local[i].get() > 0 => {
                            local[i].set(local[i].get() - 1);
                            sh.spent_locally();
                            accepted += 1;
                        }
                        Spend::Local => {}
                    }
                }
                if (ms + i as u64 * 3).is_multiple_of(10) {
                    settle(sh, &mut tat, now);
                }
            }
        }
        assert!((200..=225).contains(&accepted), "{accepted}");
    }
}
