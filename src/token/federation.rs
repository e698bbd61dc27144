//! Federation, pure: a JWT from an external OpenID provider that a
//! TokenPolicy trusts (`spec.trustedIssuers[]`) exchanged for a latchkey
//! token (RFC 8693, `subject_token_type` `...:jwt` or `...:id_token`). No
//! client, no clock: the caller fetches the provider's JWK Set, passes it
//! here parsed, and passes `now`.
//!
//! Decisions (RFC 8725 care, as for our own tokens in [`super::claims`]):
//! - The algorithm comes from the key, never from the token: a JWK's `alg`
//!   when it has one (it must agree with its `kty`/`crv`), else the one its
//!   type implies (EC P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA, RSA →
//!   RS256, the OpenID default). Only asymmetric signature keys are kept
//!   (`use` absent or `sig`): a symmetric (`oct`) key, an encryption key or
//!   an unknown type is dropped when the JWK Set is read, so neither `none`
//!   nor HMAC keyed with a public key can verify. A token whose header `alg`
//!   is not its key's is refused before any signature check.
//! - No `crit` header; a `kid` is required and must name a key of the set
//!   (an unknown `kid` is for the caller to refresh the set, rate-bounded).
//! - `iss` equal to the trusted issuer exactly; `aud` (a string or a list)
//!   contains one of its `audiences`; `exp` required, `nbf` and `iat` not in
//!   the future; all with [`CLOCK_LEEWAY`].
//! - Mapping: `sub` ← the `subjectClaim` (a non-empty string of at most
//!   [`MAX_SUBJECT_LEN`] bytes, no control character); the role ← the first
//!   value of `roleClaim` (a string or a list of strings) naming one of the
//!   policy's roles (none: refused; `role=` in the request must be one of
//!   those values); custom claims ← the `claims` map, strings only. The
//!   request may not set `claim.*` itself: a tenant comes from the provider.
//! - The external subject must be one the policy's namespace may present
//!   (its CredentialGrants' `subjects`, or `<namespace>/...`), as for a
//!   delegated subject: a namespace that trusts a provider of its own could
//!   otherwise mint tokens for any subject.
//! - The session: `auth_time` is the external token's `auth_time`, else its
//!   `iat`; the new token's `exp` is at most `now + TTL` and at most
//!   `auth_time + sessionMaxAge` (refreshes keep that bound, as any session's).
//!   It is not bound by the external token's `exp`: exchanging a short-lived
//!   provider token for a session is the point, and `sessionMaxAge` is the
//!   operator's bound on it.

use super::claims::{
    AccessClaims, CLOCK_LEEWAY, ClientKey, MAX_TOKEN_LEN, PolicyRules, TokenError, TokenRequest,
};
use super::session::{Actor, MAX_SUBJECT_LEN, SessionRules};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// RFC 8693 §3: a JWT (an access token of another issuer).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 §3: an OpenID Connect ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The most keys read from one JWK Set (the rest are ignored).
pub const MAX_JWKS_KEYS: usize = 32;
/// The largest JWK Set document read (bytes).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The longest external claim value copied into a custom claim (bytes).
pub const MAX_CLAIM_VALUE_LEN: usize = 256;

/// A verification key of an external provider, its algorithm fixed.
pub struct ExternalKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for ExternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a JWK Set document is unusable; the message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWK Set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWK Set is not a JSON object with a \"keys\" array (RFC 7517 §5)")]
    Malformed,
}

/// The signature algorithm a JWK is for, or `None` if it is not an
/// asymmetric signature key whose `alg` (if any) agrees with its type.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return None,
        },
        // Symmetric (HMAC) and unknown key types are never trusted.
        _ => return None,
    };
    let Some(stated) = jwk.common.key_algorithm else {
        return Some(implied);
    };
    let stated = match stated {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    };
    let rsa = |a: Algorithm| {
        matches!(
            a,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    };
    (stated == implied || (rsa(stated) && rsa(implied))).then_some(stated)
}

/// The usable keys of a JWK Set document: asymmetric signature keys with a
/// `kid` (see the module's decisions), at most [`MAX_JWKS_KEYS`]; the
/// others are skipped, so one odd key does not hide the rest.
pub fn parse_jwks(document: &[u8]) -> Result<Vec<ExternalKey>, JwksError> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let value: Value = serde_json::from_slice(document).map_err(|_| JwksError::Malformed)?;
    let keys = value
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::Malformed)?;
    Ok(keys
        .iter()
        .take(MAX_JWKS_KEYS)
        .filter_map(|k| {
            let jwk: Jwk = serde_json::from_value(k.clone()).ok()?;
            let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
            let algorithm = key_algorithm(&jwk)?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(ExternalKey { kid, algorithm, key })
        })
        .collect())
}

/// The fewest seconds between two fetches of one JWK Set: an unknown `kid`
/// refreshes the set at most this often, so tokens with made-up `kid`s
/// cannot make latchkey hammer the provider.
pub const MIN_REFETCH_SECONDS: i64 = 10;
/// A JWK Set older than this is fetched again on its next use (a key the
/// provider withdrew stops verifying within this, plus one use).
pub const MAX_KEYS_AGE_SECONDS: i64 = 300;

/// Whether a JWK Set must be fetched now: never fetched, older than
/// [`MAX_KEYS_AGE_SECONDS`], or lacking the `kid` presented; and the last
/// attempt (successful or not) at least [`MIN_REFETCH_SECONDS`] ago.
pub fn should_fetch(fetched_at: Option<i64>, last_attempt: Option<i64>, has_kid: bool, now: i64) -> bool {
    let due = match fetched_at {
        None => true,
        Some(at) => !has_kid || now.saturating_sub(at) >= MAX_KEYS_AGE_SECONDS,
    };
    due && last_attempt.is_none_or(|at| now.saturating_sub(at) >= MIN_REFETCH_SECONDS)
}

/// Whether a URL is one latchkey fetches keys from: `https://`, or `http://`
/// on a loopback host (as the CRD's rule says; a discovery document's
/// `jwks_uri` is held to it too).
pub fn fetchable_url(url: &str) -> bool {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return false,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || url.chars().any(char::is_whitespace) {
        return false;
    }
    if https {
        return true;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A trusted issuer as verification needs it (from `spec.trustedIssuers[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub subject_claim: String,
    pub role_claim: Option<String>,
    /// Custom claim → external claim.
    pub claims: BTreeMap<String, String>,
}

impl Trusted {
    pub fn of(spec: &crate::crd::TrustedIssuer) -> Self {
        Trusted {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            subject_claim: spec.subject_claim.clone().unwrap_or_else(|| "sub".into()),
            role_claim: spec.role_claim.clone(),
            claims: spec.claims.clone(),
        }
    }
}

/// Why an external token is refused. Messages name claims, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalInvalid {
    #[error("the subject_token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("the subject_token is not a well-formed signed JWT with iss, exp and a kid header")]
    Malformed,
    #[error("the subject_token's issuer is not one of the TokenPolicy's spec.trustedIssuers")]
    UntrustedIssuer,
    #[error("the subject_token has a crit header; latchkey understands no JWS extension")]
    Critical,
    #[error("the subject_token's kid is not in its issuer's JWK Set")]
    UnknownKey,
    #[error("the subject_token's alg is not its key's algorithm")]
    Algorithm,
    #[error("the subject_token's signature is invalid")]
    Signature,
    #[error(
        "the subject_token is not for this TokenPolicy (its aud names none of the trusted issuer's audiences)"
    )]
    Audience,
    #[error("the subject_token has expired")]
    Expired,
    #[error("the subject_token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the subject_token's claim {0} is missing, not a string, empty or too long")]
    Claim(String),
    #[error("the subject_token's claim {0} names none of the TokenPolicy's roles")]
    NoRole(String),
}

/// The external issuer a token claims (`iss`), unverified: only to pick
/// which trusted issuer's keys to verify it with.
pub fn claimed_issuer(token: &str) -> Result<String, ExternalInvalid> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    if token.len() > MAX_TOKEN_LEN {
        return Err(ExternalInvalid::TooLarge);
    }
    let payload = token.split('.').nth(1).ok_or(ExternalInvalid::Malformed)?;
    let bytes = B64.decode(payload).map_err(|_| ExternalInvalid::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| ExternalInvalid::Malformed)?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(ExternalInvalid::Malformed)
}

/// The `kid` of a token's header (to know whether the key set must be
/// refreshed before [`verify`]).
pub fn key_id(token: &str) -> Result<String, ExternalInvalid> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ExternalInvalid::TooLarge);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| ExternalInvalid::Malformed)?;
    header.kid.ok_or(ExternalInvalid::Malformed)
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ExternalInvalid> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(ExternalInvalid::Malformed),
    }
}

/// An external token that verified: its claims, and the times that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub exp: i64,
    /// `auth_time`, else `iat`, else `now`: when the session began.
    pub auth_time: i64,
}

/// Verifies an external token against `trusted` with the key `find_key`
/// gives for its `kid`, at `now` (see the module's decisions).
pub fn verify<'k>(
    token: &str,
    trusted: &Trusted,
    find_key: impl FnOnce(&str) -> Option<&'k ExternalKey>,
    now: i64,
) -> Result<Verified, ExternalInvalid> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ExternalInvalid::TooLarge);
    }
    // `alg: none` (or any name jsonwebtoken does not know) fails here.
    let header = jsonwebtoken::decode_header(token).map_err(|_| ExternalInvalid::Malformed)?;
    if header.crit.is_some() {
        return Err(ExternalInvalid::Critical);
    }
    let kid = header.kid.ok_or(ExternalInvalid::Malformed)?;
    let key = find_key(&kid).ok_or(ExternalInvalid::UnknownKey)?;
    if header.alg != key.algorithm {
        return Err(ExternalInvalid::Algorithm);
    }
    let mut validation = Validation::new(key.algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                ExternalInvalid::Signature
            }
            _ => ExternalInvalid::Malformed,
        }
    })?;
    let claims = data.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(trusted.issuer.as_str()) {
        return Err(ExternalInvalid::UntrustedIssuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => trusted.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| trusted.audiences.iter().any(|t| t == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(ExternalInvalid::Audience);
    }
    let exp = number(&claims, "exp")?.ok_or(ExternalInvalid::Malformed)?;
    if now > exp.saturating_add(CLOCK_LEEWAY) {
        return Err(ExternalInvalid::Expired);
    }
    let iat = number(&claims, "iat")?;
    let future = |t: Option<i64>| t.is_some_and(|t| t > now.saturating_add(CLOCK_LEEWAY));
    if future(number(&claims, "nbf")?) || future(iat) {
        return Err(ExternalInvalid::NotYetValid);
    }
    let auth_time = number(&claims, "auth_time")?.or(iat).unwrap_or(now).min(now);
    Ok(Verified {
        claims,
        exp,
        auth_time,
    })
}

/// A string claim within bounds.
fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str, max: usize) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control))
}

/// What a verified external token maps to under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub sub: String,
    /// The values of `roleClaim` that name a role of the policy, in order.
    pub roles: Vec<String>,
    pub claims: BTreeMap<String, String>,
}

/// Maps a verified token's claims by `trusted` onto `policy`'s roles and
/// custom claims.
pub fn map(verified: &Verified, trusted: &Trusted, policy: &PolicyRules) -> Result<Mapped, ExternalInvalid> {
    let sub = string_claim(&verified.claims, &trusted.subject_claim, MAX_SUBJECT_LEN)
        .ok_or_else(|| ExternalInvalid::Claim(trusted.subject_claim.clone()))?
        .to_owned();
    let mut roles = Vec::new();
    if let Some(name) = &trusted.role_claim {
        let values: Vec<&str> = match verified.claims.get(name) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for v in values {
            if policy.roles.contains_key(v) && !roles.iter().any(|r| r == v) {
                roles.push(v.to_owned());
            }
        }
        if roles.is_empty() {
            return Err(ExternalInvalid::NoRole(name.clone()));
        }
    }
    let mut claims = BTreeMap::new();
    for (custom, external) in &trusted.claims {
        match verified.claims.get(external) {
            None | Some(Value::Null) => {}
            Some(_) => {
                let v = string_claim(&verified.claims, external, MAX_CLAIM_VALUE_LEN)
                    .ok_or_else(|| ExternalInvalid::Claim(external.clone()))?;
                claims.insert(custom.clone(), v.to_owned());
            }
        }
    }
    Ok(Mapped { sub, roles, claims })
}

/// The claims of the token an exchange of a verified external token mints:
/// `client` is the API key that made the request (its subject becomes
/// `act.sub`) or, for a request without one, a client the caller built
/// (`acting` false: no `act`). `request.role` picks among the mapped roles;
/// `request.claims` must be empty. `granted` says whether the policy's
/// namespace may present a subject (its CredentialGrants, as for
/// delegation: trusting an issuer of its own must not let a namespace name
/// subjects it could not delegate to). `sid` and `jti` are the caller's
/// random ids.
#[allow(clippy::too_many_arguments)]
pub fn exchange(
    verified: &Verified,
    mapped: &Mapped,
    policy: &PolicyRules,
    session: &SessionRules,
    client: &ClientKey<'_>,
    acting: bool,
    request: &TokenRequest,
    granted: impl Fn(&str) -> bool,
    now: i64,
    sid: String,
    jti: String,
) -> Result<AccessClaims, TokenError> {
    if !granted(&mapped.sub) {
        return Err(TokenError::InvalidGrant(
            "the external token's subject is not granted to this namespace by its CredentialGrants \
             (spec.subjects); ask the platform team to grant the provider's subjects (for example a prefix \
             pattern), or map a subject claim that starts with <namespace>/"
                .into(),
        ));
    }
    if !request.claims.is_empty() {
        return Err(TokenError::InvalidRequest(
            "claim.* cannot be set in an exchange of an external token: custom claims come from it, \
             by the TokenPolicy's spec.trustedIssuers[].claims"
                .into(),
        ));
    }
    let role = match &request.role {
        Some(asked) if mapped.roles.iter().any(|r| r == asked) => Some(asked.clone()),
        Some(asked) => {
            return Err(TokenError::InvalidScope(format!(
                "role {asked} is not among the roles the external token's role claim names"
            )));
        }
        None => mapped.roles.first().cloned(),
    };
    let mut asked = request.clone();
    asked.role = role;
    asked.claims = mapped.claims.clone();
    let mut claims = super::claims::build_claims(policy, client, &asked, now, jti)?;
    let end = verified.auth_time.saturating_add(session.session_max_age_seconds);
    if end <= now {
        return Err(TokenError::InvalidGrant(
            "the external token's session is older than the TokenPolicy's spec.sessionMaxAge; log in again at the provider"
                .into(),
        ));
    }
    let actor = std::mem::replace(&mut claims.sub, mapped.sub.clone());
    claims.act = acting.then_some(Actor { sub: actor });
    claims.sid = Some(sid);
    claims.auth_time = Some(verified.auth_time);
    claims.idp = verified
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned);
    claims.exp = claims.exp.min(end);
    Ok(claims)
}

#[cfg(test)]
#[path = "federation_tests.rs"]
mod tests;
