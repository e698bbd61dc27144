//! `watchNamespaces: [a, b]`: a Role and RoleBinding in each listed
//! namespace and nothing cluster-wide for namespaced resources; the
//! rendered RBAC applied to the control plane (which runs with
//! `--authorization-mode=RBAC`) lets the chart's identity read Secrets in
//! `a` and `b` and refuses it `c`'s (403 to its own token, "no" to `kubectl
//! auth can-i --as`); `latchkey run --watch-namespace a,b` under that
//! identity does its work without one forbidden call; a list mixing "*"
//! (every namespace) with names is refused at render time.

use crate::common;
use crate::helm::*;
use crate::rbac::*;
use serde_yaml::Value;

/// The resources a ClusterRole of the chart may name when a list is given:
/// cluster-scoped ones only.
const CLUSTER_SCOPED: [&str; 2] = ["credentialgrants", "validatingwebhookconfigurations"];

fn refused(values: &str) -> String {
    let out = helm(&["template", RELEASE, CHART, "--set", values]);
    assert!(!out.status.success(), "helm rendered {values}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_list_renders_a_role_and_binding_per_namespace_and_nothing_cluster_wide_for_them() {
    let docs = template(&["watchNamespaces={team-a,team-b}"]);
    let have = kinds(&docs);
    assert!(!have.contains("ClusterRole/latchkey"), "{have:?}");
    assert!(!have.contains("ClusterRoleBinding/latchkey"), "{have:?}");
    for ns in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| kind(d) == "Role" && name(d) == "latchkey" && namespace(d) == ns)
            .unwrap_or_else(|| panic!("no Role latchkey in {ns}: {have:?}"));
        assert_eq!(
            verbs(role, "", "secrets"),
            ["get", "list", "watch", "create", "patch"]
        );
        assert_eq!(verbs(role, "latchkey.dev", "apikeys"), ["get", "list", "watch"]);
        let binding = docs
            .iter()
            .find(|d| kind(d) == "RoleBinding" && name(d) == "latchkey" && namespace(d) == ns)
            .unwrap_or_else(|| panic!("no RoleBinding latchkey in {ns}: {have:?}"));
        assert_eq!(binding["roleRef"]["name"].as_str(), Some("latchkey"));
        assert_eq!(
            binding["subjects"][0]["namespace"].as_str(),
            Some("latchkey-system")
        );
    }
    // What stays cluster-wide is cluster-scoped: CredentialGrants and the
    // webhook configuration's caBundle.
    for role in docs.iter().filter(|d| kind(d) == "ClusterRole") {
        for (_, resource, _, _) in rules(role) {
            assert!(
                CLUSTER_SCOPED.contains(&resource.as_str()),
                "ClusterRole {} names {resource} although a list is given",
                name(role)
            );
        }
    }
    let deploy = find(&docs, "Deployment", "latchkey");
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.windows(2)
            .any(|w| w == ["--watch-namespace", "team-a,team-b"]),
        "args: {args:?}"
    );
    // The webhook is sent only the listed namespaces' objects.
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    for hook in vwc["webhooks"].as_sequence().unwrap() {
        let expr = &hook["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(expr["key"].as_str(), Some("kubernetes.io/metadata.name"));
        assert_eq!(expr["operator"].as_str(), Some("In"));
        assert_eq!(strings(&expr["values"]), ["team-a", "team-b"]);
    }

    // The NOTES name the namespaces.
    let notes = helm_ok(&[
        "install",
        "notes-nsl",
        CHART,
        "--dry-run=client",
        "--namespace",
        "notes-nsl",
        "--set",
        "crds.install=false",
        "--set",
        "watchNamespaces={team-a,team-b}",
    ]);
    assert!(
        notes.contains("It manages ApiKeys in namespaces team-a, team-b."),
        "{notes}"
    );

    // "*" alone is every namespace, like [].
    let star = kinds(&template(&["watchNamespaces={*}"]));
    assert!(star.contains("ClusterRole/latchkey"), "{star:?}");

    // Refused, with what to change.
    let mixed = refused("watchNamespaces={team-a,*}");
    assert!(
        mixed.contains("mixes \"*\" (every namespace) with names (team-a)")
            && mixed.contains("list only names"),
        "{mixed}"
    );
    assert!(refused("watchNamespaces={a,a}").contains("lists \"a\" twice"));
    assert!(refused("watchNamespaces={a,,b}").contains("has an empty name"));
    assert!(refused("watchNamespaces={a,Team-B}").contains("\"Team-B\" is not a namespace name"));
}

/// The cluster-scoped objects of the applied RBAC (the namespaced ones go
/// with the test namespaces).
struct Applied {
    release: String,
    namespaces: Vec<String>,
}

impl Drop for Applied {
    fn drop(&mut self) {
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let _ = common::kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &selector,
            "--wait=false",
        ]);
        for ns in &self.namespaces {
            let _ = common::kubectl(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

#[test]
fn the_charts_identity_may_read_secrets_in_the_listed_namespaces_and_gets_403_elsewhere() {
    common::kubeconfig(); // the cluster is up and the CRDs applied
    let id = std::process::id();
    let release = format!("latchkey-nsl-{id}");
    let release_ns = format!("lk-nsl-rel-{id}");
    let (a, b, c) = (
        format!("lk-nsl-a-{id}"),
        format!("lk-nsl-b-{id}"),
        format!("lk-nsl-c-{id}"),
    );
    let applied = Applied {
        release: release.clone(),
        namespaces: vec![release_ns.clone(), a.clone(), b.clone(), c.clone()],
    };
    for ns in &applied.namespaces {
        common::kubectl_ok(&["create", "namespace", ns]);
    }
    // The chart's RBAC for [a, b], applied as it renders (the ServiceAccount,
    // Roles, bindings, ClusterRoles; no Deployment: nothing runs pods here).
    let list = format!("watchNamespaces={{{a},{b}}}");
    let text = helm_ok(&[
        "template",
        &release,
        CHART,
        "--namespace",
        &release_ns,
        "--set",
        &list,
    ]);
    let keep = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let rbac: Vec<Value> = parse_docs(&text)
        .into_iter()
        .filter(|d| keep.contains(&kind(d)))
        .collect();
    let roles: Vec<&str> = rbac.iter().filter(|d| kind(d) == "Role").map(namespace).collect();
    assert_eq!(
        roles.len(),
        3,
        "a Role in a, b and latchkey's own namespace: {roles:?}"
    );
    let manifest: Vec<String> = rbac.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    common::apply(&manifest.join("---\n"));

    let sa = format!("system:serviceaccount:{release_ns}:{release}");
    let (na, nb, nc) = (Some(a.as_str()), Some(b.as_str()), Some(c.as_str()));
    assert_rights(
        &sa,
        &[
            ("get", "secrets", na, true),
            ("list", "secrets", nb, true),
            ("patch", "secrets", nb, true),
            ("get", "secrets", nc, false),
            ("list", "secrets", nc, false),
            ("list", "secrets", None, false),
            ("watch", "apikeys.latchkey.dev", na, true),
            ("watch", "apikeys.latchkey.dev", nb, true),
            ("list", "apikeys.latchkey.dev", nc, false),
            ("list", "apikeys.latchkey.dev", None, false),
            ("patch", "apikeys.latchkey.dev#status", nc, false),
            ("list", "tokenpolicies.latchkey.dev", nc, false),
            ("create", "configmaps", nc, false),
            ("create", "events.events.k8s.io", nc, false),
            // Cluster-scoped reads stay: CredentialGrants.
            ("list", "credentialgrants.latchkey.dev", None, true),
        ],
    );
    // The identity itself (a token of the ServiceAccount, not `--as`): a
    // Secret of b is readable, one of c is 403; latchkey pointed at c stops
    // at once naming the missing rights.
    let kubeconfig = service_account_kubeconfig(&release_ns, &release);
    refused_outside_its_namespace(&kubeconfig, &release_ns, &b, &c);
    // And `latchkey run --watch-namespace a,b` under it: an ApiKey in a
    // becomes Ready and is served, lastUsedAt is written, no call is
    // forbidden, the Lease (in the release's namespace) is won.
    let watch = format!("{a},{b}");
    latchkey_works_under_the_chart_rbac(
        &kubeconfig,
        &a,
        "listed",
        &["--watch-namespace", &watch, "--lease-namespace", &release_ns],
    );
    let _ = std::fs::remove_file(&kubeconfig);
    drop(applied);
}
