//! Pure decisions of the ApiKey reconciler: what the Secret holds, what to
//! do about it, the Secret we want and the status we want. No client, no
//! clock: the caller passes `now` and the generated key.
//!
//! Every new key (first key, repair, scheduled or requested rotation) is
//! delivered in three writes, so that a crash between any two of them leaves
//! the Secret holding a key that status lists, and status listing no key that
//! is not in the Secret for longer than one reconcile:
//! 1. status: the new key as `pendingKey` (valid from now on), with the
//!    rotate request it answers (`pendingRotateRequest`);
//! 2. the Secret receives the key (and the revision and rotated-at annotations);
//! 3. status ([`promote`]): `pendingKey` becomes `currentKey`, the old current
//!    key moves to `previousKeys` with `validUntil = now + grace`, `revision`
//!    + 1, `lastRotatedAt`, `nextRotationAt`, `lastRotateRequest`.
//!
//! After a crash between 1 and 2 the Secret still holds `currentKey`, so the
//! next reconcile drops the pending key that never reached it (and, if the
//! rotation is still due, starts it again); after a crash between 2 and 3 the
//! Secret holds `pendingKey`, which is promoted with the same bookkeeping.
//! A repair (Secret deleted, key changed by someone) also keeps the old
//! current key in `previousKeys` for the grace period: a consumer that still
//! has it is not refused.
//!
//! A revoked or expired ApiKey gets no new key and its Secret is left as it
//! is; status empties `previousKeys` and says why (`Stalled`).

//!
//! The plan is split by step: [`observe`] (what the Secret holds and what to
//! do about it), [`delivery`] (the three writes' statuses), [`secret`] (the
//! Secret we want) and [`phases`] (conditions and Events).

mod delivery;
mod in_use;
mod observe;
mod phases;
mod secret;

pub use delivery::*;
pub use in_use::*;
pub use observe::*;
pub use phases::*;
pub use secret::*;

use super::rotation::{self, RotationCause, Schedule, Terminal};
use crate::conditions::{self, Phase};
use crate::crd::{ApiKey, ApiKeyStatus, KeyRecord};
use crate::key::ApiKeyValue;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::meta::{
    KEY_ID_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, REVISION_ANNOTATION, ROTATED_AT_ANNOTATION,
    SECRET_DATA_KEY,
};
pub use crate::time::rfc3339;

/// Why a new key is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryCause {
    Issue(IssueReason),
    Rotation(RotationCause),
}

/// An Event to publish: never a key or hash, key ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Everything one reconcile does, decided from the fresh ApiKey and Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status once what the Secret holds is recorded: a delivered pending
    /// key promoted or an undelivered one dropped, ended grace periods
    /// pruned, the schedule fields and conditions up to date.
    pub status: ApiKeyStatus,
    /// Re-apply the Secret with the key it already holds (its metadata drifted).
    pub refresh_secret: Option<(ApiKeyValue, SecretStamp)>,
    /// Deliver a new key, starting from `status`.
    pub deliver: Option<DeliveryCause>,
    /// An Event to publish once `status` is written.
    pub event: Option<PlannedEvent>,
    /// `PreviousKeyStillInUse` Events to publish once `status` (which
    /// records their key ids) is written.
    pub in_use: Vec<PlannedEvent>,
}

/// Decides the whole reconcile of `api_key`, whose Secret looks like
/// `observation`, at `now`.
pub fn plan(api_key: &ApiKey, observation: &SecretObservation, schedule: &Schedule, now: Timestamp) -> Plan {
    let before = api_key.status.clone().unwrap_or_default();
    let decision = key_decision(Some(&before), observation);
    let mut status = before.clone();
    let mut event = None;
    let mut in_use = Vec::new();
    for (id, note) in still_in_use(&before, schedule) {
        status.still_in_use_reported.push(id);
        in_use.push(note);
    }
    let held = match &decision {
        KeyDecision::Keep {
            key,
            refresh_metadata,
        } => {
            status.pending_key = None;
            status.pending_rotate_request = None;
            refresh_metadata.then_some(key)
        }
        KeyDecision::Promote {
            key,
            refresh_metadata,
        } => {
            let old = status.current_key.clone();
            status = promote(&status, schedule, now);
            let new_id = &status.current_key.as_ref().expect("promoted").id;
            event = Some(match &old {
                Some(old) => PlannedEvent {
                    warning: false,
                    reason: "KeyRotated",
                    message: format!(
                        "{}: finished delivering key {new_id} after an interruption; key {} stays valid \
                         for the grace period",
                        match before.pending_rotate_request {
                            Some(_) => "rotation requested by the latchkey.dev/rotate annotation",
                            None => "rotation",
                        },
                        old.id
                    ),
                },
                None => PlannedEvent {
                    warning: false,
                    reason: "KeyIssued",
                    message: format!("issued key {new_id} into Secret {}", api_key.secret_name()),
                },
            });
            refresh_metadata.then_some(key)
        }
        KeyDecision::KeepUnread => {
            status.pending_key = None;
            status.pending_rotate_request = None;
            None
        }
        KeyDecision::Issue(_) | KeyDecision::Conflict => None,
    };
    let secret_holds_a_known_key = matches!(
        decision,
        KeyDecision::Keep { .. } | KeyDecision::KeepUnread | KeyDecision::Promote { .. }
    );

    if let Some(terminal) = rotation::terminal(api_key, now) {
        // No new key, no Secret write. The key the Secret holds stays
        // recorded (invalid anyway: validity ignores a revoked or expired
        // ApiKey's keys); a pending key that never reached it is dropped.
        if !secret_holds_a_known_key {
            status.pending_key = None;
            status.pending_rotate_request = None;
        }
        status.previous_keys.clear();
        let phase = terminal_phase(api_key, terminal);
        let status = complete_status(api_key, status, schedule, &phase, now);
        let newly = !stalled_with(&before, terminal_reason(terminal));
        let event = newly.then(|| terminal_event(&before, terminal));
        return Plan {
            status,
            refresh_secret: None,
            deliver: None,
            event,
            in_use: Vec::new(),
        };
    }

    match decision {
        KeyDecision::Conflict => {
            let phase = conflict_phase(api_key);
            let event = (!stalled_with(&before, "SecretConflict")).then(|| PlannedEvent {
                warning: true,
                reason: "SecretConflict",
                message: message_of(&phase),
            });
            Plan {
                status: complete_status(api_key, status, schedule, &phase, now),
                refresh_secret: None,
                deliver: None,
                event,
                in_use,
            }
        }
        KeyDecision::Issue(reason) => {
            let cause = DeliveryCause::Issue(reason);
            Plan {
                status: complete_status(api_key, status, schedule, &delivering_phase(api_key, &cause), now),
                refresh_secret: None,
                deliver: Some(cause),
                event: None,
                in_use,
            }
        }
        KeyDecision::Keep { .. } | KeyDecision::KeepUnread | KeyDecision::Promote { .. } => {
            status.previous_keys = rotation::prune_ended(&status.previous_keys, now);
            let due = rotation::rotation_due(api_key, &status, schedule, now);
            let deferred = due
                .as_ref()
                .and_then(|_| rotation::rotation_deferred_until(&status.previous_keys));
            let (phase, deliver) = match (due, deferred) {
                (Some(_), Some(until)) => (deferred_phase(status.previous_keys.len(), until), None),
                (Some(cause), None) => {
                    let cause = DeliveryCause::Rotation(cause);
                    (delivering_phase(api_key, &cause), Some(cause))
                }
                (None, _) => (ready_phase(api_key), None),
            };
            let status = complete_status(api_key, status, schedule, &phase, now);
            // A delivery rewrites the whole Secret anyway.
            let refresh_secret = match (&deliver, held) {
                (None, Some(key)) => stamp_for(&status, &key.sha256_hex()).map(|s| (key.clone(), s)),
                _ => None,
            };
            Plan {
                status,
                refresh_secret,
                deliver,
                event,
                in_use,
            }
        }
    }
}

#[cfg(test)]
mod tests;
