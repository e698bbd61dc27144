//! `latchkey controller`, `serve` and `run` children, as the chart's
//! ServiceAccount ([`latchkey_kubeconfig`]) unless a test gives another
//! kubeconfig, with `RUST_LOG=info,latchkey=debug` into a log file.

use super::process::{LoggedChild, Stop};
use super::{LATCHKEY_NS, LEASE_PREFIX, free_port, latchkey_kubeconfig, unique};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long a server may take from its start to a 200 from `/readyz`.
const SERVING_WAIT: Duration = Duration::from_secs(60);

/// One latchkey process, killed by PID on drop.
pub struct LatchkeyProcess {
    child: LoggedChild,
    /// `http://<addr>` of its auth server, when it serves HTTP.
    url: Option<String>,
}

impl LatchkeyProcess {
    /// `latchkey controller` watching `namespace`.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &["controller"])
    }

    /// `latchkey run` (controller and auth server) on a free loopback port;
    /// returns the process and the server's base URL once it is ready.
    pub fn start_run(namespace: &str, extra: &[&str]) -> (Self, String) {
        Self::start_http("run", namespace, extra)
    }

    /// `latchkey <mode>` (`run` or `serve`) on a free loopback port; returns
    /// the process and the server's base URL once it is ready.
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
        let lease = own_lease(namespace);
        let mut args = vec![mode];
        args.extend_from_slice(extra);
        args.extend(watch_and_lease(mode, namespace, &lease, &[]));
        let process = Self::spawn_http(&args, latchkey_kubeconfig(), env, namespace);
        let url = process.url().to_owned();
        (process, url)
    }

    /// `latchkey <args…> --watch-namespace NS --kubeconfig <the chart's
    /// ServiceAccount>`; `controller` and `run` elect themselves on a Lease
    /// of their own (`e2e-<NS>-<n>` in [`LATCHKEY_NS`]).
    pub fn start_with(namespace: &str, args: &[&str]) -> Self {
        Self::start_elected(namespace, args, &own_lease(namespace), &[])
    }

    /// Like [`start_with`](Self::start_with), on Lease `lease` with
    /// `lease_args` (identity, timing) for `controller` and `run`.
    pub fn start_elected(namespace: &str, args: &[&str], lease: &str, lease_args: &[&str]) -> Self {
        let mut all = args.to_vec();
        all.extend(watch_and_lease(args[0], namespace, lease, lease_args));
        Self::spawn(&all, latchkey_kubeconfig(), &[], namespace)
    }

    /// `latchkey serve` over every namespace (no `--watch-namespace`: it
    /// writes nothing but lastUsedAt, so other tests' namespaces are safe),
    /// once it is ready.
    pub fn serve_all_namespaces(extra: &[&str]) -> Self {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        Self::spawn_http(&args, latchkey_kubeconfig(), &[], "all-namespaces")
    }

    /// `latchkey <args…> --http-addr <a free port> --kubeconfig <kubeconfig>`
    /// (`args[0]` is the mode); returns once its server is ready (over
    /// HTTPS when `args` say `--http-tls`).
    pub fn spawn_http(args: &[&str], kubeconfig: &Path, env: &[(&str, &str)], label: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut all = vec![args[0], "--http-addr", &addr];
        all.extend_from_slice(&args[1..]);
        let mut process = Self::spawn(&all, kubeconfig, env, label);
        if serves_https(args) {
            process.child.wait_serving_https(&addr, SERVING_WAIT);
            process.url = Some(format!("https://{addr}"));
        } else {
            process.child.wait_serving(&addr, SERVING_WAIT);
            process.url = Some(format!("http://{addr}"));
        }
        process
    }

    /// `latchkey <args…> --kubeconfig <kubeconfig>`, its log named after
    /// the mode and `label`.
    pub fn spawn(args: &[&str], kubeconfig: &Path, env: &[(&str, &str)], label: &str) -> Self {
        let log = std::env::temp_dir().join(format!(
            "latchkey-{}-{label}-{}-{}.log",
            args[0],
            std::process::id(),
            unique()
        ));
        let child = LoggedChild::spawn(
            &format!("latchkey {}", args[0]),
            log,
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(args)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .env("RUST_LOG", "info,latchkey=debug")
                .envs(env.iter().copied()),
            Stop::Kill,
        );
        Self { child, url: None }
    }

    /// The auth server's base URL (`http://127.0.0.1:<port>`, `https://`
    /// with `--http-tls`).
    pub fn url(&self) -> &str {
        self.url.as_deref().expect("this latchkey serves no HTTP")
    }

    /// Waits until the log says `message` with `addr=<addr>` (e.g. the
    /// webhook's `admission webhook listening (TLS)`), the process running.
    pub fn wait_logged(&mut self, message: &str, addr: &str) {
        self.child
            .wait_logged(message, addr, std::time::Instant::now() + SERVING_WAIT);
    }

    /// The process id (for tests that must tell replicas apart).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGTERM, by PID, and the exit status (within 20 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.child.terminate(Duration::from_secs(20))
    }

    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}

/// Whether `args` turn HTTPS on (`--http-tls MODE` other than `off`).
fn serves_https(args: &[&str]) -> bool {
    args.windows(2).any(|w| w[0] == "--http-tls" && w[1] != "off")
        || args
            .iter()
            .any(|a| a.starts_with("--http-tls=") && *a != "--http-tls=off")
}

/// A Lease of its own for one process in `namespace`.
fn own_lease(namespace: &str) -> String {
    format!("{LEASE_PREFIX}{namespace}-{}", unique())
}

/// `--watch-namespace NS`, and for the modes that elect (`controller`,
/// `run`) the Lease flags.
fn watch_and_lease<'a>(
    mode: &str,
    namespace: &'a str,
    lease: &'a str,
    lease_args: &[&'a str],
) -> Vec<&'a str> {
    let mut flags = Vec::new();
    if matches!(mode, "controller" | "run") {
        flags.extend(["--lease-namespace", LATCHKEY_NS, "--lease-name", lease]);
        flags.extend_from_slice(lease_args);
    }
    flags.extend(["--watch-namespace", namespace]);
    flags
}
