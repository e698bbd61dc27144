//! The gRPC adapter without sockets: CheckRequest → decision inputs,
//! decision → CheckResponse, and one `Check` through [`ExtAuthz::decide`]
//! over an index filled as the watch would fill it.

use super::*;
use crate::clock::ManualClock;
use crate::crd::RateLimit;
use crate::fixtures::{api_key_with, t};
use crate::key::ApiKeyValue;
use crate::server::decision::{IDENTITY_HEADERS, Invalid};
use crate::server::grpc::ExtAuthz;
use crate::server::guard::Guard;
use crate::server::index::{Index, Rebuild};
use crate::server::metrics::Metrics;
use crate::server::throttle::{Config, Throttle};
use crate::server::tokens::Tokens;
use crate::server::{AppState, Options};
use envoy_types::pb::envoy::config::core::v3::HeaderMap as PbHeaderMap;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use std::sync::Arc;

fn check(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    path: "/orders?x=1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

fn raw(headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = check(&[("x-from-map", "1")], &[]);
    let http = req
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map = Some(PbHeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| PbHeader {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    req
}

#[test]
fn headers_come_from_the_map_or_the_raw_list() {
    let h = request_headers(&check(
        &[(":path", "/x"), ("x-api-key", "k"), ("X-Other", "v")],
        &[],
    ))
    .unwrap();
    assert_eq!(h.len(), 2, "pseudo-headers are left out: {h:?}");
    assert_eq!(h["x-api-key"], "k");
    assert_eq!(h["x-other"], "v", "names are case-insensitive");
    let h = request_headers(&raw(&[("x-api-key", "a"), ("x-api-key", "b")])).unwrap();
    assert_eq!(
        h.get_all("x-api-key").iter().count(),
        2,
        "the raw list keeps repeats"
    );
    assert!(!h.contains_key("x-from-map"), "the raw list wins over the map");
    let d = crate::server::decision::credential(&h, None).unwrap_err();
    assert_eq!(d.label(), "invalid_request");
    let bad = request_headers(&check(&[("x-api-key", "a\nb")], &[])).unwrap_err();
    assert_eq!(bad.label(), "invalid_request");
    assert!(request_headers(&CheckRequest::default()).unwrap().is_empty());
}

#[test]
fn the_requirement_comes_from_context_extensions() {
    let request = check(
        &[],
        &[
            ("scope", "orders:read  orders:write"),
            ("audience", "api.example.com"),
            ("namespace", "shop billing"),
            ("issuer", "https://a.example/x"),
            ("resource", "path"),
            ("verb", "GET"),
        ],
    );
    let (req, unknown) = requirement(&request);
    assert_eq!(
        req,
        Requirement {
            scopes: vec!["orders:read".into(), "orders:write".into()],
            audience: Some("api.example.com".into()),
            namespaces: vec!["shop".into(), "billing".into()],
            issuers: vec!["https://a.example/x".into()],
            // `resource=path` judges the checked request's own path.
            resource: crate::server::decision::ResourceRule::Path,
            target: Some("/orders?x=1".into()),
        }
    );
    assert_eq!(unknown, ["verb"]);
    assert_eq!(requirement(&CheckRequest::default()).0, Requirement::default());
}

/// A server state over an index with `reader` (shop/reader) and `limited`
/// (shop/limited, 1 request per second, burst 1).
fn service() -> (ExtAuthz, ApiKeyValue, ApiKeyValue) {
    let (reader, limited) = (ApiKeyValue::generate(), ApiKeyValue::generate());
    let mut limited_ak = api_key_with("limited", &[(&limited, None)]);
    limited_ak.spec.rate_limit = Some(RateLimit {
        requests_per_second: 1,
        burst: Some(1),
    });
    let index = Arc::new(Index::default());
    let mut rebuild = Rebuild::default();
    rebuild.apply(&api_key_with("reader", &[(&reader, None)]), None);
    rebuild.apply(&limited_ak, None);
    index.replace(rebuild);
    let state = Arc::new(AppState {
        index,
        tokens: Arc::new(Tokens::default()),
        clock: Arc::new(ManualClock::new(t(0))),
        options: Options {
            claim_headers: vec!["tenant".parse().unwrap()],
            ..Options::for_tests("http://latchkey.test")
        },
        metrics: Metrics::new(),
    });
    let guard = Arc::new(Guard {
        state: state.clone(),
        throttle: Throttle::new(Config::default()),
        max_body_bytes: 1024,
        body_timeout: std::time::Duration::from_secs(1),
    });
    (ExtAuthz { state, guard }, reader, limited)
}

fn ok(resp: &CheckResponse) -> &OkHttpResponse {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an allow: {other:?}"),
    }
}

fn denial(resp: &CheckResponse) -> (i32, i32, Vec<(String, String)>) {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            resp.status.as_ref().unwrap().code,
            d.status.as_ref().unwrap().code,
            d.headers
                .iter()
                .map(|h| {
                    let h = h.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone())
                })
                .collect(),
        ),
        other => panic!("not a denial: {other:?}"),
    }
}

fn set_headers(ok: &OkHttpResponse) -> Vec<(String, String)> {
    ok.headers
        .iter()
        .map(|o| {
            assert_eq!(o.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
            assert!(o.keep_empty_value);
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect()
}

#[test]
fn an_allow_sets_every_identity_header_and_removes_the_clients_others() {
    let (svc, reader, _) = service();
    let resp = svc.decide(&check(
        &[
            ("x-api-key", reader.expose()),
            ("x-auth-subject", "admin"),
            ("x-auth-actor", "forged-actor"),
            ("x-auth-forged", "1"),
            ("x-other", "kept"),
        ],
        &[("scope", "orders:read"), ("unknown", "ignored")],
    ));
    assert_eq!(resp.status.as_ref().unwrap().code, tonic::Code::Ok as i32);
    let ok = ok(&resp);
    let set = set_headers(ok);
    for name in IDENTITY_HEADERS
        .iter()
        .map(HeaderName::as_str)
        .chain(["x-auth-claim-tenant"])
    {
        assert!(set.iter().any(|(k, _)| k == name), "{name} missing from {set:?}");
    }
    assert!(!set.iter().any(|(k, _)| k == "cache-control"));
    let get = |name: &str| set.iter().find(|(k, _)| k == name).unwrap().1.as_str();
    assert_eq!(get("x-auth-subject"), "shop/reader");
    assert_eq!(get("x-auth-key-id"), reader.key_id());
    assert_eq!(get("x-auth-namespace"), "shop");
    assert_eq!(get("x-auth-role"), "");
    assert_eq!(get("x-auth-actor"), "", "overwritten, like x-auth-subject");
    assert_eq!(
        ok.headers_to_remove,
        ["x-auth-forged"],
        "x-auth-subject is overwritten instead"
    );
    let meta = &resp.dynamic_metadata.as_ref().unwrap().fields;
    let field = |k: &str| match &meta[k].kind {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(field("subject"), "shop/reader");
    assert_eq!(field("key_id"), reader.key_id());
    assert_eq!(field("api_key_namespace"), "shop");
    assert_eq!(field("api_key_name"), "reader");
    let text = svc.state.metrics.encode(0, 0).unwrap();
    assert!(
        text.contains(r#"latchkey_auth_decisions_total{route="grpc",result="allow"} 1"#),
        "{text}"
    );
}

/// Every denial answers the HTTP routes' status and headers for the same
/// decision, with its gRPC code.
#[test]
fn denials_carry_the_http_answer() {
    let (svc, reader, limited) = service();
    let key = reader.expose();
    let cases: Vec<(CheckRequest, tonic::Code, u16, &str)> = vec![
        (
            check(&[], &[]),
            tonic::Code::Unauthenticated,
            401,
            "no_credential",
        ),
        (
            check(&[("x-api-key", "lk_bogus")], &[]),
            tonic::Code::Unauthenticated,
            401,
            "malformed",
        ),
        (
            check(&[("x-api-key", key)], &[("scope", "orders:read admin")]),
            tonic::Code::PermissionDenied,
            403,
            "insufficient_scope",
        ),
        (
            check(&[("x-api-key", key)], &[("namespace", "billing")]),
            tonic::Code::Unauthenticated,
            401,
            "namespace",
        ),
        (
            check(&[("x-api-key", key), ("authorization", "Bearer lk_other")], &[]),
            tonic::Code::InvalidArgument,
            400,
            "invalid_request",
        ),
    ];
    for (request, code, status, label) in cases {
        let resp = svc.decide(&request);
        let (got_code, got_status, headers) = denial(&resp);
        assert_eq!(
            (got_code, got_status),
            (code as i32, i32::from(status)),
            "{label}"
        );
        assert_eq!(resp.status.as_ref().unwrap().message, label);
        // The same decision's HTTP answer, header for header.
        let http = crate::server::decide(
            &svc.state,
            &request_headers(&request).unwrap(),
            &requirement(&request).0,
        );
        let (http_status, http_headers) = http.into_parts_with(&[]);
        assert_eq!(http_status.as_u16(), status, "{label}");
        let expected: Vec<(String, String)> = http_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(headers, expected, "{label}");
        assert!(
            headers.contains(&("cache-control".into(), "no-store".into())),
            "{label}"
        );
        assert!(resp.dynamic_metadata.is_none());
    }
    let limited = check(&[("x-api-key", limited.expose())], &[]);
    assert_eq!(svc.decide(&limited).status.unwrap().code, tonic::Code::Ok as i32);
    let (code, status, headers) = denial(&svc.decide(&limited));
    assert_eq!((code, status), (tonic::Code::ResourceExhausted as i32, 429));
    for name in ["retry-after", "x-ratelimit-limit", "cache-control"] {
        assert!(headers.iter().any(|(k, _)| k == name), "{name}: {headers:?}");
    }
}

#[test]
fn before_the_first_sync_every_check_is_unavailable() {
    let (svc, reader, _) = service();
    let state = Arc::new(AppState {
        index: Arc::new(Index::default()),
        tokens: svc.state.tokens.clone(),
        clock: svc.state.clock.clone(),
        options: svc.state.options.clone(),
        metrics: Metrics::new(),
    });
    let svc = ExtAuthz {
        state,
        guard: svc.guard.clone(),
    };
    let (code, status, headers) = denial(&svc.decide(&check(&[("x-api-key", reader.expose())], &[])));
    assert_eq!((code, status), (tonic::Code::Unavailable as i32, 503));
    assert!(headers.contains(&("retry-after".into(), "1".into())));
}

#[test]
fn failed_authentications_are_throttled_by_key_id() {
    let (svc, _, _) = service();
    // A well-formed key that no ApiKey holds: a failed authentication of
    // its key id.
    let unknown = ApiKeyValue::generate();
    let req = check(&[("x-api-key", unknown.expose())], &[]);
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(svc.decide(&req).status.unwrap().code);
    }
    assert_eq!(codes[0], tonic::Code::Unauthenticated as i32);
    assert_eq!(
        *codes.last().unwrap(),
        tonic::Code::ResourceExhausted as i32,
        "throttled after the window's failures: {codes:?}"
    );
    assert!(matches!(
        crate::server::decision::verify(unknown.expose(), &svc.state.index, t(0)),
        Err(Invalid::Unknown)
    ));
}

#[test]
fn grpc_codes_follow_the_http_status() {
    assert_eq!(code_of(StatusCode::UNAUTHORIZED), tonic::Code::Unauthenticated);
    assert_eq!(code_of(StatusCode::FORBIDDEN), tonic::Code::PermissionDenied);
    assert_eq!(
        code_of(StatusCode::TOO_MANY_REQUESTS),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(code_of(StatusCode::BAD_REQUEST), tonic::Code::InvalidArgument);
    assert_eq!(code_of(StatusCode::SERVICE_UNAVAILABLE), tonic::Code::Unavailable);
}
