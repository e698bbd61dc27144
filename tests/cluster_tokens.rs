//! TokenPolicy against the local control plane: signing keys, `/token`,
//! discovery and JWKS, JWT verification on the auth routes and
//! `/introspect`, revocation through the API key, third-party verifiers
//! (PyJWT, node `jose`) before and after a rotation, and a crash loop during
//! signing-key rotation.

mod common;

use base64::Engine;
use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use latchkey::crd::{ApiKey, TokenPolicy};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

fn policy_manifest(ns: &str, name: &str, extra: &str) -> String {
    token_policy_manifest(
        ns,
        name,
        &format!(
            "  audiences: [calendar, pubsub]\n  allowedScopes: [\"calendar-events:read\", \"calendar-events:write\", \"pubsub:publish\"]\n  \
             roles:\n    data-entry:\n    - scopes: [\"calendar-events:write\"]\n      resources: [\"/calendar-events/{{tenant}}/\"]\n    \
             publisher:\n    - scopes: [\"pubsub:publish\"]\n      resources: [\"/topics/{{tenant}}-events\"]\n  \
             customClaims:\n  - name: tenant\n{extra}"
        ),
    )
}

struct TokenAnswer {
    status: StatusCode,
    cache_control: String,
    json: Value,
}

async fn request_token(server: &str, key: &str, form: &str) -> TokenAnswer {
    let resp = post_token(&format!("{server}/token"), key, form).await;
    let status = resp.status();
    let cache_control = resp
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let json = resp.json().await.unwrap_or(Value::Null);
    TokenAnswer {
        status,
        cache_control,
        json,
    }
}

async fn mint(server: &str, key: &str, form: &str) -> String {
    let a = request_token(server, key, form).await;
    assert_eq!(a.status, StatusCode::OK, "token request {form}: {}", a.json);
    a.json["access_token"].as_str().unwrap().to_owned()
}

fn jose_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn auth(server: &str, token: &str, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{server}/auth/nginx{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn exchange_verify_introspect_and_revoke() {
    let ns = TestNamespace::new("tokens").await;
    // `tenant` gets a header of its own (every custom claim is in X-Auth-Claims).
    let (latchkey, server) = LatchkeyProcess::start_run(&ns.name, &["--claim-header", "tenant"]);
    let client = client().await;
    let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), &ns.name);
    apply(&policy_manifest(&ns.name, "login", "  tokenTTL: 5m\n"));
    let policy = ready_policy(&policies, "login").await;
    let status = policy.status.clone().unwrap();
    let issuer = status.issuer.clone().unwrap();
    assert_eq!(issuer, format!("{server}/issuers/{}/login", ns.name));
    assert_eq!(status.keys.len(), 1);
    assert_eq!(status.active_key_id.as_deref(), Some(status.keys[0].kid.as_str()));

    // The private key is only in the Secret; the ConfigMap has the JWKS.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = secrets.get("login-signing-keys").await.unwrap();
    assert!(
        secret
            .data
            .unwrap()
            .contains_key(&format!("{}.pem", status.keys[0].kid))
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let jwks_cm = cms.get("login-jwks").await.unwrap();
    let jwks: Value = serde_json::from_str(&jwks_cm.data.unwrap()["jwks.json"]).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], status.keys[0].kid.as_str());
    assert!(jwks["keys"][0].get("d").is_none());
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(!status_json.contains("PRIVATE"));

    let key = served_key(
        &ns.name,
        "frontend",
        "  subject: login-service\n  scopes: [\"calendar-events:read\", \"calendar-events:write\"]\n  tokenPolicyRef:\n    name: login\n",
        &server,
    )
    .await;
    // A key without a policy may not exchange.
    let stranger = served_key(
        &ns.name,
        "stranger",
        "  scopes: [\"calendar-events:read\"]\n",
        &server,
    )
    .await;

    // Discovery and JWKS at the issuer.
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["token_endpoint"], format!("{issuer}/token"));
    let resp = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
    let served_jwks: Value = resp.json().await.unwrap();
    assert_eq!(served_jwks["keys"][0]["kid"], status.keys[0].kid.as_str());

    // The exchange: narrowed, RFC 9068 claims, no-store.
    let a = request_token(
        &server,
        &key,
        "grant_type=client_credentials&scope=calendar-events:read&audience=calendar&claim.tenant=acme",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.cache_control, "no-store");
    assert_eq!(a.json["token_type"], "Bearer");
    assert_eq!(a.json["expires_in"], 300);
    let token = a.json["access_token"].as_str().unwrap().to_owned();
    let header = jose_part(&token, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], status.keys[0].kid.as_str());
    let claims = jose_part(&token, 1);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], "login-service");
    assert_eq!(claims["aud"], serde_json::json!(["calendar"]));
    assert_eq!(claims["scope"], "calendar-events:read");
    assert_eq!(claims["client_id"], &key[3..15]);
    assert_eq!(claims["tenant"], "acme");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // The same at <issuer>/token, and the errors of RFC 6749 §5.2.
    let via_issuer = http
        .post(format!("{issuer}/token"))
        .basic_auth("x", Some(&key))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(via_issuer.status(), StatusCode::OK);
    for (form, status, code) in [
        (
            "grant_type=client_credentials&scope=pubsub:publish",
            400,
            "invalid_scope",
        ),
        (
            "grant_type=client_credentials&audience=billing",
            400,
            "invalid_scope",
        ),
        (
            "grant_type=client_credentials&expires_in=7200",
            400,
            "invalid_request",
        ),
        ("grant_type=password", 400, "unsupported_grant_type"),
    ] {
        let a = request_token(&server, &key, form).await;
        assert_eq!(
            (a.status.as_u16(), a.json["error"].as_str()),
            (status, Some(code)),
            "{form}"
        );
    }
    let a = request_token(&server, "lk_notakey", "grant_type=client_credentials").await;
    assert_eq!(
        (a.status.as_u16(), a.json["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let a = request_token(&server, &stranger, "grant_type=client_credentials").await;
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);

    // The token on the auth routes: identity from its claims, scopes enforced.
    let r = auth(&server, &token, "?scope=calendar-events:read&audience=calendar").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-subject"], "login-service");
    assert_eq!(r.headers()["x-auth-scopes"], "calendar-events:read");
    assert_eq!(r.headers()["x-auth-claim-tenant"], "acme");
    assert_eq!(r.headers()["x-auth-claims"], r#"{"tenant":"acme"}"#);
    assert_eq!(r.headers()["x-auth-namespace"], ns.name.as_str());
    let r = auth(&server, &token, "?scope=calendar-events:write").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = auth(&server, &token, "?audience=pubsub").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Tampered: one character of the signature changed.
    let mut tampered = token.clone();
    let c = tampered.pop().unwrap();
    tampered.push(if c == 'A' { 'B' } else { 'A' });
    let r = auth(&server, &tampered, "").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Introspection of the token (the caller holds latchkey:introspect).
    let introspector = served_key(
        &ns.name,
        "introspector",
        "  scopes: [\"latchkey:introspect\"]\n",
        &server,
    )
    .await;
    let introspect = |t: String| {
        let http = http.clone();
        let server = server.clone();
        let introspector = introspector.clone();
        async move {
            http.post(format!("{server}/introspect"))
                .bearer_auth(&introspector)
                .form(&[("token", t)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let info = introspect(token.clone()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], &key[3..15]);
    assert_eq!(info["scope"], "calendar-events:read");
    assert!(info.get("authorization_details").is_none(), "{info}");

    // A role's token carries its permissions, templates filled in (RFC
    // 9396), in the JWT and in introspection.
    let a = request_token(
        &server,
        &key,
        "grant_type=client_credentials&role=data-entry&claim.tenant=acme",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let role_token = a.json["access_token"].as_str().unwrap().to_owned();
    let details = serde_json::json!([{"type": "latchkey", "actions": ["calendar-events:write"],
                                      "paths": ["/calendar-events/acme/"]}]);
    assert_eq!(jose_part(&role_token, 1)["authorization_details"], details);
    assert_eq!(jose_part(&role_token, 1)["scope"], "calendar-events:write");
    let info = introspect(role_token.clone()).await;
    assert_eq!(info["authorization_details"], details, "{info}");
    // A claim value that is not one path segment cannot fill a resource.
    let a = request_token(
        &server,
        &key,
        "grant_type=client_credentials&role=data-entry&claim.tenant=acme%2F..%2Fglobex",
    )
    .await;
    assert_eq!(a.json["error"], "invalid_request", "{}", a.json);

    // Revoking the API key refuses its tokens within a second.
    let api_keys: Api<ApiKey> = Api::namespaced(client.clone(), &ns.name);
    revoke(&api_keys, "frontend").await;
    let revoked_at = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the token is refused after revocation",
        || async { (auth(&server, &token, "").await.status() == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    let latency = revoked_at.elapsed();
    assert!(latency < Duration::from_secs(1), "revocation took {latency:?}");
    let info = introspect(token.clone()).await;
    assert_eq!(info, serde_json::json!({"active": false}));
    let a = request_token(&server, &key, "grant_type=client_credentials").await;
    assert_eq!(a.json["error"], "invalid_client");
    drop(latchkey);
}

#[tokio::test]
async fn pyjwt_and_jose_verify_tokens_across_a_rotation() {
    let ns = TestNamespace::new("tokens-3p").await;
    let (_latchkey, server) = LatchkeyProcess::start_run(&ns.name, &[]);
    let client = client().await;
    let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), &ns.name);
    for (name, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        apply(&policy_manifest(
            &ns.name,
            name,
            &format!("  algorithm: {alg}\n  signingKeys:\n    prePublish: 2s\n"),
        ));
    }
    for (name, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        let before = ready_policy(&policies, name).await;
        let issuer = before.status.as_ref().unwrap().issuer.clone().unwrap();
        let old_kid = before.status.as_ref().unwrap().active_key_id.clone().unwrap();
        let key = served_key(
            &ns.name,
            &format!("k-{name}"),
            &format!("  scopes: [\"pubsub:publish\"]\n  tokenPolicyRef:\n    name: {name}\n"),
            &server,
        )
        .await;
        let old_token = mint(&server, &key, "grant_type=client_credentials&audience=pubsub").await;
        let role_token = mint(
            &server,
            &key,
            "grant_type=client_credentials&audience=pubsub&role=publisher&claim.tenant=acme",
        )
        .await;
        for v in ["pyjwt", "jose"] {
            let claims = third_party_verify(v, &issuer, "pubsub", &old_token)
                .unwrap_or_else(|e| panic!("{v} refused a {alg} token: {e}"));
            assert_eq!(claims["scope"], "pubsub:publish");
            // The role's permissions, as the verifier decoded them.
            let claims = third_party_verify(v, &issuer, "pubsub", &role_token)
                .unwrap_or_else(|e| panic!("{v} refused a {alg} role token: {e}"));
            assert_eq!(
                claims["authorization_details"],
                serde_json::json!([{"type": "latchkey", "actions": ["pubsub:publish"],
                                    "paths": ["/topics/acme-events"]}]),
                "{v}"
            );
        }
        // Rotate now: the new key is published first and signs 2 s later.
        policies
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"latchkey.dev/rotate": "1"}}})),
            )
            .await
            .unwrap();
        let new_kid = eventually(WAIT, "the new key signs", || async {
            let p = policies.get(name).await.ok()?;
            let s = p.status?;
            (s.keys.len() == 2 && s.active_key_id.as_deref() != Some(old_kid.as_str()))
                .then(|| s.active_key_id.clone())
                .flatten()
        })
        .await;
        let new_token = eventually(WAIT, "a token signed by the new key", || async {
            let t = mint(&server, &key, "grant_type=client_credentials&audience=pubsub").await;
            (jose_part(&t, 0)["kid"] == new_kid.as_str()).then_some(t)
        })
        .await;
        for v in ["pyjwt", "jose"] {
            for (which, t) in [("old", &old_token), ("new", &new_token)] {
                third_party_verify(v, &issuer, "pubsub", t)
                    .unwrap_or_else(|e| panic!("{v} refused the {which} {alg} token after rotation: {e}"));
            }
        }
        // And latchkey itself still accepts both.
        for t in [&old_token, &new_token] {
            assert_eq!(
                auth(&server, t, "?audience=pubsub").await.status(),
                StatusCode::OK
            );
        }
        let p = policies.get(name).await.unwrap();
        assert_eq!(p.status.unwrap().last_rotate_request.as_deref(), Some("1"));
    }
}

#[tokio::test]
async fn a_controller_killed_during_signing_key_rotations_never_breaks_a_token() {
    const ITERATIONS: u32 = 30;
    let ns = TestNamespace::new("tokens-crash").await;
    let (_server, server) = LatchkeyProcess::start_http("serve", &ns.name, &[]);
    let mut controller = LatchkeyProcess::start(&ns.name);
    let client = client().await;
    let policies: Api<TokenPolicy> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    apply(&policy_manifest(
        &ns.name,
        "crash",
        "  maxTTL: 10m\n  tokenTTL: 10m\n  signingKeys:\n    prePublish: 1s\n",
    ));
    ready_policy(&policies, "crash").await;
    let key = served_key(
        &ns.name,
        "crash-key",
        "  scopes: [\"pubsub:publish\"]\n  tokenPolicyRef:\n    name: crash\n",
        &server,
    )
    .await;
    let mut tokens: Vec<String> = Vec::new();
    let (mut checks, mut violations, mut kids) =
        (0u32, Vec::<String>::new(), std::collections::BTreeSet::new());
    let started = Instant::now();
    for i in 0..ITERATIONS {
        policies
            .patch(
                "crash",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"latchkey.dev/rotate": format!("r{i}")}}})),
            )
            .await
            .unwrap();
        // Kill somewhere between "just asked" and "well after".
        let delay = (i as u64 * 37) % 400;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        controller.kill();
        // While the controller is down: mint, and every token ever minted verifies.
        if let Ok(t) = request_token(&server, &key, "grant_type=client_credentials")
            .await
            .json["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or(())
        {
            kids.insert(jose_part(&t, 0)["kid"].as_str().unwrap_or_default().to_owned());
            tokens.push(t);
        }
        for (n, t) in tokens.iter().enumerate() {
            checks += 1;
            let status = auth(&server, t, "").await.status();
            if status != StatusCode::OK {
                violations.push(format!("iteration {i}: token {n} got {status}"));
            }
        }
        // Every key status says signs now has its private key in the Secret.
        let p = policies.get("crash").await.unwrap();
        let s = secrets.get("crash-signing-keys").await.unwrap();
        if let Some(active) = p.status.and_then(|s| s.active_key_id) {
            checks += 1;
            if !s.data.unwrap_or_default().contains_key(&format!("{active}.pem")) {
                violations.push(format!("iteration {i}: signing key {active} has no private key"));
            }
        }
        controller = LatchkeyProcess::start(&ns.name);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // After the loop settles, every token still verifies.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (n, t) in tokens.iter().enumerate() {
        checks += 1;
        let status = auth(&server, t, "").await.status();
        if status != StatusCode::OK {
            violations.push(format!("settled: token {n} got {status}"));
        }
    }
    let p = policies.get("crash").await.unwrap().status.unwrap();
    println!(
        "signing-key crash loop: {ITERATIONS} iterations, {} tokens from {} keys, {} keys published now, \
         {checks} checks, {} violations, {:.1} s",
        tokens.len(),
        kids.len(),
        p.keys.len(),
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(violations.is_empty(), "violations:\n{}", violations.join("\n"));
    assert!(
        kids.len() >= 3,
        "the loop should have rotated several times: {kids:?}"
    );
    assert!(tokens.len() as u32 >= ITERATIONS / 2);
}

#[tokio::test]
async fn invalid_token_policies_are_refused_with_what_to_change() {
    let ns = TestNamespace::new("tokens-cel").await;
    let cases = [
        (
            "  tokenTTL: 2h\n  maxTTL: 1h\n",
            "spec.tokenTTL must not be longer than spec.maxTTL",
        ),
        (
            "  roles: {r: [{scopes: [\"other\"]}]}\n",
            "every scope of spec.roles must also be listed in spec.allowedScopes",
        ),
        (
            "  roles: {r: [{scopes: [\"calendar-events:read\"], resources: [\"/calendar-events/{tenant/\"]}]}\n",
            "every resource of spec.roles must be a URL path",
        ),
        (
            "  roles: {r: [{scopes: [\"calendar-events:read\"], resources: [\"/calendar-events/../{tenant}/\"]}]}\n",
            "no '.' or '..' segment",
        ),
        (
            "  customClaims: [{name: sub}]\n",
            "spec.customClaims[].name must not be a reserved claim name",
        ),
        // RFC 7662 members: a custom `active` would shadow introspection's.
        (
            "  customClaims: [{name: active}]\n",
            "they are RFC 7662 introspection members or claims latchkey sets itself; rename the claim",
        ),
        (
            "  customClaims: [{name: Active}]\n",
            "spec.customClaims[].name must not be a reserved claim name",
        ),
        (
            "  customClaims: [{name: username}]\n",
            "spec.customClaims[].name must not be a reserved claim name",
        ),
        (
            "  customClaims: [{name: token_type}]\n",
            "spec.customClaims[].name must not be a reserved claim name",
        ),
        // Set only by a federated exchange (its refresh rule depends on it).
        (
            "  customClaims: [{name: idp}]\n",
            "spec.customClaims[].name must not be a reserved claim name",
        ),
        (
            "  issuer: \"https://a.example/x/\"\n",
            "spec.issuer must be an http(s) URL",
        ),
        (
            "  maxTTL: 48h\n",
            "spec.maxTTL must be a duration between 10s and 24h",
        ),
        ("  algorithm: HS256\n", "Unsupported value: \"HS256\""),
        (
            "  signingKeys: {rotationInterval: 10s}\n",
            "rotationInterval must be a duration between 1m and 8760h",
        ),
    ];
    for (extra, message) in cases {
        let manifest = token_policy_manifest(
            &ns.name,
            "bad",
            &format!("  audiences: [a]\n  allowedScopes: [x]\n{extra}"),
        );
        let err = apply_refused(&manifest);
        assert!(err.contains(message), "{extra}: expected {message:?} in:\n{err}");
    }
}
