//! The ServiceAccount's rights: `kubectl auth can-i --as` (or a
//! SubjectAccessReview), and latchkey run under the chart's identity doing
//! its work and being refused outside its namespaces.

use crate::common;
use crate::helm::*;
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `kubectl auth can-i VERB RESOURCE [-n NS] --as SA`: true for yes.
/// `RESOURCE` is `plural[.group][/name]`, with `#subresource` appended.
///
/// kubectl resolves the resource through discovery and, for a type the API
/// server does not serve (TokenPolicy until its CRD is in crds/), asks about
/// the wrong group and says no; for those the same question goes to the
/// authorizer directly as a SubjectAccessReview with the group spelled out.
pub fn can(sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, sub) = match resource.split_once('#') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource];
    let sub_arg = sub.map(|s| format!("--subresource={s}"));
    args.extend(sub_arg.as_deref());
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let as_arg = format!("--as={sa}");
    args.push(&as_arg);
    let (_, stdout, stderr) = common::kubectl(&args);
    if stderr.contains("doesn't have a resource type") {
        return subject_access_review(sa, verb, resource, sub, ns);
    }
    match stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: unexpected answer {other:?}\n{stderr}"),
    }
}

/// What `kubectl auth can-i --as` asks, without discovery.
pub fn subject_access_review(
    sa: &str,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    ns: Option<&str>,
) -> bool {
    let (resource, name) = resource.split_once('/').unwrap_or((resource, ""));
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": sa,
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": sub.unwrap_or_default(),
                "name": name,
                "namespace": ns.unwrap_or_default(),
            },
        },
    });
    let (ok, stdout, stderr) = common::kubectl_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
        &review.to_string(),
    );
    assert!(ok, "SubjectAccessReview {review} failed:\n{stdout}{stderr}");
    match stdout.trim() {
        "true" => true,
        "false" => false,
        other => panic!("SubjectAccessReview {review}: unexpected answer {other:?}"),
    }
}

/// Asserts each (verb, resource, namespace, expected) with one message listing every mismatch.
pub fn assert_rights(sa: &str, cases: &[(&str, &str, Option<&str>, bool)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(verb, resource, ns, want)| can(sa, verb, resource, *ns) != *want)
        .map(|(verb, resource, ns, want)| {
            format!(
                "{verb} {resource} in {}: expected {}",
                ns.unwrap_or("all namespaces"),
                if *want { "yes" } else { "no" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{sa} has the wrong rights:\n  {}",
        wrong.join("\n  ")
    );
}

pub fn exists(args: &[&str]) -> bool {
    common::kubectl(args).0
}

/// A kubeconfig that authenticates as ServiceAccount `sa` of `ns` (a
/// TokenRequest token), for running latchkey under the chart's identity.
pub fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(common::kubeconfig()).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let token = common::kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=1h"]);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster["server"].as_str().unwrap(),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().unwrap(),
        }}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": sa}}],
        "current-context": "sa",
    });
    let path = std::env::temp_dir().join(format!("latchkey-chart-{ns}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// The API server refused none of `latchkey`'s calls.
pub fn assert_never_forbidden(latchkey: &common::LatchkeyProcess) {
    let log = latchkey.log_text();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        denied.is_empty(),
        "latchkey was refused calls under the chart's RBAC:\n{}",
        denied.join("\n")
    );
}

/// Runs latchkey as the chart's ServiceAccount and shows the rights are
/// enough for what it does: an ApiKey in `ns` becomes Ready with its Secret,
/// the server accepts the key and writes lastUsedAt, nothing is forbidden.
pub fn latchkey_works_under_the_chart_rbac(kubeconfig: &Path, ns: &str, name: &str, extra: &[&str]) {
    // `latchkey run` as the chart's ServiceAccount, on a free loopback port.
    let mut args = vec!["run", "--last-used-flush-seconds", "1"];
    args.extend_from_slice(extra);
    let latchkey = common::LatchkeyProcess::spawn_http(&args, kubeconfig, &[], "chart");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::served_key(
        ns,
        name,
        "  scopes: [\"orders:read\"]\n",
        latchkey.url(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = common::kubectl_ok(&[
            "get",
            "apikey",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.lastUsedAt}",
        ]);
        if !used.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not write lastUsedAt of {ns}/{name}:\n{}",
            latchkey.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_never_forbidden(&latchkey);
    assert!(
        latchkey.log_text().contains("became the leader"),
        "latchkey did not win its Lease under the chart's rights:\n{}",
        latchkey.log_text()
    );
}

/// With `watchNamespaces`, the chart's identity itself (its token, not
/// `--as`) reads a Secret where it works and is refused one elsewhere, and
/// latchkey pointed at a namespace it has no rights in stops at once with an
/// error that names the missing rights (not a missing CRD).
pub fn refused_outside_its_namespace(kubeconfig: &Path, release_ns: &str, apps: &str, other: &str) {
    use k8s_openapi::api::core::v1::Secret;
    for ns in [apps, other] {
        let (ok, out, err) = common::kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: not-latchkeys\n  namespace: {ns}\nstringData:\n  password: p\n"
            ),
        );
        assert!(ok, "{out}{err}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = latchkey::client::from_kubeconfig(Some(kubeconfig)).await.unwrap();
        let here: kube::Api<Secret> = kube::Api::namespaced(client.clone(), apps);
        assert!(
            here.get("not-latchkeys").await.is_ok(),
            "the watched namespace is readable"
        );
        let there: kube::Api<Secret> = kube::Api::namespaced(client, other);
        match there.get("not-latchkeys").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!(
                "a Secret of another namespace was not refused: {:?}",
                other.map(|_| "read")
            ),
        }
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args([
        "controller",
        "--watch-namespace",
        other,
        "--lease-namespace",
        release_ns,
        "--kubeconfig",
    ])
    .arg(kubeconfig);
    let out = run_bounded(
        cmd,
        "latchkey controller in a namespace without rights",
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "latchkey ran where it has no rights:\n{stderr}"
    );
    assert!(
        stderr.contains("latchkey may not list ApiKeys") && stderr.contains("chart's RBAC"),
        "{stderr}"
    );
}
