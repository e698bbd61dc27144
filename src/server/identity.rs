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
use axum::body::Bytes;
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
/// for that key shares across cores. The copies of one answer share one
/// buffer ([`copies`]): two allocations per allow, not one per header.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: HeaderValue,
    pub scopes: HeaderValue,
    pub key_id: HeaderValue,
    /// The namespace of the ApiKey the credential comes from.
    pub namespace: HeaderValue,
    /// The name of that ApiKey (no header of its own: the gRPC answer's
    /// dynamic metadata carries it).
    pub api_key_name: HeaderValue,
    /// Empty without a role.
    pub role: HeaderValue,
    /// A JSON object, `{}` without custom claims.
    pub claims: HeaderValue,
    /// A token's string custom claims, `(name, value)` (for
    /// `--claim-header`).
    pub claim_values: Vec<(HeaderValue, HeaderValue)>,
    /// A delegated token's `act.sub`; empty otherwise.
    pub actor: HeaderValue,
}

impl Identity {
    /// The identity of an API key: its ApiKey's subject, scopes, namespace
    /// and name, no role, no claims.
    pub fn of_key(owner: &IndexedApiKey, key_id: &KeyId) -> Self {
        let [subject, scopes, key_id, namespace, api_key_name] = copies([
            owner.subject().as_bytes(),
            owner.scopes_text().as_bytes(),
            key_id,
            owner.namespace().as_bytes(),
            owner.name().as_bytes(),
        ]);
        Self {
            subject,
            scopes,
            key_id,
            namespace,
            api_key_name,
            role: EMPTY,
            claims: NO_CLAIMS,
            claim_values: Vec::new(),
            actor: EMPTY,
        }
    }

    /// Fresh copies of every value (see the type's note on clones), with
    /// the namespace and name of `owner`, the ApiKey the credential comes
    /// from (for a token: the one whose key minted it, as the index knows it).
    pub fn copied_for(&self, owner: &IndexedApiKey) -> Self {
        self.copied_with(owner.namespace().as_bytes(), owner.name().as_bytes())
    }

    /// Fresh copies of every value, as they are.
    pub fn copied(&self) -> Self {
        self.copied_with(self.namespace.as_bytes(), self.api_key_name.as_bytes())
    }

    fn copied_with(&self, namespace: &[u8], api_key_name: &[u8]) -> Self {
        let (
            [
                subject,
                scopes,
                key_id,
                role,
                claims,
                actor,
                namespace,
                api_key_name,
            ],
            claim_values,
        ) = copies_with_pairs(
            [
                self.subject.as_bytes(),
                self.scopes.as_bytes(),
                self.key_id.as_bytes(),
                self.role.as_bytes(),
                self.claims.as_bytes(),
                self.actor.as_bytes(),
                namespace,
                api_key_name,
            ],
            &self.claim_values,
        );
        Self {
            subject,
            scopes,
            key_id,
            namespace,
            api_key_name,
            role,
            claims,
            claim_values,
            actor,
        }
    }
}

/// Header values with the bytes of `values`, copied into one buffer they
/// share: one reference count that only this answer touches. A value that is
/// not a valid header value (never, for values that came from header values
/// and key ids) becomes empty.
pub(crate) fn copies<const N: usize>(values: [&[u8]; N]) -> [HeaderValue; N] {
    copies_with_pairs(values, &[]).0
}

/// [`copies`] of `values` and of the `(name, value)` pairs, all in one
/// buffer (a token's custom claims add no allocation of their own).
fn copies_with_pairs<const N: usize>(
    values: [&[u8]; N],
    pairs: &[(HeaderValue, HeaderValue)],
) -> ([HeaderValue; N], Vec<(HeaderValue, HeaderValue)>) {
    let pair_bytes = pairs.iter().map(|(n, v)| n.len() + v.len());
    let mut buf = Vec::with_capacity(values.iter().map(|v| v.len()).chain(pair_bytes).sum());
    for v in values {
        buf.extend_from_slice(v);
    }
    for (name, value) in pairs {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    let shared = Bytes::from(buf);
    let mut at = 0;
    let mut next = |n: usize| {
        let value = match n {
            0 => EMPTY,
            n => HeaderValue::from_maybe_shared(shared.slice(at..at + n)).unwrap_or(EMPTY),
        };
        at += n;
        value
    };
    let values = values.map(|v| next(v.len()));
    let pairs = pairs
        .iter()
        .map(|(name, value)| (next(name.len()), next(value.len())))
        .collect();
    (values, pairs)
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
    fn copies_share_one_buffer_and_keep_every_value() {
        let values = copies([b"subject".as_slice(), b"", b"x y", b"ns"]);
        assert_eq!(
            values.map(|v| v.to_str().unwrap().to_owned()),
            ["subject", "", "x y", "ns"]
        );
        let [bad, ok] = copies([b"a\nb".as_slice(), b"ok"]);
        assert_eq!([bad, ok], ["", "ok"]);
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
