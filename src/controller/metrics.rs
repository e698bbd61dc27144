//! What the controller tells Prometheus and the probes: reconciles by kind
//! and result, their duration, failures by error kind, keys delivered by
//! reason, signing keys generated, whether this process holds the Lease,
//! whether the controllers are up (for `/readyz`), and the keys near the
//! end of their grace period ([`super::grace`], computed at scrape time).
//!
//! Labels are a fixed, small set (kinds, results, [`Error::metric_label`],
//! delivery reasons): never a namespace, name or key id.
//!
//! kube-runtime's `Controller` keeps its work queue (the scheduler) private
//! and exposes no length, so there is no queue-depth metric; reconciles in
//! flight (`..._reconciles_in_flight`) is what we can count ourselves.

use super::grace::GraceGauges;
use crate::clock::{Clock, SystemClock};
use crate::crd::ApiKey;
use crate::error::Error;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why a key reached an ApiKey's Secret (`reason` of
/// `latchkey_controller_keys_delivered_total`): every one but `first` is a
/// rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The ApiKey's first key.
    First,
    /// `spec.rotation.interval` came round.
    Scheduled,
    /// The `latchkey.dev/rotate` annotation asked for it.
    Requested,
    /// The Secret was deleted or its key changed by someone else.
    Repair,
}

impl Delivered {
    pub const ALL: [Delivered; 4] = [
        Delivered::First,
        Delivered::Scheduled,
        Delivered::Requested,
        Delivered::Repair,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Delivered::First => "first",
            Delivered::Scheduled => "scheduled",
            Delivered::Requested => "requested",
            Delivered::Repair => "repair",
        }
    }
}

/// The kinds the controller reconciles (`kind` label).
pub const KINDS: [&str; 2] = ["ApiKey", "TokenPolicy"];

/// The controller's metrics and readiness; one per process, shared by the
/// reconcilers (through [`Context`](super::Context)) and the probes.
#[derive(Debug)]
pub struct ControllerMetrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    in_flight: Family<KindLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    delivered: Family<ReasonLabels, Counter>,
    signing_keys: Counter,
    events_dropped: Counter,
    leader: Gauge,
    /// Keys in grace, from the watch cache while leading.
    grace: Arc<GraceGauges>,
    /// Whether a Lease decides who reconciles (then a standby is ready).
    elected: AtomicBool,
    /// Whether this process runs the controllers now.
    leading: AtomicBool,
    /// Whether both controllers have their first list (while leading).
    started: AtomicBool,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl ControllerMetrics {
    /// The metrics of a controller whose time is `clock` (what the grace
    /// gauges compare the grace ends with).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 1 ms … ~65 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        let m = Self {
            reconciles: Family::default(),
            duration,
            in_flight: Family::default(),
            errors: Family::default(),
            delivered: Family::default(),
            signing_keys: Counter::default(),
            events_dropped: Counter::default(),
            leader: Gauge::default(),
            grace: Arc::new(GraceGauges::new(clock)),
            elected: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            started: AtomicBool::new(false),
        };
        // Every series that has a fixed set of labels exists from the start
        // (a dashboard's rate() needs the zero before the first increment).
        for kind in KINDS {
            for result in ["success", "error"] {
                let _ = m.reconciles.get_or_create(&ResultLabels { kind, result });
            }
            let _ = m.duration.get_or_create(&KindLabels { kind });
            let _ = m.in_flight.get_or_create(&KindLabels { kind });
            for error in Error::METRIC_LABELS {
                let _ = m.errors.get_or_create(&ErrorLabels { kind, error });
            }
        }
        for reason in Delivered::ALL {
            let _ = m.delivered.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
        m
    }
}

impl ControllerMetrics {
    /// Adds every family to `registry` (prefixed `latchkey_` by the
    /// registry): the controller's own, or the auth server's under `run`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_reconciles",
            "Reconciles by kind and result (success, error)",
            self.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            self.duration.clone(),
        );
        registry.register(
            "controller_reconciles_in_flight",
            "Reconciles running now, by kind",
            self.in_flight.clone(),
        );
        registry.register(
            "controller_reconcile_errors",
            "Failed reconciles by kind and error kind",
            self.errors.clone(),
        );
        registry.register(
            "controller_keys_delivered",
            "API keys delivered to their Secret, by reason (first, scheduled, requested, repair)",
            self.delivered.clone(),
        );
        registry.register(
            "controller_signing_keys_generated",
            "TokenPolicy signing keys generated (the first of each policy and every rotation)",
            self.signing_keys.clone(),
        );
        registry.register(
            "controller_events_dropped",
            "Events not recorded because the queue in front of the API server was full",
            self.events_dropped.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader-election Lease (or runs without one), else 0",
            self.leader.clone(),
        );
        registry.register_collector(Box::new(self.grace.clone()));
    }

    /// The controllers run with this watch cache of ApiKeys (the grace
    /// gauges read it on each scrape).
    pub fn watch_api_keys(&self, store: Store<ApiKey>) {
        self.grace.watch(Some(store));
    }

    /// A registry holding only these families (`latchkey controller`).
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("latchkey");
        self.register(&mut registry);
        registry
    }

    /// Marks one reconcile of `kind` as running until the guard drops.
    pub fn start(&self, kind: &'static str) -> InFlight {
        let gauge = self.in_flight.get_or_create(&KindLabels { kind }).clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// One finished reconcile of `kind`: its outcome and how long it took.
    pub fn observe(&self, kind: &'static str, outcome: Result<(), &Error>, took: Duration) {
        let result = if outcome.is_ok() { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels { kind, result })
            .inc();
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
        if let Err(err) = outcome {
            self.errors
                .get_or_create(&ErrorLabels {
                    kind,
                    error: err.metric_label(),
                })
                .inc();
        }
    }

    /// A key reached an ApiKey's Secret.
    pub fn delivered(&self, why: Delivered) {
        self.delivered
            .get_or_create(&ReasonLabels { reason: why.label() })
            .inc();
    }

    /// A TokenPolicy signing key was generated (and its status written).
    pub fn signing_key_generated(&self) {
        self.signing_keys.inc();
    }

    /// An Event was dropped: the queue of Events to record was full.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    /// Leader election is on: a standby counts as ready.
    pub fn set_elected(&self) {
        self.elected.store(true, Ordering::Release);
    }

    /// This process starts (true) or stops (false) running the controllers.
    pub fn set_leading(&self, leading: bool) {
        self.started.store(false, Ordering::Release);
        self.leading.store(leading, Ordering::Release);
        self.leader.set(i64::from(leading));
        if !leading {
            // A standby's cache would go stale: only the leader reports keys.
            self.grace.watch(None);
        }
    }

    /// Both controllers have their first list.
    pub fn set_started(&self) {
        if self.leading.load(Ordering::Acquire) {
            self.started.store(true, Ordering::Release);
        }
    }

    /// `/readyz`: the controllers run with their first list done, or this
    /// process stands by for the Lease (a healthy standby).
    pub fn is_ready(&self) -> bool {
        let leading = self.leading.load(Ordering::Acquire);
        self.started.load(Ordering::Acquire) || (self.elected.load(Ordering::Acquire) && !leading)
    }
}

/// One reconcile in flight (see [`ControllerMetrics::start`]).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &ControllerMetrics) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &m.registry()).unwrap();
        s
    }

    #[test]
    fn reconciles_failures_and_deliveries_are_counted_by_their_labels() {
        let m = ControllerMetrics::default();
        let t = text(&m);
        assert!(
            t.contains(r#"latchkey_controller_reconciles_total{kind="ApiKey",result="success"} 0"#),
            "{t}"
        );
        assert!(t.contains(r#"latchkey_controller_keys_delivered_total{reason="repair"} 0"#));
        assert!(t.contains("latchkey_leader 0"));
        {
            let _running = m.start("ApiKey");
            assert!(text(&m).contains(r#"latchkey_controller_reconciles_in_flight{kind="ApiKey"} 1"#));
        }
        m.observe("ApiKey", Ok(()), Duration::from_millis(3));
        assert!(
            t.contains(r#"latchkey_controller_reconcile_errors_total{kind="ApiKey",error="forbidden"} 0"#)
        );
        let err = Error::Server("x".into());
        assert!(Error::METRIC_LABELS.contains(&err.metric_label()));
        m.observe("TokenPolicy", Err(&err), Duration::from_millis(3));
        m.delivered(Delivered::Requested);
        m.signing_key_generated();
        let t = text(&m);
        assert!(
            t.contains(r#"latchkey_controller_reconciles_total{kind="ApiKey",result="success"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"latchkey_controller_reconciles_total{kind="TokenPolicy",result="error"} 1"#));
        assert!(
            t.contains(r#"latchkey_controller_reconcile_errors_total{kind="TokenPolicy",error="server"} 1"#)
        );
        assert!(t.contains(r#"latchkey_controller_reconcile_duration_seconds_count{kind="ApiKey"} 1"#));
        assert!(t.contains(r#"latchkey_controller_reconciles_in_flight{kind="ApiKey"} 0"#));
        assert!(t.contains(r#"latchkey_controller_keys_delivered_total{reason="requested"} 1"#));
        assert!(t.contains("latchkey_controller_signing_keys_generated_total 1"));
    }

    #[test]
    fn ready_when_started_or_standing_by() {
        let m = ControllerMetrics::default();
        assert!(!m.is_ready(), "not before anything ran");
        m.set_leading(true);
        assert!(!m.is_ready(), "leading without leader election, lists not done");
        m.set_started();
        assert!(m.is_ready());

        let m = ControllerMetrics::default();
        m.set_elected();
        assert!(m.is_ready(), "a standby is ready");
        m.set_leading(true);
        assert!(!m.is_ready(), "just won the Lease, lists not done");
        assert!(text(&m).contains("latchkey_leader 1"));
        m.set_started();
        assert!(m.is_ready());
        m.set_leading(false);
        assert!(m.is_ready(), "lost the Lease: a standby again");
        assert!(text(&m).contains("latchkey_leader 0"));
        m.set_started();
        assert!(m.is_ready());
    }
}
