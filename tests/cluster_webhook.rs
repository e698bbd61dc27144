//! The admission webhook against the local control plane: the real API
//! server calls `latchkey run --webhook-addr … --webhook-url …` over TLS on
//! 127.0.0.1. Each test has its own namespace, its own latchkey and its own
//! ValidatingWebhookConfiguration limited to that namespace (deleted at the
//! end), so parallel tests never see each other's webhook.

mod common;

use common::tls::connector;
use common::webhook::{WEBHOOK_LISTENING, Webhook, assert_refused};
use common::{
    LatchkeyProcess, TestNamespace, api_key_manifest as apikey, apply_result, eventually, free_port, kubectl,
    kubectl_ok, token_policy_manifest as policy,
};
use latchkey::{conditions, crd::ApiKey};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn exists(kind: &str, name: &str, ns: &str) -> bool {
    kubectl(&["get", kind, name, "-n", ns]).0
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_applies_are_refused_with_the_reason_and_dry_run_agrees() {
    let ns = TestNamespace::new("lk-wh-rules").await;
    let n = ns.name.as_str();
    let _webhook = Webhook::start(n, &[]);
    kubectl_ok(&["create", "secret", "generic", "db-creds", "-n", n]);
    // The issuer is unique per run: issuer paths are cluster-wide.
    common::apply(&policy(
        n,
        "orders",
        &format!(
            "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n  issuer: https://auth.example.com/{n}/orders\n"
        ),
    ));

    // 1. A Secret someone else holds.
    assert_refused(
        &apikey(n, "thief", "  secretName: db-creds\n"),
        "Secret \"db-creds\" already exists in this namespace and does not belong to this ApiKey",
    );
    assert!(!exists("apikey", "thief", n));
    // 2. Scopes outside the policy.
    assert_refused(
        &apikey(
            n,
            "greedy",
            "  scopes: [\"orders:read\", \"orders:write\"]\n  tokenPolicyRef:\n    name: orders\n",
        ),
        "spec.scopes [orders:write] not allowed by TokenPolicy \"orders\"",
    );
    assert!(!exists("apikey", "greedy", n));
    // 3. A policy's issuer cannot change.
    assert_refused(
        &policy(
            n,
            "orders",
            "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n  issuer: https://other.example.com/orders\n",
        ),
        "spec.issuer cannot be changed after creation",
    );
    let issuer = kubectl_ok(&[
        "get",
        "tokenpolicy",
        "orders",
        "-n",
        n,
        "-o",
        "jsonpath={.spec.issuer}",
    ]);
    assert_eq!(
        issuer,
        format!("https://auth.example.com/{n}/orders"),
        "the refused change changed nothing"
    );

    // 4. A role's resource naming a claim the policy does not declare (the
    // CRD's CEL cannot afford this check; the webhook makes it).
    assert_refused(
        &policy(
            n,
            "roles",
            &format!(
                "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n  issuer: https://auth.example.com/{n}/roles\n  \
                 customClaims: [{{name: tenant}}]\n  roles:\n    reader:\n    - scopes: [\"orders:read\"]\n      \
                 resources: [\"/orders/{{org}}/\"]\n"
            ),
        ),
        "spec.roles.reader: resource \"/orders/{org}/\" names the claim org, which spec.customClaims does not declare",
    );
    assert!(!exists("tokenpolicy", "roles", n));

    // Valid: a dry run passes and creates nothing; the real apply passes.
    let good = apikey(
        n,
        "good",
        "  scopes: [\"orders:read\"]\n  tokenPolicyRef:\n    name: orders\n",
    );
    let (ok, out) = apply_result(&good, true);
    assert!(ok, "{out}");
    assert!(!exists("apikey", "good", n), "a dry run creates nothing");
    common::apply(&good);
    assert!(exists("apikey", "good", n));
    // Its own Secret does not count as taken (re-apply, and an update).
    common::apply(&good.replace("spec:\n", "spec:\n  subject: svc\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_applied_before_its_policy_is_accepted_and_becomes_ready_when_it_arrives() {
    let ns = TestNamespace::new("lk-wh-order").await;
    let n = ns.name.as_str();
    let _webhook = Webhook::start(n, &[]);
    let out = common::apply(&apikey(
        n,
        "early",
        "  scopes: [\"orders:read\"]\n  tokenPolicyRef:\n    name: later\n",
    ));
    assert!(
        out.contains("TokenPolicyMissing"),
        "kubectl shows the warning: {out}"
    );
    let api_keys: kube::Api<ApiKey> = kube::Api::namespaced(common::client().await, n);
    let ready = |want: &'static str| {
        let api_keys = api_keys.clone();
        move || {
            let api_keys = api_keys.clone();
            async move {
                let ak = api_keys.get("early").await.ok()?;
                let c = ak
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == conditions::READY)?;
                (c.reason == want).then_some(c)
            }
        }
    };
    let waiting = eventually(
        Duration::from_secs(60),
        "Ready=False TokenPolicyMissing",
        ready("TokenPolicyMissing"),
    )
    .await;
    assert_eq!(waiting.status, "False");
    assert!(waiting.message.contains("\"later\""), "{}", waiting.message);
    assert!(exists("secret", "early", n), "the key is delivered meanwhile");

    common::apply(&policy(
        n,
        "later",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n",
    ));
    eventually(
        Duration::from_secs(60),
        "Ready once the policy exists",
        || async {
            let ak = api_keys.get("early").await.ok()?;
            conditions::is_true(&ak.status?.conditions, conditions::READY).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_latchkey_changes_or_deletes_its_secrets() {
    let ns = TestNamespace::new("lk-wh-secret").await;
    let n = ns.name.as_str();
    let webhook = Webhook::start(n, &[]);
    // "someone" may edit Secrets as far as RBAC goes; only the webhook stops them.
    kubectl_ok(&[
        "create",
        "role",
        "secret-editor",
        "--verb=get,list,update,patch,delete",
        "--resource=secrets",
        "-n",
        n,
    ]);
    kubectl_ok(&[
        "create",
        "rolebinding",
        "someone-edits-secrets",
        "--role=secret-editor",
        "--user=someone",
        "-n",
        n,
    ]);
    common::apply(&apikey(n, "billing", "  scopes: [\"orders:read\"]\n"));
    let api_keys: kube::Api<ApiKey> = kube::Api::namespaced(common::client().await, n);
    let revision = |want: i64| {
        let api_keys = api_keys.clone();
        move || {
            let api_keys = api_keys.clone();
            async move {
                let ak = api_keys.get("billing").await.ok()?;
                let s = ak.status?;
                (conditions::is_true(&s.conditions, conditions::READY) && s.revision == Some(want))
                    .then_some(())
            }
        }
    };
    eventually(Duration::from_secs(60), "ApiKey billing Ready", revision(1)).await;
    let key = || {
        kubectl_ok(&[
            "get",
            "secret",
            "billing",
            "-n",
            n,
            "-o",
            "jsonpath={.data.api-key}",
        ])
    };
    let before = key();

    for args in [
        vec!["annotate", "secret", "billing", "x=y"],
        vec![
            "patch",
            "secret",
            "billing",
            "-p",
            r#"{"data":{"api-key":"Zm9v"}}"#,
        ],
        vec!["delete", "secret", "billing"],
    ] {
        let mut full = args.clone();
        full.extend(["-n", n, "--as=someone"]);
        let (ok, out, err) = kubectl(&full);
        assert!(!ok, "{args:?} as someone was allowed: {out}");
        assert!(
            err.contains("is managed by latchkey")
                && err.contains("kubectl annotate apikey billing latchkey.dev/rotate"),
            "{args:?}: {err}"
        );
        // The same verdict with --dry-run=server.
        full.push("--dry-run=server");
        let (ok, _, err) = kubectl(&full);
        assert!(
            !ok && err.contains("is managed by latchkey"),
            "{args:?} dry run: {err}"
        );
    }
    assert_eq!(key(), before, "nothing changed");

    // latchkey itself still rotates it (the user's way: annotate the ApiKey).
    kubectl_ok(&[
        "annotate",
        "apikey",
        "billing",
        "-n",
        n,
        "latchkey.dev/rotate=now-1",
    ]);
    eventually(Duration::from_secs(60), "the rotation delivered", revision(2)).await;
    assert_ne!(key(), before, "latchkey wrote the new key into its Secret");

    // The garbage collector deletes the Secret with its ApiKey.
    kubectl_ok(&["delete", "apikey", "billing", "-n", n]);
    eventually(
        Duration::from_secs(60),
        "the garbage collector deleted the Secret",
        || async { (!exists("secret", "billing", n)).then_some(()) },
    )
    .await;
    let log = webhook.process.log_text();
    assert!(log.contains("only these users"), "{log}");
}

/// The PEM CA of the webhook, from its Secret.
fn ca_pem(ns: &str) -> String {
    common::tls::ca_pem(ns, "webhook-ca")
}

fn post(body: &str) -> String {
    format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serving_certificate_rotates_under_load_without_a_failed_call_and_a_restart_keeps_the_ca() {
    let ns = TestNamespace::new("lk-wh-tls").await;
    let n = ns.name.as_str();
    // A certificate lives 4 s and is renewed 3 s before its end: every ~1 s.
    let mut webhook = Webhook::start(
        n,
        &[
            "--webhook-cert-validity-seconds",
            "4",
            "--webhook-cert-renew-before-seconds",
            "3",
        ],
    );
    let ca = ca_pem(n);
    let bundle = webhook.ca_bundle();
    let tls = connector(&ca);
    let https = |tls: &_, port, request: &str| common::tls::https(tls, port, "127.0.0.1", request);

    // A malformed review: a clear 400, over TLS that verifies with the CA.
    let (_, response) = https(&tls, webhook.port, &post("{\"kind\":\"nonsense\"")).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("malformed AdmissionReview"), "{response}");

    // kubectl apply in a loop (real and dry-run, valid and invalid) while
    // the certificate rotates; every call must get the webhook's verdict.
    let started = Instant::now();
    let (mut calls, mut failed) = (0, Vec::new());
    let mut leaves = BTreeSet::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(15) {
        i += 1;
        let valid = apikey(n, "loop", &format!("  subject: svc-{i}\n"));
        let (ok, out) = apply_result(&valid, i % 2 == 0);
        calls += 1;
        if !ok {
            failed.push(out);
        }
        let (ok, out) = apply_result(&apikey(n, "loop-taken", "  secretName: probe-taken\n"), true);
        calls += 1;
        if ok || !out.contains("denied the request") {
            failed.push(out);
        }
        // A fresh handshake each round: the certificate served now, which
        // must verify against the CA in caBundle.
        match https(
            &tls,
            webhook.port,
            "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ) {
            Ok((leaf, _)) => {
                leaves.insert(leaf);
            }
            Err(e) => failed.push(format!("TLS handshake: {e}")),
        }
    }
    let log = webhook.process.log_text();
    let renewals = log.matches("renewed the webhook serving certificate").count();
    println!(
        "{calls} kubectl calls through the webhook in {:?}, {} failed; {renewals} certificate renewals; {} distinct serving certificates seen",
        started.elapsed(),
        failed.len(),
        leaves.len()
    );
    assert!(failed.is_empty(), "failed calls:\n{}", failed.join("\n---\n"));
    assert!(renewals >= 5, "only {renewals} renewals:\n{log}");
    assert!(
        leaves.len() >= 5,
        "only {} distinct certificates served",
        leaves.len()
    );

    // A restart keeps the CA (the Secret) and so the caBundle.
    assert!(webhook.process.terminate().success(), "a clean stop on SIGTERM");
    webhook.keep_configuration = true;
    drop(webhook);
    let again = Webhook::start(n, &[]);
    assert_eq!(ca_pem(n), ca, "the CA survives a restart");
    assert_eq!(again.ca_bundle(), bundle, "caBundle unchanged");
    assert!(again.process.log_text().contains("admission webhook listening"));
}

/// openssl, in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req <kind>` (`-new` for a request, `-x509` for a self-signed
/// certificate) with a new unencrypted P-256 key written to `key`, the
/// result to `out`, and `extra` arguments.
fn openssl_req(dir: &std::path::Path, kind: &str, key: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        kind,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        out,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// A serving certificate for 127.0.0.1 signed by `ca.crt` in `dir`, written
/// as `mounted/tls.crt` and `mounted/tls.key` (what a cert-manager
/// Certificate Secret mounted in the pod holds).
fn issue_mounted(dir: &std::path::Path, serial: u32) {
    openssl_req(dir, "-new", "next.key", "next.csr", &["-subj", "/CN=127.0.0.1"]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "next.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-days",
            "1",
            "-out",
            "next.crt",
            "-extfile",
            "ext.cnf",
        ],
    );
    // Key first, then certificate: the reload only swaps when both parse.
    std::fs::copy(dir.join("next.key"), dir.join("mounted/tls.key")).unwrap();
    std::fs::copy(dir.join("next.crt"), dir.join("mounted/tls.crt")).unwrap();
}

#[tokio::test]
async fn cert_manager_mode_serves_the_mounted_certificate_and_leaves_the_ca_bundle_alone() {
    use base64::Engine;
    let ns = TestNamespace::new("lk-wh-certmgr").await;
    let n = ns.name.as_str();
    let dir = std::env::temp_dir().join(format!("latchkey-certmgr-{n}"));
    std::fs::create_dir_all(dir.join("mounted")).unwrap();
    openssl_req(
        &dir,
        "-x509",
        "ca.key",
        "ca.crt",
        &["-days", "1", "-subj", "/CN=stand-in cert-manager CA"],
    );
    issue_mounted(&dir, 1);
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca);

    // The configuration as the chart (and cert-manager's CA injector) make it.
    let port = free_port();
    let configuration = format!("latchkey-test-{n}");
    let vwc = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: {configuration}\n\
         webhooks:\n- name: resources.latchkey.dev\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  failurePolicy: Fail\n  \
         timeoutSeconds: 5\n  clientConfig:\n    url: https://127.0.0.1:{port}/validate\n    caBundle: {ca_bundle}\n  \
         namespaceSelector:\n    matchLabels:\n      kubernetes.io/metadata.name: {n}\n  rules:\n  - apiGroups: [latchkey.dev]\n    \
         apiVersions: [\"*\"]\n    operations: [CREATE, UPDATE]\n    resources: [apikeys, tokenpolicies]\n"
    );
    common::apply(&vwc);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = kubectl(&[
                "delete",
                "validatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ]);
        }
    }
    let _cleanup = Cleanup(configuration.clone());

    let addr = format!("127.0.0.1:{port}");
    let cert_dir = dir.join("mounted").display().to_string();
    let (mut process, _) = LatchkeyProcess::start_run(
        n,
        &[
            "--webhook-addr",
            &addr,
            "--webhook-cert-dir",
            &cert_dir,
            "--webhook-configuration-name",
            &configuration,
            "--webhook-sync-seconds",
            "1",
        ],
    );
    process.wait_logged(WEBHOOK_LISTENING, &addr);
    kubectl_ok(&["create", "secret", "generic", "db-creds", "-n", n]);
    let refused = |round: &str| {
        assert_refused(
            &apikey(n, &format!("thief-{round}"), "  secretName: db-creds\n"),
            "Secret \"db-creds\" already exists in this namespace and does not belong to this ApiKey",
        )
    };
    // The API server trusts the stand-in CA and reaches latchkey: verdicts arrive.
    eventually(
        Duration::from_secs(20),
        "the API server calls the webhook",
        || async {
            let (ok, out) = apply_result(&apikey(n, "probe", "  secretName: db-creds\n"), true);
            (!ok && out.contains("does not belong to this ApiKey")).then_some(())
        },
    )
    .await;
    refused("first");
    // cert-manager renews: latchkey swaps the new certificate in without a restart.
    issue_mounted(&dir, 2);
    eventually(
        Duration::from_secs(20),
        "latchkey loads the renewed certificate",
        || async {
            process
                .log_text()
                .contains("loaded the renewed mounted serving certificate")
                .then_some(())
        },
    )
    .await;
    refused("second");
    // latchkey never touched the caBundle and kept no CA Secret.
    let bundle = kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &configuration,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]);
    assert_eq!(bundle.trim(), ca_bundle);
    assert!(!exists("secret", "latchkey-webhook-ca", n));
    let log = process.log_text();
    assert!(!log.contains("BEGIN"), "no PEM in the log");
}

/// Issue 13: an issuer path belongs to one TokenPolicy, across namespaces.
/// The victim lives in a namespace this webhook does not even watch; the
/// lookup is cluster-wide because the server routes issuer paths so.
#[tokio::test(flavor = "multi_thread")]
async fn issuer_takeovers_are_refused_naming_the_holder() {
    let victim_ns = TestNamespace::new("lk-wh-victim").await;
    let attacker_ns = TestNamespace::new("lk-wh-attacker").await;
    let (v, a) = (victim_ns.name.as_str(), attacker_ns.name.as_str());
    let spec = |issuer: &str| format!("  audiences: [orders]\n  issuer: {issuer}\n");
    let explicit = format!("https://auth.example.com/tenants/{v}");
    // The victims, created before any webhook: one explicit, one default issuer.
    common::apply(&policy(v, "orders", &spec(&explicit)));
    common::apply(&policy(v, "login", "  audiences: [orders]\n"));
    let _webhook = Webhook::start(a, &[]);

    // 1. An explicit duplicate (same path, on another host too).
    for issuer in [explicit.clone(), format!("http://other.example/tenants/{v}")] {
        assert_refused(
            &policy(a, "evil", &spec(&issuer)),
            &format!("as the issuer \"{explicit}\" of TokenPolicy {v}/orders, which holds it"),
        );
    }
    // 2. Squatting the default issuer path of another namespace's policy.
    for base in ["http://127.0.0.1:8080", "https://auth.example.com"] {
        assert_refused(
            &policy(a, "evil", &spec(&format!("{base}/issuers/{v}/login"))),
            &format!("has the path of the default issuer of TokenPolicy {v}/login"),
        );
    }
    assert!(!exists("tokenpolicy", "evil", a));
    // A unique issuer, or the default one, is fine.
    common::apply(&policy(
        a,
        "fair",
        &spec(&format!("https://auth.example.com/tenants/{a}")),
    ));
    common::apply(&policy(a, "plain", "  audiences: [orders]\n"));
}
