//! How the tools people use read latchkey's objects, on the real local
//! control plane with a real `latchkey controller`:
//!
//! - `kubectl get apikeys,tokenpolicies` (and `-o wide`): the printer
//!   columns show future times (next rotation, expiry) as their RFC 3339
//!   value and past ones (last rotation, age) as an age, never `<invalid>`;
//! - Argo CD's health check (`examples/argocd/health.lua`, run by
//!   `e2e/health`: gopher-lua, the interpreter Argo CD embeds, set up as
//!   Argo CD does) and Flux's kstatus (`sigs.k8s.io/cli-utils`) on
//!   ApiKeys and TokenPolicies taken from the cluster in every state: no
//!   status yet, reconciling (a missing TokenPolicy; retrying after an
//!   error, both kinds: a ValidatingAdmissionPolicy refuses their Secrets),
//!   Ready, revoked, expired, stalled (SecretConflict, both kinds;
//!   IssuerConflict), an old `observedGeneration`; and `examples/argocd/argocd-cm.yaml` carries
//!   exactly that script.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// One `kubectl get` table: rows of (column name → cell), per header line
/// (`kubectl get a,b` prints one table per kind). Cells are cut at the
/// header's column offsets (kubectl aligns them so), as headers such as
/// `NEXT ROTATION` hold a space.
fn tables(text: &str) -> Vec<Vec<std::collections::BTreeMap<String, String>>> {
    let mut out = Vec::new();
    let mut columns: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("NAME ") {
            columns = header_columns(line);
            out.push(Vec::new());
            continue;
        }
        let mut row = std::collections::BTreeMap::new();
        for (i, (start, name)) in columns.iter().enumerate() {
            let end = columns.get(i + 1).map_or(line.len(), |c| c.0).min(line.len());
            let cell = line.get(*start..end).unwrap_or("").trim().to_owned();
            row.insert(name.clone(), cell);
        }
        out.last_mut().expect("a row before any header").push(row);
    }
    out
}

/// The header's column names and where each starts (names are separated by
/// at least two spaces).
fn header_columns(line: &str) -> Vec<(usize, String)> {
    let mut cols = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i] == b' ' && bytes.get(i + 1).is_none_or(|b| *b == b' ')) {
            i += 1;
        }
        cols.push((start, line[start..i].to_owned()));
    }
    cols
}

fn row<'a>(
    table: &'a [std::collections::BTreeMap<String, String>],
    name: &str,
) -> &'a std::collections::BTreeMap<String, String> {
    table
        .iter()
        .find(|r| r["NAME"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {table:?}"))
}

/// An age as kubectl prints it (`12s`, `3m4s`, `5h`, `2d`…).
fn is_age(cell: &str) -> bool {
    !cell.is_empty()
        && cell.chars().all(|c| c.is_ascii_digit() || "smhdy".contains(c))
        && cell.chars().next().is_some_and(|c| c.is_ascii_digit())
}

fn json_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, p| &v[*p])
        .as_str()
        .unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

#[tokio::test]
async fn printer_columns_show_future_times_as_rfc3339_and_never_invalid() {
    let s = Scenario::new("printer").await;
    let ns = s.ns.name.as_str();
    let future = "2099-01-31T00:00:00Z";
    let past = "2020-01-31T00:00:00Z";
    apply(&api_key_manifest(
        ns,
        "future",
        &format!("  rotation: {{interval: 720h, gracePeriod: 1h}}\n  expiresAt: \"{future}\"\n"),
    ));
    apply(&api_key_manifest(
        ns,
        "expired",
        &format!("  expiresAt: \"{past}\"\n"),
    ));
    apply(&token_policy_manifest(
        ns,
        "policy",
        "  audiences: [api]\n  signingKeys: {rotationInterval: 720h}\n",
    ));
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "apikey/future",
        "tokenpolicy/policy",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    kubectl_ok(&[
        "wait",
        "--for=condition=Stalled",
        "apikey/expired",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    let get_json = |what: &str| -> Value {
        serde_json::from_str(&kubectl_ok(&["get", what, "-n", ns, "-o", "json"])).unwrap()
    };
    let ak = get_json("apikey/future");
    let tp = get_json("tokenpolicy/policy");
    let ak_next = json_at(&ak, &["status", "nextRotationAt"]);
    let tp_next = json_at(&tp, &["status", "nextRotationAt"]);

    for wide in [false, true] {
        let mut args = vec!["get", "apikeys,tokenpolicies", "-n", ns];
        if wide {
            args.extend(["-o", "wide"]);
        }
        let text = kubectl_ok(&args);
        println!("kubectl {}\n{text}", args.join(" "));
        assert!(!text.contains("<invalid>"), "{text}");
        let t = tables(&text);
        assert_eq!(t.len(), 2, "one table per kind:\n{text}");
        let (keys, policies) = (&t[0], &t[1]);

        let f = row(keys, "apikey.latchkey.dev/future");
        assert_eq!(f["READY"], "True", "{text}");
        assert_eq!(f["NEXT ROTATION"], ak_next, "{text}");
        assert_eq!(f["EXPIRES"], future, "{text}");
        assert_eq!(f["REVISION"], "1", "{text}");
        assert!(is_age(&f["AGE"]), "{text}");
        let e = row(keys, "apikey.latchkey.dev/expired");
        assert_eq!(e["READY"], "False", "{text}");
        assert_eq!(e["REASON"], "Expired", "{text}");
        assert_eq!(e["EXPIRES"], past, "{text}");
        assert_eq!(e["NEXT ROTATION"], "", "{text}"); // kubectl leaves a missing field blank

        let p = row(policies, "tokenpolicy.latchkey.dev/policy");
        assert_eq!(p["READY"], "True", "{text}");
        assert_eq!(p["NEXT ROTATION"], tp_next, "{text}");

        assert_eq!(f.contains_key("LAST ROTATED"), wide, "{text}");
        if wide {
            assert!(is_age(&f["LAST ROTATED"]), "{text}");
            assert!(is_age(&p["LAST ROTATED"]), "{text}");
            assert_eq!(f["SECRET"], "future", "{text}");
            assert!(p["ISSUER"].ends_with(&format!("/issuers/{ns}/policy")), "{text}");
        }
    }
}

/// The health checker's path (`e2e/health/build` builds it once into the cache).
fn health_checker() -> String {
    let out = std::process::Command::new(repo().join("e2e/health/build"))
        .output()
        .expect("run e2e/health/build");
    assert!(
        out.status.success(),
        "e2e/health/build failed (Go and the Go module proxy are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn health_lua() -> std::path::PathBuf {
    repo().join("examples/argocd/health.lua")
}

/// (Argo CD status, message, kstatus status) for each object, in order.
fn judge(checker: &str, objects: &[Value]) -> Vec<(String, String, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(checker)
        .arg(health_lua())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the health checker");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(objects).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    answers
        .iter()
        .map(|a| {
            assert!(a["lua"]["error"].is_null(), "the Lua script failed: {a}");
            assert!(a["kstatus"]["error"].is_null(), "kstatus failed: {a}");
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&a["lua"]["status"]),
                s(&a["lua"]["message"]),
                s(&a["kstatus"]["status"]),
            )
        })
        .collect()
}

/// "Reason: message" of the condition `type_` that is True on `obj`.
fn described(obj: &Value, type_: &str) -> String {
    let conds = obj["status"]["conditions"].as_array().expect("conditions");
    let c = conds
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .unwrap_or_else(|| panic!("{type_} is not True on {obj}"));
    format!("{}: {}", json_at(c, &["reason"]), json_at(c, &["message"]))
}

#[test]
fn the_argocd_cm_snippet_carries_health_lua_for_both_kinds() {
    let script = std::fs::read_to_string(health_lua()).unwrap();
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("examples/argocd/argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    for kind in ["ApiKey", "TokenPolicy"] {
        let key = format!("resource.customizations.health.latchkey.dev_{kind}");
        assert_eq!(
            cm["data"][key.as_str()].as_str(),
            Some(script.as_str()),
            "examples/argocd/argocd-cm.yaml: {key} is not examples/argocd/health.lua; copy the file in again"
        );
    }
}

#[tokio::test]
async fn argo_cd_lua_and_kstatus_judge_every_state() {
    let checker = health_checker();
    let mut s = Scenario::new("health").await;
    let ns = s.ns.name.clone();
    let ns = ns.as_str();
    // Secrets of those names that latchkey did not create: SecretConflict.
    for secret in ["conflict", "conflict-policy-signing-keys"] {
        apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\n  namespace: {ns}\nstringData:\n  other: value\n"
        ));
    }
    for (name, spec) in [
        ("ready", "  scopes: [a]\n"),
        ("old-generation", "  scopes: [a]\n"),
        ("reconciling", "  tokenPolicyRef: {name: not-there}\n"),
        ("revoked", "  scopes: [a]\n"),
        ("expired", "  expiresAt: \"2020-01-31T00:00:00Z\"\n"),
        ("conflict", "  scopes: [a]\n"),
    ] {
        apply(&api_key_manifest(ns, name, spec));
    }
    for name in ["ready-policy", "old-generation-policy", "conflict-policy"] {
        apply(&token_policy_manifest(ns, name, "  audiences: [api]\n"));
    }
    // Two TokenPolicies claiming one issuer path: both Stalled (IssuerConflict).
    let shared = format!("https://auth.example.com/{ns}/shared");
    for name in ["issuer-one", "issuer-two"] {
        apply(&token_policy_manifest(
            ns,
            name,
            &format!("  audiences: [api]\n  issuer: {shared}\n"),
        ));
    }
    let wait = |condition: &str, objects: &[&str]| {
        let mut args = vec!["wait", condition, "-n", ns, "--timeout=60s"];
        args.extend_from_slice(objects);
        kubectl_ok(&args);
    };
    wait(
        "--for=condition=Ready",
        &[
            "apikey/ready",
            "apikey/old-generation",
            "apikey/revoked",
            "tokenpolicy/ready-policy",
            "tokenpolicy/old-generation-policy",
        ],
    );
    wait("--for=condition=Reconciling", &["apikey/reconciling"]);
    revoke(&s.api_keys, "revoked").await;
    wait(
        "--for=condition=Stalled",
        &[
            "apikey/revoked",
            "apikey/expired",
            "apikey/conflict",
            "tokenpolicy/conflict-policy",
            "tokenpolicy/issuer-one",
            "tokenpolicy/issuer-two",
        ],
    );
    // Retrying after an error: a ValidatingAdmissionPolicy (CEL, in the API
    // server) refuses the Secrets of a new ApiKey and TokenPolicy, so both
    // say RetryingAfterError.
    let refuse = refuse_secrets(ns, &["retrying", "retrying-policy-signing-keys"]);
    apply(&api_key_manifest(ns, "retrying", "  scopes: [a]\n"));
    apply(&token_policy_manifest(
        ns,
        "retrying-policy",
        "  audiences: [api]\n",
    ));
    wait(
        "--for=condition=Reconciling",
        &["apikey/retrying", "tokenpolicy/retrying-policy"],
    );
    // An old observedGeneration: the spec changes while no controller runs.
    s.controller.kill();
    drop(refuse);
    kubectl_ok(&[
        "patch",
        "apikey",
        "old-generation",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":["b"]}}"#,
    ]);
    kubectl_ok(&[
        "patch",
        "tokenpolicy",
        "old-generation-policy",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"audiences":["api","other"]}}"#,
    ]);
    // No status yet: a namespace no controller watches.
    let quiet = TestNamespace::new("health-quiet").await;
    apply(&api_key_manifest(&quiet.name, "fresh", "  scopes: [a]\n"));
    apply(&token_policy_manifest(
        &quiet.name,
        "fresh-policy",
        "  audiences: [api]\n",
    ));

    let get = |ns: &str, what: &str| -> Value {
        serde_json::from_str(&kubectl_ok(&["get", what, "-n", ns, "-o", "json"])).unwrap()
    };
    let cases = [
        (ns, "apikey/ready"),
        (ns, "tokenpolicy/ready-policy"),
        (ns, "apikey/reconciling"),
        (ns, "apikey/retrying"),
        (ns, "tokenpolicy/retrying-policy"),
        (ns, "apikey/revoked"),
        (ns, "apikey/expired"),
        (ns, "apikey/conflict"),
        (ns, "tokenpolicy/conflict-policy"),
        (ns, "tokenpolicy/issuer-one"),
        (ns, "tokenpolicy/issuer-two"),
        (ns, "apikey/old-generation"),
        (ns, "tokenpolicy/old-generation-policy"),
        (quiet.name.as_str(), "apikey/fresh"),
        (quiet.name.as_str(), "tokenpolicy/fresh-policy"),
    ];
    let mut objects: Vec<Value> = cases.iter().map(|(ns, what)| get(ns, what)).collect();
    // The fresh ones read `status: {observedGeneration: 0}`, the CRDs'
    // default for `status` (the shared control plane may hold another
    // worktree's CRDs for a moment: ours are put back until it shows).
    for (i, (ns, what)) in cases.iter().enumerate() {
        if *ns != quiet.name.as_str() {
            continue;
        }
        objects[i] = eventually(
            Duration::from_secs(30),
            &format!("{what} reads the CRD's default status"),
            || async {
                ensure_status_default();
                let obj = get(ns, what);
                (obj["status"]["observedGeneration"] == 0).then_some(obj)
            },
        )
        .await;
    }
    let verdicts = judge(&checker, &objects);
    let by_name = |what: &str| {
        let i = cases.iter().position(|(_, w)| *w == what).unwrap();
        (&objects[i], verdicts[i].clone())
    };
    for (what, _, verdict) in cases.iter().map(|(_, w)| (w, (), by_name(w).1)) {
        println!(
            "{what:36} argo={:12} kstatus={:11} {}",
            verdict.0, verdict.2, verdict.1
        );
    }

    // Ready: Healthy with Ready's message; Current.
    for what in ["apikey/ready", "tokenpolicy/ready-policy"] {
        let (obj, (argo, message, kstatus)) = by_name(what);
        let ready = described(obj, "Ready");
        assert_eq!(argo, "Healthy", "{what}");
        assert_eq!(message, ready.split_once(": ").unwrap().1, "{what}");
        assert_eq!(kstatus, "Current", "{what}");
    }
    let (_, (_, message, _)) = by_name("apikey/ready");
    assert_eq!(message, "Secret ready holds the current key");
    // Reconciling: Progressing with Reconciling's reason and message; InProgress.
    let (obj, (argo, message, kstatus)) = by_name("apikey/reconciling");
    assert_eq!(argo, "Progressing");
    assert_eq!(message, described(obj, "Reconciling"));
    assert!(message.starts_with("TokenPolicyMissing: "), "{message}");
    assert_eq!(kstatus, "InProgress");
    // Retrying after an error (both kinds): the same, with the error's summary.
    for what in ["apikey/retrying", "tokenpolicy/retrying-policy"] {
        let (obj, (argo, message, kstatus)) = by_name(what);
        assert_eq!(argo, "Progressing", "{what}");
        assert_eq!(message, described(obj, "Reconciling"), "{what}");
        assert!(
            message.starts_with("RetryingAfterError: Kubernetes API call failed"),
            "{what}: {message}"
        );
        assert_eq!(kstatus, "InProgress", "{what}");
    }
    // Stalled: Suspended when revoked (asked for), else Degraded; Failed.
    for (what, argo_want, reason) in [
        ("apikey/revoked", "Suspended", "Revoked"),
        ("apikey/expired", "Degraded", "Expired"),
        ("apikey/conflict", "Degraded", "SecretConflict"),
        ("tokenpolicy/conflict-policy", "Degraded", "SecretConflict"),
        ("tokenpolicy/issuer-one", "Degraded", "IssuerConflict"),
        ("tokenpolicy/issuer-two", "Degraded", "IssuerConflict"),
    ] {
        let (obj, (argo, message, kstatus)) = by_name(what);
        assert_eq!(argo, argo_want, "{what}");
        assert_eq!(message, described(obj, "Stalled"), "{what}");
        assert!(message.starts_with(&format!("{reason}: ")), "{what}: {message}");
        assert_eq!(kstatus, "Failed", "{what}");
    }
    // An old observedGeneration: Progressing, naming the generation; InProgress.
    for what in ["apikey/old-generation", "tokenpolicy/old-generation-policy"] {
        let (obj, (argo, message, kstatus)) = by_name(what);
        assert_eq!(obj["metadata"]["generation"], 2, "{what}");
        assert_eq!(obj["status"]["observedGeneration"], 1, "{what}");
        assert_eq!(argo, "Progressing", "{what}");
        assert_eq!(message, "Waiting for latchkey to observe generation 2", "{what}");
        assert_eq!(kstatus, "InProgress", "{what}");
    }
    // No status yet (only the CRD's default, `{observedGeneration: 0}`):
    // Progressing for Argo CD, InProgress for kstatus (generation 1 is not
    // observed).
    for what in ["apikey/fresh", "tokenpolicy/fresh-policy"] {
        let (obj, (argo, message, kstatus)) = by_name(what);
        assert_eq!(
            obj["status"],
            serde_json::json!({"observedGeneration": 0}),
            "{what}: {obj}"
        );
        assert_eq!(obj["metadata"]["generation"], 1, "{what}");
        assert_eq!(argo, "Progressing", "{what}");
        assert_eq!(message, "Waiting for latchkey", "{what}");
        assert_eq!(
            kstatus, "InProgress",
            "{what}: generation 1, observedGeneration 0"
        );
    }
}

/// Puts this worktree's CRDs back when the cluster's ApiKey or TokenPolicy
/// CRD has no default for `status` (another worktree's test binary applied
/// its own at start).
fn ensure_status_default() {
    let defaulted = ["apikeys.latchkey.dev", "tokenpolicies.latchkey.dev"]
        .iter()
        .all(|crd| {
            let (_, out, _) = kubectl(&[
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.status.default.observedGeneration}",
            ]);
            out.trim() == "0"
        });
    if !defaulted {
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            repo().join("crds").to_str().unwrap(),
        ]);
    }
}

/// A ValidatingAdmissionPolicy and its binding that refuse to create the
/// Secrets `names` in namespace `ns`, in force once this returns (a
/// server-side dry run is refused); deleted when dropped.
fn refuse_secrets(ns: &str, names: &[&str]) -> RefuseSecrets {
    let name = format!("latchkey-e2e-refuse-{ns}");
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let objects = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["CREATE"], "resources": ["secrets"],
                    }]},
                    "validations": [{
                        "expression": format!("!(object.metadata.name in [{list}])"),
                        "message": "refused by the test",
                    }],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": ns},
                    }},
                },
            },
        ],
    });
    apply(&objects.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (created, _, _) = kubectl(&[
            "create",
            "secret",
            "generic",
            names[0],
            "-n",
            ns,
            "--from-literal=probe=1",
            "--dry-run=server",
        ]);
        if !created {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ValidatingAdmissionPolicy {name} never took effect"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    RefuseSecrets(name)
}

struct RefuseSecrets(String);

impl Drop for RefuseSecrets {
    fn drop(&mut self) {
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            let _ = kubectl(&["delete", kind, &self.0, "--ignore-not-found"]);
        }
    }
}
