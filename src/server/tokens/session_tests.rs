//! Delegation and refresh through `issue` with a manual clock: what one
//! namespace's key holder can and cannot do with the sessions of a policy.

use super::*;
use crate::clock::ManualClock;
use crate::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, Delegation, KeyRecord, SigningAlgorithm, TokenPolicyRef};
use crate::fixtures::{policy_with_key, signing_secret};
use crate::key::ApiKeyValue;
use crate::token::session::{ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const NOW: i64 = 1_800_000_000;

struct World {
    state: super::super::AppState,
    clock: ManualClock,
    /// shop/frontend (policy login): the login handler.
    handler: ApiKeyValue,
    /// shop/attacker (policy login too): another key holder of the namespace.
    attacker: ApiKeyValue,
    /// shop/other-app (policy other, without delegation).
    other: ApiKeyValue,
}

fn api_key(name: &str, subject: &str, policy: &str) -> (ApiKey, ApiKeyValue) {
    let value = ApiKeyValue::generate();
    let mut ak = ApiKey::new(
        name,
        ApiKeySpec {
            subject: Some(subject.into()),
            scopes: vec!["orders:read".into(), "orders:write".into()],
            token_policy_ref: Some(TokenPolicyRef { name: policy.into() }),
            ..Default::default()
        },
    );
    ak.metadata.namespace = Some("shop".into());
    ak.status = Some(ApiKeyStatus {
        current_key: Some(KeyRecord {
            id: value.key_id().into(),
            sha256: value.sha256_hex(),
            issued_at: Time(Timestamp::UNIX_EPOCH),
            valid_until: None,
        }),
        ..Default::default()
    });
    (ak, value)
}

fn world() -> World {
    world_with(|_| {})
}

/// The world with `edit` applied to the policy `login`.
fn world_with(edit: impl Fn(&mut TokenPolicy)) -> World {
    let (mut login, login_key) = policy_with_key(SigningAlgorithm::ES256);
    login.spec.allowed_scopes = vec!["orders:read".into(), "orders:write".into()];
    login.spec.delegation = Some(Delegation {
        subject_pattern: "^user-[0-9]+$".into(),
    });
    login.spec.session_max_age = Some("30m".into());
    edit(&mut login);
    let (mut other, other_key) = policy_with_key(SigningAlgorithm::ES256);
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("uid-shop-other".into());
    let mut secrets = signing_secret(&login, &login_key);
    secrets.extend(signing_secret(&other, &other_key));
    let policies = BTreeMap::from([
        (("shop".to_string(), "login".to_string()), login),
        (("shop".to_string(), "other".to_string()), other),
    ]);
    let tokens = Tokens::default();
    tokens.replace(build_snapshot(&policies, &secrets, "http://127.0.0.1:8080"));
    tokens.mark_synced();
    let (a, handler) = api_key("frontend", "login-service", "login");
    let (b, attacker) = api_key("attacker", "attacker-svc", "login");
    let (c, other_value) = api_key("other-app", "other-svc", "other");
    let index = Index::default();
    let mut rebuild = super::super::index::Rebuild::default();
    for ak in [&a, &b, &c] {
        rebuild.apply(ak, None);
    }
    index.replace(rebuild);
    let clock = ManualClock::new(Timestamp::from_second(NOW).unwrap());
    let state = super::super::AppState {
        index: Arc::new(index),
        tokens: Arc::new(tokens),
        clock: Arc::new(clock.clone()),
        options: super::super::Options::for_tests("http://127.0.0.1:8080"),
        metrics: super::super::metrics::Metrics::new(),
    };
    World {
        state,
        clock,
        handler,
        attacker,
        other: other_value,
    }
}

impl World {
    fn at(&self, secs: i64) {
        self.clock.set(Timestamp::from_second(NOW + secs).unwrap());
    }

    fn token(&self, key: &ApiKeyValue, body: &str) -> Result<serde_json::Value, TokenError> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", key.expose())).unwrap(),
        );
        issue(&self.state, &h, body.as_bytes(), None)
    }

    fn mint(&self, key: &ApiKeyValue, subject: &str) -> Result<String, TokenError> {
        let body = format!("grant_type=client_credentials&requested_subject={subject}");
        self.token(key, &body)
            .map(|v| v["access_token"].as_str().unwrap().to_owned())
    }

    fn refresh(&self, key: &ApiKeyValue, token: &str, extra: &str) -> Result<serde_json::Value, TokenError> {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let body = format!(
            "grant_type={}&subject_token={}&subject_token_type={}{extra}",
            enc(TOKEN_EXCHANGE),
            enc(token),
            enc(ACCESS_TOKEN_TYPE)
        );
        self.token(key, &body)
    }

    fn allowed(&self, token: &str) -> Decision {
        decide_token(
            token,
            &Requirement::from_query(Some("scope=orders:read")),
            &self.state.index,
            &self.state.tokens,
            self.state.clock.now(),
            1,
        )
    }

    fn introspect(&self, token: &str) -> Option<serde_json::Value> {
        introspect_token(
            token,
            &self.state.index,
            &self.state.tokens,
            self.state.clock.now(),
        )
    }
}

#[test]
fn a_delegated_token_says_who_the_user_is_and_who_acted() {
    let w = world();
    let token = w.mint(&w.handler, "user-42").unwrap();
    let info = w.introspect(&token).unwrap();
    assert_eq!(info["sub"], "user-42");
    assert_eq!(info["act"], json!({"sub": "login-service"}));
    assert_eq!(info["client_id"], w.handler.key_id());
    assert_eq!(info["auth_time"], json!(NOW));
    assert_eq!(info["sid"].as_str().unwrap().len(), 22);
    let d = decide_token(
        &token,
        &Requirement::from_query(Some("scope=orders:read")),
        &w.state.index,
        &w.state.tokens,
        w.state.clock.now(),
        1,
    );
    let resp = d.into_response();
    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h("x-auth-subject"), "user-42");
    assert_eq!(h("x-auth-actor"), "login-service");
    assert_eq!(h("x-auth-key-id"), w.handler.key_id());
    assert_eq!(h("x-auth-namespace"), "shop");
    // A token of the key itself: a session too, no actor.
    let own = w.token(&w.handler, "grant_type=client_credentials").unwrap();
    let own = w.introspect(own["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (own["sub"].as_str(), own.get("act")),
        (Some("login-service"), None)
    );
    assert!(own["sid"].is_string() && own["auth_time"] == json!(NOW));
    assert_ne!(own["sid"], info["sid"], "a new session per mint");
}

#[test]
fn requested_subjects_outside_the_pattern_or_without_delegation_are_refused() {
    let w = world();
    for subject in ["admin", "user-42-admin", "login-service", "other-svc"] {
        let e = w.mint(&w.handler, subject).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{subject}");
    }
    let e = w.mint(&w.other, "user-42").unwrap_err();
    assert_eq!(e.code(), "unauthorized_client");
    assert!(e.description().contains("spec.delegation"), "{e:?}");
}

#[test]
fn refresh_keeps_the_session_until_session_max_age_and_not_after() {
    let w = world();
    let first = w.mint(&w.handler, "user-42").unwrap();
    let before = w.introspect(&first).unwrap();
    w.at(600);
    let answer = w.refresh(&w.handler, &first, "").unwrap();
    assert_eq!(answer["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], json!(900));
    let second = answer["access_token"].as_str().unwrap().to_owned();
    let after = w.introspect(&second).unwrap();
    for claim in ["sub", "sid", "auth_time", "act", "scope"] {
        assert_eq!(after[claim], before[claim], "{claim}");
    }
    assert_eq!(after["iat"], json!(NOW + 600));
    // Narrower is fine, wider is invalid_scope.
    let narrow = w.refresh(&w.handler, &second, "&scope=orders:read").unwrap();
    assert_eq!(narrow["scope"], "orders:read");
    let narrow = narrow["access_token"].as_str().unwrap().to_owned();
    let wider = w.refresh(&w.handler, &narrow, "&scope=orders:write").unwrap_err();
    assert_eq!(wider.code(), "invalid_scope");
    // 25 minutes in: the new token ends with the session (30m).
    w.at(1500);
    let last = w.refresh(&w.handler, &second, "").unwrap();
    assert_eq!(last["expires_in"], json!(300));
    // At the end of the session, even a still-valid token cannot refresh.
    w.at(1800);
    let last = last["access_token"].as_str().unwrap().to_owned();
    assert!(w.introspect(&last).is_some(), "still valid (leeway)");
    let over = w.refresh(&w.handler, &last, "").unwrap_err();
    assert_eq!(over.code(), "invalid_grant");
    let resp = token_error(&over);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn an_expired_subject_token_cannot_be_refreshed() {
    let w = world();
    let first = w.mint(&w.handler, "user-7").unwrap();
    w.at(900 + claims::CLOCK_LEEWAY + 1);
    let e = w.refresh(&w.handler, &first, "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    assert!(e.description().contains("expired"), "{e:?}");
    let e = w.refresh(&w.handler, "eyJnot.a.token", "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
}

#[test]
fn another_key_holder_cannot_refresh_someone_else_s_session() {
    let w = world();
    let victim = w.mint(&w.handler, "user-42").unwrap();
    // Same namespace, same policy, its own valid key: another client.
    let e = w.refresh(&w.attacker, &victim, "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    assert!(e.description().contains("another client"), "{e:?}");
    // A key of another policy: the token is not of its policy.
    let e = w.refresh(&w.other, &victim, "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    let e = w.refresh(&w.other, &victim, "&policy=login").unwrap_err();
    assert_eq!(
        e.code(),
        "unauthorized_client",
        "the other key is not admitted by login"
    );
    // And its own token cannot be refreshed at the login policy either.
    let own = w.token(&w.other, "grant_type=client_credentials").unwrap();
    let own = own["access_token"].as_str().unwrap();
    let e = w.refresh(&w.handler, own, "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
}

#[test]
fn in_a_restricted_namespace_the_user_must_be_a_granted_subject() {
    use crate::crd::CredentialGrantSpec;
    let w = world();
    let grant = CredentialGrantSpec {
        namespaces: vec!["shop".into()],
        scopes: vec!["orders:*".into()],
        audiences: vec!["orders".into()],
        subjects: vec!["login-service".into(), "user-1*".into()],
        introspect_namespaces: None,
    };
    w.state.index.set_grants(Arc::new(crate::grants::Grants::new(
        vec![("shop".into(), grant)],
        false,
    )));
    let ok = w.mint(&w.handler, "user-12").unwrap();
    assert_eq!(w.introspect(&ok).unwrap()["sub"], "user-12");
    let e = w.mint(&w.handler, "user-42").unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert!(e.description().contains("CredentialGrants"), "{e:?}");
}

#[test]
fn a_session_survives_a_rotation_of_the_minting_apikey() {
    let w = world();
    let old_key = w.handler.clone();
    let token = w.mint(&old_key, "user-42").unwrap();
    // The ApiKey rotates: a new current key, the old one in its grace period.
    let (mut rotated, new_key) = api_key("frontend", "login-service", "login");
    let status = rotated.status.as_mut().unwrap();
    status.previous_keys = vec![KeyRecord {
        id: old_key.key_id().into(),
        sha256: old_key.sha256_hex(),
        issued_at: Time(Timestamp::UNIX_EPOCH),
        valid_until: Some(Time(Timestamp::from_second(NOW + 600).unwrap())),
    }];
    w.state.index.apply(&rotated);
    let fresh = w.refresh(&new_key, &token, "").unwrap();
    let info = w.introspect(fresh["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(info["client_id"], new_key.key_id());
    assert_eq!(info["sub"], "user-42");
    // Once the old key's grace ends, its tokens (and so their refresh) end
    // too, though the token's own exp (NOW + 900) has not come.
    w.at(601);
    let e = w.refresh(&new_key, &token, "").unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    assert!(e.description().contains("grace period"), "{e:?}");
}

fn sid_of(w: &World, token: &str) -> String {
    w.introspect(token).unwrap()["sid"].as_str().unwrap().to_owned()
}

fn is_revoked(d: &Decision) -> bool {
    matches!(
        d,
        Decision::Invalid(Invalid::Token(claims::TokenInvalid::Revoked))
    )
}

#[test]
fn a_revoked_session_is_refused_everywhere_even_cached_and_cannot_be_refreshed() {
    let w = world();
    let first = w.mint(&w.handler, "user-42").unwrap();
    w.at(60);
    let second = w.refresh(&w.handler, &first, "").unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both verified and cached.
    assert!(matches!(w.allowed(&first), Decision::Allow { .. }));
    assert!(matches!(w.allowed(&second), Decision::Allow { .. }));
    let other = w.mint(&w.handler, "user-42").unwrap();
    w.state.tokens.remember(&sid_of(&w, &first), NOW + 3600);
    for token in [&first, &second] {
        assert!(is_revoked(&w.allowed(token)));
        assert!(w.introspect(token).is_none(), "introspection: active false");
        let e = w.refresh(&w.handler, token, "").unwrap_err();
        assert_eq!(e.code(), "invalid_grant");
        assert!(e.description().contains("revoked"), "{e:?}");
    }
    // Another session of the same user is untouched.
    assert!(matches!(w.allowed(&other), Decision::Allow { .. }));
}

#[test]
fn spec_revocations_are_enforced_by_subject_and_time() {
    let w2 = world_with(|p| {
        p.spec.revoked_subjects = vec![crate::crd::RevokedSubject {
            subject: "user-2".into(),
            issued_before: Time(Timestamp::from_second(NOW + 1).unwrap()),
        }];
    });
    let a = w2.mint(&w2.handler, "user-1").unwrap();
    let b = w2.mint(&w2.handler, "user-2").unwrap();
    assert!(
        matches!(w2.allowed(&a), Decision::Allow { .. }),
        "another subject"
    );
    assert!(
        is_revoked(&w2.allowed(&b)),
        "user-2's session began before the cutoff"
    );
    w2.at(5);
    let later = w2.mint(&w2.handler, "user-2").unwrap();
    assert!(
        matches!(w2.allowed(&later), Decision::Allow { .. }),
        "a login after the cutoff"
    );
    let cutoff = world_with(|p| {
        p.spec.revoke_tokens_issued_before = Some(Time(Timestamp::from_second(NOW + 10).unwrap()));
    });
    let t = cutoff.mint(&cutoff.handler, "user-9").unwrap();
    assert!(is_revoked(&cutoff.allowed(&t)));
    assert!(cutoff.introspect(&t).is_none());
}

fn revoke_call(w: &World, key: &ApiKeyValue, token: &str) -> Response {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", key.expose())).unwrap(),
    );
    let body = format!("token={}&token_type_hint=access_token", token);
    futures::executor::block_on(revoke::revoke_response(&w.state, &h, body.as_bytes(), None))
}

#[test]
fn revoke_answers_200_for_unknown_or_foreign_tokens_without_saying_which() {
    let w = world();
    let token = w.mint(&w.handler, "user-42").unwrap();
    // Unknown, garbage: 200, nothing written (this world has no store, so a
    // write would have been a 503).
    assert_eq!(
        revoke_call(&w, &w.handler, "not-a-token").status(),
        StatusCode::OK
    );
    // Another client's token: 200, and it still works.
    assert_eq!(revoke_call(&w, &w.attacker, &token).status(), StatusCode::OK);
    assert!(matches!(w.allowed(&token), Decision::Allow { .. }));
    // Expired: 200.
    w.at(3600);
    assert_eq!(revoke_call(&w, &w.handler, &token).status(), StatusCode::OK);
    w.at(0);
    // Its own: written to status, here refused for want of a store.
    let resp = revoke_call(&w, &w.handler, &token);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // No client authentication: 401.
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let resp = futures::executor::block_on(revoke::revoke_response(
        &w.state,
        &h,
        format!("token={token}").as_bytes(),
        None,
    ));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn the_grpc_front_end_refuses_a_revoked_token_too() {
    use crate::server::grpc::ExtAuthz;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let w = world();
    let token = w.mint(&w.handler, "user-42").unwrap();
    let state = Arc::new(super::super::AppState {
        index: w.state.index.clone(),
        tokens: w.state.tokens.clone(),
        clock: w.state.clock.clone(),
        options: super::super::Options::for_tests("http://127.0.0.1:8080"),
        metrics: super::super::metrics::Metrics::new(),
    });
    let guard = Arc::new(crate::server::guard::Guard {
        state: state.clone(),
        throttle: crate::server::throttle::Throttle::new(Default::default()),
        max_body_bytes: 1024,
        body_timeout: std::time::Duration::from_secs(1),
    });
    let svc = ExtAuthz { state, guard };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    path: "/orders".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let code = |svc: &ExtAuthz| svc.decide(&request).status.unwrap().code;
    assert_eq!(code(&svc), tonic::Code::Ok as i32, "allowed (and cached) first");
    w.state.tokens.remember(&sid_of(&w, &token), NOW + 3600);
    assert_eq!(code(&svc), tonic::Code::Unauthenticated as i32);
}
