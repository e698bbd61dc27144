//! The CredentialGrant rule of the webhook: an ApiKey or TokenPolicy may
//! not claim a scope, audience or subject that the grants of its namespace
//! do not give ([`crate::grants`]). On UPDATE only what the edit adds is
//! checked, so that a grant narrowed later does not block unrelated edits
//! (a rotate annotation, a label) of old objects; the auth server honours
//! only granted claims anyway.

use super::Found;
use super::review::{AdmissionRequest, Verdict};
use crate::crd::{ApiKey, TokenPolicy};
use crate::grants::{Claims, Grants};
use std::collections::BTreeSet;
use std::sync::Arc;

fn old_object<T: serde::de::DeserializeOwned>(request: &AdmissionRequest) -> Option<T> {
    (request.operation == "UPDATE")
        .then(|| super::parse_object::<T>(request.old_object.as_ref()))
        .flatten()
}

fn added(new: &[String], old: Option<&[String]>, field: &str) -> Vec<(String, String)> {
    new.iter()
        .filter(|v| old.is_none_or(|o| !o.contains(v)))
        .map(|v| (v.clone(), field.to_owned()))
        .collect()
}

/// What an ApiKey (CREATE) or its edit (UPDATE) claims.
pub fn api_key_claims(request: &AdmissionRequest, api_key: &ApiKey) -> Claims {
    let old: Option<ApiKey> = old_object(request);
    let old = old.as_ref().map(|o| &o.spec);
    Claims {
        scopes: added(&api_key.spec.scopes, old.map(|o| &o.scopes[..]), "spec.scopes"),
        audiences: added(
            &api_key.spec.audiences,
            old.map(|o| &o.audiences[..]),
            "spec.audiences",
        ),
        subject: api_key
            .spec
            .subject
            .clone()
            .filter(|s| old.is_none_or(|o| o.subject.as_ref() != Some(s))),
    }
}

/// What a TokenPolicy (CREATE) or its edit (UPDATE) claims: its allowed
/// scopes, the scopes of its roles and its audiences.
pub fn token_policy_claims(request: &AdmissionRequest, policy: &TokenPolicy) -> Claims {
    let old: Option<TokenPolicy> = old_object(request);
    let old = old.as_ref().map(|o| &o.spec);
    let mut scopes = added(
        &policy.spec.allowed_scopes,
        old.map(|o| &o.allowed_scopes[..]),
        "spec.allowedScopes",
    );
    let listed: BTreeSet<&str> = scopes.iter().map(|(s, _)| s.as_str()).collect();
    let mut from_roles = Vec::new();
    let scopes_of = |permissions: &[crate::crd::Permission]| -> Vec<String> {
        crate::token::permissions::role_scopes(permissions)
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    for (role, permissions) in &policy.spec.roles {
        let before = old.and_then(|o| o.roles.get(role)).map(|v| scopes_of(v));
        let role_scopes = scopes_of(permissions);
        for (scope, field) in added(&role_scopes, before.as_deref(), &format!("spec.roles.{role}")) {
            if !listed.contains(scope.as_str()) {
                from_roles.push((scope, field));
            }
        }
    }
    scopes.extend(from_roles);
    Claims {
        scopes,
        audiences: added(
            &policy.spec.audiences,
            old.map(|o| &o.audiences[..]),
            "spec.audiences",
        ),
        subject: None,
    }
}

/// `verdict`, or a denial when `claims` of an object in `namespace` go
/// beyond the grants (a warning when they could not be read).
pub fn check(
    verdict: Verdict,
    namespace: &str,
    claims: &Claims,
    grants: Option<&Found<Arc<Grants>>>,
) -> Verdict {
    match grants {
        _ if claims.is_empty() => verdict,
        Some(Found::Present(grants)) => {
            let ungranted = grants.ungranted(namespace, claims);
            if ungranted.is_empty() {
                verdict
            } else {
                Verdict::deny(grants.message(namespace, &ungranted))
            }
        }
        Some(Found::Unknown(why)) => verdict.with_warning(format!(
            "latchkey could not read the CredentialGrants ({why}); the claims were not checked here, \
             and the auth server honours only what the grants give"
        )),
        Some(Found::Absent) | None => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Facts, decide, lookups, review};
    use super::*;
    use crate::crd::CredentialGrantSpec;
    use serde_json::{Value, json};

    fn request(kind: &str, operation: &str, spec: Value, old_spec: Option<Value>) -> AdmissionRequest {
        let object = |spec: Value| {
            json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": kind,
                   "metadata": {"name": "k", "namespace": "team-b", "uid": "u"}, "spec": spec})
        };
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "uid-1",
                "kind": {"group": "latchkey.dev", "version": "v1alpha1", "kind": kind},
                "namespace": "team-b",
                "name": "k",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object(spec),
                "oldObject": old_spec.map(object),
            }
        });
        review::parse(body.to_string().as_bytes()).unwrap()
    }

    fn grants(strict: bool) -> Arc<Grants> {
        let g = |ns: &str, scopes: &[&str], subjects: &[&str]| CredentialGrantSpec {
            namespaces: vec![ns.into()],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            audiences: vec![format!("{ns}.example.com")],
            introspect_namespaces: None,
        };
        Arc::new(Grants::new(
            vec![
                ("team-a".into(), g("team-a", &["orders:*"], &["orders-svc"])),
                ("team-b".into(), g("team-b", &["billing:*"], &[])),
            ],
            strict,
        ))
    }

    fn verdict(req: &AdmissionRequest, grants: Option<Found<Arc<Grants>>>) -> Verdict {
        let facts = Facts {
            grants,
            ..Default::default()
        };
        decide(req, &facts, &Config::default())
    }

    #[test]
    fn an_api_key_claiming_another_namespaces_scope_or_subject_is_refused() {
        let req = request(
            "ApiKey",
            "CREATE",
            json!({"scopes": ["billing:read", "orders:write"], "subject": "orders-svc"}),
            None,
        );
        assert!(lookups(&req).grants);
        let v = verdict(&req, Some(Found::Present(grants(false))));
        assert!(!v.allowed);
        assert!(
            v.message.starts_with(
                "scope orders:write (spec.scopes), subject orders-svc (spec.subject) are not granted to \
                 namespace team-b by any CredentialGrant (the grants selecting it: team-b); ask the platform team"
            ),
            "{}",
            v.message
        );
        let ok = request(
            "ApiKey",
            "CREATE",
            json!({"scopes": ["billing:read"], "subject": "team-b/k", "audiences": ["team-b.example.com"]}),
            None,
        );
        assert!(verdict(&ok, Some(Found::Present(grants(false)))).allowed);
        // Unknown grants: allowed with a warning (the server still enforces).
        let v = verdict(&req, Some(Found::Unknown("not loaded yet".into())));
        assert!(v.allowed && v.warnings.iter().any(|w| w.contains("CredentialGrants")));
    }

    #[test]
    fn an_update_is_checked_for_what_it_adds_only() {
        let old = json!({"scopes": ["orders:write"]});
        // A grant narrowed later does not block an unrelated edit…
        let req = request("ApiKey", "UPDATE", old.clone(), Some(old.clone()));
        assert!(!lookups(&req).grants);
        assert!(verdict(&req, Some(Found::Present(grants(false)))).allowed);
        // …but a new ungranted claim is refused.
        let req = request(
            "ApiKey",
            "UPDATE",
            json!({"scopes": ["orders:write", "orders:read"], "audiences": ["x.example.com"]}),
            Some(old),
        );
        let v = verdict(&req, Some(Found::Present(grants(false))));
        assert!(!v.allowed);
        assert!(
            v.message
                .contains("scope orders:read (spec.scopes), audience x.example.com (spec.audiences)"),
            "{}",
            v.message
        );
        assert!(!v.message.contains("orders:write"), "{}", v.message);
    }

    #[test]
    fn a_token_policy_may_not_claim_ungranted_scopes_roles_or_audiences() {
        let req = request(
            "TokenPolicy",
            "CREATE",
            json!({"audiences": ["team-b.example.com", "team-a.example.com"], "allowedScopes": ["billing:read"],
                   "roles": {"admin": [{"scopes": ["billing:read", "orders:admin"]}]}}),
            None,
        );
        let v = verdict(&req, Some(Found::Present(grants(false))));
        assert!(!v.allowed);
        assert!(
            v.message.contains("scope orders:admin (spec.roles.admin)")
                && v.message.contains("audience team-a.example.com (spec.audiences)"),
            "{}",
            v.message
        );
        // Strict mode, a namespace without a grant: nothing may be claimed.
        let strict = Arc::new(Grants::new(vec![], true));
        let req = request(
            "TokenPolicy",
            "CREATE",
            json!({"audiences": ["a"], "allowedScopes": ["s"]}),
            None,
        );
        let v = verdict(&req, Some(Found::Present(strict)));
        assert!(
            !v.allowed && v.message.contains("--require-grants"),
            "{}",
            v.message
        );
        // Open mode: as before.
        assert!(verdict(&req, Some(Found::Present(Arc::new(Grants::default())))).allowed);
    }
}
