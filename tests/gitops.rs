//! GitOps readiness against the real local control plane, with the
//! repository's `examples/` applied as a GitOps tool would (a namespace-less
//! folder, `-n NS`), latchkey running (under the chart's rights):
//!
//! - `kubectl wait --for=condition=Ready` works for ApiKeys and TokenPolicies,
//!   and Ready carries the current `observedGeneration` (what kstatus and the
//!   Argo CD health check, examples/argocd/health.lua, read);
//! - after latchkey has written status, delivered Secrets and honoured a
//!   `latchkey.dev/rotate` annotation, `kubectl diff --server-side` and the
//!   client-side `kubectl diff` of the folder find nothing (exit 0), and a
//!   second apply writes nothing: latchkey never writes what users apply.

mod common;

use common::*;
use latchkey::conditions;
use latchkey::crd::{ApiKey, TokenPolicy};
use std::time::Duration;

fn examples() -> String {
    repo().join("examples").to_str().unwrap().to_owned()
}

/// `kubectl diff` exits 0 (no differences), 1 (differences) or >1 (error).
fn diff(ns: &str, server_side: bool) -> (i32, String) {
    let ex = examples();
    let mut args = vec!["diff", "-f", &ex, "-n", ns];
    if server_side {
        args.push("--server-side");
    }
    let out = std::process::Command::new(repo().join("e2e/cluster"))
        .arg("kubectl")
        .args(&args)
        .output()
        .expect("run kubectl diff");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kubectl wait --for=condition=Ready` for every object of `examples/` in `ns`.
fn wait_examples_ready(ns: &str) {
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "apikey/billing",
        "apikey/login-handler",
        "tokenpolicy/login",
        "-n",
        ns,
        "--timeout=60s",
    ]);
}

fn resource_versions(ns: &str) -> String {
    kubectl_ok(&[
        "get",
        "apikeys,tokenpolicies",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name} gen={.metadata.generation} rv={.metadata.resourceVersion}{\"\\n\"}{end}",
    ])
}

#[tokio::test]
async fn examples_become_ready_and_applying_or_diffing_them_again_finds_nothing() {
    let s = Scenario::new("gitops").await;
    let ns = s.ns.name.as_str();
    let ex = examples();
    kubectl_ok(&["apply", "--server-side", "-f", &ex, "-n", ns]);

    // kubectl wait, for both kinds.
    wait_examples_ready(ns);
    let api_keys: kube::Api<ApiKey> = kube::Api::namespaced(s.client.clone(), ns);
    let policies: kube::Api<TokenPolicy> = kube::Api::namespaced(s.client.clone(), ns);
    for name in ["billing", "login-handler"] {
        let ak = api_keys.get(name).await.unwrap();
        let status = ak.status.as_ref().unwrap();
        let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
        assert_eq!(ready.observed_generation, ak.metadata.generation, "{name}");
        assert!(!conditions::is_true(&status.conditions, conditions::RECONCILING));
        assert!(!conditions::is_true(&status.conditions, conditions::STALLED));
    }
    let tp = policies.get("login").await.unwrap();
    let ready = conditions::find(&tp.status.as_ref().unwrap().conditions, conditions::READY).unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(ready.observed_generation, tp.metadata.generation);

    // A rotation asked for with the annotation (not in Git).
    let before = api_keys.get("billing").await.unwrap();
    let revision = before.status.as_ref().unwrap().revision.unwrap();
    kubectl_ok(&[
        "annotate",
        "apikey",
        "billing",
        "-n",
        ns,
        "latchkey.dev/rotate=gitops-1",
        "--overwrite",
    ]);
    eventually(Duration::from_secs(60), "the rotation is honoured", || async {
        let ak = api_keys.get("billing").await.ok()?;
        let st = ak.status.as_ref()?;
        (st.last_rotate_request.as_deref() == Some("gitops-1")
            && st.pending_key.is_none()
            && st.revision == Some(revision + 1))
        .then_some(())
    })
    .await;
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "apikey/billing",
        "-n",
        ns,
        "--timeout=60s",
    ]);

    // Nothing to change: server-side and client-side diff, then a second apply.
    let (code, out) = diff(ns, true);
    assert_eq!(code, 0, "kubectl diff --server-side found differences:\n{out}");
    assert!(out.trim().is_empty(), "{out}");
    let rv = resource_versions(ns);
    kubectl_ok(&["apply", "--server-side", "-f", &ex, "-n", ns]);
    assert_eq!(
        resource_versions(ns),
        rv,
        "a second apply changed the objects (a write to something latchkey also writes)"
    );
    let (code, out) = diff(ns, true);
    assert_eq!(code, 0, "{out}");
    // The diff is not blind: a changed spec in Git shows up.
    let changed = std::fs::read_to_string(repo().join("examples/apikey.yaml"))
        .unwrap()
        .replace("\"invoices:write\"", "\"invoices:read\"");
    let (same, out, _) = kubectl_stdin(&["diff", "--server-side", "-f", "-", "-n", ns], &changed);
    assert!(
        !same && out.contains("invoices:read"),
        "kubectl diff missed a change:\n{out}"
    );

    // Client-side apply users (and Argo CD's default diff): the same.
    let other = TestNamespace::new("gitops-csa").await;
    let controller = LatchkeyProcess::start(&other.name);
    kubectl_ok(&["apply", "-f", &ex, "-n", &other.name]);
    wait_examples_ready(&other.name);
    let (code, out) = diff(&other.name, false);
    assert_eq!(code, 0, "kubectl diff (client-side) found differences:\n{out}");
    drop(controller);
}
