//! Conditions (the phase of an ApiKey) and the Events of a reconcile.

use super::*;

/// Whether `status` says Stalled with this reason already (an Event is
/// published once, on the way in).
pub(super) fn stalled_with(status: &ApiKeyStatus, reason: &str) -> bool {
    conditions::find(&status.conditions, conditions::STALLED)
        .is_some_and(|c| c.status == "True" && c.reason == reason)
}

pub(super) fn message_of(phase: &Phase) -> String {
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
            rotation::MAX_PREVIOUS_KEYS,
            rfc3339(until)
        ),
    )
}

pub(super) fn terminal_reason(terminal: Terminal) -> &'static str {
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

pub(super) fn terminal_event(before: &ApiKeyStatus, terminal: Terminal) -> PlannedEvent {
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
    PlannedEvent {
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
) -> PlannedEvent {
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
        DeliveryCause::Issue(IssueReason::FirstKey) => PlannedEvent {
            warning: false,
            reason: "KeyIssued",
            message: format!("issued key {key_id} into Secret {secret}"),
        },
        DeliveryCause::Issue(IssueReason::SecretMissing) => PlannedEvent {
            warning: true,
            reason: "SecretRecreated",
            message: format!("Secret {secret} was missing; re-created it with a new key {key_id}{grace}"),
        },
        DeliveryCause::Issue(IssueReason::KeyMismatch) => PlannedEvent {
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
            PlannedEvent {
                warning: false,
                reason: "KeyRotated",
                message: format!("{why}: Secret {secret} now holds key {key_id}{grace}"),
            }
        }
    }
}
