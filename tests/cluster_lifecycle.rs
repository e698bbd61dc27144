//! The key lifecycle against the real local control plane: rotate-now with a
//! grace period, revocation, expiry, the CEL bounds, and a crash test that
//! SIGKILLs the controller at random moments during forced rotations.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::ListParams;
use latchkey::conditions;
use latchkey::crd::ApiKey;
use latchkey::validity;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn manifest(ns: &str, name: &str, extra_spec: &str) -> String {
    api_key_manifest(ns, name, &format!("  scopes: [\"orders:read\"]\n{extra_spec}"))
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> &'a str {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .unwrap_or_default()
}

impl Scenario {
    async fn count_events(&self, name: &str, reason: &str) -> usize {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .map(|e| e.deprecated_count.unwrap_or(1).max(1) as usize)
            .sum()
    }
}

fn stalled_reason(ak: &ApiKey) -> Option<(String, String)> {
    let c = conditions::find(&ak.status.as_ref()?.conditions, conditions::STALLED)?;
    (c.status == "True").then(|| (c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn rotate_now_adds_a_key_and_the_old_one_stays_valid_until_its_valid_until() {
    let s = Scenario::new("lc-rotate").await;
    apply(&manifest(
        &s.ns.name,
        "svc",
        "  rotation: {interval: 720h, gracePeriod: 30s}\n",
    ));
    let (ak1, secret1) = s.settled("svc", "first key", |_| true).await;
    let first = ak1.status.as_ref().unwrap().current_key.clone().unwrap();
    let status1 = ak1.status.as_ref().unwrap();
    assert_eq!(status1.revision, Some(1));
    let next = status1.next_rotation_at.as_ref().unwrap().0;
    let last = status1.last_rotated_at.as_ref().unwrap().0;
    assert_eq!(next.duration_since(last), SignedDuration::from_hours(720));
    assert_eq!(annotation(&secret1, "latchkey.dev/revision"), "1");
    assert_eq!(annotation(&secret1, "latchkey.dev/key-id"), first.id);

    s.request_rotation("svc", "2026-11-24T07:00:00Z").await;
    let (ak2, secret2) = s
        .settled("svc", "a rotated key", |ak| {
            ak.status.as_ref().unwrap().last_rotate_request.as_deref() == Some("2026-11-24T07:00:00Z")
        })
        .await;
    let status2 = ak2.status.as_ref().unwrap();
    let current = status2.current_key.as_ref().unwrap();
    assert_ne!(current.sha256, first.sha256);
    assert_eq!(status2.revision, Some(2));
    assert_eq!(annotation(&secret2, "latchkey.dev/revision"), "2");
    assert_eq!(annotation(&secret2, "latchkey.dev/key-id"), current.id);
    let rotated_at: Timestamp = annotation(&secret2, "latchkey.dev/rotated-at").parse().unwrap();
    assert_eq!(Some(rotated_at), status2.last_rotated_at.as_ref().map(|t| t.0));
    // The old key is listed with its validUntil, and valid until then.
    let old = status2
        .previous_keys
        .iter()
        .find(|k| k.sha256 == first.sha256)
        .expect("the old key stays listed");
    let until = old.valid_until.as_ref().unwrap().0;
    let grace = until.duration_since(rotated_at);
    assert!(
        grace >= SignedDuration::from_secs(30) && grace <= SignedDuration::from_secs(35),
        "grace {grace:?}"
    );
    let now = Timestamp::now();
    assert!(now < until);
    assert!(validity::is_valid_hash(&ak2, &first.sha256, now));
    assert!(validity::is_valid_hash(&ak2, &current.sha256, now));
    let event = s.wait_for_event("svc", "KeyRotated", "Normal").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("requested") && note.contains(&first.id), "{note}");
    assert!(!note.contains(&first.sha256) && !note.contains(&current.sha256));

    // The same value again changes nothing.
    s.request_rotation("svc", "2026-11-24T07:00:00Z").await;
    // After validUntil the old key is not valid, and status drops it (the
    // controller requeues at that deadline).
    let ak3 = eventually(WAIT, "the ended grace pruned from status", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        ak.status.as_ref()?.previous_keys.is_empty().then_some(ak)
    })
    .await;
    assert!(Timestamp::now() >= until);
    assert!(!validity::is_valid_hash(&ak3, &first.sha256, Timestamp::now()));
    assert!(!validity::is_valid_hash(&ak2, &first.sha256, Timestamp::now()));
    assert_eq!(
        ak3.status.as_ref().unwrap().revision,
        Some(2),
        "one rotation per value"
    );
    // Nothing carries a key or hash into Events or logs.
    let events = kubectl_ok(&["get", "events", "-n", &s.ns.name, "-o", "yaml"]);
    let log = s.controller.log_text();
    for hash in [&first.sha256, &current.sha256] {
        assert!(!events.contains(hash.as_str()) && !log.contains(hash.as_str()));
    }
}

#[tokio::test]
async fn revocation_ends_every_key_within_a_second_is_reported_and_is_one_way() {
    let s = Scenario::new("lc-revoke").await;
    apply(&manifest(&s.ns.name, "svc", ""));
    // A request the controller sees before the first key is answered by it
    // (no previous key): ask once the first key is there.
    s.settled("svc", "the first key", |_| true).await;
    s.request_rotation("svc", "r1").await;
    let (_, secret) = s
        .settled("svc", "a rotated key", |ak| {
            ak.status.as_ref().unwrap().previous_keys.len() == 1
        })
        .await;
    let started = Instant::now();
    revoke(&s.api_keys, "svc").await;
    let fresh = s.api_keys.get("svc").await.unwrap();
    let elapsed = started.elapsed();
    assert!(validity::valid_keys(&fresh, Timestamp::now()).is_empty());
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    println!("revocation: no valid key {elapsed:?} after the patch was sent");

    let ak = eventually(WAIT, "Stalled=True reason Revoked", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        (stalled_reason(&ak)?.0 == "Revoked").then_some(ak)
    })
    .await;
    let (_, message) = stalled_reason(&ak).unwrap();
    assert!(message.contains("create a new ApiKey"), "{message}");
    let status = ak.status.as_ref().unwrap();
    assert!(status.previous_keys.is_empty() && status.next_rotation_at.is_none());
    assert!(!conditions::is_true(&status.conditions, conditions::READY));
    s.wait_for_event("svc", "Revoked", "Warning").await;

    // One-way: the API server refuses true → false, with the CEL message.
    let (ok, _, err) = kubectl(&[
        "patch",
        "apikey",
        "svc",
        "-n",
        &s.ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"revoked":false}}"#,
    ]);
    assert!(!ok, "revoked: true → false was accepted");
    assert!(
        err.contains("spec.revoked cannot be set back to false") && err.contains("create a new ApiKey"),
        "{err}"
    );
    let err = apply_refused(&manifest(&s.ns.name, "svc", "  revoked: false\n"));
    assert!(err.contains("cannot be set back to false"), "{err}");

    // No new key: not on request, not when the Secret is deleted.
    s.request_rotation("svc", "r2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = s.secrets.get("svc").await.unwrap();
    assert_eq!(key_hash(&after), key_hash(&secret), "the Secret is left as it is");
    let ak = s.api_keys.get("svc").await.unwrap();
    assert_eq!(ak.status.as_ref().unwrap().revision, Some(2));
    assert_eq!(
        s.count_events("svc", "Revoked").await,
        1,
        "the Event is published once"
    );
}

#[tokio::test]
async fn an_apikey_applied_with_a_rotate_request_gets_one_key_that_answers_it() {
    // As a GitOps repository holds it: the annotation is there from creation,
    // so no later annotation change wakes the controller for it.
    let s = Scenario::new("lc-born-rotated").await;
    let manifest = manifest(&s.ns.name, "svc", "").replace(
        "metadata:\n",
        "metadata:\n  annotations:\n    latchkey.dev/rotate: \"gitops-1\"\n",
    );
    apply(&manifest);
    let (ak, secret) = s
        .settled("svc", "the first key, answering the request", |ak| {
            ak.status.as_ref().unwrap().last_rotate_request.as_deref() == Some("gitops-1")
        })
        .await;
    let status = ak.status.as_ref().unwrap();
    assert_eq!(status.revision, Some(1));
    assert!(status.previous_keys.is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = s.secrets.get("svc").await.unwrap();
    assert_eq!(key_hash(&after), key_hash(&secret), "no second key");
    // A new value is a new request.
    s.request_rotation("svc", "gitops-2").await;
    s.settled("svc", "the requested rotation", |ak| {
        let status = ak.status.as_ref().unwrap();
        status.last_rotate_request.as_deref() == Some("gitops-2") && status.revision == Some(2)
    })
    .await;
}

#[tokio::test]
async fn an_expired_apikey_lists_no_valid_key_and_says_so() {
    let s = Scenario::new("lc-expire").await;
    let expires = Timestamp::now()
        .checked_add(SignedDuration::from_secs(6))
        .unwrap();
    let expires = Timestamp::from_second(expires.as_second()).unwrap();
    apply(&manifest(
        &s.ns.name,
        "svc",
        &format!("  expiresAt: \"{expires}\"\n  rotation: {{interval: 24h}}\n"),
    ));
    let (ak, secret) = s.settled("svc", "first key", |_| true).await;
    assert!(!validity::valid_keys(&ak, Timestamp::now()).is_empty());
    // The controller requeues at expiresAt and reports it.
    let ak = eventually(WAIT, "Stalled=True reason Expired", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        (stalled_reason(&ak)?.0 == "Expired").then_some(ak)
    })
    .await;
    assert!(validity::valid_keys(&ak, Timestamp::now()).is_empty());
    let (_, message) = stalled_reason(&ak).unwrap();
    assert!(
        message.contains("spec.expiresAt") && message.contains("create a new ApiKey"),
        "{message}"
    );
    assert!(ak.status.as_ref().unwrap().next_rotation_at.is_none());
    let row = kubectl_ok(&["get", "ak", "svc", "-n", &s.ns.name, "--no-headers"]);
    assert!(
        row.contains("False") && row.contains("Expired"),
        "kubectl get ak: {row}"
    );
    s.wait_for_event("svc", "Expired", "Warning").await;
    let after = s.secrets.get("svc").await.unwrap();
    assert_eq!(key_hash(&after), key_hash(&secret), "the Secret is left as it is");

    // Created already expired: no key is issued at all.
    apply(&manifest(
        &s.ns.name,
        "late",
        "  expiresAt: \"2020-01-01T00:00:00Z\"\n",
    ));
    let ak = eventually(WAIT, "a late ApiKey Stalled Expired", || async {
        let ak = s.api_keys.get("late").await.ok()?;
        (stalled_reason(&ak)?.0 == "Expired").then_some(ak)
    })
    .await;
    assert!(validity::valid_keys(&ak, Timestamp::now()).is_empty());
    assert!(s.secrets.get_opt("late").await.unwrap().is_none());
}

#[tokio::test]
async fn cel_bounds_refuse_bad_intervals_and_grace_periods_naming_the_bound() {
    let ns = TestNamespace::new("lc-cel").await;
    let cases = [
        ("short", "{interval: 30s}", "between 1m and 8760h"),
        ("long", "{interval: 9000h}", "between 1m and 8760h"),
        (
            "grace-short",
            "{interval: 1h, gracePeriod: 10s}",
            "between 30s and 720h",
        ),
        (
            "grace-long",
            "{interval: 8000h, gracePeriod: 721h}",
            "between 30s and 720h",
        ),
        (
            "grace-over",
            "{interval: 1h, gracePeriod: 2h}",
            "must not be longer than spec.rotation.interval",
        ),
        ("not-go", "{interval: 1d}", "spec.rotation.interval"),
    ];
    for (name, rotation, message) in cases {
        let err = apply_refused(&manifest(&ns.name, name, &format!("  rotation: {rotation}\n")));
        assert!(err.contains(message), "{name}: expected {message:?} in:\n{err}");
    }
    apply(&manifest(
        &ns.name,
        "fine",
        "  rotation: {interval: 1h30m, gracePeriod: 90s}\n",
    ));
}

#[tokio::test]
async fn a_failing_reconcile_is_recorded_in_status_and_recovers() {
    let s = Scenario::new("lc-retry").await;
    // The API server refuses this label value on the Secret (not on the ApiKey).
    apply(&manifest(
        &s.ns.name,
        "svc",
        "  secretTemplate:\n    labels: {team: \"not a valid label value!\"}\n",
    ));
    let ak = eventually(WAIT, "Reconciling=True reason RetryingAfterError", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        let c = conditions::find(&ak.status.as_ref()?.conditions, conditions::RECONCILING)?;
        (c.status == "True" && c.reason == "RetryingAfterError").then_some(ak)
    })
    .await;
    let status = ak.status.as_ref().unwrap();
    let message = &conditions::find(&status.conditions, conditions::RECONCILING)
        .unwrap()
        .message;
    assert!(
        message.contains("applying the Secret") && message.contains("422") && message.contains("retrying in"),
        "{message}"
    );
    assert!(!conditions::is_true(&status.conditions, conditions::READY));
    // The pending key is listed (status first), the Secret does not exist.
    assert!(s.secrets.get_opt("svc").await.unwrap().is_none());
    // Fixing the spec gets a key delivered and Ready.
    apply(&manifest(
        &s.ns.name,
        "svc",
        "  secretTemplate:\n    labels: {team: payments}\n",
    ));
    let (ak, _) = s.settled("svc", "Ready after the fix", |_| true).await;
    assert_eq!(ak.status.as_ref().unwrap().revision, Some(1));
    s.wait_for_event("svc", "KeyIssued", "Normal").await;
}

/// Crash point 1 made deterministic: the Secret write of a rotation fails
/// (a label value the API server refuses), so status lists a pending key the
/// Secret never got; the controller is then killed, the spec fixed, and the
/// restarted controller drops that key and delivers a new one, once.
#[tokio::test]
async fn a_rotation_stopped_after_the_pending_status_is_dropped_and_redone_once() {
    let mut s = Scenario::new("lc-point1").await;
    let with = |labels: &str| {
        format!(
            "apiVersion: latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: svc\n  namespace: {}\n  \
             annotations: {{latchkey.dev/rotate: r1}}\nspec:\n  secretTemplate:\n    labels: {{team: {labels}}}\n",
            s.ns.name
        )
    };
    apply(&manifest(
        &s.ns.name,
        "svc",
        "  secretTemplate:\n    labels: {team: payments}\n",
    ));
    let (ak, _) = s.settled("svc", "first key", |_| true).await;
    let first = ak.status.unwrap().current_key.unwrap();
    apply(&with("\"not a valid label value!\""));
    let stuck = eventually(WAIT, "a pending key the Secret did not get", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        let st = ak.status.as_ref()?;
        let failing =
            conditions::find(&st.conditions, conditions::RECONCILING)?.reason == "RetryingAfterError";
        (failing && st.pending_rotate_request.as_deref() == Some("r1")).then_some(ak)
    })
    .await;
    let never_delivered = stuck.status.as_ref().unwrap().pending_key.clone().unwrap();
    let secret = s.secrets.get("svc").await.unwrap();
    assert_eq!(
        key_hash(&secret).unwrap(),
        first.sha256,
        "the Secret still holds the first key"
    );
    assert!(validity::is_valid_hash(&stuck, &first.sha256, Timestamp::now()));

    s.controller.kill();
    apply(&with("payments"));
    s.controller = LatchkeyProcess::start(&s.ns.name);
    let (ak, secret) = s
        .settled("svc", "the rotation redone", |ak| {
            ak.status.as_ref().unwrap().last_rotate_request.as_deref() == Some("r1")
        })
        .await;
    let st = ak.status.as_ref().unwrap();
    assert_eq!(st.revision, Some(2), "one key delivered for r1");
    let listed: Vec<&str> = validity::all_keys(&ak).map(|(k, _)| k.sha256.as_str()).collect();
    assert!(
        !listed.contains(&never_delivered.sha256.as_str()),
        "the undelivered key is gone"
    );
    assert!(
        listed.contains(&first.sha256.as_str()),
        "the first key is in its grace period"
    );
    assert_ne!(key_hash(&secret).unwrap(), first.sha256);
}

/// The invariant under fire: 30 forced rotations, the controller killed with
/// SIGKILL during each and restarted, while a poller checks every ~20 ms that
/// the Secret's key is valid per status. Half the kills come at a random
/// moment 0–300 ms after the request, half 0–10 ms after the pending key
/// shows up in status (inside the three writes).
#[tokio::test]
async fn rotations_survive_sigkill_at_random_moments() {
    const ITERATIONS: usize = 30;
    let started = Instant::now();
    let mut s = Scenario::new("lc-crash").await;
    apply(&manifest(
        &s.ns.name,
        "svc",
        "  rotation: {interval: 720h, gracePeriod: 30s}\n",
    ));
    let (ak, _) = s.settled("svc", "first key", |_| true).await;
    let first_revision = ak.status.as_ref().unwrap().revision.unwrap();

    let poller = InvariantPoller::start(s.api_keys.clone(), s.secrets.clone(), "svc");

    let mut settled_violations = 0;
    // Kills before the rotation began, after write 1 (pending in status),
    // after write 2 (Secret holds the pending key), after write 3.
    let mut kill_points = [0usize; 4];
    let mut revision = first_revision;
    for i in 0..ITERATIONS {
        let request = format!("crash-{i}");
        // Even: a random moment after the request; odd: aimed between the writes.
        s.request_rotation_for_a_kill("svc", &request, i % 2 == 1).await;
        s.controller.kill();
        // Where did the kill land? (status, then the Secret, while nothing runs)
        kill_points[kill_point(&s, "svc", &request).await] += 1;
        s.controller = LatchkeyProcess::start(&s.ns.name);
        let what = format!("rotation {i} settled after a SIGKILL");
        revision = s
            .settled_once("svc", &request, &what, revision, &mut settled_violations)
            .await;
    }
    let counts = poller.stop().await;
    let (checks, violations) = (
        counts.checks.load(Ordering::Relaxed),
        counts.violations.load(Ordering::Relaxed),
    );
    println!(
        "crash test: {ITERATIONS} iterations (SIGKILL each), {checks} invariant checks by the poller \
         ({} saw a pending key), {violations} violations, {settled_violations} settled-state violations, \
         revision {first_revision} → {revision}, {:.1} s; kills landed: {} before the rotation, \
         {} after the pending status, {} after the Secret write, {} after the rotation",
        counts.pending_seen.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        kill_points[0],
        kill_points[1],
        kill_points[2],
        kill_points[3],
    );
    assert!(checks > 0, "the poller made no check");
    assert_eq!(
        violations, 0,
        "the Secret held a key that status did not list as valid"
    );
    assert_eq!(settled_violations, 0);
    assert_eq!(revision, first_revision + ITERATIONS as i64);
}
