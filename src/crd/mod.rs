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
pub use token_policy::{
    CustomClaim, Permission, SigningAlgorithm, SigningKeyRecord, SigningKeys, TokenPolicy, TokenPolicySpec,
    TokenPolicyStatus, default_path_owner, issuer_path,
};
pub use token_policy::{Delegation, RevokedSubject, TrustedIssuer};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every latchkey resource.
pub const GROUP: &str = "latchkey.dev";

/// Every CRD latchkey serves, with the file name it has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("apikeys.latchkey.dev.yaml", awaiting_first_status(ApiKey::crd())),
        (
            "tokenpolicies.latchkey.dev.yaml",
            awaiting_first_status(TokenPolicy::crd()),
        ),
        ("credentialgrants.latchkey.dev.yaml", CredentialGrant::crd()),
    ]
}

/// `crd` with a default for `status`: `{observedGeneration: 0}`.
///
/// kstatus (what Flux's health checks use) reads only `status` (and
/// `metadata.generation`, `deletionTimestamp`); with no status at all it
/// calls an object `Current`. The status subresource makes the API server
/// drop `status` from a create (after mutating admission, so no webhook can
/// set it either), but the API server applies a schema default whenever it
/// reads an object from storage: an ApiKey or TokenPolicy that latchkey has
/// not reconciled yet reads `status: {observedGeneration: 0}`, generation 1
/// is not observed, and kstatus says `InProgress` until latchkey's first
/// status write replaces it. Nothing is stored: the default is applied on
/// each read, and a real status (always with `observedGeneration`) wins.
fn awaiting_first_status(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|props| props.get_mut("status"))
            .expect("a kind with a status subresource has a status schema");
        status.default = Some(JSON(serde_json::json!({ "observedGeneration": 0 })));
    }
    crd
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CRD always serializes to YAML")
}
