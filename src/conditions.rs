//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`), computed purely.
//!
//! All three are always present, so `kubectl wait --for=condition=Ready`,
//! Argo CD and Flux's kstatus read one consistent picture: exactly one of
//! "ready", "in progress" and "stuck" is true. `lastTransitionTime` moves only
//! when a condition's status changes, and every condition carries the
//! `observedGeneration` it describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The overall state an object is in, with a CamelCase reason and a message
/// for humans. The message never contains a key or a Secret's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Done: the object's desired state is in place.
    Ready { reason: String, message: String },
    /// Work in progress that needs no one's help.
    Reconciling { reason: String, message: String },
    /// Stuck until someone changes something; the message says what.
    Stalled { reason: String, message: String },
}

impl Phase {
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Phase::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn reconciling(reason: &str, message: impl Into<String>) -> Self {
        Phase::Reconciling {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Phase::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn reason_and_message(&self) -> (&str, &str) {
        match self {
            Phase::Ready { reason, message }
            | Phase::Reconciling { reason, message }
            | Phase::Stalled { reason, message } => (reason, message),
        }
    }
}

/// Sets `Ready`, `Reconciling` and `Stalled` in `conditions` to describe
/// `phase` at `generation`.
pub fn apply_phase(conditions: &mut Vec<Condition>, phase: &Phase, generation: Option<i64>, now: Timestamp) {
    let (reason, message) = phase.reason_and_message();
    let is = |t: &str| {
        matches!(
            (t, phase),
            (READY, Phase::Ready { .. })
                | (RECONCILING, Phase::Reconciling { .. })
                | (STALLED, Phase::Stalled { .. })
        )
    };
    for type_ in [READY, RECONCILING, STALLED] {
        // All three carry the phase's reason, so each explains itself alone.
        set(conditions, type_, is(type_), reason, message, generation, now);
    }
}

/// Sets one condition. `lastTransitionTime` changes only when the status does.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.into();
            existing.reason = reason.into();
            existing.message = message.into();
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    #[test]
    fn first_phase_creates_all_three_conditions() {
        let mut c = Vec::new();
        apply_phase(
            &mut c,
            &Phase::reconciling("IssuingKey", "writing"),
            Some(1),
            t(0),
        );
        assert_eq!(c.len(), 3);
        assert_eq!(find(&c, READY).unwrap().status, "False");
        assert_eq!(find(&c, RECONCILING).unwrap().status, "True");
        assert_eq!(find(&c, STALLED).unwrap().status, "False");
        assert!(c.iter().all(|x| x.observed_generation == Some(1)));
        assert!(c.iter().all(|x| x.reason == "IssuingKey"));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        apply_phase(&mut c, &Phase::reconciling("IssuingKey", "m"), Some(1), t(0));
        apply_phase(&mut c, &Phase::ready("KeyIssued", "m"), Some(1), t(10));
        assert_eq!(find(&c, READY).unwrap().last_transition_time, Time(t(10)));
        assert_eq!(find(&c, RECONCILING).unwrap().last_transition_time, Time(t(10)));
        // Stalled stayed False: its transition time is the first one.
        assert_eq!(find(&c, STALLED).unwrap().last_transition_time, Time(t(0)));

        // Same phase again, later and with a new generation: no transition.
        apply_phase(&mut c, &Phase::ready("KeyIssued", "m2"), Some(2), t(20));
        assert_eq!(find(&c, READY).unwrap().last_transition_time, Time(t(10)));
        assert_eq!(find(&c, READY).unwrap().observed_generation, Some(2));
        assert_eq!(find(&c, READY).unwrap().message, "m2");
    }

    #[test]
    fn stalled_is_exclusive_with_ready() {
        let mut c = Vec::new();
        apply_phase(&mut c, &Phase::ready("KeyIssued", "m"), Some(1), t(0));
        apply_phase(&mut c, &Phase::stalled("SecretConflict", "m"), Some(1), t(5));
        assert!(!is_true(&c, READY));
        assert!(is_true(&c, STALLED));
        assert!(!is_true(&c, RECONCILING));
        assert_eq!(find(&c, READY).unwrap().last_transition_time, Time(t(5)));
    }

    #[test]
    fn order_of_conditions_is_stable() {
        let mut c = Vec::new();
        apply_phase(&mut c, &Phase::stalled("X", "m"), None, t(0));
        apply_phase(&mut c, &Phase::ready("Y", "m"), None, t(1));
        let types: Vec<_> = c.iter().map(|x| x.type_.as_str()).collect();
        assert_eq!(types, [READY, RECONCILING, STALLED]);
    }
}
