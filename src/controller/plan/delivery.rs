//! The statuses of the three writes of a delivery (pending, Secret, promoted), and the fields every status write carries.

use super::*;

/// Step 1 of a delivery: `status` (settled) with `record` as the pending key.
///
/// A first key or a repair also answers a rotate-now request not yet
/// honoured: the key it delivers is new. Otherwise a request already on the
/// ApiKey when the controller first saw it (created with the annotation, or
/// annotated before the controller's watch started) would stay unanswered
/// until the next resync: the watch wakes the reconciler on annotation
/// changes, and that annotation had not changed.
pub fn pending_status(
    api_key: &ApiKey,
    status: &ApiKeyStatus,
    record: KeyRecord,
    cause: &DeliveryCause,
) -> ApiKeyStatus {
    let mut next = status.clone();
    next.pending_rotate_request = match cause {
        DeliveryCause::Rotation(RotationCause::Requested(value)) => Some(value.clone()),
        DeliveryCause::Issue(_) => rotation::rotate_request(api_key, status),
        // A request wins over the schedule (`rotation_due`): none is waiting.
        DeliveryCause::Rotation(RotationCause::Scheduled) => None,
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
        rotation::retire(&mut next.previous_keys, old, until);
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
    complete_status(api_key, promoted, schedule, &ready_phase(api_key), now)
}

/// Fills the fields every status write carries: generation, Secret name,
/// revision and rotation time defaults, the schedule, `previousKeys` without
/// ended grace periods (and their `stillInUseReported` ids), the conditions
/// for `phase`; never the usage fields (the auth server owns them).
pub fn complete_status(
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
        status.last_rotated_at = rotation::last_rotated_at(&status).map(Time);
    }
    status.next_rotation_at = match rotation::terminal(api_key, now) {
        Some(_) => None,
        None => rotation::next_rotation_at(&status, schedule).map(Time),
    };
    status.previous_keys = rotation::prune_ended(&status.previous_keys, now);
    let previous = &status.previous_keys;
    status
        .still_in_use_reported
        .retain(|id| previous.iter().any(|k| k.id == *id));
    let mut status = status.without_server_fields();
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
