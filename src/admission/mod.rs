//! Admission rules for what the CRDs' CEL rules cannot say: pure functions
//! of an [`AdmissionRequest`](review::AdmissionRequest) and the [`Facts`] the
//! handler looked up (another object in the cluster), unit-tested and
//! fuzzed without a cluster. The TLS server and the lookups live in
//! [`crate::webhook`].
//!
//! Flow: [`review::parse`] → [`lookups`] (what to read from the API server)
//! → [`decide`] → [`review::render`].
//!
//! The rules:
//! - **ApiKey, CREATE**: the Secret it names (`spec.secretName`, default its
//!   own name) must not already exist under another owner. On UPDATE the
//!   name cannot change (CEL), and a conflict is the controller's
//!   `SecretConflict` condition, so that an unrelated edit is never blocked.
//! - **ApiKey scopes**: with `spec.tokenPolicyRef`, every scope must be in
//!   the policy's `allowedScopes` when that policy exists. A policy that
//!   does not exist (yet) is allowed, with a warning: GitOps tools apply in
//!   any order; the ApiKey then shows `Ready=False` reason
//!   `TokenPolicyMissing` until the policy arrives. On UPDATE only scopes
//!   that the edit adds are checked, so that a policy narrowed later does
//!   not block unrelated edits of old keys.
//! - **TokenPolicy, CREATE and UPDATE**: `spec.delegation.subjectPattern`
//!   must compile as an RE2 expression within the size bound of
//!   [`crate::token::session`] (CEL cannot compile one).
//! - **TokenPolicy, UPDATE**: `spec.issuer` cannot change (tokens already
//!   issued and every verifier's configuration carry it): create a new
//!   TokenPolicy instead.
//! - **TokenPolicy, CREATE**: its issuer path must be its own. The server
//!   routes discovery, JWKS and `<issuer>/token` by the issuer URL's path
//!   (whatever the host), so paths are compared, as the server does:
//!   an explicit `spec.issuer` whose path ends in `/issuers/<ns>/<name>` of
//!   another namespace or name (someone's default issuer, existing or not)
//!   is refused without a lookup; an explicit issuer with the path of
//!   another policy's explicit issuer, or a default one whose path another
//!   policy's explicit issuer already has, is refused naming that policy.
//!   The webhook does not know `--issuer-base-url`; the rules hold for any
//!   base. If the list of policies cannot be read, only the shape rule
//!   applies (with a warning); the server then serves neither of two
//!   policies that share a path and the controller marks both Stalled.
//! - **latchkey's Secrets** (the webhook's objectSelector sends only Secrets
//!   labelled `app.kubernetes.io/managed-by: latchkey`): UPDATE and DELETE
//!   only by latchkey's own identity and by Kubernetes' own cleanup (garbage
//!   collector, namespace controller, kube-controller-manager with its own
//!   credentials); anyone else is told to rotate through the ApiKey.
//!   CREATE is allowed (a restore from backup recreates them).
//!
//! - **CredentialGrants** ([`grants`]): an ApiKey (scopes, audiences,
//!   subject) or TokenPolicy (allowedScopes, role scopes, audiences), on
//!   CREATE and for what an UPDATE adds, claims nothing its namespace's
//!   grants do not give; the message names each ungranted claim and what to
//!   ask the platform team for.
//!
//! A lookup that failed (API server unreachable, no right) allows with a
//! warning: the controller reports the same problems in status, and the
//! webhook must not turn an API hiccup into refused applies.

pub mod grants;
pub mod review;

use crate::crd::{ApiKey, TokenPolicy};
use crate::grants::Grants;
use crate::meta::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use review::{AdmissionRequest, Verdict};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Users that may always change or delete latchkey's Secrets besides
/// latchkey itself: Kubernetes' own cleanup. The namespace controller
/// deletes everything in a namespace being deleted; the garbage collector
/// deletes Secrets whose ApiKey is gone (and removes owner references on
/// orphaning deletes); `system:kube-controller-manager` is the identity of
/// both when kube-controller-manager runs without
/// `--use-service-account-credentials`.
pub const SYSTEM_USERS: [&str; 3] = [
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:namespace-controller",
    "system:kube-controller-manager",
];

/// What the webhook needs to know about the caller.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// latchkey's own identities (usernames) that may write its Secrets.
    pub allowed_users: BTreeSet<String>,
}

impl Config {
    pub fn may_write_managed_secrets(&self, username: &str) -> bool {
        self.allowed_users.contains(username) || SYSTEM_USERS.contains(&username)
    }
}

/// Objects a decision depends on, as `(namespace, name)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    /// The Secret an ApiKey being created would write.
    pub secret: Option<(String, String)>,
    /// The TokenPolicy an ApiKey refers to.
    pub token_policy: Option<(String, String)>,
    /// Every TokenPolicy's issuer (for a TokenPolicy being created).
    pub issuers: bool,
    /// The CredentialGrants (for an ApiKey or TokenPolicy).
    pub grants: bool,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<T> {
    Absent,
    Present(T),
    /// The lookup failed; the reason is for a warning (never a Secret's data).
    Unknown(String),
}

/// The answers to [`Lookups`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The owner references of the Secret.
    pub secret: Option<Found<Vec<OwnerReference>>>,
    /// The policy's `spec.allowedScopes`.
    pub token_policy: Option<Found<Vec<String>>>,
    /// Every TokenPolicy the webhook could list, with its `spec.issuer`.
    pub issuers: Option<Found<Vec<PolicyIssuer>>>,
    /// The CredentialGrants in force (the webhook's cache of them).
    pub grants: Option<Found<Arc<Grants>>>,
}

/// A TokenPolicy's explicit issuer (`None`: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssuer {
    pub namespace: String,
    pub name: String,
    pub issuer: Option<String>,
}

fn is(request: &AdmissionRequest, group: &str, kind: &str) -> bool {
    request.kind.group == group && request.kind.kind == kind
}

fn parse_object<T: serde::de::DeserializeOwned>(value: Option<&Value>) -> Option<T> {
    value.and_then(|v| T::deserialize(v).ok())
}

/// What [`decide`] will need to know about `request`.
pub fn lookups(request: &AdmissionRequest) -> Lookups {
    let mut needs = Lookups::default();
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return needs;
    }
    // The grants (a cache read) only when something is claimed.
    if is(request, "latchkey.dev", "TokenPolicy")
        && let Some(policy) = parse_object::<TokenPolicy>(request.object.as_ref())
    {
        needs.grants = !grants::token_policy_claims(request, &policy).is_empty();
    }
    if is(request, "latchkey.dev", "TokenPolicy") && request.operation == "CREATE" {
        needs.issuers = true;
        return needs;
    }
    if !is(request, "latchkey.dev", "ApiKey") {
        return needs;
    }
    let Some(api_key) = parse_object::<ApiKey>(request.object.as_ref()) else {
        return needs;
    };
    needs.grants = !grants::api_key_claims(request, &api_key).is_empty();
    let Some(namespace) = request.namespace.clone().filter(|n| !n.is_empty()) else {
        return needs;
    };
    if request.operation == "CREATE" {
        let secret = api_key
            .spec
            .secret_name
            .clone()
            .or_else(|| request.name.clone())
            .or_else(|| api_key.metadata.name.clone())
            .unwrap_or_default();
        if !secret.is_empty() {
            needs.secret = Some((namespace.clone(), secret));
        }
    }
    if let Some(policy) = &api_key.spec.token_policy_ref
        && !policy.name.is_empty()
        && !added_scopes(request, &api_key).is_empty()
    {
        needs.token_policy = Some((namespace, policy.name.clone()));
    }
    needs
}

/// The scopes to check against the policy: all of them on CREATE or when
/// the reference changed; on UPDATE only those the edit adds.
fn added_scopes<'a>(request: &AdmissionRequest, api_key: &'a ApiKey) -> Vec<&'a str> {
    let old = (request.operation == "UPDATE")
        .then(|| parse_object::<ApiKey>(request.old_object.as_ref()))
        .flatten()
        .filter(|old| old.spec.token_policy_ref == api_key.spec.token_policy_ref);
    api_key
        .spec
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| {
            old.as_ref()
                .is_none_or(|old| !old.spec.scopes.iter().any(|o| o == s))
        })
        .collect()
}

/// The verdict on `request`, given what was looked up. Never panics; every
/// verdict carries a message.
pub fn decide(request: &AdmissionRequest, facts: &Facts, config: &Config) -> Verdict {
    if is(request, "latchkey.dev", "ApiKey") {
        decide_api_key(request, facts)
    } else if is(request, "latchkey.dev", "TokenPolicy") {
        decide_token_policy(request, facts)
    } else if is(request, "", "Secret") {
        decide_secret(request, config)
    } else {
        Verdict::allow(format!(
            "latchkey does not check {}/{}",
            request.kind.group, request.kind.kind
        ))
    }
}

fn unreadable(kind: &str, what: &str) -> Verdict {
    Verdict::deny(format!(
        "the admission request carries no readable {kind} in {what}; latchkey cannot check it"
    ))
}

fn decide_api_key(request: &AdmissionRequest, facts: &Facts) -> Verdict {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Verdict::allow(format!("latchkey does not check ApiKey {}", request.operation));
    }
    let Some(api_key) = parse_object::<ApiKey>(request.object.as_ref()) else {
        return unreadable("ApiKey", "object");
    };
    let name = api_key
        .metadata
        .name
        .clone()
        .or_else(|| request.name.clone())
        .unwrap_or_default();
    let mut verdict = Verdict::allow("the ApiKey passes latchkey's checks");

    // 1. The Secret's name is not held by someone else's Secret.
    if request.operation == "CREATE" {
        let secret = api_key.spec.secret_name.clone().unwrap_or_else(|| name.clone());
        match &facts.secret {
            Some(Found::Present(owners)) if !owned_by(owners, &api_key, &name) => {
                let field = if api_key.spec.secret_name.is_some() {
                    "spec.secretName"
                } else {
                    "spec.secretName (it defaults to the ApiKey's name)"
                };
                return Verdict::deny(format!(
                    "Secret {secret:?} already exists in this namespace and does not belong to this ApiKey; \
                     latchkey never takes over a Secret it did not create: set {field} to a name no Secret uses, \
                     or delete that Secret first"
                ));
            }
            Some(Found::Unknown(why)) => {
                verdict = verdict.with_warning(format!(
                    "latchkey could not check whether Secret {secret:?} is free ({why}); the ApiKey's status will tell"
                ));
            }
            _ => {}
        }
    }

    // 2. Scopes within the referenced TokenPolicy.
    if let Some(policy) = &api_key.spec.token_policy_ref {
        let added = added_scopes(request, &api_key);
        match &facts.token_policy {
            Some(Found::Present(allowed)) => {
                let outside: Vec<&str> = added
                    .into_iter()
                    .filter(|s| !allowed.iter().any(|a| a == s))
                    .collect();
                if !outside.is_empty() {
                    return Verdict::deny(format!(
                        "spec.scopes {} not allowed by TokenPolicy {:?} (its spec.allowedScopes: {}): \
                         remove {} from the ApiKey, or add {} to the TokenPolicy's allowedScopes first",
                        list(&outside),
                        policy.name,
                        if allowed.is_empty() {
                            "none".to_owned()
                        } else {
                            list(allowed)
                        },
                        if outside.len() == 1 { "it" } else { "them" },
                        if outside.len() == 1 { "it" } else { "them" },
                    ));
                }
            }
            Some(Found::Absent) => {
                verdict = verdict.with_warning(format!(
                    "TokenPolicy {:?} does not exist (yet); the ApiKey is accepted and shows TokenPolicyMissing until it does",
                    policy.name
                ));
            }
            Some(Found::Unknown(why)) => {
                verdict = verdict.with_warning(format!(
                    "latchkey could not read TokenPolicy {:?} ({why}); scopes were not checked",
                    policy.name
                ));
            }
            None => {}
        }
    }

    // 3. Nothing its namespace's CredentialGrants do not give.
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let claims = grants::api_key_claims(request, &api_key);
    grants::check(verdict, namespace, &claims, facts.grants.as_ref())
}

/// Whether a Secret with `owners` belongs to `api_key`: its controller
/// reference names this ApiKey (by uid, or by name when the review has no
/// uid).
fn owned_by(owners: &[OwnerReference], api_key: &ApiKey, name: &str) -> bool {
    owners.iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ApiKey"
            && o.api_version.starts_with("latchkey.dev/")
            && match api_key.metadata.uid.as_deref() {
                Some(uid) if !uid.is_empty() => o.uid == uid,
                _ => o.name == name,
            }
    })
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", items.join(", "))
}

/// A new policy's issuer path must be nobody else's.
fn decide_new_token_policy(request: &AdmissionRequest, facts: &Facts) -> Verdict {
    let Some(mut policy) = parse_object::<TokenPolicy>(request.object.as_ref()) else {
        return unreadable("TokenPolicy", "object");
    };
    if policy.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        policy.metadata.namespace = request.namespace.clone();
    }
    if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
        policy.metadata.name = request.name.clone();
    }
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let own_default = format!("<issuer base URL>/issuers/{namespace}/{name}");
    if let Some((ns, other)) = policy.squatted_default() {
        return Verdict::deny(format!(
            "spec.issuer {:?} has the path of the default issuer of TokenPolicy {ns}/{other} \
             (.../issuers/{ns}/{other}), which is reserved for that policy whether it exists or not: \
             remove spec.issuer to use this policy's own default {own_default}, or choose an issuer \
             whose path does not end in /issuers/<namespace>/<name>",
            policy.spec.issuer.as_deref().unwrap_or_default()
        ));
    }
    let others = match &facts.issuers {
        Some(Found::Present(others)) => others,
        Some(Found::Unknown(why)) => {
            return Verdict::allow("the TokenPolicy passes latchkey's checks").with_warning(format!(
                "latchkey could not list the TokenPolicies ({why}), so it did not check that the issuer is \
                 unique; if another policy has the same issuer path, neither is served and both show \
                 Stalled reason IssuerConflict"
            ));
        }
        _ => return Verdict::allow("the TokenPolicy passes latchkey's checks"),
    };
    let mine = policy.spec.issuer.as_deref().map(crate::crd::issuer_path);
    for other in others {
        if (other.namespace.as_str(), other.name.as_str()) == (namespace.as_str(), name.as_str()) {
            continue;
        }
        let Some(theirs) = other.issuer.as_deref() else {
            // Their default path is theirs alone; an explicit path of that
            // shape was refused above.
            continue;
        };
        let their_path = crate::crd::issuer_path(theirs);
        let holder = format!("{}/{}", other.namespace, other.name);
        match &mine {
            Some(path) if *path == their_path => {
                return Verdict::deny(format!(
                    "spec.issuer {:?} has the same path ({}) as the issuer {theirs:?} of TokenPolicy {holder}, \
                     which holds it; latchkey serves discovery, JWKS and /token by the issuer's path, so every \
                     issuer path belongs to one TokenPolicy: choose another spec.issuer, or remove it to use \
                     this policy's default {own_default}",
                    policy.spec.issuer.as_deref().unwrap_or_default(),
                    if path.is_empty() { "/" } else { path },
                ));
            }
            None if crate::crd::default_path_owner(&their_path)
                == Some((namespace.clone(), name.clone())) =>
            {
                return Verdict::deny(format!(
                    "the default issuer of this TokenPolicy ({own_default}) has the path of the issuer {theirs:?} \
                     that TokenPolicy {holder} holds: set spec.issuer to an issuer of this policy's own, or give \
                     the TokenPolicy another name (and ask the owners of {holder} to change its spec.issuer)"
                ));
            }
            _ => {}
        }
    }
    Verdict::allow("the TokenPolicy passes latchkey's checks")
}

fn decide_token_policy(request: &AdmissionRequest, facts: &Facts) -> Verdict {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Verdict::allow(format!(
            "latchkey does not check TokenPolicy {}",
            request.operation
        ));
    }
    let Some(policy) = parse_object::<TokenPolicy>(request.object.as_ref()) else {
        return unreadable("TokenPolicy", "object");
    };
    // CEL cannot compile a regular expression; this is the one place that
    // does before the server sees it (which then delegates nothing).
    if let Some(delegation) = &policy.spec.delegation
        && let Err(e) = crate::token::session::SubjectPattern::compile(&delegation.subject_pattern)
    {
        return Verdict::deny(e.to_string());
    }
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let claims = grants::token_policy_claims(request, &policy);
    let verdict = grants::check(
        Verdict::allow("the TokenPolicy passes latchkey's checks"),
        namespace,
        &claims,
        facts.grants.as_ref(),
    );
    if !verdict.allowed {
        return verdict;
    }
    if let Some(why) = roles_that_cannot_work(&policy) {
        return Verdict::deny(why);
    }
    if request.operation == "CREATE" {
        let issuer = decide_new_token_policy(request, facts);
        return if issuer.allowed {
            issuer.warnings.into_iter().fold(verdict, Verdict::with_warning)
        } else {
            issuer
        };
    }
    let Some(old) = parse_object::<TokenPolicy>(request.old_object.as_ref()) else {
        return unreadable("TokenPolicy", "oldObject");
    };
    if policy.spec.issuer != old.spec.issuer {
        let show = |i: &Option<String>| match i {
            Some(i) => format!("{i:?}"),
            None => "the default".to_owned(),
        };
        return Verdict::deny(format!(
            "spec.issuer cannot be changed after creation (from {} to {}): tokens already issued and every \
             verifier's configuration carry the issuer; create a new TokenPolicy with the new issuer and move \
             the ApiKeys to it",
            show(&old.spec.issuer),
            show(&policy.spec.issuer)
        ));
    }
    verdict
}

/// What in a TokenPolicy's roles cannot work, said with what to change: a
/// scope outside `allowedScopes`, a resource template that is not a
/// canonical path, has an unclosed brace, or names an undeclared claim (the
/// CRD's CEL checks all but the last; the webhook checks them all).
pub fn roles_that_cannot_work(policy: &TokenPolicy) -> Option<String> {
    let declared = |name: &str| policy.spec.custom_claims.iter().any(|c| c.name == name);
    for (role, permissions) in &policy.spec.roles {
        for permission in permissions {
            if let Some(scope) = permission
                .scopes
                .iter()
                .find(|s| !policy.spec.allowed_scopes.contains(s))
            {
                return Some(format!(
                    "spec.roles.{role}: scope {scope} is not in spec.allowedScopes; add it there, or remove it \
                     from the role's permission"
                ));
            }
            for resource in &permission.resources {
                if let Err(e) = crate::token::permissions::check_template(resource, declared) {
                    return Some(format!("spec.roles.{role}: {e}"));
                }
            }
        }
    }
    None
}

fn labels_say_managed(object: &Value) -> bool {
    object
        .pointer("/metadata/labels")
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(MANAGED_BY_VALUE)
}

fn decide_secret(request: &AdmissionRequest, config: &Config) -> Verdict {
    if !matches!(request.operation.as_str(), "UPDATE" | "DELETE") {
        return Verdict::allow(format!("latchkey allows Secret {}", request.operation));
    }
    // What the Secret was: for DELETE and UPDATE the API server sends it.
    let Some(old) = request.old_object.as_ref() else {
        return unreadable("Secret", "oldObject");
    };
    if !labels_say_managed(old) {
        return Verdict::allow("not a Secret latchkey manages");
    }
    let user = request.user_info.username.as_str();
    if config.may_write_managed_secrets(user) {
        return Verdict::allow(format!("{user} may write latchkey's Secrets"));
    }
    let name = request.name.clone().unwrap_or_default();
    let api_key = old
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o.get("kind").and_then(Value::as_str) == Some("ApiKey"))
        .and_then(|o| o.get("name").and_then(Value::as_str))
        .map(str::to_owned);
    let verb = if request.operation == "DELETE" {
        "deleted"
    } else {
        "changed"
    };
    let how = match api_key {
        Some(ak) => format!(
            "rotate through the ApiKey instead: kubectl annotate apikey {ak} latchkey.dev/rotate=\"$(date -Is)\" --overwrite \
             (to remove the Secret, delete ApiKey {ak})"
        ),
        None => "rotate through its ApiKey instead (annotation latchkey.dev/rotate), or delete the ApiKey"
            .to_owned(),
    };
    Verdict::deny(format!(
        "Secret {name:?} is managed by latchkey and can only be {verb} by latchkey ({user} is not latchkey); {how}"
    ))
}

#[cfg(test)]
mod tests;
