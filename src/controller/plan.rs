//! Pure decisions of the ApiKey reconciler: what the Secret holds, what to
//! do about it, the Secret we want and the status we want. No client, no
//! clock: the caller passes `now` and the generated key.
//!
//! Write order when a key is issued (so that a crash between any two writes
//! leaves the Secret holding a key that status lists, and status listing no
//! key that is not in the Secret for longer than one reconcile):
//! 1. status: the new key as `pendingKey` (valid from now on);
//! 2. the Secret receives the key;
//! 3. status: `pendingKey` becomes `currentKey`.
//!
//! After a crash between 1 and 2 the Secret still holds `currentKey`, so the
//! next reconcile drops the pending key that never reached it; after a crash
//! between 2 and 3 the Secret holds `pendingKey`, which is promoted.

use crate::conditions::{self, Phase};
use crate::crd::{ApiKey, ApiKeyStatus, KeyRecord};
use crate::key::ApiKeyValue;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

/// The data key of the Secret that holds the API key.
pub const SECRET_DATA_KEY: &str = "api-key";
/// Label on every Secret latchkey writes (the controller watches only these).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "latchkey";
/// Annotation with the public id of the key the Secret holds.
pub const KEY_ID_ANNOTATION: &str = "latchkey.dev/key-id";

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
    let metadata_in_sync = match &key {
        Some(k) => metadata_in_sync(api_key, secret, k, field_manager),
        None => false,
    };
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
        SecretObservation::Missing => match (current, pending) {
            (None, None) => KeyDecision::Issue(IssueReason::FirstKey),
            _ => KeyDecision::Issue(IssueReason::SecretMissing),
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
pub fn desired_secret(api_key: &ApiKey, key: &ApiKeyValue) -> Secret {
    let (labels, annotations) = desired_metadata(api_key, key);
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
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let template = api_key.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = template.annotations;
    annotations.insert(KEY_ID_ANNOTATION.into(), key.key_id().into());
    (labels, annotations)
}

/// Whether the Secret's labels and annotations that `field_manager` owns are
/// exactly those we would apply now: a removed template entry must go, so a
/// subset check is not enough; `managedFields` says which ones are ours.
fn metadata_in_sync(api_key: &ApiKey, secret: &Secret, key: &ApiKeyValue, field_manager: &str) -> bool {
    let (labels, annotations) = desired_metadata(api_key, key);
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

/// The status to write, from the previous one and what happened.
pub fn next_status(
    api_key: &ApiKey,
    current: Option<KeyRecord>,
    pending: Option<KeyRecord>,
    phase: &Phase,
    now: Timestamp,
) -> ApiKeyStatus {
    let previous = api_key.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions;
    let generation = api_key.metadata.generation;
    conditions::apply_phase(&mut conditions, phase, generation, now);
    ApiKeyStatus {
        observed_generation: generation,
        secret_name: Some(api_key.secret_name()),
        current_key: current,
        pending_key: pending,
        conditions,
        ..previous
    }
}

/// The phase for an ApiKey whose Secret holds its current key.
pub fn ready_phase(api_key: &ApiKey) -> Phase {
    Phase::ready(
        "KeyIssued",
        format!("Secret {} holds the current key", api_key.secret_name()),
    )
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

/// Human words for an Event about a new key. Never the key.
pub fn issue_event(reason: IssueReason, api_key: &ApiKey, key_id: &str) -> (&'static str, String) {
    let secret = api_key.secret_name();
    match reason {
        IssueReason::FirstKey => ("KeyIssued", format!("issued key {key_id} into Secret {secret}")),
        IssueReason::SecretMissing => (
            "SecretRecreated",
            format!("Secret {secret} was missing; re-created it with a new key {key_id}"),
        ),
        IssueReason::KeyMismatch => (
            "KeyReplaced",
            format!(
                "Secret {secret} held a key that status does not list (changed by someone else); \
                 replaced it with a new key {key_id}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeySpec, SecretTemplate};
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

    /// The Secret as the API server would return it after our apply.
    fn applied(ak: &ApiKey, key: &ApiKeyValue) -> Secret {
        let mut s = desired_secret(ak, key);
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
        let s = desired_secret(&ak, &key);
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
        let s = desired_secret(&ak, &ApiKeyValue::generate());
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
        let mut secret = desired_secret(&ak, &ApiKeyValue::generate());
        secret.metadata.owner_references = None;
        let obs = observe_secret(&ak, Some(&secret), MANAGER);
        assert_eq!(obs, SecretObservation::Foreign);
        assert_eq!(decide(None, &obs), KeyDecision::Conflict);
        // Owned by another ApiKey of the same name (a deleted and re-created one).
        let mut other = desired_secret(&ak, &ApiKeyValue::generate());
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
            KeyDecision::Issue(IssueReason::SecretMissing)
        );
    }

    #[test]
    fn next_status_records_keys_generation_and_ready() {
        let key = ApiKeyValue::generate();
        let ak = api_key();
        let status = next_status(&ak, Some(record_for(&key, now())), None, &ready_phase(&ak), now());
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.secret_name.as_deref(), Some("billing"));
        let current = status.current_key.as_ref().unwrap();
        assert_eq!(current.id, key.key_id());
        assert_eq!(current.sha256, key.sha256_hex());
        assert_eq!(current.sha256.len(), 64);
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        // Serialized status carries no key material.
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains(key.expose()));
    }

    #[test]
    fn recomputing_an_unchanged_status_is_equal() {
        let key = ApiKeyValue::generate();
        let mut ak = api_key();
        let s1 = next_status(&ak, Some(record_for(&key, now())), None, &ready_phase(&ak), now());
        ak.status = Some(s1.clone());
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        let s2 = next_status(&ak, s1.current_key.clone(), None, &ready_phase(&ak), later);
        assert_eq!(s1, s2, "a resync must not produce a status write");
    }

    #[test]
    fn events_name_the_key_id_never_the_key() {
        let ak = api_key();
        let key = ApiKeyValue::generate();
        for reason in [
            IssueReason::FirstKey,
            IssueReason::SecretMissing,
            IssueReason::KeyMismatch,
        ] {
            let (_, note) = issue_event(reason, &ak, key.key_id());
            assert!(note.contains(key.key_id()));
            assert!(!note.contains(key.expose()));
        }
    }
}
