//! Custom resource types. `latchkey crd` prints [`all`] as YAML; the files in
//! `crds/` are that output, and `tests/crd_drift.rs` fails when they differ.
//!
//! The kinds declare alike fields (audiences, the rotation bookkeeping of
//! their statuses, conditions) each on its own, on purpose: every field's
//! doc comment is what `kubectl explain` shows for that kind, and its bounds
//! are that kind's. Only the CEL rules they share are written once
//! ([`rules`]).

mod api_key;
mod credential_grant;
mod rules;
mod token_policy;

pub use api_key::{
    ApiKey, ApiKeySpec, ApiKeyStatus, DeniedCounts, KeyRecord, KeyUsage, RateLimit, RetiredKeyPresented,
    Rotation, SecretTemplate, TokenPolicyRef,
};
pub use credential_grant::{CredentialGrant, CredentialGrantSpec};
pub use token_policy::Delegation;
pub use token_policy::{
    CustomClaim, SigningAlgorithm, SigningKeyRecord, SigningKeys, TokenPolicy, TokenPolicySpec,
    TokenPolicyStatus, default_path_owner, issuer_path,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every latchkey resource.
pub const GROUP: &str = "latchkey.dev";

/// Every CRD latchkey serves, with the file name it has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("apikeys.latchkey.dev.yaml", ApiKey::crd()),
        ("tokenpolicies.latchkey.dev.yaml", TokenPolicy::crd()),
        ("credentialgrants.latchkey.dev.yaml", CredentialGrant::crd()),
    ]
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CRD always serializes to YAML")
}
