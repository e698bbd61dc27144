//! The guard in front of every route: the per-source and per-key-id
//! throttle of failed client authentication ([`super::throttle`]) and the
//! body limit, both applied before a handler sees the request.
//!
//! **Body limit** (`--max-body-bytes`, 16 KiB): `/token`, `<issuer>/token`
//! and `/introspect` take a form with a key and a few parameters. A declared
//! `Content-Length` over the limit is refused with `413` before anything is
//! read; a body without one is read up to the limit (`413` beyond) and must
//! arrive within the header-read timeout (`408` otherwise). The token
//! endpoints answer in RFC 6749 §5.2 JSON (`invalid_request`) with that
//! status, `/introspect` too. The auth routes never read a body, and no
//! other route reads one.

use super::AppState;
use super::decision;
use super::index::KeyId;
use super::throttle::{By, Throttle, source_key};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The default body limit of the routes that read one.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the guard needs.
pub struct Guard {
    pub state: Arc<AppState>,
    pub throttle: Throttle,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

impl Guard {
    /// The key id of the API key an auth request presents (not a JWT:
    /// tokens are not throttled by key id; [`key_id_of`] refuses anything
    /// not shaped as a key, a JWT first, without reading it through), for
    /// the per-key-id throttle. Read in place: nothing is copied on the
    /// request path.
    pub(crate) fn auth_key_id(&self, headers: &HeaderMap) -> Option<KeyId> {
        decision::credential(headers, self.state.options.api_key_header.as_ref())
            .ok()
            .flatten()
            .and_then(key_id_of)
    }

    /// [`auth_key_id`](Self::auth_key_id), read only while the per-key-id
    /// throttle may block some key: otherwise no request is refused by its
    /// key id, and the request that authenticates reads no more than its
    /// decision does. A failure's key id is read after the decision.
    pub(crate) fn auth_key_id_to_check(&self, headers: &HeaderMap) -> Option<KeyId> {
        let throttle = &self.throttle;
        match &throttle.by_key_id {
            Some(l) if l.may_block(throttle.now_ms()) => self.auth_key_id(headers),
            _ => None,
        }
    }
}

/// Set on an auth route's answer whose API key did not authenticate
/// (unknown, replaced, revoked or expired; see
/// [`decision::Decision::failed_authentication`]), with the key id the
/// request presented: the guard counts the failure for that id without
/// verifying the key a second time, and without reading the credential on
/// the requests that authenticate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedAuthentication(pub Option<KeyId>);

/// The routes the guard tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/auth/nginx`, `/auth/forward`, `/auth/envoy[/…]`: called by proxies.
    Auth,
    /// `/token`, `<issuer>/token`, `/introspect`: called by clients directly.
    Client,
    Other,
}

pub fn classify(path: &str) -> Class {
    match path {
        "/auth/nginx" | "/auth/forward" | "/auth/envoy" => Class::Auth,
        p if p.starts_with("/auth/envoy/") => Class::Auth,
        "/token" | "/introspect" => Class::Client,
        p if p.ends_with("/token") => Class::Client,
        _ => Class::Other,
    }
}

/// The credential a client presents to `/token` or `/introspect` in its
/// headers: the HTTP Basic password, a Bearer token, or `X-Api-Key`. (A
/// `client_secret` in the body counts by source only.)
fn client_credential(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((scheme, value)) = auth.and_then(|a| a.trim().split_once(' '))
        && scheme.eq_ignore_ascii_case("basic")
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, p)| p.to_owned());
    }
    decision::credential(headers, None)
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// The key id inside a well-formed API key (format and checksum pass).
pub(crate) fn key_id_of(credential: &str) -> Option<KeyId> {
    let id = crate::key::check(credential).ok()?;
    KeyId::try_from(id.as_bytes()).ok()
}

fn error(class: Class, status: StatusCode, code: &str, description: String) -> Response {
    let mut resp = match class {
        Class::Auth => status.into_response(),
        _ => (
            status,
            axum::Json(json!({"error": code, "error_description": description})),
        )
            .into_response(),
    };
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn throttled(class: Class, wait: u64) -> Response {
    let mut resp = error(
        class,
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        format!("too many failed client authentications; retry after {wait} s"),
    );
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// The middleware: throttle, body limit, the route, then the failure count.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let class = classify(request.uri().path());
    if class == Class::Other {
        return next.run(request).await;
    }
    let source: Option<IpAddr> = match class {
        Class::Client => request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| source_key(c.0.ip())),
        _ => None,
    };
    let throttle = &guard.throttle;
    let (credential, key_id) = match class {
        // A failure's key id comes with the answer.
        Class::Auth => (None, guard.auth_key_id_to_check(request.headers())),
        _ => {
            let credential = client_credential(request.headers());
            let key_id = credential.as_deref().and_then(key_id_of);
            (credential, key_id)
        }
    };
    if let Some((by, wait)) = throttle.blocked(source.as_ref(), key_id.as_ref(), throttle.now_ms()) {
        guard.state.metrics.observe_throttled(by);
        return throttled(class, wait);
    }
    let request = match class {
        Class::Client => match limit_body(&guard, request).await {
            Ok(r) => r,
            Err(resp) => return resp,
        },
        _ => request,
    };
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let now = throttle.now_ms();
        if let (Some(l), Some(s)) = (&throttle.by_source, &source) {
            l.failed(s, now);
        }
        // A 401 for a key that does authenticate (a wrong audience) is not
        // a failed authentication. The auth routes say which it was.
        let failed_key_id = match class {
            Class::Auth => response
                .extensions()
                .get::<FailedAuthentication>()
                .and_then(|f| f.0),
            _ => key_id.filter(|_| {
                credential.as_deref().is_some_and(|c| {
                    decision::verify(c, &guard.state.index, guard.state.clock.now()).is_err()
                })
            }),
        };
        if let (Some(l), Some(id)) = (&throttle.by_key_id, &failed_key_id) {
            l.failed(id, now);
        }
    }
    response
}

/// The request with its body read (at most `max_body_bytes`, within
/// `body_timeout`), or the refusal.
async fn limit_body(guard: &Guard, request: Request) -> Result<Request, Response> {
    let max = guard.max_body_bytes;
    let too_large = || {
        error(
            Class::Client,
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the request body is larger than {max} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(guard.body_timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(error(
            Class::Client,
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "the request body did not arrive in time".into(),
        )),
    }
}

impl By {
    pub(crate) fn index(self) -> usize {
        match self {
            By::Source => 0,
            By::KeyId => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified() {
        assert_eq!(classify("/auth/nginx"), Class::Auth);
        assert_eq!(classify("/auth/envoy/anything/token"), Class::Auth);
        assert_eq!(classify("/token"), Class::Client);
        assert_eq!(classify("/issuers/shop/login/token"), Class::Client);
        assert_eq!(classify("/introspect"), Class::Client);
        assert_eq!(classify("/livez"), Class::Other);
        assert_eq!(
            classify("/issuers/shop/login/.well-known/jwks.json"),
            Class::Other
        );
    }

    #[test]
    fn the_key_id_comes_from_basic_bearer_or_x_api_key() {
        let key = crate::key::ApiKeyValue::generate();
        let id = key.key_id().as_bytes().to_vec();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("login:{}", key.expose()));
        for (name, value) in [
            ("authorization", format!("Basic {basic}")),
            ("authorization", format!("Bearer {}", key.expose())),
            ("x-api-key", key.expose().to_owned()),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
            let c = client_credential(&h).unwrap();
            assert_eq!(key_id_of(&c).unwrap().to_vec(), id);
        }
        assert_eq!(key_id_of("lk_garbage"), None);
    }
}
