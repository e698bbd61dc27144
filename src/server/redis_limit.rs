//! The Redis adapter of cluster-wide rate limits (`--rate-limit-redis-url`):
//! the settle loop beside the request path. Every [`TICK`] (or at once,
//! at most every [`MIN_GAP`], when a lease runs out or a key turns active)
//! it asks each active key's [`Share::plan`], sends every ask in one
//! pipeline of the [`SCRIPT`] (one round trip), and hands each grant to
//! [`Share::settled`]. The request path never waits on it.
//!
//! Redis keys are `latchkey:rl:<hash of namespace/name>` (no key material,
//! no name), each one integer (the bucket's theoretical arrival time, µs
//! on Redis's clock, so replicas' clocks do not matter), expiring when the
//! bucket is full again.
//!
//! Fallback: settles that fail or take longer than [`TIMEOUT`], all of them
//! for [`FALLBACK_AFTER`] (at least two), turn the shared limits off (every key judged by the
//! replica's own bucket, leases forgotten), log one warning and set
//! `latchkey_rate_limit_shared{state="fallback"}`; a `PING` every
//! [`RECONNECT`] over a fresh connection turns them back on (one info line).

use super::shared_limit::{Ask, Settlements, Share};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The settle interval.
pub const TICK: Duration = Duration::from_millis(50);
/// The least time between two settles (when woken early).
pub const MIN_GAP: Duration = Duration::from_millis(10);
/// The longest a settle or a connection attempt may take.
pub const TIMEOUT: Duration = Duration::from_millis(250);
/// How long settles must keep failing before the replica falls back to
/// per-replica limits (a slow settle only leaves leases short: the replica
/// refuses more, never accepts more).
pub const FALLBACK_AFTER: Duration = Duration::from_secs(1);
/// How often a replica in fallback tries Redis again.
pub const RECONNECT: Duration = Duration::from_millis(500);

/// One settle of one key: `KEYS[1]` the bucket; `ARGV`: µs per request,
/// burst, requests given back (> 0) or owed (< 0), requests wanted.
/// Returns the requests granted.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local give = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat - give * interval
if tat < now then tat = now end
local room = math.floor((now + burst * interval - tat) / interval)
local granted = 0
if room > 0 then granted = math.min(room, want) end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
return granted
";

/// `--rate-limit-redis-url` refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "--rate-limit-redis-url must be redis://[:PASSWORD@]HOST:PORT[/DB] (rediss:// and unix sockets are not supported)"
    )]
    Scheme,
    #[error("--rate-limit-redis-url is not a Redis URL ({0}); expected redis://[:PASSWORD@]HOST:PORT[/DB]")]
    Invalid(String),
}

/// A parsed `--rate-limit-redis-url`. Its `Debug` shows the address only
/// (the URL may carry a password).
#[derive(Clone)]
pub struct RedisUrl(redis::Client);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.addr())
    }
}

impl RedisUrl {
    /// `host:port`, without user or password.
    pub fn addr(&self) -> String {
        self.0.get_connection_info().addr().to_string()
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        if !s.starts_with("redis://") {
            return Err(UrlError::Scheme);
        }
        // The parser's message can quote the URL: only its kind is kept.
        redis::Client::open(s)
            .map(RedisUrl)
            .map_err(|e| UrlError::Invalid(format!("{:?}", e.kind())))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The adapter's metrics.
#[derive(Clone)]
pub struct Metrics {
    state: Family<StateLabels, Gauge>,
    shared: Gauge,
    fallback: Gauge,
    fallbacks: Counter,
    settle_errors: Counter,
    settles: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let state = Family::<StateLabels, Gauge>::default();
        // Handles on the family's two series (a gauge is shared when cloned).
        let shared = state.get_or_create(&StateLabels { state: "redis" }).clone();
        let fallback = state.get_or_create(&StateLabels { state: "fallback" }).clone();
        fallback.set(1);
        Metrics {
            state,
            shared,
            fallback,
            fallbacks: Counter::default(),
            settle_errors: Counter::default(),
            settles: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limit_shared",
            "1 on the state of cluster-wide rate limits: redis (shared by every replica) or fallback (each replica's own bucket)",
            self.state.clone(),
        );
        registry.register(
            "rate_limit_fallbacks",
            "Times the cluster-wide rate limits fell back to per-replica buckets (Redis unreachable or slow)",
            self.fallbacks.clone(),
        );
        registry.register(
            "rate_limit_settles",
            "Round trips to Redis that settled leases of rate-limited keys",
            self.settles.clone(),
        );
        registry.register(
            "rate_limit_settle_errors",
            "Round trips to Redis that failed or timed out",
            self.settle_errors.clone(),
        );
    }

    fn set_shared(&self, shared: bool) {
        self.shared.set(i64::from(shared));
        self.fallback.set(i64::from(!shared));
    }
}

fn redis_key(share: &Share) -> String {
    let mut key = String::with_capacity(12 + 32);
    key.push_str("latchkey:rl:");
    for b in share.id {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Why a round trip failed, for the log line (no URL in it).
fn describe(err: &redis::RedisError) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connection_refusal() {
        "connection refused".into()
    } else {
        crate::redact::redact(&err.to_string()).into_owned()
    }
}

async fn with_timeout<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {} ms", TIMEOUT.as_millis())),
    }
}

async fn connect(url: &RedisUrl) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(TIMEOUT);
    let manager = ConnectionManager::new_lazy_with_config(url.0.clone(), config).map_err(|e| describe(&e))?;
    let mut conn = manager.clone();
    with_timeout(redis::cmd("PING").query_async::<String>(&mut conn)).await?;
    Ok(manager)
}

/// Runs the settle loop for `settlements` against `url` until aborted.
pub async fn run(url: RedisUrl, settlements: Arc<Settlements>, metrics: Metrics) {
    let script = redis::Script::new(SCRIPT);
    let addr = url.addr();
    let mut conn: Option<ConnectionManager> = None;
    let mut loaded = false;
    let mut tracked: Vec<Arc<Share>> = Vec::new();
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    let mut last_try: Option<Instant> = None;
    let mut fell_back_before = false;
    metrics.set_shared(false);
    let mut last_round = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = settlements.wake.notified() => {}
        }
        let since = last_round.elapsed();
        if since < MIN_GAP {
            tokio::time::sleep(MIN_GAP - since).await;
        }
        last_round = Instant::now();
        tracked.extend(settlements.take_joined());

        if !settlements.up() {
            if last_try.is_some_and(|t| t.elapsed() < RECONNECT) {
                continue;
            }
            last_try = Some(Instant::now());
            match connect(&url).await {
                Ok(c) => {
                    conn = Some(c);
                    loaded = false;
                    failures = 0;
                    failing_since = None;
                    settlements.set_up(true);
                    metrics.set_shared(true);
                    if fell_back_before {
                        tracing::info!(redis = %addr, "Redis answers again: rate limits are shared by every replica");
                    } else {
                        tracing::info!(redis = %addr, "rate limits are shared by every replica through Redis");
                    }
                }
                Err(error) => {
                    if !fell_back_before {
                        fell_back_before = true;
                        metrics.fallbacks.inc();
                        tracing::warn!(redis = %addr, %error, "Redis does not answer: each replica applies rate limits on its own until it does");
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };

        let asks: Vec<(usize, Ask)> = tracked
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.plan().map(|a| (i, a)))
            .collect();
        // Nothing to give back and nothing wanted: no round trip.
        let (calls, quiet): (Vec<_>, Vec<_>) =
            asks.into_iter().partition(|(_, a)| a.give != 0 || a.want != 0);
        // Keys that leave the loop after this round (quiet here).
        let mut leaving: Vec<usize> = calls
            .iter()
            .chain(&quiet)
            .filter(|(_, a)| a.leaving)
            .map(|(i, _)| *i)
            .collect();
        for (i, ask) in quiet {
            tracked[i].settled(ask, 0);
        }
        let mut pipe = redis::pipe();
        if calls.is_empty() {
            remove(&mut tracked, &mut leaving);
            continue;
        }
        if !loaded {
            pipe.load_script(&script).ignore();
        }
        for (i, ask) in &calls {
            let share = &tracked[*i];
            let mut invocation = script.key(redis_key(share));
            invocation
                .arg(share.interval_us)
                .arg(share.burst)
                .arg(ask.give)
                .arg(ask.want);
            pipe.invoke_script(&invocation);
        }
        match with_timeout(pipe.query_async::<Vec<u32>>(c)).await {
            Ok(granted) if granted.len() == calls.len() => {
                loaded = true;
                failures = 0;
                failing_since = None;
                metrics.settles.inc();
                for ((i, ask), g) in calls.iter().zip(granted) {
                    // Never more than asked, whatever answers on that port.
                    tracked[*i].settled(*ask, g.min(ask.want));
                }
            }
            outcome => {
                let error = match outcome {
                    Err(e) => e,
                    Ok(g) => format!("{} answers for {} settles", g.len(), calls.len()),
                };
                // Redis restarted (its scripts are gone) or went away.
                loaded = false;
                failures += 1;
                metrics.settle_errors.inc();
                for (i, ask) in &calls {
                    if ask.leaving {
                        tracked[*i].drop_lease();
                    }
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if failures >= 2 && since.elapsed() >= FALLBACK_AFTER {
                    settlements.set_up(false);
                    for share in tracked.drain(..) {
                        share.drop_lease();
                    }
                    leaving.clear();
                    conn = None;
                    last_try = Some(Instant::now());
                    fell_back_before = true;
                    metrics.set_shared(false);
                    metrics.fallbacks.inc();
                    tracing::warn!(redis = %addr, %error, failures, "Redis does not answer: each replica applies rate limits on its own until it does");
                }
            }
        }
        remove(&mut tracked, &mut leaving);
    }
}

/// Takes the shares at `indices` out of `tracked`.
fn remove(tracked: &mut Vec<Arc<Share>>, indices: &mut Vec<usize>) {
    indices.sort_unstable();
    for i in indices.drain(..).rev() {
        tracked.swap_remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_plain_redis_and_its_password_is_never_shown() {
        let url: RedisUrl = "redis://:hunter2-secret@127.0.0.1:6390/0".parse().unwrap();
        assert_eq!(url.addr(), "127.0.0.1:6390");
        assert!(!format!("{url:?}").contains("hunter2"), "{url:?}");
        for refused in ["rediss://:pw@host:6380", "unix:///tmp/redis.sock", "http://host"] {
            let err = refused.parse::<RedisUrl>().unwrap_err().to_string();
            assert!(err.contains("redis://"), "{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        let err = "redis://:hunter2-secret@"
            .parse::<RedisUrl>()
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn redis_keys_carry_a_hash_only() {
        let limit = crate::crd::RateLimit {
            requests_per_second: 5,
            burst: None,
        };
        let settlements = Arc::new(Settlements::default());
        let a = Share::new(
            super::super::shared_limit::share_id("team-a", "web"),
            &limit,
            settlements.clone(),
        );
        let b = Share::new(
            super::super::shared_limit::share_id("team-b", "web"),
            &limit,
            settlements,
        );
        let (ka, kb) = (redis_key(&a), redis_key(&b));
        assert_ne!(ka, kb, "the same name in two namespaces: two buckets");
        assert!(ka.starts_with("latchkey:rl:") && ka.len() == 44, "{ka}");
        assert!(!ka.contains("team") && !ka.contains("web"));
        assert_eq!((a.interval_us, a.burst), (200_000, 5));
    }
}
