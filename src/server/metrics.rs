//! Prometheus metrics of the auth server: decisions by route and result,
//! and a latency histogram by route. No per-key labels (cardinality stays
//! fixed however many keys there are). Every series is created at start-up
//! and its handle kept, so the request path does no label lookup.

use super::Proxy;
use super::decision::Decision;
use super::throttle::By;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every `result` label value, in [`Decision::label`]'s words.
const RESULTS: [&str; 24] = [
    "allow",
    "no_credential",
    "invalid_request",
    "malformed",
    "unknown",
    "expired",
    "retired_key",
    "audience",
    "namespace",
    "issuer",
    "insufficient_scope",
    "rate_limited",
    "not_ready",
    "token_too_large",
    "token_malformed",
    "token_type",
    "token_unknown_key",
    "token_signature",
    "token_issuer",
    "token_audience",
    "token_expired",
    "token_not_yet_valid",
    "token_client_revoked",
    "token_revoked",
];

/// Every `result` of the token endpoint: issued, or an RFC 6749 error code.
const TOKEN_RESULTS: [&str; 8] = [
    "issued",
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "temporarily_unavailable",
    "rate_limited",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    route: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabels {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    decisions: Vec<[Counter; RESULTS.len()]>,
    latency: Vec<Latency>,
    keys: Gauge,
    api_keys: Gauge,
    tokens: [Counter; TOKEN_RESULTS.len()],
    /// By [`By::index`]: source, key id.
    throttled: [Counter; 2],
    token_cache_entries: Gauge,
    token_cache_bytes: Gauge,
    http_connections: Gauge,
    grpc_connections: Gauge,
    /// Keys no longer valid presented (no label: which ApiKey is in its
    /// status, never in a label).
    retired_key_presented: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// The server's families, and those `more` registers (under `latchkey
    /// run`, the controller's: one `/metrics` for the process).
    pub fn with(more: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        more(&mut registry);
        let decisions_family = MetricFamily::<DecisionLabels, Counter>::default();
        let latency_family = MetricFamily::<RouteLabels, Latency>::default();
        registry.register(
            "auth_decisions",
            "External-auth decisions by route and result",
            decisions_family.clone(),
        );
        registry.register(
            "auth_decision_seconds",
            "Time to decide an external-auth request, by route",
            latency_family.clone(),
        );
        let keys = Gauge::default();
        let api_keys = Gauge::default();
        registry.register("index_keys", "Keys in the auth index", keys.clone());
        registry.register("index_api_keys", "ApiKeys in the auth index", api_keys.clone());
        let decisions = Proxy::ALL
            .iter()
            .map(|f| {
                RESULTS.map(|result| {
                    decisions_family
                        .get_or_create(&DecisionLabels {
                            route: f.label(),
                            result,
                        })
                        .clone()
                })
            })
            .collect();
        let latency = Proxy::ALL
            .iter()
            .map(|f| {
                latency_family
                    .get_or_create(&RouteLabels { route: f.label() })
                    .clone()
            })
            .collect();
        let tokens_family = MetricFamily::<ResultLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Token endpoint requests by result",
            tokens_family.clone(),
        );
        let tokens =
            TOKEN_RESULTS.map(|result| tokens_family.get_or_create(&ResultLabels { result }).clone());
        let throttled_family = MetricFamily::<ByLabels, Counter>::default();
        registry.register(
            "auth_throttled",
            "Requests refused with 429 after too many failed client authentications, by what was throttled",
            throttled_family.clone(),
        );
        let throttled = [By::Source, By::KeyId].map(|by| {
            throttled_family
                .get_or_create(&ByLabels { by: by.label() })
                .clone()
        });
        let token_cache_entries = Gauge::default();
        let token_cache_bytes = Gauge::default();
        registry.register(
            "token_cache_entries",
            "Verified tokens in the cache",
            token_cache_entries.clone(),
        );
        registry.register(
            "token_cache_bytes",
            "Bytes the verified-token cache accounts for",
            token_cache_bytes.clone(),
        );
        let retired_key_presented = Counter::default();
        registry.register(
            "retired_key_presented",
            "Requests that presented a key no longer valid (grace period over, ApiKey revoked or expired)",
            retired_key_presented.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Connections the HTTP server holds open",
            http_connections.clone(),
        );
        let grpc_connections = Gauge::default();
        registry.register(
            "grpc_connections",
            "Connections the gRPC ext_authz listener holds open",
            grpc_connections.clone(),
        );
        Self {
            retired_key_presented,
            http_connections,
            grpc_connections,
            registry,
            decisions,
            latency,
            keys,
            api_keys,
            tokens,
            throttled,
            token_cache_entries,
            token_cache_bytes,
        }
    }

    pub fn observe(&self, family: Proxy, decision: &Decision, elapsed: Duration) {
        let route = family as usize;
        if let Some(i) = RESULTS.iter().position(|r| *r == decision.label()) {
            self.decisions[route][i].inc();
        }
        self.latency[route].observe(elapsed);
        if decision.retired_key_presented() {
            self.retired_key_presented.inc();
        }
    }

    /// A key no longer valid presented where no [`Decision`] is observed
    /// (`/token`).
    pub fn observe_retired_key(&self) {
        self.retired_key_presented.inc();
    }

    /// One token request: `None` when a token was issued, else the error code.
    pub fn observe_token(&self, error: Option<&str>) {
        let result = error.unwrap_or("issued");
        if let Some(i) = TOKEN_RESULTS.iter().position(|r| *r == result) {
            self.tokens[i].inc();
        }
    }

    /// The gauge of open HTTP connections (the listener keeps it).
    pub fn http_connections(&self) -> Gauge {
        self.http_connections.clone()
    }

    pub fn grpc_connections(&self) -> Gauge {
        self.grpc_connections.clone()
    }

    /// One request refused by the throttle.
    pub fn observe_throttled(&self, by: By) {
        self.throttled[by.index()].inc();
    }

    /// The verified-token cache's size, for the next [`encode`](Self::encode).
    pub fn set_token_cache(&self, entries: usize, bytes: usize) {
        self.token_cache_entries.set(entries as i64);
        self.token_cache_bytes.set(bytes as i64);
    }

    /// The OpenMetrics text, with the index sizes as of now.
    pub fn encode(&self, keys: usize, api_keys: usize) -> Result<String, std::fmt::Error> {
        self.keys.set(keys as i64);
        self.api_keys.set(api_keys as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Upper bounds of the latency histogram's buckets: 10 µs … ~80 ms
/// (doubling), in nanoseconds; then `+Inf`.
const LATENCY_BOUNDS_NS: [u64; 14] = {
    let mut b = [10_000u64; 14];
    let mut i = 1;
    while i < b.len() {
        b[i] = b[i - 1] * 2;
        i += 1;
    }
    b
};

/// Shards of a [`Latency`] histogram: the request path's threads each
/// write their own, so that no two cores fight over one lock or cache line
/// on every decision; `/metrics` adds them up.
const LATENCY_SHARDS: usize = 8;

/// One shard, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LatencyShard {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// The decision-latency histogram (`prometheus_client`'s own takes a lock
/// on every observation, shared by all cores): atomic counts, sharded by
/// thread.
#[derive(Debug, Clone, Default)]
pub struct Latency(Arc<[LatencyShard; LATENCY_SHARDS]>);

thread_local! {
    /// This thread's shard of every [`Latency`], handed out in turn.
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % LATENCY_SHARDS
    };
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&upper| upper < ns);
        let shard = &self.0[SHARD.with(|s| *s)];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Per-bucket `(upper bound in seconds, count)` (not cumulative: the
    /// encoder adds them up), the total count and the sum in seconds.
    fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
        let mut sum_ns = 0u64;
        for shard in self.0.iter() {
            for (c, b) in counts.iter_mut().zip(&shard.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        // The bounds as prometheus_client's `exponential_buckets(1e-5, 2, 14)`
        // spelled them before, so that `le` labels stay the same.
        let bounds = std::iter::successors(Some(0.000_01f64), |b| Some(b * 2.0))
            .take(LATENCY_BOUNDS_NS.len())
            .chain([f64::INFINITY]);
        // prometheus_client's encoder takes per-bucket counts and makes
        // them cumulative itself.
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let count = counts.iter().sum();
        (buckets, count, sum_ns as f64 / 1e9)
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, count, sum) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_route_and_result() {
        let m = Metrics::new();
        m.observe(Proxy::Nginx, &Decision::NoCredential, Duration::from_micros(20));
        m.observe(Proxy::Nginx, &Decision::NoCredential, Duration::from_micros(20));
        m.observe(Proxy::Envoy, &Decision::NotReady, Duration::from_micros(20));
        m.observe(Proxy::Grpc, &Decision::NoCredential, Duration::from_micros(20));
        let text = m.encode(3, 2).unwrap();
        assert!(
            text.contains(r#"latchkey_auth_decisions_total{route="nginx",result="no_credential"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"latchkey_auth_decisions_total{route="envoy",result="not_ready"} 1"#));
        assert!(text.contains(r#"latchkey_auth_decisions_total{route="grpc",result="no_credential"} 1"#));
        assert!(text.contains(r#"latchkey_auth_decision_seconds_count{route="grpc"} 1"#));
        assert!(text.contains("latchkey_index_keys 3"));
        assert!(text.contains(r#"latchkey_auth_decision_seconds_count{route="nginx"} 2"#));
        m.observe_throttled(By::KeyId);
        let text = m.encode(3, 2).unwrap();
        assert!(
            text.contains(r#"latchkey_auth_throttled_total{by="key_id"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"latchkey_auth_throttled_total{by="source"} 0"#));
    }

    #[test]
    fn every_decision_and_token_result_has_a_counter() {
        use crate::server::decision::Invalid;
        for d in [
            Decision::InvalidRequest("x"),
            Decision::Invalid(Invalid::Namespace),
            Decision::Invalid(Invalid::Issuer),
            Decision::RateLimited {
                retry_after: 1,
                limit: 1,
            },
        ] {
            assert!(RESULTS.contains(&d.label()), "{}", d.label());
        }
        let limited = crate::token::claims::TokenError::RateLimited {
            retry_after: 1,
            limit: 1,
        };
        assert!(TOKEN_RESULTS.contains(&limited.code()));
    }
}
