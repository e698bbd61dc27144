//! The identity headers latchkey emits on an allow, the complete fixed set
//! ([`IDENTITY_HEADERS`]) plus the operator's per-claim headers
//! ([`ClaimHeader`], `--claim-header`), and the [`Identity`] a decision
//! carries. Every allow carries every header of the set, empty when the
//! credential has no value for it, so that a proxy that overwrites the
//! listed headers also erases a client's copy. Custom claims are open-ended
//! while proxies overwrite only headers they name (nginx cannot strip by
//! prefix), so they travel in one fixed header, `X-Auth-Claims` (JSON), and
//! get a header of their own only when the operator names them.

use super::index::{IndexedApiKey, KeyId};
use axum::http::{HeaderName, HeaderValue};

/// The ApiKey's `spec.subject` (default `<namespace>/<name>`), or a token's `sub`.
pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
/// Space-separated scopes of the key, or of the token.
pub const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
/// The key id (for a token: its `client_id`, the key that minted it).
pub const X_AUTH_KEY_ID: HeaderName = HeaderName::from_static("x-auth-key-id");
/// The namespace of the ApiKey the credential comes from (for a token: of
/// the ApiKey whose key minted it, as the index knows it, not a claim).
pub const X_AUTH_NAMESPACE: HeaderName = HeaderName::from_static("x-auth-namespace");
/// A token's `role`; empty for an API key and a token without one.
pub const X_AUTH_ROLE: HeaderName = HeaderName::from_static("x-auth-role");
/// A token's custom claims as one compact JSON object (`{}` for an API key).
pub const X_AUTH_CLAIMS: HeaderName = HeaderName::from_static("x-auth-claims");
/// A delegated token's actor (`act.sub`: the subject of the ApiKey that
/// minted it for the user in `X-Auth-Subject`); empty otherwise.
pub const X_AUTH_ACTOR: HeaderName = HeaderName::from_static("x-auth-actor");
/// Prefix of the per-claim headers the operator lists (`--claim-header`).
pub const CLAIM_HEADER_PREFIX: &str = "x-auth-claim-";
/// Every identity header an allow carries, always (the fixed list every
/// proxy recipe names), besides the operator's `--claim-header`s.
pub const IDENTITY_HEADERS: [HeaderName; 7] = [
    X_AUTH_SUBJECT,
    X_AUTH_SCOPES,
    X_AUTH_KEY_ID,
    X_AUTH_NAMESPACE,
    X_AUTH_ROLE,
    X_AUTH_CLAIMS,
    X_AUTH_ACTOR,
];

pub(crate) const EMPTY: HeaderValue = HeaderValue::from_static("");
const NO_CLAIMS: HeaderValue = HeaderValue::from_static("{}");

/// A custom claim the operator wants as a header of its own
/// (`--claim-header tenant` → `X-Auth-Claim-tenant`), emitted on every allow
/// (empty when the credential has no such claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The claim's name, as the TokenPolicy's `customClaims` spells it.
    pub claim: String,
    pub header: HeaderName,
}

impl std::str::FromStr for ClaimHeader {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && name.len() <= 63;
        if !valid {
            return Err(format!(
                "{name:?} is not a custom claim name (letters, digits, '_' or '-', starting with a letter)"
            ));
        }
        let header = HeaderName::from_bytes(format!("{CLAIM_HEADER_PREFIX}{name}").as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            claim: name.to_owned(),
            header,
        })
    }
}

/// The identity headers of an allow. Fresh copies, not clones of the
/// index's values: a clone would bump a reference count that every request
/// for that key shares across cores.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: HeaderValue,
    pub scopes: HeaderValue,
    pub key_id: HeaderValue,
    /// Set by `conclude` from the ApiKey the credential comes from.
    pub namespace: HeaderValue,
    /// The name of that ApiKey (set with the namespace; no header of its
    /// own: the gRPC answer's dynamic metadata carries it).
    pub api_key_name: HeaderValue,
    /// Empty without a role.
    pub role: HeaderValue,
    /// A JSON object, `{}` without custom claims.
    pub claims: HeaderValue,
    /// A token's string custom claims by name (for `--claim-header`).
    pub claim_values: Vec<(Box<str>, HeaderValue)>,
    /// A delegated token's `act.sub`; empty otherwise.
    pub actor: HeaderValue,
}

impl Identity {
    /// The identity of an API key: its ApiKey's subject and scopes, no role,
    /// no claims.
    pub fn of_key(owner: &IndexedApiKey, key_id: &KeyId) -> Self {
        Self {
            subject: copy(&owner.subject_header),
            scopes: copy(&owner.scopes_header),
            key_id: HeaderValue::from_bytes(key_id).unwrap_or(EMPTY),
            namespace: EMPTY,
            api_key_name: EMPTY,
            role: EMPTY,
            claims: NO_CLAIMS,
            claim_values: Vec::new(),
            actor: EMPTY,
        }
    }
}

impl Identity {
    /// Fresh copies of every value (see the type's note on clones).
    pub fn copied(&self) -> Self {
        Self {
            subject: copy(&self.subject),
            scopes: copy(&self.scopes),
            key_id: copy(&self.key_id),
            namespace: copy(&self.namespace),
            api_key_name: copy(&self.api_key_name),
            role: copy(&self.role),
            claims: copy(&self.claims),
            claim_values: self
                .claim_values
                .iter()
                .map(|(n, v)| (n.clone(), copy(v)))
                .collect(),
            actor: copy(&self.actor),
        }
    }
}

/// The `X-Auth-Claims` value of a token's custom claims: compact JSON with
/// sorted names, non-ASCII escaped as `\uXXXX` (a header value is ASCII).
pub fn claims_header(custom: &std::collections::BTreeMap<String, serde_json::Value>) -> HeaderValue {
    if custom.is_empty() {
        return NO_CLAIMS;
    }
    let json = serde_json::to_string(custom).unwrap_or_else(|_| "{}".into());
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    HeaderValue::from_str(&ascii).unwrap_or(NO_CLAIMS)
}

pub(crate) fn copy(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or(EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_claims_become_one_ascii_json_header() {
        use serde_json::json;
        let custom = std::collections::BTreeMap::from([
            ("tenant".to_string(), json!("acmé \"co\"")),
            ("a".to_string(), json!(1)),
        ]);
        let v = claims_header(&custom);
        assert_eq!(v, r#"{"a":1,"tenant":"acm\u00e9 \"co\""}"#);
        let back: serde_json::Value = serde_json::from_slice(v.as_bytes()).unwrap();
        assert_eq!(back["tenant"], "acmé \"co\"");
        assert_eq!(claims_header(&Default::default()), "{}");
    }

    #[test]
    fn claim_header_names_are_checked() {
        let h: ClaimHeader = "Tenant_id-2".parse().unwrap();
        assert_eq!(
            (h.claim.as_str(), h.header.as_str()),
            ("Tenant_id-2", "x-auth-claim-tenant_id-2")
        );
        for bad in ["", "1a", "a b", "a:b", "ä"] {
            assert!(bad.parse::<ClaimHeader>().is_err(), "{bad:?}");
        }
    }
}
