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

//!
//! The files: [`snapshot`] (what the watched policies and Secrets make),
//! [`verify`] (a presented JWT, cached), [`issue`] (`POST /token`),
//! [`endpoints`] (discovery, JWKS and the token endpoint by issuer path),
//! [`feed`] (the watches), [`revoke`] (`POST /revoke` and the revoked
//! sessions in status).

mod endpoints;
mod exchange;
mod federation;
mod feed;
mod issue;
mod revoke;
mod snapshot;
mod verify;

pub use endpoints::by_issuer;
pub use feed::{PemsByKid, feed};
pub use issue::{issue, token};
pub use revoke::{prune_loop, revoke};
pub use snapshot::build_snapshot;
pub use verify::{cache_weight, decide_token, introspect_token};

use issue::{token_error, token_response};
#[cfg(test)]
use {crate::token::issuer::issuer_conflicts, feed::secret_keys};

use super::AppState;
use super::decision::{self, Decision, Identity, Invalid, Requirement};
use super::index::{Index, IndexedApiKey, KeyId};
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
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub const SIGN_OVERLAP_SECONDS: i64 = 5;
const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";
const JWKS_SUFFIX: &str = "/.well-known/jwks.json";
const TOKEN_SUFFIX: &str = "/token";
const REVOKE_SUFFIX: &str = "/revoke";

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
    /// Delegation and the session bound ([`crate::token::session`]).
    pub session: crate::token::session::SessionRules,
    /// `spec.trustedIssuers` ([`federation`]).
    pub trusted: Vec<federation::TrustedSource>,
    /// Revoked sessions, subjects and the policy's cutoff ([`revoke`]).
    pub revocations: crate::token::revocation::Revocations,
    /// `status.revokedSessions` and the `metadata.resourceVersion` it was
    /// read at (what a revocation write starts from).
    pub stored_revocations: BTreeMap<String, i64>,
    pub resource_version: Option<String>,
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
    pub fn admits(&self, owner: &IndexedApiKey) -> bool {
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

    /// A token minted for a role: one of its permissions must hold every
    /// scope and cover the path; a token without a role: its scopes.
    fn permits<'p>(
        &self,
        scopes: &[String],
        path: &dyn Fn() -> Result<&'p str, crate::token::path::PathRefused>,
    ) -> Result<(), decision::Denial> {
        if self.claims.authorization_details.is_empty() {
            return match scopes.iter().all(|s| self.has_scope(s)) {
                true => Ok(()),
                false => Err(decision::Denial::Scope),
            };
        }
        crate::token::permissions::permits(&self.claims.authorization_details, scopes, path)
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
    /// Sessions revoked through this replica (`sid` → kept until), in force
    /// before the watch brings them back from status.
    revoked_here: RwLock<HashMap<String, i64>>,
    /// Where revocations are written (absent in in-process tests: `/revoke`
    /// then answers `temporarily_unavailable`).
    store: std::sync::OnceLock<kube::Client>,
    /// The JWK Sets of trusted issuers ([`federation`]).
    external: federation::ExternalKeys,
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

#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;
