//! Harness for tests against the local control plane (`e2e/cluster`): the
//! one home of every helper two test files would otherwise copy.
//!
//! The first test that needs it runs `e2e/cluster up` (a no-op when it is
//! already up); if the cluster cannot be started the test fails with the
//! script's output. Each test works in a namespace of its own and runs its
//! own `latchkey controller --watch-namespace <ns>`, stopped by PID on drop.
//!
//! latchkey itself runs under exactly the chart's rights: once per test
//! binary the chart's ServiceAccount and RBAC are rendered with `helm
//! template` (release [`E2E_RELEASE`] in [`LATCHKEY_NS`]) and applied, and
//! every latchkey process gets a kubeconfig with a token of that
//! ServiceAccount ([`latchkey_kubeconfig`]). The tests' own kubectl and
//! clients stay admin. Each controller elects itself on a Lease of its own in
//! [`LATCHKEY_NS`] (where the chart's Role allows Leases), so parallel tests
//! never wait for each other; tests/cluster_ha.rs shares one between two.
//!
//! - [`cluster`]: the control plane, kubectl, namespaces, applying manifests.
//! - [`ports`]: ports for children's servers, from outside the kernel's
//!   ephemeral range (also used by the benches, hence std only).
//! - [`process`]: child processes with a log file, stopped by PID (also used
//!   by benches/auth, hence std only).
//! - [`latchkey_process`]: `latchkey controller`/`serve`/`run` children.
//! - [`api_keys`]: manifests, ApiKeys and TokenPolicies becoming Ready, the
//!   key a Secret holds, revocation, Events.
//! - [`crash`]: the rotation crash tests' poller and kill points.
//! - [`webhook`]: a `latchkey run` with its admission webhook registered.
//! - [`tls`]: TLS clients trusting one CA (the webhook, HTTPS listeners).
//! - [`http`]: the small HTTP calls several files make.
//! - [`proxy`]: the proxy tests' configurations, echo upstream, answers,
//!   and nginx started on a rendered configuration.
//! - [`stats`]: percentiles (shared with benches/auth).
//! - [`verifiers`]: PyJWT and node `jose` verifying a token.
//!
//! Every test binary declares `mod common;` and uses a part of it, so the
//! rest would warn as dead code in that binary: hence the `allow` below.
#![allow(dead_code)]

pub mod api_keys;
pub mod cluster;
pub mod crash;
pub mod http;
pub mod latchkey_process;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod stats;
pub mod tls;
pub mod verifiers;
pub mod webhook;

pub use ports::free_port;

// Files that name what they use (`use common::{…}`) leave some unused.
#[allow(unused_imports)]
pub use verifiers::third_party_verify;
#[allow(unused_imports)]
pub use {api_keys::*, cluster::*, crash::*, http::*, latchkey_process::*, stats::*};

use std::path::Path;
use std::time::{Duration, Instant};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A number unique in this test binary (names of namespaces, Leases, logs).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Polls `f` until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
