//! Harness for tests against the local control plane (`e2e/cluster`).
//!
//! The first test that needs it runs `e2e/cluster up` (a no-op when it is
//! already up); if the cluster cannot be started the test fails with the
//! script's output. Each test works in a namespace of its own and runs its
//! own `latchkey controller --watch-namespace <ns>`, stopped by PID on drop.
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
            "--timeout=60s",
        ]);
        path
    })
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
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![mode, "--http-addr", &addr];
        args.extend_from_slice(extra);
        let mut process = Self::start_with(namespace, &args);
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

    /// `latchkey <args…> --watch-namespace NS --kubeconfig …`.
    pub fn start_with(namespace: &str, args: &[&str]) -> Self {
        let log =
            std::env::temp_dir().join(format!("latchkey-{}-{namespace}-{}.log", args[0], rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(args)
            .args(["--watch-namespace", namespace, "--kubeconfig"])
            .arg(kubeconfig())
            .env("RUST_LOG", "info,latchkey=debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start latchkey controller");
        Self { child, log }
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
