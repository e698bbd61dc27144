//! Delegated tokens and sessions against the local control plane: a login
//! handler's API key mints a token for `user-42` (verified by PyJWT and
//! node `jose`: `sub`, `act`, `sid`, `auth_time`), the auth route names the
//! user and the actor, refresh by RFC 8693 token exchange works until a
//! short `sessionMaxAge` and not after, and what another key holder of the
//! namespace tries (subjects outside the pattern, another policy's users,
//! someone else's session, a session past its bound) is refused.

mod common;

use base64::Engine;
use common::*;
use kube::Api;
use latchkey::crd::TokenPolicy;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Applies TokenPolicy `name` with `spec` and waits until it is Ready and
/// the API server kept `spec.delegation` (the shared control plane's CRD may
/// be another worktree's for a moment, which would prune the field: then
/// this worktree's CRDs are applied again and the policy with them).
async fn delegating_policy(policies: &Api<TokenPolicy>, ns: &str, name: &str, spec: &str) -> TokenPolicy {
    let manifest = token_policy_manifest(ns, name, spec);
    eventually(
        Duration::from_secs(60),
        &format!("TokenPolicy {name} keeps spec.delegation"),
        || async {
            apply(&manifest);
            let p = policies.get(name).await.ok()?;
            if p.spec.delegation.is_some() {
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
    ready_policy(policies, name).await
}

struct Answer {
    status: StatusCode,
    json: Value,
}

async fn token_at(url: &str, key: &str, form: &str) -> Answer {
    let resp = post_token(url, key, form).await;
    let status = resp.status();
    assert_eq!(header(resp.headers(), "cache-control"), "no-store");
    Answer {
        status,
        json: resp.json().await.unwrap_or(Value::Null),
    }
}

fn refresh_form(token: &str, extra: &str) -> String {
    format!(
        "grant_type={}&subject_token={}&subject_token_type={}{extra}",
        enc(EXCHANGE),
        enc(token),
        enc(ACCESS_TOKEN)
    )
}

fn refused(a: &Answer, error: &str, what: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.json);
    assert_eq!(a.json["error"], error, "{what}: {}", a.json);
    let text = a.json.to_string();
    assert!(!text.contains("eyJ"), "{what}: no token in an error: {text}");
}

#[tokio::test]
async fn a_login_handler_mints_user_tokens_that_refresh_within_the_session() {
    let ns = TestNamespace::new("delegation").await;
    let (latchkey, server) = LatchkeyProcess::start_run(&ns.name, &[]);
    let client = client().await;
    let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), &ns.name);
    let token_url = format!("{server}/token");
    let scopes =
        "  audiences: [calendar]\n  allowedScopes: [\"calendar-events:read\", \"calendar-events:write\"]\n";
    let login = delegating_policy(
        &policies,
        &ns.name,
        "login",
        &format!("{scopes}  delegation: {{subjectPattern: \"^user-[0-9]+$\"}}\n  sessionMaxAge: 8h\n"),
    )
    .await;
    let issuer = login.status.unwrap().issuer.unwrap();
    // Another policy of the namespace, for staff, with a short session.
    delegating_policy(
        &policies,
        &ns.name,
        "staff",
        &format!("{scopes}  delegation: {{subjectPattern: \"^staff-[0-9]+$\"}}\n  sessionMaxAge: 15s\n  tokenTTL: 10m\n"),
    )
    .await;
    apply(&token_policy_manifest(&ns.name, "plain", scopes));
    ready_policy(&policies, "plain").await;
    let key_spec = |subject: &str, policy: &str| {
        format!(
            "  subject: {subject}\n  scopes: [\"calendar-events:read\", \"calendar-events:write\"]\n  tokenPolicyRef: {{name: {policy}}}\n"
        )
    };
    let handler = served_key(
        &ns.name,
        "login-handler",
        &key_spec("login-handler", "login"),
        &server,
    )
    .await;
    let staff_handler = served_key(
        &ns.name,
        "staff-handler",
        &key_spec("staff-handler", "staff"),
        &server,
    )
    .await;
    let attacker = served_key(&ns.name, "attacker", &key_spec("attacker-svc", "login"), &server).await;
    let plain = served_key(&ns.name, "plain", &key_spec("plain-svc", "plain"), &server).await;

    // The login handler mints a token for user-42.
    let minted_at = Instant::now();
    let a = token_at(
        &token_url,
        &handler,
        "grant_type=client_credentials&requested_subject=user-42&scope=calendar-events:read+calendar-events:write",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let token = a.json["access_token"].as_str().unwrap().to_owned();
    let claims = payload(&token);
    assert_eq!(claims["sub"], "user-42");
    assert_eq!(claims["act"], serde_json::json!({"sub": "login-handler"}));
    assert_eq!(claims["client_id"], &handler[3..15]);
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let auth_time = claims["auth_time"].as_i64().unwrap();
    assert_eq!(auth_time, claims["iat"].as_i64().unwrap());

    // PyJWT and node jose verify it from the issuer's discovery and JWKS.
    for verifier in ["pyjwt", "jose"] {
        let v = third_party_verify(verifier, &issuer, "calendar", &token)
            .unwrap_or_else(|e| panic!("{verifier} refused the delegated token: {e}"));
        assert_eq!(v["sub"], "user-42", "{verifier}");
        assert_eq!(v["act"]["sub"], "login-handler", "{verifier}");
        assert_eq!(v["sid"], sid.as_str(), "{verifier}");
        assert_eq!(v["auth_time"], auth_time, "{verifier}");
    }

    // The auth route names the user and the actor; a client's copies are not echoed.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{server}/auth/nginx?scope=calendar-events:read"))
        .bearer_auth(&token)
        .header("x-auth-actor", "forged-actor")
        .header("x-auth-subject", "forged-subject")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(header(h, "x-auth-subject"), "user-42");
    assert_eq!(header(h, "x-auth-actor"), "login-handler");
    assert_eq!(header(h, "x-auth-key-id"), &handler[3..15]);
    assert_eq!(header(h, "x-auth-namespace"), ns.name);
    // The key itself: X-Auth-Actor present and empty.
    let resp = http
        .get(format!("{server}/auth/forward?scope=calendar-events:read"))
        .header("x-api-key", &handler)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-auth-actor"));
    assert_eq!(header(resp.headers(), "x-auth-actor"), "");

    // Refresh: same sub, sid, auth_time; narrower is fine, wider is not.
    for url in [token_url.clone(), format!("{issuer}/token")] {
        let r = token_at(
            &url,
            &handler,
            &refresh_form(&token, "&scope=calendar-events:read"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.json);
        assert_eq!(r.json["issued_token_type"], ACCESS_TOKEN);
        assert_eq!(r.json["token_type"], "Bearer");
        let fresh = payload(r.json["access_token"].as_str().unwrap());
        assert_eq!(fresh["sub"], "user-42");
        assert_eq!(fresh["sid"], sid.as_str());
        assert_eq!(fresh["auth_time"], auth_time);
        assert_eq!(fresh["scope"], "calendar-events:read");
        assert_ne!(fresh["jti"], claims["jti"]);
        let narrowed = r.json["access_token"].as_str().unwrap();
        let wider = token_at(
            &url,
            &handler,
            &refresh_form(narrowed, "&scope=calendar-events:write"),
        )
        .await;
        refused(&wider, "invalid_scope", "widening by refresh");
    }

    // What another key holder of the namespace tries.
    let a = token_at(&token_url, &attacker, &refresh_form(&token, "")).await;
    refused(&a, "invalid_grant", "refreshing someone else's session");
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("another client")
    );
    for subject in ["admin", "user-42-admin", "staff-1", "login-handler"] {
        let a = token_at(
            &token_url,
            &attacker,
            &format!("grant_type=client_credentials&requested_subject={}", enc(subject)),
        )
        .await;
        refused(&a, "invalid_request", &format!("requested_subject={subject}"));
    }
    let a = token_at(
        &token_url,
        &attacker,
        "grant_type=client_credentials&requested_subject=staff-1&policy=staff",
    )
    .await;
    refused(&a, "unauthorized_client", "another policy's users");
    let a = token_at(
        &token_url,
        &plain,
        "grant_type=client_credentials&requested_subject=user-42",
    )
    .await;
    refused(
        &a,
        "unauthorized_client",
        "requested_subject without spec.delegation",
    );
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("spec.delegation")
    );
    // A staff token refreshed with the login handler's key: another client and policy.
    let staff = token_at(
        &token_url,
        &staff_handler,
        "grant_type=client_credentials&requested_subject=staff-7",
    )
    .await;
    assert_eq!(staff.status, StatusCode::OK, "{}", staff.json);
    let staff_token = staff.json["access_token"].as_str().unwrap().to_owned();
    let a = token_at(&token_url, &handler, &refresh_form(&staff_token, "")).await;
    refused(&a, "invalid_grant", "another policy's token");

    // The short session (15s): refreshes work, never past auth_time + 15 s,
    // and are refused once it is over.
    let staff_claims = payload(&staff_token);
    let staff_auth = staff_claims["auth_time"].as_i64().unwrap();
    assert!(
        staff_claims["exp"].as_i64().unwrap() <= staff_auth + 15,
        "{staff_claims}"
    );
    let mut current = staff_token.clone();
    let mut refreshes = 0;
    let session_end = Instant::now() + Duration::from_secs(11);
    while Instant::now() < session_end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = token_at(
            &token_url,
            &staff_handler,
            &refresh_form(&current, "&expires_in=3600"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "refresh {refreshes}: {}", r.json);
        let c = payload(r.json["access_token"].as_str().unwrap());
        assert_eq!(
            (c["sub"].as_str(), c["sid"].clone()),
            (Some("staff-7"), staff_claims["sid"].clone())
        );
        assert_eq!(c["auth_time"], staff_auth);
        assert!(
            c["exp"].as_i64().unwrap() <= staff_auth + 15,
            "past the session: {c}"
        );
        current = r.json["access_token"].as_str().unwrap().to_owned();
        refreshes += 1;
    }
    assert!(refreshes >= 3, "{refreshes}");
    // Past auth_time + 15 s (the last token is still within its 30 s leeway).
    let over_at = std::time::UNIX_EPOCH + Duration::from_secs((staff_auth + 16) as u64);
    if let Ok(wait) = over_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let a = token_at(&token_url, &staff_handler, &refresh_form(&current, "")).await;
    refused(&a, "invalid_grant", "a refresh after sessionMaxAge");
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("session is over"),
        "{}",
        a.json
    );
    println!(
        "delegation: {refreshes} refreshes within a 15 s session, refused after it; {:?} in all",
        minted_at.elapsed()
    );
    let log = latchkey.log_text();
    for secret in [&handler, &attacker, &token, &staff_token] {
        assert!(!log.contains(secret.as_str()), "a credential in latchkey's log");
    }
}

#[tokio::test]
async fn the_api_server_refuses_patterns_and_sessions_that_cannot_work() {
    let ns = TestNamespace::new("delegation-wh").await;
    let n = ns.name.as_str();
    let _webhook = common::webhook::Webhook::start(n, &[]);
    // This worktree's schema (the shared control plane may hold another's).
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        repo().join("crds").to_str().unwrap(),
    ]);
    let policy = |name: &str, extra: &str| {
        token_policy_manifest(
            n,
            name,
            &format!("  audiences: [calendar]\n  issuer: https://auth.example.com/{n}/{name}\n{extra}"),
        )
    };
    // The webhook compiles the pattern (CEL cannot).
    for (pattern, says) in [
        (
            "'(?<=x)user-[0-9]+'",
            "spec.delegation.subjectPattern is not a valid RE2 regular expression",
        ),
        (
            "'^(user-[0-9]+$'",
            "spec.delegation.subjectPattern is not a valid RE2 regular expression",
        ),
        (
            "'\\w{1000}\\w{1000}'",
            "spec.delegation.subjectPattern is too complex",
        ),
    ] {
        common::webhook::assert_refused(
            &policy("bad", &format!("  delegation: {{subjectPattern: {pattern}}}\n")),
            says,
        );
    }
    // The schema bounds its length; CEL the session's.
    let long = format!("'^{}$'", "a".repeat(300));
    let (ok, out) = apply_result(
        &policy("long", &format!("  delegation: {{subjectPattern: {long}}}\n")),
        true,
    );
    assert!(!ok && out.contains("spec.delegation.subjectPattern"), "{out}");
    let (ok, out) = apply_result(&policy("forever", "  sessionMaxAge: 9000h\n"), true);
    assert!(
        !ok && out.contains("spec.sessionMaxAge must be a duration between 10s and 8760h"),
        "{out}"
    );
    // A good one passes, and an update to a bad one is refused too.
    apply(&policy(
        "good",
        "  delegation: {subjectPattern: '^user-[0-9]+$'}\n  sessionMaxAge: 8h\n",
    ));
    common::webhook::assert_refused(
        &policy(
            "good",
            "  delegation: {subjectPattern: '(?=x)'}\n  sessionMaxAge: 8h\n",
        ),
        "not a valid RE2",
    );
}
