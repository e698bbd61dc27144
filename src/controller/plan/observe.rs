//! What the Secret holds, as the reconciler sees it, and what to do about it.

use super::*;

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
    /// A Secret this ApiKey controls whose metadata alone (from the
    /// metadata-only watch, its data not read) shows that latchkey applied
    /// `currentKey` to it last and that nothing is to refresh: see
    /// [`holds_current_key`]. Only then is its data not read.
    HoldsCurrent,
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
    /// The Secret's metadata shows `currentKey`, in sync (its data unread):
    /// as `Keep` without a refresh.
    KeepUnread,
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
        rotated_at: rotation::last_rotated_at(status)?,
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
pub fn key_decision(status: Option<&ApiKeyStatus>, observation: &SecretObservation) -> KeyDecision {
    let current = status.and_then(|s| s.current_key.as_ref());
    let pending = status.and_then(|s| s.pending_key.as_ref());
    match observation {
        SecretObservation::Foreign => KeyDecision::Conflict,
        // Only built when status has a current key and no pending one; a
        // status that knows no key cannot trust the Secret (as below).
        SecretObservation::HoldsCurrent => match (current, pending) {
            (Some(_), None) => KeyDecision::KeepUnread,
            _ => KeyDecision::Issue(IssueReason::FirstKey),
        },
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

/// Whether the metadata of `api_key`'s Secret (from the metadata-only
/// watch) proves, without reading its data, that it holds `currentKey` with
/// everything latchkey would write: the ApiKey controls it; status has a
/// current key and no pending one (a pending key must be verified against
/// the data); the key-id, revision and rotated-at annotations are the
/// current key's stamp; the labels and annotations latchkey owns are
/// exactly the desired ones; and `field_manager`'s Apply owns the key's data
/// entry while no other manager owns any data (a change of the data by
/// anyone else moves its ownership there). Anything else: read the Secret.
pub fn holds_current_key(api_key: &ApiKey, secret: &ObjectMeta, field_manager: &str) -> bool {
    let Some(status) = api_key.status.as_ref() else {
        return false;
    };
    let (Some(current), None) = (&status.current_key, &status.pending_key) else {
        return false;
    };
    let uid = api_key.metadata.uid.as_deref();
    let controlled = secret
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
    let Some(stamp) = stamp_for(status, &current.sha256) else {
        return false;
    };
    controlled
        && metadata_in_sync_for(api_key, secret, &current.id, stamp, field_manager)
        && data_applied_only_by(secret, field_manager)
}

/// Whether `field_manager`'s Apply owns the Secret's key entry and no other
/// manager owns any of its data.
pub(super) fn data_applied_only_by(secret: &ObjectMeta, field_manager: &str) -> bool {
    let data_key = format!("f:{SECRET_DATA_KEY}");
    let mut ours = false;
    for entry in secret.managed_fields.iter().flatten() {
        let data = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:data"))
            .and_then(|d| d.as_object());
        let Some(data) = data else { continue };
        let mine =
            entry.manager.as_deref() == Some(field_manager) && entry.operation.as_deref() == Some("Apply");
        if !mine && !data.is_empty() {
            return false;
        }
        ours |= mine && data.contains_key(&data_key);
    }
    ours
}

/// Whether a watch event showing the Secret `secret` is the one latchkey's
/// own apply of the key `key_id` at `revision` caused: its key-id and
/// revision annotations are those, and `field_manager`'s Apply alone owns
/// its data (so nobody changed the data since).
pub fn is_own_secret_write(secret: &ObjectMeta, key_id: &str, revision: i64, field_manager: &str) -> bool {
    let annotation = |k: &str| {
        secret
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    annotation(KEY_ID_ANNOTATION) == Some(key_id)
        && annotation(REVISION_ANNOTATION) == Some(revision.to_string().as_str())
        && data_applied_only_by(secret, field_manager)
}
