//! The CredentialGrant custom resource (`latchkey.dev/v1alpha1`, cluster
//! scoped, short name `cg`): what the platform team lets namespaces claim.
//!
//! An ApiKey's scopes, audiences and subject, and a TokenPolicy's scopes and
//! audiences, are written by whoever may create them in a namespace. A
//! CredentialGrant, which only holders of cluster-scoped rights can write,
//! says which namespaces may claim which of them (in the spirit of
//! cert-manager's approver-policy: a cluster-scoped policy that namespaced
//! requests are checked against). It is named for what it does (it grants
//! claims to namespaces), not "Policy", which TokenPolicy already is.
//! The rules ([`crate::grants`]) are pure; the webhook refuses claims
//! beyond them and the auth server never honours one.

// Several `printcolumn(...)` entries look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use super::rules;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Spec of a CredentialGrant: which namespaces, and what they may claim.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "CredentialGrant",
    plural = "credentialgrants",
    shortname = "cg",
    category = "latchkey",
    derive = "PartialEq",
    doc = "A CredentialGrant (cluster-scoped, written by the platform team) lets the namespaces it \
           selects claim the scopes, audiences and subjects it lists in their ApiKeys and \
           TokenPolicies. A namespace selected by at least one grant may claim only the union of \
           its grants; one selected by none is unrestricted unless latchkey runs with \
           --require-grants (chart value grants.strict), which makes it claim nothing. The \
           default subject <namespace>/<name> is always allowed. Patterns: an exact value, a \
           prefix ending in '*' (orders:*), or '*' alone.",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(name = "Scopes", type_ = "string", json_path = ".spec.scopes"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CredentialGrantSpec {
    /// The namespaces this grant selects: names or patterns (`team-a`,
    /// `team-a-*`, `*`). 1–64 entries.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::NAMESPACE_PATTERN_ENTRIES)
        .message("every entry of spec.namespaces must be a namespace name, or a prefix of one followed by '*' (team-a-*), or '*'"))]
    pub namespaces: Vec<String>,

    /// Scopes the selected namespaces may claim (ApiKey `spec.scopes`,
    /// TokenPolicy `spec.allowedScopes` and roles): exact (`orders:read`)
    /// or prefix patterns (`orders:*`). `latchkey:introspect` lets their
    /// keys call `/introspect`. At most 128.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 128)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9._:/-]*[*]?$'))")
        .message("every entry of spec.scopes must be a scope (letters, digits and . _ : / -), optionally ending in '*' as a prefix pattern"))]
    pub scopes: Vec<String>,

    /// Audiences the selected namespaces may claim (ApiKey and TokenPolicy
    /// `spec.audiences`): exact, prefix patterns ending in `*`, or `*`
    /// (any). An ApiKey that lists no audience gets the exact ones listed
    /// here (anywhere only with `*`). At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::PRINTABLE_ENTRIES).message(rules::PRINTABLE_AUDIENCES_MESSAGE))]
    pub audiences: Vec<String>,

    /// Custom subjects (ApiKey `spec.subject`) the selected namespaces may
    /// claim: exact or prefix patterns ending in `*`. The default subject
    /// `<namespace>/<name>`, and any subject starting with `<namespace>/`,
    /// needs no grant. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9._:@/+=-]*[*]?$'))")
        .message("every entry of spec.subjects must be a subject (letters, digits and . _ : @ / + = -), optionally ending in '*' as a prefix pattern"))]
    pub subjects: Vec<String>,

    /// Whose credentials a key of the selected namespaces that holds
    /// `latchkey:introspect` may introspect: namespace names or patterns.
    /// Default: its own namespace only. At most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::NAMESPACE_PATTERN_ENTRIES)
        .message("every entry of spec.introspectNamespaces must be a namespace name, or a prefix of one followed by '*', or '*'"))]
    pub introspect_namespaces: Option<Vec<String>>,
}
