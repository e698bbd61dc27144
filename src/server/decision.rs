//! The auth decision, and the HTTP answer each decision gets. Pure apart from
//! the index it reads and the rate limiter's bucket: the caller passes `now`.
//!
//! Status policy (one table for every proxy family; see
//! `research/ext-auth-anchors.md` §E):
//! - allow → exactly `200`, empty body, every identity header of
//!   [`IDENTITY_HEADERS`] (empty when it has no value, so that a proxy that
//!   overwrites a listed header also erases a client's copy of it);
//! - no credential → `401`, `WWW-Authenticate: Bearer realm="latchkey"` (no
//!   `error`, RFC 6750 §3.1);
//! - more than one credential (two `Authorization` headers, two `X-Api-Key`
//!   values, a Bearer token and an `X-Api-Key` that differ) → `400`
//!   `error="invalid_request"` (RFC 6750 §3.1: "uses more than one method");
//! - malformed, unknown, expired or revoked key, or a credential not valid for
//!   the required audience, namespace or issuer → `401` `error="invalid_token"`
//!   (the credential will never be valid here: another one is needed, not more
//!   privileges);
//! - a required scope the credential lacks → `403` `error="insufficient_scope"`;
//! - over the key's rate limit → `429` + `Retry-After` (plain nginx turns any
//!   status but 2xx/401/403 into 500; the README's `error_page` recipe turns
//!   it back into 429);
//! - index not loaded yet → `503` (fail closed).
//!
//! Metering: an API key, a token minted with one of its ApiKey's keys (its
//! `client_id`) and `/token` all go through [`use_key`]: one request from
//! the ApiKey's bucket, and the use recorded for `status.lastUsedAt`. The
//! key path and the token path end in the same [`conclude`].
//!
//! Caching: an allow may be cached by the proxy for
//! `min(--decision-cache-seconds, time until the credential stops being valid)`
//! (`private, max-age=N`), so a revocation still takes effect within that
//! bound plus the watch's delay; a rate-limited key's decisions (its own and
//! its tokens') and every denial are `no-store` (a cached allow would skip
//! the metering).

use super::counters::{Denied, KeyCounters};
use super::identity::EMPTY;
pub use super::identity::X_AUTH_ACTOR;
pub use super::identity::{
    CLAIM_HEADER_PREFIX, ClaimHeader, IDENTITY_HEADERS, Identity, X_AUTH_CLAIMS, X_AUTH_KEY_ID,
    X_AUTH_NAMESPACE, X_AUTH_ROLE, X_AUTH_SCOPES, X_AUTH_SUBJECT, claims_header,
};
use super::index::{Index, IndexedApiKey, KeyEntry, KeyId, Usage};
use super::shared_limit::{Share, Spend};
use crate::key;
use crate::token::claims::TokenInvalid;

use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use k8s_openapi::jiff::Timestamp;
use std::sync::atomic::Ordering;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// The headers of an allow besides the `--claim-header`s: the identity
/// headers and `Cache-Control`.
const ALLOW_HEADERS: usize = 7 + 1;
/// The headers of an allow without `--claim-header`s, in this order, with
/// empty values: [`IDENTITY_HEADERS`], then `Cache-Control`.
static ALLOW_TEMPLATE: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut headers = HeaderMap::with_capacity(ALLOW_HEADERS);
    for name in IDENTITY_HEADERS.into_iter().chain([CACHE_CONTROL]) {
        headers.insert(name, EMPTY);
    }
    headers
});
const CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"latchkey\"");
pub use super::requirement::{Denial, Offer, Requirement, ResourceRule};

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
    /// No longer listed, but a key an ApiKey recently retired (grace over,
    /// or the ApiKey revoked): answered exactly like [`Invalid::Unknown`].
    Retired,
    /// Valid, but not for the audience the route requires.
    Audience,
    /// Valid, but from an ApiKey outside the namespaces the route requires.
    Namespace,
    /// Valid, but not a token of an issuer the route requires (an API key
    /// has no issuer).
    Issuer,
    /// A JWT access token that fails verification.
    Token(TokenInvalid),
    /// A valid JWT whose API key (`client_id`) is revoked, expired or gone.
    ClientRevoked,
}

impl Invalid {
    fn description(self) -> &'static str {
        match self {
            Invalid::Malformed => "the credential is not a well-formed latchkey API key",
            // A key that was valid once gets the answer of one that never
            // was: the client learns nothing about a key's history.
            Invalid::Unknown | Invalid::Expired | Invalid::Retired => "the API key is unknown or revoked",
            Invalid::Audience => "the credential is not valid for this audience",
            Invalid::Namespace => "the credential comes from a namespace this route does not accept",
            Invalid::Issuer => "the credential is not a token of an issuer this route accepts",
            Invalid::Token(t) => t.description(),
            Invalid::ClientRevoked => "the API key that obtained this token is revoked or expired",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::Unknown => "unknown",
            Invalid::Expired => "expired",
            Invalid::Retired => "retired_key",
            Invalid::Audience => "audience",
            Invalid::Namespace => "namespace",
            Invalid::Issuer => "issuer",
            Invalid::Token(t) => t.label(),
            Invalid::ClientRevoked => "token_client_revoked",
        }
    }
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
    /// The request is malformed (RFC 6750 `invalid_request`, 400).
    InvalidRequest(&'static str),
    Invalid(Invalid),
    InsufficientScope {
        required: String,
        /// A permission holds the scopes, but none covers the request's
        /// path (`resource=path`).
        resource: bool,
    },
    RateLimited {
        retry_after: u64,
        limit: u32,
    },
    NotReady,
}

impl Decision {
    /// Whether a key that is no longer valid was presented (grace over, its
    /// ApiKey revoked or expired): `latchkey_retired_key_presented_total`.
    pub fn retired_key_presented(&self) -> bool {
        matches!(self, Decision::Invalid(Invalid::Expired | Invalid::Retired))
    }

    /// Whether a presented API key did not authenticate (unknown, replaced,
    /// revoked or expired), for the per-key-id throttle; a valid key refused
    /// for its audience, namespace, issuer or scopes did authenticate.
    pub fn failed_authentication(&self) -> bool {
        matches!(
            self,
            Decision::Invalid(Invalid::Unknown | Invalid::Expired | Invalid::Retired)
        )
    }

    /// The counter of `status.keyUsage[].denied` a denial of a valid key
    /// goes to.
    pub fn denied(&self) -> Option<Denied> {
        match self {
            Decision::Invalid(Invalid::Audience) => Some(Denied::Audience),
            Decision::Invalid(Invalid::Namespace) => Some(Denied::Namespace),
            Decision::Invalid(Invalid::Issuer) => Some(Denied::Issuer),
            Decision::InsufficientScope { .. } => Some(Denied::Scope),
            Decision::RateLimited { .. } => Some(Denied::RateLimited),
            _ => None,
        }
    }

    /// The `result` label of the decision metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::NoCredential => "no_credential",
            Decision::InvalidRequest(_) => "invalid_request",
            Decision::Invalid(i) => i.label(),
            Decision::InsufficientScope { .. } => "insufficient_scope",
            Decision::RateLimited { .. } => "rate_limited",
            Decision::NotReady => "not_ready",
        }
    }
}

/// `HeaderValue::to_str`: the same values accepted (visible ASCII, space
/// and tab), judged a machine word at a time. A `HeaderValue` never holds a
/// control byte other than tab, nor DEL (http's constructors refuse them,
/// and so does hyper's parser, httparse, for what arrives on the wire), so
/// for a header value "visible ASCII" is plain ASCII. Runs over the whole
/// credential on every request (the decision's reading; the guard's too
/// while some key id is throttled); `to_str` judged a byte at a time, which
/// a user's token (about 700 bytes) felt.
pub(crate) fn visible_ascii(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if bytes.is_ascii() {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// The credential a request presents: `Authorization: Bearer`, `X-Api-Key`
/// or the configured header. An `Authorization` header with another scheme
/// (Basic, say) is not a credential of ours. Refused, never "first wins": a
/// repeated `Authorization`, `X-Api-Key` or configured header, a value that is
/// not visible ASCII, and two of the sources carrying different credentials
/// (the same one twice is fine).
pub fn credential<'a>(
    headers: &'a HeaderMap,
    custom: Option<&HeaderName>,
) -> Result<Option<&'a str>, Decision> {
    const REPEATED: &str = "the request carries more than one credential header";
    const UNREADABLE: &str = "a credential header is not visible ASCII";
    let only = |name: &HeaderName| -> Result<Option<&'a str>, Decision> {
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match headers.contains_key(name) {
                true => Err(Decision::InvalidRequest(REPEATED)),
                false => Ok(None),
            };
        };
        let value = visible_ascii(value).ok_or(Decision::InvalidRequest(UNREADABLE))?;
        Ok(Some(value.trim()))
    };
    let bearer = only(&AUTHORIZATION)?.and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let api_key = only(&X_API_KEY)?;
    let custom = match custom {
        Some(name) if *name != X_API_KEY && *name != AUTHORIZATION => only(name)?,
        _ => None,
    };
    let mut found: Option<&str> = None;
    for c in [bearer, api_key, custom]
        .into_iter()
        .flatten()
        .filter(|c| !c.is_empty())
    {
        match found {
            Some(f) if f != c => {
                return Err(Decision::InvalidRequest(
                    "the request carries two different credentials; send one",
                ));
            }
            _ => found = Some(c),
        }
    }
    Ok(found)
}

/// Checks a presented key against the index: format, then lookup, then
/// validity at `now`. Scopes, audience and rate limit are the caller's.
pub fn verify(presented: &str, index: &Index, now: Timestamp) -> Result<(KeyEntry, KeyId), Invalid> {
    let key_id = key::check(presented).map_err(|_| Invalid::Malformed)?;
    let key_id = KeyId::try_from(key_id.as_bytes()).map_err(|_| Invalid::Malformed)?;
    let entry = index
        .find(&key_id, &key::sha256(presented.as_bytes()))
        .ok_or(Invalid::Unknown)?;
    if entry.valid_until.passed(now) {
        return Err(Invalid::Expired);
    }
    Ok((entry, key_id))
}

/// Over an ApiKey's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until the bucket has a request again (at least 1).
    pub retry_after: u64,
    /// The ApiKey's `requestsPerSecond`.
    pub limit: u32,
}

/// One use of an ApiKey's key, whoever makes it: the key itself, a token
/// minted with it, or `/token` with it. Takes one request from the ApiKey's
/// bucket (when it has a rate limit) and records the use for
/// `status.lastUsedAt` and the key's `status.keyUsage` (allowed, or denied
/// by the rate limit); the one metering path.
pub fn use_key(usage: &Usage, key: &KeyCounters, now: Timestamp) -> Result<(), Limited> {
    if let (Some(limiter), Some(limit)) = (&usage.limiter, &usage.rate_limit) {
        // Shared through Redis: this replica's lease of the cluster's
        // bucket (no I/O here), or the per-replica bucket when the key is
        // cold or Redis down (see `shared_limit`).
        let refused = match usage.share.as_ref().map(Share::spend) {
            Some(Spend::Shared) => None,
            Some(Spend::Refused) => usage.share.as_ref().map(|s| s.retry_after()),
            Some(Spend::Local) | None => match limiter.check() {
                Ok(()) => {
                    if let Some(share) = &usage.share {
                        share.spent_locally();
                    }
                    None
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    Some(wait.as_secs_f64().ceil().max(1.0) as u64)
                }
            },
        };
        if let Some(retry_after) = refused {
            key.deny(Denied::RateLimited);
            return Err(Limited {
                retry_after,
                limit: limit.requests_per_second,
            });
        }
    }
    // Written once a second at most: a store on every request would make
    // the cores fight over the cache line.
    let last_used = &usage.last_used;
    if last_used.load(Ordering::Relaxed) != now.as_second() {
        last_used.store(now.as_second(), Ordering::Relaxed);
    }
    key.allow(now.as_second());
    Ok(())
}

/// The end of every external-auth path, for a credential from `owner`'s
/// ApiKey (an API key, or a token its key minted) that verified: the route's
/// requirement, then [`use_key`], then the allow with `identity` and
/// `X-Auth-Namespace`, cacheable until `until` (the credential's end, unix
/// seconds) and `--decision-cache-seconds` at most, and never under a rate
/// limit. `identity` makes the allow's identity for `owner` (namespace and
/// name included).
#[allow(clippy::too_many_arguments)]
pub fn conclude(
    requirement: &Requirement,
    offer: &impl Offer,
    owner: &IndexedApiKey,
    key: &KeyCounters,
    until: Option<i64>,
    now: Timestamp,
    cache_seconds: u64,
    identity: impl FnOnce(&IndexedApiKey) -> Identity,
) -> Decision {
    if let Err(denied) = requirement.check(offer, owner.namespace()) {
        if let Some(why) = denied.denied() {
            key.deny(why);
        }
        return denied;
    }
    if let Err(Limited { retry_after, limit }) = use_key(&owner.usage, key, now) {
        return Decision::RateLimited { retry_after, limit };
    }
    let max_age = if owner.usage.limiter.is_some() {
        0
    } else {
        let left = until.map(|t| t.saturating_sub(now.as_second()).max(0) as u64);
        left.map_or(cache_seconds, |l| l.min(cache_seconds))
    };
    Decision::Allow {
        identity: Box::new(identity(owner)),
        max_age,
    }
}

/// The whole decision for one external-auth request with an API key (or
/// none; a JWT goes to [`super::tokens::decide_token`]).
pub fn decide_key_request(
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
    let sha256 = key::sha256(presented.as_bytes());
    let decided = index.find_with(&id, &sha256, |entry| {
        if entry.valid_until.passed(now) {
            entry.owner.usage.retired.presented(&id, now.as_second());
            return Decision::Invalid(Invalid::Expired);
        }
        let owner = &*entry.owner;
        let until = entry.valid_until.second();
        conclude(
            requirement,
            owner,
            owner,
            &entry.counters,
            until,
            now,
            cache_seconds,
            |owner| Identity::of_key(owner, &id),
        )
    });
    decided.unwrap_or_else(|| retired_or_unknown(index, &id, &sha256, now))
}

/// After [`verify`] refused `presented` with `invalid` (for `/token`): a
/// key no longer valid is counted for its ApiKey like on the auth routes.
/// Returns the refusal as [`decide_key_request`] would word it.
pub fn note_retired(presented: &str, invalid: Invalid, index: &Index, now: Timestamp) -> Decision {
    let Ok(id) = key::check(presented).map(|id| KeyId::try_from(id.as_bytes())) else {
        return Decision::Invalid(invalid);
    };
    let Ok(id) = id else {
        return Decision::Invalid(invalid);
    };
    let sha256 = key::sha256(presented.as_bytes());
    match invalid {
        Invalid::Expired => {
            index.find_with(&id, &sha256, |e| {
                e.owner.usage.retired.presented(&id, now.as_second())
            });
            Decision::Invalid(invalid)
        }
        Invalid::Unknown => retired_or_unknown(index, &id, &sha256, now),
        other => Decision::Invalid(other),
    }
}

/// A key the index does not list: counted for its ApiKey when it is one
/// that ApiKey recently retired, refused as unknown either way.
pub fn retired_or_unknown(index: &Index, id: &KeyId, sha256: &[u8; 32], now: Timestamp) -> Decision {
    match index.retired_owner(id, sha256) {
        Some(owner) => {
            owner.usage.retired.presented(id, now.as_second());
            Decision::Invalid(Invalid::Retired)
        }
        None => Decision::Invalid(Invalid::Unknown),
    }
}

fn quoted(value: &str) -> String {
    // Scopes and descriptions never hold quotes or backslashes (CRD rules
    // and our own texts); drop them anyway rather than break the header.
    value.chars().filter(|c| *c != '"' && *c != '\\').collect()
}

fn challenge(error: &str, rest: &str) -> HeaderValue {
    let value = format!("Bearer realm=\"latchkey\", error=\"{error}\", {rest}");
    HeaderValue::from_str(&value).unwrap_or(CHALLENGE)
}

impl Decision {
    /// The HTTP answer, with a header of its own for each of the operator's
    /// `claim_headers` on an allow (empty when the credential lacks it).
    pub fn into_response_with(self, claim_headers: &[ClaimHeader]) -> Response {
        // Written straight into the response's own map: no second map to
        // merge.
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = self.write_parts(claim_headers, response.headers_mut());
        response
    }

    /// The HTTP answer's status and headers: the one table of what each
    /// decision answers, for the HTTP routes and the gRPC front end alike.
    pub fn into_parts_with(self, claim_headers: &[ClaimHeader]) -> (StatusCode, HeaderMap) {
        let mut headers = HeaderMap::new();
        let status = self.write_parts(claim_headers, &mut headers);
        (status, headers)
    }

    /// Writes the answer's headers into `headers`; returns its status.
    fn write_parts(self, claim_headers: &[ClaimHeader], headers: &mut HeaderMap) -> StatusCode {
        let status = match self {
            Decision::Allow { identity, max_age } => {
                let Identity {
                    subject,
                    scopes,
                    key_id,
                    namespace,
                    api_key_name: _,
                    role,
                    claims,
                    claim_values,
                    actor,
                } = *identity;
                let cache = match max_age {
                    0 => NO_STORE,
                    1 => HeaderValue::from_static("private, max-age=1"),
                    n => HeaderValue::from_str(&format!("private, max-age={n}")).unwrap_or(NO_STORE),
                };
                // In the order of [`ALLOW_TEMPLATE`].
                let values = [subject, scopes, key_id, namespace, role, claims, actor, cache];
                if claim_headers.is_empty() && headers.is_empty() {
                    // The template's names, hashed once: cloned, then its
                    // values replaced in place (no name hashed per request,
                    // and a map allocated at its exact size).
                    *headers = ALLOW_TEMPLATE.clone();
                    for (slot, value) in headers.values_mut().zip(values) {
                        *slot = value;
                    }
                } else {
                    headers.reserve(ALLOW_HEADERS + claim_headers.len());
                    for ClaimHeader { claim, header } in claim_headers {
                        let value = claim_values
                            .iter()
                            .find(|(n, _)| n.as_bytes() == claim.as_bytes());
                        headers.insert(header.clone(), value.map_or(EMPTY, |(_, v)| v.clone()));
                    }
                    for (name, value) in ALLOW_TEMPLATE.keys().zip(values) {
                        headers.insert(name.clone(), value);
                    }
                }
                StatusCode::OK
            }
            Decision::NoCredential => {
                headers.insert(WWW_AUTHENTICATE, CHALLENGE);
                StatusCode::UNAUTHORIZED
            }
            Decision::InvalidRequest(why) => {
                let rest = format!("error_description=\"{}\"", quoted(why));
                headers.insert(WWW_AUTHENTICATE, challenge("invalid_request", &rest));
                StatusCode::BAD_REQUEST
            }
            Decision::Invalid(invalid) => {
                let rest = format!("error_description=\"{}\"", invalid.description());
                headers.insert(WWW_AUTHENTICATE, challenge("invalid_token", &rest));
                StatusCode::UNAUTHORIZED
            }
            Decision::InsufficientScope { required, resource } => {
                let description = match (resource, required.is_empty()) {
                    (true, _) => "no permission that holds the required scopes covers the request's path",
                    (false, true) => "no permission of the credential covers the request's path",
                    (false, false) => "no permission of the credential holds every required scope",
                };
                let rest = format!(
                    "scope=\"{}\", error_description=\"{description}\"",
                    quoted(&required)
                );
                headers.insert(WWW_AUTHENTICATE, challenge("insufficient_scope", &rest));
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
        status
    }
}

impl IntoResponse for Decision {
    fn into_response(self) -> Response {
        self.into_response_with(&[])
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

    proptest::proptest! {
        #[test]
        fn a_credential_is_read_as_http_reads_a_header_value(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![8 => 32u8..127, 1 => proptest::num::u8::ANY],
                0..200,
            )
        ) {
            // Every byte a header value can hold, and the ones it cannot
            // (refused by the constructor, as by hyper's parser).
            let visible = bytes.iter().all(|b| (32..127).contains(b) || *b == b'\t');
            match HeaderValue::from_bytes(&bytes) {
                Ok(value) => {
                    proptest::prop_assert_eq!(visible_ascii(&value), value.to_str().ok());
                    proptest::prop_assert_eq!(visible_ascii(&value).is_some(), visible);
                }
                Err(_) => proptest::prop_assert!(!visible),
            }
        }
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

    /// A key of an ApiKey limited to 1 request/s with `burst`, indexed.
    fn rate_limited_key(burst: u32) -> (ApiKeyValue, Index) {
        let key = ApiKeyValue::generate();
        let mut ak = api_key(&key, None);
        ak.spec.rate_limit = Some(RateLimit {
            requests_per_second: 1,
            burst: Some(burst),
        });
        (key, index_of(&[ak]))
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
    fn an_allow_carries_each_value_under_its_own_name_with_or_without_claim_headers() {
        let value = HeaderValue::from_static;
        let identity = || Identity {
            subject: value("user-42"),
            scopes: value("a b"),
            key_id: value("KEYID"),
            namespace: value("shop"),
            api_key_name: value("login"),
            role: value("data-entry"),
            claims: value(r#"{"tenant":"acme"}"#),
            claim_values: vec![(value("tenant"), value("acme"))],
            actor: value("login-handler"),
        };
        let expected = [
            ("x-auth-subject", "user-42"),
            ("x-auth-scopes", "a b"),
            ("x-auth-key-id", "KEYID"),
            ("x-auth-namespace", "shop"),
            ("x-auth-role", "data-entry"),
            ("x-auth-claims", r#"{"tenant":"acme"}"#),
            ("x-auth-actor", "login-handler"),
            ("cache-control", "private, max-age=7"),
        ];
        let allow = || Decision::Allow {
            identity: Box::new(identity()),
            max_age: 7,
        };
        // Twice each: the template the first answer made serves the next.
        for _ in 0..2 {
            let (status, headers) = allow().into_parts_with(&[]);
            assert_eq!(status, StatusCode::OK);
            let got: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            assert_eq!(got, expected);
            let response = allow().into_response_with(&[]);
            assert_eq!(response.headers(), &headers);

            let claim_headers = ["tenant".parse().unwrap(), "region".parse().unwrap()];
            let (_, headers) = allow().into_parts_with(&claim_headers);
            assert_eq!(headers.len(), expected.len() + 2);
            for (name, v) in expected {
                assert_eq!(headers[name], v, "{name}");
            }
            assert_eq!(headers["x-auth-claim-tenant"], "acme");
            assert_eq!(headers["x-auth-claim-region"], "");
        }
    }

    #[test]
    fn a_valid_key_is_allowed_with_identity_headers_and_a_short_cache() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let d = decide_key_request(Some(key.expose()), &req("scope=orders:read"), &index, t(0), 1);
        assert_eq!(d.label(), "allow");
        let resp = d.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, X_AUTH_SUBJECT), "billing-service");
        assert_eq!(header(&resp, X_AUTH_SCOPES), "orders:read invoices:write");
        assert_eq!(header(&resp, X_AUTH_KEY_ID), key.key_id());
        assert_eq!(header(&resp, X_AUTH_NAMESPACE), "shop");
        assert_eq!(header(&resp, CACHE_CONTROL), "private, max-age=1");
        assert!(resp.headers().get("set-cookie").is_none());
    }

    #[test]
    fn every_allow_carries_every_identity_header_empty_when_unset() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let tenant: ClaimHeader = "tenant".parse().unwrap();
        let resp =
            decide_key_request(Some(key.expose()), &req(""), &index, t(0), 1).into_response_with(&[tenant]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(ALLOW_HEADERS, IDENTITY_HEADERS.len() + 1);
        for name in IDENTITY_HEADERS {
            assert!(resp.headers().contains_key(&name), "{name} missing");
            assert_eq!(resp.headers().get_all(&name).iter().count(), 1, "{name}");
        }
        assert_eq!(header(&resp, X_AUTH_ROLE), "");
        assert_eq!(header(&resp, X_AUTH_CLAIMS), "{}");
        // The operator's claim header is there too, empty for an API key.
        assert_eq!(header(&resp, "x-auth-claim-tenant"), "");
        assert!(resp.headers().contains_key("x-auth-claim-tenant"));
        // Denials carry none of them.
        let resp = decide_key_request(None, &req(""), &index, t(0), 1)
            .into_response_with(&["tenant".parse().unwrap()]);
        for name in IDENTITY_HEADERS {
            assert!(!resp.headers().contains_key(&name), "{name} on a denial");
        }
        assert!(!resp.headers().contains_key("x-auth-claim-tenant"));
    }

    #[test]
    fn a_route_can_require_namespaces_and_issuers() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let k = Some(key.expose());
        for ok in [
            "namespace=shop",
            "namespace=other&namespace=shop",
            "namespace=shop&scope=orders:read",
        ] {
            let d = decide_key_request(k, &req(ok), &index, t(0), 1);
            assert!(matches!(d, Decision::Allow { .. }), "{ok}: {d:?}");
        }
        let d = decide_key_request(k, &req("namespace=other&namespace=shop2"), &index, t(0), 1);
        assert!(matches!(d, Decision::Invalid(Invalid::Namespace)), "{d:?}");
        let resp = d.into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(header(&resp, WWW_AUTHENTICATE).contains("error=\"invalid_token\""));
        assert!(header(&resp, WWW_AUTHENTICATE).contains("namespace this route does not accept"));
        assert!(
            !header(&resp, WWW_AUTHENTICATE).contains("shop2"),
            "the requirement is not disclosed"
        );
        // An API key has no issuer: a route that names one refuses every key.
        let d = decide_key_request(k, &req("issuer=https://auth.example.com/shop"), &index, t(0), 1);
        assert!(matches!(d, Decision::Invalid(Invalid::Issuer)), "{d:?}");
        assert_eq!(d.label(), "issuer");
    }

    #[test]
    fn a_refused_requirement_takes_nothing_from_the_bucket() {
        let (key, index) = rate_limited_key(1);
        let k = Some(key.expose());
        for q in ["namespace=other", "scope=admin", "issuer=x"] {
            assert!(!matches!(
                decide_key_request(k, &req(q), &index, t(0), 1),
                Decision::Allow { .. }
            ));
        }
        assert!(matches!(
            decide_key_request(k, &req(""), &index, t(0), 1),
            Decision::Allow { max_age: 0, .. }
        ));
        assert!(matches!(
            decide_key_request(k, &req(""), &index, t(0), 1),
            Decision::RateLimited { .. }
        ));
    }

    #[test]
    fn a_shared_limit_spends_the_lease_and_falls_back_to_the_replicas_bucket() {
        use crate::server::shared_limit::Settlements;
        let key = ApiKeyValue::generate();
        let mut ak = api_key(&key, None);
        ak.spec.rate_limit = Some(RateLimit {
            requests_per_second: 1,
            burst: Some(2),
        });
        let settlements = std::sync::Arc::new(Settlements::default());
        settlements.set_up(true);
        let index = Index::default();
        index.share_rate_limits(settlements.clone());
        index.apply(&ak);
        let owner = index.owners().pop().unwrap();
        let share = owner
            .usage
            .share
            .clone()
            .expect("a share of the cluster's bucket");
        // A new version of the ApiKey with the same limit keeps its share.
        index.apply(&ak);
        let again = index.owners().pop().unwrap().usage.share.clone().unwrap();
        assert!(std::sync::Arc::ptr_eq(&share, &again));
        let counters = KeyCounters::default();
        let refused = Err(Limited {
            retry_after: 1,
            limit: 1,
        });
        // Cold: the replica's bucket decides, and the use is owed.
        assert_eq!(use_key(&owner.usage, &counters, t(0)), Ok(()));
        let ask = share.plan().expect("a settle");
        assert_eq!((ask.give, ask.want), (-1, 1));
        // Redis takes the one owed and grants nothing (the cluster's bucket
        // is empty): refused although the replica's own bucket has one left.
        share.settled(ask, 0);
        assert_eq!(use_key(&owner.usage, &counters, t(0)), refused);
        // Redis grants all it is asked: spent from the lease; then the dry
        // lease falls back to the replica's bucket (owed) until it is empty.
        let ask = share.plan().expect("a settle");
        share.settled(ask, ask.want);
        assert_eq!(use_key(&owner.usage, &counters, t(0)), Ok(()));
        assert_eq!(use_key(&owner.usage, &counters, t(0)), Ok(()));
        assert_eq!(use_key(&owner.usage, &counters, t(0)), refused);
        // Redis down: the replica's bucket again (empty by now: the
        // limiter keeps real time, so it does not refill within the test).
        settlements.set_up(false);
        assert_eq!(use_key(&owner.usage, &counters, t(0)), refused);
        let d = counters.deltas();
        assert_eq!((d.allowed, d.denied[Denied::RateLimited as usize]), (3, 3));
    }

    #[test]
    fn use_key_meters_and_records_the_use() {
        let (key, index) = rate_limited_key(2);
        let owner = index.owners().pop().unwrap();
        let counters = KeyCounters::default();
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), 0);
        assert_eq!(use_key(&owner.usage, &counters, t(5)), Ok(()));
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), t(5).as_second());
        assert_eq!(use_key(&owner.usage, &counters, t(6)), Ok(()));
        assert_eq!(
            use_key(&owner.usage, &counters, t(7)),
            Err(Limited {
                retry_after: 1,
                limit: 1
            })
        );
        // A refused use is not a use.
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), t(6).as_second());
        assert_eq!(counters.last_used.load(Ordering::Relaxed), t(6).as_second());
        let d = counters.deltas();
        assert_eq!((d.allowed, d.denied[Denied::RateLimited as usize]), (2, 1));
        // The key's own decision shares the bucket.
        assert!(matches!(
            decide_key_request(Some(key.expose()), &req(""), &index, t(7), 1),
            Decision::RateLimited { .. }
        ));
    }

    #[test]
    fn each_key_counts_its_own_allows_and_denials_by_reason() {
        let (new, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let index = index_of(&[api_key(&new, Some((&old, 100)))]);
        let decide =
            |k: &ApiKeyValue, q: &str| decide_key_request(Some(k.expose()), &req(q), &index, t(0), 1);
        assert!(matches!(decide(&old, ""), Decision::Allow { .. }));
        assert!(matches!(
            decide(&old, "scope=admin"),
            Decision::InsufficientScope { .. }
        ));
        assert!(matches!(
            decide(&old, "audience=other"),
            Decision::Invalid(Invalid::Audience)
        ));
        assert!(matches!(
            decide(&old, "namespace=other"),
            Decision::Invalid(Invalid::Namespace)
        ));
        assert!(matches!(
            decide(&old, "issuer=https://x"),
            Decision::Invalid(Invalid::Issuer)
        ));
        let (_, keys) = index.flush_view().pop().unwrap();
        let of = |k: &ApiKeyValue| {
            let c = &keys.iter().find(|(i, _)| *i == k.key_id().as_bytes()).unwrap().1;
            (c.deltas(), c.last_used.load(Ordering::Relaxed))
        };
        let (d, last) = of(&old);
        assert_eq!(d.allowed, 1);
        assert_eq!(d.denied, [1, 1, 1, 1, 0]);
        assert_eq!(last, t(0).as_second());
        assert_eq!(of(&new), (Default::default(), 0), "the new key was not used");
    }

    #[test]
    fn a_retired_key_is_counted_for_its_api_key_and_answered_like_an_unknown_one() {
        let (new, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let index = index_of(&[api_key(&new, Some((&old, 100)))]);
        // Still listed, grace over.
        let expired = decide_key_request(Some(old.expose()), &req(""), &index, t(100), 1);
        assert!(expired.retired_key_presented());
        // Pruned from status: the index remembers it.
        index.apply(&api_key(&new, None));
        let retired = decide_key_request(Some(old.expose()), &req(""), &index, t(200), 1);
        assert!(matches!(retired, Decision::Invalid(Invalid::Retired)));
        let never = decide_key_request(
            Some(ApiKeyValue::generate().expose()),
            &req(""),
            &index,
            t(200),
            1,
        );
        assert!(matches!(never, Decision::Invalid(Invalid::Unknown)));
        assert!(!never.retired_key_presented());
        let owner = index.owners().pop().unwrap();
        assert_eq!(owner.usage.retired.count.load(Ordering::Relaxed), 2);
        let header = |d: Decision| {
            let r = d.into_response();
            (r.status(), r.headers()[WWW_AUTHENTICATE].clone())
        };
        assert_eq!(
            header(retired),
            header(never),
            "never tells that the key was valid once"
        );
        assert_eq!(
            header(expired),
            header(decide_key_request(
                Some(ApiKeyValue::generate().expose()),
                &req(""),
                &index,
                t(200),
                1
            ))
        );
        // /token refuses with verify(); note_retired counts the same way.
        let refused = verify(old.expose(), &index, t(200)).unwrap_err();
        assert!(note_retired(old.expose(), refused, &index, t(200)).retired_key_presented());
        assert_eq!(index.owners()[0].usage.retired.count.load(Ordering::Relaxed), 3);
        // Revoked: every key it listed counts.
        let mut revoked = api_key(&new, None);
        revoked.spec.revoked = Some(true);
        index.apply(&revoked);
        let d = decide_key_request(Some(new.expose()), &req(""), &index, t(300), 1);
        assert!(matches!(d, Decision::Invalid(Invalid::Retired)));
    }

    #[test]
    fn no_credential_gets_a_challenge_without_an_error() {
        let index = index_of(&[]);
        let resp = decide_key_request(None, &req(""), &index, t(0), 1).into_response();
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
            let d = decide_key_request(Some(presented), &req(""), &index, t(0), 1);
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
        let d = decide_key_request(Some(old.expose()), &req(""), &index, t(29), 5);
        assert!(matches!(d, Decision::Allow { max_age: 1, .. }), "{d:?}");
        let d = decide_key_request(Some(old.expose()), &req(""), &index, t(30), 5);
        assert!(matches!(d, Decision::Invalid(Invalid::Expired)), "{d:?}");
        let d = decide_key_request(Some(current.expose()), &req(""), &index, t(30), 5);
        assert!(matches!(d, Decision::Allow { max_age: 5, .. }));
    }

    #[test]
    fn expiry_and_revocation_refuse_every_key() {
        let key = ApiKeyValue::generate();
        let mut expiring = api_key(&key, None);
        expiring.spec.expires_at = Some(Time(t(10)));
        let index = index_of(&[expiring.clone()]);
        assert!(matches!(
            decide_key_request(Some(key.expose()), &req(""), &index, t(9), 1),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            decide_key_request(Some(key.expose()), &req(""), &index, t(10), 1),
            Decision::Invalid(Invalid::Expired)
        ));
        let mut revoked = expiring;
        revoked.spec.revoked = Some(true);
        index.apply(&revoked);
        // Counted as a retired key, answered like an unknown one.
        assert!(matches!(
            decide_key_request(Some(key.expose()), &req(""), &index, t(0), 1),
            Decision::Invalid(Invalid::Retired)
        ));
    }

    #[test]
    fn scopes_and_audience_are_checked() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let k = Some(key.expose());
        let d = decide_key_request(k, &req("scope=orders:read&scope=invoices:write"), &index, t(0), 1);
        assert!(matches!(d, Decision::Allow { .. }));
        let d = decide_key_request(k, &req("scope=orders:read+admin"), &index, t(0), 1);
        let resp = d.into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            header(&resp, WWW_AUTHENTICATE),
            "Bearer realm=\"latchkey\", error=\"insufficient_scope\", scope=\"orders:read admin\", \
             error_description=\"no permission of the credential holds every required scope\""
        );
        let d = decide_key_request(k, &req("audience=api.example.com"), &index, t(0), 1);
        assert!(matches!(d, Decision::Allow { .. }));
        let d = decide_key_request(k, &req("audience=other.example.com"), &index, t(0), 1);
        assert!(matches!(d, Decision::Invalid(Invalid::Audience)));
    }

    #[test]
    fn over_the_rate_limit_is_429_with_retry_after_and_never_cached() {
        let (key, index) = rate_limited_key(2);
        let k = Some(key.expose());
        for _ in 0..2 {
            let d = decide_key_request(k, &req(""), &index, t(0), 1);
            assert!(matches!(d, Decision::Allow { max_age: 0, .. }), "{d:?}");
        }
        let resp = decide_key_request(k, &req(""), &index, t(0), 1).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, RETRY_AFTER), "1");
        assert_eq!(header(&resp, X_RATELIMIT_LIMIT), "1");
        assert_eq!(header(&resp, CACHE_CONTROL), "no-store");
    }

    #[test]
    fn before_the_first_sync_every_request_is_503() {
        let index = Index::default();
        let resp = decide_key_request(Some("x"), &req(""), &index, t(0), 1).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn credential_sources_in_order() {
        let custom = HeaderName::from_static("x-my-key");
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h, Some(&custom)).unwrap(), None);
        h.insert("x-my-key", HeaderValue::from_static("c"));
        assert_eq!(credential(&h, Some(&custom)).unwrap(), Some("c"));
        assert_eq!(credential(&h, None).unwrap(), None);
        h.insert("x-api-key", HeaderValue::from_static("c"));
        assert_eq!(
            credential(&h, Some(&custom)).unwrap(),
            Some("c"),
            "the same credential twice"
        );
        h.insert("authorization", HeaderValue::from_static("Basic Zm9vOmJhcg=="));
        assert_eq!(
            credential(&h, Some(&custom)).unwrap(),
            Some("c"),
            "Basic is not ours"
        );
        h.insert("authorization", HeaderValue::from_static("bearer  c "));
        assert_eq!(credential(&h, Some(&custom)).unwrap(), Some("c"));
        let mut empty = HeaderMap::new();
        empty.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(credential(&empty, None).unwrap(), None);
    }

    #[test]
    fn repeated_or_conflicting_credentials_are_invalid_requests() {
        let custom = HeaderName::from_static("x-my-key");
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        for pairs in [
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")][..],
            &[("authorization", "Bearer a"), ("authorization", "Bearer a")],
            &[
                ("authorization", "Basic Zm9vOmJhcg=="),
                ("authorization", "Bearer a"),
            ],
            &[("x-api-key", "a"), ("x-api-key", "b")],
            &[("x-my-key", "a"), ("x-my-key", "a")],
            &[("authorization", "Bearer a"), ("x-api-key", "b")],
            &[("x-api-key", "a"), ("x-my-key", "b")],
        ] {
            let h = with(pairs);
            let d = credential(&h, Some(&custom)).expect_err(&format!("{pairs:?}"));
            assert_eq!(d.label(), "invalid_request");
            let resp = d.into_response();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{pairs:?}");
            assert!(
                header(&resp, WWW_AUTHENTICATE)
                    .starts_with("Bearer realm=\"latchkey\", error=\"invalid_request\"")
            );
            assert_eq!(header(&resp, CACHE_CONTROL), "no-store");
        }
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_bytes(b"lk_\xff").unwrap());
        assert!(credential(&h, None).is_err(), "not visible ASCII");
    }

    #[test]
    fn an_api_key_passes_a_resource_path_route_on_its_scopes_alone() {
        let key = ApiKeyValue::generate();
        let index = index_of(&[api_key(&key, None)]);
        let k = Some(key.expose());
        let mut r = req("scope=orders:read&resource=path");
        assert_eq!(r.resource, ResourceRule::Path);
        // Whatever the path, even none or a traversal: a key has no resources.
        for target in [None, Some("/calendar-events/globex/x"), Some("/a/../b")] {
            r.target = target.map(str::to_owned);
            let d = decide_key_request(k, &r, &index, t(0), 1);
            assert!(matches!(d, Decision::Allow { .. }), "{target:?}: {d:?}");
        }
        let d = decide_key_request(k, &req("scope=admin&resource=path"), &index, t(0), 1);
        assert!(matches!(d, Decision::InsufficientScope { resource: false, .. }));
        // A typo never turns the check off: every request is refused.
        for q in ["resource=paths", "resource=path&resource=x", "resource="] {
            let d = decide_key_request(k, &req(q), &index, t(0), 1);
            assert_eq!(d.label(), "invalid_request", "{q}");
            assert_eq!(d.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn requirement_from_query() {
        assert_eq!(
            req("scope=a&scope=b%20c&audience=x&other=1"),
            Requirement {
                scopes: vec!["a".into(), "b".into(), "c".into()],
                audience: Some("x".into()),
                ..Default::default()
            }
        );
        assert_eq!(
            req("namespace=a&namespace=b&issuer=https%3A%2F%2Fauth.example.com%2Fx&namespace=&issuer="),
            Requirement {
                namespaces: vec!["a".into(), "b".into()],
                issuers: vec!["https://auth.example.com/x".into()],
                ..Default::default()
            }
        );
        assert_eq!(Requirement::from_query(None), Requirement::default());
    }
}
