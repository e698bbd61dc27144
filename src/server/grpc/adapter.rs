//! The gRPC front end's two pure halves, without sockets: a `CheckRequest`
//! into the decision's inputs (the client's headers, the route's
//! [`Requirement`]), and a [`Decision`] into a `CheckResponse`. The answer's
//! HTTP status and headers come from [`Decision::into_parts_with`], the same
//! table the HTTP routes answer from.
//!
//! | decision | `status.code` | HTTP status |
//! | --- | --- | --- |
//! | allow | `OK` | (the request goes on, identity headers set) |
//! | no credential, invalid/unknown/expired/revoked credential, wrong audience/namespace/issuer | `UNAUTHENTICATED` | 401 |
//! | missing scope | `PERMISSION_DENIED` | 403 |
//! | two credentials, an unreadable credential header | `INVALID_ARGUMENT` | 400 |
//! | over the rate limit, or the failed-authentication throttle | `RESOURCE_EXHAUSTED` | 429 |
//! | before the first sync | `UNAVAILABLE` | 503 |

use crate::server::decision::{ClaimHeader, Decision, Requirement, ResourceRule};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHeader, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use std::collections::HashMap;

/// The prefix of the headers latchkey owns: a client's copy of one that
/// latchkey does not set is removed from the request on an allow.
pub const OWNED_PREFIX: &str = "x-auth-";

/// The client request's headers as Envoy sends them: `header_map` when
/// Envoy encodes raw headers (every value apart, so a repeated credential
/// header is seen as such), else the `headers` map (Envoy joins repeated
/// values with commas). Pseudo-headers (`:path`, `:authority`) are left
/// out. A header value that cannot be an HTTP header value is refused
/// (`invalid_request`) rather than dropped: dropping one could hide a
/// second credential.
pub fn request_headers(request: &CheckRequest) -> Result<HeaderMap, Decision> {
    const UNREADABLE: &str = "a request header is not a valid HTTP header";
    let Some(http) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return Ok(HeaderMap::new());
    };
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| -> Result<(), Decision> {
        if name.starts_with(':') {
            return Ok(());
        }
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| Decision::InvalidRequest(UNREADABLE))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Decision::InvalidRequest(UNREADABLE))?;
        headers.append(name, value);
        Ok(())
    };
    match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
        Some(raw) => {
            for h in &raw.headers {
                let value = match h.raw_value.is_empty() {
                    true => h.value.as_bytes(),
                    false => &h.raw_value,
                };
                add(&h.key, value)?;
            }
        }
        None => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(headers)
}

/// The route's requirement from `context_extensions`, the names of the
/// HTTP query: `scope` (space-separated, every one required), `audience`,
/// `namespace` and `issuer` (space-separated, any one of them), `resource`
/// (`path`: the token's permissions must cover `attributes.request.http.path`). Also the
/// keys that are none of these (ignored; the caller logs them at debug).
pub fn requirement(request: &CheckRequest) -> (Requirement, Vec<&str>) {
    let Some(extensions) = request.attributes.as_ref().map(|a| &a.context_extensions) else {
        return (Requirement::default(), Vec::new());
    };
    let unknown = extensions
        .keys()
        .map(String::as_str)
        .filter(|k| !Requirement::NAMES.contains(k))
        .collect();
    let pairs = extensions.iter().flat_map(|(name, value)| {
        let many = matches!(name.as_str(), "namespace" | "issuer");
        let values: Vec<&str> = match many {
            true => value.split_whitespace().collect(),
            false => vec![value.as_str()],
        };
        values.into_iter().map(move |v| (name.as_str(), v))
    });
    let mut requirement = Requirement::from_pairs(pairs);
    if requirement.resource == ResourceRule::Path {
        // The checked request's own path (and query): Envoy sets it.
        requirement.target = Some(path(request).to_owned());
    }
    (requirement, unknown)
}

/// The request's path (for debug logs only).
pub fn path(request: &CheckRequest) -> &str {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or("", |h| h.path.as_str())
}

/// The gRPC status code of a denial with this HTTP status.
pub fn code_of(status: StatusCode) -> tonic::Code {
    match status {
        StatusCode::OK => tonic::Code::Ok,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// A header Envoy sets on the request (or the denial), replacing any value
/// it had; kept when empty (an empty identity header erases a client's copy,
/// as on the HTTP routes).
fn set(name: &HeaderName, value: &HeaderValue) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeader {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: true,
        ..Default::default()
    }
}

fn string(value: &HeaderValue) -> Value {
    Value {
        kind: Some(Kind::StringValue(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        )),
    }
}

/// The `CheckResponse` of `decision` for a request that carried
/// `client_headers`: on an allow, `OK`, every identity header set and every
/// other client `x-auth-*` header removed, and `dynamic_metadata`
/// (`subject`, `key_id`, `api_key_namespace`, `api_key_name`); on a denial,
/// the HTTP routes' status and headers as the `DeniedHttpResponse`.
pub fn answer(
    decision: Decision,
    claim_headers: &[ClaimHeader],
    client_headers: &HeaderMap,
) -> CheckResponse {
    let metadata = match &decision {
        Decision::Allow { identity, .. } => Some(Struct {
            fields: HashMap::from([
                ("subject".to_owned(), string(&identity.subject)),
                ("key_id".to_owned(), string(&identity.key_id)),
                ("api_key_namespace".to_owned(), string(&identity.namespace)),
                ("api_key_name".to_owned(), string(&identity.api_key_name)),
            ]),
        }),
        _ => None,
    };
    let label = decision.label();
    let (status, headers) = decision.into_parts_with(claim_headers);
    if status != StatusCode::OK {
        return denied(status, &headers, label);
    }
    // Cache-Control is the HTTP routes' word to a caching proxy; Envoy's
    // gRPC client caches nothing, and it is no request header.
    let set_headers: Vec<HeaderValueOption> = headers
        .iter()
        .filter(|(name, _)| **name != CACHE_CONTROL)
        .map(|(name, value)| set(name, value))
        .collect();
    let mut headers_to_remove: Vec<String> = client_headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|name| name.starts_with(OWNED_PREFIX) && !headers.contains_key(*name))
        .map(str::to_owned)
        .collect();
    headers_to_remove.dedup();
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        dynamic_metadata: metadata,
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set_headers,
            headers_to_remove,
            ..Default::default()
        })),
    }
}

/// A denial with the HTTP routes' `status` and `headers` (the body stays
/// empty, as there); `reason` (a decision label, never a credential) goes
/// into the gRPC status message.
pub fn denied(status: StatusCode, headers: &HeaderMap, reason: &str) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: code_of(status) as i32,
            message: reason.to_owned(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status.as_u16()),
            }),
            headers: headers.iter().map(|(n, v)| set(n, v)).collect(),
            body: String::new(),
        })),
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;
