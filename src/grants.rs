//! The rules of CredentialGrants ([`crate::crd::CredentialGrant`]): pure
//! functions of the grants in force, the strict-mode flag and a claim. The
//! admission webhook refuses what they do not grant ([`Grants::ungranted`]);
//! the auth server's index keeps only what they grant
//! ([`Grants::effective`]), so a claim forced past the webhook is never
//! honoured.
//!
//! Semantics:
//! - A namespace **selected** by at least one grant (a name or pattern in
//!   `spec.namespaces`) may claim only the **union** of what those grants
//!   list.
//! - A namespace selected by none is **unrestricted** (latchkey's behaviour
//!   without grants), unless **strict** mode (`--require-grants`) is on: then
//!   it may claim no scope, no audience and no custom subject.
//! - Patterns: an exact value, a prefix followed by `*` (`orders:*`,
//!   `team-a-*`), or `*` alone (everything). A `*` anywhere else is a literal
//!   character.
//! - Subjects: the default `<namespace>/<name>`, and any subject that starts
//!   with `<namespace>/`, needs no grant (it names only what the same
//!   namespace could create anyway). Any other subject needs a grant; an
//!   ungranted one is replaced by the default.
//! - Audiences: a restricted ApiKey that lists none gets the exact (non
//!   pattern) audiences its grants list, "anywhere" only if a grant lists
//!   `*`, and no audience at all if they list none. Never "anywhere" by
//!   omission.
//! - `/introspect`: a caller from a restricted namespace sees only
//!   credentials of the namespaces its grants' `introspectNamespaces` match
//!   (default: its own); a caller from an unrestricted namespace only
//!   credentials of unrestricted namespaces.
//!
//! [`watch`] follows the CredentialGrants of the cluster for the auth
//! server's index and the webhook's cache (the only non-pure part).

use crate::crd::{CredentialGrant, CredentialGrantSpec};
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Whether `value` matches `pattern` (exact, `prefix*`, or `*`).
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn owned<S: AsRef<str>>(values: &[S]) -> Vec<String> {
    values.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn any_matches<S: AsRef<str>>(patterns: &[S], value: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p.as_ref(), value))
}

/// The grants in force (every CredentialGrant's name and spec) and whether
/// strict mode is on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    grants: Vec<(String, CredentialGrantSpec)>,
    strict: bool,
}

/// An ApiKey's audiences after the grants: [`Audiences::Any`] is "valid
/// for every audience" (an empty `spec.audiences` where nothing restricts
/// it); `Only(vec![])` is valid for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audiences {
    Any,
    Only(Vec<String>),
}

/// What an ApiKey is reported and honoured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub subject: String,
    pub scopes: Vec<String>,
    pub audiences: Audiences,
}

/// What an object claims, for [`Grants::ungranted`]: each value with the
/// field it comes from (for the message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub scopes: Vec<(String, String)>,
    pub audiences: Vec<(String, String)>,
    /// A custom subject (`spec.subject`).
    pub subject: Option<String>,
}

impl Claims {
    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.audiences.is_empty() && self.subject.is_none()
    }
}

/// One claim no grant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ungranted {
    Scope { value: String, field: String },
    Audience { value: String, field: String },
    Subject { value: String },
}

impl Grants {
    /// The grants `specs` (name, spec), with strict mode `strict`.
    pub fn new(mut specs: Vec<(String, CredentialGrantSpec)>, strict: bool) -> Self {
        specs.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            grants: specs,
            strict,
        }
    }

    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Number of grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grants selecting `namespace`.
    pub fn selecting<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a (String, CredentialGrantSpec)> {
        self.grants
            .iter()
            .filter(move |(_, g)| any_matches(&g.namespaces, namespace))
    }

    /// Whether `namespace` is restricted: selected by a grant, or strict mode.
    pub fn is_restricted(&self, namespace: &str) -> bool {
        self.strict || self.selecting(namespace).next().is_some()
    }

    /// Whether `namespace` may claim `scope`.
    pub fn scope_granted(&self, namespace: &str, scope: &str) -> bool {
        !self.is_restricted(namespace)
            || self
                .selecting(namespace)
                .any(|(_, g)| any_matches(&g.scopes, scope))
    }

    /// Whether `namespace` may claim `audience`.
    pub fn audience_granted(&self, namespace: &str, audience: &str) -> bool {
        !self.is_restricted(namespace)
            || self
                .selecting(namespace)
                .any(|(_, g)| any_matches(&g.audiences, audience))
    }

    /// Whether an ApiKey of `namespace` may present `subject`.
    pub fn subject_granted(&self, namespace: &str, subject: &str) -> bool {
        subject
            .strip_prefix(namespace)
            .is_some_and(|rest| rest.starts_with('/'))
            || !self.is_restricted(namespace)
            || self
                .selecting(namespace)
                .any(|(_, g)| any_matches(&g.subjects, subject))
    }

    /// What an ApiKey `namespace/name` claiming `subject`, `scopes` and
    /// `audiences` is honoured with.
    pub fn effective(
        &self,
        namespace: &str,
        name: &str,
        subject: Option<&str>,
        scopes: &[impl AsRef<str>],
        audiences: &[impl AsRef<str>],
    ) -> Effective {
        let default_subject = format!("{namespace}/{name}");
        if !self.is_restricted(namespace) {
            return Effective {
                subject: subject.map_or(default_subject, str::to_owned),
                scopes: owned(scopes),
                audiences: if audiences.is_empty() {
                    Audiences::Any
                } else {
                    Audiences::Only(owned(audiences))
                },
            };
        }
        let subject = subject
            .filter(|s| self.subject_granted(namespace, s))
            .map_or(default_subject, str::to_owned);
        let scopes = owned(scopes)
            .into_iter()
            .filter(|s| self.scope_granted(namespace, s))
            .collect();
        let audiences = if audiences.is_empty() {
            let granted: Vec<&String> = self
                .selecting(namespace)
                .flat_map(|(_, g)| g.audiences.iter())
                .collect();
            if granted.iter().any(|a| *a == "*") {
                Audiences::Any
            } else {
                let exact: BTreeSet<String> = granted
                    .into_iter()
                    .filter(|a| !a.ends_with('*'))
                    .cloned()
                    .collect();
                Audiences::Only(exact.into_iter().collect())
            }
        } else {
            Audiences::Only(
                owned(audiences)
                    .into_iter()
                    .filter(|a| self.audience_granted(namespace, a))
                    .collect(),
            )
        };
        Effective {
            subject,
            scopes,
            audiences,
        }
    }

    /// Every claim of `claims` (by an object in `namespace`) no grant allows.
    pub fn ungranted(&self, namespace: &str, claims: &Claims) -> Vec<Ungranted> {
        let mut out = Vec::new();
        for (value, field) in &claims.scopes {
            if !self.scope_granted(namespace, value) {
                out.push(Ungranted::Scope {
                    value: value.clone(),
                    field: field.clone(),
                });
            }
        }
        for (value, field) in &claims.audiences {
            if !self.audience_granted(namespace, value) {
                out.push(Ungranted::Audience {
                    value: value.clone(),
                    field: field.clone(),
                });
            }
        }
        if let Some(subject) = &claims.subject
            && !self.subject_granted(namespace, subject)
        {
            out.push(Ungranted::Subject {
                value: subject.clone(),
            });
        }
        out
    }

    /// The admission message for `ungranted` claims of an object in
    /// `namespace`: what is not granted, and what to ask for.
    pub fn message(&self, namespace: &str, ungranted: &[Ungranted]) -> String {
        let what: Vec<String> = ungranted
            .iter()
            .map(|u| match u {
                Ungranted::Scope { value, field } => format!("scope {value} ({field})"),
                Ungranted::Audience { value, field } => format!("audience {value} ({field})"),
                Ungranted::Subject { value } => format!("subject {value} (spec.subject)"),
            })
            .collect();
        let selecting: Vec<&str> = self.selecting(namespace).map(|(n, _)| n.as_str()).collect();
        let why = if selecting.is_empty() {
            format!(
                "namespace {namespace} is selected by no CredentialGrant and latchkey requires grants \
                 (--require-grants), so it may claim no scope, audience or custom subject"
            )
        } else {
            format!(
                "not granted to namespace {namespace} by any CredentialGrant (the grants selecting it: {})",
                selecting.join(", ")
            )
        };
        let subject_hint = if ungranted.iter().any(|u| matches!(u, Ungranted::Subject { .. })) {
            format!(" (a subject starting with {namespace}/ needs no grant)")
        } else {
            String::new()
        };
        format!(
            "{} {} {why}; ask the platform team for a CredentialGrant that gives {} to namespace {namespace}, \
             or remove {}{subject_hint}",
            what.join(", "),
            if what.len() == 1 { "is" } else { "are" },
            if what.len() == 1 { "it" } else { "them" },
            if what.len() == 1 { "it" } else { "them" },
        )
    }

    /// Whether a caller from `caller_ns` (holding `latchkey:introspect`) may
    /// learn about a credential of `target_ns`.
    pub fn may_introspect(&self, caller_ns: &str, target_ns: &str) -> bool {
        if !self.is_restricted(caller_ns) {
            return !self.is_restricted(target_ns);
        }
        self.selecting(caller_ns)
            .any(|(_, g)| match &g.introspect_namespaces {
                Some(patterns) => any_matches(patterns, target_ns),
                None => caller_ns == target_ns,
            })
    }
}

/// Calls `publish` with the whole set of grants after the first full list
/// and after every change, until the watch stream ends (the webhook's cache
/// and the server's index both follow it).
pub async fn watch(api: Api<CredentialGrant>, strict: bool, publish: impl Fn(Arc<Grants>)) {
    let mut known: BTreeMap<String, CredentialGrant> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, CredentialGrant>> = None;
    let publish = |known: &BTreeMap<String, CredentialGrant>| {
        let grants = Grants::new(
            known
                .iter()
                .map(|(name, g)| (name.clone(), g.spec.clone()))
                .collect(),
            strict,
        );
        tracing::info!(grants = grants.len(), strict, "CredentialGrants in force");
        publish(Arc::new(grants));
    };
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(g)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(g.metadata.name.clone().unwrap_or_default(), g);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listing.take() {
                    known = l;
                    publish(&known);
                }
            }
            Ok(watcher::Event::Apply(g)) => {
                let name = g.metadata.name.clone().unwrap_or_default();
                if known.get(&name).map(|k| &k.spec) != Some(&g.spec) {
                    known.insert(name, g);
                    publish(&known);
                }
            }
            Ok(watcher::Event::Delete(g)) => {
                if known
                    .remove(g.metadata.name.as_deref().unwrap_or_default())
                    .is_some()
                {
                    publish(&known);
                }
            }
            // Fail closed: until a list succeeds nothing is honoured (the
            // server stays unready), so say what usually fixes it.
            Err(err) => tracing::warn!(
                error = %err,
                "CredentialGrant watch failed; retrying (is the CRD installed, kubectl apply --server-side -f crds/, \
                 and may latchkey list credentialgrants.latchkey.dev?)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: &[String] = &[];

    fn grant(
        namespaces: &[&str],
        scopes: &[&str],
        audiences: &[&str],
        subjects: &[&str],
    ) -> CredentialGrantSpec {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        CredentialGrantSpec {
            namespaces: v(namespaces),
            scopes: v(scopes),
            audiences: v(audiences),
            subjects: v(subjects),
            introspect_namespaces: None,
        }
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn two_teams(strict: bool) -> Grants {
        Grants::new(
            vec![
                (
                    "team-a".into(),
                    grant(
                        &["team-a"],
                        &["orders:*", "inventory:read"],
                        &["orders.example.com"],
                        &["orders-svc"],
                    ),
                ),
                (
                    "team-b".into(),
                    grant(&["team-b", "team-b-*"], &["billing:*"], &[], &[]),
                ),
                (
                    "team-b-extra".into(),
                    grant(&["team-b"], &["reports:read"], &["*"], &["billing-*"]),
                ),
            ],
            strict,
        )
    }

    #[test]
    fn patterns_are_exact_prefix_or_everything() {
        assert!(pattern_matches("orders:read", "orders:read"));
        assert!(!pattern_matches("orders:read", "orders:readx"));
        assert!(pattern_matches("orders:*", "orders:write"));
        assert!(pattern_matches("orders:*", "orders:"));
        assert!(!pattern_matches("orders:*", "order"));
        assert!(pattern_matches("*", "anything"));
        // Only a trailing * is a wildcard.
        assert!(!pattern_matches("a*b", "axb"));
        assert!(pattern_matches("a*b", "a*b"));
        assert!(pattern_matches("team-b-*", "team-b-dev"));
        assert!(!pattern_matches("team-b-*", "team-b"));
    }

    #[test]
    fn a_selected_namespace_gets_the_union_of_its_grants() {
        let g = two_teams(false);
        assert!(g.is_restricted("team-a") && g.is_restricted("team-b") && g.is_restricted("team-b-dev"));
        assert!(g.scope_granted("team-a", "orders:write"));
        assert!(g.scope_granted("team-a", "inventory:read"));
        assert!(!g.scope_granted("team-a", "inventory:write"));
        assert!(!g.scope_granted("team-a", "billing:read"));
        // team-b: both grants.
        assert!(g.scope_granted("team-b", "billing:read"));
        assert!(g.scope_granted("team-b", "reports:read"));
        assert!(!g.scope_granted("team-b", "orders:write"));
        // team-b-dev: only the first grant selects it.
        assert!(g.scope_granted("team-b-dev", "billing:read"));
        assert!(!g.scope_granted("team-b-dev", "reports:read"));
        assert!(g.audience_granted("team-b", "anything.example.com"));
        assert!(!g.audience_granted("team-b-dev", "anything.example.com"));
        assert!(g.audience_granted("team-a", "orders.example.com"));
        assert!(!g.audience_granted("team-a", "billing.example.com"));
    }

    #[test]
    fn an_unselected_namespace_is_open_unless_strict() {
        let open = two_teams(false);
        assert!(!open.is_restricted("team-c"));
        assert!(open.scope_granted("team-c", "orders:write"));
        assert!(open.subject_granted("team-c", "orders-svc"));
        let e = open.effective("team-c", "k", Some("orders-svc"), &strings(&["x"]), NONE);
        assert_eq!(e.subject, "orders-svc");
        assert_eq!(e.scopes, ["x"]);
        assert_eq!(e.audiences, Audiences::Any);
        // No grants at all: exactly today's behaviour.
        let none = Grants::default();
        let e = none.effective("ns", "k", None, &strings(&["a", "b"]), &strings(&["aud"]));
        assert_eq!(e.subject, "ns/k");
        assert_eq!(e.scopes, ["a", "b"]);
        assert_eq!(e.audiences, Audiences::Only(strings(&["aud"])));

        let strict = two_teams(true);
        assert!(strict.is_restricted("team-c"));
        assert!(!strict.scope_granted("team-c", "anything"));
        assert!(!strict.audience_granted("team-c", "anything"));
        assert!(!strict.subject_granted("team-c", "orders-svc"));
        let e = strict.effective("team-c", "k", Some("orders-svc"), &strings(&["x"]), NONE);
        assert_eq!(e.subject, "team-c/k");
        assert!(e.scopes.is_empty());
        assert_eq!(e.audiences, Audiences::Only(vec![]), "never anywhere by omission");
        // Strict mode changes nothing for a selected namespace.
        assert!(strict.scope_granted("team-a", "orders:write"));
    }

    #[test]
    fn the_default_subject_is_always_allowed_and_others_need_a_grant() {
        for g in [two_teams(false), two_teams(true)] {
            assert!(g.subject_granted("team-b", "team-b/anything"));
            assert!(g.subject_granted("team-c", "team-c/k"));
            assert!(
                !g.subject_granted("team-b", "team-bx/k"),
                "a prefix of the name is not the namespace"
            );
            assert!(!g.subject_granted("team-b", "orders-svc"), "team-a's subject");
            assert!(
                !g.subject_granted("team-b", "team-a/billing"),
                "team-a's default subject"
            );
            assert!(g.subject_granted("team-b", "billing-api"));
            assert!(g.subject_granted("team-a", "orders-svc"));
        }
        let g = two_teams(false);
        let e = g.effective("team-b", "k", Some("orders-svc"), NONE, NONE);
        assert_eq!(
            e.subject, "team-b/k",
            "an ungranted subject falls back to the default"
        );
    }

    #[test]
    fn effective_scopes_and_audiences_are_the_claims_that_are_granted() {
        let g = two_teams(false);
        let e = g.effective(
            "team-a",
            "k",
            None,
            &strings(&["orders:write", "billing:read", "inventory:read"]),
            &strings(&["orders.example.com", "billing.example.com"]),
        );
        assert_eq!(e.scopes, ["orders:write", "inventory:read"]);
        assert_eq!(e.audiences, Audiences::Only(strings(&["orders.example.com"])));
        // No audience claimed: the granted exact audiences.
        let e = g.effective("team-a", "k", None, NONE, NONE);
        assert_eq!(e.audiences, Audiences::Only(strings(&["orders.example.com"])));
        // team-b has a grant with `*`: anywhere.
        assert_eq!(
            g.effective("team-b", "k", None, NONE, NONE).audiences,
            Audiences::Any
        );
        // team-b-dev's grant lists no audience: none.
        assert_eq!(
            g.effective("team-b-dev", "k", None, NONE, NONE).audiences,
            Audiences::Only(vec![])
        );
        // Every claimed audience ungranted: none, not anywhere.
        assert_eq!(
            g.effective("team-a", "k", None, NONE, &strings(&["billing.example.com"]))
                .audiences,
            Audiences::Only(vec![])
        );
        // Prefix patterns match claims but are not handed out by omission.
        let p = Grants::new(
            vec![("p".into(), grant(&["p"], &[], &["api-*", "x"], &[]))],
            false,
        );
        assert_eq!(
            p.effective("p", "k", None, NONE, &strings(&["api-1"])).audiences,
            Audiences::Only(strings(&["api-1"]))
        );
        assert_eq!(
            p.effective("p", "k", None, NONE, NONE).audiences,
            Audiences::Only(strings(&["x"]))
        );
    }

    #[test]
    fn ungranted_claims_are_named_with_what_to_ask_for() {
        let g = two_teams(false);
        let claims = Claims {
            scopes: vec![
                ("orders:write".into(), "spec.scopes".into()),
                ("billing:read".into(), "spec.scopes".into()),
            ],
            audiences: vec![("orders.example.com".into(), "spec.audiences".into())],
            subject: Some("orders-svc".into()),
        };
        let u = g.ungranted("team-b-dev", &claims);
        assert_eq!(
            u,
            [
                Ungranted::Scope {
                    value: "orders:write".into(),
                    field: "spec.scopes".into()
                },
                Ungranted::Audience {
                    value: "orders.example.com".into(),
                    field: "spec.audiences".into()
                },
                Ungranted::Subject {
                    value: "orders-svc".into()
                },
            ]
        );
        let m = g.message("team-b-dev", &u[..1]);
        assert_eq!(
            m,
            "scope orders:write (spec.scopes) is not granted to namespace team-b-dev by any CredentialGrant \
             (the grants selecting it: team-b); ask the platform team for a CredentialGrant that gives it to \
             namespace team-b-dev, or remove it"
        );
        let m = g.message("team-b-dev", &u);
        assert!(m.contains("are not granted") && m.contains("subject orders-svc (spec.subject)"));
        assert!(
            m.contains("a subject starting with team-b-dev/ needs no grant"),
            "{m}"
        );
        assert!(g.ungranted("team-c", &claims).is_empty(), "open namespace");
        let strict = two_teams(true);
        let m = strict.message("team-c", &strict.ungranted("team-c", &claims));
        assert!(
            m.contains("selected by no CredentialGrant") && m.contains("--require-grants"),
            "{m}"
        );
    }

    #[test]
    fn introspection_is_limited_to_the_namespaces_a_grant_covers() {
        let mut a = grant(&["team-a"], &["latchkey:introspect"], &[], &[]);
        let mut gw = grant(&["gateway"], &["latchkey:introspect"], &[], &[]);
        gw.introspect_namespaces = Some(strings(&["team-a", "team-b-*"]));
        a.introspect_namespaces = None;
        let g = Grants::new(vec![("a".into(), a), ("gw".into(), gw)], false);
        assert!(
            g.may_introspect("team-a", "team-a"),
            "its own namespace by default"
        );
        assert!(!g.may_introspect("team-a", "gateway"));
        assert!(!g.may_introspect("team-a", "open"));
        assert!(g.may_introspect("gateway", "team-a"));
        assert!(g.may_introspect("gateway", "team-b-dev"));
        assert!(!g.may_introspect("gateway", "gateway"), "only what it lists");
        // An unrestricted caller sees unrestricted namespaces only.
        assert!(g.may_introspect("open", "other-open"));
        assert!(!g.may_introspect("open", "team-a"));
        // Without grants: everything, as before.
        assert!(Grants::default().may_introspect("x", "y"));
        // Strict, no grant: nothing.
        let s = Grants::new(vec![], true);
        assert!(!s.may_introspect("x", "x"));
    }
}
