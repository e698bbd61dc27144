//! The local control plane: bringing it up once per test binary, kubectl,
//! a namespace per test, applying manifests, and the chart's ServiceAccount
//! that every latchkey process runs as.

use super::{repo, unique};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn cluster_script() -> PathBuf {
    repo().join("e2e/cluster")
}

/// Brings the cluster up once per test binary, installs the CRDs, and
/// returns the admin kubeconfig path.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        super::tls::install_crypto_provider();
        let out = Command::new(cluster_script())
            .arg("up")
            .output()
            .expect("run e2e/cluster up");
        assert!(
            out.status.success(),
            "the local control plane did not start (e2e/cluster up):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(cluster_script()).arg("kubeconfig").output().unwrap();
        assert!(out.status.success());
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            repo().join("crds").to_str().unwrap(),
        ]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/apikeys.latchkey.dev",
            "crd/tokenpolicies.latchkey.dev",
            "crd/credentialgrants.latchkey.dev",
            "--timeout=60s",
        ]);
        path
    })
}

/// The namespace latchkey's chart is rendered into for the tests (its
/// ServiceAccount, the Role for Leases).
pub const LATCHKEY_NS: &str = "latchkey-system";
/// The release name of that render (also the ServiceAccount's name); not
/// `latchkey`, so that tests/chart.rs can install and uninstall a release
/// `latchkey` without touching these objects.
pub const E2E_RELEASE: &str = "latchkey-e2e";
/// Prefix of the tests' Lease names.
pub const LEASE_PREFIX: &str = "e2e-";

/// A kubeconfig that authenticates as the chart's ServiceAccount (a
/// two-hour token), after applying the chart's ServiceAccount and RBAC once
/// per test binary. latchkey processes run with it, so every test shows the
/// chart's rights are enough.
pub fn latchkey_kubeconfig() -> &'static Path {
    static SA_KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    SA_KUBECONFIG.get_or_init(|| {
        let (_, _, _) = kubectl(&["create", "namespace", LATCHKEY_NS]);
        let rbac = chart_rbac();
        let (ok, out, err) =
            kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &rbac);
        assert!(ok, "applying the chart's RBAC failed:\n{out}{err}\n{rbac}");
        remove_stale_leases();
        let token = kubectl_ok(&["create", "token", E2E_RELEASE, "-n", LATCHKEY_NS, "--duration=2h"]);
        token_kubeconfig(token.trim(), E2E_RELEASE, "sa")
    })
}

/// A kubeconfig (a file in the temp dir, named after `label` and this
/// process) for the admin kubeconfig's server and CA, authenticating with a
/// bearer `token` as user `user` (context `<label>-context`).
pub fn token_kubeconfig(token: &str, user: &str, label: &str) -> PathBuf {
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let context = format!("{label}-context");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster["server"].as_str().expect("the admin kubeconfig names the server"),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().expect("and its CA"),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "e2e", "user": user}}],
        "current-context": context,
    });
    let path = std::env::temp_dir().join(format!("latchkey-e2e-{label}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// `helm template` of the repository's chart, cut down to the ServiceAccount
/// and its RBAC (no CRDs: applied from crds/; no Deployment, Service,
/// webhook configuration: nothing runs them here).
pub fn chart_rbac() -> String {
    use serde::Deserialize;
    let out = Command::new(cluster_script())
        .args(["helm", "template", E2E_RELEASE])
        .arg(repo().join("charts/latchkey"))
        .args(["--namespace", LATCHKEY_NS])
        .output()
        .expect("run e2e/cluster helm template");
    assert!(
        out.status.success(),
        "helm template of the chart failed (e2e/cluster helm):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let keep = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let docs: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("helm renders valid YAML"))
        .filter(|d| keep.contains(&d["kind"].as_str().unwrap_or_default()))
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect();
    assert!(
        docs.len() >= 5,
        "the chart rendered too few RBAC objects:\n{text}"
    );
    docs.join("---\n")
}

/// Deletes the tests' Leases that nobody has renewed for ten minutes (left
/// by earlier runs; a Lease of a running test is renewed every few seconds).
fn remove_stale_leases() {
    let list = kubectl_ok(&[
        "get",
        "leases",
        "-n",
        LATCHKEY_NS,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.creationTimestamp} {.spec.renewTime}{\"\\n\"}{end}",
    ]);
    let now = k8s_openapi::jiff::Timestamp::now();
    let stale: Vec<&str> = list
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (name, created) = (parts.next()?, parts.next()?);
            let last = parts.next().unwrap_or(created);
            let last: k8s_openapi::jiff::Timestamp = last.parse().ok()?;
            (name.starts_with(LEASE_PREFIX) && now.duration_since(last).as_secs() > 600).then_some(name)
        })
        .collect();
    if !stale.is_empty() {
        let mut args = vec!["delete", "lease", "-n", LATCHKEY_NS, "--wait=false"];
        args.extend(stale);
        let _ = kubectl(&args);
    }
}

/// Runs the built kubectl against the cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cluster_script())
        .arg("kubectl")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn kubectl_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(args);
    assert!(ok, "kubectl {args:?} failed:\n{stdout}{stderr}");
    stdout
}

/// kubectl with `stdin` as the manifest (`-f -`).
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(cluster_script())
        .arg("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn client() -> Client {
    latchkey::client::from_kubeconfig(Some(kubeconfig()))
        .await
        .expect("a client for the local cluster")
}

/// `kubectl apply -f -` of `manifest`, which must succeed (else a panic
/// with kubectl's output); returns kubectl's output (warnings included).
pub fn apply(manifest: &str) -> String {
    let (ok, out) = apply_result(manifest, false);
    assert!(ok, "kubectl apply failed:\n{out}");
    out
}

/// `kubectl apply -f -` of `manifest` (with `--dry-run=server` if
/// `dry_run`): whether it succeeded, and kubectl's stdout and stderr, for
/// tests that check why an apply is refused.
pub fn apply_result(manifest: &str, dry_run: bool) -> (bool, String) {
    let mut args = vec!["apply", "-f", "-"];
    if dry_run {
        args.push("--dry-run=server");
    }
    let (ok, out, err) = kubectl_stdin(&args, manifest);
    (ok, format!("{out}{err}"))
}

/// `kubectl apply -f -` of `manifest`, which the API server must refuse;
/// returns kubectl's stderr (the reason, for the test to check).
pub fn apply_refused(manifest: &str) -> String {
    let (ok, out, err) = kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(!ok, "accepted:\n{manifest}\n{out}");
    err
}

/// A namespace for one test, deleted on drop.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
        kubeconfig();
        let name = format!("{prefix}-{}", std::process::id() as u64 * 1000 + unique());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}
