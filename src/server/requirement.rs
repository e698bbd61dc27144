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
