//! The public JWK Set of a TokenPolicy, from its status (what the JWKS
//! ConfigMap holds and the server serves).

use crate::crd::TokenPolicyStatus;

/// The JWKS document of the keys status lists (unreadable entries skipped).
pub fn jwks_json(status: &TokenPolicyStatus) -> String {
    let keys: Vec<serde_json::Value> = status
        .keys
        .iter()
        .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}
