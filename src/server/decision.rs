//! The auth decision, and the HTTP answer each decision gets. Pure apart from
//! the index it reads and the rate limiter's bucket: the caller passes `now`.
//!
//! Status policy (one table for every proxy family; see
//! `research/ext-auth-anchors.md` §E):
//! - allow → exactly `200`, empty body, identity headers;
//! - no credential → `401`, `WWW-Authenticate: Bearer realm="latchkey"` (no
//!   `error`, RFC 6750 §3.1);
//! - malformed, unknown, expired or revoked key, or a key not valid for the
//!   required audience → `401` `error="invalid_token"`;
//! - a required scope the key lacks → `403` `error="insufficient_scope"`;
//! - over the key's rate limit → `429` + `Retry-After` (plain nginx turns any
//!   status but 2xx/401/403 into 500; the README's `error_page` recipe turns
//!   it back into 429);
//! - index not loaded yet → `503` (fail closed).
//!
//! Caching: an allow may be cached by the proxy for
//! `min(--decision-cache-seconds, time until the key stops being valid)`
//! (`private, max-age=N`), so a revocation still takes effect within that
//! bound plus the watch's delay; a rate-limited key's decisions and every
//! denial are `no-store` (a cached allow would skip the metering).

use super::index::{Index, KeyEntry, KeyId};
use crate::key;
use crate::token::claims::TokenInvalid;
use axum::http::header::{CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use k8s_openapi::jiff::Timestamp;
use std::sync::atomic::Ordering;

pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
pub const X_AUTH_KEY_ID: HeaderName = HeaderName::from_static("x-auth-key-id");
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"latchkey\"");

/// What a route requires, from the query of the auth URL the proxy calls:
/// `scope` (repeatable; every one is required) and `audience`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    pub scopes: Vec<String>,
    pub audience: Option<String>,
}

impl Requirement {
    pub fn from_query(query: Option<&str>) -> Self {
        let mut req = Requirement::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                // `scope=a b` (OAuth style) and `scope=a&scope=b` both work.
                "scope" => req
                    .scopes
                    .extend(value.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
                "audience" if !value.is_empty() => req.audience = Some(value.into_owned()),
                _ => {}
            }
        }
        req
    }
}

/// Why a presented key is refused with `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not of the latchkey key format or a bad checksum (no lookup made).
    Malformed,
    /// Well-formed, but no valid key has this id and hash (unknown,
    /// replaced, revoked, or its ApiKey deleted).
    Unknown,
    /// Listed, but its grace period or the ApiKey's expiry has passed.
    Expired,
    /// Valid, but not for the audience the route requires.
    Audience,
    /// A JWT access token that fails verification.
    Token(TokenInvalid),
    /// A valid JWT whose API key (`client_id`) is revoked, expired or gone.
    ClientRevoked,
}

impl Invalid {
    fn description(self) -> &'static str {
        match self {
            Invalid::Malformed => "the credential is not a well-formed latchkey API key",
            Invalid::Unknown => "the API key is unknown or revoked",
            Invalid::Expired => "the API key has expired",
            Invalid::Audience => "the credential is not valid for this audience",
            Invalid::Token(t) => t.description(),
            Invalid::ClientRevoked => "the API key that obtained this token is revoked or expired",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::Unknown => "unknown",
            Invalid::Expired => "expired",
            Invalid::Audience => "audience",
            Invalid::Token(t) => t.label(),
            Invalid::ClientRevoked => "token_client_revoked",
        }
    }
}

/// The identity headers of an allow. Fresh copies, not clones of the
/// index's values: a clone would bump a reference count that every request
/// for that key shares across cores.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: HeaderValue,
    pub scopes: HeaderValue,
    pub key_id: HeaderValue,
    /// More identity headers (a token's role and custom claims).
    pub extra: Vec<(HeaderName, HeaderValue)>,
}

pub(crate) fn copy(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or(HeaderValue::from_static(""))
}

/// The outcome of one external-auth request.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow {
        identity: Box<Identity>,
        /// Seconds a proxy may cache this answer (0: `no-store`).
        max_age: u64,
    },
    NoCredential,
    Invalid(Invalid),
    InsufficientScope {
        required: String,
    },
    RateLimited {
        retry_after: u64,
        limit: u32,
    },
    NotReady,
}

impl Decision {
    /// The `result` label of the decision metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::NoCredential => "no_credential",
            Decision::Invalid(i) => i.label(),
            Decision::InsufficientScope { .. } => "insufficient_scope",
            Decision::RateLimited { .. } => "rate_limited",
            Decision::NotReady => "not_ready",
        }
    }
}

/// The credential a request presents: `Authorization: Bearer`, then
/// `X-Api-Key`, then the configured header. An `Authorization` header with
/// another scheme (Basic, say) is not a credential of ours.
pub fn credential<'a>(headers: &'a HeaderMap, custom: Option<&HeaderName>) -> Option<&'a str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    bearer
        .or_else(|| header(&X_API_KEY))
        .or_else(|| custom.and_then(header))
        .filter(|c| !c.is_empty())
}

/// Checks a presented key against the index: format, then lookup, then
/// validity at `now`. Scopes, audience and rate limit are the caller's.
pub fn verify(presented: &str, index: &Index, now: Timestamp) -> Result<(KeyEntry, KeyId), Invalid> {
    let key_id = key::check(presented).map_err(|_| Invalid::Malformed)?;
    let key_id = KeyId::try_from(key_id.as_bytes()).map_err(|_| Invalid::Malformed)?;
    let entry = index
        .find(&key_id, &key::sha256(presented.as_bytes()))
        .ok_or(Invalid::Unknown)?;
    if entry.valid_until.is_some_and(|t| t <= now) {
        return Err(Invalid::Expired);
    }
    Ok((entry, key_id))
}

/// The whole decision for one external-auth request.
pub fn decide(
    presented: Option<&str>,
    requirement: &Requirement,
    index: &Index,
    now: Timestamp,
    cache_seconds: u64,
) -> Decision {
    if !index.is_synced() {
        return Decision::NotReady;
    }
    let Some(presented) = presented else {
        return Decision::NoCredential;
    };
    let Ok(key_id) = key::check(presented) else {
        return Decision::Invalid(Invalid::Malformed);
    };
    let Ok(id) = KeyId::try_from(key_id.as_bytes()) else {
        return Decision::Invalid(Invalid::Malformed);
    };
    // Everything below runs under the index's read lock and takes no
    // reference to the entry out of it.
    let decided = index.find_with(&id, &key::sha256(presented.as_bytes()), |entry| {
        if entry.valid_until.is_some_and(|t| t <= now) {
            return Decision::Invalid(Invalid::Expired);
        }
        let owner = &entry.owner;
        if let Some(audience) = &requirement.audience
            && !owner.audiences.is_empty()
            && !owner.audiences.iter().any(|a| **a == **audience)
        {
            return Decision::Invalid(Invalid::Audience);
        }
        if !requirement.scopes.iter().all(|s| owner.has_scope(s)) {
            return Decision::InsufficientScope {
                required: requirement.scopes.join(" "),
            };
        }
        if let (Some(limiter), Some(limit)) = (&owner.usage.limiter, &owner.usage.rate_limit)
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Decision::RateLimited {
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                limit: limit.requests_per_second,
            };
        }
        // Written once a second at most: a store on every request would
        // make the cores fight over the cache line.
        let last_used = &owner.usage.last_used;
        if last_used.load(Ordering::Relaxed) != now.as_second() {
            last_used.store(now.as_second(), Ordering::Relaxed);
        }
        let max_age = if owner.usage.limiter.is_some() {
            0
        } else {
            let left = entry
                .valid_until
                .map(|t| t.as_second().saturating_sub(now.as_second()).max(0) as u64);
            left.map_or(cache_seconds, |l| l.min(cache_seconds))
        };
        Decision::Allow {
            identity: Box::new(Identity {
                subject: copy(&owner.subject_header),
                scopes: copy(&owner.scopes_header),
                key_id: HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("")),
                extra: Vec::new(),
            }),
            max_age,
        }
    });
    decided.unwrap_or(Decision::Invalid(Invalid::Unknown))
}

fn quoted(value: &str) -> String {
    // Scopes and descriptions never hold quotes or backslashes (CRD rules
    // and our own texts); drop them anyway rather than break the header.
    value.chars().filter(|c| *c != '"' && *c != '\\').collect()
}

impl IntoResponse for Decision {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        let status = match self {
            Decision::Allow { identity, max_age } => {
                let Identity {
                    subject,
                    scopes,
                    key_id,
                    extra,
                } = *identity;
                for (name, value) in extra {
                    headers.insert(name, value);
                }
                headers.insert(X_AUTH_SUBJECT, subject);
                headers.insert(X_AUTH_SCOPES, scopes);
                headers.insert(X_AUTH_KEY_ID, key_id);
                let cache = match max_age {
                    0 => NO_STORE,
                    1 => HeaderValue::from_static("private, max-age=1"),
                    n => HeaderValue::from_str(&format!("private, max-age={n}")).unwrap_or(NO_STORE),
                };
                headers.insert(CACHE_CONTROL, cache);
                StatusCode::OK
            }
            Decision::NoCredential => {
                headers.insert(WWW_AUTHENTICATE, CHALLENGE);
                StatusCode::UNAUTHORIZED
            }
            Decision::Invalid(invalid) => {
                let value = format!(
                    "Bearer realm=\"latchkey\", error=\"invalid_token\", error_description=\"{}\"",
                    invalid.description()
                );
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(&value).unwrap_or(CHALLENGE),
                );
                StatusCode::UNAUTHORIZED
            }
            Decision::InsufficientScope { required } => {
                let value = format!(
                    "Bearer realm=\"latchkey\", error=\"insufficient_scope\", scope=\"{}\"",
                    quoted(&required)
                );
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(&value).unwrap_or(CHALLENGE),
                );
                StatusCode::FORBIDDEN
            }
            Decision::RateLimited { retry_after, limit } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
                headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
                StatusCode::TOO_MANY_REQUESTS
            }
            Decision::NotReady => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        if !headers.contains_key(CACHE_CONTROL) {
            headers.insert(CACHE_CONTROL, NO_STORE);
        }
        (status, headers).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord, RateLimit};
    use crate::key::ApiKeyValue;
    use crate::server::index::Rebuild;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn api_key(current: &ApiKeyValue, previous: Option<(&ApiKeyValue, i64)>) -> ApiKey {
        let mut ak = ApiKey::new(
            "billing",
            ApiKeySpec {
                subject: Some("billing-service".into()),
                scopes: vec!["orders:read".into(), "invoices:write".into()],
                audiences: vec!["api.example.com".into()],
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some("shop".into());
        let record = |k: &ApiKeyValue, until: Option<i64>| KeyRecord {
            id: k.key_id().into(),
            sha256: k.sha256_hex(),
            issued_at: Time(t(-100)),
            valid_until: until.map(|s| Time(t(s))),
        };
        ak.status = Some(ApiKeyStatus {
            current_key: Some(record(current, None)),
            previous_keys: previous.map(|(k, s)| record(k, Some(s))).into_iter().collect(),
            ..Default::default()
        });
        ak
    }

    fn index_of(keys: &[ApiKey]) -> Index {
        let index = Index::default();
        let mut rebuild = Rebuild::default();
        for k in keys {
            rebuild.apply(k, None);
        }
        index.replace(rebuild);
        index
    }

    fn req(query: &str) -> Requirement {
        Requirement::from_query(Some(query))
    }

    fn header(resp: &Response, name: impl axum::http::header::AsHeaderName) -> String {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn a_valid_key_is_allowed_with_identity_headers_and_a_short_cache() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let d = decide(Some(key.expose()), &req("scope=orders:read"), &index, t(0), 1);
        assert_eq!(d.label(), "allow");
        let resp = d.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, X_AUTH_SUBJECT), "billing-service");
        assert_eq!(header(&resp, X_AUTH_SCOPES), "orders:read invoices:write");
        assert_eq!(header(&resp, X_AUTH_KEY_ID), key.key_id());
        assert!(resp.headers().get("x-auth-namespace").is_none());
        assert_eq!(header(&resp, CACHE_CONTROL), "private, max-age=1");
        assert!(resp.headers().get("set-cookie").is_none());
    }

    #[test]
    fn no_credential_gets_a_challenge_without_an_error() {
        let index = index_of(&[]);
        let resp = decide(None, &req(""), &index, t(0), 1).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&resp, WWW_AUTHENTICATE), "Bearer realm=\"latchkey\"");
        assert_eq!(header(&resp, CACHE_CONTROL), "no-store");
    }

    #[test]
    fn malformed_bad_checksum_and_unknown_keys_are_invalid_tokens() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let mut bad_sum = key.expose().to_owned();
        let last = bad_sum.pop().unwrap();
        bad_sum.push(if last == 'a' { 'b' } else { 'a' });
        for (presented, why) in [
            ("hunter2", Invalid::Malformed),
            (bad_sum.as_str(), Invalid::Malformed),
            (ApiKeyValue::generate().expose(), Invalid::Unknown),
        ] {
            let d = decide(Some(presented), &req(""), &index, t(0), 1);
            assert!(
                matches!(d, Decision::Invalid(i) if i == why),
                "{presented:?}: {d:?}"
            );
            let resp = d.into_response();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert!(header(&resp, WWW_AUTHENTICATE).contains("error=\"invalid_token\""));
            assert!(!header(&resp, WWW_AUTHENTICATE).contains(key.expose()));
        }
    }

    #[test]
    fn a_key_in_grace_is_valid_until_its_end_and_caches_no_longer() {
        let (current, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let index = index_of(&[api_key(&current, Some((&old, 30)))]);
        let d = decide(Some(old.expose()), &req(""), &index, t(29), 5);
        assert!(matches!(d, Decision::Allow { max_age: 1, .. }), "{d:?}");
        let d = decide(Some(old.expose()), &req(""), &index, t(30), 5);
        assert!(matches!(d, Decision::Invalid(Invalid::Expired)), "{d:?}");
        let d = decide(Some(current.expose()), &req(""), &index, t(30), 5);
        assert!(matches!(d, Decision::Allow { max_age: 5, .. }));
    }

    #[test]
    fn expiry_and_revocation_refuse_every_key() {
        let key = ApiKeyValue::generate();
        let mut expiring = api_key(&key, None);
        expiring.spec.expires_at = Some(Time(t(10)));
        let index = index_of(&[expiring.clone()]);
        assert!(matches!(
            decide(Some(key.expose()), &req(""), &index, t(9), 1),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            decide(Some(key.expose()), &req(""), &index, t(10), 1),
            Decision::Invalid(Invalid::Expired)
        ));
        let mut revoked = expiring;
        revoked.spec.revoked = Some(true);
        index.apply(&revoked);
        assert!(matches!(
            decide(Some(key.expose()), &req(""), &index, t(0), 1),
            Decision::Invalid(Invalid::Unknown)
        ));
    }

    #[test]
    fn scopes_and_audience_are_checked() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let k = Some(key.expose());
        let d = decide(k, &req("scope=orders:read&scope=invoices:write"), &index, t(0), 1);
        assert!(matches!(d, Decision::Allow { .. }));
        let d = decide(k, &req("scope=orders:read+admin"), &index, t(0), 1);
        let resp = d.into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            header(&resp, WWW_AUTHENTICATE),
            "Bearer realm=\"latchkey\", error=\"insufficient_scope\", scope=\"orders:read admin\""
        );
        let d = decide(k, &req("audience=api.example.com"), &index, t(0), 1);
        assert!(matches!(d, Decision::Allow { .. }));
        let d = decide(k, &req("audience=other.example.com"), &index, t(0), 1);
        assert!(matches!(d, Decision::Invalid(Invalid::Audience)));
    }

    #[test]
    fn over_the_rate_limit_is_429_with_retry_after_and_never_cached() {
        let key = ApiKeyValue::generate();
        let mut ak = api_key(&key, None);
        ak.spec.rate_limit = Some(RateLimit {
            requests_per_second: 1,
            burst: Some(2),
        });
        let index = index_of(&[ak]);
        let k = Some(key.expose());
        for _ in 0..2 {
            let d = decide(k, &req(""), &index, t(0), 1);
            assert!(matches!(d, Decision::Allow { max_age: 0, .. }), "{d:?}");
        }
        let resp = decide(k, &req(""), &index, t(0), 1).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, RETRY_AFTER), "1");
        assert_eq!(header(&resp, X_RATELIMIT_LIMIT), "1");
        assert_eq!(header(&resp, CACHE_CONTROL), "no-store");
    }

    #[test]
    fn before_the_first_sync_every_request_is_503() {
        let index = Index::default();
        let resp = decide(Some("x"), &req(""), &index, t(0), 1).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn credential_sources_in_order() {
        let custom = HeaderName::from_static("x-my-key");
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h, Some(&custom)), None);
        h.insert("x-my-key", HeaderValue::from_static("c"));
        assert_eq!(credential(&h, Some(&custom)), Some("c"));
        assert_eq!(credential(&h, None), None);
        h.insert("x-api-key", HeaderValue::from_static("b"));
        assert_eq!(credential(&h, Some(&custom)), Some("b"));
        h.insert("authorization", HeaderValue::from_static("Basic Zm9vOmJhcg=="));
        assert_eq!(credential(&h, Some(&custom)), Some("b"));
        h.insert("authorization", HeaderValue::from_static("bearer  a "));
        assert_eq!(credential(&h, Some(&custom)), Some("a"));
        let mut empty = HeaderMap::new();
        empty.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(credential(&empty, None), None);
    }

    #[test]
    fn requirement_from_query() {
        assert_eq!(
            req("scope=a&scope=b%20c&audience=x&other=1"),
            Requirement {
                scopes: vec!["a".into(), "b".into(), "c".into()],
                audience: Some("x".into())
            }
        );
        assert_eq!(Requirement::from_query(None), Requirement::default());
    }
}
