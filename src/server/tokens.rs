//! Tokens on the server: the TokenPolicies it knows (fed by watches of
//! TokenPolicies and their signing-key Secrets), `POST /token`, discovery and
//! JWKS per issuer, and the verification of presented JWTs on the
//! external-auth routes and `/introspect`.
//!
//! Decisions:
//! - The server signs with the private keys of the policy's Secret (it
//!   watches only Secrets labelled `latchkey.dev/token-policy`); it verifies
//!   with the public keys of the policy's status, so a token verifies as soon
//!   as the key that signed it is published, and until it is removed.
//! - A Secret is the policy's only by name (`<policy>-signing-keys`) and by a
//!   controller ownerReference with the policy's uid, as the controller
//!   writes it. Any other Secret, labelled or not, is ignored: creating or
//!   deleting one changes nothing.
//! - An issuer path belongs to one policy. When two or more policies claim
//!   the same path (the webhook refuses that; it can still happen when the
//!   webhook was bypassed, down under `failurePolicy: Ignore`, or two
//!   creates raced), none of them is served: no discovery, no JWKS, no
//!   `/token`, and their keys verify no token, until only one is left. Never
//!   "first wins": whoever sorts first is an attacker's choice.
//! - A token is accepted only when its `client_id` is a valid API key that
//!   the signing key's policy admits (same namespace, `tokenPolicyRef` or
//!   `apiKeySelector`): a token signed with a policy's key cannot speak for
//!   a key of another namespace or one the policy never admitted.
//! - It signs with the key the schedule says is active; if the Secret watch
//!   has not delivered that key yet, the previous key may sign for
//!   [`SIGN_OVERLAP_SECONDS`] more (covered by the schedule's leeway).
//! - Discovery (`<issuer>/.well-known/openid-configuration`), JWKS
//!   (`<issuer>/.well-known/jwks.json`) and the token endpoint
//!   (`<issuer>/token`, and `/token`) are found by the issuer URL's path,
//!   so any host that routes that path to latchkey serves them. The JWKS may
//!   be cached for half of `prePublish`, so a verifier's cache always holds
//!   a key before it signs.
//! - A verified token is cached by its SHA-256 until it expires, in a cache
//!   bounded in bytes with a share per `client_id` ([`super::token_cache`]);
//!   each use still checks that its key is published and that the API key
//!   that obtained it (`client_id`) is valid, so revoking that key refuses
//!   its tokens within a second.

use super::AppState;
use super::decision::{self, Decision, Identity, Invalid, Requirement};
use super::index::{Index, KeyId, Owner};
use super::token_cache::{self, ByteCache, Lookup};
use crate::crd::{SigningKeyRecord, TokenPolicy};
use crate::key;
use crate::meta::{PEM_SUFFIX, TOKEN_POLICY_LABEL};
use crate::token::claims::{
    self, AccessClaims, ClientKey, PolicyRules, TokenError, TokenRequest, VerifyingKey,
};
use crate::token::{keys, schedule};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use jsonwebtoken::EncodingKey;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub const SIGN_OVERLAP_SECONDS: i64 = 5;
const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";
const JWKS_SUFFIX: &str = "/.well-known/jwks.json";
const TOKEN_SUFFIX: &str = "/token";

/// A signing key the server holds.
pub struct Signer {
    pub kid: String,
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: EncodingKey,
    pub active_from: i64,
    pub retires_at: Option<i64>,
}

/// One TokenPolicy, as the server uses it.
pub struct PolicyEntry {
    pub namespace: String,
    pub name: String,
    pub rules: PolicyRules,
    pub selector: Option<LabelSelector>,
    /// Signers, oldest `activeFrom` first.
    pub signers: Vec<Signer>,
    pub jwks: String,
    pub jwks_max_age: u64,
    pub discovery: String,
    /// Other policies (`namespace/name`) that claim the same issuer path;
    /// while there is one, this policy issues and verifies nothing.
    pub conflicts: Vec<String>,
}

impl PolicyEntry {
    /// The key that signs at `now`.
    pub fn signer(&self, now: i64) -> Option<&Signer> {
        self.signers
            .iter()
            .filter(|s| s.active_from <= now)
            .filter(|s| s.retires_at.is_none_or(|r| now < r + SIGN_OVERLAP_SECONDS))
            .max_by_key(|s| s.active_from)
    }

    /// Whether the ApiKey of `owner` may exchange its key under this policy.
    pub fn admits(&self, owner: &Owner) -> bool {
        owner.namespace() == self.namespace
            && (owner.token_policy.as_deref() == Some(self.name.as_str())
                || self
                    .selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(s, &owner.labels)))
    }
}

/// Whether a label selector matches `labels` (matchLabels and
/// matchExpressions with In, NotIn, Exists, DoesNotExist; an empty selector
/// matches everything, an unknown operator nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &[(Box<str>, Box<str>)]) -> bool {
    let get = |k: &str| labels.iter().find(|(n, _)| &**n == k).map(|(_, v)| &**v);
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v.as_str()));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Everything derived from the watched TokenPolicies and Secrets.
#[derive(Default)]
pub struct Snapshot {
    by_name: HashMap<(String, String), Arc<PolicyEntry>>,
    by_issuer_path: HashMap<String, Arc<PolicyEntry>>,
    by_kid: HashMap<String, VerifyingKey>,
    /// The policy each published key belongs to.
    policy_by_kid: HashMap<String, Arc<PolicyEntry>>,
}

/// A verified token, as cached.
pub struct CachedToken {
    pub claims: AccessClaims,
    pub kid: String,
    pub client_id: Option<KeyId>,
    /// The identity headers of its allows, but `X-Auth-Namespace` (that
    /// comes from the index's entry for `client_id` on each use).
    pub identity: Identity,
    /// The snapshot version in which `kid` was last seen published.
    checked_version: AtomicU64,
}

impl decision::Offer for CachedToken {
    fn audience_ok(&self, audience: &str) -> bool {
        self.claims.aud.iter().any(|a| a == audience)
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.claims.scopes().any(|s| s == scope)
    }

    fn issuer(&self) -> Option<&str> {
        Some(&self.claims.iss)
    }
}

/// The server's token state.
pub struct Tokens {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped on every new snapshot: a cached token re-checks its `kid` only
    /// after a change, not on every request (a lock the cores would share).
    version: AtomicU64,
    /// Verified tokens by SHA-256, accounted per `client_id`.
    cache: ByteCache<Option<KeyId>, CachedToken>,
    synced: AtomicBool,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::with_cache(token_cache::Limits::default())
    }
}

pub use crate::crd::issuer_path;

/// A signing-key Secret as the server keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SigningSecret {
    /// The uid of its controller owner when that is a TokenPolicy.
    pub controller_uid: Option<String>,
    /// kid → PKCS#8 PEM.
    pub keys: PemsByKid,
}

/// The issuer path of every policy that can be served, with the policies
/// (`namespace/name`) that claim it.
fn claims_by_path(
    policies: &BTreeMap<(String, String), TokenPolicy>,
    issuer_base_url: &str,
) -> HashMap<String, Vec<String>> {
    let mut by_path: HashMap<String, Vec<String>> = HashMap::new();
    for ((ns, name), policy) in policies {
        if schedule::Settings::of(&policy.spec).is_ok() {
            by_path
                .entry(issuer_path(&policy.issuer(issuer_base_url)))
                .or_default()
                .push(format!("{ns}/{name}"));
        }
    }
    by_path
}

/// The other policies (`namespace/name`) whose issuer has the same path as
/// `policy`'s, among `policies` (what the controller reports as
/// `IssuerConflict`).
pub fn issuer_conflicts<'a>(
    policy: &TokenPolicy,
    policies: impl IntoIterator<Item = &'a TokenPolicy>,
    issuer_base_url: &str,
) -> Vec<String> {
    let path = issuer_path(&policy.issuer(issuer_base_url));
    let me = (
        policy.metadata.namespace.as_deref(),
        policy.metadata.name.as_deref(),
    );
    let mut others: Vec<String> = policies
        .into_iter()
        .filter(|p| (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()) != me)
        .filter(|p| schedule::Settings::of(&p.spec).is_ok())
        .filter(|p| issuer_path(&p.issuer(issuer_base_url)) == path)
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    others.sort();
    others
}

/// Builds the snapshot from the policies and their signing-key Secrets
/// (by namespace and Secret name).
pub fn build_snapshot(
    policies: &BTreeMap<(String, String), TokenPolicy>,
    secrets: &BTreeMap<(String, String), SigningSecret>,
    issuer_base_url: &str,
) -> Snapshot {
    let mut snap = Snapshot::default();
    let claims = claims_by_path(policies, issuer_base_url);
    for ((ns, name), policy) in policies {
        let Ok(settings) = schedule::Settings::of(&policy.spec) else {
            continue;
        };
        let issuer = policy.issuer(issuer_base_url);
        let path = issuer_path(&issuer);
        let me = format!("{ns}/{name}");
        let conflicts: Vec<String> = claims
            .get(&path)
            .into_iter()
            .flatten()
            .filter(|p| **p != me)
            .cloned()
            .collect();
        let status_keys: &[SigningKeyRecord] = policy
            .status
            .as_ref()
            .map(|s| s.keys.as_slice())
            .unwrap_or_default();
        // Only the Secret the controller writes: its name, owned by this policy's uid.
        let uid = policy.metadata.uid.as_deref().filter(|u| !u.is_empty());
        let private = secrets
            .get(&(ns.clone(), policy.signing_secret_name()))
            .filter(|s| uid.is_some() && s.controller_uid.as_deref() == uid)
            .map(|s| &s.keys);
        let mut signers = Vec::new();
        let mut verifying = Vec::new();
        for record in status_keys {
            let alg = keys::jwt_algorithm(record.algorithm);
            if let Ok(key) = keys::decoding_key(&record.kid, record.algorithm, &record.public_jwk) {
                verifying.push((
                    record.kid.clone(),
                    VerifyingKey {
                        algorithm: alg,
                        key,
                        issuer: issuer.clone(),
                        audiences: policy.spec.audiences.clone(),
                        max_ttl_seconds: record.max_ttl_seconds.max(settings.max_ttl.as_secs()),
                    },
                ));
            }
            let pem = private.and_then(|p| p.get(&record.kid));
            if let Some(Ok(key)) = pem.map(|pem| keys::encoding_key(&record.kid, record.algorithm, pem)) {
                signers.push(Signer {
                    kid: record.kid.clone(),
                    algorithm: alg,
                    key,
                    active_from: record.active_from.0.as_second(),
                    retires_at: record.retires_at.as_ref().map(|t| t.0.as_second()),
                });
            }
        }
        if !conflicts.is_empty() {
            // Neither signs nor verifies while the path is disputed.
            signers.clear();
            verifying.clear();
        }
        signers.sort_by_key(|s| s.active_from);
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{JWKS_SUFFIX}"),
            "token_endpoint": format!("{issuer}{TOKEN_SUFFIX}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "scopes_supported": policy.spec.allowed_scopes,
            "id_token_signing_alg_values_supported": [settings.algorithm.as_str()],
            "subject_types_supported": ["public"],
        });
        let entry = Arc::new(PolicyEntry {
            namespace: ns.clone(),
            name: name.clone(),
            rules: PolicyRules {
                issuer: issuer.clone(),
                audiences: policy.spec.audiences.clone(),
                allowed_scopes: policy.spec.allowed_scopes.iter().cloned().collect(),
                roles: policy.spec.roles.clone(),
                custom_claims: policy
                    .spec
                    .custom_claims
                    .iter()
                    .map(|c| (c.name.clone(), c.required))
                    .collect(),
                token_ttl_seconds: settings.token_ttl.as_secs(),
                max_ttl_seconds: settings.max_ttl.as_secs(),
            },
            selector: policy.spec.api_key_selector.clone(),
            signers,
            jwks: policy
                .status
                .as_ref()
                .map(crate::token::jwks::jwks_json)
                .unwrap_or_else(|| json!({ "keys": [] }).to_string()),
            jwks_max_age: (settings.pre_publish.as_secs() / 2).max(0) as u64,
            discovery: discovery.to_string(),
            conflicts,
        });
        if entry.conflicts.is_empty() {
            snap.by_issuer_path.insert(path, entry.clone());
        } else {
            tracing::warn!(
                namespace = %ns,
                name = %name,
                others = ?entry.conflicts,
                "TokenPolicies share an issuer path; none of them is served"
            );
        }
        for (kid, key) in verifying {
            snap.policy_by_kid.insert(kid.clone(), entry.clone());
            snap.by_kid.insert(kid, key);
        }
        snap.by_name.insert((ns.clone(), name.clone()), entry);
    }
    snap
}

impl Tokens {
    /// Token state whose verified-token cache holds at most `limits`.
    pub fn with_cache(limits: token_cache::Limits) -> Self {
        Tokens {
            snapshot: RwLock::default(),
            version: AtomicU64::new(0),
            cache: ByteCache::new(limits),
            synced: AtomicBool::new(false),
        }
    }

    /// The verified-token cache (sizes and counters, the sweeper).
    pub fn cache(&self) -> &ByteCache<Option<KeyId>, CachedToken> {
        &self.cache
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn replace(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("token snapshot lock") = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("token snapshot lock").clone()
    }

    /// The policy whose issuer URL has this path.
    pub fn by_issuer_path(&self, path: &str) -> Option<Arc<PolicyEntry>> {
        self.snapshot
            .read()
            .expect("token snapshot lock")
            .by_issuer_path
            .get(path)
            .cloned()
    }

    /// Whether the API key `client_id` is one the policy of `kid` admits
    /// (the index says whether it is still valid).
    pub fn client_admitted(&self, kid: &str, client_id: &KeyId, index: &Index, now: Timestamp) -> bool {
        let snapshot = self.snapshot.read().expect("token snapshot lock");
        snapshot
            .policy_by_kid
            .get(kid)
            .is_some_and(|policy| index.key_id_valid_where(client_id, now, |owner| policy.admits(owner)))
    }

    /// Verifies `token` (from the cache when seen before) and runs `f` on it
    /// (under the cache shard's read lock when cached).
    pub fn with_verified<R>(
        &self,
        token: &str,
        now: i64,
        f: impl FnOnce(&CachedToken) -> R,
    ) -> Result<R, claims::TokenInvalid> {
        let hash = key::sha256(token.as_bytes());
        let mut f = Some(f);
        let cached = self.cache.get(&hash, now, |cached| {
            let version = self.version.load(Ordering::Acquire);
            if cached.checked_version.load(Ordering::Relaxed) != version {
                let published = self
                    .snapshot
                    .read()
                    .expect("token snapshot lock")
                    .by_kid
                    .contains_key(&cached.kid);
                if !published {
                    return Err(claims::TokenInvalid::UnknownKey);
                }
                cached.checked_version.store(version, Ordering::Relaxed);
            }
            let f = f.take().expect("called once");
            Ok(f(cached))
        });
        let f = match cached {
            Lookup::Hit(result) => return result,
            // The cache's expiry is `exp + CLOCK_LEEWAY`, verification's too.
            Lookup::Expired => return Err(claims::TokenInvalid::Expired),
            Lookup::Miss => f.take().expect("not called on a miss"),
        };
        let version = self.version.load(Ordering::Acquire);
        let snapshot = self.snapshot();
        let (claims, kid) = claims::verify(token, |kid| snapshot.by_kid.get(kid), now)?;
        let cached = cache_entry(claims, kid, version);
        let result = f(&cached);
        let expires_at = cached.claims.exp + claims::CLOCK_LEEWAY;
        let weight = cache_weight(&cached);
        // Not cached (over the client's share, or too big) is fine: the
        // token was verified, the next use verifies it again.
        let _ = self
            .cache
            .insert(hash, cached.client_id, cached, expires_at, weight, now);
        Ok(result)
    }
}

/// What a cached token costs in memory: its inline size, its slot and map
/// bucket, and every heap allocation it owns (claims, header values,
/// extras), each with an allocator's overhead.
pub fn cache_weight(t: &CachedToken) -> usize {
    use token_cache::alloc;
    let string = |s: &String| alloc(s.capacity());
    let c = &t.claims;
    let mut heap = string(&c.iss)
        + string(&c.sub)
        + string(&c.jti)
        + string(&c.client_id)
        + string(&c.scope)
        + c.role.as_ref().map_or(0, string)
        + alloc(c.aud.capacity() * std::mem::size_of::<String>())
        + c.aud.iter().map(string).sum::<usize>()
        + string(&t.kid)
        + identity_bytes(&t.identity);
    heap += btree_bytes(c.custom.iter());
    heap + token_cache::entry_overhead::<Option<KeyId>, CachedToken>()
}

/// The heap of an allow's identity headers (one copy of each value, and
/// the `X-Auth-Claim-*` values' names and list).
fn identity_bytes(i: &Identity) -> usize {
    use token_cache::alloc;
    let header = |v: &HeaderValue| alloc(v.len());
    header(&i.subject)
        + header(&i.scopes)
        + header(&i.key_id)
        + header(&i.namespace)
        + header(&i.role)
        + header(&i.claims)
        + alloc(i.claim_values.capacity() * std::mem::size_of::<(Box<str>, HeaderValue)>())
        + i.claim_values
            .iter()
            .map(|(name, value)| alloc(name.len()) + header(value))
            .sum::<usize>()
}

/// The heap of a `BTreeMap<String, Value>` (about one node per 11 entries,
/// accounted per entry) and of what its entries own.
fn btree_bytes<'a>(entries: impl Iterator<Item = (&'a String, &'a serde_json::Value)>) -> usize {
    entries
        .map(|(k, v)| {
            std::mem::size_of::<(String, serde_json::Value)>()
                + 16
                + token_cache::alloc(k.capacity())
                + json_bytes(v)
        })
        .sum()
}

fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => token_cache::alloc(s.capacity()),
        Value::Array(a) => {
            token_cache::alloc(a.capacity() * std::mem::size_of::<Value>())
                + a.iter().map(json_bytes).sum::<usize>()
        }
        Value::Object(m) => btree_bytes(m.iter()),
    }
}

fn cache_entry(claims: AccessClaims, kid: String, version: u64) -> CachedToken {
    let header = super::index::header;
    let identity = Identity {
        subject: header(&claims.sub),
        scopes: header(&claims.scope),
        key_id: header(&claims.client_id),
        namespace: HeaderValue::from_static(""),
        role: header(claims.role.as_deref().unwrap_or_default()),
        claims: decision::claims_header(&claims.custom),
        claim_values: claims
            .custom
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().into(), header(value.as_str()?))))
            .collect(),
    };
    CachedToken {
        client_id: KeyId::try_from(claims.client_id.as_bytes()).ok(),
        identity,
        claims,
        kid,
        checked_version: AtomicU64::new(version),
    }
}

/// The external-auth decision for a presented JWT.
pub fn decide_token(
    token: &str,
    requirement: &Requirement,
    index: &Index,
    tokens: &Tokens,
    now: Timestamp,
    cache_seconds: u64,
) -> Decision {
    if !index.is_synced() || !tokens.is_synced() {
        return Decision::NotReady;
    }
    let now_s = now.as_second();
    let decided = tokens.with_verified(token, now_s, |t| {
        let Some(client_id) = t.client_id else {
            return Decision::Invalid(Invalid::ClientRevoked);
        };
        // The key that minted it: revoked, expired or gone refuses the token,
        // and so does a key the signing key's policy does not admit;
        // otherwise its ApiKey meters this use like a use of the key and says
        // where the credential comes from.
        let snapshot = tokens.snapshot.read().expect("token snapshot lock");
        let policy = snapshot.policy_by_kid.get(&t.kid);
        index
            .find_valid_with(&client_id, now, |entry| {
                if !policy.is_some_and(|p| p.admits(&entry.owner)) {
                    return Decision::Invalid(Invalid::Token(claims::TokenInvalid::Client));
                }
                let until = match entry.valid_until {
                    Some(key_end) => t.claims.exp.min(key_end.as_second()),
                    None => t.claims.exp,
                };
                decision::conclude(
                    requirement,
                    t,
                    &entry.owner,
                    Some(until),
                    now,
                    cache_seconds,
                    || t.identity.copied(),
                )
            })
            .unwrap_or(Decision::Invalid(Invalid::ClientRevoked))
    });
    decided.unwrap_or_else(|e| Decision::Invalid(Invalid::Token(e)))
}

/// RFC 7662 fields of an active token, or `None` when it is not active.
pub fn introspect_token(
    token: &str,
    index: &Index,
    tokens: &Tokens,
    now: Timestamp,
) -> Option<serde_json::Value> {
    tokens
        .with_verified(token, now.as_second(), |t| {
            if !t
                .client_id
                .is_some_and(|id| tokens.client_admitted(&t.kid, &id, index, now))
            {
                return None;
            }
            let c = &t.claims;
            let mut out = json!({
                "active": true,
                "token_type": "Bearer",
                "client_id": c.client_id,
                "sub": c.sub,
                "scope": c.scope,
                "aud": c.aud,
                "iss": c.iss,
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti,
            });
            if let Some(role) = &c.role {
                out["role"] = json!(role);
            }
            // Never over an RFC 7662 member: `active` stays a boolean (a
            // verified token has no reserved custom claim anyway).
            for (k, v) in &c.custom {
                if out.get(k).is_none() {
                    out[k] = v.clone();
                }
            }
            Some(out)
        })
        .ok()
        .flatten()
}

// ------------------------------------------------------------------ /token

fn token_error(err: &TokenError) -> Response {
    let status = match err {
        TokenError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        TokenError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        TokenError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = (
        status,
        axum::Json(json!({"error": err.code(), "error_description": err.description()})),
    )
        .into_response();
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if let TokenError::RateLimited { retry_after, limit } = err {
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        headers.insert(decision::X_RATELIMIT_LIMIT, HeaderValue::from(*limit));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"latchkey\""),
        );
    }
    resp
}

/// The API key a token request authenticates with: HTTP Basic (the key as
/// the password; the user name is ignored), `Authorization: Bearer`, or the
/// form's `client_secret`. More than one (a repeated `Authorization` header,
/// a header and `client_secret` both) is `invalid_request` (RFC 6749 §2.3:
/// one authentication method per request), never "first wins".
fn client_key(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, TokenError> {
    let more_than_one = || {
        TokenError::InvalidRequest(
            "authenticate once: one Authorization header or client_secret, not several".into(),
        )
    };
    let mut auths = headers.get_all(AUTHORIZATION).iter();
    let auth = auths.next();
    if auths.next().is_some() {
        return Err(more_than_one());
    }
    let auth = auth.and_then(|v| v.to_str().ok()).map(str::trim);
    let mut secrets = form_urlencoded::parse(body).filter(|(k, _)| k == "client_secret");
    let secret = secrets.next().map(|(_, v)| v.into_owned());
    if secrets.next().is_some() {
        return Err(more_than_one());
    }
    let from_header = match auth.and_then(|a| a.split_once(' ')) {
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("basic") => {
            let password = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|t| t.split_once(':').map(|(_, p)| p.to_owned()));
            // A Basic header that does not decode is no credential at all.
            Some(password.ok_or_else(|| {
                TokenError::InvalidClient("the Basic credentials do not decode as user:password".into())
            })?)
        }
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("bearer") => Some(value.trim().to_owned()),
        _ => None,
    };
    match (from_header, secret) {
        (Some(_), Some(_)) => Err(more_than_one()),
        (header, secret) => Ok(header.or(secret)),
    }
}

/// Issues a token; `fixed` is the policy of an `<issuer>/token` URL.
pub fn issue(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Result<serde_json::Value, TokenError> {
    let form = super::introspect::is_form(headers);
    if !form {
        return Err(TokenError::InvalidRequest(
            "send the request as application/x-www-form-urlencoded".into(),
        ));
    }
    let presented = client_key(headers, body)?.ok_or_else(|| {
        TokenError::InvalidClient(
            "authenticate with the API key as HTTP Basic password or Bearer token".into(),
        )
    })?;
    let request = TokenRequest::parse(body)?;
    if !state.index.is_synced() || !state.tokens.is_synced() {
        return Err(TokenError::TemporarilyUnavailable(
            "the server is still loading".into(),
        ));
    }
    let now = state.clock.now();
    let (entry, key_id) = decision::verify(&presented, &state.index, now)
        .map_err(|_| TokenError::InvalidClient("the API key is unknown, revoked or expired".into()))?;
    let owner = &entry.owner;
    // A use of the key like any other: its bucket, its lastUsedAt.
    decision::use_key(&owner.usage, now).map_err(|l| TokenError::RateLimited {
        retry_after: l.retry_after,
        limit: l.limit,
    })?;
    let snapshot = state.tokens.snapshot();
    let policy = match (fixed, &request.policy) {
        (Some(p), _) => Some(p),
        (None, Some(name)) => snapshot
            .by_name
            .get(&(owner.namespace().to_owned(), name.clone()))
            .cloned(),
        (None, None) => {
            let mut admitting = snapshot.by_name.values().filter(|p| p.admits(owner));
            match (admitting.next(), admitting.next()) {
                (Some(_), Some(_)) => {
                    return Err(TokenError::InvalidRequest(
                        "several TokenPolicies admit this API key; name one with policy=<name>".into(),
                    ));
                }
                (one, _) => one.cloned(),
            }
        }
    };
    let Some(policy) = policy.filter(|p| p.admits(owner)) else {
        return Err(TokenError::UnauthorizedClient(
            "this API key may not exchange tokens here: set its spec.tokenPolicyRef, or match a \
             TokenPolicy's spec.apiKeySelector in its namespace"
                .into(),
        ));
    };
    if !policy.conflicts.is_empty() {
        // Which other policy is for its status (IssuerConflict), not for a client.
        return Err(TokenError::UnauthorizedClient(
            "the TokenPolicy's issuer is also claimed by another TokenPolicy; no token is issued \
             until one of them changes spec.issuer (see the TokenPolicy's status)"
                .into(),
        ));
    }
    let now_s = now.as_second();
    let Some(signer) = policy.signer(now_s) else {
        return Err(TokenError::TemporarilyUnavailable(
            "the TokenPolicy has no signing key yet; retry in a few seconds".into(),
        ));
    };
    let scopes: Vec<&str> = owner.scopes().collect();
    let key_id = String::from_utf8_lossy(&key_id).into_owned();
    let client = ClientKey {
        key_id: &key_id,
        subject: owner.subject(),
        scopes: &scopes,
        audiences: &owner.audiences,
    };
    let jti = key::random_id(22);
    let claims = claims::build_claims(&policy.rules, &client, &request, now_s, jti)?;
    let token = jsonwebtoken::encode(
        &claims::header(signer.algorithm, &signer.kid),
        &claims,
        &signer.key,
    )
    .map_err(|_| TokenError::TemporarilyUnavailable("signing failed".into()))?;
    tracing::debug!(policy = %policy.name, kid = %signer.kid, client_id = %key_id, "issued a token");
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - now_s,
        "scope": claims.scope,
    }))
}

fn token_response(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Response {
    let result = issue(state, headers, body, fixed);
    state
        .metrics
        .observe_token(result.as_ref().err().map(TokenError::code));
    match result {
        Ok(value) => {
            let mut resp = axum::Json(value).into_response();
            let headers = resp.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(err) => token_error(&err),
    }
}

/// `POST /token`.
pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    token_response(&state, &headers, &body, None)
}

/// Discovery, JWKS and the token endpoint under each issuer's path.
pub async fn by_issuer(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let lookup = |suffix: &str| {
        path.strip_suffix(suffix)
            .and_then(|prefix| state.tokens.by_issuer_path(prefix.trim_end_matches('/')))
    };
    let json_response = |body: String, max_age: u64| {
        let cache = if max_age == 0 {
            HeaderValue::from_static("no-cache")
        } else {
            super::index::header(&format!("public, max-age={max_age}"))
        };
        (
            StatusCode::OK,
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, cache),
            ],
            body,
        )
            .into_response()
    };
    if method == Method::GET || method == Method::HEAD {
        if let Some(p) = lookup(DISCOVERY_SUFFIX) {
            return json_response(p.discovery.clone(), p.jwks_max_age);
        }
        if let Some(p) = lookup(JWKS_SUFFIX) {
            return json_response(p.jwks.clone(), p.jwks_max_age);
        }
    }
    if let Some(p) = lookup(TOKEN_SUFFIX) {
        if method != Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, [("allow", "POST")]).into_response();
        }
        let headers = request.headers().clone();
        let Ok(body) = axum::body::to_bytes(request.into_body(), 64 * 1024).await else {
            return token_error(&TokenError::InvalidRequest(
                "the request body is too large".into(),
            ));
        };
        return token_response(&state, &headers, &body, Some(p));
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

// ------------------------------------------------------------------ feeding

#[allow(clippy::large_enum_variant)] // one event at a time; boxing buys nothing
enum Change {
    Policy(Result<watcher::Event<TokenPolicy>, watcher::Error>),
    Secret(Result<watcher::Event<Secret>, watcher::Error>),
}

/// (namespace, Secret name).
type SecretKey = (String, String);
/// kid → PKCS#8 PEM.
pub type PemsByKid = BTreeMap<String, Vec<u8>>;

/// A watched Secret by namespace and name, with its controller owner's uid
/// (when a TokenPolicy) and its private keys. Which policy it serves is
/// decided in [`build_snapshot`] by name and that uid, never by its label.
fn secret_keys(secret: &Secret) -> Option<(SecretKey, SigningSecret)> {
    let ns = secret.namespace()?;
    let name = secret.metadata.name.clone()?;
    let controller_uid = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "TokenPolicy" && o.api_version.starts_with("latchkey.dev/"))
        .map(|o| o.uid.clone());
    let keys = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_suffix(PEM_SUFFIX)?.to_owned(), v.0.clone())))
        .collect();
    Some(((ns, name), SigningSecret { controller_uid, keys }))
}

/// Keeps `tokens` up to date from watches of TokenPolicies and their
/// signing-key Secrets until the streams end.
pub async fn feed(
    policies: Api<TokenPolicy>,
    secrets: Api<Secret>,
    tokens: Arc<Tokens>,
    issuer_base_url: String,
) {
    let policy_events = watcher(policies, watcher::Config::default())
        .default_backoff()
        .map(Change::Policy);
    let secret_events = watcher(secrets, watcher::Config::default().labels(TOKEN_POLICY_LABEL))
        .default_backoff()
        .map(Change::Secret);
    let mut events = futures::stream::select(policy_events.boxed(), secret_events.boxed());
    let mut policy_store: BTreeMap<(String, String), TokenPolicy> = BTreeMap::new();
    let mut secret_store: BTreeMap<SecretKey, SigningSecret> = BTreeMap::new();
    let (mut policy_init, mut secret_init) = (None::<BTreeMap<_, _>>, None::<BTreeMap<_, _>>);
    let (mut policies_done, mut secrets_done) = (false, false);
    let key_of = |p: &TokenPolicy| (p.namespace().unwrap_or_default(), p.name_any());
    while let Some(change) = events.next().await {
        let mut changed = true;
        match change {
            Change::Policy(Ok(event)) => match event {
                watcher::Event::Init => {
                    policy_init = Some(BTreeMap::new());
                    changed = false;
                }
                watcher::Event::InitApply(p) => {
                    if let Some(init) = policy_init.as_mut() {
                        init.insert(key_of(&p), p);
                    }
                    changed = false;
                }
                watcher::Event::InitDone => {
                    policy_store = policy_init.take().unwrap_or_default();
                    policies_done = true;
                }
                watcher::Event::Apply(p) => {
                    policy_store.insert(key_of(&p), p);
                }
                watcher::Event::Delete(p) => {
                    policy_store.remove(&key_of(&p));
                }
            },
            Change::Secret(Ok(event)) => match event {
                watcher::Event::Init => {
                    secret_init = Some(BTreeMap::new());
                    changed = false;
                }
                watcher::Event::InitApply(s) => {
                    if let (Some(init), Some((k, v))) = (secret_init.as_mut(), secret_keys(&s)) {
                        init.insert(k, v);
                    }
                    changed = false;
                }
                watcher::Event::InitDone => {
                    secret_store = secret_init.take().unwrap_or_default();
                    secrets_done = true;
                }
                watcher::Event::Apply(s) => {
                    if let Some((k, v)) = secret_keys(&s) {
                        secret_store.insert(k, v);
                    }
                }
                watcher::Event::Delete(s) => {
                    if let Some((k, _)) = secret_keys(&s) {
                        secret_store.remove(&k);
                    }
                }
            },
            Change::Policy(Err(err)) => {
                tracing::warn!(error = %err, "TokenPolicy watch failed; retrying");
                changed = false;
            }
            Change::Secret(Err(err)) => {
                tracing::warn!(error = %err, "signing-key Secret watch failed; retrying");
                changed = false;
            }
        }
        if changed && policies_done && secrets_done {
            tokens.replace(build_snapshot(&policy_store, &secret_store, &issuer_base_url));
            if !tokens.is_synced() {
                tracing::info!(policies = policy_store.len(), "TokenPolicies loaded");
                tokens.mark_synced();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(Box<str>, Box<str>)> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some([("team".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["login".into(), "api".into()]),
            }]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("team", "web"), ("tier", "login")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("team", "web"), ("tier", "db")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("tier", "login")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let not_exists = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "legacy".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&not_exists, &labels(&[("team", "web")])));
        assert!(!selector_matches(&not_exists, &labels(&[("legacy", "1")])));
    }

    use crate::fixtures::{policy_with_key, signing_secret as owned_secret};

    #[test]
    fn a_cached_token_is_refused_once_its_key_is_removed() {
        use crate::crd::SigningAlgorithm;
        let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy.clone())]);
        let secrets = owned_secret(&policy, &key);
        let base = "http://127.0.0.1:8080";
        let snapshot = build_snapshot(&policies, &secrets, base);
        let entry = snapshot.by_name.values().next().unwrap().clone();
        assert_eq!(entry.rules.issuer, "http://127.0.0.1:8080/issuers/shop/login");
        assert!(snapshot.by_issuer_path.contains_key("/issuers/shop/login"));
        let now = 1_800_000_000;
        let signer = entry.signer(now).expect("the active key signs");
        let claims = AccessClaims {
            iss: entry.rules.issuer.clone(),
            sub: "svc".into(),
            aud: vec!["orders".into()],
            exp: now + 60,
            iat: now,
            nbf: None,
            jti: "j1".into(),
            client_id: "AbCdEfGhIjKl".into(),
            scope: "orders:read".into(),
            role: None,
            custom: BTreeMap::from([("tenant".to_string(), serde_json::json!("acme"))]),
        };
        let token = jsonwebtoken::encode(
            &claims::header(signer.algorithm, &signer.kid),
            &claims,
            &signer.key,
        )
        .unwrap();
        let tokens = Tokens::default();
        tokens.replace(snapshot);
        let seen = tokens
            .with_verified(&token, now, |t| t.identity.copied())
            .unwrap();
        assert_eq!(seen.claims, r#"{"tenant":"acme"}"#);
        assert_eq!(&*seen.claim_values[0].0, "tenant");
        assert_eq!(seen.claim_values[0].1, "acme");
        assert_eq!(seen.role, "");
        // Cached now: still valid, then expired after exp + leeway.
        assert!(tokens.with_verified(&token, now + 10, |_| ()).is_ok());
        assert_eq!(
            tokens
                .with_verified(&token, now + 60 + claims::CLOCK_LEEWAY + 1, |_| ())
                .err(),
            Some(claims::TokenInvalid::Expired)
        );
        // The key retired and removed from status: the cached token is refused too.
        let mut removed = policy;
        removed.status.as_mut().unwrap().keys.clear();
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), removed)]);
        tokens.replace(build_snapshot(&policies, &secrets, base));
        assert_eq!(
            tokens.with_verified(&token, now + 10, |_| ()).err(),
            Some(claims::TokenInvalid::UnknownKey)
        );
    }

    fn at(policy: &TokenPolicy, ns: &str, name: &str, issuer: Option<String>) -> TokenPolicy {
        let mut p = policy.clone();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{ns}-{name}"));
        p.spec.issuer = issuer;
        p
    }

    const BASE: &str = "http://127.0.0.1:8080";

    #[test]
    fn a_disputed_issuer_path_serves_neither_policy() {
        use crate::crd::SigningAlgorithm;
        let (template, victim_key) = policy_with_key(SigningAlgorithm::ES256);
        let (_, attacker_key) = policy_with_key(SigningAlgorithm::ES256);
        let victim = at(&template, "sec-a", "login", None);
        let mut attacker = at(
            &template,
            "aaa-x",
            "evil",
            Some(format!("{BASE}/issuers/sec-a/login")),
        );
        attacker.status.as_mut().unwrap().keys[0].kid = attacker_key.kid.clone();
        attacker.status.as_mut().unwrap().keys[0].public_jwk = keys::public_jwk(
            &attacker_key.kid,
            SigningAlgorithm::ES256,
            attacker_key.pem.as_bytes(),
        )
        .unwrap();
        let mut secrets = owned_secret(&victim, &victim_key);
        secrets.extend(owned_secret(&attacker, &attacker_key));
        let policies = BTreeMap::from([
            (("aaa-x".to_string(), "evil".to_string()), attacker.clone()),
            (("sec-a".to_string(), "login".to_string()), victim.clone()),
        ]);
        let snap = build_snapshot(&policies, &secrets, BASE);
        // "aaa-x" sorts first: before, it took the victim's path.
        assert!(
            snap.by_issuer_path.is_empty(),
            "nobody serves /issuers/sec-a/login"
        );
        assert!(snap.by_kid.is_empty(), "neither policy's keys verify a token");
        let v = &snap.by_name[&("sec-a".to_string(), "login".to_string())];
        let a = &snap.by_name[&("aaa-x".to_string(), "evil".to_string())];
        assert_eq!(v.conflicts, vec!["aaa-x/evil"]);
        assert_eq!(a.conflicts, vec!["sec-a/login"]);
        assert!(v.signer(1_800_000_000).is_none() && a.signer(1_800_000_000).is_none());
        assert_eq!(
            issuer_conflicts(&victim, policies.values(), BASE),
            vec!["aaa-x/evil"]
        );

        // Two explicit issuers with the same path on different hosts: the same dispute.
        let one = at(&template, "t1", "p", Some("https://a.example/shared".into()));
        let two = at(&template, "t2", "p", Some("https://b.example/shared".into()));
        let policies = BTreeMap::from([
            (("t1".to_string(), "p".to_string()), one.clone()),
            (("t2".to_string(), "p".to_string()), two),
        ]);
        let snap = build_snapshot(&policies, &owned_secret(&one, &victim_key), BASE);
        assert!(snap.by_issuer_path.is_empty() && snap.by_kid.is_empty());

        // The squatter gone: the victim is served again, with its own key.
        let policies = BTreeMap::from([(("sec-a".to_string(), "login".to_string()), victim.clone())]);
        let snap = build_snapshot(&policies, &owned_secret(&victim, &victim_key), BASE);
        let served = &snap.by_issuer_path["/issuers/sec-a/login"];
        assert!(served.conflicts.is_empty());
        assert_eq!(served.signer(1_800_000_000).unwrap().kid, victim_key.kid);
        assert!(issuer_conflicts(&victim, policies.values(), BASE).is_empty());
    }

    #[test]
    fn only_the_named_secret_owned_by_the_policy_uid_signs() {
        use crate::crd::SigningAlgorithm;
        let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
        let (_, rogue) = policy_with_key(SigningAlgorithm::ES256);
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy.clone())]);
        let now = 1_800_000_000;
        let signer_kid = |secrets: &BTreeMap<(String, String), SigningSecret>| {
            let snap = build_snapshot(&policies, secrets, BASE);
            snap.by_name[&("shop".to_string(), "login".to_string())]
                .signer(now)
                .map(|s| s.kid.clone())
        };
        // The rogue Secret carries a key under the policy's kid.
        let rogue_keys = BTreeMap::from([(key.kid.clone(), rogue.pem.clone().into_bytes())]);
        let mut secrets = owned_secret(&policy, &key);
        // Another name (the label alone), unowned or owned: ignored.
        for uid in [None, policy.metadata.uid.clone()] {
            secrets.insert(
                ("shop".into(), "rogue".into()),
                SigningSecret {
                    controller_uid: uid,
                    keys: rogue_keys.clone(),
                },
            );
            let snap = build_snapshot(&policies, &secrets, BASE);
            let entry = &snap.by_name[&("shop".to_string(), "login".to_string())];
            let signer = entry.signer(now).expect("the real key signs");
            // It is the real key: its token verifies with the published key.
            let token = jsonwebtoken::encode(
                &claims::header(signer.algorithm, &signer.kid),
                &json!({"iss": entry.rules.issuer, "sub": "s", "aud": ["orders"], "exp": now + 60,
                        "iat": now, "jti": "j", "client_id": "AbCdEfGhIjKl", "scope": ""}),
                &signer.key,
            )
            .unwrap();
            assert!(claims::verify(&token, |k| snap.by_kid.get(k), now).is_ok());
        }
        // Its deletion changes nothing.
        secrets.remove(&("shop".to_string(), "rogue".to_string()));
        assert_eq!(signer_kid(&secrets), Some(key.kid.clone()));
        // The right name without the policy's uid (unowned, another owner): no signer.
        for uid in [None, Some("uid-someone-else".to_string())] {
            let wrong = BTreeMap::from([(
                ("shop".to_string(), policy.signing_secret_name()),
                SigningSecret {
                    controller_uid: uid,
                    keys: rogue_keys.clone(),
                },
            )]);
            assert_eq!(signer_kid(&wrong), None);
        }
    }

    #[test]
    fn a_secret_s_controller_must_be_a_token_policy() {
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("shop".into());
        secret.metadata.name = Some("login-signing-keys".into());
        let owner =
            |kind: &str, controller: bool| k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "latchkey.dev/v1alpha1".into(),
                kind: kind.into(),
                name: "login".into(),
                uid: "u1".into(),
                controller: Some(controller),
                ..Default::default()
            };
        secret.metadata.owner_references = Some(vec![owner("TokenPolicy", false)]);
        assert_eq!(secret_keys(&secret).unwrap().1.controller_uid, None);
        secret.metadata.owner_references = Some(vec![owner("ApiKey", true)]);
        assert_eq!(secret_keys(&secret).unwrap().1.controller_uid, None);
        secret.metadata.owner_references = Some(vec![owner("TokenPolicy", true)]);
        let ((ns, name), s) = secret_keys(&secret).unwrap();
        assert_eq!(
            (ns.as_str(), name.as_str(), s.controller_uid.as_deref()),
            ("shop", "login-signing-keys", Some("u1"))
        );
    }

    #[test]
    fn a_token_speaks_only_for_a_key_its_policy_admits() {
        use crate::crd::{ApiKeySpec, ApiKeyStatus, KeyRecord, SigningAlgorithm, TokenPolicyRef};
        use crate::key::ApiKeyValue;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy.clone())]);
        let tokens = Tokens::default();
        tokens.replace(build_snapshot(&policies, &owned_secret(&policy, &key), BASE));
        tokens.mark_synced();
        let api_key = |ns: &str, name: &str, policy_ref: Option<&str>| {
            let value = ApiKeyValue::generate();
            let mut ak = crate::crd::ApiKey::new(
                name,
                ApiKeySpec {
                    scopes: vec!["orders:read".into()],
                    token_policy_ref: policy_ref.map(|n| TokenPolicyRef { name: n.into() }),
                    ..Default::default()
                },
            );
            ak.metadata.namespace = Some(ns.into());
            ak.status = Some(ApiKeyStatus {
                current_key: Some(KeyRecord {
                    id: value.key_id().into(),
                    sha256: value.sha256_hex(),
                    issued_at: Time(Timestamp::UNIX_EPOCH),
                    valid_until: None,
                }),
                ..Default::default()
            });
            (ak, value.key_id().to_owned())
        };
        let index = Index::default();
        let mut rebuild = super::super::index::Rebuild::default();
        let (admitted, admitted_id) = api_key("shop", "frontend", Some("login"));
        let (other_ns, other_ns_id) = api_key("elsewhere", "frontend", Some("login"));
        let (never, never_id) = api_key("shop", "stranger", None);
        for ak in [&admitted, &other_ns, &never] {
            rebuild.apply(ak, None);
        }
        index.replace(rebuild);
        let snap = tokens.snapshot();
        let entry = snap.by_name[&("shop".to_string(), "login".to_string())].clone();
        let signer = entry.signer(1_800_000_000).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let forge = |client_id: &str| {
            let claims = AccessClaims {
                iss: entry.rules.issuer.clone(),
                sub: "svc".into(),
                aud: vec!["orders".into()],
                exp: now.as_second() + 60,
                iat: now.as_second(),
                nbf: None,
                jti: client_id.into(),
                client_id: client_id.into(),
                scope: "orders:read".into(),
                role: None,
                custom: BTreeMap::new(),
            };
            jsonwebtoken::encode(
                &claims::header(signer.algorithm, &signer.kid),
                &claims,
                &signer.key,
            )
            .unwrap()
        };
        let req = Requirement::default();
        let decide = |t: &str| decide_token(t, &req, &index, &tokens, now, 5);
        assert!(matches!(decide(&forge(&admitted_id)), Decision::Allow { .. }));
        for id in [&other_ns_id, &never_id] {
            assert!(
                matches!(
                    decide(&forge(id)),
                    Decision::Invalid(Invalid::Token(claims::TokenInvalid::Client))
                ),
                "{id}"
            );
            assert_eq!(introspect_token(&forge(id), &index, &tokens, now), None);
        }
        let info = introspect_token(&forge(&admitted_id), &index, &tokens, now).unwrap();
        assert_eq!(info["active"], json!(true));
    }

    /// A policy `shop/login` with its key, an ApiKey `shop/frontend` that
    /// names it (rate-limited when `limit` is set), and the server's state.
    fn token_state(
        limit: Option<u32>,
    ) -> (super::AppState, Arc<PolicyEntry>, String, crate::key::ApiKeyValue) {
        use crate::crd::{
            ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord, RateLimit, SigningAlgorithm, TokenPolicyRef,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
        let secrets = owned_secret(&policy, &key);
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy)]);
        let snapshot = build_snapshot(&policies, &secrets, "http://127.0.0.1:8080");
        let entry = snapshot.by_name.values().next().unwrap().clone();
        let issuer = entry.rules.issuer.clone();
        let tokens = Tokens::default();
        tokens.replace(snapshot);
        tokens.mark_synced();
        let api_key = crate::key::ApiKeyValue::generate();
        let mut ak = ApiKey::new(
            "frontend",
            ApiKeySpec {
                subject: Some("login-service".into()),
                scopes: vec!["orders:read".into()],
                token_policy_ref: Some(TokenPolicyRef { name: "login".into() }),
                rate_limit: limit.map(|n| RateLimit {
                    requests_per_second: n,
                    burst: Some(n),
                }),
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some("shop".into());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(KeyRecord {
                id: api_key.key_id().into(),
                sha256: api_key.sha256_hex(),
                issued_at: Time(Timestamp::UNIX_EPOCH),
                valid_until: None,
            }),
            ..Default::default()
        });
        let index = Index::default();
        let mut rebuild = super::super::index::Rebuild::default();
        rebuild.apply(&ak, None);
        index.replace(rebuild);
        let state = super::AppState {
            index: Arc::new(index),
            tokens: Arc::new(tokens),
            clock: Arc::new(crate::clock::ManualClock::new(
                Timestamp::from_second(NOW).unwrap(),
            )),
            options: super::super::Options {
                http_addr: "127.0.0.1:0".parse().unwrap(),
                namespace: None,
                api_key_header: None,
                decision_cache_seconds: 5,
                last_used_flush: std::time::Duration::from_secs(60),
                issuer_base_url: "http://127.0.0.1:8080".into(),
                claim_headers: vec!["tenant".parse().unwrap()],
                limits: Default::default(),
                require_grants: false,
            },
            metrics: super::super::metrics::Metrics::new(),
        };
        (state, entry, issuer, api_key)
    }

    const NOW: i64 = 1_800_000_000;

    fn sign(policy: &PolicyEntry, issuer: &str, client_id: &str) -> String {
        let signer = policy.signer(NOW).expect("the active key signs");
        let claims = AccessClaims {
            iss: issuer.into(),
            sub: "login-service".into(),
            aud: vec!["orders".into()],
            exp: NOW + 60,
            iat: NOW,
            nbf: None,
            jti: key::random_id(22),
            client_id: client_id.into(),
            scope: "orders:read".into(),
            role: Some("reader".into()),
            custom: BTreeMap::from([("tenant".to_string(), serde_json::json!("acme"))]),
        };
        jsonwebtoken::encode(
            &claims::header(signer.algorithm, &signer.kid),
            &claims,
            &signer.key,
        )
        .unwrap()
    }

    fn decide_at(state: &super::AppState, token: &str, query: &str) -> Decision {
        decide_token(
            token,
            &Requirement::from_query(Some(query)),
            &state.index,
            &state.tokens,
            Timestamp::from_second(NOW).unwrap(),
            state.options.decision_cache_seconds,
        )
    }

    #[test]
    fn a_token_allow_names_the_namespace_of_its_key_and_every_identity_header() {
        let (state, signer, issuer, api_key) = token_state(None);
        let token = sign(&signer, &issuer, api_key.key_id());
        let d = decide_at(&state, &token, "scope=orders:read");
        assert!(matches!(d, Decision::Allow { max_age: 5, .. }), "{d:?}");
        let resp = d.into_response_with(&state.options.claim_headers);
        let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(h("x-auth-subject").as_deref(), Some("login-service"));
        assert_eq!(h("x-auth-namespace").as_deref(), Some("shop"));
        assert_eq!(h("x-auth-key-id").as_deref(), Some(api_key.key_id()));
        assert_eq!(h("x-auth-role").as_deref(), Some("reader"));
        assert_eq!(h("x-auth-claims").as_deref(), Some(r#"{"tenant":"acme"}"#));
        assert_eq!(h("x-auth-claim-tenant").as_deref(), Some("acme"));
        // A use of the key: lastUsedAt moves.
        let owner = state.index.owners().pop().unwrap();
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), NOW);
    }

    #[test]
    fn a_token_meets_namespace_and_issuer_requirements_by_its_key_and_iss() {
        let (state, signer, issuer, api_key) = token_state(None);
        let token = sign(&signer, &issuer, api_key.key_id());
        let q = |s: &str| decide_at(&state, &token, s).label();
        assert_eq!(q("namespace=shop"), "allow");
        assert_eq!(q("namespace=other&namespace=shop"), "allow");
        assert_eq!(q("namespace=other"), "namespace");
        let issuer_q = format!(
            "issuer={}",
            form_urlencoded::byte_serialize(issuer.as_bytes()).collect::<String>()
        );
        assert_eq!(q(&issuer_q), "allow");
        assert_eq!(q(&format!("{issuer_q}&namespace=shop")), "allow");
        assert_eq!(q("issuer=https://elsewhere.example/x"), "issuer");
        assert_eq!(q(&format!("{issuer_q}x")), "issuer", "exact iss only");
    }

    #[test]
    fn a_rate_limited_keys_tokens_take_from_its_bucket_and_are_never_cached() {
        let (state, signer, issuer, api_key) = token_state(Some(1));
        let token = sign(&signer, &issuer, api_key.key_id());
        let d = decide_at(&state, &token, "");
        assert!(matches!(d, Decision::Allow { max_age: 0, .. }), "{d:?}");
        assert_eq!(d.into_response().headers()["cache-control"], "no-store");
        // Another token of the same key shares the bucket, and so does the key.
        let other = sign(&signer, &issuer, api_key.key_id());
        assert!(matches!(
            decide_at(&state, &other, ""),
            Decision::RateLimited { limit: 1, .. }
        ));
        let by_key = decision::decide(
            Some(api_key.expose()),
            &Requirement::default(),
            &state.index,
            Timestamp::from_second(NOW).unwrap(),
            5,
        );
        assert!(matches!(by_key, Decision::RateLimited { .. }), "{by_key:?}");
    }

    fn token_request(
        state: &super::AppState,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> Result<serde_json::Value, TokenError> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        issue(state, &h, body.as_bytes(), None)
    }

    fn basic(key: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("client:{key}"))
        )
    }

    #[test]
    fn token_requests_take_from_the_keys_bucket_and_record_the_use() {
        let (state, _, _, api_key) = token_state(Some(1));
        let auth = [("authorization", basic(api_key.expose()))];
        let owner = state.index.owners().pop().unwrap();
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), 0);
        let first = token_request(&state, &auth, "grant_type=client_credentials");
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(
            owner.usage.last_used.load(Ordering::Relaxed),
            NOW,
            "a token issued is a use"
        );
        let err = token_request(&state, &auth, "grant_type=client_credentials").unwrap_err();
        assert_eq!(
            err,
            TokenError::RateLimited {
                retry_after: 1,
                limit: 1
            }
        );
        let resp = token_error(&err);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["x-ratelimit-limit"], "1");
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }

    #[test]
    fn a_token_request_authenticates_once() {
        let (state, _, _, api_key) = token_state(None);
        let key = api_key.expose().to_owned();
        let ok = token_request(
            &state,
            &[("authorization", basic(&key))],
            "grant_type=client_credentials",
        );
        assert!(ok.is_ok(), "{ok:?}");
        for (headers, body) in [
            (
                vec![("authorization", basic(&key)), ("authorization", basic(&key))],
                "grant_type=client_credentials".to_owned(),
            ),
            (
                vec![
                    ("authorization", format!("Bearer {key}")),
                    ("authorization", basic("x")),
                ],
                "grant_type=client_credentials".to_owned(),
            ),
            (
                vec![("authorization", basic(&key))],
                format!("grant_type=client_credentials&client_secret={key}"),
            ),
            (
                vec![],
                format!("grant_type=client_credentials&client_secret={key}&client_secret={key}"),
            ),
        ] {
            let err = token_request(&state, &headers, &body).unwrap_err();
            assert_eq!(err.code(), "invalid_request", "{headers:?} {body}");
        }
    }

    #[test]
    fn a_flood_of_big_tokens_from_one_client_stays_in_its_share_and_spares_the_others() {
        use crate::crd::SigningAlgorithm;
        let (policy, key) = policy_with_key(SigningAlgorithm::ES256);
        let secrets = owned_secret(&policy, &key);
        let policies = BTreeMap::from([(("shop".to_string(), "login".to_string()), policy)]);
        let snapshot = build_snapshot(&policies, &secrets, "http://127.0.0.1:8080");
        let entry = snapshot.by_name.values().next().unwrap().clone();
        let signer = entry.signer(0).unwrap();
        let now = 1_800_000_000;
        let sign = |client: &str, jti: String, big: bool| {
            let mut custom = BTreeMap::new();
            if big {
                for i in 0..20 {
                    custom.insert(format!("c{i}"), serde_json::json!("x".repeat(250)));
                }
            }
            let claims = AccessClaims {
                iss: entry.rules.issuer.clone(),
                sub: format!("svc-{client}"),
                aud: vec!["orders".into()],
                exp: now + 600,
                iat: now,
                nbf: None,
                jti,
                client_id: client.into(),
                scope: "orders:read".into(),
                role: None,
                custom,
            };
            jsonwebtoken::encode(
                &claims::header(signer.algorithm, &signer.kid),
                &claims,
                &signer.key,
            )
            .unwrap()
        };
        let limits = token_cache::Limits::new(1 << 20);
        let tokens = Tokens::with_cache(limits);
        tokens.replace(snapshot);
        let victim: Vec<String> = (0..20)
            .map(|i| sign("VictimVictim", format!("v{i}"), false))
            .collect();
        for t in &victim {
            assert!(tokens.with_verified(t, now, |_| ()).is_ok());
        }
        let (victim_entries, _) = tokens.cache().usage();
        assert_eq!(victim_entries, 20);
        // 2,000 distinct big tokens of one client: every one verifies and
        // decides correctly, the cache holds at most that client's share.
        for i in 0..2_000 {
            let t = sign("FlooderFlood", format!("f{i}"), true);
            assert!(t.len() > 5_000);
            let sub = tokens.with_verified(&t, now, |c| c.claims.sub.clone()).unwrap();
            assert_eq!(sub, "svc-FlooderFlood");
        }
        let flooder = KeyId::try_from(&b"FlooderFlood"[..]).ok();
        assert!(tokens.cache().client_bytes(&flooder) <= limits.per_client_bytes);
        assert!(tokens.cache().client_bytes(&flooder) > limits.per_client_bytes / 2);
        let (entries, bytes) = tokens.cache().usage();
        assert!(bytes <= limits.per_client_bytes + 20 * 2_000, "{bytes}");
        // A big token weighs what it holds: more than its 5,000 claim bytes.
        let per_entry = tokens.cache().client_bytes(&flooder) / (entries - 20);
        assert!(per_entry > 5_000, "{per_entry}");
        // The other client's tokens are all still cached (hits, no verification:
        // with the key removed a cached token answers UnknownKey only after a
        // new snapshot, so check by the cache's own lookup).
        for t in &victim {
            let hash = crate::key::sha256(t.as_bytes());
            assert!(matches!(
                tokens.cache().get(&hash, now, |c| c.claims.sub.clone()),
                Lookup::Hit(s) if s == "svc-VictimVictim"
            ));
        }
    }

    #[test]
    fn issuer_paths() {
        assert_eq!(issuer_path("http://127.0.0.1:8080/issuers/a/b"), "/issuers/a/b");
        assert_eq!(issuer_path("https://auth.example.com"), "");
        assert_eq!(issuer_path("https://auth.example.com/"), "");
    }
}
