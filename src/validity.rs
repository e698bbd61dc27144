//! Which keys of an ApiKey are valid at a given instant. This is the one rule
//! that the controller's status, the auth server and the tests share:
//!
//! - a revoked ApiKey (`spec.revoked: true`) has no valid key;
//! - after `spec.expiresAt` no key is valid;
//! - otherwise `currentKey` and `pendingKey` are valid (a pending key is
//!   recorded before the Secret receives it, so it must already be accepted),
//!   and every entry of `previousKeys` until its `validUntil`.
//!
//! Pure: the caller passes `now`.

use crate::crd::{ApiKey, KeyRecord};
use k8s_openapi::jiff::Timestamp;

/// A key that is valid now, and until when (`None`: until further notice).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidKey<'a> {
    pub record: &'a KeyRecord,
    pub valid_until: Option<Timestamp>,
}

/// Every key of `api_key` that is valid at `now`.
pub fn valid_keys(api_key: &ApiKey, now: Timestamp) -> Vec<ValidKey<'_>> {
    all_keys(api_key)
        .filter_map(|(record, until)| match until {
            Some(t) if t <= now => None,
            _ => Some(ValidKey {
                record,
                valid_until: until,
            }),
        })
        .collect()
}

/// Every key that status lists with the instant it stops being valid
/// (`None`: not before a rotation, revocation or expiry), whether or not that
/// instant has passed. A revoked ApiKey lists none. The auth server indexes
/// this and compares `valid_until` with the clock on each request, so grace
/// ends and expiry take effect without waiting for any write.
pub fn all_keys(api_key: &ApiKey) -> impl Iterator<Item = (&KeyRecord, Option<Timestamp>)> {
    let status = api_key.status.as_ref().filter(|_| !api_key.is_revoked());
    let expires_at = api_key.spec.expires_at.as_ref().map(|t| t.0);
    let earliest = move |record: &KeyRecord| match (record.valid_until.as_ref().map(|t| t.0), expires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    status
        .into_iter()
        .flat_map(|s| s.records())
        .map(move |record| (record, earliest(record)))
}

/// Whether the key with this SHA-256 (lower-case hex) is valid at `now`.
pub fn is_valid_hash(api_key: &ApiKey, sha256_hex: &str, now: Timestamp) -> bool {
    valid_keys(api_key, now)
        .iter()
        .any(|k| k.record.sha256 == sha256_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeySpec, ApiKeyStatus};
    use crate::fixtures::{record, t};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn api_key() -> ApiKey {
        let mut ak = ApiKey::new("k", ApiKeySpec::default());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(record("cur", None)),
            pending_key: Some(record("pen", None)),
            previous_keys: vec![record("old", Some(100))],
            ..Default::default()
        });
        ak
    }

    fn ids(ak: &ApiKey, now: Timestamp) -> Vec<&str> {
        valid_keys(ak, now).iter().map(|k| k.record.id.as_str()).collect()
    }

    #[test]
    fn current_pending_and_previous_in_grace_are_valid() {
        let ak = api_key();
        assert_eq!(ids(&ak, t(50)), ["cur", "pen", "old"]);
        assert!(is_valid_hash(&ak, "hash-old", t(99)));
        // Grace ends exactly at validUntil.
        assert_eq!(ids(&ak, t(100)), ["cur", "pen"]);
        assert!(!is_valid_hash(&ak, "hash-old", t(100)));
        assert!(!is_valid_hash(&ak, "hash-unknown", t(0)));
    }

    #[test]
    fn expiry_ends_every_key_and_caps_valid_until() {
        let mut ak = api_key();
        ak.spec.expires_at = Some(Time(t(60)));
        let keys = valid_keys(&ak, t(10));
        assert!(keys.iter().all(|k| k.valid_until == Some(t(60))));
        assert!(ids(&ak, t(60)).is_empty());
        // An expiry after a grace end leaves the grace end in place.
        ak.spec.expires_at = Some(Time(t(500)));
        let old = valid_keys(&ak, t(10))
            .into_iter()
            .find(|k| k.record.id == "old")
            .unwrap();
        assert_eq!(old.valid_until, Some(t(100)));
    }

    #[test]
    fn revocation_ends_every_key_at_once() {
        let mut ak = api_key();
        ak.spec.revoked = Some(true);
        assert!(ids(&ak, t(0)).is_empty());
        assert_eq!(all_keys(&ak).count(), 0);
        ak.spec.revoked = Some(false);
        assert_eq!(ids(&ak, t(0)).len(), 3);
    }
}
