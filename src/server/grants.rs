//! CredentialGrants in the auth server: the index keeps each ApiKey's
//! claims and answers with what the grants in force let it have
//! ([`crate::grants::Grants::effective`]), computed when the ApiKey or a
//! grant changes, never per request. A claim forced past the webhook (or
//! made before a grant narrowed) is therefore never honoured.
//!
//! The feed watches CredentialGrants (cluster-scoped, even when the server
//! watches one namespace) and swaps the whole set into the index on every
//! change. Until the first full list is in, the index is not ready (the
//! server answers 503): it never honours a claim on the assumption that
//! no grant exists.

use super::index::Index;
use super::owner::{ClaimedAs, IdentityText, IndexedApiKey, claimed_as};
use crate::crd::{ApiKey, CredentialGrant};
use crate::grants::{Audiences, Grants};
use kube::Api;
use std::sync::Arc;

/// The audience list of an ApiKey valid for no audience (a restricted
/// namespace without granted audiences): the empty string, which no route
/// requirement (`audience=` is ignored when empty) and no TokenPolicy
/// audience (at least one character) can equal. An empty list still means
/// every audience.
pub const NO_AUDIENCE: &str = "";

/// What an ApiKey's spec claims (kept to re-compute its identity when the
/// grants change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    pub subject: Option<Box<str>>,
    pub scopes: Box<[Box<str>]>,
    pub audiences: Box<[Box<str>]>,
}

impl Claimed {
    pub fn of(api_key: &ApiKey) -> Self {
        let boxed = |v: &[String]| v.iter().map(|s| s.as_str().into()).collect();
        Self {
            subject: api_key.spec.subject.as_deref().map(Into::into),
            scopes: boxed(&api_key.spec.scopes),
            audiences: boxed(&api_key.spec.audiences),
        }
    }
}

/// The identity an ApiKey is honoured with, as the index stores it, and
/// its claims.
pub struct Granted {
    pub identity: IdentityText,
    pub audiences: Box<[Box<str>]>,
    pub claimed: ClaimedAs,
}

/// The identity of ApiKey `namespace/name` (at `resource_version`) with
/// `claimed` under `grants`.
pub fn granted(
    grants: &Grants,
    namespace: &str,
    name: &str,
    resource_version: &str,
    claimed: Claimed,
) -> Granted {
    let effective = grants.effective(
        namespace,
        name,
        claimed.subject.as_deref(),
        &claimed.scopes,
        &claimed.audiences,
    );
    let audiences: Box<[Box<str>]> = match effective.audiences {
        Audiences::Any => Box::default(),
        Audiences::Only(list) if list.is_empty() => [NO_AUDIENCE.into()].into(),
        Audiences::Only(list) => list.into_iter().map(Into::into).collect(),
    };
    let identity = IdentityText::new(
        namespace,
        name,
        &effective.subject,
        &effective.scopes.join(" "),
        resource_version,
    );
    let claimed = claimed_as(claimed, &identity, &audiences);
    Granted {
        identity,
        audiences,
        claimed,
    }
}

/// `owner` re-computed under `grants` (everything else, its rate-limit
/// bucket and last use included, carried over).
pub fn regranted(owner: &IndexedApiKey, grants: &Grants) -> IndexedApiKey {
    let g = granted(
        grants,
        owner.namespace(),
        owner.name(),
        owner.identity.resource_version(),
        owner.claimed().into_owned(),
    );
    IndexedApiKey {
        identity: g.identity,
        audiences: g.audiences,
        usage: owner.usage.clone(),
        status_last_used: owner.status_last_used,
        stored_usage: owner.stored_usage.clone(),
        stale_usage: owner.stale_usage.clone(),
        stored_retired: owner.stored_retired,
        token_policy: owner.token_policy.clone(),
        labels: owner.labels.clone(),
        claimed: g.claimed,
    }
}

/// The audiences to show (in `/introspect`): without the [`NO_AUDIENCE`] marker.
pub fn shown_audiences(owner: &IndexedApiKey) -> Vec<&str> {
    owner
        .audiences
        .iter()
        .map(|a| &**a)
        .filter(|a| *a != NO_AUDIENCE)
        .collect()
}

/// Keeps the index's grants up to date from a watch of CredentialGrants
/// until the stream ends. `strict`: `--require-grants`.
pub async fn feed(api: Api<CredentialGrant>, index: Arc<Index>, strict: bool) {
    crate::grants::watch(api, strict, move |grants| index.set_grants(grants)).await
}
