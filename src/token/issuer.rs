//! Issuer paths: the server finds discovery, JWKS and the token endpoint of a
//! TokenPolicy by its issuer URL's path, so a path belongs to one policy.

use crate::crd::TokenPolicy;
use crate::token::schedule;

pub use crate::crd::issuer_path;

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
