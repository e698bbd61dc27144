//! Unit tests of the ApiKey plan.

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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(changed.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
    assert_eq!(key_decision(None, &obs), KeyDecision::Conflict);
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
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
        key_decision(ak.status.as_ref(), &obs),
        KeyDecision::Promote { .. }
    ));
    // And if the Secret never got it, a new first key is issued.
    let obs = observe_secret(&ak, None, MANAGER);
    assert_eq!(
        key_decision(ak.status.as_ref(), &obs),
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
    events: Vec<PlannedEvent>,
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
        if rotation::terminal(&self.ak, now).is_some() {
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
                let pending = pending_status(&self.ak, &p.status, record_for(&key, now), cause);
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
            Some([(rotation::ROTATE_ANNOTATION.to_owned(), value.to_owned())].into());
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
    let wait = rotation::requeue_after(
        rotation::next_deadline(&w.ak, w.status(), &Schedule::of(&w.ak.spec).unwrap(), t(H)),
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
        let wait = rotation::requeue_after(rotation::next_deadline(&w.ak, w.status(), &s, back), back);
        assert!(wait >= rotation::MIN_REQUEUE && wait <= super::super::RESYNC);
    }
    assert_eq!(w.status().revision, Some(2));
}

#[test]
fn a_full_previous_list_defers_the_rotation_until_a_grace_ends() {
    let mut w = World::new(Some(("24h", Some("1h"))));
    w.reconcile(t(0), Crash::Never);
    for i in 0..rotation::MAX_PREVIOUS_KEYS as i64 {
        w.request(&format!("r{i}"));
        assert!(w.reconcile(t(10 + i), Crash::Never));
    }
    assert_eq!(w.status().previous_keys.len(), rotation::MAX_PREVIOUS_KEYS);
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
    assert_eq!(w.status().previous_keys.len(), rotation::MAX_PREVIOUS_KEYS);
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
fn a_request_already_there_at_creation_is_answered_by_the_first_key() {
    let mut w = World::new(Some(("24h", None)));
    w.request("r1");
    assert!(w.reconcile(t(0), Crash::Never));
    assert_eq!(w.status().revision, Some(1));
    assert_eq!(w.status().last_rotate_request.as_deref(), Some("r1"));
    assert_eq!(w.reasons(), vec!["KeyIssued"]);
    // Nothing is left waiting for a wake-up the watch would not send.
    assert!(!w.reconcile(t(1), Crash::Never));
    // The same, interrupted after the Secret: the promotion records it.
    let mut w = World::new(Some(("24h", None)));
    w.request("r1");
    w.reconcile(t(0), Crash::AfterSecret);
    assert!(w.reconcile(t(5), Crash::Never));
    assert_eq!(w.status().last_rotate_request.as_deref(), Some("r1"));
    assert_eq!(w.status().revision, Some(1));
    assert!(!w.reconcile(t(6), Crash::Never));
}

#[test]
fn a_repair_answers_a_request_made_with_it() {
    let mut w = World::new(Some(("24h", Some("1h"))));
    w.reconcile(t(0), Crash::Never);
    w.secret = None;
    w.request("r1");
    assert!(w.reconcile(t(10), Crash::Never));
    assert_eq!(w.status().revision, Some(2), "one new key for both");
    assert_eq!(w.status().last_rotate_request.as_deref(), Some("r1"));
    assert!(!w.reconcile(t(11), Crash::Never));
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

#[test]
fn a_replaced_key_used_late_in_its_grace_warns_once_and_usage_is_never_applied() {
    let (cur, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
    let mut ak = with_status(api_key(), Some(&cur), None);
    let grace = Schedule::default().grace.as_secs();
    let until = now().as_second() + 100;
    let status = ak.status.as_mut().unwrap();
    let mut replaced = record_for(&old, now());
    replaced.valid_until = Some(Time(Timestamp::from_second(until).unwrap()));
    status.previous_keys.push(replaced);
    // The auth server's fields, as the fresh read shows them.
    status.key_usage.insert(
        old.key_id().into(),
        crate::crd::KeyUsage {
            last_used_at: Some(Time(Timestamp::from_second(until - grace / 4 + 1).unwrap())),
            allowed: 7,
            ..Default::default()
        },
    );
    status.retired_key_presented = Some(Default::default());
    let secret = applied(&ak, &cur);
    let obs = observe_secret(&ak, Some(&secret), MANAGER);
    let p = plan(&ak, &obs, &Schedule::default(), now());
    assert_eq!(p.in_use.len(), 1);
    assert_eq!(p.in_use[0].reason, "PreviousKeyStillInUse");
    assert!(p.in_use[0].message.contains(old.key_id()));
    assert!(!p.in_use[0].message.contains(&old.sha256_hex()) && !p.in_use[0].message.contains(old.expose()));
    assert_eq!(p.status.still_in_use_reported, vec![old.key_id().to_owned()]);
    assert!(
        p.status.key_usage.is_empty(),
        "the controller never applies the server's usage"
    );
    assert_eq!(p.status.retired_key_presented, None);
    // The next reconcile reads the recorded id: no second Event.
    let mut again = ak.clone();
    again.status.as_mut().unwrap().still_in_use_reported = p.status.still_in_use_reported.clone();
    let p = plan(&again, &obs, &Schedule::default(), now());
    assert!(p.in_use.is_empty());
    assert_eq!(p.status.still_in_use_reported, vec![old.key_id().to_owned()]);
    // Grace over: the key and its id go.
    let later = Timestamp::from_second(until).unwrap();
    let p = plan(&again, &obs, &Schedule::default(), later);
    assert!(p.status.previous_keys.is_empty() && p.status.still_in_use_reported.is_empty());
}

/// [`applied`] with the managedFields the API server records for the data:
/// our Apply owns `data.api-key`.
fn applied_with_data(ak: &ApiKey, key: &ApiKeyValue) -> Secret {
    let mut s = applied(ak, key);
    let entry = &mut s.metadata.managed_fields.as_mut().unwrap()[0];
    entry.fields_v1.as_mut().unwrap().0["f:data"] = serde_json::json!({ format!("f:{SECRET_DATA_KEY}"): {} });
    s
}

/// Someone else (`kubectl edit`) changed the data: the entry moved to them.
fn edited_by_someone(mut s: Secret) -> Secret {
    let fields = s.metadata.managed_fields.as_mut().unwrap();
    fields[0].fields_v1.as_mut().unwrap().0["f:data"] = serde_json::json!({});
    fields.push(ManagedFieldsEntry {
        manager: Some("kubectl-edit".into()),
        operation: Some("Update".into()),
        fields_v1: Some(FieldsV1(
            serde_json::json!({ "f:data": { format!("f:{SECRET_DATA_KEY}"): {} } }),
        )),
        ..Default::default()
    });
    s
}

#[test]
fn the_metadata_alone_settles_a_secret_that_holds_the_current_key_as_we_applied_it() {
    let key = ApiKeyValue::generate();
    let ak = with_status(api_key(), Some(&key), None);
    let secret = applied_with_data(&ak, &key);
    assert!(holds_current_key(&ak, &secret.metadata, MANAGER));
    // The decision from the metadata is the one the data gives, without a refresh.
    let schedule = Schedule::default();
    let unread = plan(&ak, &SecretObservation::HoldsCurrent, &schedule, now());
    let read = plan(
        &ak,
        &observe_secret(&ak, Some(&secret), MANAGER),
        &schedule,
        now(),
    );
    assert_eq!(unread, read);
    assert_eq!(unread.refresh_secret, None);
    assert_eq!(unread.deliver, None);
    assert_eq!(
        key_decision(ak.status.as_ref(), &SecretObservation::HoldsCurrent),
        KeyDecision::KeepUnread
    );
}

#[test]
fn the_data_is_read_whenever_the_metadata_does_not_prove_the_current_key() {
    let key = ApiKeyValue::generate();
    let other = ApiKeyValue::generate();
    let ak = with_status(api_key(), Some(&key), None);
    let secret = applied_with_data(&ak, &key);
    // A pending key (a delivery interrupted after step 1 or 2) is verified against the data.
    let pending = with_status(api_key(), Some(&key), Some(&other));
    assert!(!holds_current_key(&pending, &secret.metadata, MANAGER));
    // No status, or no current key.
    assert!(!holds_current_key(&api_key(), &secret.metadata, MANAGER));
    // The data was changed by someone else.
    assert!(!holds_current_key(
        &ak,
        &edited_by_someone(secret.clone()).metadata,
        MANAGER
    ));
    // Our Apply does not own the data (written before managedFields said so).
    assert!(!holds_current_key(&ak, &applied(&ak, &key).metadata, MANAGER));
    // The key-id annotation names another key.
    let mut renamed = secret.clone();
    renamed
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(KEY_ID_ANNOTATION.into(), other.key_id().into());
    assert!(!holds_current_key(&ak, &renamed.metadata, MANAGER));
    // Another revision, or a template entry that changed.
    let mut revised = secret.clone();
    revised
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(REVISION_ANNOTATION.into(), "7".into());
    assert!(!holds_current_key(&ak, &revised.metadata, MANAGER));
    let mut retemplated = ak.clone();
    retemplated.spec.secret_template = None;
    assert!(!holds_current_key(&retemplated, &secret.metadata, MANAGER));
    // Another ApiKey's Secret.
    let mut foreign = secret.clone();
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-2".into();
    assert!(!holds_current_key(&ak, &foreign.metadata, MANAGER));
}

#[test]
fn a_metadata_observation_never_issues_over_a_status_with_a_pending_key() {
    let key = ApiKeyValue::generate();
    let other = ApiKeyValue::generate();
    let pending = with_status(api_key(), Some(&key), Some(&other));
    // Only built when status has a current key and no pending one; if it
    // were, it would not keep (drop) the pending key unverified.
    assert_eq!(
        key_decision(pending.status.as_ref(), &SecretObservation::HoldsCurrent),
        KeyDecision::Issue(IssueReason::FirstKey)
    );
    assert_eq!(
        key_decision(None, &SecretObservation::HoldsCurrent),
        KeyDecision::Issue(IssueReason::FirstKey)
    );
}

#[test]
fn our_own_secret_write_is_recognised_once_and_only_with_our_data() {
    let key = ApiKeyValue::generate();
    let ak = with_status(api_key(), Some(&key), None);
    let secret = applied_with_data(&ak, &key);
    let revision = stamp(&ak, &key).revision;
    assert!(is_own_secret_write(
        &secret.metadata,
        key.key_id(),
        revision,
        MANAGER
    ));
    assert!(!is_own_secret_write(
        &secret.metadata,
        key.key_id(),
        revision + 1,
        MANAGER
    ));
    assert!(!is_own_secret_write(
        &secret.metadata,
        "someOtherId0",
        revision,
        MANAGER
    ));
    assert!(!is_own_secret_write(
        &edited_by_someone(secret).metadata,
        key.key_id(),
        revision,
        MANAGER
    ));
}

#[test]
fn a_cached_secret_keeps_what_the_ownership_checks_read_and_they_answer_the_same() {
    let entry = |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0))),
        fields_v1: Some(FieldsV1(fields)),
        ..Default::default()
    };
    let ours = entry(
        MANAGER,
        "Apply",
        serde_json::json!({
            "f:data": {"f:api-key": {}},
            "f:metadata": {
                "f:annotations": {"f:latchkey.dev/key-id": {}, "f:latchkey.dev/revision": {}},
                "f:labels": {"f:app.kubernetes.io/managed-by": {}},
                "f:ownerReferences": {"k:{\"uid\":\"5f0c6a4e-1c2d-4e3f-8a9b-0c1d2e3f4a5b\"}": {}}
            },
            "f:type": {}
        }),
    );
    let labels_by_hand = entry(
        "kubectl-label",
        "Update",
        serde_json::json!({"f:metadata": {"f:labels": {"f:team": {}}}}),
    );
    let data_by_hand = entry(
        "kubectl-edit",
        "Update",
        serde_json::json!({"f:data": {"f:api-key": {}}}),
    );
    for entries in [
        vec![ours.clone()],
        vec![ours.clone(), labels_by_hand.clone()],
        vec![ours.clone(), data_by_hand.clone()],
        vec![labels_by_hand, data_by_hand],
    ] {
        let full = ObjectMeta {
            managed_fields: Some(entries),
            ..Default::default()
        };
        let mut kept = full.clone();
        keep_read_managed_fields(&mut kept);
        assert_eq!(
            data_applied_only_by(&kept, MANAGER),
            data_applied_only_by(&full, MANAGER)
        );
        assert_eq!(
            owned_metadata_keys(&kept, MANAGER),
            owned_metadata_keys(&full, MANAGER)
        );
        let size = |m: &ObjectMeta| serde_json::to_string(m).unwrap().len();
        assert!(size(&kept) < size(&full), "{} < {}", size(&kept), size(&full));
    }
    let mut kept = ObjectMeta {
        managed_fields: Some(vec![ours]),
        ..Default::default()
    };
    keep_read_managed_fields(&mut kept);
    assert!(data_applied_only_by(&kept, MANAGER));
    let fields = &kept.managed_fields.unwrap()[0];
    assert_eq!(
        (fields.time.as_ref(), fields.manager.as_deref()),
        (None, Some(MANAGER))
    );
    let v = &fields.fields_v1.as_ref().unwrap().0;
    assert!(v.get("f:type").is_none() && v["f:metadata"].get("f:ownerReferences").is_none());
}
