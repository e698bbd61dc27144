//! Permissions: scopes on resources, pure. A TokenPolicy's role is a list
//! of permissions (`{scopes, resources}`, resources being URL path
//! templates over the token's custom claims); a token minted for the role
//! carries them with the templates filled in, as RFC 9396
//! `authorization_details`, and an auth route asked with `resource=path`
//! allows only when one of them holds every required scope and covers the
//! request's canonical path ([`super::path`]).
//!
//! Decisions:
//! - The token's shape: `authorization_details: [{"type": "latchkey",
//!   "actions": [scopes], "paths": [resources]}]`. RFC 9396 `actions` are
//!   the scopes; the resources go in the type-specific `paths`, not in the
//!   common `locations`, which RFC 9396 §2.2 defines as the location of the
//!   resource server (an audience, like RFC 8707's `resource`), not a part
//!   of its URL space. A detail without `paths` applies everywhere.
//! - A template names custom claims only (`{tenant}`), every one declared in
//!   `spec.customClaims` (the CRD's CEL rule and the webhook refuse others).
//!   The value that fills it must be one path segment of unreserved
//!   characters (`[A-Za-z0-9._~-]`, not only dots), so a claim value can
//!   never add a `/`, a dot segment or an encoding to a resource: whoever
//!   sets the claim (the login handler's API key) picks *which* tenant, never
//!   a broader path.
//! - A role's permissions are narrowed with the token's scopes: each keeps
//!   the actions the token was granted, and one left with none is dropped.

use super::claims::TokenError;
use super::path;
use crate::crd::Permission;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The `type` of latchkey's authorization details.
pub const DETAIL_TYPE: &str = "latchkey";

/// One RFC 9396 authorization detail of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationDetail {
    #[serde(rename = "type")]
    pub kind: String,
    /// The scopes.
    #[serde(default)]
    pub actions: Vec<String>,
    /// The resources, filled in; empty: everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Why a resource template cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("resource {0:?} must start with '/', for example /calendar-events/{{tenant}}/")]
    NotAPath(String),
    #[error("resource {0:?} has a '{{' without its '}}': close it, as in /calendar-events/{{tenant}}/")]
    Unclosed(String),
    #[error("resource {0:?} has a '}}' without a '{{' before it: remove it, or write {{name}}")]
    StrayClose(String),
    #[error(
        "resource {resource:?} has {{{name}}}, which is not a claim name (letters, digits, '_' or '-', starting with a letter)"
    )]
    BadName { resource: String, name: String },
    #[error(
        "resource {resource:?} names the claim {name}, which spec.customClaims does not declare: add it there \
         (customClaims: [{{name: {name}, required: true}}]), or remove {{{name}}} from the resource"
    )]
    Undeclared { resource: String, name: String },
    #[error(
        "resource {resource:?} holds {found:?}; use only letters, digits, - . _ ~ ! $ & ( ) + , ; = : @ / \
         and {{claim}} (no %, ?, #, *, backslash or space)"
    )]
    Character { resource: String, found: char },
    #[error("resource {0:?} has '//' or a '.' or '..' segment; write the path as the upstream serves it")]
    NotCanonical(String),
}

/// Why a template could not be filled for a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FillError {
    #[error("the resource {resource} needs claim.{name}")]
    Missing { resource: String, name: String },
    #[error(
        "claim.{name} fills the resource {resource}, so it must be one path segment: letters, digits, '-', \
         '.', '_' or '~', not only dots"
    )]
    Value { resource: String, name: String },
}

fn is_resource_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&()+,;=:@/".contains(c)
}

fn is_claim_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits a template into literal text and `{name}`s: `Ok(parts)` with
/// `(false, text)` for literals and `(true, name)` for claims.
fn parts(template: &str) -> Result<Vec<(bool, &str)>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push((false, rest));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(TemplateError::StrayClose(template.to_owned()));
            }
            Some(i) => {
                out.push((false, &rest[..i]));
                let after = &rest[i + 1..];
                let close = after
                    .find(['{', '}'])
                    .filter(|j| after.as_bytes()[*j] == b'}')
                    .ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
                out.push((true, &after[..close]));
                rest = &after[close + 1..];
            }
        }
    }
    Ok(out)
}

/// Checks a resource template: a canonical path with `{claim}`s, each of
/// which `declared` knows. Returns the claim names it uses.
pub fn check_template(template: &str, declared: impl Fn(&str) -> bool) -> Result<Vec<&str>, TemplateError> {
    if !template.starts_with('/') {
        return Err(TemplateError::NotAPath(template.to_owned()));
    }
    let mut names = Vec::new();
    let mut shape = String::with_capacity(template.len());
    for (is_claim, text) in parts(template)? {
        if is_claim {
            if !is_claim_name(text) {
                return Err(TemplateError::BadName {
                    resource: template.to_owned(),
                    name: text.to_owned(),
                });
            }
            if !declared(text) {
                return Err(TemplateError::Undeclared {
                    resource: template.to_owned(),
                    name: text.to_owned(),
                });
            }
            names.push(text);
            // The worst value a claim may take for the shape check.
            shape.push('x');
        } else {
            if let Some(found) = text.chars().find(|c| !is_resource_char(*c)) {
                return Err(TemplateError::Character {
                    resource: template.to_owned(),
                    found,
                });
            }
            shape.push_str(text);
        }
    }
    if path::request_path(&shape) != Ok(shape.as_str()) {
        return Err(TemplateError::NotCanonical(template.to_owned()));
    }
    Ok(names)
}

/// Whether a claim value may fill a template: one segment of unreserved
/// characters, not only dots.
fn is_segment_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && !value.bytes().all(|b| b == b'.')
}

/// Fills `template` (already checked) with the token's custom claims.
pub fn fill(template: &str, claims: &BTreeMap<String, Value>) -> Result<String, FillError> {
    let malformed = || FillError::Value {
        resource: template.to_owned(),
        name: String::new(),
    };
    let mut out = String::with_capacity(template.len() + 16);
    for (is_claim, text) in parts(template).map_err(|_| malformed())? {
        if !is_claim {
            out.push_str(text);
            continue;
        }
        let value = claims
            .get(text)
            .and_then(Value::as_str)
            .ok_or_else(|| FillError::Missing {
                resource: template.to_owned(),
                name: text.to_owned(),
            })?;
        if !is_segment_value(value) {
            return Err(FillError::Value {
                resource: template.to_owned(),
                name: text.to_owned(),
            });
        }
        out.push_str(value);
    }
    // Canonical by construction; checked anyway.
    if path::request_path(&out) != Ok(out.as_str()) {
        return Err(malformed());
    }
    Ok(out)
}

/// A role's permissions as a token carries them: templates filled with
/// `claims`, each narrowed to the `granted` scopes (one left without any is
/// dropped).
pub fn grant(
    permissions: &[Permission],
    granted: &BTreeSet<&str>,
    claims: &BTreeMap<String, Value>,
) -> Result<Vec<AuthorizationDetail>, FillError> {
    let mut out = Vec::new();
    for permission in permissions {
        let actions: BTreeSet<&str> = permission
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| granted.contains(s))
            .collect();
        if actions.is_empty() {
            continue;
        }
        let paths: BTreeSet<String> = permission
            .resources
            .iter()
            .map(|r| fill(r, claims))
            .collect::<Result<_, _>>()?;
        out.push(AuthorizationDetail {
            kind: DETAIL_TYPE.to_owned(),
            actions: actions.into_iter().map(str::to_owned).collect(),
            paths: paths.into_iter().collect(),
        });
    }
    Ok(out)
}

/// A token's permissions narrowed to `granted` (a refresh that asks for
/// fewer scopes): each keeps the granted actions, one left with none is
/// dropped; the paths never change.
pub fn narrow(details: &[AuthorizationDetail], granted: &BTreeSet<&str>) -> Vec<AuthorizationDetail> {
    details
        .iter()
        .filter_map(|d| {
            let actions: Vec<String> = d
                .actions
                .iter()
                .filter(|a| granted.contains(a.as_str()))
                .cloned()
                .collect();
            (!actions.is_empty()).then(|| AuthorizationDetail { actions, ..d.clone() })
        })
        .collect()
}

/// The role a token request names (`role=`), with its permissions.
pub fn requested_role<'a>(
    roles: &'a BTreeMap<String, Vec<Permission>>,
    name: Option<&'a String>,
) -> Result<Option<(&'a str, &'a [Permission])>, TokenError> {
    let Some(name) = name else { return Ok(None) };
    match roles.get(name) {
        Some(permissions) => Ok(Some((name, permissions))),
        None => Err(TokenError::InvalidRequest(format!(
            "role {name} is not defined by the TokenPolicy"
        ))),
    }
}

/// The scopes role `name` gives a key that may use `allowed`: the union of
/// its permissions', every one of which the key must hold.
pub fn role_base<'a>(
    name: &str,
    permissions: &'a [Permission],
    allowed: &BTreeSet<&str>,
) -> Result<BTreeSet<&'a str>, TokenError> {
    let scopes = role_scopes(permissions);
    match scopes.iter().find(|s| !allowed.contains(*s)) {
        Some(missing) => Err(TokenError::InvalidScope(format!(
            "role {name} needs scope {missing}, which this API key may not grant under the TokenPolicy"
        ))),
        None => Ok(scopes),
    }
}

/// The scopes of a role: the union of its permissions'.
pub fn role_scopes(permissions: &[Permission]) -> BTreeSet<&str> {
    permissions
        .iter()
        .flat_map(|p| p.scopes.iter().map(String::as_str))
        .collect()
}

/// Why a `resource=path` route refuses a token's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No permission holds every required scope.
    Scope,
    /// Some permission holds them, but none covers the path.
    Resource,
    /// The path is not canonical (or missing).
    Path(path::PathRefused),
}

/// Whether some detail of latchkey's holds every `required` scope and
/// covers the request path (`path` is asked only when needed).
pub fn permits<'p>(
    details: &[AuthorizationDetail],
    required: &[String],
    path: impl FnOnce() -> Result<&'p str, path::PathRefused>,
) -> Result<(), Denial> {
    // Two passes over the details rather than a collected list: no
    // allocation on a request's path.
    let holding = || {
        details
            .iter()
            .filter(|d| d.kind == DETAIL_TYPE)
            .filter(|d| required.iter().all(|s| d.actions.contains(s)))
    };
    let mut any_holds = false;
    for d in holding() {
        if d.paths.is_empty() {
            return Ok(());
        }
        any_holds = true;
    }
    if !any_holds {
        return Err(Denial::Scope);
    }
    let path = path().map_err(Denial::Path)?;
    match holding().any(|d| d.paths.iter().any(|r| path::covers(r, path))) {
        true => Ok(()),
        false => Err(Denial::Resource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn perm(scopes: &[&str], resources: &[&str]) -> Permission {
        Permission {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn data_entry() -> Vec<Permission> {
        vec![
            perm(&["calendar-events:read"], &["/calendar-events/{tenant}/"]),
            perm(
                &["collaboration:publish", "collaboration:subscribe"],
                &["/topics/{tenant}-events"],
            ),
        ]
    }

    fn claims(tenant: &str) -> BTreeMap<String, Value> {
        [("tenant".to_string(), json!(tenant))].into()
    }

    #[test]
    fn templates_that_cannot_work_are_refused_with_what_to_change() {
        let declared = |n: &str| n == "tenant";
        assert_eq!(
            check_template("/calendar-events/{tenant}/", declared),
            Ok(vec!["tenant"])
        );
        assert_eq!(
            check_template("/topics/{tenant}-events", declared),
            Ok(vec!["tenant"])
        );
        assert_eq!(check_template("/health", declared), Ok(vec![]));
        let cases = [
            ("/calendar-events/{org}/", "does not declare"),
            ("/calendar-events/{tenant/", "without its '}'"),
            ("/calendar-events/{tenant", "without its '}'"),
            ("/calendar-events/{te{nant}/", "without its '}'"),
            ("/calendar-events/tenant}/", "without a '{'"),
            ("/calendar-events/{}/", "not a claim name"),
            ("/calendar-events/{1x}/", "not a claim name"),
            ("calendar-events/{tenant}/", "must start with '/'"),
            ("/calendar-events/{tenant}/*", "holds '*'"),
            ("/calendar-events/%2e%2e/", "holds '%'"),
            ("/calendar-events/a\\b/", "holds '\\\\'"),
            ("/calendar-events//{tenant}/", "'//'"),
            ("/calendar-events/../{tenant}/", "'..' segment"),
            ("/calendar-events/{tenant}/./x", "'..' segment"),
        ];
        for (template, says) in cases {
            let e = check_template(template, declared).unwrap_err().to_string();
            assert!(e.contains(says), "{template}: {e}");
        }
    }

    #[test]
    fn a_role_fills_its_templates_and_is_narrowed_to_the_granted_scopes() {
        let role = data_entry();
        let all: BTreeSet<&str> = role_scopes(&role);
        let details = grant(&role, &all, &claims("acme")).unwrap();
        assert_eq!(
            serde_json::to_value(&details).unwrap(),
            json!([
                {"type": "latchkey", "actions": ["calendar-events:read"], "paths": ["/calendar-events/acme/"]},
                {"type": "latchkey", "actions": ["collaboration:publish", "collaboration:subscribe"],
                 "paths": ["/topics/acme-events"]}
            ])
        );
        let narrow: BTreeSet<&str> = ["collaboration:publish"].into();
        let details = grant(&data_entry(), &narrow, &claims("acme")).unwrap();
        assert_eq!(details.len(), 1);
        assert_eq!(details[0].actions, ["collaboration:publish"]);
        // A permission without resources applies everywhere: no `paths`.
        let open = grant(&[perm(&["a"], &[])], &["a"].into(), &BTreeMap::new()).unwrap();
        assert_eq!(
            serde_json::to_value(&open).unwrap(),
            json!([{"type": "latchkey", "actions": ["a"]}])
        );
    }

    #[test]
    fn narrowing_keeps_the_paths_and_drops_what_is_left_without_scopes() {
        let role = data_entry();
        let details = grant(&role, &role_scopes(&role), &claims("acme")).unwrap();
        let narrow_to = |s: &[&str]| narrow(&details, &s.iter().copied().collect());
        let n = narrow_to(&["collaboration:subscribe"]);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].actions, ["collaboration:subscribe"]);
        assert_eq!(n[0].paths, ["/topics/acme-events"]);
        assert_eq!(narrow_to(&[]), []);
        assert_eq!(
            narrow_to(&[
                "calendar-events:read",
                "collaboration:publish",
                "collaboration:subscribe"
            ]),
            details
        );
    }

    #[test]
    fn a_claim_value_can_never_widen_a_resource() {
        let role = data_entry();
        let all = role_scopes(&role);
        for bad in [
            "",
            ".",
            "..",
            "...",
            "acme/../globex",
            "acme/",
            "a%2Fb",
            "a b",
            "a\\b",
            "{tenant}",
            "é",
        ] {
            let e = grant(&data_entry(), &all, &claims(bad)).unwrap_err();
            assert!(
                matches!(e, FillError::Value { ref name, .. } if name == "tenant"),
                "{bad:?}: {e}"
            );
        }
        let e = grant(&data_entry(), &all, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the resource /calendar-events/{tenant}/ needs claim.tenant"
        );
        assert!(grant(&data_entry(), &all, &claims("acme.corp-1_x~")).is_ok());
    }

    #[test]
    fn a_route_allows_only_a_permission_with_every_scope_on_a_covering_path() {
        let role = data_entry();
        let all = role_scopes(&role);
        let details = grant(&role, &all, &claims("acme")).unwrap();
        let req = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let check =
            |scopes: &[&str], target: &str| permits(&details, &req(scopes), || path::request_path(target));
        assert_eq!(
            check(&["calendar-events:read"], "/calendar-events/acme/1"),
            Ok(())
        );
        assert_eq!(
            check(&["calendar-events:read"], "/calendar-events/globex/1"),
            Err(Denial::Resource)
        );
        assert_eq!(
            check(&["calendar-events:write"], "/calendar-events/acme/1"),
            Err(Denial::Scope)
        );
        // Scopes of two permissions do not add up to one.
        assert_eq!(
            check(
                &["calendar-events:read", "collaboration:publish"],
                "/topics/acme-events"
            ),
            Err(Denial::Scope)
        );
        assert_eq!(check(&["collaboration:publish"], "/topics/acme-events"), Ok(()));
        assert_eq!(
            check(&["collaboration:publish"], "/topics/acme-eventsX"),
            Err(Denial::Resource)
        );
        assert_eq!(
            check(&["collaboration:publish"], "/topics/globex-events"),
            Err(Denial::Resource)
        );
        assert_eq!(
            check(&["calendar-events:read"], "/calendar-events/acme/../globex/1"),
            Err(Denial::Path(path::PathRefused::DotSegment))
        );
        // No scope required: any permission covering the path will do.
        assert_eq!(check(&[], "/topics/acme-events/x"), Ok(()));
        assert_eq!(check(&[], "/elsewhere"), Err(Denial::Resource));
        // A permission without paths: the path is never looked at.
        let open = grant(&[perm(&["a"], &[])], &["a"].into(), &BTreeMap::new()).unwrap();
        assert_eq!(
            permits(&open, &req(&["a"]), || Err(path::PathRefused::Missing)),
            Ok(())
        );
    }
}
