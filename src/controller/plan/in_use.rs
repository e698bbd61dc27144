//! `PreviousKeyStillInUse`: a replaced key that the auth server saw used in
//! the last quarter of its grace period gets one Warning Event (key id and
//! when it was last used, never the key), so that the operator can find the
//! consumer before it is refused.
//!
//! The controller decides it from the usage the auth server flushed into
//! `status.keyUsage` (its fresh read): it needs no right the chart does not
//! already give it (Events), and the server keeps no Event writer. Once
//! published, the key id goes into `status.stillInUseReported` (the
//! controller's own field, pruned with the key), so a key warns once, also
//! across controller restarts. The id is recorded with the status write that
//! precedes the Event: a crash in between loses the Event (at most once).

use super::*;
use k8s_openapi::jiff::SignedDuration;

/// The share of a grace period, at its end, in which a use warns.
pub const LAST_PART: i32 = 4;
/// How often, at most and at least, the controller looks at the usage while
/// an unreported key is in the last quarter of its grace period.
pub const CHECK_MIN: SignedDuration = SignedDuration::from_secs(1);
pub const CHECK_MAX: SignedDuration = SignedDuration::from_mins(5);

/// When the last quarter of a grace period that ends at `until` begins.
pub fn quarter_start(until: Timestamp, grace: SignedDuration) -> Timestamp {
    until.checked_sub(grace / LAST_PART).unwrap_or(until)
}

/// The Events for replaced keys of `before` (the fresh read) that were used
/// in the last quarter of their grace period and have not warned yet, with
/// their ids.
pub fn still_in_use(before: &ApiKeyStatus, schedule: &Schedule) -> Vec<(String, PlannedEvent)> {
    before
        .previous_keys
        .iter()
        .filter(|k| !before.still_in_use_reported.contains(&k.id))
        .filter_map(|k| {
            let until = k.valid_until.as_ref()?.0;
            let used = before.key_usage.get(&k.id)?.last_used_at.as_ref()?.0;
            (used >= quarter_start(until, schedule.grace) && used < until).then(|| {
                let event = PlannedEvent {
                    warning: true,
                    reason: "PreviousKeyStillInUse",
                    message: format!(
                        "replaced key {} was still used at {}, in the last quarter of its grace period; \
                         it stops being valid at {}: update the consumer that still sends it",
                        k.id,
                        rfc3339(used),
                        rfc3339(until)
                    ),
                };
                (k.id.clone(), event)
            })
        })
        .collect()
}

/// When the controller should look at the usage again: the start of the
/// next last quarter, or, inside one, a twentieth of the quarter later
/// (1 s … 5 min), for every replaced key that has not warned yet.
pub fn next_check(status: &ApiKeyStatus, schedule: &Schedule, now: Timestamp) -> Option<Timestamp> {
    let step = (schedule.grace / (LAST_PART * 20)).clamp(CHECK_MIN, CHECK_MAX);
    status
        .previous_keys
        .iter()
        .filter(|k| !status.still_in_use_reported.contains(&k.id))
        .filter_map(|k| {
            let until = k.valid_until.as_ref()?.0;
            if until <= now {
                return None;
            }
            let start = quarter_start(until, schedule.grace);
            Some(if now < start {
                start
            } else {
                now.checked_add(step).unwrap_or(until).min(until)
            })
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KeyUsage;
    use crate::fixtures::{record, t};

    /// Grace 400 s: the last quarter of a key valid until t(1000) starts at t(900).
    fn schedule() -> Schedule {
        Schedule {
            interval: None,
            grace: SignedDuration::from_secs(400),
        }
    }

    fn used(status: &mut ApiKeyStatus, id: &str, at: i64) {
        status.key_usage.insert(
            id.into(),
            KeyUsage {
                last_used_at: Some(Time(t(at))),
                ..Default::default()
            },
        );
    }

    #[test]
    fn a_use_in_the_last_quarter_warns_once_with_the_id_and_time() {
        let mut status = ApiKeyStatus {
            current_key: Some(record("cur", None)),
            previous_keys: vec![record("old", Some(1000)), record("mid", Some(2000))],
            ..Default::default()
        };
        used(&mut status, "cur", 950);
        used(&mut status, "old", 899);
        assert!(
            still_in_use(&status, &schedule()).is_empty(),
            "before the last quarter"
        );
        used(&mut status, "old", 900);
        used(&mut status, "mid", 950);
        let events = still_in_use(&status, &schedule());
        assert_eq!(events.len(), 1, "{events:?}");
        let (id, event) = &events[0];
        assert_eq!(id, "old");
        assert!(event.warning);
        assert_eq!(event.reason, "PreviousKeyStillInUse");
        assert!(event.message.contains("old") && event.message.contains(&rfc3339(t(900))));
        assert!(!event.message.contains("hash-old"), "never the hash");
        // Reported: never again.
        status.still_in_use_reported.push("old".into());
        used(&mut status, "old", 990);
        assert!(still_in_use(&status, &schedule()).is_empty());
    }

    #[test]
    fn the_controller_looks_again_at_the_quarter_and_then_often_until_the_end() {
        let mut status = ApiKeyStatus {
            previous_keys: vec![record("old", Some(1000))],
            ..Default::default()
        };
        let s = schedule();
        assert_eq!(next_check(&status, &s, t(100)), Some(t(900)));
        // 100 s quarter / 20 = 5 s.
        assert_eq!(next_check(&status, &s, t(900)), Some(t(905)));
        assert_eq!(
            next_check(&status, &s, t(998)),
            Some(t(1000)),
            "never past the end"
        );
        assert_eq!(next_check(&status, &s, t(1000)), None, "ended");
        status.still_in_use_reported.push("old".into());
        assert_eq!(
            next_check(&status, &s, t(950)),
            None,
            "reported: nothing to look for"
        );
        // A long grace checks at most every 5 minutes.
        let long = Schedule {
            interval: None,
            grace: SignedDuration::from_hours(24),
        };
        status.still_in_use_reported.clear();
        assert_eq!(next_check(&status, &long, t(999)), Some(t(1000)));
        assert_eq!(
            next_check(&status, &long, t(0)),
            Some(t(0) + SignedDuration::from_mins(5))
        );
    }
}
