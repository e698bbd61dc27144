//! What a route requires ([`Requirement`], from the auth URL's query or
//! gRPC `context_extensions`) and what a verified credential offers to it
//! ([`Offer`]): the first requirement a credential fails becomes the
//! denial. `resource=path` judges the original request's path against a
//! token's permissions ([`crate::token::permissions`], [`crate::token::path`]).

use super::decision::{Decision, Invalid};
use super::index::IndexedApiKey;
use crate::token::path::{self, PathRefused};
pub use crate::token::permissions::Denial;

/// What a route requires, from the query of the auth URL the proxy calls:
/// `scope` (repeatable; every one is required), `audience`, `namespace`
/// (repeatable; any one of them) and `issuer` (repeatable; any one of them;
/// an API key has no issuer, so only tokens pass a route that names one)
/// and `resource=path` (a token's permissions must cover the original
/// request's path, see [`crate::token::permissions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub namespaces: Vec<String>,
    pub issuers: Vec<String>,
    pub resource: ResourceRule,
    /// The original request's target as the route's proxy reports it
    /// (filled by the front end when `resource` is [`ResourceRule::Path`]).
    pub target: Option<String>,
}

/// The `resource=` of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResourceRule {
    /// No `resource=`: scopes only.
    #[default]
    Any,
    /// `resource=path`: the permission must cover the request's path.
    Path,
    /// Any other value: every request is refused (`400`), so that a typo
    /// never turns the check off.
    Unknown,
}

impl Requirement {
    /// The names a requirement is made of (the auth URL's query parameters,
    /// the gRPC `context_extensions` keys); any other name is ignored.
    pub const NAMES: [&'static str; 5] = ["scope", "audience", "namespace", "issuer", "resource"];

    pub fn from_query(query: Option<&str>) -> Self {
        Self::from_pairs(form_urlencoded::parse(query.unwrap_or_default().as_bytes()))
    }

    /// The requirement of `(name, value)` pairs: a query's parameters, or
    /// gRPC `context_extensions`. Unknown names are ignored.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut req = Requirement::default();
        for (name, value) in pairs {
            let value = value.as_ref();
            match name.as_ref() {
                // `scope=a b` (OAuth style) and `scope=a&scope=b` both work.
                "scope" => req
                    .scopes
                    .extend(value.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
                "audience" if !value.is_empty() => req.audience = Some(value.to_owned()),
                "namespace" if !value.is_empty() => req.namespaces.push(value.to_owned()),
                "issuer" if !value.is_empty() => req.issuers.push(value.to_owned()),
                "resource" => {
                    req.resource = match (req.resource, value) {
                        (ResourceRule::Any | ResourceRule::Path, "path") => ResourceRule::Path,
                        _ => ResourceRule::Unknown,
                    }
                }
                _ => {}
            }
        }
        req
    }

    /// The first requirement that `offer`, a credential from an ApiKey in
    /// `namespace`, fails, as the denial to answer.
    pub fn check(&self, offer: &impl Offer, namespace: &str) -> Result<(), Decision> {
        if let Some(audience) = &self.audience
            && !offer.audience_ok(audience)
        {
            return Err(Decision::Invalid(Invalid::Audience));
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return Err(Decision::Invalid(Invalid::Namespace));
        }
        if !self.issuers.is_empty()
            && !offer
                .issuer()
                .is_some_and(|iss| self.issuers.iter().any(|i| i == iss))
        {
            return Err(Decision::Invalid(Invalid::Issuer));
        }
        let denial = match self.resource {
            ResourceRule::Unknown => {
                return Err(Decision::InvalidRequest(
                    "the route's resource= is not 'path' (the only kind latchkey knows); fix the auth URL",
                ));
            }
            ResourceRule::Path => offer.permits(&self.scopes, &|| {
                path::request_path(self.target.as_deref().ok_or(PathRefused::Missing)?)
            }),
            ResourceRule::Any => match self.scopes.iter().all(|s| offer.has_scope(s)) {
                true => Ok(()),
                false => Err(Denial::Scope),
            },
        };
        match denial {
            Ok(()) => Ok(()),
            Err(Denial::Path(refused)) => Err(Decision::InvalidRequest(refused.description())),
            Err(why) => Err(Decision::InsufficientScope {
                required: self.scopes.join(" "),
                resource: why == Denial::Resource,
            }),
        }
    }
}

/// The requirements of the auth URLs one thread has answered lately, by
/// query. A proxy calls one auth URL per route, so a query repeats on every
/// request of the route: parsed once per thread (no percent-decoding, no
/// allocation per request), not once per request. Bounded: at most
/// [`RequirementMemo::ENTRIES`] queries of at most
/// [`RequirementMemo::LONGEST_QUERY`] bytes are kept, replaced in turn, and
/// a longer query is parsed every time, so a client calling the auth server
/// directly with ever new queries costs a parse, as without the memo, and
/// no memory beyond the last long query's parse (one per thread). The target of a `resource=path` route is the request's own:
/// [`Requirement::set_target`] before every decision.
#[derive(Debug, Default)]
pub struct RequirementMemo {
    entries: Vec<(Box<str>, Requirement)>,
    /// The entry the next new query replaces, once full.
    next: usize,
    /// A query too long to keep, parsed for this request only.
    scratch: Requirement,
}

impl RequirementMemo {
    pub const ENTRIES: usize = 16;
    pub const LONGEST_QUERY: usize = 512;

    /// The requirement of an auth URL's `query` (what
    /// [`Requirement::from_query`] makes of it), with the target of the
    /// last request it served: set it before deciding.
    pub fn get(&mut self, query: Option<&str>) -> &mut Requirement {
        let query = query.unwrap_or_default();
        if query.len() > Self::LONGEST_QUERY {
            self.scratch = Requirement::from_query(Some(query));
            return &mut self.scratch;
        }
        let at = match self.entries.iter().position(|(q, _)| **q == *query) {
            Some(at) => at,
            None if self.entries.len() < Self::ENTRIES => {
                self.entries
                    .push((query.into(), Requirement::from_query(Some(query))));
                self.entries.len() - 1
            }
            None => {
                let at = self.next;
                self.next = (at + 1) % Self::ENTRIES;
                self.entries[at] = (query.into(), Requirement::from_query(Some(query)));
                at
            }
        };
        &mut self.entries[at].1
    }
}

impl Requirement {
    /// Sets the original request's target (reusing the previous one's
    /// buffer): `None` when the request reports none.
    pub fn set_target(&mut self, target: Option<&str>) {
        match (target, &mut self.target) {
            (Some(t), Some(kept)) => {
                kept.clear();
                kept.push_str(t);
            }
            (target, slot) => *slot = target.map(str::to_owned),
        }
    }
}

/// What a verified credential offers to a route's requirement: an API key
/// (its ApiKey, [`IndexedApiKey`]) or a token (its claims).
pub trait Offer {
    fn audience_ok(&self, audience: &str) -> bool;
    fn has_scope(&self, scope: &str) -> bool;
    /// A token's `iss`; `None` for an API key.
    fn issuer(&self) -> Option<&str>;
    /// Whether it may use every scope of `scopes` on the request's path
    /// (`path`, asked only when a permission is limited to resources). A
    /// credential without resources (an API key, a token without a role):
    /// its scopes alone.
    fn permits<'p>(
        &self,
        scopes: &[String],
        _path: &dyn Fn() -> Result<&'p str, PathRefused>,
    ) -> Result<(), Denial> {
        match scopes.iter().all(|s| self.has_scope(s)) {
            true => Ok(()),
            false => Err(Denial::Scope),
        }
    }
}

impl Offer for IndexedApiKey {
    /// An ApiKey without audiences is valid anywhere.
    fn audience_ok(&self, audience: &str) -> bool {
        self.audiences.is_empty() || self.audiences.iter().any(|a| **a == *audience)
    }

    fn has_scope(&self, scope: &str) -> bool {
        IndexedApiKey::has_scope(self, scope)
    }

    fn issuer(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_answers_what_the_query_says_and_stays_bounded() {
        let mut memo = RequirementMemo::default();
        let queries: Vec<String> = (0..3 * RequirementMemo::ENTRIES)
            .map(|i| format!("scope=orders%3Aread+s{i}&namespace=shop&resource=path"))
            .collect();
        // Twice through more queries than it keeps: every answer is the
        // parse of its own query, whatever was kept or replaced before.
        for _ in 0..2 {
            for q in &queries {
                let mut expected = Requirement::from_query(Some(q));
                let got = memo.get(Some(q));
                got.set_target(None);
                expected.set_target(None);
                assert_eq!(*got, expected, "{q}");
                assert!(memo.entries.len() <= RequirementMemo::ENTRIES);
            }
        }
        assert_eq!(*memo.get(None), Requirement::default());
        assert_eq!(*memo.get(Some("")), Requirement::default());
        let long = format!("scope={}", "a".repeat(RequirementMemo::LONGEST_QUERY));
        assert_eq!(
            memo.get(Some(&long)).scopes,
            vec!["a".repeat(RequirementMemo::LONGEST_QUERY)]
        );
        assert!(
            memo.entries
                .iter()
                .all(|(q, _)| q.len() <= RequirementMemo::LONGEST_QUERY),
            "a long query is not kept"
        );
    }

    #[test]
    fn a_target_is_the_requests_own() {
        let mut memo = RequirementMemo::default();
        let r = memo.get(Some("scope=a&resource=path"));
        r.set_target(Some("/calendar-events/acme/1"));
        assert_eq!(r.target.as_deref(), Some("/calendar-events/acme/1"));
        // The next request of the same route reports another target, or
        // none: never the previous request's.
        let r = memo.get(Some("scope=a&resource=path"));
        r.set_target(Some("/x"));
        assert_eq!(r.target.as_deref(), Some("/x"));
        let r = memo.get(Some("scope=a&resource=path"));
        r.set_target(None);
        assert_eq!(r.target, None);
    }
}
