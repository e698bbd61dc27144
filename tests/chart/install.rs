//! `helm install`, `upgrade` and `uninstall` into the local control plane,
//! with exactly the intended rights.

use crate::common;
use crate::helm::*;
use crate::rbac::*;
use std::time::{Duration, Instant};

/// The namespaces of the install test; uninstalls the release and deletes
/// them on drop, so a failed assertion leaves nothing behind.
struct Installed {
    release_ns: String,
    namespaces: Vec<String>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            &self.release_ns,
            "--timeout",
            "60s",
        ]);
        for ns in &self.namespaces {
            let _ = common::kubectl(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

#[test]
fn helm_install_grants_exactly_the_intended_rights() {
    let started = Instant::now();
    common::kubeconfig(); // the cluster is up and the CRDs applied (as the other tests do)
    let id = std::process::id();
    let release_ns = format!("lk-chart-{id}");
    let apps = format!("lk-chart-apps-{id}");
    let other = format!("lk-chart-other-{id}");
    let guard = Installed {
        release_ns: release_ns.clone(),
        namespaces: vec![release_ns.clone(), apps.clone(), other.clone()],
    };
    for ns in &guard.namespaces {
        common::kubectl_ok(&["create", "namespace", ns]);
    }
    // The CRDs already exist (applied by the test harness, as `kubectl apply
    // -f crds/` users have them): helm takes them over. The webhook's
    // failure policy is Ignore here because no pod will ever answer it in
    // this cluster, and other tests share the cluster.
    helm_ok(&[
        "install",
        RELEASE,
        CHART,
        "--namespace",
        &release_ns,
        "--take-ownership",
        "--timeout",
        "120s",
        "--set",
        "webhook.failurePolicy=Ignore",
    ]);
    let status = helm_ok(&["status", RELEASE, "--namespace", &release_ns]);
    assert!(status.contains("STATUS: deployed"), "{status}");

    // The objects exist.
    for (kind, name) in [
        ("deployment", "latchkey"),
        ("service", "latchkey"),
        ("serviceaccount", "latchkey"),
        ("poddisruptionbudget", "latchkey"),
        ("role", "latchkey-self"),
        ("rolebinding", "latchkey-self"),
    ] {
        assert!(
            exists(&["get", kind, name, "-n", &release_ns]),
            "{kind}/{name} was not installed"
        );
    }
    for (kind, name) in [
        ("clusterrole", "latchkey"),
        ("clusterrolebinding", "latchkey"),
        ("clusterrole", "latchkey-webhook"),
        ("clusterrolebinding", "latchkey-webhook"),
        ("validatingwebhookconfiguration", "latchkey"),
        ("customresourcedefinition", "apikeys.latchkey.dev"),
    ] {
        assert!(exists(&["get", kind, name]), "{kind}/{name} was not installed");
    }
    let owner = common::kubectl_ok(&[
        "get",
        "crd",
        "apikeys.latchkey.dev",
        "-o",
        "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name} {.metadata.annotations.helm\\.sh/resource-policy}",
    ]);
    assert_eq!(
        owner.trim(),
        "latchkey keep",
        "the CRD belongs to the release and is kept"
    );
    let policy = common::kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        "latchkey",
        "-o",
        "jsonpath={.webhooks[*].failurePolicy}",
    ]);
    assert_eq!(policy.trim(), "Ignore Ignore");

    let sa = format!("system:serviceaccount:{release_ns}:latchkey");
    let (a, r, o) = (
        Some(apps.as_str()),
        Some(release_ns.as_str()),
        Some(other.as_str()),
    );
    // Cluster-wide (the default): ApiKeys and their Secrets everywhere.
    assert_rights(
        &sa,
        &[
            ("get", "apikeys.latchkey.dev", a, true),
            ("list", "apikeys.latchkey.dev", None, true),
            ("watch", "tokenpolicies.latchkey.dev", None, true),
            ("patch", "apikeys.latchkey.dev#status", a, true),
            ("patch", "tokenpolicies.latchkey.dev#status", a, true),
            ("update", "apikeys.latchkey.dev#status", a, false),
            ("update", "apikeys.latchkey.dev", a, false),
            ("patch", "apikeys.latchkey.dev", a, false),
            ("create", "apikeys.latchkey.dev", a, false),
            ("delete", "apikeys.latchkey.dev", a, false),
            ("patch", "secrets", a, true),
            ("create", "secrets", a, true),
            ("watch", "secrets", a, true),
            ("get", "secrets", r, true),
            ("delete", "secrets", a, false),
            ("update", "secrets", a, false),
            ("deletecollection", "secrets", a, false),
            ("patch", "configmaps", a, true),
            ("delete", "configmaps", a, false),
            ("create", "events.events.k8s.io", a, true),
            ("create", "events", a, false), // core/v1 Events are not used
            ("get", "leases.coordination.k8s.io", r, true),
            ("create", "leases.coordination.k8s.io", r, true),
            ("patch", "leases.coordination.k8s.io", r, true),
            ("update", "leases.coordination.k8s.io", r, false),
            ("delete", "leases.coordination.k8s.io", r, false),
            ("create", "leases.coordination.k8s.io", a, false),
            ("get", "validatingwebhookconfigurations/latchkey", None, true),
            ("patch", "validatingwebhookconfigurations/latchkey", None, true),
            ("list", "credentialgrants.latchkey.dev", None, true),
            ("watch", "credentialgrants.latchkey.dev", None, true),
            ("create", "credentialgrants.latchkey.dev", None, false),
            ("patch", "credentialgrants.latchkey.dev", None, false),
            ("delete", "credentialgrants.latchkey.dev", None, false),
            (
                "patch",
                "validatingwebhookconfigurations/someone-else",
                None,
                false,
            ),
            ("list", "validatingwebhookconfigurations", None, false),
            ("create", "validatingwebhookconfigurations", None, false),
            ("patch", "mutatingwebhookconfigurations/latchkey", None, false),
            ("create", "pods", r, false),
            ("get", "nodes", None, false),
            ("patch", "customresourcedefinitions", None, false),
            ("escalate", "clusterroles", None, false),
        ],
    );

    // The rights are also enough: latchkey itself, as this ServiceAccount.
    let sa_kubeconfig = service_account_kubeconfig(&release_ns, "latchkey");
    // Its Lease goes where the chart's Role allows Leases: the release's namespace.
    latchkey_works_under_the_chart_rbac(
        &sa_kubeconfig,
        &apps,
        "chart-cluster-wide",
        &["--lease-namespace", &release_ns],
    );

    // One watched namespace: the same rights there, none in another namespace.
    helm_ok(&[
        "upgrade",
        RELEASE,
        CHART,
        "--namespace",
        &release_ns,
        "--timeout",
        "120s",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        &format!("watchNamespaces={{{apps}}}"),
    ]);
    assert!(
        !exists(&["get", "clusterrolebinding", "latchkey"]),
        "the cluster-wide binding is gone"
    );
    assert!(exists(&["get", "role", "latchkey", "-n", &apps]));
    assert!(exists(&["get", "rolebinding", "latchkey", "-n", &apps]));
    assert_rights(
        &sa,
        &[
            ("patch", "secrets", a, true),
            ("create", "secrets", a, true),
            ("get", "apikeys.latchkey.dev", a, true),
            ("patch", "apikeys.latchkey.dev#status", a, true),
            ("patch", "configmaps", a, true),
            ("create", "events.events.k8s.io", a, true),
            ("get", "secrets", r, true),
            ("patch", "leases.coordination.k8s.io", r, true),
            ("patch", "validatingwebhookconfigurations/latchkey", None, true),
            ("list", "credentialgrants.latchkey.dev", None, true),
            ("watch", "credentialgrants.latchkey.dev", None, true),
            ("update", "credentialgrants.latchkey.dev", None, false),
            ("get", "secrets", o, false),
            ("list", "secrets", o, false),
            ("patch", "secrets", o, false),
            ("list", "secrets", None, false),
            ("list", "apikeys.latchkey.dev", o, false),
            ("list", "apikeys.latchkey.dev", None, false),
            ("patch", "configmaps", o, false),
            ("create", "events.events.k8s.io", o, false),
            ("delete", "secrets", a, false),
            ("update", "apikeys.latchkey.dev", a, false),
        ],
    );

    latchkey_works_under_the_chart_rbac(
        &sa_kubeconfig,
        &apps,
        "chart-one-namespace",
        &["--watch-namespace", &apps, "--lease-namespace", &release_ns],
    );
    refused_outside_its_namespace(&sa_kubeconfig, &release_ns, &apps, &other);
    let _ = std::fs::remove_file(&sa_kubeconfig);

    // Uninstall: the release's objects go, the CRDs stay (crds.keep).
    helm_ok(&[
        "uninstall",
        RELEASE,
        "--namespace",
        &release_ns,
        "--timeout",
        "60s",
    ]);
    assert!(!exists(&["get", "deployment", "latchkey", "-n", &release_ns]));
    assert!(!exists(&["get", "validatingwebhookconfiguration", "latchkey"]));
    assert!(!exists(&["get", "clusterrole", "latchkey-webhook"]));
    assert!(
        exists(&["get", "crd", "apikeys.latchkey.dev"]),
        "crds.keep left the CRD in place"
    );
    drop(guard);
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the install test took {:?}",
        started.elapsed()
    );
}
