//! The Helm chart `charts/latchkey`, checked with a real helm
//! (`e2e/cluster helm`, built from `helm.sh/helm/v3`) and installed into the
//! local control plane:
//!
//! - its CRDs are byte for byte the files of `crds/` (`e2e/chart-crds` copies them);
//! - `helm lint --strict` passes for the default values and the variants;
//! - `helm template` renders what the values ask for (CRDs, RBAC, webhook,
//!   Deployment, NetworkPolicy, namespaced mode) and refuses what latchkey
//!   cannot do;
//! - `helm install` creates the objects, and `kubectl auth can-i --as` the
//!   ServiceAccount shows exactly the intended rights, cluster-wide and after
//!   `helm upgrade` to one watched namespace; `latchkey run` as that
//!   ServiceAccount (a token of it) does its work with them and is never
//!   forbidden; `helm uninstall` removes the release and keeps the CRDs.
//!
//! There are no nodes, so the chart's pods never run: latchkey runs as a
//! process next to the control plane under the chart's identity.
//! helm or the cluster missing is a failure, never a skip.

mod common;

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RELEASE: &str = "latchkey";
const CHART: &str = "charts/latchkey";
/// Every helm call is bounded by this…
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// …and building helm (first run on a machine) by this.
const HELM_BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

fn repo() -> &'static Path {
    common::repo()
}

fn chart_dir() -> PathBuf {
    repo().join(CHART)
}

/// Runs `cmd` from the repository root, killing it after `timeout`.
fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    cmd.current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Read both pipes on threads so a large output cannot block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap().unwrap(),
        stderr: err_reader.join().unwrap().unwrap(),
    }
}

/// `e2e/cluster helm ARGS…`.
fn helm(args: &[&str]) -> Output {
    ensure_helm();
    let mut cmd = Command::new(repo().join("e2e/cluster"));
    cmd.arg("helm").args(args);
    run_bounded(cmd, &format!("helm {}", args.join(" ")), STEP_TIMEOUT)
}

/// Builds helm once (minutes on a fresh machine; then a cache hit), so the
/// bounded steps time the chart, not the build.
fn ensure_helm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(repo().join("e2e/cluster"));
        cmd.args(["helm", "version", "--short"]);
        let out = run_bounded(
            cmd,
            "e2e/cluster helm version (building helm)",
            HELM_BUILD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "helm could not be built or run (e2e/cluster helm version):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// `--set` arguments for helm.
fn sets<'a>(values: &[&'a str]) -> Vec<&'a str> {
    values.iter().flat_map(|v| ["--set", v]).collect()
}

/// `helm template` with `values`: the raw text.
fn template_text(values: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", "latchkey-system"];
    args.extend(sets(values));
    helm_ok(&args)
}

/// `helm template` with `values`: the objects.
fn template(values: &[&str]) -> Vec<Value> {
    parse_docs(&template_text(values))
}

fn parse_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| format!("{}/{}", kind(d), name(d))).collect()
}

fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} rendered; got {:?}", kinds(docs)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a Role or ClusterRole as (apiGroup, resource, resourceNames, verbs).
fn rules(role: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.push((
                    group.clone(),
                    resource,
                    strings(&rule["resourceNames"]),
                    strings(&rule["verbs"]),
                ));
            }
        }
    }
    out
}

/// The verbs a role grants on `group/resource`.
fn verbs(role: &Value, group: &str, resource: &str) -> Vec<String> {
    rules(role)
        .into_iter()
        .filter(|(g, r, _, _)| g == group && r == resource)
        .flat_map(|(_, _, _, v)| v)
        .collect()
}

/// The files of `crds/`, sorted, as (file name, content).
fn crd_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// What the chart renders for one CRD file when crds.keep is on.
fn with_keep_annotation(crd: &str) -> String {
    let kept = crd.replacen(
        "\nmetadata:\n",
        "\nmetadata:\n  annotations:\n    helm.sh/resource-policy: keep\n",
        1,
    );
    assert_ne!(kept, crd, "a CRD file without a top-level metadata:");
    kept
}

/// The text of every document `templates/crds.yaml` rendered.
fn rendered_crd_texts(text: &str) -> Vec<String> {
    const SOURCE: &str = "# Source: latchkey/templates/crds.yaml\n";
    format!("\n{text}")
        .split("\n---\n")
        .filter_map(|doc| doc.strip_prefix(SOURCE))
        .map(|doc| format!("{}\n", doc.trim_end_matches('\n')))
        .collect()
}

// ------------------------------------------------------------ files

#[test]
fn chart_crds_are_the_files_of_crds_dir() {
    let committed = crd_files(&repo().join("crds"));
    let in_chart = crd_files(&chart_dir().join("files/crds"));
    assert!(!committed.is_empty(), "crds/ is empty");
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&in_chart),
        names(&committed),
        "charts/latchkey/files/crds/ and crds/ hold different files: run e2e/chart-crds"
    );
    for ((file, want), (_, have)) in committed.iter().zip(&in_chart) {
        assert!(
            want == have,
            "charts/latchkey/files/crds/{file} differs from crds/{file}: run e2e/chart-crds"
        );
    }
    // The script's own check agrees.
    let out = run_bounded(
        {
            let mut c = Command::new(repo().join("e2e/chart-crds"));
            c.arg("--check");
            c
        },
        "e2e/chart-crds --check",
        STEP_TIMEOUT,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(chart["name"].as_str(), Some("latchkey"));
}

#[test]
fn every_value_is_documented() {
    // A key with a value on its line needs a comment right above it, unless
    // it is part of a documented default: one of its parents has a `# --`
    // comment (for example resources.requests.cpu). Keys that only open a
    // section (`webhook:`) are checked through their children.
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_comment = |l: &str| l.trim_start().starts_with('#');
    // The comment lines right above line i.
    let comments = |i: usize| -> Vec<&str> {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| is_comment(l))
            .copied()
            .collect()
    };
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || is_comment(line) || t.starts_with('-') || !t.contains(':') || t.ends_with(':') {
            continue;
        }
        if !comments(i).is_empty() {
            continue;
        }
        let mut level = indent(line);
        let mut documented_parent = false;
        for j in (0..i).rev() {
            let l = lines[j];
            if l.trim().is_empty() || is_comment(l) || indent(l) >= level {
                continue;
            }
            level = indent(l);
            if comments(j).iter().any(|c| c.trim_start().starts_with("# --")) {
                documented_parent = true;
                break;
            }
        }
        if !documented_parent {
            undocumented.push(format!("line {}: {}", i + 1, t));
        }
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml keys without a comment: {undocumented:#?}"
    );
}

// ------------------------------------------------------------ helm lint / template

#[test]
fn helm_lint_passes_for_the_defaults_and_the_variants() {
    for values in [
        vec![],
        vec!["crds.install=false"],
        vec!["webhook.enabled=false"],
        vec!["networkPolicy.enabled=true", "serviceMonitor.enabled=true"],
        vec!["watchNamespaces={team-a}"],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend(sets(&values));
        let out = helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "helm lint {values:?}:\n{out}");
    }
}

#[test]
fn packaged_chart_carries_the_crds() {
    // Users install the packaged chart (a .tgz or an OCI artifact): files/crds/
    // must be in it and render the same.
    let dir = std::env::temp_dir().join(format!("latchkey-chart-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = helm_ok(&["package", CHART, "--destination", dir.to_str().unwrap()]);
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    let tgz = dir.join(format!("latchkey-{}.tgz", chart["version"].as_str().unwrap()));
    assert!(tgz.exists(), "helm package wrote no {}: {out}", tgz.display());
    let packaged = helm_ok(&[
        "template",
        RELEASE,
        tgz.to_str().unwrap(),
        "--namespace",
        "latchkey-system",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        rendered_crd_texts(&packaged),
        rendered_crd_texts(&template_text(&[])),
        "the packaged chart renders other CRDs than the chart directory"
    );
    assert_eq!(
        rendered_crd_texts(&packaged).len(),
        crd_files(&repo().join("crds")).len()
    );
}

#[test]
fn default_render_has_crds_rbac_deployment_webhook_and_pdb() {
    let text = template_text(&[]);
    let docs = parse_docs(&text);
    let have = kinds(&docs);
    for want in [
        "CustomResourceDefinition/apikeys.latchkey.dev",
        "ServiceAccount/latchkey",
        "ClusterRole/latchkey",
        "ClusterRoleBinding/latchkey",
        "ClusterRole/latchkey-webhook",
        "ClusterRoleBinding/latchkey-webhook",
        "ClusterRole/latchkey-grants",
        "ClusterRoleBinding/latchkey-grants",
        "Role/latchkey-self",
        "RoleBinding/latchkey-self",
        "Deployment/latchkey",
        "Service/latchkey",
        "ValidatingWebhookConfiguration/latchkey",
        "PodDisruptionBudget/latchkey",
    ] {
        assert!(
            have.contains(want),
            "{want} missing from the default render: {have:?}"
        );
    }
    assert!(
        !have
            .iter()
            .any(|k| k.starts_with("NetworkPolicy/") || k.starts_with("ServiceMonitor/"))
    );

    // CRDs: every file of crds/, unchanged but for the keep annotation.
    let files = crd_files(&repo().join("crds"));
    let rendered = rendered_crd_texts(&text);
    assert_eq!(rendered.len(), files.len(), "one CRD per file of crds/");
    for (file, content) in &files {
        assert!(
            rendered.contains(&with_keep_annotation(content)),
            "crds/{file} is not rendered as the file plus helm.sh/resource-policy: keep"
        );
    }
    let unkept = rendered_crd_texts(&template_text(&["crds.keep=false"]));
    for (file, content) in &files {
        assert!(
            unkept.contains(content),
            "crds/{file} is not rendered byte for byte with crds.keep=false"
        );
    }

    // Deployment: 2 replicas of `latchkey run`, probes, hardened.
    let deploy = find(&docs, "Deployment", "latchkey");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("latchkey"));
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(
        &args[..3],
        ["run", "--http-addr", "0.0.0.0:8080"],
        "args: {args:?}"
    );
    assert!(!args.contains(&"--watch-namespace".to_owned()));
    // The webhook: served on its port, with the CA Secret and the Service's name.
    for pair in [
        ["--webhook-addr", "0.0.0.0:8443"],
        ["--webhook-configuration-name", "latchkey"],
        ["--webhook-ca-secret", "latchkey-system/latchkey-webhook-ca"],
        ["--webhook-dns-name", "latchkey.latchkey-system.svc"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    // Leader election on a Lease named like the release, in its namespace.
    let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
    assert_eq!(after("--lease-name"), Some("latchkey"), "args: {args:?}");
    assert_eq!(after("--lease-duration-seconds"), Some("15"));
    assert_eq!(after("--lease-grace-seconds"), Some("5"));
    assert!(!args.contains(&"--no-leader-election".to_owned()));
    let env_names: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        env_names.contains(&"POD_NAMESPACE"),
        "the Lease's namespace: {env_names:?}"
    );
    assert_eq!(c["image"].as_str(), Some("ghcr.io/latchkey-dev/latchkey:0.1.0"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/livez"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(
        c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string()
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));

    // Service: http 8080 and webhook 8443.
    let svc = find(&docs, "Service", "latchkey");
    let ports: Vec<(String, u64)> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("http".to_owned(), 8080), ("webhook".to_owned(), 8443)]);

    // PodDisruptionBudget.
    let pdb = find(&docs, "PodDisruptionBudget", "latchkey");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    // Webhook: the Service's /validate, no side effects, explicit policy and timeout.
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    let hooks = vwc["webhooks"].as_sequence().unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in hooks {
        let svc = &hook["clientConfig"]["service"];
        assert_eq!(svc["name"].as_str(), Some("latchkey"));
        assert_eq!(svc["namespace"].as_str(), Some("latchkey-system"));
        assert_eq!(svc["path"].as_str(), Some("/validate"));
        assert_eq!(svc["port"].as_u64(), Some(8443));
        assert_eq!(hook["sideEffects"].as_str(), Some("None"));
        assert_eq!(hook["failurePolicy"].as_str(), Some("Fail"));
        assert!(hook["timeoutSeconds"].as_u64().is_some());
        assert!(
            hook["clientConfig"]["caBundle"].is_null(),
            "latchkey patches the caBundle itself"
        );
    }
    let resources = &hooks[0]["rules"][0];
    assert_eq!(strings(&resources["resources"]), ["apikeys", "tokenpolicies"]);
    assert_eq!(strings(&resources["operations"]), ["CREATE", "UPDATE"]);
    let secrets = &hooks[1];
    assert_eq!(strings(&secrets["rules"][0]["resources"]), ["secrets"]);
    assert_eq!(
        secrets["objectSelector"]["matchLabels"]["app.kubernetes.io/managed-by"].as_str(),
        Some("latchkey"),
        "the Secrets webhook sees only the Secrets latchkey labels as its own"
    );

    // RBAC: exactly the verbs each resource needs.
    let cluster = find(&docs, "ClusterRole", "latchkey");
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "patch"];
    assert_eq!(verbs(cluster, "latchkey.dev", "apikeys"), read);
    assert_eq!(verbs(cluster, "latchkey.dev", "tokenpolicies"), read);
    assert_eq!(verbs(cluster, "latchkey.dev", "apikeys/status"), ["patch"]);
    assert_eq!(verbs(cluster, "latchkey.dev", "tokenpolicies/status"), ["patch"]);
    assert_eq!(verbs(cluster, "", "secrets"), write);
    assert_eq!(verbs(cluster, "", "configmaps"), write);
    assert_eq!(verbs(cluster, "events.k8s.io", "events"), ["create", "patch"]);
    let this = find(&docs, "Role", "latchkey-self");
    assert_eq!(namespace(this), "latchkey-system");
    assert_eq!(
        verbs(this, "coordination.k8s.io", "leases"),
        ["get", "create", "patch"]
    );
    assert_eq!(verbs(this, "", "secrets"), write);
    let grants = find(&docs, "ClusterRole", "latchkey-grants");
    assert_eq!(
        rules(grants),
        [(
            "latchkey.dev".to_owned(),
            "credentialgrants".to_owned(),
            vec![],
            vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()]
        )],
        "CredentialGrants: read only"
    );
    assert!(
        !args.contains(&"--require-grants".to_owned()),
        "open mode by default"
    );
    let webhook = find(&docs, "ClusterRole", "latchkey-webhook");
    assert_eq!(
        rules(webhook),
        [(
            "admissionregistration.k8s.io".to_owned(),
            "validatingwebhookconfigurations".to_owned(),
            vec!["latchkey".to_owned()],
            vec!["get".to_owned(), "patch".to_owned()]
        )]
    );
    for role in docs
        .iter()
        .filter(|d| kind(d) == "ClusterRole" || kind(d) == "Role")
    {
        for (group, resource, _, verbs) in rules(role) {
            assert!(
                group != "*" && resource != "*" && !verbs.contains(&"*".to_owned()),
                "wildcard in {}",
                name(role)
            );
            assert!(
                !verbs.contains(&"delete".to_owned()),
                "{} may delete {resource}",
                name(role)
            );
        }
    }
}

#[test]
fn values_turn_parts_off_and_on() {
    // No CRDs.
    let docs = template(&["crds.install=false"]);
    assert!(!docs.iter().any(|d| kind(d) == "CustomResourceDefinition"));

    // No webhook: no configuration, no right on webhook configurations, no port.
    let docs = template(&["webhook.enabled=false"]);
    let have = kinds(&docs);
    assert!(
        !have
            .iter()
            .any(|k| k.starts_with("ValidatingWebhookConfiguration/"))
    );
    assert!(!have.contains("ClusterRole/latchkey-webhook"));
    let deploy = find(&docs, "Deployment", "latchkey");
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(!args.iter().any(|a| a.starts_with("--webhook")), "{args:?}");
    let svc = find(&docs, "Service", "latchkey");
    assert_eq!(svc["spec"]["ports"].as_sequence().unwrap().len(), 1);

    // Leader election off (one replica) or with other timing; the timing checked.
    let args_of = |docs: &[Value]| {
        strings(&find(docs, "Deployment", "latchkey")["spec"]["template"]["spec"]["containers"][0]["args"])
    };
    let args = args_of(&template(&["leaderElection.enabled=false", "replicaCount=1"]));
    assert!(args.contains(&"--no-leader-election".to_owned()), "{args:?}");
    assert!(!args.contains(&"--lease-name".to_owned()));
    let args = args_of(&template(&[
        "leaderElection.leaseDurationSeconds=30",
        "leaderElection.leaseGraceSeconds=10",
    ]));
    assert!(
        args.windows(2).any(|w| w == ["--lease-duration-seconds", "30"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--lease-grace-seconds", "10"]),
        "{args:?}"
    );
    // One --claim-header per server.claimHeaders entry; none by default.
    assert!(!args.contains(&"--claim-header".to_owned()), "{args:?}");
    let args = args_of(&template(&["server.claimHeaders={tenant,region}"]));
    let claims: Vec<&[String]> = args.windows(2).filter(|w| w[0] == "--claim-header").collect();
    assert_eq!(
        claims,
        [["--claim-header", "tenant"], ["--claim-header", "region"]],
        "{args:?}"
    );
    let bad = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "leaderElection.leaseGraceSeconds=15",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("must be at least 1 and less than leaderElection.leaseDurationSeconds")
    );

    // An explicit failure policy and timeout, checked.
    let docs = template(&["webhook.failurePolicy=Ignore", "webhook.timeoutSeconds=3"]);
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(vwc["webhooks"][0]["failurePolicy"].as_str(), Some("Ignore"));
    assert_eq!(vwc["webhooks"][1]["timeoutSeconds"].as_u64(), Some(3));
    let bad = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "webhook.failurePolicy=Sometimes",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhook.failurePolicy must be Fail or Ignore"));

    // Strict mode: --require-grants, and NOTES say which mode is on.
    let args = args_of(&template(&["grants.strict=true"]));
    assert!(args.contains(&"--require-grants".to_owned()), "{args:?}");
    let notes = |values: &[&str]| {
        // NOTES only come out of install; a release of its own, without the
        // CRDs and the webhook configuration, so that nothing conflicts with
        // the install test's objects in the same cluster.
        let mut args = vec![
            "install",
            "notes-check",
            CHART,
            "--dry-run=client",
            "--namespace",
            "notes-check",
            "--set",
            "crds.install=false",
            "--set",
            "webhook.enabled=false",
        ];
        args.extend(sets(values));
        helm_ok(&args)
    };
    let open = notes(&[]);
    assert!(
        open.contains("Open mode")
            && open.contains("ANY subject")
            && open.contains("--set grants.strict=true"),
        "{open}"
    );
    assert!(notes(&["grants.strict=true"]).contains("Strict mode is ON"));

    // NetworkPolicy and ServiceMonitor.
    let docs = template(&["networkPolicy.enabled=true", "serviceMonitor.enabled=true"]);
    let np = find(&docs, "NetworkPolicy", "latchkey");
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress_ports: Vec<&str> = np["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["ports"][0]["port"].as_str().unwrap())
        .collect();
    assert_eq!(ingress_ports, ["http", "webhook"]);
    find(&docs, "ServiceMonitor", "latchkey");

    // One watched namespace: Roles there, nothing cluster-wide but the webhook.
    let docs = template(&["watchNamespaces={team-a}"]);
    let have = kinds(&docs);
    assert!(!have.contains("ClusterRole/latchkey"), "{have:?}");
    assert!(!have.contains("ClusterRoleBinding/latchkey"), "{have:?}");
    assert!(
        have.contains("ClusterRole/latchkey-grants") && have.contains("ClusterRoleBinding/latchkey-grants"),
        "CredentialGrants are cluster-scoped: read cluster-wide in one-namespace mode too: {have:?}"
    );
    let role = find(&docs, "Role", "latchkey");
    assert_eq!(namespace(role), "team-a");
    assert_eq!(
        verbs(role, "", "secrets"),
        ["get", "list", "watch", "create", "patch"]
    );
    assert_eq!(verbs(role, "latchkey.dev", "apikeys"), ["get", "list", "watch"]);
    let binding = find(&docs, "RoleBinding", "latchkey");
    assert_eq!(namespace(binding), "team-a");
    assert_eq!(
        binding["subjects"][0]["namespace"].as_str(),
        Some("latchkey-system")
    );
    let deploy = find(&docs, "Deployment", "latchkey");
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.windows(2).any(|w| w == ["--watch-namespace", "team-a"]),
        "args: {args:?}"
    );
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(
        vwc["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("team-a")
    );

    // latchkey watches one namespace or all: a longer list is refused, not half-watched.
    let bad = helm(&["template", RELEASE, CHART, "--set", "watchNamespaces={a,b}"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("watches one namespace"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

// ------------------------------------------------------------ helm install

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

/// `kubectl auth can-i VERB RESOURCE [-n NS] --as SA`: true for yes.
/// `RESOURCE` is `plural[.group][/name]`, with `#subresource` appended.
///
/// kubectl resolves the resource through discovery and, for a type the API
/// server does not serve (TokenPolicy until its CRD is in crds/), asks about
/// the wrong group and says no; for those the same question goes to the
/// authorizer directly as a SubjectAccessReview with the group spelled out.
fn can(sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
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
fn subject_access_review(sa: &str, verb: &str, resource: &str, sub: Option<&str>, ns: Option<&str>) -> bool {
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
fn assert_rights(sa: &str, cases: &[(&str, &str, Option<&str>, bool)]) {
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

fn exists(args: &[&str]) -> bool {
    common::kubectl(args).0
}

/// A kubeconfig that authenticates as ServiceAccount `sa` of `ns` (a
/// TokenRequest token), for running latchkey under the chart's identity.
fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
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
fn assert_never_forbidden(latchkey: &common::LatchkeyProcess) {
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
fn latchkey_works_under_the_chart_rbac(kubeconfig: &Path, ns: &str, name: &str, extra: &[&str]) {
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
fn refused_outside_its_namespace(kubeconfig: &Path, release_ns: &str, apps: &str, other: &str) {
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

#[test]
fn cert_manager_mode_mounts_its_certificate_and_lets_it_inject_the_ca() {
    let docs = template(&["webhook.certManager.enabled=true"]);
    let cert = find(&docs, "Certificate", "latchkey-webhook");
    assert_eq!(cert["spec"]["secretName"].as_str(), Some("latchkey-webhook-tls"));
    assert_eq!(
        cert["spec"]["dnsNames"][0].as_str(),
        Some("latchkey.latchkey-system.svc")
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"].as_str(), Some("Issuer"));
    find(&docs, "Issuer", "latchkey-webhook");
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some("latchkey-system/latchkey-webhook")
    );
    let deploy = find(&docs, "Deployment", "latchkey");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--webhook-cert-dir", "/etc/latchkey/webhook-tls"]),
        "{args:?}"
    );
    assert!(
        !args.contains(&"--webhook-ca-secret".to_owned()),
        "no CA of its own: {args:?}"
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/latchkey/webhook-tls")
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some("latchkey-webhook-tls")
    );
    // With an issuer of one's own, no self-signed Issuer.
    let docs = template(&[
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(!docs.iter().any(|d| d["kind"].as_str() == Some("Issuer")));
    let cert = find(&docs, "Certificate", "latchkey-webhook");
    assert_eq!(cert["spec"]["issuerRef"]["name"].as_str(), Some("corp-ca"));
}
