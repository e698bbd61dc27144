//! Benchmarks of the auth server, run by `e2e/bench-auth` and `e2e/bench-index`
//! (which build the release binary and bring the local control plane up):
//!
//! - `throughput`: wrk on loopback against one `latchkey serve` and one nginx,
//!   in the same run and with the same connections: latchkey's plain `/livez`
//!   (the ceiling) vs `/auth/nginx` with a valid key vs an invalid key, and
//!   nginx serving a static file without auth vs with `auth_request` to
//!   latchkey. Each is run `BENCH_REPEAT` times (default 3), interleaved, and
//!   the median is printed with the ratios; then the API-key route at half of
//!   its measured maximum rate, open loop (evenly spaced requests), for p99.
//! - `grpc`: one `latchkey serve --grpc-addr`: gRPC `Check` per second
//!   (e2e/extauthz-client, Go, on Envoy's generated types, `-bench` with
//!   many concurrent calls over a few HTTP/2 connections) with a valid key
//!   and with a repeated token, against wrk on HTTP `/auth/envoy` with the
//!   same credential on the same server, interleaved rounds of
//!   `BENCH_REPEAT`; prints the medians and the gRPC/HTTP ratios (goal
//!   ≥ 0.8).
//! - `revocation N`: N times, create an ApiKey, wait until nginx lets it
//!   through, patch `revoked: true` and time from the patch's return to the
//!   first 401 through nginx; prints p50, p99 and max.
//! - `token-revocation N`: a controller and two `latchkey serve` replicas;
//!   N times, mint a delegated token at one, see both allow it (cached),
//!   `POST /revoke` it at one (alternating) and time from its return to the
//!   first 401 on both; prints p50, p99 and max.
//! - `tokens`: JWT signatures and verifications per second on one core for
//!   each algorithm (in process); then, over HTTP against one `latchkey
//!   serve`: `POST /token` mints per second, and `/auth/nginx` with a JWT
//!   first seen (every request a different token, pre-signed with the
//!   policy's key from its Secret) vs repeated (the same token: cached), next
//!   to the `/livez` ceiling and the API-key route, medians of `BENCH_REPEAT`;
//!   delegated mints; a user's delegated role token, repeated, on
//!   `/auth/nginx?…&resource=path` (nginx's `X-Original-URL` covered by its
//!   permission) with 100 other sessions revoked in the policy, against the
//!   ceiling (goal ≥ 0.85); then `token-revocation 20` (below).
//! - `tls`: wrk with keepalive against `/auth/nginx` over HTTPS (`latchkey
//!   serve --http-tls self-signed`) vs plain HTTP on a second `latchkey
//!   serve`, in the same run, as a ratio (goal: TLS costs at most 15 %);
//!   and nginx with `auth_request` to latchkey over HTTPS (upstream
//!   keepalive, `proxy_ssl_verify on`) vs nginx alone and vs the same over
//!   plain HTTP; and without upstream keepalive, a full handshake per
//!   subrequest vs a resumed session per subrequest. Each target also
//!   prints the CPU per request of the servers (latchkey, nginx's
//!   processes) and of wrk, from /proc: on two shared cores wrk's own TLS
//!   lowers the HTTPS rate, the servers' CPU per request is what latchkey's
//!   TLS costs. Medians of `BENCH_REPEAT` interleaved rounds.
//! - `cache-flood N`: one `latchkey serve` (default limits) and ten ApiKeys
//!   of one TokenPolicy; N distinct valid big tokens (~6 KiB, sixteen
//!   250-character custom claims each, signed with the policy's key, spread
//!   over the ten `client_id`s) sent to `/auth/nginx` as fast as two
//!   threads can sign them, while a third thread times a cached token on
//!   its own keep-alive connection. Prints the server's RSS before and
//!   after, the cache's bytes and entries (`/metrics`), and the cached
//!   token's median and p99 latency before vs during the flood (the ratio).
//! - `redis-limits`: one `latchkey serve --rate-limit-redis-url` (a real
//!   redis-server on loopback): wrk on the API-key route with a key whose
//!   limit (100,000/s) is shared through Redis vs a key without a limit, on
//!   the same server, interleaved rounds of `BENCH_REPEAT`; the same limited
//!   key on a server without Redis beside them; ratios (goal ≥ 0.8), the
//!   servers' CPU per request, and the load average (shared cores).
//! - `route-floor`: no cluster; one server in process, built as `latchkey
//!   serve` builds its own, over one synthetic key: wrk on `/livez`, on
//!   `/livez` with the route's query and key header, on `/answer` (the
//!   route's allow for that key, decided once and cloned per request:
//!   everything but the decision) and on the API-key route,
//!   interleaved rounds of `BENCH_REPEAT`; `/answer` / `/livez` is the most
//!   any decision lets the route reach on this HTTP stack.
//! - `index-synthetic N`: the auth index's memory for N synthetic ApiKeys
//!   (RSS before and after), per key.
//! - `index-real N`: N real ApiKeys on the control plane, then the RSS of a
//!   `latchkey serve` that indexed them minus one that watches an empty
//!   namespace, per key.
//!
//! One file per benchmark; harness.rs holds what they share. The
//! percentile and the child-process helpers are the tests' own files,
//! included with `#[path]` rather than copied: one definition each (the
//! percentile here and in tests/cluster_ha.rs had drifted to two formulas),
//! and both are std-only so that the bench needs none of the tests' cluster
//! harness.

mod cache_flood;
mod grpc;
mod harness;
mod index;
#[path = "../../tests/common/ports.rs"]
#[allow(dead_code)]
mod ports;
#[path = "../../tests/common/process.rs"]
#[allow(dead_code)]
mod process;
mod redis_limits;
mod revocation;
mod route_floor;
#[path = "../../tests/common/stats.rs"]
#[allow(dead_code)]
mod stats;
mod throughput;
mod tls;
mod token_revocation;
mod tokens;

#[tokio::main]
async fn main() {
    // reqwest comes without a rustls provider (see Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let n = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("throughput") => throughput::throughput().await,
        Some("revocation") => revocation::revocation(n(20)).await,
        Some("tokens") => {
            tokens::tokens().await;
            token_revocation::token_revocation(n(20)).await
        }
        Some("token-revocation") => token_revocation::token_revocation(n(20)).await,
        Some("tls") => tls::tls().await,
        Some("grpc") => grpc::grpc().await,
        Some("cache-flood") => cache_flood::cache_flood(n(200_000)).await,
        Some("route-floor") => route_floor::route_floor(harness::env_or("BENCH_SECONDS", 5)),
        Some("index-synthetic") => index::index_synthetic(n(100_000)),
        Some("index-real") => index::index_real(n(10_000)).await,
        Some("redis-limits") => redis_limits::redis_limits().await,
        other => panic!(
            "unknown benchmark {other:?}: throughput | revocation N | tokens [N] | token-revocation N | tls | grpc | cache-flood N | index-synthetic N | index-real N | redis-limits"
        ),
    }
}
