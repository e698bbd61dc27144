//! The controller: one [`Context`] shared as `Arc`, and the kube-runtime
//! wiring. The per-kind reconcilers are thin: fetch → compute (pure, in
//! [`plan`] and [`schedule`]) → apply (Server-Side Apply) → write status →
//! requeue at the next deadline.
//!
//! ApiKeys are reconciled when their spec (generation) or annotations
//! change, when a Secret they own changes, and at the deadline the last
//! reconcile asked for; not when only their status changes. A failed
//! reconcile is retried after a capped exponential backoff and recorded in
//! status (`RetryingAfterError`), which therefore cannot trigger an early retry.

mod api_key;
pub mod apply;
pub mod cache;
pub mod failure;
pub mod grace;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod policy_ref;
pub mod probes;
pub mod rotation;
pub mod token_policy;

pub use api_key::reconcile;
pub use failure::failure_summary;

use crate::clock::Clock;
use crate::crd::{ApiKey, TokenPolicy};
use crate::error::{Error, Result};
use crate::namespaces::WatchNamespaces;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::DynamicObject;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::meta::FIELD_MANAGER;

/// How often an ApiKey is reconciled when nothing happens (a safety net; the
/// watches on ApiKeys and their Secrets drive the real work).
pub const RESYNC: Duration = Duration::from_secs(3600);
/// First and maximum delay after a failed reconcile (doubling in between).
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long in-flight reconciles may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    /// Who the Events say reported them.
    pub reporter: Reporter,
    /// The queue of Events to record (its writer starts with the first).
    events: std::sync::OnceLock<tokio::sync::mpsc::Sender<apply::QueuedEvent>>,
    /// The metadata of the ApiKeys' Secrets and our own Secret writes in flight.
    pub secrets: cache::SecretCache,
    pub clock: Arc<dyn Clock>,
    /// The base of default TokenPolicy issuers (`<base>/issuers/<ns>/<name>`).
    pub issuer_base_url: String,
    /// Consecutive failures per object, for capped exponential backoff.
    failures: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
    /// The TokenPolicy controller's store, for the issuer-uniqueness check
    /// (set while the controllers run).
    token_policies: std::sync::RwLock<Option<reflector::Store<TokenPolicy>>>,
    /// Reconciles, deliveries, the Lease and readiness (`/metrics`, `/readyz`).
    pub metrics: Arc<metrics::ControllerMetrics>,
}

impl Context {
    pub fn new(client: Client, clock: Arc<dyn Clock>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "latchkey".into(),
            instance,
        };
        Self {
            reporter,
            events: std::sync::OnceLock::new(),
            secrets: cache::SecretCache::default(),
            client,
            issuer_base_url: DEFAULT_ISSUER_BASE_URL.into(),
            failures: Mutex::default(),
            token_policies: std::sync::RwLock::default(),
            metrics: Arc::new(metrics::ControllerMetrics::new(clock.clone())),
            clock,
        }
    }

    /// Sets the base of default TokenPolicy issuers.
    pub fn with_issuer_base_url(mut self, url: impl Into<String>) -> Self {
        self.issuer_base_url = url.into();
        self
    }

    /// The other TokenPolicies (`namespace/name`) whose issuer has the same
    /// path as `policy`'s, as the controller's store knows them.
    pub fn issuer_conflicts(&self, policy: &TokenPolicy) -> Vec<String> {
        let store = self.token_policies.read().expect("token policy store lock");
        let Some(store) = store.as_ref() else {
            return Vec::new();
        };
        let all = store.state();
        crate::token::issuer::issuer_conflicts(policy, all.iter().map(|p| &**p), &self.issuer_base_url)
    }

    fn record_success(&self, obj: &ObjectRef<DynamicObject>) {
        self.failures.lock().expect("failures lock").remove(obj);
    }

    fn next_backoff(&self, obj: ObjectRef<DynamicObject>) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(obj).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// The delay [`next_backoff`](Self::next_backoff) gave last for `obj`.
    fn current_backoff(&self, obj: &ObjectRef<DynamicObject>) -> Duration {
        let failures = self.failures.lock().expect("failures lock");
        backoff(failures.get(obj).copied().unwrap_or(1))
    }
}

/// The issuer base when none is configured (the server's default address).
pub const DEFAULT_ISSUER_BASE_URL: &str = "http://127.0.0.1:8080";

/// Delay after the `n`th consecutive failure: 1 s, 2 s, 4 s … capped.
pub fn backoff(n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Options of `latchkey controller`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespaces watched: every one, one, or a list (see [`crate::namespaces`]).
    pub namespaces: WatchNamespaces,
    /// How many ApiKeys are reconciled at once.
    pub concurrency: u16,
}

/// Sets the flag (and `latchkey_leader`) while alive, clears them when
/// dropped (the leader's work is dropped mid-flight when the Lease is lost).
struct Leading(
    Arc<tokio::sync::watch::Sender<bool>>,
    Arc<metrics::ControllerMetrics>,
);

impl Leading {
    fn new(flag: Arc<tokio::sync::watch::Sender<bool>>, metrics: Arc<metrics::ControllerMetrics>) -> Self {
        flag.send_replace(true);
        metrics.set_leading(true);
        Self(flag, metrics)
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.send_replace(false);
        self.1.set_leading(false);
    }
}

/// Runs the ApiKey and TokenPolicy controllers until SIGTERM or SIGINT:
/// with a Lease, only while this process holds it (see [`leader`]); without
/// one, all the time. `leading` is true exactly while this process runs the
/// controllers (other leader-only work, such as writing the webhook's
/// caBundle, reads it, and acts at once when it turns true).
pub async fn run(
    ctx: Arc<Context>,
    options: Options,
    lease: Option<leader::LeaseConfig>,
    leading: Arc<tokio::sync::watch::Sender<bool>>,
) -> Result<()> {
    let Some(lease) = lease else {
        tracing::warn!("leader election is off: run only one latchkey controller");
        let _leading = Leading::new(leading, ctx.metrics.clone());
        return run_controllers(ctx, options, None).await;
    };
    ctx.metrics.set_elected();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let client = ctx.client.clone();
    leader::run(client, lease, shutdown, |trigger| {
        let work = run_controllers(ctx.clone(), options.clone(), Some(trigger));
        let leading = leading.clone();
        let metrics = ctx.metrics.clone();
        async move {
            let _leading = Leading::new(leading, metrics);
            work.await
        }
    })
    .await
}

/// Checks that a reconciled kind `K` can be listed in every watched
/// namespace (or in all): a missing CRD or a missing right is a clear error
/// at startup (`action` names the right; the API server's message names the
/// namespace), not a watch that retries forever.
async fn check_listable<K>(client: &Client, namespaces: &WatchNamespaces, action: &'static str) -> Result<()>
where
    K: failure::Reconciled,
{
    for api in namespaces.apis::<K>(client) {
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(|e| Error::at_startup(K::KIND, action, e))?;
    }
    Ok(())
}

/// The ApiKey and TokenPolicy controllers, until `shutdown` completes (then
/// in-flight reconciles finish), or, without one, until SIGTERM or SIGINT.
async fn run_controllers(ctx: Arc<Context>, options: Options, shutdown: Option<Shutdown>) -> Result<()> {
    let stop = |c| with_shutdown(c, &shutdown);
    let ctx_metrics = ctx.metrics.clone();
    let stop_policies = |c| with_shutdown(c, &shutdown);
    let scope = &options.namespaces;
    let client = &ctx.client;
    check_listable::<ApiKey>(client, scope, "list ApiKeys").await?;

    // Only Secrets latchkey wrote: a cluster's other Secrets are none of our business.
    let managed = format!(
        "{}={}",
        crate::meta::MANAGED_BY_LABEL,
        crate::meta::MANAGED_BY_VALUE
    );
    tracing::info!(
        namespaces = %scope,
        "ApiKey controller starting"
    );
    // Reconcile on changes of spec and annotations (see `spec_changes`).
    let (reader, api_key_changes) =
        spec_changes(scope.watch(client, watcher::Config::default().any_semantic()));
    let api_keys_listed = reader.clone();
    ctx.metrics.watch_api_keys(reader.clone());
    // A TokenPolicy that appears (or goes) changes the readiness of the
    // ApiKeys naming it (see `policy_ref`).
    let referring = reader.clone();
    let policies_for_keys = scope.watch::<TokenPolicy>(client, watcher::Config::default().any_semantic());
    // Their Secrets: metadata only, without the events of our own writes
    // (see `cache`).
    let (secret_reader, secret_writer) = reflector::store();
    ctx.secrets.watch(secret_reader);
    let own = ctx.clone();
    // Of their managedFields the cache keeps what the ownership checks read.
    let secret_changes = reflector(
        secret_writer,
        scope
            .watch_metadata::<Secret>(client, watcher::Config::default().labels(&managed).any_semantic())
            .modify(|s| plan::keep_read_managed_fields(&mut s.metadata)),
    )
    .filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                (!own.secrets.is_own_write(&s.metadata)).then_some(Ok(s))
            }
            Ok(watcher::Event::Delete(s)) => Some(Ok(s)),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(err) => Some(Err(err)),
        };
        futures::future::ready(changed)
    });
    let api_key_controller = stop(
        Controller::for_stream(api_key_changes, reader)
            .owns_stream(secret_changes)
            .watches_stream(policies_for_keys.touched_objects(), move |policy: TokenPolicy| {
                let (ns, name) = (policy.metadata.namespace, policy.metadata.name);
                referring
                    .state()
                    .into_iter()
                    .filter(|ak| {
                        ak.metadata.namespace == ns
                            && ak.spec.token_policy_ref.as_ref().map(|r| &r.name) == name.as_ref()
                    })
                    .map(|ak| ObjectRef::from_obj(&*ak))
                    .collect::<Vec<_>>()
            })
            .with_config(controller::Config::default().concurrency(options.concurrency)),
    )
    .run(
        |api_key, ctx| reconcile_and_track(api_key, ctx, api_key::reconcile),
        error_policy,
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = %err, "reconcile round ended with an error");
        }
    });

    // TokenPolicies: their signing-key Secrets and JWKS ConfigMaps.
    check_listable::<TokenPolicy>(client, scope, "list TokenPolicies").await?;
    let owned = watcher::Config::default()
        .labels(crate::meta::TOKEN_POLICY_LABEL)
        .any_semantic();
    let policy_peers = scope.watch::<TokenPolicy>(client, watcher::Config::default().any_semantic());
    let (policy_reader, policy_changes) =
        spec_changes(scope.watch(client, watcher::Config::default().any_semantic()));
    let policies_listed = policy_reader.clone();
    *ctx.token_policies.write().expect("token policy store lock") = Some(policy_reader.clone());
    // Any change of a policy (a new one, a deleted one) re-checks the others
    // that share its issuer path: both sides of a conflict show it.
    let path_mates = policy_reader.clone();
    let base = ctx.issuer_base_url.clone();
    let mates_of = move |changed: TokenPolicy| {
        let path = crate::crd::issuer_path(&changed.issuer(&base));
        path_mates
            .state()
            .into_iter()
            .filter(|p| p.metadata.uid != changed.metadata.uid)
            .filter(|p| crate::crd::issuer_path(&p.issuer(&base)) == path)
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    };
    let policy_controller = stop_policies(
        Controller::for_stream(policy_changes, policy_reader)
            .owns_stream(
                scope
                    .watch_metadata::<Secret>(client, owned.clone())
                    .touched_objects(),
            )
            .owns_stream(scope.watch_metadata::<ConfigMap>(client, owned).touched_objects())
            .watches_stream(policy_peers.touched_objects(), mates_of)
            .with_config(controller::Config::default().concurrency(4)),
    )
    .run(
        |policy, ctx| reconcile_and_track(policy, ctx, token_policy::reconcile),
        error_policy,
        ctx,
    )
    .for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = %err, "TokenPolicy reconcile round ended with an error");
        }
    });
    // Ready (`/readyz`) once both stores hold their first list.
    let metrics = ctx_metrics;
    let started = async move {
        if api_keys_listed.wait_until_ready().await.is_ok()
            && policies_listed.wait_until_ready().await.is_ok()
        {
            metrics.set_started();
            tracing::info!("both controllers have their first list");
        }
    };
    let controllers = async {
        futures::join!(api_key_controller, policy_controller, started);
    };
    match shutdown {
        // A shutdown right after start can leave a controller waiting for a
        // first list that no longer comes: in-flight reconciles get a
        // bounded time to finish, then they are dropped.
        Some(trigger) => {
            use futures::FutureExt;
            let overdue = trigger.then(|()| tokio::time::sleep(SHUTDOWN_GRACE));
            tokio::select! {
                () = controllers => {}
                () = overdue => tracing::warn!(
                    grace_s = SHUTDOWN_GRACE.as_secs(),
                    "the reconcilers did not stop in time after shutdown; dropping them"
                ),
            }
        }
        None => controllers.await,
    }
    tracing::info!("ApiKey controller stopped");
    Ok(())
}

/// A trigger that makes the controllers stop gracefully (in-flight reconciles finish).
pub type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

fn with_shutdown<K>(controller: Controller<K>, shutdown: &Option<Shutdown>) -> Controller<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + std::fmt::Debug + Unpin,
{
    match shutdown {
        Some(trigger) => controller.graceful_shutdown_on(trigger.clone()),
        None => controller.shutdown_on_signal(),
    }
}

/// A reflector store of the objects `events` bring (one watcher's events,
/// see [`WatchNamespaces::watch`]) and the stream of those whose spec
/// (generation) or annotations (rotate-now) changed: not status writes, so
/// our own status writes need no second look, the auth server's lastUsedAt
/// updates neither, and a failure recorded in status does not trigger a
/// retry before its backoff. Both kinds are driven this way.
fn spec_changes<K>(
    events: impl futures::Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = std::result::Result<K, watcher::Error>> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields are not kept: nothing reads them, and they are most of
    // a small object's size.
    let events = events.modify(|o| {
        o.meta_mut().managed_fields = None;
    });
    let changes = reflector(writer, events).touched_objects().predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    (reader, changes)
}

/// Runs `reconcile` on `object`; a failure gets the next backoff and is
/// recorded in status ([`failure::record_failure`]), a success clears it.
async fn reconcile_and_track<K, F>(object: Arc<K>, ctx: Arc<Context>, reconcile: F) -> Result<Action>
where
    K: failure::Reconciled,
    F: AsyncFnOnce(Arc<K>, Arc<Context>) -> Result<Action>,
{
    let obj = ObjectRef::from_obj(&*object).erase();
    let running = ctx.metrics.start(K::KIND);
    let started = std::time::Instant::now();
    let result = reconcile(object.clone(), ctx.clone()).await;
    ctx.metrics
        .observe(K::KIND, result.as_ref().map(|_| ()), started.elapsed());
    drop(running);
    match result {
        Ok(action) => {
            ctx.record_success(&obj);
            Ok(action)
        }
        Err(err) => {
            let delay = ctx.next_backoff(obj);
            failure::record_failure(&*object, &err, delay, &ctx).await;
            Err(err)
        }
    }
}

/// Requeue after the backoff `reconcile_*_and_track` recorded, for either kind.
fn error_policy<K>(object: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    let delay = ctx.current_backoff(&ObjectRef::from_obj(&*object).erase());
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = object.meta().namespace.as_deref(),
        name = object.meta().name.as_deref(),
        error = %err,
        error_kind = err.metric_label(),
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_summary_names_what_failed_but_not_the_servers_message() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "Secret \"svc\" is invalid: data[api-key]: lk_secret_material".into(),
            ..Default::default()
        };
        let err = Error::Kube {
            action: "applying the Secret",
            source: kube::Error::Api(Box::new(status)),
        };
        let summary = failure_summary(&err);
        assert_eq!(
            summary,
            "Kubernetes API call failed while applying the Secret: 422 Invalid"
        );
        assert!(!summary.contains("lk_"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
