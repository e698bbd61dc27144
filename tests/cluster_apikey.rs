//! The ApiKey → Secret loop against the real local control plane.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use latchkey::conditions;
use latchkey::crd::ApiKey;
use latchkey::key::{ApiKeyValue, sha256_hex};
use std::time::Duration;

/// This file's own bound (the shared [`common::WAIT`] is 60 s).
const WAIT: Duration = Duration::from_secs(30);

fn manifest(ns: &str, name: &str, extra_spec: &str) -> String {
    api_key_manifest(ns, name, &format!("  scopes: [\"orders:read\"]\n{extra_spec}"))
}

fn key_in(secret: &Secret) -> String {
    let bytes = &secret.data.as_ref().expect("Secret has data")["api-key"].0;
    String::from_utf8(bytes.clone()).unwrap()
}

/// Waits until the ApiKey is Ready and its Secret's key hashes to status; returns both.
async fn ready_pair(api_keys: &Api<ApiKey>, secrets: &Api<Secret>, name: &str) -> (ApiKey, Secret) {
    eventually(
        WAIT,
        &format!("ApiKey {name} Ready with a matching Secret"),
        || async {
            let ak = api_keys.get(name).await.ok()?;
            let status = ak.status.as_ref()?;
            if !conditions::is_true(&status.conditions, conditions::READY) {
                return None;
            }
            let secret = secrets.get_opt(&ak.secret_name()).await.ok()??;
            let current = status.current_key.as_ref()?;
            (sha256_hex(key_in(&secret).as_bytes()) == current.sha256).then_some((ak, secret))
        },
    )
    .await
}

impl Scenario {
    /// Applies ApiKey `name` (scope `orders:read` and `extra_spec`) and
    /// waits until it is Ready with a matching Secret; returns both.
    async fn apply_ready(&self, name: &str, extra_spec: &str) -> (ApiKey, Secret) {
        apply(&manifest(&self.ns.name, name, extra_spec));
        ready_pair(&self.api_keys, &self.secrets, name).await
    }

    /// Waits for an Event about `name` (up to this file's [`WAIT`]).
    async fn event(&self, name: &str, reason: &str, type_: &str) {
        wait_for_event(&self.client, &self.ns.name, name, reason, type_, WAIT).await;
    }
}

#[tokio::test]
async fn crds_are_established() {
    kubeconfig();
    let out = kubectl_ok(&[
        "get",
        "crd",
        "apikeys.latchkey.dev",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(out, "True");
    let explain = kubectl_ok(&["explain", "apikey.spec.secretName"]);
    assert!(
        explain.contains("DNS-1123"),
        "kubectl explain reads the schema docs:\n{explain}"
    );
}

#[tokio::test]
async fn apikey_gets_a_secret_whose_hash_is_in_status_and_wait_ready_returns() {
    let s = Scenario::new("ak-basic").await;
    apply(&manifest(
        &s.ns.name,
        "billing",
        "  secretName: billing-key\n  secretTemplate:\n    labels: {team: payments}\n    annotations: {reloader.stakater.com/match: \"true\"}\n",
    ));
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "apikey/billing",
        "-n",
        &s.ns.name,
        "--timeout=30s",
    ]);

    let (ak, secret) = ready_pair(&s.api_keys, &s.secrets, "billing").await;
    let key = ApiKeyValue::parse(&key_in(&secret)).expect("the Secret holds a well-formed key");
    let status = ak.status.unwrap();
    assert_eq!(status.current_key.as_ref().unwrap().id, key.key_id());
    assert_eq!(status.observed_generation, ak.metadata.generation);
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == ak.metadata.generation)
    );
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "payments");
    let annotations = secret.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["latchkey.dev/key-id"], key.key_id());
    assert_eq!(annotations["reloader.stakater.com/match"], "true");
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.kind, "ApiKey");
    assert_eq!(Some(owner.uid.clone()), ak.metadata.uid);
    // The printer columns show readiness and the key id.
    let row = kubectl_ok(&["get", "ak", "billing", "-n", &s.ns.name, "--no-headers"]);
    assert!(
        row.contains("True") && row.contains(key.key_id()),
        "kubectl get ak: {row}"
    );
    s.event("billing", "KeyIssued", "Normal").await;
    // Nothing in status or Events carries the key.
    let all = kubectl_ok(&["get", "ak,events", "-n", &s.ns.name, "-o", "yaml"]);
    assert!(!all.contains(key.expose()));
}

#[tokio::test]
async fn deleting_the_apikey_garbage_collects_its_secret() {
    let s = Scenario::new("ak-gc").await;
    s.apply_ready("gc", "").await;
    s.api_keys.delete("gc", &DeleteParams::default()).await.unwrap();
    // The garbage collector looks for new resource types (our CRD, on a
    // freshly started cluster) every 30 s: allow for one such period and more.
    eventually(
        Duration::from_secs(120),
        "the garbage collector removes the Secret",
        || async { s.secrets.get_opt("gc").await.unwrap().is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_secret_comes_back_with_a_new_key_and_an_event() {
    let s = Scenario::new("ak-del").await;
    let (_, before) = s.apply_ready("svc", "").await;
    s.secrets.delete("svc", &DeleteParams::default()).await.unwrap();
    let (ak, after) = eventually(WAIT, "a new Secret with a new key", || async {
        let (ak, secret) = ready_pair(&s.api_keys, &s.secrets, "svc").await;
        (secret.metadata.uid != before.metadata.uid).then_some((ak, secret))
    })
    .await;
    assert_ne!(key_in(&after), key_in(&before));
    assert_eq!(
        ak.status.unwrap().current_key.unwrap().sha256,
        sha256_hex(key_in(&after).as_bytes())
    );
    s.event("svc", "SecretRecreated", "Warning").await;
}

#[tokio::test]
async fn a_key_changed_by_someone_else_is_replaced_with_an_event() {
    let s = Scenario::new("ak-tamper").await;
    let (_, before) = s.apply_ready("svc", "").await;
    let planted = ApiKeyValue::generate();
    let patch = serde_json::json!({"stringData": {"api-key": planted.expose()}});
    s.secrets
        .patch("svc", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let (_, after) = eventually(WAIT, "the planted key replaced by a new one", || async {
        let (ak, secret) = ready_pair(&s.api_keys, &s.secrets, "svc").await;
        let k = key_in(&secret);
        (k != planted.expose() && k != key_in(&before)).then_some((ak, secret))
    })
    .await;
    assert_eq!(after.metadata.uid, before.metadata.uid);
    s.event("svc", "KeyReplaced", "Warning").await;
}

#[tokio::test]
async fn a_secret_owned_by_someone_else_is_left_alone_and_the_apikey_is_stalled() {
    let s = Scenario::new("ak-foreign").await;
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "taken",
        "-n",
        &s.ns.name,
        "--from-literal=password=keep-me",
    ]);
    apply(&manifest(&s.ns.name, "svc", "  secretName: taken\n"));
    let ak = eventually(WAIT, "Stalled=True with reason SecretConflict", || async {
        let ak = s.api_keys.get("svc").await.ok()?;
        let c = conditions::find(&ak.status.as_ref()?.conditions, conditions::STALLED)?.clone();
        (c.status == "True" && c.reason == "SecretConflict").then_some(ak)
    })
    .await;
    let status = ak.status.unwrap();
    let msg = &conditions::find(&status.conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(
        msg.contains("spec.secretName"),
        "the message says what to change: {msg}"
    );
    let secret = s.secrets.get("taken").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"keep-me");
    assert!(secret.metadata.owner_references.is_none());
}

#[tokio::test]
async fn invalid_apikeys_are_refused_by_the_api_server_naming_the_field() {
    let ns = TestNamespace::new("ak-cel").await;
    // A table of cases shaped like the CEL-bounds table of
    // tests/cluster_lifecycle.rs: the data differ, the loop is apply_refused.
    let cases: [(&str, &str, &str); 5] = [
        ("bad-secret", "  secretName: Not_A_Name\n", "spec.secretName"),
        ("bad-scope", "  scopes: [\"orders read\"]\n", "spec.scopes"),
        ("bad-subject", "  subject: \" spaced\"\n", "spec.subject"),
        (
            "reserved",
            "  secretTemplate:\n    labels: {latchkey.dev/x: y}\n",
            "spec.secretTemplate.labels",
        ),
        (
            "too-many",
            &format!(
                "  audiences: [{}]\n",
                (0..17).map(|i| format!("\"a{i}\"")).collect::<Vec<_>>().join(",")
            ),
            "spec.audiences",
        ),
    ];
    for (name, spec, field) in cases {
        let err = apply_refused(&api_key_manifest(&ns.name, name, spec));
        assert!(err.contains(field), "{name}: the error names {field}:\n{err}");
    }
    // secretName cannot change after creation.
    apply(&manifest(&ns.name, "fixed", "  secretName: first\n"));
    let err = apply_refused(&manifest(&ns.name, "fixed", "  secretName: second\n"));
    assert!(
        err.contains("cannot be changed") && err.contains("create a new ApiKey"),
        "{err}"
    );
}

#[tokio::test]
async fn restarting_the_controller_changes_nothing_already_reconciled() {
    let ns = TestNamespace::new("ak-restart").await;
    let mut controller = LatchkeyProcess::start(&ns.name);
    let client = client().await;
    for name in ["one", "two", "three"] {
        apply(&manifest(&ns.name, name, ""));
    }
    let api_keys: Api<ApiKey> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let mut before = Vec::new();
    for name in ["one", "two", "three"] {
        let (ak, s) = ready_pair(&api_keys, &secrets, name).await;
        before.push((ak.metadata.resource_version, s.metadata.resource_version));
    }
    // A clean stop on SIGTERM, then a fresh start that resyncs everything.
    let status = controller.terminate();
    assert!(status.success(), "controller exit status on SIGTERM: {status:?}");
    drop(controller);
    let controller = LatchkeyProcess::start(&ns.name);
    eventually(WAIT, "the new controller to start reconciling", || async {
        controller
            .log_text()
            .contains("ApiKey controller starting")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let ak = api_keys.get(name).await.unwrap();
        let s = secrets.get(name).await.unwrap();
        assert_eq!(
            (ak.metadata.resource_version, s.metadata.resource_version),
            before[i],
            "{name} was written again after a restart"
        );
    }
}
