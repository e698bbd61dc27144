//! In-process tests of every route of [`super::router`] with
//! `tower::ServiceExt::oneshot`: no sockets, no cluster. The index and the
//! token snapshot are filled as the watches would fill them; the clock is
//! fixed. These pin the README's tables (the decision table, `/token`'s
//! errors, `/introspect`, discovery and JWKS, the probes) at the HTTP level.

use super::index::{Index, Rebuild};
use super::tokens::{Tokens, build_snapshot};
use super::{AppState, Options, metrics::Metrics, router};
use crate::clock::ManualClock;
use crate::crd::{RateLimit, SigningAlgorithm, TokenPolicyRef};
use crate::fixtures::{api_key_with, policy_with_key, t};
use crate::key::ApiKeyValue;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

const BASE: &str = "http://latchkey.test";

/// The server's state with these keys:
/// - `reader`: scopes orders:read orders:write, admitted by the policy `login`;
/// - `limited`: 1 request per second, burst 1;
/// - `introspector`: holds `latchkey:introspect`;
/// - `old`: replaced, its grace ended at t(-10).
struct Fixture {
    state: Arc<AppState>,
    reader: ApiKeyValue,
    limited: ApiKeyValue,
    introspector: ApiKeyValue,
    old: ApiKeyValue,
}

fn fixture() -> Fixture {
    let (reader, limited, introspector, old, current) = (
        ApiKeyValue::generate(),
        ApiKeyValue::generate(),
        ApiKeyValue::generate(),
        ApiKeyValue::generate(),
        ApiKeyValue::generate(),
    );
    let mut reader_ak = api_key_with("reader", &[(&reader, None)]);
    reader_ak.spec.token_policy_ref = Some(TokenPolicyRef { name: "login".into() });
    let mut limited_ak = api_key_with("limited", &[(&limited, None)]);
    limited_ak.spec.rate_limit = Some(RateLimit {
        requests_per_second: 1,
        burst: Some(1),
    });
    let mut introspector_ak = api_key_with("introspector", &[(&introspector, None)]);
    introspector_ak.spec.scopes = vec!["latchkey:introspect".into()];
    let rotated = api_key_with("rotated", &[(&current, None), (&old, Some(t(-10)))]);
    let index = Arc::new(Index::default());
    let mut rebuild = Rebuild::default();
    for ak in [&reader_ak, &limited_ak, &introspector_ak, &rotated] {
        rebuild.apply(ak, None);
    }
    index.replace(rebuild);

    let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
    let secrets = crate::fixtures::signing_secret(&policy, &key);
    let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy)]);
    let tokens = Arc::new(Tokens::default());
    tokens.replace(build_snapshot(&policies, &secrets, BASE));
    tokens.mark_synced();
    let state = Arc::new(AppState {
        index,
        tokens,
        clock: Arc::new(ManualClock::new(t(0))),
        options: Options {
            claim_headers: vec!["tenant".parse().unwrap()],
            ..Options::for_tests(BASE)
        },
        metrics: Metrics::new(),
    });
    Fixture {
        state,
        reader,
        limited,
        introspector,
        old,
    }
}

async fn send(state: &Arc<AppState>, request: Request<Body>) -> Response<Body> {
    router(state.clone()).oneshot(request).await.unwrap()
}

fn get(uri: &str) -> axum::http::request::Builder {
    Request::builder().method("GET").uri(uri)
}

fn form(uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
}

fn header_of<'a>(resp: &'a Response<Body>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

async fn body_json(resp: Response<Body>) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn probes_and_metrics() {
    let f = fixture();
    let resp = send(&f.state, get("/livez").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = send(&f.state, get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = send(&f.state, get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header_of(&resp, "content-type").starts_with("application/openmetrics-text"));
}

#[tokio::test]
async fn readyz_and_every_decision_wait_for_the_first_list() {
    let f = fixture();
    let state = Arc::new(AppState {
        index: Arc::new(Index::default()),
        tokens: f.state.tokens.clone(),
        clock: f.state.clock.clone(),
        options: f.state.options.clone(),
        metrics: Metrics::new(),
    });
    let resp = send(&state, get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = send(
        &state,
        get("/auth/nginx")
            .header(header::AUTHORIZATION, bearer(f.reader.expose()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "fail closed");
    assert_eq!(header_of(&resp, "retry-after"), "1");
}

#[tokio::test]
async fn the_decision_table_on_every_auth_route() {
    for route in [
        "/auth/nginx",
        "/auth/forward",
        "/auth/envoy",
        "/auth/envoy/some/path",
    ] {
        let f = fixture();
        let query = if route.starts_with("/auth/envoy") {
            ""
        } else {
            "?scope=orders:read"
        };
        let uri = format!("{route}{query}");
        let ask = |credential: Option<String>| {
            let mut b = get(&uri);
            if let Some(c) = credential {
                b = b.header(header::AUTHORIZATION, c);
            }
            b.body(Body::empty()).unwrap()
        };
        // No credential: 401 with a bare challenge (RFC 6750 §3.1).
        let resp = send(&f.state, ask(None)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{route}");
        assert_eq!(header_of(&resp, "www-authenticate"), "Bearer realm=\"latchkey\"");
        assert_eq!(header_of(&resp, "cache-control"), "no-store");
        // Allow: exactly 200, empty body, identity headers, cacheable 1 s.
        let resp = send(&f.state, ask(Some(bearer(f.reader.expose())))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{route}");
        assert_eq!(header_of(&resp, "x-auth-subject"), "shop/reader");
        assert_eq!(header_of(&resp, "x-auth-scopes"), "orders:read orders:write");
        assert_eq!(header_of(&resp, "x-auth-key-id"), f.reader.key_id());
        assert_eq!(header_of(&resp, "cache-control"), "private, max-age=1");
        assert!(
            axum::body::to_bytes(resp.into_body(), 1024)
                .await
                .unwrap()
                .is_empty()
        );
        // X-Api-Key works like Bearer.
        let resp = send(
            &f.state,
            get(&uri)
                .header("x-api-key", f.reader.expose())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{route}");
        // Garbage, a mistyped key (bad checksum), a key whose grace ended.
        let mut mistyped = f.reader.expose().to_owned();
        let last = mistyped.pop().unwrap();
        mistyped.push(if last == 'a' { 'b' } else { 'a' });
        for (credential, description) in [
            ("not-a-key".to_owned(), "not a well-formed"),
            (mistyped, "not a well-formed"),
            // A key that was valid once is answered like one that never was.
            (f.old.expose().to_owned(), "unknown or revoked"),
        ] {
            let resp = send(&f.state, ask(Some(bearer(&credential)))).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{route}");
            let challenge = header_of(&resp, "www-authenticate");
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
            assert!(challenge.contains(description), "{challenge}");
            assert_eq!(header_of(&resp, "cache-control"), "no-store");
        }
    }
}

#[tokio::test]
async fn scopes_audiences_and_rate_limits() {
    let f = fixture();
    let ask = |uri: &str, key: &ApiKeyValue| {
        get(uri)
            .header(header::AUTHORIZATION, bearer(key.expose()))
            .body(Body::empty())
            .unwrap()
    };
    // Every required scope must be held: `scope=a b` and repeated `scope=`.
    let resp = send(
        &f.state,
        ask("/auth/nginx?scope=orders:read%20orders:write", &f.reader),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = send(
        &f.state,
        ask("/auth/forward?scope=orders:read&scope=admin", &f.reader),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let challenge = header_of(&resp, "www-authenticate");
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"orders:read admin\""), "{challenge}");
    // A key with no audiences is valid anywhere.
    let resp = send(&f.state, ask("/auth/nginx?audience=api.example.com", &f.reader)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // A rate-limited key: allows are never cacheable, then 429 with Retry-After.
    let resp = send(&f.state, ask("/auth/nginx", &f.limited)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "cache-control"), "no-store");
    let resp = send(&f.state, ask("/auth/nginx", &f.limited)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header_of(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(header_of(&resp, "x-ratelimit-limit"), "1");
}

#[tokio::test]
async fn introspect_needs_its_scope_and_answers_rfc_7662() {
    let f = fixture();
    let introspect = |caller: &ApiKeyValue, body: &str| {
        form("/introspect")
            .header(header::AUTHORIZATION, bearer(caller.expose()))
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let body = format!("token={}", f.reader.expose());
    // A caller without latchkey:introspect: 403; without a key: 401.
    let resp = send(&f.state, introspect(&f.reader, &body)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = send(
        &f.state,
        form("/introspect").body(Body::from(body.clone())).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // An active key: its facts, never cached.
    let resp = send(&f.state, introspect(&f.introspector, &body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "cache-control"), "no-store");
    let answer = body_json(resp).await;
    assert_eq!(answer["active"], Value::Bool(true));
    assert_eq!(answer["sub"], "shop/reader");
    assert_eq!(answer["client_id"], f.reader.key_id());
    assert_eq!(answer["namespace"], "shop");
    // Unknown, expired: 200 {"active": false}.
    for token in ["garbage", f.old.expose()] {
        let resp = send(&f.state, introspect(&f.introspector, &format!("token={token}"))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_json(resp).await, serde_json::json!({"active": false}));
    }
    // No token, or not a form.
    let resp = send(&f.state, introspect(&f.introspector, "other=1")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(resp).await["error"], "invalid_request");
    let resp = send(
        &f.state,
        Request::builder()
            .method("POST")
            .uri("/introspect")
            .header(header::AUTHORIZATION, bearer(f.introspector.expose()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn discovery_and_jwks_per_issuer() {
    let f = fixture();
    let issuer = format!("{BASE}/issuers/shop/login");
    let resp = send(
        &f.state,
        get("/issuers/shop/login/.well-known/openid-configuration")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header_of(&resp, "cache-control").starts_with("public, max-age="));
    let discovery = body_json(resp).await;
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
    let resp = send(
        &f.state,
        get("/issuers/shop/login/.well-known/jwks.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let jwks = body_json(resp).await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
    // Unknown issuers and paths: 404; the token endpoint takes POST only.
    for path in ["/issuers/shop/other/.well-known/jwks.json", "/nothing"] {
        let resp = send(&f.state, get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let resp = send(
        &f.state,
        get("/issuers/shop/login/token").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn token_endpoint_issues_and_the_auth_routes_accept_the_token() {
    let f = fixture();
    let basic = |key: &ApiKeyValue| {
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", key.key_id(), key.expose()));
        format!("Basic {creds}")
    };
    for uri in ["/token", "/issuers/shop/login/token"] {
        let body = "grant_type=client_credentials&scope=orders:read";
        let resp = send(
            &f.state,
            form(uri)
                .header(header::AUTHORIZATION, basic(&f.reader))
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(header_of(&resp, "cache-control"), "no-store");
        let answer = body_json(resp).await;
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["scope"], "orders:read");
        let token = answer["access_token"].as_str().unwrap().to_owned();
        // The token passes a route that needs its scope, not one that needs more.
        let resp = send(
            &f.state,
            get("/auth/nginx?scope=orders:read")
                .header(header::AUTHORIZATION, bearer(&token))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(header_of(&resp, "x-auth-key-id"), f.reader.key_id());
        let resp = send(
            &f.state,
            get("/auth/nginx?scope=orders:write")
                .header(header::AUTHORIZATION, bearer(&token))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{uri}");
    }
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc_6749() {
    let f = fixture();
    let post = |body: &'static str, auth: Option<String>| {
        let mut b = form("/token");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::from(body)).unwrap()
    };
    let cases: [(&str, Option<String>, StatusCode, &str); 5] = [
        // No client authentication.
        (
            "grant_type=client_credentials",
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        // An unknown key.
        (
            "grant_type=client_credentials",
            Some(bearer(ApiKeyValue::generate().expose())),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        // A grant type latchkey does not do.
        (
            "grant_type=password",
            Some(bearer(f.reader.expose())),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        // More scope than the key holds.
        (
            "grant_type=client_credentials&scope=admin",
            Some(bearer(f.reader.expose())),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        // A key that no TokenPolicy admits.
        (
            "grant_type=client_credentials",
            Some(bearer(f.introspector.expose())),
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
        ),
    ];
    for (body, auth, status, error) in cases {
        let resp = send(&f.state, post(body, auth)).await;
        assert_eq!(resp.status(), status, "{body}");
        assert_eq!(header_of(&resp, "cache-control"), "no-store");
        assert_eq!(body_json(resp).await["error"], error, "{body}");
    }
}

#[tokio::test]
async fn every_allow_carries_every_identity_header_and_the_claim_headers() {
    let f = fixture();
    let resp = send(
        &f.state,
        get("/auth/forward?namespace=shop")
            .header("x-api-key", f.reader.expose())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for name in super::decision::IDENTITY_HEADERS {
        assert!(resp.headers().contains_key(&name), "{name} missing");
    }
    assert_eq!(header_of(&resp, "x-auth-namespace"), "shop");
    assert_eq!(header_of(&resp, "x-auth-role"), "");
    assert_eq!(header_of(&resp, "x-auth-claims"), "{}");
    assert!(
        resp.headers().contains_key("x-auth-claim-tenant"),
        "the --claim-header, empty"
    );
    // A route of another namespace refuses the same key.
    let resp = send(
        &f.state,
        get("/auth/forward?namespace=billing")
            .header("x-api-key", f.reader.expose())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(header_of(&resp, "www-authenticate").contains("invalid_token"));
}

#[tokio::test]
async fn two_credentials_are_a_bad_request_on_every_route() {
    let f = fixture();
    for route in ["/auth/nginx", "/auth/forward", "/auth/envoy/x", "/introspect"] {
        let method = if route == "/introspect" { "POST" } else { "GET" };
        let request = Request::builder()
            .method(method)
            .uri(route)
            .header(header::AUTHORIZATION, bearer(f.introspector.expose()))
            .header(header::AUTHORIZATION, bearer(f.reader.expose()))
            .body(Body::empty())
            .unwrap();
        let resp = send(&f.state, request).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{route}");
        assert!(
            header_of(&resp, "www-authenticate").contains("error=\"invalid_request\""),
            "{route}"
        );
    }
    let resp = send(
        &f.state,
        form("/token")
            .header(header::AUTHORIZATION, bearer(f.reader.expose()))
            .header(header::AUTHORIZATION, bearer(f.reader.expose()))
            .body(Body::from("grant_type=client_credentials"))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(resp).await["error"], "invalid_request");
}

#[tokio::test]
async fn tokens_get_at_most_the_effective_scopes_and_audiences_of_their_key() {
    let f = fixture();
    let grant = |scopes: &[&str], audiences: &[&str]| {
        let spec = crate::crd::CredentialGrantSpec {
            namespaces: vec!["shop".into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Arc::new(crate::grants::Grants::new(vec![("shop".into(), spec)], false))
    };
    let mint = |body: &'static str| {
        let state = f.state.clone();
        let key = bearer(f.reader.expose());
        async move {
            let resp = send(
                &state,
                form("/token")
                    .header(header::AUTHORIZATION, key)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
            (resp.status(), body_json(resp).await)
        }
    };
    // The key claims orders:read and orders:write; shop is granted orders:write only.
    f.state.index.set_grants(grant(&["orders:write"], &["orders"]));
    let (status, answer) = mint("grant_type=client_credentials&scope=orders:read").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_scope");
    // Granted orders:read but no audience: no token for the policy's audience.
    f.state.index.set_grants(grant(&["orders:read"], &[]));
    let (status, answer) = mint("grant_type=client_credentials&scope=orders:read").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_scope");
    // Granted both: the token carries the granted scope only, and the default subject.
    f.state.index.set_grants(grant(&["orders:read"], &["orders"]));
    let (status, answer) = mint("grant_type=client_credentials").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["scope"], "orders:read");
}

#[tokio::test]
async fn revoke_is_routed_at_the_root_and_under_each_issuer() {
    let f = fixture();
    let basic = {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            f.reader.key_id(),
            f.reader.expose()
        ));
        format!("Basic {creds}")
    };
    for uri in ["/revoke", "/issuers/shop/login/revoke"] {
        // An unknown token: 200, no body, not cached.
        let resp = send(
            &f.state,
            form(uri)
                .header(header::AUTHORIZATION, &basic)
                .body(Body::from("token=unknown&token_type_hint=refresh_token"))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(header_of(&resp, "cache-control"), "no-store");
        // Without client authentication: 401 invalid_client.
        let resp = send(&f.state, form(uri).body(Body::from("token=x")).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(body_json(resp).await["error"], "invalid_client");
        // Without token: 400 invalid_request.
        let resp = send(
            &f.state,
            form(uri)
                .header(header::AUTHORIZATION, &basic)
                .body(Body::from("token_type_hint=access_token"))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
    }
    let resp = send(&f.state, get("/revoke").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}
