//! A `latchkey run` with its admission webhook on loopback, registered for
//! one namespace: the real API server calls it over TLS.

use super::{
    E2E_RELEASE, LATCHKEY_NS, LatchkeyProcess, WAIT, api_key_manifest, apply_result, free_port, kubectl,
    kubectl_ok, kubectl_stdin, latchkey_kubeconfig,
};
use std::time::{Duration, Instant};

/// Out of cluster, `--webhook-url` makes latchkey create its own
/// configuration: a development right the chart does not grant (in cluster
/// it may only patch the chart's one configuration). The tests run latchkey
/// as the chart's ServiceAccount, so they add exactly this right, once.
pub fn grant_development_webhook_rights() {
    static GRANTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    GRANTED.get_or_init(|| {
        latchkey_kubeconfig();
        let manifest = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: latchkey-e2e-webhook-dev\n\
             rules:\n- apiGroups: [admissionregistration.k8s.io]\n  resources: [validatingwebhookconfigurations]\n  \
             verbs: [get, create, patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata:\n  name: latchkey-e2e-webhook-dev\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  \
             kind: ClusterRole\n  name: latchkey-e2e-webhook-dev\nsubjects:\n- kind: ServiceAccount\n  \
             name: {E2E_RELEASE}\n  namespace: {LATCHKEY_NS}\n"
        );
        let (ok, out, err) = kubectl_stdin(&["apply", "--server-side", "-f", "-"], &manifest);
        assert!(ok, "granting the development webhook rights failed:\n{out}{err}");
    });
}

/// A `latchkey run` with its webhook for one namespace and a
/// ValidatingWebhookConfiguration of its own (`latchkey-test-<ns>`, limited
/// to that namespace); deletes the configuration and stops latchkey on drop.
pub struct Webhook {
    pub process: LatchkeyProcess,
    pub configuration: String,
    /// The webhook's port on 127.0.0.1.
    pub port: u16,
    /// Leave the configuration in place on drop (a restart reuses it).
    pub keep_configuration: bool,
}

/// The log line the webhook writes once it has bound its address.
pub const WEBHOOK_LISTENING: &str = "admission webhook listening (TLS)";

impl Webhook {
    /// Starts latchkey with `--webhook-url` (it makes its own CA in Secret
    /// `<ns>/webhook-ca` and its configuration) and `extra` flags; returns
    /// once the API server calls it (an invalid ApiKey is refused).
    pub fn start(ns: &str, extra: &[&str]) -> Self {
        grant_development_webhook_rights();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("https://{addr}/validate");
        let configuration = format!("latchkey-test-{ns}");
        let ca = format!("{ns}/webhook-ca");
        let mut args = vec![
            "--webhook-addr",
            &addr,
            "--webhook-url",
            &url,
            "--webhook-configuration-name",
            &configuration,
            "--webhook-ca-secret",
            &ca,
            "--webhook-sync-seconds",
            "2",
        ];
        args.extend_from_slice(extra);
        let (mut process, _) = LatchkeyProcess::start_run(ns, &args);
        process.wait_logged(WEBHOOK_LISTENING, &addr);
        let webhook = Self {
            process,
            configuration,
            port,
            keep_configuration: false,
        };
        webhook_called(ns, &webhook.process);
        webhook
    }

    /// The configuration's `caBundle` (base64).
    pub fn ca_bundle(&self) -> String {
        kubectl_ok(&[
            "get",
            "validatingwebhookconfiguration",
            &self.configuration,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if !self.keep_configuration {
            let _ = kubectl(&[
                "delete",
                "validatingwebhookconfiguration",
                &self.configuration,
                "--ignore-not-found",
            ]);
        }
        self.process.kill();
    }
}

/// Waits until the API server calls the webhook for `ns` (it uses a
/// configuration once its informer saw it): an ApiKey claiming a Secret
/// that is not its own is refused.
pub fn webhook_called(ns: &str, process: &LatchkeyProcess) {
    // (already there after a restart)
    let _ = kubectl(&["create", "secret", "generic", "probe-taken", "-n", ns]);
    let probe = api_key_manifest(ns, "probe", "  secretName: probe-taken\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out) = apply_result(&probe, true);
        if !ok && out.contains("denied the request") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API server never called the webhook (last: {out}):\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Applies `manifest` with `--dry-run=server` and for real: both refused
/// by the webhook with `message`.
pub fn assert_refused(manifest: &str, message: &str) {
    for dry_run in [true, false] {
        let (ok, out) = apply_result(manifest, dry_run);
        assert!(!ok, "accepted (dry run: {dry_run}):\n{manifest}\n{out}");
        assert!(
            out.contains("denied the request") && out.contains(message),
            "dry run {dry_run}: expected the webhook's denial with {message:?}, got:\n{out}"
        );
    }
}
