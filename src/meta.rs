//! Shared vocabulary: the names latchkey writes on Kubernetes objects and
//! reads back (field manager, labels, annotations, data keys). Everything
//! else depends on this module; it depends on nothing.

/// The one field manager of every write latchkey makes.
pub const FIELD_MANAGER: &str = "latchkey";

/// Label on every Secret latchkey writes (the controller watches only these).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "latchkey";
/// Label on the signing-key Secret and the JWKS ConfigMap: the policy's name.
pub const TOKEN_POLICY_LABEL: &str = "latchkey.dev/token-policy";

/// Annotation with the public id of the key the Secret holds.
pub const KEY_ID_ANNOTATION: &str = "latchkey.dev/key-id";
/// Annotation with the revision (count of delivered keys) of the key the Secret holds.
pub const REVISION_ANNOTATION: &str = "latchkey.dev/revision";
/// Annotation with the instant (RFC 3339) the Secret's key was delivered.
pub const ROTATED_AT_ANNOTATION: &str = "latchkey.dev/rotated-at";
/// The annotation that asks for one rotation now (ApiKey or TokenPolicy): any new value.
pub const ROTATE_ANNOTATION: &str = "latchkey.dev/rotate";

/// The data key of the Secret that holds the API key.
pub const SECRET_DATA_KEY: &str = "api-key";
/// The JWKS ConfigMap's data key.
pub const JWKS_DATA_KEY: &str = "jwks.json";
/// Suffix of a private key's data key in a signing-key Secret (`<kid>.pem`).
pub const PEM_SUFFIX: &str = ".pem";
