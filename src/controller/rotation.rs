//! The key lifecycle schedule, pure: when a key is rotated, how long a
//! replaced key stays valid, when an ApiKey is revoked or expired, and when
//! the reconciler must look again. No client; the caller passes `now`.
//!
//! Decisions (the issue left them open):
//! - Durations are the Go-style strings the CRD accepts (`720h`, `1h30m`,
//!   `90s`): only digits and `h`/`m`/`s`, parsed by jiff's friendly format.
//! - `gracePeriod` defaults to `min(1h, interval)`. Without `spec.rotation`
//!   nothing is rotated on a schedule, but a rotate-now request still works,
//!   with a 1h grace period.
//! - The next scheduled rotation is `lastRotatedAt + interval`, derived from
//!   status each time (so a changed interval applies at once, and a resync
//!   computes the same value and writes nothing). After downtime longer than
//!   several intervals the ApiKey is rotated once and the next rotation is one
//!   interval after that, not one per missed interval. A clock that goes
//!   backwards only postpones rotations; no duration is ever negative.
//! - A rotate-now request is the annotation `latchkey.dev/rotate` with a value
//!   other than `status.lastRotateRequest`; each distinct value is honoured
//!   once.
//! - At most [`MAX_PREVIOUS_KEYS`] replaced keys are kept in grace: a rotation
//!   that would need more is deferred until the earliest grace ends, rather
//!   than cutting a consumer's key short.
//! - The reconciler requeues at the next deadline (next rotation, end of a
//!   grace period, expiry), clamped to `[1s, RESYNC]`.

use super::RESYNC;
use crate::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

pub use crate::meta::ROTATE_ANNOTATION;
pub use crate::time::{DurationError, parse_duration, whole_second};
/// How many replaced keys status keeps in their grace period at most.
pub const MAX_PREVIOUS_KEYS: usize = 8;
/// Grace period when `spec.rotation.gracePeriod` is not set (capped by the
/// interval), and for rotate-now requests without `spec.rotation`.
pub const DEFAULT_GRACE: SignedDuration = SignedDuration::from_hours(1);
/// Shortest requeue: a deadline that has passed is looked at again after this.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// The rotation settings of an ApiKey, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// A new key every `interval`; `None` without `spec.rotation`.
    pub interval: Option<SignedDuration>,
    /// How long a replaced key stays valid.
    pub grace: SignedDuration,
}

impl Default for Schedule {
    /// No scheduled rotation; rotate-now requests get the default grace.
    fn default() -> Self {
        Self {
            interval: None,
            grace: DEFAULT_GRACE,
        }
    }
}

impl Schedule {
    pub fn of(spec: &ApiKeySpec) -> Result<Self, DurationError> {
        let Some(rotation) = &spec.rotation else {
            return Ok(Self::default());
        };
        let interval = parse_duration("spec.rotation.interval", &rotation.interval)?;
        let grace = match &rotation.grace_period {
            Some(g) => parse_duration("spec.rotation.gracePeriod", g)?,
            None => DEFAULT_GRACE.min(interval),
        };
        Ok(Self {
            interval: Some(interval),
            grace,
        })
    }
}

/// Why an ApiKey has no valid key any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Revoked,
    Expired,
}

/// Whether `api_key` is revoked or expired at `now` (revocation first).
pub fn terminal(api_key: &ApiKey, now: Timestamp) -> Option<Terminal> {
    if api_key.is_revoked() {
        Some(Terminal::Revoked)
    } else if api_key.spec.expires_at.as_ref().is_some_and(|t| now >= t.0) {
        Some(Terminal::Expired)
    } else {
        None
    }
}

/// Why a key is rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationCause {
    /// `nextRotationAt` has come.
    Scheduled,
    /// The `latchkey.dev/rotate` annotation has a value not yet honoured.
    Requested(String),
}

/// The rotate-now request not yet honoured, if any.
pub fn rotate_request(api_key: &ApiKey, status: &ApiKeyStatus) -> Option<String> {
    let value = api_key.metadata.annotations.as_ref()?.get(ROTATE_ANNOTATION)?;
    (status.last_rotate_request.as_deref() != Some(value.as_str())).then(|| value.clone())
}

/// When the current key was delivered: `lastRotatedAt`, or the current key's
/// `issuedAt` for a status written before `lastRotatedAt` existed.
pub fn last_rotated_at(status: &ApiKeyStatus) -> Option<Timestamp> {
    status
        .last_rotated_at
        .as_ref()
        .or(status.current_key.as_ref().map(|k| &k.issued_at))
        .map(|t| t.0)
}

/// When the next scheduled rotation is due (`None` without an interval or
/// without a current key).
pub fn next_rotation_at(status: &ApiKeyStatus, schedule: &Schedule) -> Option<Timestamp> {
    let interval = schedule.interval?;
    status.current_key.as_ref()?;
    last_rotated_at(status)?.checked_add(interval).ok()
}

/// Whether a rotation is due at `now`, and why. A request wins over the
/// schedule (it is recorded as honoured either way).
pub fn rotation_due(
    api_key: &ApiKey,
    status: &ApiKeyStatus,
    schedule: &Schedule,
    now: Timestamp,
) -> Option<RotationCause> {
    if let Some(request) = rotate_request(api_key, status) {
        return Some(RotationCause::Requested(request));
    }
    next_rotation_at(status, schedule)
        .is_some_and(|next| now >= next)
        .then_some(RotationCause::Scheduled)
}

/// `previous` without the entries whose grace has ended at `now`.
pub fn prune_ended(previous: &[KeyRecord], now: Timestamp) -> Vec<KeyRecord> {
    previous
        .iter()
        .filter(|k| k.valid_until.as_ref().is_none_or(|t| t.0 > now))
        .cloned()
        .collect()
}

/// Whether a rotation must wait: status already keeps the most replaced keys
/// it may. Returns the instant the earliest of them ends.
pub fn rotation_deferred_until(previous: &[KeyRecord]) -> Option<Timestamp> {
    if previous.len() < MAX_PREVIOUS_KEYS {
        return None;
    }
    previous
        .iter()
        .filter_map(|k| k.valid_until.as_ref().map(|t| t.0))
        .min()
}

/// Adds the replaced key `old`, valid until `until`, to `previous` (oldest
/// first). When `previous` is full (only a repair gets here then: a rotation
/// is deferred) the entry that ends first makes room.
pub fn retire(previous: &mut Vec<KeyRecord>, mut old: KeyRecord, until: Timestamp) {
    previous.retain(|k| k.sha256 != old.sha256);
    while previous.len() >= MAX_PREVIOUS_KEYS {
        let first_to_end = previous
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.valid_until.as_ref().map(|t| t.0))
            .map(|(i, _)| i)
            .expect("non-empty");
        previous.remove(first_to_end);
    }
    old.valid_until = Some(Time(until));
    previous.push(old);
}

/// The next instant something changes by itself: a scheduled rotation, the
/// end of a grace period, expiry.
pub fn next_deadline(
    api_key: &ApiKey,
    status: &ApiKeyStatus,
    schedule: &Schedule,
    now: Timestamp,
) -> Option<Timestamp> {
    if terminal(api_key, now).is_some() {
        return None;
    }
    let graces = status
        .previous_keys
        .iter()
        .filter_map(|k| k.valid_until.as_ref().map(|t| t.0));
    let expiry = api_key.spec.expires_at.as_ref().map(|t| t.0);
    next_rotation_at(status, schedule)
        .into_iter()
        .chain(graces)
        .chain(expiry)
        .min()
}

/// How long to wait until `deadline`, clamped to `[MIN_REQUEUE, RESYNC]`
/// (a passed deadline or a clock that went backwards never gives a negative
/// or zero delay).
pub fn requeue_after(deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(deadline) = deadline else {
        return RESYNC;
    };
    let wait = deadline.duration_since(now);
    if wait <= SignedDuration::ZERO {
        return MIN_REQUEUE;
    }
    // Round up so that a requeue never lands just before the deadline.
    let secs = wait.as_secs() as u64 + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs).clamp(MIN_REQUEUE, RESYNC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Rotation;
    use crate::fixtures::{record, t};

    fn rotation(interval: &str, grace: Option<&str>) -> ApiKeySpec {
        ApiKeySpec {
            rotation: Some(Rotation {
                interval: interval.into(),
                grace_period: grace.map(Into::into),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn go_style_durations_parse_and_nothing_else_does() {
        let ok = [
            ("720h", 720 * 3600),
            ("1h30m", 5400),
            ("90s", 90),
            ("1m", 60),
            ("1h0m5s", 3605),
            ("8760h", 8760 * 3600),
            ("0s", 0),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration("f", s), Ok(SignedDuration::from_secs(secs)), "{s}");
        }
        for s in [
            "", "h", "1", "-1h", "1.5h", "1 hour", "1h 30m", "PT1H", "1d", "30mo", "1us", "1s1h",
        ] {
            let err = parse_duration("spec.rotation.interval", s).unwrap_err();
            assert!(err.to_string().contains("spec.rotation.interval"), "{s}");
        }
    }

    #[test]
    fn grace_defaults_to_one_hour_capped_by_the_interval() {
        let s = Schedule::of(&rotation("720h", None)).unwrap();
        assert_eq!(s.interval, Some(SignedDuration::from_hours(720)));
        assert_eq!(s.grace, SignedDuration::from_hours(1));
        let s = Schedule::of(&rotation("10m", None)).unwrap();
        assert_eq!(s.grace, SignedDuration::from_mins(10));
        let s = Schedule::of(&rotation("24h", Some("2h"))).unwrap();
        assert_eq!(s.grace, SignedDuration::from_hours(2));
        let s = Schedule::of(&ApiKeySpec::default()).unwrap();
        assert_eq!((s.interval, s.grace), (None, DEFAULT_GRACE));
        assert!(Schedule::of(&rotation("soon", None)).is_err());
    }

    fn active(last: i64) -> ApiKeyStatus {
        ApiKeyStatus {
            current_key: Some(record("cur", None)),
            last_rotated_at: Some(Time(t(last))),
            ..Default::default()
        }
    }

    #[test]
    fn a_rotation_is_due_one_interval_after_the_last() {
        let ak = ApiKey::new("k", rotation("1h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let status = active(0);
        assert_eq!(next_rotation_at(&status, &schedule), Some(t(3600)));
        assert_eq!(rotation_due(&ak, &status, &schedule, t(3599)), None);
        assert_eq!(
            rotation_due(&ak, &status, &schedule, t(3600)),
            Some(RotationCause::Scheduled)
        );
        // Requeue exactly at the deadline.
        assert_eq!(
            requeue_after(next_deadline(&ak, &status, &schedule, t(600)), t(600)),
            Duration::from_secs(3000)
        );
        // Without an interval nothing is scheduled.
        let plain = ApiKey::new("k", ApiKeySpec::default());
        let schedule = Schedule::of(&plain.spec).unwrap();
        assert_eq!(next_rotation_at(&status, &schedule), None);
        assert_eq!(rotation_due(&plain, &status, &schedule, t(1_000_000)), None);
    }

    #[test]
    fn a_status_without_last_rotated_at_counts_from_the_current_keys_issue() {
        let ak = ApiKey::new("k", rotation("1h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let status = ApiKeyStatus {
            current_key: Some(record("cur", None)),
            ..Default::default()
        };
        assert_eq!(next_rotation_at(&status, &schedule), Some(t(3600)));
    }

    #[test]
    fn downtime_of_many_intervals_gives_one_rotation_due_not_many() {
        let ak = ApiKey::new("k", rotation("1h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let status = active(0);
        let now = t(10 * 3600 + 17);
        assert_eq!(
            rotation_due(&ak, &status, &schedule, now),
            Some(RotationCause::Scheduled)
        );
        // After that one rotation (lastRotatedAt = now) the next is one interval later.
        let after = active(10 * 3600 + 17);
        assert_eq!(rotation_due(&ak, &after, &schedule, now), None);
        assert_eq!(next_rotation_at(&after, &schedule), Some(t(11 * 3600 + 17)));
    }

    #[test]
    fn a_clock_that_goes_backwards_postpones_and_never_goes_negative() {
        let ak = ApiKey::new("k", rotation("1h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let status = active(5000);
        // now is before the last rotation.
        let now = t(0);
        assert_eq!(rotation_due(&ak, &status, &schedule, now), None);
        let wait = requeue_after(next_deadline(&ak, &status, &schedule, now), now);
        assert!(wait >= MIN_REQUEUE && wait <= RESYNC, "{wait:?}");
        // A deadline in the past: the shortest requeue, not zero or negative.
        assert_eq!(requeue_after(Some(t(-100)), t(0)), MIN_REQUEUE);
        assert_eq!(requeue_after(Some(t(0)), t(0)), MIN_REQUEUE);
        // Far away: capped.
        assert_eq!(requeue_after(Some(t(1_000_000)), t(0)), RESYNC);
        assert_eq!(requeue_after(None, t(0)), RESYNC);
    }

    #[test]
    fn grace_ends_are_deadlines_and_ended_entries_are_pruned() {
        let ak = ApiKey::new("k", rotation("24h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let mut status = active(0);
        status.previous_keys = vec![record("a", Some(100)), record("b", Some(200))];
        assert_eq!(next_deadline(&ak, &status, &schedule, t(0)), Some(t(100)));
        let kept = prune_ended(&status.previous_keys, t(100));
        assert_eq!(kept, vec![record("b", Some(200))]);
        assert!(prune_ended(&status.previous_keys, t(200)).is_empty());
    }

    #[test]
    fn expiry_before_the_next_rotation_is_the_deadline_and_then_terminal() {
        let mut ak = ApiKey::new("k", rotation("24h", None));
        ak.spec.expires_at = Some(Time(t(600)));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let status = active(0);
        assert_eq!(next_deadline(&ak, &status, &schedule, t(0)), Some(t(600)));
        assert_eq!(terminal(&ak, t(599)), None);
        assert_eq!(terminal(&ak, t(600)), Some(Terminal::Expired));
        assert_eq!(next_deadline(&ak, &status, &schedule, t(600)), None);
        // Revocation wins over expiry.
        ak.spec.revoked = Some(true);
        assert_eq!(terminal(&ak, t(0)), Some(Terminal::Revoked));
        assert_eq!(terminal(&ak, t(600)), Some(Terminal::Revoked));
    }

    #[test]
    fn rotate_now_is_honoured_once_per_value_even_during_grace() {
        let mut ak = ApiKey::new("k", rotation("720h", None));
        let schedule = Schedule::of(&ak.spec).unwrap();
        let mut status = active(0);
        // A key is in grace: a request is honoured anyway.
        status.previous_keys = vec![record("old", Some(3600))];
        assert_eq!(rotation_due(&ak, &status, &schedule, t(10)), None);
        ak.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "r1".to_owned())].into());
        assert_eq!(
            rotation_due(&ak, &status, &schedule, t(10)),
            Some(RotationCause::Requested("r1".into()))
        );
        status.last_rotate_request = Some("r1".into());
        assert_eq!(rotation_due(&ak, &status, &schedule, t(10)), None);
        ak.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "r2".to_owned())].into());
        assert_eq!(
            rotation_due(&ak, &status, &schedule, t(10)),
            Some(RotationCause::Requested("r2".into()))
        );
        // Without spec.rotation too.
        let mut plain = ak.clone();
        plain.spec.rotation = None;
        let schedule = Schedule::of(&plain.spec).unwrap();
        assert_eq!(
            rotation_due(&plain, &status, &schedule, t(10)),
            Some(RotationCause::Requested("r2".into()))
        );
    }

    #[test]
    fn a_full_previous_list_defers_until_the_first_grace_ends() {
        let mut previous: Vec<_> = (0..MAX_PREVIOUS_KEYS as i64)
            .map(|i| record(&format!("k{i}"), Some(1000 - i)))
            .collect();
        assert_eq!(rotation_deferred_until(&previous), Some(t(1000 - 7)));
        previous.pop();
        assert_eq!(rotation_deferred_until(&previous), None);
        // retire into a full list drops the entry that ends first.
        previous.push(record("k7", Some(993)));
        retire(&mut previous, record("new", None), t(5000));
        assert_eq!(previous.len(), MAX_PREVIOUS_KEYS);
        assert!(!previous.iter().any(|k| k.id == "k7"));
        assert_eq!(previous.last().unwrap().valid_until, Some(Time(t(5000))));
    }

    #[test]
    fn whole_second_truncates() {
        let now = t(5).checked_add(SignedDuration::from_millis(999)).unwrap();
        assert_eq!(whole_second(now), t(5));
    }
}
