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

use super::schedule::{self, RotationCause, Schedule, Terminal};
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

/// What the ApiKey's Secret looks like, as far as the reconciler cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretObservation {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name exists but this ApiKey does not control it.
    Foreign,
    /// A Secret this ApiKey controls.
    Owned {
        /// The key it holds, if it holds a well-formed one.
        key: Option<ApiKeyValue>,
        /// Whether its labels, annotations and owner reference are what we
        /// would write for the key it holds.
        metadata_in_sync: bool,
    },
}

/// Why a new key is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    /// The ApiKey never had a key.
    FirstKey,
    /// The Secret was deleted.
    SecretMissing,
    /// The Secret holds something other than the key status records.
    KeyMismatch,
}

/// What the reconciler does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDecision {
    /// The Secret holds `currentKey`; at most its metadata needs a refresh.
    Keep {
        key: ApiKeyValue,
        refresh_metadata: bool,
    },
    /// The Secret holds `pendingKey`: it reached the Secret, record it as current.
    Promote {
        key: ApiKeyValue,
        refresh_metadata: bool,
    },
    /// Generate a key and deliver it.
    Issue(IssueReason),
    /// The Secret belongs to someone else: touch nothing.
    Conflict,
}

/// The revision and delivery time the Secret's annotations carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretStamp {
    pub revision: i64,
    pub rotated_at: Timestamp,
}

/// How many keys were delivered to the Secret so far. A status written
/// before `revision` existed but with a current key has delivered one.
pub fn delivered_count(status: &ApiKeyStatus) -> i64 {
    status.revision.unwrap_or(i64::from(status.current_key.is_some()))
}

/// The stamp the Secret carries when it holds the key with this hash:
/// `currentKey`'s, or the one step 2 wrote for `pendingKey`.
pub fn stamp_for(status: &ApiKeyStatus, sha256: &str) -> Option<SecretStamp> {
    if let Some(pending) = status.pending_key.as_ref().filter(|p| p.sha256 == sha256) {
        return Some(SecretStamp {
            revision: delivered_count(status) + 1,
            rotated_at: pending.issued_at.0,
        });
    }
    status.current_key.as_ref().filter(|c| c.sha256 == sha256)?;
    Some(SecretStamp {
        revision: delivered_count(status),
        rotated_at: schedule::last_rotated_at(status)?,
    })
}

/// Looks at an existing Secret on behalf of `api_key`.
pub fn observe_secret(api_key: &ApiKey, secret: Option<&Secret>, field_manager: &str) -> SecretObservation {
    let Some(secret) = secret else {
        return SecretObservation::Missing;
    };
    let uid = api_key.metadata.uid.as_deref();
    let controlled = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
    if !controlled {
        return SecretObservation::Foreign;
    }
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_DATA_KEY))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .and_then(|s| ApiKeyValue::parse(s).ok());
    let status = api_key.status.clone().unwrap_or_default();
    let metadata_in_sync = key
        .as_ref()
        .and_then(|k| Some((k, stamp_for(&status, &k.sha256_hex())?)))
        .is_some_and(|(k, stamp)| metadata_in_sync(api_key, secret, k, stamp, field_manager));
    SecretObservation::Owned {
        key,
        metadata_in_sync,
    }
}

/// Decides what to do, from the status and the Secret.
pub fn decide(status: Option<&ApiKeyStatus>, observation: &SecretObservation) -> KeyDecision {
    let current = status.and_then(|s| s.current_key.as_ref());
    let pending = status.and_then(|s| s.pending_key.as_ref());
    match observation {
        SecretObservation::Foreign => KeyDecision::Conflict,
        // A pending first key that never reached the Secret: still the first key.
        SecretObservation::Missing => match current {
            None => KeyDecision::Issue(IssueReason::FirstKey),
            Some(_) => KeyDecision::Issue(IssueReason::SecretMissing),
        },
        SecretObservation::Owned {
            key,
            metadata_in_sync,
        } => {
            let held = key.as_ref().map(|k| (k, k.sha256_hex()));
            let matches = |r: Option<&KeyRecord>| match (&held, r) {
                (Some((_, hash)), Some(r)) => *hash == r.sha256,
                _ => false,
            };
            let refresh_metadata = !metadata_in_sync;
            if matches(current) {
                KeyDecision::Keep {
                    key: held.expect("matched").0.clone(),
                    refresh_metadata,
                }
            } else if matches(pending) {
                KeyDecision::Promote {
                    key: held.expect("matched").0.clone(),
                    refresh_metadata,
                }
            } else if current.is_none() && pending.is_none() {
                // Our Secret but a status that knows no key (for example the
                // status was cleared): its content can't be trusted.
                KeyDecision::Issue(IssueReason::FirstKey)
            } else {
                KeyDecision::Issue(IssueReason::KeyMismatch)
            }
        }
    }
}

/// Why a new key is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryCause {
    Issue(IssueReason),
    Rotation(RotationCause),
}

/// An Event to publish: never a key or hash, key ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
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
    pub event: Option<Note>,
}

/// Decides the whole reconcile of `api_key`, whose Secret looks like
/// `observation`, at `now`.
pub fn plan(api_key: &ApiKey, observation: &SecretObservation, schedule: &Schedule, now: Timestamp) -> Plan {
    let before = api_key.status.clone().unwrap_or_default();
    let decision = decide(Some(&before), observation);
    let mut status = before.clone();
    let mut event = None;
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
                Some(old) => Note {
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
                None => Note {
                    warning: false,
                    reason: "KeyIssued",
                    message: format!("issued key {new_id} into Secret {}", api_key.secret_name()),
                },
            });
            refresh_metadata.then_some(key)
        }
        KeyDecision::Issue(_) | KeyDecision::Conflict => None,
    };
    let secret_holds_a_known_key = matches!(decision, KeyDecision::Keep { .. } | KeyDecision::Promote { .. });

    if let Some(terminal) = schedule::terminal(api_key, now) {
        // No new key, no Secret write. The key the Secret holds stays
        // recorded (invalid anyway: validity ignores a revoked or expired
        // ApiKey's keys); a pending key that never reached it is dropped.
        if !secret_holds_a_known_key {
            status.pending_key = None;
            status.pending_rotate_request = None;
        }
        status.previous_keys.clear();
        let phase = terminal_phase(api_key, terminal);
        let status = settle(api_key, status, schedule, &phase, now);
        let newly = !stalled_with(&before, terminal_reason(terminal));
        let event = newly.then(|| terminal_event(&before, terminal));
        return Plan {
            status,
            refresh_secret: None,
            deliver: None,
            event,
        };
    }

    match decision {
        KeyDecision::Conflict => {
            let phase = conflict_phase(api_key);
            let event = (!stalled_with(&before, "SecretConflict")).then(|| Note {
                warning: true,
                reason: "SecretConflict",
                message: message_of(&phase),
            });
            Plan {
                status: settle(api_key, status, schedule, &phase, now),
                refresh_secret: None,
                deliver: None,
                event,
            }
        }
        KeyDecision::Issue(reason) => {
            let cause = DeliveryCause::Issue(reason);
            Plan {
                status: settle(api_key, status, schedule, &delivering_phase(api_key, &cause), now),
                refresh_secret: None,
                deliver: Some(cause),
                event: None,
            }
        }
        KeyDecision::Keep { .. } | KeyDecision::Promote { .. } => {
            status.previous_keys = schedule::prune_ended(&status.previous_keys, now);
            let due = schedule::rotation_due(api_key, &status, schedule, now);
            let deferred = due
                .as_ref()
                .and_then(|_| schedule::rotation_deferred_until(&status.previous_keys));
            let (phase, deliver) = match (due, deferred) {
                (Some(_), Some(until)) => (deferred_phase(status.previous_keys.len(), until), None),
                (Some(cause), None) => {
                    let cause = DeliveryCause::Rotation(cause);
                    (delivering_phase(api_key, &cause), Some(cause))
                }
                (None, _) => (ready_phase(api_key), None),
            };
            let status = settle(api_key, status, schedule, &phase, now);
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
            }
        }
    }
}

/// Step 1 of a delivery: `status` (settled) with `record` as the pending key.
pub fn pending_status(status: &ApiKeyStatus, record: KeyRecord, cause: &DeliveryCause) -> ApiKeyStatus {
    let mut next = status.clone();
    next.pending_rotate_request = match cause {
        DeliveryCause::Rotation(RotationCause::Requested(value)) => Some(value.clone()),
        _ => None,
    };
    next.pending_key = Some(record);
    next
}

/// The stamp step 2 writes on the Secret with the pending key of `status`.
pub fn pending_stamp(status: &ApiKeyStatus) -> Option<SecretStamp> {
    stamp_for(status, &status.pending_key.as_ref()?.sha256)
}

/// Step 3 of a delivery (or its completion after a crash): the pending key
/// becomes current; the old current key stays valid until `now + grace`.
pub fn promote(status: &ApiKeyStatus, schedule: &Schedule, now: Timestamp) -> ApiKeyStatus {
    let mut next = status.clone();
    let Some(pending) = next.pending_key.take() else {
        return next;
    };
    let stamp = stamp_for(status, &pending.sha256).expect("pending key has a stamp");
    if let Some(old) = next.current_key.take().filter(|old| old.sha256 != pending.sha256) {
        let until = now.checked_add(schedule.grace).unwrap_or(now);
        schedule::retire(&mut next.previous_keys, old, until);
    }
    next.current_key = Some(pending);
    next.revision = Some(stamp.revision);
    next.last_rotated_at = Some(Time(stamp.rotated_at));
    if let Some(request) = next.pending_rotate_request.take() {
        next.last_rotate_request = Some(request);
    }
    next
}

/// Step 3 as the full status to write.
pub fn delivered_status(
    api_key: &ApiKey,
    pending: &ApiKeyStatus,
    schedule: &Schedule,
    now: Timestamp,
) -> ApiKeyStatus {
    let promoted = promote(pending, schedule, now);
    settle(api_key, promoted, schedule, &ready_phase(api_key), now)
}

/// Fills the fields every status write carries: generation, Secret name,
/// revision and rotation time defaults, the schedule, `previousKeys` without
/// ended grace periods, the conditions for `phase`; never `lastUsedAt` (the
/// auth server owns it).
pub fn settle(
    api_key: &ApiKey,
    mut status: ApiKeyStatus,
    schedule: &Schedule,
    phase: &Phase,
    now: Timestamp,
) -> ApiKeyStatus {
    let generation = api_key.metadata.generation;
    status.observed_generation = generation;
    status.secret_name = Some(api_key.secret_name());
    if status.current_key.is_some() {
        status.revision = Some(delivered_count(&status));
        status.last_rotated_at = schedule::last_rotated_at(&status).map(Time);
    }
    status.next_rotation_at = match schedule::terminal(api_key, now) {
        Some(_) => None,
        None => schedule::next_rotation_at(&status, schedule).map(Time),
    };
    status.previous_keys = schedule::prune_ended(&status.previous_keys, now);
    status.last_used_at = None;
    conditions::apply_phase(&mut status.conditions, phase, generation, now);
    status
}

/// A status record for a freshly generated key.
pub fn record_for(key: &ApiKeyValue, now: Timestamp) -> KeyRecord {
    KeyRecord {
        id: key.key_id().to_owned(),
        sha256: key.sha256_hex(),
        issued_at: Time(now),
        valid_until: None,
    }
}

/// The Secret we want for `api_key` holding `key`, for Server-Side Apply.
pub fn desired_secret(api_key: &ApiKey, key: &ApiKeyValue, stamp: SecretStamp) -> Secret {
    let (labels, annotations) = desired_metadata(api_key, key, stamp);
    Secret {
        metadata: ObjectMeta {
            name: Some(api_key.secret_name()),
            namespace: api_key.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: api_key.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_owned(),
            ByteString(key.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

fn desired_metadata(
    api_key: &ApiKey,
    key: &ApiKeyValue,
    stamp: SecretStamp,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let template = api_key.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = template.annotations;
    annotations.insert(KEY_ID_ANNOTATION.into(), key.key_id().into());
    annotations.insert(REVISION_ANNOTATION.into(), stamp.revision.to_string());
    annotations.insert(ROTATED_AT_ANNOTATION.into(), rfc3339(stamp.rotated_at));
    (labels, annotations)
}

/// Whether the Secret's labels and annotations that `field_manager` owns are
/// exactly those we would apply now: a removed template entry must go, so a
/// subset check is not enough; `managedFields` says which ones are ours.
fn metadata_in_sync(
    api_key: &ApiKey,
    secret: &Secret,
    key: &ApiKeyValue,
    stamp: SecretStamp,
    field_manager: &str,
) -> bool {
    let (labels, annotations) = desired_metadata(api_key, key, stamp);
    let (owned_labels, owned_annotations) = owned_metadata_keys(secret, field_manager);
    let same = |want: &BTreeMap<String, String>,
                owned: &BTreeSet<String>,
                have: &Option<BTreeMap<String, String>>| {
        want.keys().cloned().collect::<BTreeSet<_>>() == *owned
            && want
                .iter()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    same(&labels, &owned_labels, &secret.metadata.labels)
        && same(&annotations, &owned_annotations, &secret.metadata.annotations)
        && secret.type_.as_deref() == Some("Opaque")
}

/// Label and annotation keys that `field_manager` applied, read from the
/// Secret's `managedFields` (`f:metadata` → `f:labels` → `f:<key>`).
pub fn owned_metadata_keys(secret: &Secret, field_manager: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut labels = BTreeSet::new();
    let mut annotations = BTreeSet::new();
    for entry in secret.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() != Some(field_manager) || entry.operation.as_deref() != Some("Apply") {
            continue;
        }
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let meta = fields.0.get("f:metadata");
        for (section, into) in [("f:labels", &mut labels), ("f:annotations", &mut annotations)] {
            if let Some(map) = meta.and_then(|m| m.get(section)).and_then(|s| s.as_object()) {
                into.extend(map.keys().filter_map(|k| k.strip_prefix("f:")).map(str::to_owned));
            }
        }
    }
    (labels, annotations)
}

/// Whether `status` says Stalled with this reason already (an Event is
/// published once, on the way in).
fn stalled_with(status: &ApiKeyStatus, reason: &str) -> bool {
    conditions::find(&status.conditions, conditions::STALLED)
        .is_some_and(|c| c.status == "True" && c.reason == reason)
}

fn message_of(phase: &Phase) -> String {
    match phase {
        Phase::Ready { message, .. }
        | Phase::Reconciling { message, .. }
        | Phase::Stalled { message, .. } => message.clone(),
    }
}

/// The phase for an ApiKey whose Secret holds its current key.
pub fn ready_phase(api_key: &ApiKey) -> Phase {
    Phase::ready(
        "KeyIssued",
        format!("Secret {} holds the current key", api_key.secret_name()),
    )
}

/// The phase while a new key is being delivered (between writes 1 and 3).
pub fn delivering_phase(api_key: &ApiKey, cause: &DeliveryCause) -> Phase {
    let secret = api_key.secret_name();
    match cause {
        DeliveryCause::Issue(_) => {
            Phase::reconciling("IssuingKey", format!("writing a new key into Secret {secret}"))
        }
        DeliveryCause::Rotation(_) => Phase::reconciling(
            "RotatingKey",
            format!("writing the next key into Secret {secret}; the current one stays valid"),
        ),
    }
}

/// The phase of a rotation that waits for a free place in `previousKeys`.
pub fn deferred_phase(in_grace: usize, until: Timestamp) -> Phase {
    Phase::reconciling(
        "RotationDeferred",
        format!(
            "a rotation is due, but {in_grace} replaced keys are still in their grace period \
             (latchkey keeps at most {}); it runs when the first of them ends, at {}",
            schedule::MAX_PREVIOUS_KEYS,
            rfc3339(until)
        ),
    )
}

fn terminal_reason(terminal: Terminal) -> &'static str {
    match terminal {
        Terminal::Revoked => "Revoked",
        Terminal::Expired => "Expired",
    }
}

/// The phase of a revoked or expired ApiKey.
pub fn terminal_phase(api_key: &ApiKey, terminal: Terminal) -> Phase {
    let message = match terminal {
        Terminal::Revoked => {
            "spec.revoked is true: no key of this ApiKey is valid and no new key is issued; \
             revocation is permanent, create a new ApiKey for a new key"
                .to_owned()
        }
        Terminal::Expired => format!(
            "spec.expiresAt ({}) has passed: no key of this ApiKey is valid and it is not rotated any more; \
             set a later spec.expiresAt or create a new ApiKey",
            api_key
                .spec
                .expires_at
                .as_ref()
                .map(|t| rfc3339(t.0))
                .unwrap_or_default()
        ),
    };
    Phase::stalled(terminal_reason(terminal), message)
}

fn terminal_event(before: &ApiKeyStatus, terminal: Terminal) -> Note {
    let ids: Vec<&str> = before
        .current_key
        .iter()
        .chain(before.pending_key.iter())
        .chain(before.previous_keys.iter())
        .map(|k| k.id.as_str())
        .collect();
    let keys = if ids.is_empty() {
        "no key had been issued".to_owned()
    } else {
        format!("keys {} are no longer valid", ids.join(", "))
    };
    let what = match terminal {
        Terminal::Revoked => "ApiKey revoked",
        Terminal::Expired => "ApiKey expired (spec.expiresAt has passed)",
    };
    Note {
        warning: true,
        reason: terminal_reason(terminal),
        message: format!("{what}: {keys}"),
    }
}

/// The phase for an ApiKey whose Secret name is taken by someone else.
pub fn conflict_phase(api_key: &ApiKey) -> Phase {
    Phase::stalled(
        "SecretConflict",
        format!(
            "Secret {} already exists and is not owned by this ApiKey; latchkey leaves it alone. \
             Set spec.secretName to an unused name (create a new ApiKey), or delete that Secret",
            api_key.secret_name()
        ),
    )
}

/// The Event for a delivered key: `pending` is the status of write 1,
/// `delivered` that of write 3. Key ids only, never a key or hash.
pub fn delivery_event(
    cause: &DeliveryCause,
    api_key: &ApiKey,
    pending: &ApiKeyStatus,
    delivered: &ApiKeyStatus,
) -> Note {
    let secret = api_key.secret_name();
    let key_id = delivered
        .current_key
        .as_ref()
        .map(|k| k.id.as_str())
        .unwrap_or_default();
    let grace = pending
        .current_key
        .as_ref()
        .and_then(|old| delivered.previous_keys.iter().find(|k| k.sha256 == old.sha256))
        .and_then(|k| Some((k.id.as_str(), k.valid_until.as_ref()?)))
        .map(|(id, until)| format!("; key {id} stays valid until {}", rfc3339(until.0)))
        .unwrap_or_default();
    match cause {
        DeliveryCause::Issue(IssueReason::FirstKey) => Note {
            warning: false,
            reason: "KeyIssued",
            message: format!("issued key {key_id} into Secret {secret}"),
        },
        DeliveryCause::Issue(IssueReason::SecretMissing) => Note {
            warning: true,
            reason: "SecretRecreated",
            message: format!("Secret {secret} was missing; re-created it with a new key {key_id}{grace}"),
        },
        DeliveryCause::Issue(IssueReason::KeyMismatch) => Note {
            warning: true,
            reason: "KeyReplaced",
            message: format!(
                "Secret {secret} held a key that status does not list (changed by someone else); \
                 replaced it with a new key {key_id}{grace}"
            ),
        },
        DeliveryCause::Rotation(cause) => {
            let why = match cause {
                RotationCause::Scheduled => "scheduled rotation",
                RotationCause::Requested(_) => "rotation requested by the latchkey.dev/rotate annotation",
            };
            Note {
                warning: false,
                reason: "KeyRotated",
                message: format!("{why}: Secret {secret} now holds key {key_id}{grace}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeySpec, SecretTemplate};
    use crate::fixtures::t;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    const MANAGER: &str = "latchkey";

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn api_key() -> ApiKey {
        let mut ak = ApiKey::new(
            "billing",
            ApiKeySpec {
                secret_template: Some(SecretTemplate {
                    labels: BTreeMap::from([("team".into(), "payments".into())]),
                    annotations: BTreeMap::from([("reloader.stakater.com/match".into(), "true".into())]),
                }),
                scopes: vec!["orders:read".into()],
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some("shop".into());
        ak.metadata.uid = Some("uid-1".into());
        ak.metadata.generation = Some(3);
        ak.metadata.labels = Some(BTreeMap::from([(
            "argocd.argoproj.io/instance".into(),
            "shop".into(),
        )]));
        ak
    }

    /// The stamp our apply would put on the Secret holding `key`.
    fn stamp(ak: &ApiKey, key: &ApiKeyValue) -> SecretStamp {
        ak.status
            .as_ref()
            .and_then(|s| stamp_for(s, &key.sha256_hex()))
            .unwrap_or(SecretStamp {
                revision: 1,
                rotated_at: now(),
            })
    }

    /// The Secret as the API server would return it after our apply.
    fn applied(ak: &ApiKey, key: &ApiKeyValue) -> Secret {
        applied_with(ak, key, stamp(ak, key))
    }

    fn applied_with(ak: &ApiKey, key: &ApiKeyValue, stamp: SecretStamp) -> Secret {
        let mut s = desired_secret(ak, key, stamp);
        let field = |m: &BTreeMap<String, String>| {
            serde_json::Value::Object(
                m.keys()
                    .map(|k| (format!("f:{k}"), serde_json::json!({})))
                    .collect(),
            )
        };
        s.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(MANAGER.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:metadata": {
                    "f:labels": field(s.metadata.labels.as_ref().unwrap()),
                    "f:annotations": field(s.metadata.annotations.as_ref().unwrap()),
                }
            }))),
            ..Default::default()
        }]);
        s
    }

    fn with_status(mut ak: ApiKey, current: Option<&ApiKeyValue>, pending: Option<&ApiKeyValue>) -> ApiKey {
        ak.status = Some(ApiKeyStatus {
            current_key: current.map(|k| record_for(k, now())),
            pending_key: pending.map(|k| record_for(k, now())),
            ..Default::default()
        });
        ak
    }

    #[test]
    fn desired_secret_holds_the_key_template_and_owner_but_not_the_apikeys_labels() {
        let ak = api_key();
        let key = ApiKeyValue::generate();
        let s = desired_secret(&ak, &key, stamp(&ak, &key));
        assert_eq!(s.metadata.name.as_deref(), Some("billing"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
        let data = s.data.unwrap();
        assert_eq!(data[SECRET_DATA_KEY].0, key.expose().as_bytes());
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert!(!labels.contains_key("argocd.argoproj.io/instance"));
        let annotations = s.metadata.annotations.unwrap();
        assert_eq!(annotations[KEY_ID_ANNOTATION], key.key_id());
        assert_eq!(annotations[REVISION_ANNOTATION], "1");
        assert_eq!(annotations[ROTATED_AT_ANNOTATION], "2027-01-15T08:00:00Z");
        assert_eq!(annotations["reloader.stakater.com/match"], "true");
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.kind, "ApiKey");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn secret_name_defaults_to_the_apikeys_name_and_follows_the_spec() {
        let mut ak = api_key();
        assert_eq!(ak.secret_name(), "billing");
        ak.spec.secret_name = Some("billing-key".into());
        let key = ApiKeyValue::generate();
        let s = desired_secret(&ak, &key, stamp(&ak, &key));
        assert_eq!(s.metadata.name.as_deref(), Some("billing-key"));
    }

    #[test]
    fn first_reconcile_issues_a_key() {
        let ak = api_key();
        let obs = observe_secret(&ak, None, MANAGER);
        assert_eq!(obs, SecretObservation::Missing);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Issue(IssueReason::FirstKey)
        );
    }

    #[test]
    fn a_synced_secret_with_the_current_key_is_kept_untouched() {
        let key = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&key), None);
        let secret = applied(&ak, &key);
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Keep {
                key,
                refresh_metadata: false
            }
        );
    }

    #[test]
    fn a_changed_template_refreshes_metadata_but_keeps_the_key() {
        let key = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&key), None);
        let secret = applied(&ak, &key);
        // The user removes a template label: we own it, so it must go.
        let mut changed = ak.clone();
        changed.spec.secret_template.as_mut().unwrap().labels.clear();
        let obs = observe_secret(&changed, Some(&secret), MANAGER);
        assert_eq!(
            decide(changed.status.as_ref(), &obs),
            KeyDecision::Keep {
                key: key.clone(),
                refresh_metadata: true
            }
        );
        // Someone else edits a label we own.
        let mut edited = secret.clone();
        edited
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "other".into());
        let obs = observe_secret(&ak, Some(&edited), MANAGER);
        assert!(matches!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Keep {
                refresh_metadata: true,
                ..
            }
        ));
        // A label someone else added is theirs: no refresh.
        let mut extra = secret;
        extra
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("other".into(), "x".into());
        let obs = observe_secret(&ak, Some(&extra), MANAGER);
        assert!(matches!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Keep {
                refresh_metadata: false,
                ..
            }
        ));
    }

    #[test]
    fn a_deleted_secret_gets_a_new_key() {
        let key = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&key), None);
        let obs = observe_secret(&ak, None, MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Issue(IssueReason::SecretMissing)
        );
    }

    #[test]
    fn a_key_changed_by_someone_else_is_replaced() {
        let key = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&key), None);
        let mut secret = applied(&ak, &key);
        let other = ApiKeyValue::generate();
        secret.data.as_mut().unwrap().insert(
            SECRET_DATA_KEY.into(),
            ByteString(other.expose().as_bytes().to_vec()),
        );
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Issue(IssueReason::KeyMismatch)
        );
        // Garbage instead of a key: same.
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(SECRET_DATA_KEY.into(), ByteString(b"hunter2".to_vec()));
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Issue(IssueReason::KeyMismatch)
        );
    }

    #[test]
    fn a_foreign_secret_is_a_conflict() {
        let ak = api_key();
        let mut secret = applied(&ak, &ApiKeyValue::generate());
        secret.metadata.owner_references = None;
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(obs, SecretObservation::Foreign);
        assert_eq!(decide(None, &obs), KeyDecision::Conflict);
        // Owned by another ApiKey of the same name (a deleted and re-created one).
        let mut other = applied(&ak, &ApiKeyValue::generate());
        other.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-old".into();
        assert_eq!(
            observe_secret(&ak, Some(&other), MANAGER),
            SecretObservation::Foreign
        );
    }

    #[test]
    fn crash_after_status_before_secret_drops_the_pending_key() {
        // Status got the pending key, the Secret still holds the current one.
        let current = ApiKeyValue::generate();
        let pending = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&current), Some(&pending));
        let secret = applied(&ak, &current);
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Keep {
                key: current,
                refresh_metadata: false
            }
        );
    }

    #[test]
    fn crash_after_secret_before_status_promotes_the_pending_key() {
        let current = ApiKeyValue::generate();
        let pending = ApiKeyValue::generate();
        let ak = with_status(api_key(), Some(&current), Some(&pending));
        let secret = applied(&ak, &pending);
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Promote {
                key: pending,
                refresh_metadata: false
            }
        );
    }

    #[test]
    fn first_key_crash_between_writes_is_promoted_too() {
        let pending = ApiKeyValue::generate();
        let ak = with_status(api_key(), None, Some(&pending));
        let secret = applied(&ak, &pending);
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert!(matches!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Promote { .. }
        ));
        // And if the Secret never got it, a new first key is issued.
        let obs = observe_secret(&ak, None, MANAGER);
        assert_eq!(
            decide(ak.status.as_ref(), &obs),
            KeyDecision::Issue(IssueReason::FirstKey)
        );
    }

    #[test]
    fn settled_status_records_keys_generation_ready_and_never_last_used_at() {
        let key = ApiKeyValue::generate();
        let mut ak = with_status(api_key(), Some(&key), None);
        ak.status.as_mut().unwrap().last_used_at = Some(Time(now()));
        let secret = applied(&ak, &key);
        let p = plan(
            &ak,
            &observe_secret(&ak, Some(&secret), MANAGER),
            &Schedule::default(),
            now(),
        );
        let status = p.status;
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.secret_name.as_deref(), Some("billing"));
        assert_eq!(status.revision, Some(1));
        assert_eq!(status.last_used_at, None, "lastUsedAt belongs to the auth server");
        let current = status.current_key.as_ref().unwrap();
        assert_eq!(current.sha256, key.sha256_hex());
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains(key.expose()));
    }

    // ---- The lifecycle, simulated: the API server is two variables. ----

    /// The ApiKey and its Secret, as the API server holds them.
    struct World {
        ak: ApiKey,
        secret: Option<Secret>,
        events: Vec<Note>,
    }

    /// Where a simulated controller dies during a delivery.
    #[derive(Clone, Copy, PartialEq)]
    enum Crash {
        Never,
        AfterPendingStatus,
        AfterSecret,
    }

    const H: i64 = 3600;

    impl World {
        fn new(spec_rotation: Option<(&str, Option<&str>)>) -> Self {
            let mut ak = api_key();
            ak.spec.rotation = spec_rotation.map(|(i, g)| crate::crd::Rotation {
                interval: i.into(),
                grace_period: g.map(Into::into),
            });
            Self {
                ak,
                secret: None,
                events: Vec::new(),
            }
        }

        fn status(&self) -> &ApiKeyStatus {
            self.ak.status.as_ref().unwrap()
        }

        fn secret_key(&self) -> Option<ApiKeyValue> {
            let s = self.secret.as_ref()?;
            ApiKeyValue::parse(std::str::from_utf8(&s.data.as_ref()?[SECRET_DATA_KEY].0).ok()?).ok()
        }

        fn annotation(&self, k: &str) -> String {
            self.secret
                .as_ref()
                .unwrap()
                .metadata
                .annotations
                .as_ref()
                .unwrap()[k]
                .clone()
        }

        /// The invariant: the Secret's key is valid per status (unless revoked/expired).
        fn check(&self, now: Timestamp) {
            if schedule::terminal(&self.ak, now).is_some() {
                return;
            }
            if let Some(key) = self.secret_key() {
                assert!(
                    crate::validity::is_valid_hash(&self.ak, &key.sha256_hex(), now),
                    "the Secret's key {} is not valid per status",
                    key.key_id()
                );
            }
        }

        fn set_status(&mut self, status: ApiKeyStatus, now: Timestamp) {
            self.ak.status = Some(status);
            self.check(now);
        }

        /// One reconcile; returns whether it wrote anything.
        fn reconcile(&mut self, now: Timestamp, crash: Crash) -> bool {
            let schedule = Schedule::of(&self.ak.spec).unwrap();
            let obs = observe_secret(&self.ak, self.secret.as_ref(), MANAGER);
            let p = plan(&self.ak, &obs, &schedule, now);
            let mut wrote = false;
            if let Some((key, stamp)) = &p.refresh_secret {
                self.secret = Some(applied_with(&self.ak, key, *stamp));
                wrote = true;
                self.check(now);
            }
            match &p.deliver {
                None => {
                    if self.ak.status.as_ref() != Some(&p.status) {
                        wrote = true;
                        self.set_status(p.status.clone(), now);
                    }
                }
                Some(cause) => {
                    let key = ApiKeyValue::generate();
                    let pending = pending_status(&p.status, record_for(&key, now), cause);
                    self.set_status(pending.clone(), now);
                    if crash == Crash::AfterPendingStatus {
                        return true;
                    }
                    let stamp = pending_stamp(&pending).unwrap();
                    self.secret = Some(applied_with(&self.ak, &key, stamp));
                    self.check(now);
                    if crash == Crash::AfterSecret {
                        return true;
                    }
                    let delivered = delivered_status(&self.ak, &pending, &schedule, now);
                    self.set_status(delivered.clone(), now);
                    self.events
                        .push(delivery_event(cause, &self.ak, &pending, &delivered));
                    wrote = true;
                }
            }
            self.events.extend(p.event);
            wrote
        }

        fn request(&mut self, value: &str) {
            self.ak.metadata.annotations =
                Some([(schedule::ROTATE_ANNOTATION.to_owned(), value.to_owned())].into());
        }

        fn previous_ids(&self) -> Vec<String> {
            self.status().previous_keys.iter().map(|k| k.id.clone()).collect()
        }

        fn reasons(&self) -> Vec<&str> {
            self.events.iter().map(|e| e.reason).collect()
        }
    }

    fn reason(status: &ApiKeyStatus, type_: &str) -> String {
        conditions::find(&status.conditions, type_)
            .unwrap()
            .reason
            .clone()
    }

    #[test]
    fn scheduled_rotation_keeps_the_old_key_in_grace_then_drops_it() {
        let mut w = World::new(Some(("1h", Some("10m"))));
        assert!(w.reconcile(t(0), Crash::Never));
        let first = w.status().current_key.clone().unwrap();
        assert_eq!(w.status().revision, Some(1));
        assert_eq!(w.status().next_rotation_at, Some(Time(t(H))));
        assert_eq!(w.annotation(REVISION_ANNOTATION), "1");
        // Before the deadline: nothing to do, nothing written.
        assert!(!w.reconcile(t(H / 2), Crash::Never));
        assert!(!w.reconcile(t(H - 1), Crash::Never));
        // At the deadline: one rotation.
        assert!(w.reconcile(t(H), Crash::Never));
        let s = w.status().clone();
        assert_ne!(s.current_key.as_ref().unwrap().id, first.id);
        assert_eq!(s.revision, Some(2));
        assert_eq!(s.last_rotated_at, Some(Time(t(H))));
        assert_eq!(s.next_rotation_at, Some(Time(t(2 * H))));
        assert_eq!(s.previous_keys.len(), 1);
        assert_eq!(s.previous_keys[0].id, first.id);
        assert_eq!(s.previous_keys[0].valid_until, Some(Time(t(H + 600))));
        assert!(s.pending_key.is_none());
        assert_eq!(w.annotation(REVISION_ANNOTATION), "2");
        assert_eq!(w.annotation(ROTATED_AT_ANNOTATION), rfc3339(t(H)));
        assert_eq!(
            w.annotation(KEY_ID_ANNOTATION),
            s.current_key.as_ref().unwrap().id
        );
        assert_eq!(w.reasons(), ["KeyIssued", "KeyRotated"]);
        assert!(w.events[1].message.contains("scheduled"));
        assert!(w.events[1].message.contains(&first.id));
        // During grace the old key is valid; at validUntil it is not, and it is pruned.
        assert!(crate::validity::is_valid_hash(&w.ak, &first.sha256, t(H + 599)));
        assert!(!crate::validity::is_valid_hash(&w.ak, &first.sha256, t(H + 600)));
        let wait = schedule::requeue_after(
            schedule::next_deadline(&w.ak, w.status(), &Schedule::of(&w.ak.spec).unwrap(), t(H)),
            t(H),
        );
        assert_eq!(
            wait,
            std::time::Duration::from_secs(600),
            "requeue at the end of grace"
        );
        assert!(!w.reconcile(t(H + 599), Crash::Never));
        assert!(w.reconcile(t(H + 600), Crash::Never));
        assert!(w.status().previous_keys.is_empty());
        assert!(!w.reconcile(t(H + 601), Crash::Never), "a resync writes nothing");
    }

    #[test]
    fn expiry_before_the_next_rotation_stalls_without_touching_the_secret() {
        let mut w = World::new(Some(("24h", None)));
        w.ak.spec.expires_at = Some(Time(t(H)));
        w.reconcile(t(0), Crash::Never);
        w.request("r1");
        w.reconcile(t(10), Crash::Never);
        assert_eq!(w.status().previous_keys.len(), 1);
        let secret_before = w.secret.clone();
        assert!(w.reconcile(t(H), Crash::Never));
        let s = w.status().clone();
        assert_eq!(reason(&s, conditions::STALLED), "Expired");
        assert!(conditions::is_true(&s.conditions, conditions::STALLED));
        assert!(!conditions::is_true(&s.conditions, conditions::READY));
        let msg = &conditions::find(&s.conditions, conditions::STALLED)
            .unwrap()
            .message;
        assert!(
            msg.contains("spec.expiresAt") && msg.contains("create a new ApiKey"),
            "{msg}"
        );
        assert!(s.previous_keys.is_empty());
        assert!(s.next_rotation_at.is_none());
        assert!(crate::validity::valid_keys(&w.ak, t(H)).is_empty());
        assert_eq!(w.secret, secret_before, "the Secret is left as it is");
        assert_eq!(w.reasons().last(), Some(&"Expired"));
        // Once: no second Event, no write.
        let n = w.events.len();
        assert!(!w.reconcile(t(2 * H), Crash::Never));
        assert_eq!(w.events.len(), n);
        // A deleted Secret is not re-created, a request not honoured.
        w.secret = None;
        w.request("r2");
        w.reconcile(t(3 * H), Crash::Never);
        assert!(w.secret.is_none());
        // A later expiresAt brings it back (the Secret gets a new key).
        w.ak.spec.expires_at = Some(Time(t(100 * H)));
        w.reconcile(t(3 * H), Crash::Never);
        assert!(conditions::is_true(&w.status().conditions, conditions::READY));
        assert!(w.secret.is_some());
    }

    #[test]
    fn revocation_empties_previous_keys_issues_nothing_and_says_so_once() {
        let mut w = World::new(Some(("1h", None)));
        w.reconcile(t(0), Crash::Never);
        w.request("r1");
        w.reconcile(t(10), Crash::Never);
        let current = w.status().current_key.clone().unwrap();
        w.ak.spec.revoked = Some(true);
        let secret_before = w.secret.clone();
        assert!(w.reconcile(t(20), Crash::Never));
        let s = w.status().clone();
        assert_eq!(reason(&s, conditions::STALLED), "Revoked");
        assert_eq!(reason(&s, conditions::READY), "Revoked");
        let msg = &conditions::find(&s.conditions, conditions::READY)
            .unwrap()
            .message;
        assert!(msg.contains("create a new ApiKey"), "{msg}");
        assert!(s.previous_keys.is_empty() && s.next_rotation_at.is_none());
        assert_eq!(s.current_key, Some(current));
        assert!(crate::validity::valid_keys(&w.ak, t(20)).is_empty());
        assert_eq!(w.secret, secret_before);
        let revoked: Vec<_> = w.events.iter().filter(|e| e.reason == "Revoked").collect();
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].warning);
        // Scheduled rotation time passes, a request, a deleted Secret: nothing.
        w.request("r2");
        w.secret = None;
        w.reconcile(t(10 * H), Crash::Never);
        assert!(w.secret.is_none());
        assert_eq!(w.events.iter().filter(|e| e.reason == "Revoked").count(), 1);
        assert!(!w.reconcile(t(11 * H), Crash::Never));
    }

    #[test]
    fn rotate_now_during_grace_is_honoured_once_per_value() {
        let mut w = World::new(None);
        w.reconcile(t(0), Crash::Never);
        assert_eq!(
            w.status().next_rotation_at,
            None,
            "no schedule without spec.rotation"
        );
        w.request("2026-11-24T07:00:00Z");
        assert!(w.reconcile(t(10), Crash::Never));
        assert_eq!(w.status().revision, Some(2));
        assert_eq!(
            w.status().last_rotate_request.as_deref(),
            Some("2026-11-24T07:00:00Z")
        );
        // The default grace without spec.rotation: 1h.
        assert_eq!(w.status().previous_keys[0].valid_until, Some(Time(t(10 + H))));
        assert!(w.events.last().unwrap().message.contains("requested"));
        // Same value again: nothing.
        assert!(!w.reconcile(t(20), Crash::Never));
        // A new value during the first key's grace: a second rotation; both old keys listed.
        w.request("again");
        assert!(w.reconcile(t(30), Crash::Never));
        assert_eq!(w.status().revision, Some(3));
        assert_eq!(w.status().previous_keys.len(), 2);
        let now = t(40);
        assert_eq!(crate::validity::valid_keys(&w.ak, now).len(), 3);
    }

    #[test]
    fn downtime_of_several_intervals_rotates_once() {
        let mut w = World::new(Some(("1h", None)));
        w.reconcile(t(0), Crash::Never);
        let now = t(10 * H + 5);
        assert!(w.reconcile(now, Crash::Never));
        assert_eq!(w.status().revision, Some(2));
        assert_eq!(w.status().next_rotation_at, Some(Time(t(11 * H + 5))));
        assert!(!w.reconcile(now, Crash::Never));
        assert!(!w.reconcile(t(10 * H + 60), Crash::Never));
        assert_eq!(w.status().revision, Some(2));
    }

    #[test]
    fn a_clock_going_backwards_causes_no_rotation_and_no_write() {
        let mut w = World::new(Some(("1h", None)));
        w.reconcile(t(0), Crash::Never);
        w.reconcile(t(H), Crash::Never);
        assert_eq!(w.status().revision, Some(2));
        for back in [t(H - 1), t(0), t(-100 * H)] {
            assert!(!w.reconcile(back, Crash::Never), "wrote at {back}");
            let s = Schedule::of(&w.ak.spec).unwrap();
            let wait = schedule::requeue_after(schedule::next_deadline(&w.ak, w.status(), &s, back), back);
            assert!(wait >= schedule::MIN_REQUEUE && wait <= super::super::RESYNC);
        }
        assert_eq!(w.status().revision, Some(2));
    }

    #[test]
    fn a_full_previous_list_defers_the_rotation_until_a_grace_ends() {
        let mut w = World::new(Some(("24h", Some("1h"))));
        w.reconcile(t(0), Crash::Never);
        for i in 0..schedule::MAX_PREVIOUS_KEYS as i64 {
            w.request(&format!("r{i}"));
            assert!(w.reconcile(t(10 + i), Crash::Never));
        }
        assert_eq!(w.status().previous_keys.len(), schedule::MAX_PREVIOUS_KEYS);
        let revision = w.status().revision;
        w.request("one-too-many");
        assert!(w.reconcile(t(100), Crash::Never));
        let s = w.status().clone();
        assert_eq!(s.revision, revision, "deferred, not rotated");
        assert_eq!(reason(&s, conditions::RECONCILING), "RotationDeferred");
        let msg = &conditions::find(&s.conditions, conditions::RECONCILING)
            .unwrap()
            .message;
        assert!(
            msg.contains("at most 8") && msg.contains(&rfc3339(t(10 + H))),
            "{msg}"
        );
        // Every key still valid: none was cut short.
        assert_eq!(crate::validity::valid_keys(&w.ak, t(100)).len(), 9);
        assert!(!w.reconcile(t(200), Crash::Never));
        // The first grace ends: it is pruned and the request honoured.
        assert!(w.reconcile(t(10 + H), Crash::Never));
        assert_eq!(w.status().revision, revision.map(|r| r + 1));
        assert_eq!(w.status().last_rotate_request.as_deref(), Some("one-too-many"));
        assert_eq!(w.status().previous_keys.len(), schedule::MAX_PREVIOUS_KEYS);
    }

    #[test]
    fn crash_after_the_pending_status_drops_it_and_retries_the_request_once() {
        let mut w = World::new(Some(("24h", None)));
        w.reconcile(t(0), Crash::Never);
        let first = w.status().current_key.clone().unwrap();
        w.request("r1");
        w.reconcile(t(10), Crash::AfterPendingStatus);
        assert_eq!(w.status().pending_rotate_request.as_deref(), Some("r1"));
        assert_eq!(w.status().last_rotate_request, None);
        let never_delivered = w.status().pending_key.clone().unwrap();
        // The restarted controller: the Secret still holds the first key.
        assert!(w.reconcile(t(20), Crash::Never));
        let s = w.status().clone();
        assert!(s.pending_key.is_none() && s.pending_rotate_request.is_none());
        assert_ne!(s.current_key.as_ref().unwrap().sha256, never_delivered.sha256);
        assert!(!s.previous_keys.iter().any(|k| k.sha256 == never_delivered.sha256));
        assert_eq!(s.previous_keys.len(), 1);
        assert_eq!(s.previous_keys[0].sha256, first.sha256);
        assert_eq!(s.revision, Some(2));
        assert_eq!(s.last_rotate_request.as_deref(), Some("r1"));
        assert!(!w.reconcile(t(30), Crash::Never), "honoured once");
    }

    #[test]
    fn crash_after_the_secret_promotes_with_the_same_bookkeeping() {
        let mut w = World::new(Some(("24h", Some("30m"))));
        w.reconcile(t(0), Crash::Never);
        let first = w.status().current_key.clone().unwrap();
        w.request("r1");
        w.reconcile(t(10), Crash::AfterSecret);
        let delivered = w.status().pending_key.clone().unwrap();
        assert_eq!(w.annotation(REVISION_ANNOTATION), "2");
        // Restart a minute later.
        assert!(w.reconcile(t(70), Crash::Never));
        let s = w.status().clone();
        assert_eq!(s.current_key.as_ref().unwrap().sha256, delivered.sha256);
        assert_eq!(s.revision, Some(2));
        assert_eq!(s.last_rotated_at, Some(Time(t(10))));
        assert_eq!(s.next_rotation_at, Some(Time(t(10 + 24 * H))));
        assert_eq!(s.last_rotate_request.as_deref(), Some("r1"));
        assert_eq!(s.previous_keys[0].sha256, first.sha256);
        assert_eq!(s.previous_keys[0].valid_until, Some(Time(t(70 + 1800))));
        assert!(s.pending_key.is_none() && s.pending_rotate_request.is_none());
        assert_eq!(w.reasons().last(), Some(&"KeyRotated"));
        // The Secret's annotations already match: no Secret write, and nothing more.
        assert!(!w.reconcile(t(80), Crash::Never));
    }

    #[test]
    fn repeated_crashes_at_every_point_never_break_the_invariant() {
        let mut w = World::new(Some(("1h", Some("10m"))));
        w.reconcile(t(0), Crash::Never);
        let crashes = [Crash::AfterPendingStatus, Crash::AfterSecret, Crash::Never];
        for i in 0..60i64 {
            w.request(&format!("r{i}"));
            w.reconcile(t(100 + i * 120), crashes[(i % 3) as usize]);
            w.reconcile(t(100 + i * 120 + 1), Crash::Never);
            let s = w.status();
            assert!(s.pending_key.is_none());
            assert_eq!(s.last_rotate_request.as_deref(), Some(format!("r{i}").as_str()));
        }
        // Every request delivered exactly one key.
        assert_eq!(w.status().revision, Some(61));
    }

    #[test]
    fn a_repair_keeps_the_old_current_key_in_grace() {
        let mut w = World::new(Some(("24h", Some("1h"))));
        w.reconcile(t(0), Crash::Never);
        let first = w.status().current_key.clone().unwrap();
        w.secret = None;
        assert!(w.reconcile(t(10), Crash::Never));
        assert_eq!(w.status().revision, Some(2));
        assert_eq!(w.previous_ids(), vec![first.id]);
        assert_eq!(w.status().previous_keys[0].valid_until, Some(Time(t(10 + H))));
        assert_eq!(w.reasons().last(), Some(&"SecretRecreated"));
    }

    #[test]
    fn events_name_key_ids_never_keys() {
        let mut w = World::new(Some(("1h", None)));
        w.reconcile(t(0), Crash::Never);
        w.request("x");
        w.reconcile(t(5), Crash::Never);
        w.secret = None;
        w.reconcile(t(6), Crash::Never);
        w.ak.spec.revoked = Some(true);
        w.reconcile(t(7), Crash::Never);
        let key = w.secret_key().unwrap();
        for e in &w.events {
            assert!(!e.message.contains(key.expose()));
            assert!(!e.message.contains(&key.sha256_hex()), "{}", e.message);
            for k in w
                .status()
                .previous_keys
                .iter()
                .chain(w.status().current_key.iter())
            {
                assert!(!e.message.contains(&k.sha256));
            }
        }
        assert_eq!(
            w.reasons(),
            ["KeyIssued", "KeyRotated", "SecretRecreated", "Revoked"]
        );
    }
}
