//! A namespace list against the real local control plane: one `latchkey
//! run --watch-namespace A,B` (controller and auth server, under the
//! chart's rights like every e2e latchkey) over three namespaces. Keys in A
//! and B become Ready and authenticate; the ApiKey in C is never reconciled,
//! and C's key (minted by a controller of C's own) is unknown to the server
//! (401). A key deleted in B stops working: deletes reach the one index
//! through B's watch. The webhook of such a process is called for A and B
//! and never for C.

mod common;

use common::webhook::{WEBHOOK_LISTENING, grant_development_webhook_rights, webhook_called};
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use latchkey::crd::ApiKey;
use reqwest::StatusCode;
use std::time::Duration;

const SPEC: &str = "  scopes: [\"orders:read\"]\n";

async fn status_of(base: &str, key: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{base}/auth/envoy"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("the latchkey server answers")
        .status()
}

#[tokio::test]
async fn a_namespace_list_reconciles_and_serves_the_listed_namespaces_only() {
    let a = TestNamespace::new("lk-nsl-a").await;
    let b = TestNamespace::new("lk-nsl-b").await;
    let c = TestNamespace::new("lk-nsl-c").await;
    let client = client().await;
    // C's ApiKey exists before latchkey starts, so its first lists would
    // carry it if C were watched.
    apply(&api_key_manifest(&c.name, "outside", SPEC));

    let watch = format!("{},{}", a.name, b.name);
    let lease = format!("{LEASE_PREFIX}nslist-{}-{}", std::process::id(), unique());
    let latchkey = LatchkeyProcess::spawn_http(
        &[
            "run",
            "--watch-namespace",
            &watch,
            "--lease-namespace",
            LATCHKEY_NS,
            "--lease-name",
            &lease,
        ],
        latchkey_kubeconfig(),
        &[],
        "nslist",
    );
    let base = latchkey.url().to_owned();
    let key_a = served_key(&a.name, "in-a", SPEC, &base).await;
    let key_b = served_key(&b.name, "in-b", SPEC, &base).await;
    assert_eq!(status_of(&base, &key_a).await, StatusCode::OK);
    assert_eq!(status_of(&base, &key_b).await, StatusCode::OK);
    let log = latchkey.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ApiKey controller starting") && l.contains(&watch)),
        "the controller names the namespaces it watches:\n{log}"
    );

    // C was never reconciled: A's and B's keys went through the whole
    // delivery meanwhile, C's ApiKey has no status and no Secret.
    let outside: Api<ApiKey> = Api::namespaced(client.clone(), &c.name);
    let c_secrets: Api<Secret> = Api::namespaced(client.clone(), &c.name);
    let ak = outside.get("outside").await.unwrap();
    // (The API server's defaults may give an empty status; a reconcile
    // writes conditions and the current key.)
    assert!(
        ak.status
            .as_ref()
            .is_none_or(|s| s.conditions.is_empty() && s.current_key.is_none() && s.secret_name.is_none()),
        "C's ApiKey was reconciled: {:?}",
        ak.status
    );
    assert!(
        c_secrets.get_opt(&ak.secret_name()).await.unwrap().is_none(),
        "C's ApiKey has a Secret"
    );

    // C's key, minted by a controller of C alone: a real key the server
    // of A and B does not know.
    let c_controller = LatchkeyProcess::start(&c.name);
    let key_c = eventually(WAIT, "C's ApiKey Ready with its key", || async {
        let ak = outside.get("outside").await.ok()?;
        let ready =
            latchkey::conditions::is_true(&ak.status.as_ref()?.conditions, latchkey::conditions::READY);
        let secret = c_secrets.get_opt(&ak.secret_name()).await.ok()??;
        let key = String::from_utf8(secret.data?.get("api-key")?.0.clone()).ok()?;
        ready.then_some(key)
    })
    .await;
    drop(c_controller);
    assert_eq!(
        status_of(&base, &key_c).await,
        StatusCode::UNAUTHORIZED,
        "a key of an unlisted namespace is unknown"
    );
    assert_eq!(status_of(&base, &key_a).await, StatusCode::OK);

    // A delete in B reaches the index through B's watch.
    let in_b: Api<ApiKey> = Api::namespaced(client.clone(), &b.name);
    in_b.delete("in-b", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "B's deleted key refused", || async {
        (status_of(&base, &key_b).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert_eq!(status_of(&base, &key_a).await, StatusCode::OK);
    let log = latchkey.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "latchkey was refused calls:\n{log}"
    );
    assert!(!log.contains(&key_a) && !log.contains(&key_c), "a key in the log");
}

/// The webhook of a `latchkey run --watch-namespace A,B` (its own
/// configuration, `--webhook-url`): the configuration selects A and B
/// (`In`), the API server calls it for both, and its lookup of a Secret's
/// owners works in both; an object of C never reaches it.
#[tokio::test]
async fn the_webhook_of_a_namespace_list_judges_the_listed_namespaces_only() {
    grant_development_webhook_rights();
    let a = TestNamespace::new("lk-nslw-a").await;
    let b = TestNamespace::new("lk-nslw-b").await;
    let c = TestNamespace::new("lk-nslw-c").await;
    let watch = format!("{},{}", a.name, b.name);
    let lease = format!("{LEASE_PREFIX}nslistw-{}-{}", std::process::id(), unique());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}/validate");
    let configuration = format!("latchkey-test-{}", a.name);
    let ca = format!("{}/webhook-ca", a.name);
    let mut latchkey = LatchkeyProcess::spawn_http(
        &[
            "run",
            "--watch-namespace",
            &watch,
            "--lease-namespace",
            LATCHKEY_NS,
            "--lease-name",
            &lease,
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
        ],
        latchkey_kubeconfig(),
        &[],
        "nslist-webhook",
    );
    struct Configuration(String);
    impl Drop for Configuration {
        fn drop(&mut self) {
            let _ = kubectl(&[
                "delete",
                "validatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ]);
        }
    }
    let _configuration = Configuration(configuration.clone());
    latchkey.wait_logged(WEBHOOK_LISTENING, &addr);
    webhook_called(&a.name, &latchkey);
    webhook_called(&b.name, &latchkey);
    let selector = kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &configuration,
        "-o",
        "jsonpath={.webhooks[*].namespaceSelector.matchExpressions[0].values}",
    ]);
    let expected = format!("[\"{}\",\"{}\"]", a.name, b.name);
    assert_eq!(
        selector.trim(),
        format!("{expected} {expected}"),
        "both webhooks select A and B"
    );
    // The same ApiKey in C (claiming a Secret that is not its own) is not
    // judged by latchkey: nothing refuses it.
    let _ = kubectl(&["create", "secret", "generic", "probe-taken", "-n", &c.name]);
    let probe = api_key_manifest(&c.name, "probe", "  secretName: probe-taken\n");
    let (ok, out) = apply_result(&probe, true);
    assert!(ok, "an ApiKey of C was refused: {out}");
    let log = latchkey.log_text();
    assert!(!log.contains(&c.name), "latchkey saw something of C:\n{log}");
}
