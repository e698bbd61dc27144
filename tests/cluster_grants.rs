//! CredentialGrants against the local control plane: the trust boundary
//! between namespaces.
//!
//! - With grants for namespaces A and B, an ApiKey or TokenPolicy in B that
//!   claims A's scope or A's subject is refused by the webhook (the real
//!   API server calls `latchkey run --webhook-addr` over TLS) with a
//!   message naming what is not granted.
//! - Forced past the webhook (created while no webhook is registered), the
//!   auth server does not honour it: 403 on a `scope=` route for the
//!   ungranted scope, the default subject in X-Auth-Subject, only granted
//!   scopes in X-Auth-Scopes; a grant change is picked up without a restart.
//! - Without grants (open mode) two namespaces presenting the same subject
//!   stay distinguishable (X-Auth-Namespace, `/introspect`'s namespace);
//!   `/introspect` from a namespace
//!   the grants do not cover answers `active:false`; `--require-grants`
//!   (strict mode) honours nothing a namespace without a grant claims, and
//!   its webhook refuses every such claim.
//!
//! Every grant a test creates selects only that test's namespaces (named
//! with the process id), so parallel tests in the same cluster never see
//! each other's restrictions; grants are deleted on drop.

mod common;

use common::webhook::{Webhook, assert_refused};
use common::{
    LatchkeyProcess, TestNamespace, WAIT, api_key_manifest as apikey, apply_result, eventually, header,
    kubectl, kubectl_ok, served_key, token_policy_manifest as policy,
};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// A cluster-scoped CredentialGrant, deleted on drop.
struct Grant {
    name: String,
}

impl Grant {
    fn apply(name: &str, spec: &str) -> Self {
        let manifest = format!(
            "apiVersion: latchkey.dev/v1alpha1\nkind: CredentialGrant\nmetadata:\n  name: {name}\nspec:\n{spec}"
        );
        let (ok, out) = apply_result(&manifest, false);
        assert!(ok, "applying CredentialGrant {name} failed:\n{out}\n{manifest}");
        Self { name: name.into() }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "credentialgrant",
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// `GET <server>/auth/nginx?<query>` with `key`: status and headers.
async fn auth(server: &str, query: &str, key: &str) -> (StatusCode, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .get(format!("{server}/auth/nginx?{query}"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("the auth server answers");
    (resp.status(), resp.headers().clone())
}

/// `POST <server>/introspect` of `token` by `caller`.
async fn introspect(server: &str, caller: &str, token: &str) -> (StatusCode, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{server}/introspect"))
        .header("authorization", format!("Bearer {caller}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .expect("the auth server answers");
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_beyond_the_grants_are_refused_at_admission_and_never_honoured_when_forced() {
    let ns_a = TestNamespace::new("lk-grant-a").await;
    let ns_b = TestNamespace::new("lk-grant-b").await;
    let (a, b) = (ns_a.name.as_str(), ns_b.name.as_str());
    let _grant_a = Grant::apply(
        &format!("{a}-team"),
        &format!("  namespaces: [{a}]\n  scopes: [\"orders:*\"]\n  subjects: [orders-svc]\n"),
    );
    let grant_b = Grant::apply(
        &format!("{b}-team"),
        &format!("  namespaces: [{b}]\n  scopes: [\"billing:*\"]\n  audiences: [billing.example.com]\n"),
    );

    // 1. Admission: B may not claim A's scope or A's subject.
    {
        let _webhook = Webhook::start(b, &[]);
        let not_granted = format!("is not granted to namespace {b} by any CredentialGrant");
        assert_refused(
            &apikey(b, "greedy", "  scopes: [\"orders:write\", \"billing:read\"]\n"),
            &format!(
                "scope orders:write (spec.scopes) {not_granted} (the grants selecting it: {b}-team); ask the platform team"
            ),
        );
        assert_refused(
            &apikey(b, "impostor", "  subject: orders-svc\n"),
            &format!("subject orders-svc (spec.subject) {not_granted}"),
        );
        assert_refused(
            &apikey(b, "elsewhere", "  audiences: [orders.example.com]\n"),
            &format!("audience orders.example.com (spec.audiences) {not_granted}"),
        );
        assert_refused(
            &policy(
                b,
                "minter",
                "  audiences: [billing.example.com]\n  allowedScopes: [\"billing:read\", \"orders:write\"]\n",
            ),
            &format!("scope orders:write (spec.allowedScopes) {not_granted}"),
        );
        // What B's grant gives passes (a dry run creates nothing).
        let (ok, out) = apply_result(
            &apikey(
                b,
                "fine",
                "  scopes: [\"billing:read\"]\n  subject: b/fine\n  audiences: [billing.example.com]\n",
            )
            .replace("b/fine", &format!("{b}/fine")),
            true,
        );
        assert!(ok, "a granted claim was refused:\n{out}");
        let (ok, out) = apply_result(
            &policy(
                b,
                "minter",
                "  audiences: [billing.example.com]\n  allowedScopes: [\"billing:read\"]\n",
            ),
            true,
        );
        assert!(ok, "a granted TokenPolicy was refused:\n{out}");
    }

    // 2. Forced past the webhook: created while none is registered.
    let forced = apikey(
        b,
        "forced",
        "  scopes: [\"orders:write\", \"billing:read\"]\n  subject: orders-svc\n",
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out) = apply_result(&forced, true);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never went away: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_run, server) = LatchkeyProcess::start_run(b, &[]);
    let key = served_key(
        b,
        "forced",
        "  scopes: [\"orders:write\", \"billing:read\"]\n  subject: orders-svc\n",
        &server,
    )
    .await;
    let (status, headers) = auth(&server, "scope=orders:write", &key).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an ungranted scope is never honoured"
    );
    assert!(
        header(&headers, "www-authenticate").contains("insufficient_scope"),
        "{headers:?}"
    );
    let (status, headers) = auth(&server, "scope=billing:read", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&headers, "x-auth-subject"),
        format!("{b}/forced"),
        "A's subject falls back to the default"
    );
    assert_eq!(
        header(&headers, "x-auth-scopes"),
        "billing:read",
        "effective scopes only"
    );
    // No audience claimed: B's granted audience, not every audience.
    let (status, _) = auth(&server, "scope=billing:read&audience=orders.example.com", &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = auth(&server, "scope=billing:read&audience=billing.example.com", &key).await;
    assert_eq!(status, StatusCode::OK);

    // 3. A grant change is picked up by the running server.
    kubectl_ok(&[
        "patch",
        "credentialgrant",
        &grant_b.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":["billing:*","orders:write"]}}"#,
    ]);
    eventually(
        WAIT,
        "orders:write granted to B after the grant change",
        || async { (auth(&server, "scope=orders:write", &key).await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    let (_, headers) = auth(&server, "scope=orders:write", &key).await;
    assert_eq!(header(&headers, "x-auth-scopes"), "orders:write billing:read");
    assert_eq!(header(&headers, "x-auth-subject"), format!("{b}/forced"));
    // And revoked again when the grant goes.
    drop(grant_b);
    eventually(WAIT, "B unrestricted once its grant is gone", || async {
        let (status, headers) = auth(&server, "scope=orders:write", &key).await;
        (status == StatusCode::OK && header(&headers, "x-auth-subject") == "orders-svc").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_mode_namespaces_stay_distinguishable_and_introspection_covers_only_granted_namespaces() {
    let ns_c = TestNamespace::new("lk-grant-c").await;
    let ns_d = TestNamespace::new("lk-grant-d").await;
    let ns_e = TestNamespace::new("lk-grant-e").await;
    let (c, d, e) = (ns_c.name.as_str(), ns_d.name.as_str(), ns_e.name.as_str());
    // Only E is selected: its keys may introspect E's credentials.
    let _grant_e = Grant::apply(
        &format!("{e}-gw"),
        &format!(
            "  namespaces: [{e}]\n  scopes: [\"latchkey:introspect\", \"orders:read\"]\n  introspectNamespaces: [{e}]\n"
        ),
    );
    let _controllers = [
        LatchkeyProcess::start(c),
        LatchkeyProcess::start(d),
        LatchkeyProcess::start(e),
    ];
    let server = LatchkeyProcess::serve_all_namespaces(&[]);
    let url = server.url().to_owned();
    let spec = "  subject: shared-svc\n  scopes: [\"orders:read\", \"latchkey:introspect\"]\n";
    let key_c = served_key(c, "shared", spec, &url).await;
    let key_d = served_key(d, "shared", spec, &url).await;
    let key_e = served_key(e, "gw", "  scopes: [\"latchkey:introspect\"]\n", &url).await;
    let key_e2 = served_key(e, "orders", "  scopes: [\"orders:read\"]\n", &url).await;

    // Open mode: C and D both claim the subject, and both get it…
    let (sc, hc) = auth(&url, "scope=orders:read", &key_c).await;
    let (sd, hd) = auth(&url, "scope=orders:read", &key_d).await;
    assert_eq!((sc, sd), (StatusCode::OK, StatusCode::OK));
    assert_eq!(header(&hc, "x-auth-subject"), "shared-svc");
    assert_eq!(header(&hd, "x-auth-subject"), "shared-svc");
    // …but where each comes from is never ambiguous: X-Auth-Namespace and
    // /introspect name the namespace.
    let (status, about_d) = introspect(&url, &key_c, &key_d).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(about_d["active"], true, "{about_d}");
    assert_eq!(about_d["namespace"], d);
    let (_, about_c) = introspect(&url, &key_d, &key_c).await;
    assert_eq!(about_c["namespace"], c);
    assert_eq!(header(&hc, "x-auth-namespace"), c);
    assert_eq!(header(&hd, "x-auth-namespace"), d);

    // /introspect under a grant: E's caller learns about E only.
    let (status, about_e2) = introspect(&url, &key_e, &key_e2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(about_e2["active"], true, "{about_e2}");
    assert_eq!(about_e2["namespace"], e);
    let (status, about_c) = introspect(&url, &key_e, &key_c).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        about_c,
        serde_json::json!({"active": false}),
        "C is not covered by E's grant"
    );
    // An unrestricted caller learns nothing about a restricted namespace.
    let (_, about_e2) = introspect(&url, &key_c, &key_e2).await;
    assert_eq!(about_e2, serde_json::json!({"active": false}));
    // E's granted scope is honoured.
    assert_eq!(auth(&url, "scope=orders:read", &key_e2).await.0, StatusCode::OK);

    // Strict mode: a namespace without a grant claims nothing.
    let strict = LatchkeyProcess::serve_all_namespaces(&["--require-grants"]);
    let (status, _) = auth(strict.url(), "scope=orders:read", &key_d).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "strict: D is granted no scope");
    let (status, headers) = auth(strict.url(), "", &key_d).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-auth-subject"), format!("{d}/shared"));
    assert_eq!(header(&headers, "x-auth-scopes"), "");
    let (status, _) = introspect(strict.url(), &key_d, &key_d).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "latchkey:introspect is not self-granted in strict mode"
    );
    // E is granted: unchanged by strict mode.
    assert_eq!(
        auth(strict.url(), "scope=orders:read", &key_e2).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_mode_refuses_every_claim_of_a_namespace_without_a_grant() {
    let ns = TestNamespace::new("lk-grant-strict").await;
    let n = ns.name.as_str();
    let _webhook = Webhook::start(n, &["--require-grants"]);
    let why = format!(
        "namespace {n} is selected by no CredentialGrant and latchkey requires grants (--require-grants)"
    );
    assert_refused(&apikey(n, "scoped", "  scopes: [\"orders:read\"]\n"), &why);
    assert_refused(&apikey(n, "named", "  subject: billing-service\n"), &why);
    // No claim, or its own namespace's subject: allowed.
    let (ok, out) = apply_result(&apikey(n, "plain", &format!("  subject: {n}/plain\n")), true);
    assert!(ok, "an ApiKey without claims was refused:\n{out}");
}
