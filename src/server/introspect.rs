//! `POST /introspect` (RFC 7662) for API keys.
//!
//! The caller authenticates with an API key of its own whose ApiKey holds the
//! scope [`INTROSPECT_SCOPE`], sent as `Authorization: Bearer` (or
//! `X-Api-Key`): a missing or invalid caller key gets `401`, a key without
//! the scope `403`. The form body's `token` is the credential to inspect;
//! anything unknown, malformed, expired or revoked is `200 {"active":false}`
//! (RFC 7662 §2.2: only the caller's failure is an error). Introspection
//! neither consumes the inspected key's rate limit nor counts as its use.
//!
//! The scope is the caller's *effective* scope (granted by a
//! CredentialGrant where grants restrict its namespace), and the answer
//! covers only credentials whose namespace the caller's grants cover
//! ([`crate::grants::Grants::may_introspect`]): anything else is
//! `{"active":false}`, as if unknown, so a caller learns nothing about
//! another team's credentials.

use super::AppState;
use super::decision::{self, Decision, Requirement};
use super::index::KeyId;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// The scope an ApiKey needs to call `/introspect`.
pub const INTROSPECT_SCOPE: &str = "latchkey:introspect";

/// The form body has no `token`.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingToken;

/// The answer for the form body `body`, once the caller (an API key of
/// namespace `caller_ns`) is authenticated.
pub fn answer(state: &AppState, body: &[u8], caller_ns: &str) -> Result<Value, MissingToken> {
    let value = describe(state, body)?;
    let target_ns = match value["namespace"].as_str() {
        Some(ns) => Some(ns.to_owned()),
        // A token: the namespace of the API key that obtained it.
        None => value["client_id"]
            .as_str()
            .and_then(|id| KeyId::try_from(id.as_bytes()).ok())
            .and_then(|id| state.index.namespace_of(&id)),
    };
    let covered = target_ns.is_some_and(|ns| state.index.grants().may_introspect(caller_ns, &ns));
    if value["active"] == json!(true) && !covered {
        return Ok(json!({"active": false}));
    }
    Ok(value)
}

/// The answer about the form body's `token`, for any caller.
fn describe(state: &AppState, body: &[u8]) -> Result<Value, MissingToken> {
    let token = form_urlencoded::parse(body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
        .ok_or(MissingToken)?;
    let now = state.clock.now();
    if crate::token::claims::looks_like_jwt(&token) {
        return Ok(
            super::tokens::introspect_token(&token, &state.index, &state.tokens, now)
                .unwrap_or_else(|| json!({"active": false})),
        );
    }
    let Ok((entry, key_id)) = decision::verify(&token, &state.index, now) else {
        return Ok(json!({"active": false}));
    };
    let owner = &entry.owner;
    let mut out = json!({
        "active": true,
        "token_type": "api_key",
        "client_id": String::from_utf8_lossy(&key_id),
        "sub": owner.subject(),
        "scope": owner.scopes().collect::<Vec<_>>().join(" "),
        "namespace": owner.namespace(),
        "name": owner.name(),
    });
    if !owner.audiences.is_empty() {
        // Valid for no audience (restricted without a granted one): `[]`.
        out["aud"] = json!(super::grants::shown_audiences(owner));
    }
    if let Some(until) = entry.valid_until.second() {
        out["exp"] = json!(until);
    }
    Ok(out)
}

/// Whether the request body is `application/x-www-form-urlencoded` (the
/// only body RFC 7662 and RFC 6749 endpoints take).
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn handle(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    // The caller: an API key with the introspect scope, as for any route.
    let caller = match decision::credential(&headers, None) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let required = Requirement {
        scopes: vec![INTROSPECT_SCOPE.into()],
        ..Default::default()
    };
    let now = state.clock.now();
    match decision::decide_key_request(caller, &required, &state.index, now, 0) {
        Decision::Allow { .. } => {}
        denied => return denied.into_response(),
    }
    let Some(caller_ns) = caller
        .and_then(|c| decision::verify(c, &state.index, now).ok())
        .map(|(entry, _)| entry.owner.namespace().to_owned())
    else {
        // Gone between the two lookups (a revocation right now).
        return Decision::Invalid(decision::Invalid::Unknown).into_response();
    };
    let form = is_form(&headers);
    if !form {
        return oauth_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send the token as application/x-www-form-urlencoded",
        );
    }
    match answer(&state, &body, &caller_ns) {
        Ok(value) => {
            let mut resp = axum::Json(value).into_response();
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(MissingToken) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form parameter token is missing",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord};
    use crate::key::ApiKeyValue;
    use crate::server::index::{Index, Rebuild};
    use crate::server::{Options, metrics::Metrics};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn state(keys: &[(&str, &ApiKeyValue, Vec<&str>, Option<i64>)]) -> AppState {
        let mut rebuild = Rebuild::default();
        for (name, key, scopes, until) in keys {
            let mut ak = ApiKey::new(
                name,
                ApiKeySpec {
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    audiences: vec!["api.example.com".into()],
                    ..Default::default()
                },
            );
            ak.metadata.namespace = Some("ns".into());
            ak.status = Some(ApiKeyStatus {
                previous_keys: vec![KeyRecord {
                    id: key.key_id().into(),
                    sha256: key.sha256_hex(),
                    issued_at: Time(t(-10)),
                    valid_until: until.map(|s| Time(t(s))),
                }],
                ..Default::default()
            });
            rebuild.apply(&ak, None);
        }
        let index = Index::default();
        index.replace(rebuild);
        AppState {
            index: Arc::new(index),
            tokens: Arc::default(),
            clock: Arc::new(ManualClock::new(t(0))),
            options: Options::for_tests("http://127.0.0.1:0"),
            metrics: Metrics::new(),
        }
    }

    fn form(token: &str) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish()
            .into_bytes()
    }

    #[test]
    fn an_active_key_is_described_and_anything_else_is_inactive() {
        let key = ApiKeyValue::generate();
        let state = state(&[("billing", &key, vec!["orders:read"], Some(100))]);
        let v = answer(&state, &form(key.expose()), "ns").unwrap();
        assert_eq!(v["active"], true);
        assert_eq!(v["client_id"], key.key_id());
        assert_eq!(v["sub"], "ns/billing");
        assert_eq!(v["scope"], "orders:read");
        assert_eq!(v["aud"], json!(["api.example.com"]));
        assert_eq!(v["exp"], t(100).as_second());
        assert!(!v.to_string().contains(key.expose()));
        for token in ["garbage", ApiKeyValue::generate().expose()] {
            assert_eq!(
                answer(&state, &form(token), "ns").unwrap(),
                json!({"active": false})
            );
        }
    }

    #[test]
    fn a_caller_learns_only_about_credentials_its_grants_cover() {
        let key = ApiKeyValue::generate();
        let state = state(&[("billing", &key, vec!["orders:read"], Some(100))]);
        // Without grants: any caller, as before.
        assert_eq!(
            answer(&state, &form(key.expose()), "elsewhere").unwrap()["active"],
            true
        );
        let grant = |namespaces: &[&str], introspect: Option<Vec<String>>| crate::crd::CredentialGrantSpec {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            scopes: vec![INTROSPECT_SCOPE.into(), "orders:read".into()],
            introspect_namespaces: introspect,
            ..Default::default()
        };
        state.index.set_grants(Arc::new(crate::grants::Grants::new(
            vec![
                ("ns".into(), grant(&["ns"], None)),
                ("gw".into(), grant(&["gateway"], Some(vec!["ns".into()]))),
                ("other".into(), grant(&["other"], None)),
            ],
            false,
        )));
        assert_eq!(answer(&state, &form(key.expose()), "ns").unwrap()["active"], true);
        assert_eq!(
            answer(&state, &form(key.expose()), "gateway").unwrap()["active"],
            true
        );
        for caller in ["other", "open"] {
            assert_eq!(
                answer(&state, &form(key.expose()), caller).unwrap(),
                json!({"active": false}),
                "{caller} is not covered"
            );
        }
    }

    #[test]
    fn an_expired_key_is_inactive_and_a_missing_token_is_a_bad_request() {
        let key = ApiKeyValue::generate();
        let state = state(&[("old", &key, vec![], Some(-1))]);
        assert_eq!(
            answer(&state, &form(key.expose()), "ns").unwrap(),
            json!({"active": false})
        );
        assert_eq!(
            answer(&state, b"token_type_hint=api_key", "ns"),
            Err(MissingToken)
        );
    }
}
