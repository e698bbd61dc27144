//! Harness for tests against the local control plane (`e2e/cluster`).
//!
//! The first test that needs it runs `e2e/cluster up` (a no-op when it is
//! already up); if the cluster cannot be started the test fails with the
//! script's output. Each test works in a namespace of its own and runs its
//! own `latchkey controller --watch-namespace <ns>`, stopped by PID on drop.
//!
//! latchkey itself runs under exactly the chart's rights: once per test
//! binary the chart's ServiceAccount and RBAC are rendered with `helm
//! template` (release [`E2E_RELEASE`] in [`LATCHKEY_NS`]) and applied, and
//! every latchkey process gets a kubeconfig with a token of that
//! ServiceAccount ([`latchkey_kubeconfig`]). The tests' own kubectl and
//! clients stay admin. Each controller elects itself on a Lease of its own in
//! [`LATCHKEY_NS`] (where the chart's Role allows Leases), so parallel tests
//! never wait for each other; tests/cluster_ha.rs shares one between two.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cluster_script() -> PathBuf {
    repo().join("e2e/cluster")
}

/// Brings the cluster up once per test binary, installs the CRDs, and
/// returns the admin kubeconfig path.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
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
        let admin = kubeconfig();
        let (_, _, _) = kubectl(&["create", "namespace", LATCHKEY_NS]);
        let rbac = chart_rbac();
        let (ok, out, err) = kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &rbac,
        );
        assert!(ok, "applying the chart's RBAC failed:\n{out}{err}\n{rbac}");
        remove_stale_leases();
        let token = kubectl_ok(&[
            "create",
            "token",
            E2E_RELEASE,
            "-n",
            LATCHKEY_NS,
            "--duration=2h",
        ]);
        let admin: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster["server"].as_str().expect("the admin kubeconfig names the server"),
                "certificate-authority-data": cluster["certificate-authority-data"].as_str().expect("and its CA"),
            }}],
            "users": [{"name": E2E_RELEASE, "user": {"token": token.trim()}}],
            "contexts": [{"name": "chart-sa", "context": {"cluster": "e2e", "user": E2E_RELEASE}}],
            "current-context": "chart-sa",
        });
        let path = std::env::temp_dir().join(format!("latchkey-e2e-sa-{}.kubeconfig", std::process::id()));
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    })
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

/// A namespace for one test, deleted on drop.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
        kubeconfig();
        let name = format!("{prefix}-{}", std::process::id() as u64 * 1000 + rand_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self { name }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A `latchkey controller` process watching one namespace, killed on drop.
pub struct ControllerProcess {
    child: Child,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &["controller"])
    }

    /// `latchkey run` (controller and auth server) on a free loopback port;
    /// returns the process and the server's base URL once `/livez` answers.
    pub fn start_run(namespace: &str, extra: &[&str]) -> (Self, String) {
        Self::start_http("run", namespace, extra)
    }

    /// `latchkey <mode>` (`run` or `serve`) on a free loopback port; returns
    /// the process and the server's base URL once it listens.
    pub fn start_http(mode: &str, namespace: &str, extra: &[&str]) -> (Self, String) {
        Self::start_http_env(mode, namespace, extra, &[])
    }

    /// [`start_http`](Self::start_http) with more environment variables
    /// (`RUST_LOG` among them overrides the default `info,latchkey=debug`).
    pub fn start_http_env(
        mode: &str,
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Self, String) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![mode, "--http-addr", &addr];
        args.extend_from_slice(extra);
        let mut process = Self::start_with_env(namespace, &args, env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("latchkey {mode} exited ({status}):\n{}", process.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "latchkey {mode} did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (process, format!("http://{addr}"))
    }

    /// `latchkey <args…> --watch-namespace NS --kubeconfig <the chart's
    /// ServiceAccount>`; `controller` and `run` elect themselves on a Lease
    /// of their own (`e2e-<NS>-<n>` in [`LATCHKEY_NS`]).
    pub fn start_with(namespace: &str, args: &[&str]) -> Self {
        Self::start_with_env(namespace, args, &[])
    }

    fn start_with_env(namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let lease = format!("{LEASE_PREFIX}{namespace}-{}", rand_suffix());
        Self::start_elected_env(namespace, args, &lease, &[], env)
    }

    /// Like [`start_with`](Self::start_with), on Lease `lease` with
    /// `lease_args` (identity, timing) for `controller` and `run`.
    pub fn start_elected(namespace: &str, args: &[&str], lease: &str, lease_args: &[&str]) -> Self {
        Self::start_elected_env(namespace, args, lease, lease_args, &[])
    }

    /// [`start_elected`](Self::start_elected) with more environment variables.
    fn start_elected_env(
        namespace: &str,
        args: &[&str],
        lease: &str,
        lease_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log =
            std::env::temp_dir().join(format!("latchkey-{}-{namespace}-{}.log", args[0], rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let elects = matches!(args[0], "controller" | "run");
        let lease_flags: Vec<&str> = if elects {
            let mut flags = vec!["--lease-namespace", LATCHKEY_NS, "--lease-name", lease];
            flags.extend_from_slice(lease_args);
            flags
        } else {
            Vec::new()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(args)
            .args(&lease_flags)
            .args(["--watch-namespace", namespace, "--kubeconfig"])
            .arg(latchkey_kubeconfig())
            .env("RUST_LOG", "info,latchkey=debug")
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start latchkey controller");
        Self { child, log }
    }

    /// The process id (for tests that must tell replicas apart).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, by PID, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "controller did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks it; a tiny race with other
/// processes is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `f` until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies ApiKey `name` in `ns` with `spec` (YAML lines under `spec:`),
/// waits until it is Ready and until the latchkey server at `server` (a base
/// URL) accepts the key its Secret holds; returns that key.
pub async fn served_key(ns: &str, name: &str, spec: &str, server: &str) -> String {
    use latchkey::{conditions, crd::ApiKey};
    let manifest = format!(
        "apiVersion: latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    );
    let (ok, out, err) = kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(ok, "kubectl apply failed:\n{out}{err}");
    let client = client().await;
    let api_keys: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, ns);
    let wait = Duration::from_secs(60);
    let key = eventually(wait, &format!("ApiKey {name} Ready"), || async {
        let ak = api_keys.get(name).await.ok()?;
        conditions::is_true(&ak.status.as_ref()?.conditions, conditions::READY).then_some(())?;
        let secret = secrets.get(&ak.secret_name()).await.ok()?;
        String::from_utf8(secret.data?.get("api-key")?.0.clone()).ok()
    })
    .await;
    let http = reqwest::Client::new();
    eventually(wait, "the latchkey server accepts the new key", || async {
        let resp = http
            .get(format!("{server}/auth/envoy"))
            .header("x-api-key", &key)
            .send()
            .await
            .ok()?;
        (resp.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    key
}

/// A namespace with its own `latchkey controller`, and clients for ApiKeys
/// and Secrets in it.
pub struct Scenario {
    pub ns: TestNamespace,
    pub controller: ControllerProcess,
    pub client: Client,
    pub api_keys: Api<latchkey::crd::ApiKey>,
    pub secrets: Api<k8s_openapi::api::core::v1::Secret>,
}

impl Scenario {
    pub async fn new(prefix: &str) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let controller = ControllerProcess::start(&ns.name);
        let client = client().await;
        Self {
            api_keys: Api::namespaced(client.clone(), &ns.name),
            secrets: Api::namespaced(client.clone(), &ns.name),
            ns,
            controller,
            client,
        }
    }
}
