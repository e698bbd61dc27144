//! Federation against a real OpenID provider, Ory Hydra (built from the Go
//! module proxy by `e2e/build-hydra`, which `e2e/deps` runs; version in
//! `e2e/versions.env`; without it this test fails and says so), on loopback
//! with its in-memory database: JWT access tokens of its client_credentials
//! grant, with `groups` and `org` claims added by Hydra's own token hook
//! (`oauth2.token_hook`, served here), are exchanged at latchkey's `/token`
//! (RFC 8693, `subject_token_type=urn:ietf:params:oauth:token-type:jwt`) for
//! latchkey tokens naming the provider's subject, role and tenant (and
//! allowed on acme's calendar, not globex's); an expired, foreign-audience,
//! other-issuer or role-less token is refused; a subject the namespace's
//! CredentialGrant does not give is refused; a key rotated at Hydra is
//! picked up on its unknown `kid`; no credential reaches latchkey's log.
//! Also: the API server's CEL rules on `spec.trustedIssuers`.

mod common;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use common::process::{LoggedChild, Stop};
use common::*;
use kube::Api;
use latchkey::crd::TokenPolicy;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn kid(token: &str) -> String {
    let part = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The Hydra binary `e2e/build-hydra` built (it fails, naming e2e/deps,
/// when there is none).
fn hydra_binary() -> PathBuf {
    let out = Command::new(repo().join("e2e/build-hydra"))
        .arg("--path")
        .output()
        .expect("run e2e/build-hydra --path");
    assert!(
        out.status.success(),
        "no Hydra: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Claims the token hook adds, by Hydra client id.
type HookClaims = Arc<Mutex<HashMap<String, Value>>>;

/// Hydra's token hook (its documented extension point): the claims set
/// for the requesting client, top-level through `allowed_top_level_claims`.
async fn serve_hook(claims: HookClaims) -> String {
    async fn hook(State(claims): State<HookClaims>, Json(body): Json<Value>) -> Json<Value> {
        let client = body["request"]["client_id"].as_str().unwrap_or_default();
        let extra = claims.lock().unwrap().get(client).cloned().unwrap_or(json!({}));
        Json(json!({"session": {"access_token": extra}}))
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(claims);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Hydra {
    public: String,
    admin: String,
    http: reqwest::Client,
    _proc: LoggedChild,
}

impl Hydra {
    fn start(bin: &Path, dir: &Path, name: &str, hook: &str) -> Self {
        let (public, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!(
                "dsn: memory\nserve:\n  public: {{host: 127.0.0.1, port: {public}}}\n  admin: {{host: 127.0.0.1, port: {admin}}}\n\
                 urls:\n  self: {{issuer: 'http://127.0.0.1:{public}'}}\nstrategies:\n  access_token: jwt\n\
                 secrets:\n  system: [a-test-system-secret-of-32-bytes]\n\
                 oauth2:\n  token_hook: {{url: '{hook}'}}\n  allowed_top_level_claims: [groups, org, employee]\nlog: {{level: warn}}\n"
            ),
        )
        .unwrap();
        let mut proc = LoggedChild::spawn(
            name,
            dir.join(format!("{name}.log")),
            Command::new(bin)
                .args(["serve", "all", "--dev", "-c"])
                .arg(&config)
                .env_remove("DSN"),
            Stop::Term,
        );
        proc.wait_listening(public, Duration::from_secs(30));
        proc.wait_listening(admin, Duration::from_secs(30));
        Hydra {
            public: format!("http://127.0.0.1:{public}"),
            admin: format!("http://127.0.0.1:{admin}"),
            http: reqwest::Client::new(),
            _proc: proc,
        }
    }

    /// A client_credentials client with JWT access tokens: (id, secret).
    async fn client(&self, audience: &[&str]) -> (String, String) {
        let resp = self
            .http
            .post(format!("{}/admin/clients", self.admin))
            .json(&json!({"grant_types": ["client_credentials"], "audience": audience,
                          "access_token_strategy": "jwt", "token_endpoint_auth_method": "client_secret_basic"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let c: Value = resp.json().await.unwrap();
        (
            c["client_id"].as_str().unwrap().into(),
            c["client_secret"].as_str().unwrap().into(),
        )
    }

    async fn token(&self, (id, secret): &(String, String), audience: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/oauth2/token", self.public))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials"), ("audience", audience)])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "Hydra's token endpoint: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

/// A cluster-scoped CredentialGrant, deleted on drop.
struct Grant(String);

impl Grant {
    fn apply(name: &str, spec: &str) -> Self {
        apply(&format!(
            "apiVersion: latchkey.dev/v1alpha1\nkind: CredentialGrant\nmetadata:\n  name: {name}\nspec:\n{spec}"
        ));
        Grant(name.to_owned())
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "credentialgrant",
            &self.0,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

struct Answer {
    status: StatusCode,
    json: Value,
}

async fn exchange(url: &str, key: &str, external: &str) -> Answer {
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}",
        enc(EXCHANGE),
        enc(external),
        enc(JWT)
    );
    let resp = post_token(url, key, &form).await;
    Answer {
        status: resp.status(),
        json: resp.json().await.unwrap_or(Value::Null),
    }
}

fn refused(a: &Answer, what: &str, says: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.json);
    assert_eq!(a.json["error"], "invalid_grant", "{what}: {}", a.json);
    let text = a.json.to_string();
    assert!(text.contains(says), "{what}: {text}");
    assert!(!text.contains("eyJ"), "{what}: no token in an error: {text}");
}

#[tokio::test]
async fn hydra_tokens_are_exchanged_for_role_and_tenant_scoped_tokens() {
    let bin = hydra_binary();
    let ns = TestNamespace::new("federation").await;
    let dir = std::env::temp_dir().join(format!("latchkey-federation-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let claims = HookClaims::default();
    let hook = serve_hook(claims.clone()).await;
    let hydra = Hydra::start(&bin, &dir, "hydra", &hook);
    let other = Hydra::start(&bin, &dir, "hydra-other", &hook);

    let (latchkey, server) = LatchkeyProcess::start_run(&ns.name, &[]);
    let token_url = format!("{server}/token");
    let policies: Api<TokenPolicy> = Api::namespaced(client().await, &ns.name);
    let spec = format!(
        "  audiences: [calendar]\n  allowedScopes: [\"calendar-events:read\", \"calendar-events:write\"]\n\
         \x20 customClaims: [{{name: tenant, required: true}}]\n\
         \x20 roles:\n    data-entry: [{{scopes: [\"calendar-events:write\"], resources: [\"/calendar-events/{{tenant}}/\"]}}]\n\
         \x20   admin: [{{scopes: [\"calendar-events:read\"]}}]\n\
         \x20 sessionMaxAge: 8h\n\
         \x20 trustedIssuers:\n  - issuer: {}\n    audiences: [latchkey]\n    subjectClaim: employee\n    roleClaim: groups\n    claims: {{tenant: org}}\n",
        hydra.public
    );
    let manifest = token_policy_manifest(&ns.name, "federated", &spec);
    // The shared control plane's CRD may be another worktree's for a
    // moment (which prunes spec.trustedIssuers): apply this one's again.
    eventually(
        Duration::from_secs(60),
        "TokenPolicy keeps spec.trustedIssuers",
        || async {
            apply(&manifest);
            let p = policies.get("federated").await.ok()?;
            if !p.spec.trusted_issuers.is_empty() {
                return Some(());
            }
            kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                repo().join("crds").to_str().unwrap(),
            ]);
            None
        },
    )
    .await;
    ready_policy(&policies, "federated").await;
    let key = served_key(
        &ns.name,
        "login-handler",
        "  subject: login-handler\n  scopes: [\"calendar-events:read\", \"calendar-events:write\"]\n  tokenPolicyRef: {name: federated}\n",
        &server,
    )
    .await;

    // A user of the provider: role data-entry, tenant acme.
    let user = hydra.client(&["latchkey", "elsewhere"]).await;
    claims.lock().unwrap().insert(
        user.0.clone(),
        json!({"groups": ["staff", "data-entry"], "org": "acme", "employee": "employee-7"}),
    );
    let external = hydra.token(&user, "latchkey").await;
    let started = Instant::now();
    let a = exchange(&token_url, &key, &external).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        a.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let minted = payload(a.json["access_token"].as_str().unwrap());
    assert_eq!(minted["sub"], "employee-7", "{minted}");
    assert_eq!(minted["act"]["sub"], "login-handler");
    assert_eq!(minted["role"], "data-entry");
    assert_eq!(minted["tenant"], "acme");
    assert_eq!(minted["scope"], "calendar-events:write");
    assert_eq!(
        minted["authorization_details"][0]["paths"][0],
        "/calendar-events/acme/"
    );
    assert!(
        minted["sid"].is_string() && minted["auth_time"].is_i64(),
        "{minted}"
    );
    assert_eq!(minted["idp"], hydra.public.as_str(), "{minted}");
    // On a resource=path route: acme's calendar, not globex's.
    let minted_token = a.json["access_token"].as_str().unwrap().to_owned();
    // Refresh by exchange: the policy has no spec.delegation, and a
    // federated session needs none (same sub, sid, auth_time, idp).
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}",
        enc(EXCHANGE),
        enc(&minted_token),
        enc(ACCESS_TOKEN)
    );
    let resp = post_token(&token_url, &key, &form).await;
    let status = resp.status();
    let r: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "refresh of a federated token: {r}");
    let refreshed = payload(r["access_token"].as_str().unwrap());
    for claim in ["sub", "sid", "auth_time", "idp", "role", "tenant", "act"] {
        assert_eq!(refreshed[claim], minted[claim], "{claim}");
    }
    for (tenant, want) in [("acme", StatusCode::OK), ("globex", StatusCode::FORBIDDEN)] {
        let resp = reqwest::Client::new()
            .get(format!(
                "{server}/auth/nginx?scope=calendar-events:write&resource=path"
            ))
            .bearer_auth(&minted_token)
            .header(
                "x-original-url",
                format!("http://app.example/calendar-events/{tenant}/1"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{tenant}");
        if want == StatusCode::OK {
            assert_eq!(header(resp.headers(), "x-auth-subject"), "employee-7");
            assert_eq!(header(resp.headers(), "x-auth-actor"), "login-handler");
        }
    }

    // A short-lived one for the expiry check below.
    let brief = hydra.client(&["latchkey"]).await;
    claims.lock().unwrap().insert(
        brief.0.clone(),
        json!({"groups": ["admin"], "org": "acme", "employee": "employee-8"}),
    );
    let lifespans = hydra
        .http
        .put(format!("{}/admin/clients/{}/lifespans", hydra.admin, brief.0))
        .json(&json!({"client_credentials_grant_access_token_lifespan": "1s"}))
        .send()
        .await
        .unwrap();
    assert!(
        lifespans.status().is_success(),
        "{}",
        lifespans.text().await.unwrap()
    );
    let expiring = hydra.token(&brief, "latchkey").await;
    let issued = Instant::now();

    // Another audience of the same provider, and another provider.
    let foreign = hydra.token(&user, "elsewhere").await;
    refused(
        &exchange(&token_url, &key, &foreign).await,
        "foreign audience",
        "aud",
    );
    let stranger = other.client(&["latchkey"]).await;
    claims.lock().unwrap().insert(
        stranger.0.clone(),
        json!({"groups": ["admin"], "org": "acme", "employee": "employee-8"}),
    );
    let untrusted = other.token(&stranger, "latchkey").await;
    refused(
        &exchange(&token_url, &key, &untrusted).await,
        "other issuer",
        "trustedIssuers",
    );
    // No role among the policy's.
    let nobody = hydra.client(&["latchkey"]).await;
    claims.lock().unwrap().insert(
        nobody.0.clone(),
        json!({"groups": ["staff"], "org": "acme", "employee": "employee-9"}),
    );
    let roleless = hydra.token(&nobody, "latchkey").await;
    refused(&exchange(&token_url, &key, &roleless).await, "no role", "groups");

    // Someone with this namespace's rights runs a provider and trusts it: it
    // names any subject it likes. Once the platform team restricts the
    // namespace (a CredentialGrant), only granted subjects are exchanged,
    // as for delegation.
    let outsider = hydra.client(&["latchkey"]).await;
    claims.lock().unwrap().insert(
        outsider.0.clone(),
        json!({"groups": ["admin"], "org": "acme", "employee": "ceo"}),
    );
    let outsider_token = hydra.token(&outsider, "latchkey").await;
    let a = exchange(&token_url, &key, &outsider_token).await;
    assert_eq!(a.status, StatusCode::OK, "unrestricted namespace: {}", a.json);
    let _grant = Grant::apply(
        &format!("{}-federation", ns.name),
        &format!(
            "  namespaces: [{}]\n  scopes: [\"calendar-events:*\"]\n  audiences: [calendar]\n  subjects: [login-handler, \"employee-*\"]\n",
            ns.name
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the CredentialGrant refuses subject ceo",
        || async {
            let a = exchange(&token_url, &key, &outsider_token).await;
            (a.status == StatusCode::BAD_REQUEST).then_some(a)
        },
    )
    .await;
    refused(
        &exchange(&token_url, &key, &outsider_token).await,
        "ungranted subject",
        "CredentialGrants",
    );
    let a = exchange(&token_url, &key, &external).await;
    assert_eq!(a.status, StatusCode::OK, "a granted subject: {}", a.json);

    // Expired: 1 s of lifetime plus latchkey's 30 s of clock leeway.
    let wait = Duration::from_secs(33).saturating_sub(issued.elapsed());
    tokio::time::sleep(wait).await;
    refused(&exchange(&token_url, &key, &expiring).await, "expired", "expired");

    // Rotation at Hydra: a new key signs at once; latchkey has not seen its
    // kid, fetches the JWK Set again (the last fetch is over 10 s old) and
    // accepts it.
    assert!(started.elapsed() > Duration::from_secs(10));
    let rotated = hydra
        .http
        .post(format!("{}/admin/keys/hydra.jwt.access-token", hydra.admin))
        .json(&json!({"alg": "RS256", "use": "sig", "kid": "rotated-at-hydra"}))
        .send()
        .await
        .unwrap();
    assert!(rotated.status().is_success(), "{}", rotated.text().await.unwrap());
    let after = hydra.token(&user, "latchkey").await;
    assert_eq!(kid(&after), "rotated-at-hydra");
    assert_ne!(kid(&after), kid(&external));
    let a = exchange(&token_url, &key, &after).await;
    assert_eq!(a.status, StatusCode::OK, "after rotation: {}", a.json);
    assert_eq!(
        payload(a.json["access_token"].as_str().unwrap())["sub"],
        "employee-7"
    );
    // No credential in latchkey's log (the provider's tokens included).
    let log = latchkey.log_text();
    assert!(log.contains("fetched a trusted issuer's JWK Set"), "{log}");
    for secret in [&key, &external, &after, &foreign, &untrusted, &minted_token] {
        assert!(!log.contains(secret.as_str()), "a credential in latchkey's log");
    }
}

#[tokio::test]
async fn the_api_server_refuses_trusted_issuers_that_cannot_work() {
    let ns = TestNamespace::new("federation-cel").await;
    let n = ns.name.as_str();
    let policy = |name: &str, issuers: &str| {
        token_policy_manifest(
            n,
            name,
            &format!(
                "  audiences: [calendar]\n  customClaims: [{{name: tenant}}]\n  trustedIssuers:\n{issuers}"
            ),
        )
    };
    let entry =
        |issuer: &str, extra: &str| format!("  - issuer: {issuer}\n    audiences: [latchkey]\n{extra}");
    let cases = [
        (entry("http://idp.example.com", ""), "must be an https:// URL"),
        (
            entry("http://127.0.0.1.evil.example:4444", ""),
            "must be an https:// URL",
        ),
        (
            entry("https://user@idp.example.com", ""),
            "must be an https:// URL",
        ),
        (
            entry("https://idp.example.com", "    jwksURL: http://10.0.0.1/jwks\n"),
            "jwksURL must be an https:// URL",
        ),
        (
            entry("https://idp.example.com", "    claims: {org_id: org}\n"),
            "must be a custom claim of spec.customClaims",
        ),
        (
            format!(
                "{}{}",
                entry("https://idp.example.com", ""),
                entry("https://idp.example.com", "")
            ),
            "must not name an issuer twice",
        ),
        (
            "  - issuer: https://idp.example.com\n    audiences: []\n".to_owned(),
            "audiences",
        ),
    ];
    let good = policy(
        "good",
        &format!(
            "{}{}",
            entry(
                "https://idp.example.com",
                "    roleClaim: groups\n    claims: {tenant: org}\n"
            ),
            entry(
                "http://127.0.0.1:4444",
                "    jwksURL: http://127.0.0.1:4444/.well-known/jwks.json\n"
            ),
        ),
    );
    // This worktree's schema (the shared control plane may hold another's
    // for a moment, which would prune the field and accept anything).
    eventually(
        Duration::from_secs(60),
        "the CRD's rules on spec.trustedIssuers",
        || async {
            kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                repo().join("crds").to_str().unwrap(),
            ]);
            for (issuers, says) in &cases {
                let (ok, out) = apply_result(&policy("bad", issuers), true);
                if ok {
                    return None;
                }
                assert!(out.contains(says), "{issuers}: {out}");
            }
            let (ok, out) = apply_result(&good, true);
            assert!(ok, "{out}");
            Some(())
        },
    )
    .await;
}
