//! Pure reading of a JWT for `kubectl latchkey inspect`: its header and
//! claims decoded WITHOUT verifying the signature, and which TokenPolicy
//! publishes its `kid`. No client; `now` is injected.

use super::table::absolute_and_relative;
use crate::crd::{SigningKeyRecord, TokenPolicy};
use base64::Engine;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Why a string that looks like a JWT could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtDecodeError {
    #[error("a JWT has three parts separated by '.'")]
    Shape,
    #[error("the JWT's {0} is not base64url")]
    Base64(&'static str),
    #[error("the JWT's {0} is not a JSON object")]
    Json(&'static str),
}

/// A JWT's header and claims, as presented: NOT verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Unverified {
    pub header: serde_json::Map<String, Value>,
    pub claims: serde_json::Map<String, Value>,
}

impl Unverified {
    /// The header's `kid`, when it is a string.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
}

fn part(text: &str, what: &'static str) -> Result<serde_json::Map<String, Value>, JwtDecodeError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| JwtDecodeError::Base64(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtDecodeError::Json(what)),
    }
}

/// Decodes header and claims without looking at the signature.
pub fn decode_unverified(token: &str) -> Result<Unverified, JwtDecodeError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, _signature] = parts.as_slice() else {
        return Err(JwtDecodeError::Shape);
    };
    Ok(Unverified {
        header: part(header, "header")?,
        claims: part(claims, "claims")?,
    })
}

/// Claims that hold NumericDate seconds.
const TIME_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

/// The header and claims as indented lines under a clear UNVERIFIED label;
/// times are shown as RFC 3339 with their relative time too.
pub fn render(jwt: &Unverified, now: Timestamp) -> String {
    let mut out =
        String::from("JWT (UNVERIFIED: decoded without checking the signature; do not trust these values)\n");
    out.push_str("header:\n");
    for (name, value) in &jwt.header {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    out.push_str("claims:\n");
    for (name, value) in &jwt.claims {
        let time = TIME_CLAIMS
            .contains(&name.as_str())
            .then(|| value.as_i64())
            .flatten()
            .and_then(|s| Timestamp::from_second(s).ok());
        match time {
            Some(t) => out.push_str(&format!(
                "  {name}: {value} = {}\n",
                absolute_and_relative(now, t)
            )),
            None => out.push_str(&format!("  {name}: {value}\n")),
        }
    }
    out
}

/// What a TokenPolicy does with a signing key it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KidUse {
    /// Published, not signing yet (pre-publication).
    Published,
    /// The key new tokens are signed with.
    Signing,
    /// No longer signing; tokens it signed still verify.
    Retiring,
}

/// A TokenPolicy that publishes a `kid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    pub namespace: String,
    pub name: String,
    pub issuer: Option<String>,
    pub key_use: KidUse,
    pub remove_after: Option<Timestamp>,
}

fn key_use(policy: &TokenPolicy, key: &SigningKeyRecord, now: Timestamp) -> KidUse {
    let active = policy.status.as_ref().and_then(|s| s.active_key_id.as_deref());
    if active == Some(key.kid.as_str()) {
        KidUse::Signing
    } else if key.active_from.0 > now {
        KidUse::Published
    } else {
        KidUse::Retiring
    }
}

/// Every TokenPolicy among `policies` whose status publishes `kid`.
pub fn publishers(policies: &[TokenPolicy], kid: &str, now: Timestamp) -> Vec<Publisher> {
    policies
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let key = status.keys.iter().find(|k| k.kid == kid)?;
            Some(Publisher {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                issuer: status.issuer.clone(),
                key_use: key_use(p, key, now),
                remove_after: key.remove_after.as_ref().map(|t| t.0),
            })
        })
        .collect()
}

impl Publisher {
    /// One line for a person, noting when the token's `iss` is not this policy's.
    pub fn describe(&self, iss: Option<&str>, now: Timestamp) -> String {
        let role = match self.key_use {
            KidUse::Signing => "its signing key".to_owned(),
            KidUse::Published => "published, not signing yet".to_owned(),
            KidUse::Retiring => match self.remove_after {
                Some(t) => format!(
                    "retired from signing, still verifying until {}",
                    absolute_and_relative(now, t)
                ),
                None => "retired from signing, still verifying".to_owned(),
            },
        };
        let mut line = format!(
            "kid published by TokenPolicy {}/{} ({role})",
            self.namespace, self.name
        );
        if let (Some(iss), Some(issuer)) = (iss, &self.issuer)
            && iss != issuer
        {
            line.push_str(&format!(
                "; but the token's iss {iss:?} is not this policy's issuer {issuer:?}"
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    #[test]
    fn decodes_header_and_claims_and_labels_them_unverified() {
        let t = token(
            serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}),
            serde_json::json!({"sub": "login-service", "exp": 1_796_466_000, "scope": "a b"}),
        );
        let jwt = decode_unverified(&t).unwrap();
        assert_eq!(jwt.kid(), Some("k1"));
        let text = render(&jwt, at("2026-12-05T09:00:00Z"));
        assert!(text.starts_with("JWT (UNVERIFIED"), "{text}");
        assert!(text.contains("  sub: \"login-service\"\n"), "{text}");
        assert!(
            text.contains("  exp: 1796466000 = 2026-12-05T10:20:00Z (in 1h20m)\n"),
            "{text}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_jwt() {
        assert_eq!(decode_unverified("a.b"), Err(JwtDecodeError::Shape));
        assert_eq!(
            decode_unverified("!!.e30.x"),
            Err(JwtDecodeError::Base64("header"))
        );
        let not_object = format!("{}.e30.x", b64(&serde_json::json!([1])));
        assert_eq!(
            decode_unverified(&not_object),
            Err(JwtDecodeError::Json("header"))
        );
    }

    fn policy(active: &str) -> TokenPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": "login", "namespace": "shop"},
            "spec": {"audiences": ["calendar"]},
            "status": {
                "issuer": "http://latchkey/issuers/shop/login",
                "activeKeyId": active,
                "keys": [
                    {"kid": "old", "algorithm": "ES256", "publicJwk": "{}", "publishedAt": "2026-11-01T00:00:00Z",
                     "activeFrom": "2026-11-01T00:00:00Z", "retiresAt": "2026-12-01T00:00:00Z",
                     "removeAfter": "2026-12-05T10:00:00Z", "maxTtlSeconds": 3600},
                    {"kid": "new", "algorithm": "ES256", "publicJwk": "{}", "publishedAt": "2026-12-01T00:00:00Z",
                     "activeFrom": "2026-12-01T00:00:00Z", "maxTtlSeconds": 3600},
                    {"kid": "next", "algorithm": "ES256", "publicJwk": "{}", "publishedAt": "2026-12-05T08:55:00Z",
                     "activeFrom": "2026-12-05T09:05:00Z", "maxTtlSeconds": 3600}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn finds_the_policy_that_publishes_a_kid() {
        let now = at("2026-12-05T09:00:00Z");
        let policies = [policy("new")];
        let found = publishers(&policies, "new", now);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key_use, KidUse::Signing);
        assert_eq!(
            found[0].describe(Some("http://latchkey/issuers/shop/login"), now),
            "kid published by TokenPolicy shop/login (its signing key)"
        );
        assert!(
            found[0]
                .describe(Some("https://elsewhere"), now)
                .contains("is not this policy's issuer")
        );
        let old = &publishers(&policies, "old", now)[0];
        assert_eq!(old.key_use, KidUse::Retiring);
        assert!(
            old.describe(None, now)
                .contains("still verifying until 2026-12-05T10:00:00Z (in 1h)")
        );
        assert_eq!(publishers(&policies, "next", now)[0].key_use, KidUse::Published);
        assert!(publishers(&policies, "unknown", now).is_empty());
    }
}
