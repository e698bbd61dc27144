//! Issue 13 against the local control plane: issuers and signing keys under
//! an attacker with rights in a namespace. An issuer path claimed by two
//! TokenPolicies (forced past the webhook: none is registered here) serves
//! neither; a rogue Secret labelled for a policy is ignored; a token signed
//! with a policy's real private key (read from its Secret, as an attacker
//! with Secret read rights could) cannot speak for an API key that policy
//! never admitted, in its namespace or another.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use latchkey::crd::{SigningAlgorithm, TokenPolicy};
use latchkey::token::{claims, keys};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn policy_manifest(ns: &str, name: &str, extra: &str) -> String {
    token_policy_manifest(
        ns,
        name,
        &format!("  audiences: [orders]\n  allowedScopes: [\"orders:read\", \"orders:write\"]\n{extra}"),
    )
}

/// The policy's signing key, read from its Secret: (kid, encoding key).
async fn real_key(secrets: &Api<Secret>, policy: &TokenPolicy) -> (String, jsonwebtoken::EncodingKey) {
    let kid = policy.status.as_ref().unwrap().active_key_id.clone().unwrap();
    let secret = secrets.get(&policy.signing_secret_name()).await.unwrap();
    let pem = secret.data.unwrap()[&format!("{kid}.pem")].0.clone();
    let key = keys::encoding_key(&kid, SigningAlgorithm::ES256, &pem).unwrap();
    (kid, key)
}

/// A token as latchkey would issue it, signed with `key`.
fn forge(kid: &str, key: &jsonwebtoken::EncodingKey, issuer: &str, client_id: &str) -> String {
    forge_with(kid, key, issuer, client_id, |_, _| {})
}

/// [`forge`], with the header and claims changed by `change` first.
fn forge_with(
    kid: &str,
    key: &jsonwebtoken::EncodingKey,
    issuer: &str,
    client_id: &str,
    change: impl FnOnce(&mut jsonwebtoken::Header, &mut Value),
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = json!({
        "iss": issuer, "sub": "victim-svc", "aud": ["orders"], "exp": now + 300, "iat": now,
        "jti": format!("forged-{client_id}"), "client_id": client_id, "scope": "orders:write",
    });
    let mut header = claims::header(jsonwebtoken::Algorithm::ES256, kid);
    change(&mut header, &mut claims);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

async fn auth(server: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{server}/auth/nginx?scope=orders:write"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn token_request(url: &str, key: &str) -> (StatusCode, Value) {
    let resp = post_token(url, key, "grant_type=client_credentials").await;
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (StatusCode, String) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

fn stalled_for_conflict(p: &TokenPolicy) -> Option<String> {
    let conds = &p.status.as_ref()?.conditions;
    let stalled = conds
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == "IssuerConflict")?;
    let ready_false = conds.iter().any(|c| c.type_ == "Ready" && c.status == "False");
    ready_false.then(|| stalled.message.clone())
}

/// A namespace with its own `latchkey run`, TokenPolicy `login` Ready and
/// ApiKey `frontend` (`key_spec`) served.
struct LoginPolicy {
    ns: TestNamespace,
    _latchkey: LatchkeyProcess,
    /// The auth server's base URL.
    server: String,
    policies: Api<TokenPolicy>,
    secrets: Api<Secret>,
    /// `login`, Ready.
    policy: TokenPolicy,
    /// `frontend`'s key.
    key: String,
}

impl LoginPolicy {
    async fn start(prefix: &str, key_spec: &str) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let n = ns.name.as_str();
        let (latchkey, server) = LatchkeyProcess::start_run(n, &[]);
        let client = client().await;
        let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), n);
        let secrets: Api<Secret> = Api::namespaced(client, n);
        apply(&policy_manifest(n, "login", ""));
        let policy = ready_policy(&policies, "login").await;
        let key = served_key(n, "frontend", key_spec, &server).await;
        Self {
            ns,
            _latchkey: latchkey,
            server,
            policies,
            secrets,
            policy,
            key,
        }
    }
}

#[tokio::test]
async fn an_issuer_path_claimed_twice_serves_neither_policy() {
    // The victim, with a key that exchanges and a token that works.
    let LoginPolicy {
        ns,
        server,
        policies,
        secrets,
        policy: victim,
        key,
        ..
    } = &LoginPolicy::start(
        "iss-dispute",
        "  subject: victim-svc\n  scopes: [\"orders:read\", \"orders:write\"]\n  tokenPolicyRef:\n    name: login\n",
    )
    .await;
    let n = ns.name.as_str();
    let issuer = victim.status.as_ref().unwrap().issuer.clone().unwrap();
    let victim_kid = victim.status.as_ref().unwrap().active_key_id.clone().unwrap();
    let client_id = &key[3..15];
    let (status, answer) = token_request(&format!("{issuer}/token"), key).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let victim_token = answer["access_token"].as_str().unwrap().to_owned();
    assert_eq!(auth(server, &victim_token).await, StatusCode::OK);

    // The attacker: a policy of its own (it sorts first: "aaa" < "login"),
    // Ready with a real key, then pointed at the victim's issuer with the
    // webhook out of the way.
    apply(&policy_manifest(n, "aaa-squatter", ""));
    let attacker = ready_policy(policies, "aaa-squatter").await;
    let (attacker_kid, attacker_key) = real_key(secrets, &attacker).await;
    policies
        .patch(
            "aaa-squatter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"issuer": issuer}})),
        )
        .await
        .unwrap();

    // And one created with the victim's issuer from the start.
    apply(&policy_manifest(
        n,
        "aab-direct",
        &format!("  issuer: {issuer}\n"),
    ));

    // All Stalled, each naming the others.
    for (name, other) in [
        ("login", "aaa-squatter"),
        ("login", "aab-direct"),
        ("aaa-squatter", "login"),
        ("aab-direct", "login"),
    ] {
        let other = format!("{n}/{other}");
        eventually(
            WAIT,
            &format!("{name} Stalled with IssuerConflict naming {other}"),
            || async {
                let message = stalled_for_conflict(&policies.get(name).await.ok()?)?;
                message.contains(&other).then_some(())
            },
        )
        .await;
    }
    // Nothing is served at the path, and nothing signed by either key passes.
    let forged = forge(&attacker_kid, &attacker_key, &issuer, client_id);
    eventually(
        Duration::from_secs(10),
        "the disputed issuer is not served",
        || async {
            (get(&format!("{issuer}/.well-known/jwks.json")).await.0 == StatusCode::NOT_FOUND).then_some(())
        },
    )
    .await;
    for suffix in ["/.well-known/jwks.json", "/.well-known/openid-configuration"] {
        let (status, body) = get(&format!("{issuer}{suffix}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{suffix}: {body}");
        assert!(!body.contains(&attacker_kid) && !body.contains(&victim_kid));
    }
    let (status, answer) = token_request(&format!("{issuer}/token"), key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = token_request(&format!("{server}/token"), key).await;
    assert_eq!(answer["error"], "unauthorized_client", "{status} {answer}");
    assert!(
        answer["error_description"]
            .as_str()
            .unwrap()
            .contains("also claimed by another TokenPolicy")
    );
    assert_eq!(
        auth(server, &forged).await,
        StatusCode::UNAUTHORIZED,
        "the attacker's token"
    );
    assert_eq!(
        auth(server, &victim_token).await,
        StatusCode::UNAUTHORIZED,
        "neither side verifies"
    );

    // The squatters gone: the victim is back by itself, with its own key only.
    for name in ["aaa-squatter", "aab-direct"] {
        policies.delete(name, &DeleteParams::default()).await.unwrap();
    }
    ready_policy(policies, "login").await;
    let jwks: Value = eventually(WAIT, "the victim's JWKS is served again", || async {
        let (status, body) = get(&format!("{issuer}/.well-known/jwks.json")).await;
        (status == StatusCode::OK).then(|| serde_json::from_str(&body).unwrap())
    })
    .await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![victim_kid.as_str()]);
    let (status, answer) = token_request(&format!("{issuer}/token"), key).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(auth(server, &victim_token).await, StatusCode::OK);
    assert_eq!(
        auth(server, &forged).await,
        StatusCode::UNAUTHORIZED,
        "the attacker's token"
    );
}

#[tokio::test]
async fn a_rogue_labelled_secret_never_replaces_the_signing_keys() {
    let LoginPolicy {
        server,
        secrets,
        policy,
        key,
        ..
    } = &LoginPolicy::start(
        "iss-rogue",
        "  scopes: [\"orders:write\"]\n  tokenPolicyRef:\n    name: login\n",
    )
    .await;
    let kid = policy.status.as_ref().unwrap().active_key_id.clone().unwrap();
    // Tokens keep being issued by the real key and keep verifying, for a
    // while after each change (the server's watch needs a moment).
    let keeps_working = |what: &'static str| {
        let (server, key) = (server.clone(), key.clone());
        async move {
            let until = Instant::now() + Duration::from_secs(4);
            let mut minted = 0;
            while Instant::now() < until {
                let (status, answer) = token_request(&format!("{server}/token"), &key).await;
                assert_eq!(status, StatusCode::OK, "{what}: {answer}");
                let token = answer["access_token"].as_str().unwrap();
                assert_eq!(
                    auth(&server, token).await,
                    StatusCode::OK,
                    "{what}: token {minted}"
                );
                minted += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert!(minted > 0);
        }
    };
    keeps_working("before").await;

    // The rogue Secret: labelled for the policy, a private key under its
    // kid (and one more), once unowned and once claiming the policy's uid
    // as owner (anyone who can read the policy knows it).
    let rogue_key = keys::generate(SigningAlgorithm::ES256).unwrap();
    let other = keys::generate(SigningAlgorithm::ES256).unwrap();
    for (name, owned) in [("rogue-unowned", false), ("rogue-owned", true)] {
        let mut rogue: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"latchkey.dev/token-policy": "login"}},
            "stringData": {format!("{kid}.pem"): rogue_key.pem, format!("{}.pem", other.kid): other.pem},
        }))
        .unwrap();
        if owned {
            rogue.metadata.owner_references = policy.controller_owner_ref(&()).map(|o| vec![o]);
        }
        secrets.create(&PostParams::default(), &rogue).await.unwrap();
        keeps_working("with a rogue Secret").await;
    }
    for name in ["rogue-unowned", "rogue-owned"] {
        secrets.delete(name, &DeleteParams::default()).await.unwrap();
    }
    keeps_working("after the rogue Secrets were deleted").await;
}

#[tokio::test]
async fn a_token_cannot_speak_for_a_key_its_policy_never_admitted() {
    let home = TestNamespace::new("iss-client-home").await;
    let away = TestNamespace::new("iss-client-away").await;
    let (h, a) = (home.name.as_str(), away.name.as_str());
    let _controllers = (LatchkeyProcess::start(h), LatchkeyProcess::start(a));
    let server = LatchkeyProcess::serve_all_namespaces(&[]);
    let client = client().await;
    let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), h);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), h);
    apply(&policy_manifest(h, "login", ""));
    let policy = ready_policy(&policies, "login").await;
    let spec = "  scopes: [\"orders:write\"]\n";
    let admitted = served_key(
        h,
        "frontend",
        &format!("{spec}  tokenPolicyRef:\n    name: login\n"),
        server.url(),
    )
    .await;
    let stranger = served_key(h, "stranger", spec, server.url()).await;
    let outsider = served_key(a, "outsider", spec, server.url()).await;
    // The issuer as this server serves it, and the policy's real key.
    let discovery: Value = eventually(WAIT, "the policy's discovery", || async {
        let (status, body) = get(&format!(
            "{}/issuers/{h}/login/.well-known/openid-configuration",
            server.url()
        ))
        .await;
        (status == StatusCode::OK).then(|| serde_json::from_str(&body).unwrap())
    })
    .await;
    let issuer = discovery["issuer"].as_str().unwrap();
    let (kid, key) = real_key(&secrets, &policy).await;
    eventually(WAIT, "the policy's key is published", || async {
        let jwks = get(&format!("{issuer}/.well-known/jwks.json")).await.1;
        jwks.contains(&kid).then_some(())
    })
    .await;

    let token = |k: &str| forge(&kid, &key, issuer, &k[3..15]);
    assert_eq!(
        auth(server.url(), &token(&admitted)).await,
        StatusCode::OK,
        "the control"
    );
    assert_eq!(
        auth(server.url(), &token(&stranger)).await,
        StatusCode::UNAUTHORIZED,
        "a key of the namespace the policy never admitted"
    );
    assert_eq!(
        auth(server.url(), &token(&outsider)).await,
        StatusCode::UNAUTHORIZED,
        "a key of another namespace"
    );
    // The admitted key's id, but ten years long, with a crit header, or
    // with a custom claim that would shadow introspection's `active`.
    type Change = Box<dyn FnOnce(&mut jsonwebtoken::Header, &mut Value)>;
    let forgeries: [(&str, Change); 3] = [
        (
            "exp - iat of ten years",
            Box::new(|_, c| c["exp"] = json!(c["iat"].as_i64().unwrap() + 10 * 365 * 86400)),
        ),
        (
            "a crit header",
            Box::new(|h, _| h.crit = Some(vec!["exp".into()])),
        ),
        (
            "a custom claim active",
            Box::new(|_, c| c["active"] = json!("false")),
        ),
    ];
    for (what, change) in forgeries {
        let forged = forge_with(&kid, &key, issuer, &admitted[3..15], change);
        assert_eq!(
            auth(server.url(), &forged).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
}
