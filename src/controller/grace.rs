//! Keys near the end of their grace period, for `/metrics`: how many
//! replaced keys are still valid and end within 1 h, 24 h, 7 d or at all,
//! and how long until the earliest of them ends.
//!
//! Computed at scrape time from the controller's watch cache of ApiKeys
//! (what the controller last saw of each, status included), so a grace end
//! that passes between two reconciles is already out of the count, and a
//! deleted ApiKey leaves it. Only the process that leads has a cache; a
//! standby reports no key (summed over the pods the figure is the leader's).
//!
//! No label holds a namespace, name or key id: the one label, `ends_within`,
//! takes four fixed values, so the series count never grows with the keys.

use crate::clock::Clock;
use crate::crd::ApiKey;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, RwLock};

/// The windows of `latchkey_controller_keys_in_grace{ends_within}`, each
/// counting the keys whose grace ends at most that long from now
/// (cumulative, like a histogram's `le`); `+Inf` counts every key in grace.
pub const WINDOWS: [(&str, Option<SignedDuration>); 4] = [
    ("1h", Some(SignedDuration::from_hours(1))),
    ("24h", Some(SignedDuration::from_hours(24))),
    ("7d", Some(SignedDuration::from_hours(24 * 7))),
    ("+Inf", None),
];

/// Replaced keys still in grace at an instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraceSummary {
    /// Per [`WINDOWS`] entry: how many keys end within it.
    pub ending_within: [u64; WINDOWS.len()],
    /// Time until the earliest end, if any key is in grace.
    pub next_end: Option<SignedDuration>,
}

/// The replaced keys (`status.previousKeys`) of `api_keys` still valid at
/// `now`, by when they stop being valid: the grace end, or `spec.expiresAt`
/// when that comes first; none of a revoked ApiKey (the rule of
/// [`crate::validity`]).
pub fn summarize<'a>(api_keys: impl IntoIterator<Item = &'a ApiKey>, now: Timestamp) -> GraceSummary {
    let mut summary = GraceSummary::default();
    let ends = api_keys.into_iter().flat_map(|ak| {
        crate::validity::all_keys(ak)
            // Only a replaced key has its own `validUntil`.
            .filter(|(record, _)| record.valid_until.is_some())
            .filter_map(|(_, until)| until)
            .collect::<Vec<_>>()
    });
    for end in ends {
        let left = end.duration_since(now);
        if left <= SignedDuration::ZERO {
            continue;
        }
        for (count, (_, window)) in summary.ending_within.iter_mut().zip(WINDOWS) {
            if window.is_none_or(|w| left <= w) {
                *count += 1;
            }
        }
        summary.next_end = Some(summary.next_end.map_or(left, |n| n.min(left)));
    }
    summary
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    ends_within: &'static str,
}

/// The collector behind the two families: the clock, and the watch cache
/// while this process runs the controllers.
pub struct GraceGauges {
    clock: Arc<dyn Clock>,
    api_keys: RwLock<Option<Store<ApiKey>>>,
}

impl std::fmt::Debug for GraceGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraceGauges").finish_non_exhaustive()
    }
}

impl GraceGauges {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            api_keys: RwLock::default(),
        }
    }

    /// The controllers run and watch ApiKeys into `store` (or stopped: `None`).
    pub fn watch(&self, store: Option<Store<ApiKey>>) {
        *self.api_keys.write().expect("grace store lock") = store;
    }

    /// What a scrape shows now.
    pub fn summary(&self) -> GraceSummary {
        let now = self.clock.now();
        let store = self.api_keys.read().expect("grace store lock");
        match store.as_ref() {
            Some(store) => summarize(store.state().iter().map(|ak| &**ak), now),
            None => GraceSummary::default(),
        }
    }
}

impl Collector for GraceGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let summary = self.summary();
        let mut family = encoder.encode_descriptor(
            "controller_keys_in_grace",
            "Replaced API keys still valid (in their grace period) whose grace ends within ends_within (cumulative; +Inf: all)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((ends_within, _), count) in WINDOWS.iter().zip(summary.ending_within) {
            let gauge = ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&WindowLabels { ends_within })?)?;
        }
        let next = encoder.encode_descriptor(
            "controller_next_grace_end_seconds",
            "Seconds until the earliest grace end of a replaced API key (no sample while no key is in grace)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        if let Some(left) = summary.next_end {
            ConstGauge::new(left.as_secs_f64()).encode(next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::crd::{ApiKeySpec, ApiKeyStatus};
    use crate::fixtures::{record, t};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn api_key(name: &str, previous: &[i64]) -> ApiKey {
        let mut ak = ApiKey::new(name, ApiKeySpec::default());
        ak.metadata.namespace = Some("shop".into());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(record("cur", None)),
            previous_keys: previous
                .iter()
                .map(|s| record(&format!("old{s}"), Some(*s)))
                .collect(),
            ..Default::default()
        });
        ak
    }

    const H: i64 = 3600;

    #[test]
    fn keys_are_counted_by_how_soon_their_grace_ends() {
        let keys = [
            api_key("a", &[30 * 60, 2 * H]),
            api_key("b", &[23 * H, 3 * 24 * H, 30 * 24 * H]),
            // Ended already: not counted.
            api_key("c", &[-1]),
            // No previous key at all.
            api_key("d", &[]),
        ];
        let s = summarize(&keys, t(0));
        assert_eq!(s.ending_within, [1, 3, 4, 5]);
        assert_eq!(s.next_end, Some(SignedDuration::from_mins(30)));
        // An hour later the first has ended, the second is 1 h away.
        let s = summarize(&keys, t(H));
        assert_eq!(s.ending_within, [1, 2, 3, 4]);
        assert_eq!(s.next_end, Some(SignedDuration::from_hours(1)));
        // Exactly at a grace end the key is no longer valid.
        let s = summarize(&keys, t(2 * H));
        assert_eq!(s.ending_within[3], 3);
        let s = summarize(&keys, t(31 * 24 * H));
        assert_eq!(s, GraceSummary::default());
    }

    #[test]
    fn expiry_caps_a_grace_end_and_revocation_ends_every_key() {
        let mut expiring = api_key("e", &[10 * H]);
        expiring.spec.expires_at = Some(Time(t(H / 2)));
        let s = summarize([&expiring], t(0));
        assert_eq!(s.ending_within, [1, 1, 1, 1]);
        assert_eq!(s.next_end, Some(SignedDuration::from_mins(30)));
        let mut revoked = api_key("r", &[H]);
        revoked.spec.revoked = Some(true);
        assert_eq!(summarize([&revoked], t(0)), GraceSummary::default());
    }

    fn text(gauges: &Arc<GraceGauges>) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("latchkey");
        registry.register_collector(Box::new(gauges.clone()));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &registry).unwrap();
        s
    }

    #[test]
    fn a_scrape_reads_the_watch_cache_at_the_clocks_time_and_names_no_key() {
        let clock = ManualClock::new(t(0));
        let gauges = Arc::new(GraceGauges::new(Arc::new(clock.clone())));
        let scrape = || text(&gauges);
        // Not leading: the families exist, with zeros and no next end.
        let t0 = scrape();
        assert!(
            t0.contains("# TYPE latchkey_controller_keys_in_grace gauge"),
            "{t0}"
        );
        assert!(
            t0.contains(r#"latchkey_controller_keys_in_grace{ends_within="+Inf"} 0"#),
            "{t0}"
        );
        assert!(t0.contains("# TYPE latchkey_controller_next_grace_end_seconds gauge"));
        assert!(
            !t0.lines()
                .any(|l| l.starts_with("latchkey_controller_next_grace_end_seconds")),
            "no sample while no key is in grace: {t0}"
        );

        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(api_key("a", &[90 * 60])));
        gauges.watch(Some(reader));
        let t1 = scrape();
        assert!(
            t1.contains(r#"latchkey_controller_keys_in_grace{ends_within="1h"} 0"#),
            "{t1}"
        );
        assert!(t1.contains(r#"latchkey_controller_keys_in_grace{ends_within="24h"} 1"#));
        assert!(
            t1.contains("latchkey_controller_next_grace_end_seconds 5400.0"),
            "{t1}"
        );
        assert!(!t1.contains("shop") && !t1.contains("old5400"), "{t1}");

        clock.set(t(60 * 60));
        let t2 = scrape();
        assert!(
            t2.contains(r#"latchkey_controller_keys_in_grace{ends_within="1h"} 1"#),
            "{t2}"
        );
        assert!(
            t2.contains("latchkey_controller_next_grace_end_seconds 1800.0"),
            "{t2}"
        );

        // Leadership lost: nothing reported.
        gauges.watch(None);
        assert!(scrape().contains(r#"latchkey_controller_keys_in_grace{ends_within="+Inf"} 0"#));
    }
}
