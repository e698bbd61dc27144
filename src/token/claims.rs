//! Token requests and access tokens, pure: what `POST /token` may issue for
//! an API key under a policy (narrowing, never widening), the RFC 9068
//! claims, and the checks a presented JWT must pass (RFC 8725).
//!
//! Decisions:
//! - `scope` (space-separated) and `audience` (repeatable) are narrowed to
//!   what both the ApiKey and the policy allow; asking for more is
//!   `invalid_scope` (for an audience too), never a silent widening. Without
//!   `scope` the token gets every scope both allow (or the role's scopes);
//!   without `audience`, every audience both allow.
//! - `role=<name>` gives the role's scopes, which must all be held by the
//!   key; `scope` may then narrow further within the role.
//! - Custom claims are `claim.<name>=<value>` (1–256 printable characters),
//!   only for names the policy lists; a name is flat (letters, digits, `_`,
//!   `-`: no nesting) and never one of [`RESERVED_CLAIMS`] (the RFC 7662
//!   introspection members and latchkey's own claims), so a custom claim can
//!   never stand in for `active`, `scope`, `client_id`, ... in `/introspect`.
//! - `expires_in=<seconds>` asks for a shorter or longer lifetime, up to
//!   `maxTTL`; more is `invalid_request`. Every parameter but `audience`
//!   may appear once.
//! - `sub` is the ApiKey's subject, `client_id` its key id (the token dies
//!   with that key: revoked, expired, or out of its grace period).
//! - Verification: at most [`MAX_TOKEN_LEN`] bytes; `typ` must be `at+jwt`;
//!   the `kid` must be published and its algorithm is the only one accepted
//!   (so `alg: none` and HS256-with-the-public-key are refused); `iss` and
//!   `aud` must be the policy's; `exp`, `nbf` and `iat` are checked against
//!   the caller's clock with [`CLOCK_LEEWAY`]; `exp − iat` may not exceed the
//!   key's `maxTTL` (plus the leeway); a `crit` header is refused (RFC 7515
//!   §4.1.11: latchkey understands no extension); every custom claim must be
//!   a string under a name that is not reserved. A token carrying anything
//!   else was not issued by latchkey, whoever's key signed it.

use super::permissions::{self, AuthorizationDetail};
use crate::crd::Permission;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The largest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 8192;
/// Clock skew allowed on `exp`, `nbf` and `iat` (seconds).
pub const CLOCK_LEEWAY: i64 = 30;
/// The JOSE `typ` of an RFC 9068 access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
const MAX_CLAIM_VALUE: usize = 256;

/// Claim names a custom claim may not take: the RFC 7662 introspection
/// members, the registered JWT claims and latchkey's own (the CRD's CEL rule
/// lists the same, compared case-insensitively).
#[rustfmt::skip]
pub const RESERVED_CLAIMS: &[&str] = &[
    "active", "scope", "client_id", "username", "token_type", // RFC 7662
    "exp", "iat", "nbf", "sub", "aud", "iss", "jti", // RFC 7519
    "role", "act", "may_act", "sid", "typ", "cnf", "azp", "auth_time", "acr", "amr", "nonce",
    "authorization_details", "idp",
];

/// Whether `name` is reserved ([`RESERVED_CLAIMS`], any case).
pub fn is_reserved_claim(name: &str) -> bool {
    RESERVED_CLAIMS.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Whether `name` is a flat custom claim name (the CRD's pattern).
fn is_claim_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An RFC 6749 §5.2 error of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    InvalidRequest(String),
    InvalidClient(String),
    UnauthorizedClient(String),
    UnsupportedGrantType,
    InvalidScope(String),
    /// The policy has no key that can sign right now (503).
    TemporarilyUnavailable(String),
    /// The API key is over its ApiKey's rate limit (429 with `Retry-After`):
    /// `/token` takes from the same bucket as the key's other uses.
    RateLimited {
        retry_after: u64,
        limit: u32,
    },
    /// A token exchange's `subject_token` is expired, of another client or
    /// policy, or its session is over (RFC 6749 §5.2, as for a refresh token).
    InvalidGrant(String),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::InvalidClient(_) => "invalid_client",
            TokenError::UnauthorizedClient(_) => "unauthorized_client",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::InvalidScope(_) => "invalid_scope",
            TokenError::TemporarilyUnavailable(_) => "temporarily_unavailable",
            TokenError::RateLimited { .. } => "rate_limited",
            TokenError::InvalidGrant(_) => "invalid_grant",
        }
    }

    pub fn description(&self) -> &str {
        match self {
            TokenError::InvalidRequest(d)
            | TokenError::InvalidClient(d)
            | TokenError::UnauthorizedClient(d)
            | TokenError::InvalidScope(d)
            | TokenError::TemporarilyUnavailable(d)
            | TokenError::InvalidGrant(d) => d,
            TokenError::UnsupportedGrantType => {
                "grant_type must be client_credentials or urn:ietf:params:oauth:grant-type:token-exchange"
            }
            TokenError::RateLimited { .. } => {
                "the API key is over its rate limit; retry after Retry-After seconds"
            }
        }
    }
}

/// The form parameters of a token request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    pub scopes: Option<Vec<String>>,
    pub audiences: Vec<String>,
    pub role: Option<String>,
    pub claims: BTreeMap<String, String>,
    pub expires_in: Option<i64>,
    /// The TokenPolicy to use when several admit the key.
    pub policy: Option<String>,
    /// Delegation and token exchange ([`super::session`]).
    pub session: super::session::SessionRequest,
}

impl TokenRequest {
    /// Parses an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Result<Self, TokenError> {
        let mut req = TokenRequest::default();
        let mut grant_type = None;
        for (name, value) in form_urlencoded::parse(body) {
            let dup = || TokenError::InvalidRequest(format!("parameter {name} appears more than once"));
            match &*name {
                "grant_type" => set_once(&mut grant_type, &name, &value)?,
                "scope" if req.scopes.is_some() => return Err(dup()),
                "scope" => {
                    req.scopes = Some(
                        value
                            .split(' ')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                "audience" => req
                    .audiences
                    .extend(value.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
                "role" => set_once(&mut req.role, &name, &value)?,
                "policy" => set_once(&mut req.policy, &name, &value)?,
                "expires_in" if req.expires_in.is_some() => return Err(dup()),
                "expires_in" => {
                    let secs: i64 = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        TokenError::InvalidRequest("expires_in must be a positive number of seconds".into())
                    })?;
                    req.expires_in = Some(secs);
                }
                n if n.starts_with("claim.") => {
                    let claim = &n["claim.".len()..];
                    if !is_claim_name(claim) {
                        return Err(TokenError::InvalidRequest(format!(
                            "claim.{claim}: a custom claim name is 1-64 letters, digits, '_' or '-', \
                             starting with a letter (claims cannot nest)"
                        )));
                    }
                    if value.is_empty()
                        || value.len() > MAX_CLAIM_VALUE
                        || !value.chars().all(|c| !c.is_control())
                    {
                        return Err(TokenError::InvalidRequest(format!(
                            "claim.{claim} must be 1-{MAX_CLAIM_VALUE} printable characters"
                        )));
                    }
                    if req.claims.insert(claim.to_owned(), value.into_owned()).is_some() {
                        return Err(dup());
                    }
                }
                n if super::session::SessionRequest::PARAMETERS.contains(&n) => {
                    req.session.set(n, &value)?;
                }
                // Other parameters are ignored (RFC 6749 §3.2).
                _ => {}
            }
        }
        match grant_type.as_deref() {
            None => Err(TokenError::InvalidRequest("grant_type is missing".into())),
            Some("client_credentials") => Ok(req),
            Some(super::session::TOKEN_EXCHANGE) => {
                req.session.check_exchange()?;
                Ok(req)
            }
            Some(_) => Err(TokenError::UnsupportedGrantType),
        }
    }
}

fn set_once(slot: &mut Option<String>, name: &str, value: &str) -> Result<(), TokenError> {
    if slot.replace(value.to_owned()).is_some() {
        return Err(TokenError::InvalidRequest(format!(
            "parameter {name} appears more than once"
        )));
    }
    Ok(())
}

/// What a policy allows, as `/token` needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub allowed_scopes: BTreeSet<String>,
    /// Role name → its permissions (scopes on resource templates).
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// Custom claim name → required.
    pub custom_claims: BTreeMap<String, bool>,
    pub token_ttl_seconds: i64,
    pub max_ttl_seconds: i64,
}

/// The API key that asks, as `/token` needs it.
#[derive(Debug, Clone, Copy)]
pub struct ClientKey<'a> {
    pub key_id: &'a str,
    pub subject: &'a str,
    pub scopes: &'a [&'a str],
    /// Empty: every audience.
    pub audiences: &'a [Box<str>],
}

/// `aud` as RFC 7519 allows it: one string or an array.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The claims of an access token (RFC 9068 §2.2), plus role and custom claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// RFC 8693 §4.1: who acted, for a delegated token (`sub` is the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<super::session::Actor>,
    /// The session id, the same through refreshes ([`super::session`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the session began (OIDC `auth_time`), the same through refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The role's permissions, templates filled in (RFC 9396; see
    /// [`permissions`]); empty without a role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_details: Vec<AuthorizationDetail>,
    /// The trusted issuer whose token began a federated session
    /// ([`super::federation`]), the same through refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
}

/// Builds the claims of a token for `client` under `policy`, narrowing what
/// `request` asks for; `jti` is the caller's random id.
pub fn build_claims(
    policy: &PolicyRules,
    client: &ClientKey<'_>,
    request: &TokenRequest,
    now: i64,
    jti: String,
) -> Result<AccessClaims, TokenError> {
    // Scopes: the key's ∩ the policy's, then the role, then the request.
    let allowed: BTreeSet<&str> = client
        .scopes
        .iter()
        .copied()
        .filter(|s| policy.allowed_scopes.contains(*s))
        .collect();
    let role = permissions::requested_role(&policy.roles, request.role.as_ref())?;
    let base: BTreeSet<&str> = match role {
        Some((name, perms)) => permissions::role_base(name, perms, &allowed)?,
        None => allowed,
    };
    let scopes: Vec<&str> = match &request.scopes {
        Some(asked) => {
            if let Some(extra) = asked.iter().find(|s| !base.contains(s.as_str())) {
                return Err(TokenError::InvalidScope(format!(
                    "scope {extra} is not allowed for this API key{}",
                    request
                        .role
                        .as_ref()
                        .map(|r| format!(" and role {r}"))
                        .unwrap_or_default()
                )));
            }
            let asked: BTreeSet<&str> = asked.iter().map(String::as_str).collect();
            asked.into_iter().collect()
        }
        None => base.into_iter().collect(),
    };

    // Audiences: the policy's ∩ the key's (all of the policy's when the key names none).
    let allowed_aud: Vec<&str> = policy
        .audiences
        .iter()
        .map(String::as_str)
        .filter(|a| client.audiences.is_empty() || client.audiences.iter().any(|k| &**k == *a))
        .collect();
    let aud: Vec<String> = if request.audiences.is_empty() {
        if allowed_aud.is_empty() {
            return Err(TokenError::InvalidScope(
                "no audience of the TokenPolicy is allowed for this API key (spec.audiences of both)".into(),
            ));
        }
        allowed_aud.iter().map(|a| (*a).to_owned()).collect()
    } else {
        if let Some(extra) = request
            .audiences
            .iter()
            .find(|a| !allowed_aud.contains(&a.as_str()))
        {
            return Err(TokenError::InvalidScope(format!(
                "audience {extra} is not allowed for this API key under the TokenPolicy"
            )));
        }
        let set: BTreeSet<String> = request.audiences.iter().cloned().collect();
        set.into_iter().collect()
    };

    // Custom claims.
    let mut custom = BTreeMap::new();
    for (name, value) in &request.claims {
        if is_reserved_claim(name) {
            return Err(TokenError::InvalidRequest(format!(
                "claim {name} is reserved (an RFC 7662 member or a claim of latchkey's own); \
                 rename it in the TokenPolicy's spec.customClaims"
            )));
        }
        if !policy.custom_claims.contains_key(name) {
            return Err(TokenError::InvalidRequest(format!(
                "claim {name} is not allowed by the TokenPolicy (spec.customClaims)"
            )));
        }
        custom.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    if let Some((missing, _)) = policy
        .custom_claims
        .iter()
        .find(|(name, required)| **required && !request.claims.contains_key(*name))
    {
        return Err(TokenError::InvalidRequest(format!(
            "claim.{missing} is required by the TokenPolicy"
        )));
    }

    // The role's permissions narrowed to the scopes, templates filled.
    let authorization_details = match role {
        Some((name, perms)) => permissions::grant(perms, &scopes.iter().copied().collect(), &custom)
            .map_err(|e| TokenError::InvalidRequest(format!("role {name}: {e}")))?,
        None => Vec::new(),
    };

    let ttl = match request.expires_in {
        Some(asked) if asked > policy.max_ttl_seconds => {
            return Err(TokenError::InvalidRequest(format!(
                "expires_in must be at most {} seconds (spec.maxTTL)",
                policy.max_ttl_seconds
            )));
        }
        Some(asked) => asked,
        None => policy.token_ttl_seconds.min(policy.max_ttl_seconds),
    };
    Ok(AccessClaims {
        iss: policy.issuer.clone(),
        sub: client.subject.to_owned(),
        aud,
        exp: now + ttl,
        iat: now,
        nbf: None,
        jti,
        client_id: client.key_id.to_owned(),
        scope: scopes.join(" "),
        role: request.role.clone(),
        act: None,
        sid: None,
        auth_time: None,
        authorization_details,
        idp: None,
        custom,
    })
}

/// The JOSE header of a token signed by `kid`.
pub fn header(alg: Algorithm, kid: &str) -> jsonwebtoken::Header {
    let mut header = jsonwebtoken::Header::new(alg);
    header.typ = Some(ACCESS_TOKEN_TYP.into());
    header.kid = Some(kid.to_owned());
    header
}

/// A published verification key and the policy facts a token must match.
pub struct VerifyingKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The longest lifetime (`exp − iat`) a token of this key may have: the
    /// longest `maxTTL` in force while it signed.
    pub max_ttl_seconds: i64,
}

/// Why a presented JWT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInvalid {
    TooLarge,
    /// Not a JWT, an unknown `alg`, or claims of the wrong shape.
    Malformed,
    /// `typ` is not `at+jwt`.
    Type,
    /// No `kid`, or not a published one.
    UnknownKey,
    /// `alg` other than the key's, or a bad signature.
    Signature,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    /// `exp − iat` beyond the key's `maxTTL`.
    Lifetime,
    /// A `crit` header (RFC 7515 §4.1.11): no extension is understood.
    Critical,
    /// A custom claim that is reserved or not a string.
    Claims,
    /// The `client_id` is not an API key the signing policy admits.
    Client,
    /// Revoked: its session, subject or policy ([`super::revocation`]).
    Revoked,
}

impl TokenInvalid {
    pub fn description(self) -> &'static str {
        match self {
            TokenInvalid::TooLarge => "the token is too large",
            TokenInvalid::Malformed => "the token is not a well-formed JWT access token",
            TokenInvalid::Type => "the token is not an access token (typ at+jwt)",
            TokenInvalid::UnknownKey => "the token was not signed by a published key",
            TokenInvalid::Signature => "the token's signature is invalid",
            TokenInvalid::Issuer => "the token's issuer is not its key's policy",
            TokenInvalid::Audience => "the token is not valid for this audience",
            TokenInvalid::Expired => "the token has expired",
            TokenInvalid::NotYetValid => "the token is not valid yet",
            TokenInvalid::Lifetime => "the token's lifetime exceeds its policy's maxTTL",
            TokenInvalid::Critical => "the token has a crit header; latchkey understands no JWS extension",
            TokenInvalid::Claims => "the token carries a reserved or non-string custom claim",
            TokenInvalid::Client => "the token's client_id is not an API key its policy admits",
            TokenInvalid::Revoked => "the token has been revoked",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TokenInvalid::TooLarge => "token_too_large",
            TokenInvalid::Malformed => "token_malformed",
            TokenInvalid::Type => "token_type",
            TokenInvalid::UnknownKey => "token_unknown_key",
            TokenInvalid::Signature => "token_signature",
            TokenInvalid::Issuer => "token_issuer",
            TokenInvalid::Audience => "token_audience",
            TokenInvalid::Expired => "token_expired",
            TokenInvalid::NotYetValid => "token_not_yet_valid",
            TokenInvalid::Lifetime => "token_lifetime",
            TokenInvalid::Critical => "token_crit",
            TokenInvalid::Claims => "token_claims",
            TokenInvalid::Client => "token_client",
            TokenInvalid::Revoked => "token_revoked",
        }
    }
}

/// Whether `presented` has the shape of a JWS compact serialization.
pub fn looks_like_jwt(presented: &str) -> bool {
    presented.starts_with("ey") && count_dots(presented.as_bytes()) == 2
}

/// The number of `.` in `bytes`. Runs on every auth request over the whole
/// token (about 700 bytes for a user's token): counted in one-byte lanes
/// per chunk of at most 255 bytes, which vectorises 32 bytes at a time; a
/// plain `filter().count()` added 64-bit lanes four bytes at a time and
/// cost about 0.2 µs a request (perf, `e2e/bench-auth tokens`).
fn count_dots(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| usize::from(chunk.iter().fold(0u8, |n, &b| n + u8::from(b == b'.'))))
        .sum()
}

/// Verifies a presented access token: signature by a published key of the
/// right algorithm, `typ`, `iss`, `aud`, and time claims at `now`. Returns
/// the claims and the `kid`.
pub fn verify<'k>(
    token: &str,
    find_key: impl FnOnce(&str) -> Option<&'k VerifyingKey>,
    now: i64,
) -> Result<(AccessClaims, String), TokenInvalid> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenInvalid::TooLarge);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenInvalid::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenInvalid::Type);
    }
    if header.crit.is_some() {
        return Err(TokenInvalid::Critical);
    }
    let kid = header.kid.ok_or(TokenInvalid::UnknownKey)?;
    let key = find_key(&kid).ok_or(TokenInvalid::UnknownKey)?;
    if header.alg != key.algorithm {
        return Err(TokenInvalid::Signature);
    }
    // The signature only; the claims are checked below against `now`.
    let mut validation = Validation::new(key.algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenInvalid::Signature
            }
            _ => TokenInvalid::Malformed,
        }
    })?;
    let claims = data.claims;
    if claims.iss != key.issuer {
        return Err(TokenInvalid::Issuer);
    }
    if !claims.aud.iter().any(|a| key.audiences.contains(a)) {
        return Err(TokenInvalid::Audience);
    }
    if now > claims.exp + CLOCK_LEEWAY {
        return Err(TokenInvalid::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_LEEWAY) || claims.iat > now + CLOCK_LEEWAY {
        return Err(TokenInvalid::NotYetValid);
    }
    if claims.exp.saturating_sub(claims.iat) > key.max_ttl_seconds.saturating_add(CLOCK_LEEWAY) {
        return Err(TokenInvalid::Lifetime);
    }
    if claims
        .custom
        .iter()
        .any(|(name, value)| is_reserved_claim(name) || !value.is_string())
    {
        return Err(TokenInvalid::Claims);
    }
    Ok((claims, kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SigningAlgorithm;
    use crate::token::keys;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const NOW: i64 = 1_800_000_000;

    fn policy() -> PolicyRules {
        PolicyRules {
            issuer: "http://127.0.0.1/issuers/shop/tokens".into(),
            audiences: vec!["calendar".into(), "pubsub".into()],
            allowed_scopes: ["calendar-events:read", "calendar-events:write", "pubsub:publish"]
                .into_iter()
                .map(String::from)
                .collect(),
            roles: [(
                "data-entry".to_string(),
                vec![Permission {
                    scopes: vec!["calendar-events:write".to_string()],
                    resources: vec![],
                }],
            )]
            .into(),
            custom_claims: [("tenant".to_string(), false)].into(),
            token_ttl_seconds: 900,
            max_ttl_seconds: 3600,
        }
    }

    const KEY_SCOPES: &[&str] = &["calendar-events:read", "calendar-events:write", "orders:read"];

    fn client() -> ClientKey<'static> {
        ClientKey {
            key_id: "AbCdEfGhIjKl",
            subject: "shop/login",
            scopes: KEY_SCOPES,
            audiences: &[],
        }
    }

    fn req(body: &str) -> TokenRequest {
        TokenRequest::parse(body.as_bytes()).unwrap()
    }

    fn build(body: &str) -> Result<AccessClaims, TokenError> {
        build_claims(&policy(), &client(), &req(body), NOW, "jti-1".into())
    }

    #[test]
    fn the_default_token_has_what_both_key_and_policy_allow() {
        let c = build("grant_type=client_credentials").unwrap();
        assert_eq!(c.scope, "calendar-events:read calendar-events:write");
        assert_eq!(c.aud, vec!["calendar", "pubsub"]);
        assert_eq!((c.iat, c.exp), (NOW, NOW + 900));
        assert_eq!(c.client_id, "AbCdEfGhIjKl");
        assert_eq!(c.sub, "shop/login");
    }

    #[test]
    fn narrowing_works_and_widening_is_refused() {
        let c = build("grant_type=client_credentials&scope=calendar-events:read&audience=calendar&claim.tenant=acme&expires_in=60").unwrap();
        assert_eq!(c.scope, "calendar-events:read");
        assert_eq!(c.aud, vec!["calendar"]);
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.custom["tenant"], "acme");
        // The key lacks pubsub:publish, the policy lacks orders:read.
        for scope in ["pubsub:publish", "orders:read", "admin"] {
            let e = build(&format!("grant_type=client_credentials&scope={scope}")).unwrap_err();
            assert_eq!(e.code(), "invalid_scope", "{scope}");
            assert!(e.description().contains(scope));
        }
        let e = build("grant_type=client_credentials&audience=billing").unwrap_err();
        assert_eq!(e.code(), "invalid_scope");
        let e = build("grant_type=client_credentials&expires_in=3601").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(e.description().contains("3600"));
        let e = build("grant_type=client_credentials&claim.admin=yes").unwrap_err();
        assert!(e.description().contains("claim admin is not allowed"));
    }

    #[test]
    fn roles_give_their_scopes_only_when_the_key_holds_them() {
        let c = build("grant_type=client_credentials&role=data-entry").unwrap();
        assert_eq!(c.scope, "calendar-events:write");
        assert_eq!(c.role.as_deref(), Some("data-entry"));
        let e =
            build("grant_type=client_credentials&role=data-entry&scope=calendar-events:read").unwrap_err();
        assert_eq!(e.code(), "invalid_scope");
        let e = build("grant_type=client_credentials&role=boss").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        let mut p = policy();
        p.roles.insert(
            "publisher".into(),
            vec![Permission {
                scopes: vec!["pubsub:publish".into()],
                resources: vec![],
            }],
        );
        let e = build_claims(
            &p,
            &client(),
            &req("grant_type=client_credentials&role=publisher"),
            NOW,
            "j".into(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_scope");
    }

    #[test]
    fn a_role_with_resources_gives_authorization_details_filled_with_the_claims() {
        let mut p = policy();
        p.roles.insert(
            "reader".into(),
            vec![
                Permission {
                    scopes: vec!["calendar-events:read".into()],
                    resources: vec!["/calendar-events/{tenant}/".into()],
                },
                Permission {
                    scopes: vec!["calendar-events:write".into()],
                    resources: vec!["/calendar-events/{tenant}/drafts/".into()],
                },
            ],
        );
        let mint = |body: &str| build_claims(&p, &client(), &req(body), NOW, "j".into());
        let c = mint("grant_type=client_credentials&role=reader&claim.tenant=acme").unwrap();
        assert_eq!(c.scope, "calendar-events:read calendar-events:write");
        assert_eq!(
            serde_json::to_value(&c.authorization_details).unwrap(),
            serde_json::json!([
                {"type": "latchkey", "actions": ["calendar-events:read"], "paths": ["/calendar-events/acme/"]},
                {"type": "latchkey", "actions": ["calendar-events:write"], "paths": ["/calendar-events/acme/drafts/"]}
            ])
        );
        // Narrowed by `scope`: the write permission is gone.
        let c =
            mint("grant_type=client_credentials&role=reader&claim.tenant=acme&scope=calendar-events:read")
                .unwrap();
        assert_eq!(c.authorization_details.len(), 1);
        // The claim that fills a template is needed, and one segment.
        let e = mint("grant_type=client_credentials&role=reader").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(
            e.description()
                .contains("role reader: the resource /calendar-events/{tenant}/ needs claim.tenant")
        );
        let e =
            mint("grant_type=client_credentials&role=reader&claim.tenant=acme%2F..%2Fglobex").unwrap_err();
        assert!(e.description().contains("must be one path segment"), "{e:?}");
        // A token without a role carries none; the claim round-trips.
        let plain = mint("grant_type=client_credentials").unwrap();
        assert!(plain.authorization_details.is_empty());
        let json = serde_json::to_value(&c).unwrap();
        assert!(json["authorization_details"].is_array() && json.get("paths").is_none());
        let back: AccessClaims = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        assert!(!back.custom.contains_key("authorization_details"));
    }

    #[test]
    fn key_audiences_narrow_the_policy_and_required_claims_are_required() {
        let auds: Box<[Box<str>]> = vec!["pubsub".into()].into_boxed_slice();
        let mut c = client();
        c.audiences = &auds;
        let claims = build_claims(
            &policy(),
            &c,
            &req("grant_type=client_credentials"),
            NOW,
            "j".into(),
        )
        .unwrap();
        assert_eq!(claims.aud, vec!["pubsub"]);
        let mut p = policy();
        p.custom_claims.insert("tenant".into(), true);
        let e = build_claims(
            &p,
            &client(),
            &req("grant_type=client_credentials"),
            NOW,
            "j".into(),
        )
        .unwrap_err();
        assert!(e.description().contains("claim.tenant is required"));
    }

    #[test]
    fn request_parsing_errors() {
        assert_eq!(TokenRequest::parse(b"").unwrap_err().code(), "invalid_request");
        assert_eq!(
            TokenRequest::parse(b"grant_type=password").unwrap_err(),
            TokenError::UnsupportedGrantType
        );
        assert_eq!(
            TokenRequest::parse(b"grant_type=client_credentials&scope=a&scope=b")
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            TokenRequest::parse(b"grant_type=client_credentials&expires_in=-5")
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    // ---- verification (RFC 8725 attacks) ----

    struct Fixture {
        kid: String,
        enc: jsonwebtoken::EncodingKey,
        verifying: VerifyingKey,
        jwk: String,
    }

    fn fixture(alg: SigningAlgorithm) -> Fixture {
        let key = keys::generate(alg).unwrap();
        let jwk = keys::public_jwk(&key.kid, alg, key.pem.as_bytes()).unwrap();
        Fixture {
            enc: keys::encoding_key(&key.kid, alg, key.pem.as_bytes()).unwrap(),
            verifying: VerifyingKey {
                algorithm: keys::jwt_algorithm(alg),
                key: keys::decoding_key(&key.kid, alg, &jwk).unwrap(),
                issuer: policy().issuer,
                audiences: policy().audiences,
                max_ttl_seconds: policy().max_ttl_seconds,
            },
            kid: key.kid,
            jwk,
        }
    }

    fn sign(f: &Fixture, claims: &AccessClaims) -> String {
        jsonwebtoken::encode(&header(f.verifying.algorithm, &f.kid), claims, &f.enc).unwrap()
    }

    fn check(f: &Fixture, token: &str, now: i64) -> Result<AccessClaims, TokenInvalid> {
        verify(token, |kid| (kid == f.kid).then_some(&f.verifying), now).map(|(c, _)| c)
    }

    fn claims() -> AccessClaims {
        build("grant_type=client_credentials&claim.tenant=acme").unwrap()
    }

    proptest::proptest! {
        #[test]
        fn dots_are_counted_as_a_plain_count_does(bytes in proptest::collection::vec(
            proptest::sample::select(vec![b'.', b'a', b'e', b'y', 0xff]), 0..2000)
        ) {
            proptest::prop_assert_eq!(count_dots(&bytes), bytes.iter().filter(|b| **b == b'.').count());
        }
    }

    #[test]
    fn a_good_token_verifies_for_every_algorithm() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            let f = fixture(alg);
            let token = sign(&f, &claims());
            assert!(looks_like_jwt(&token));
            assert_eq!(check(&f, &token, NOW + 10).unwrap(), claims(), "{alg:?}");
        }
    }

    fn forge(header_json: &str, payload: &AccessClaims, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header_json),
            B64.encode(serde_json::to_vec(payload).unwrap()),
            B64.encode(signature)
        )
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let f = fixture(SigningAlgorithm::ES256);
        let none = forge(
            &format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#, f.kid),
            &claims(),
            b"",
        );
        assert_eq!(check(&f, &none, NOW), Err(TokenInvalid::Malformed));
        // HS256 keyed with the published JWK's bytes (the classic confusion).
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(f.kid.clone());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(f.jwk.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&f, &hs, NOW), Err(TokenInvalid::Signature));
    }

    #[test]
    fn unknown_and_removed_kids_are_refused() {
        let f = fixture(SigningAlgorithm::ES256);
        let other = fixture(SigningAlgorithm::ES256);
        let token = sign(&other, &claims());
        assert_eq!(check(&f, &token, NOW), Err(TokenInvalid::UnknownKey));
        // A removed key is simply no longer found.
        let token = sign(&f, &claims());
        assert_eq!(
            verify(&token, |_| None, NOW).unwrap_err(),
            TokenInvalid::UnknownKey
        );
        // A kid pointing at another key of the same policy: bad signature.
        let mut h = header(Algorithm::ES256, &f.kid);
        h.kid = Some(f.kid.clone());
        let token = jsonwebtoken::encode(&h, &claims(), &other.enc).unwrap();
        assert_eq!(check(&f, &token, NOW), Err(TokenInvalid::Signature));
    }

    #[test]
    fn time_claims_are_checked_with_a_small_leeway() {
        let f = fixture(SigningAlgorithm::EdDSA);
        let c = claims();
        let token = sign(&f, &c);
        assert!(check(&f, &token, c.exp + CLOCK_LEEWAY).is_ok());
        assert_eq!(
            check(&f, &token, c.exp + CLOCK_LEEWAY + 1),
            Err(TokenInvalid::Expired)
        );
        let mut future = claims();
        future.nbf = Some(NOW + 300);
        assert_eq!(check(&f, &sign(&f, &future), NOW), Err(TokenInvalid::NotYetValid));
        let mut issued_later = claims();
        issued_later.iat = NOW + 300;
        assert_eq!(
            check(&f, &sign(&f, &issued_later), NOW),
            Err(TokenInvalid::NotYetValid)
        );
    }

    #[test]
    fn wrong_issuer_audience_or_type_are_refused() {
        let f = fixture(SigningAlgorithm::ES256);
        let mut c = claims();
        c.iss = "https://evil.example".into();
        assert_eq!(check(&f, &sign(&f, &c), NOW), Err(TokenInvalid::Issuer));
        let mut c = claims();
        c.aud = vec!["billing".into()];
        assert_eq!(check(&f, &sign(&f, &c), NOW), Err(TokenInvalid::Audience));
        let mut h = header(Algorithm::ES256, &f.kid);
        h.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&h, &claims(), &f.enc).unwrap();
        assert_eq!(check(&f, &token, NOW), Err(TokenInvalid::Type));
    }

    #[test]
    fn a_tampered_payload_or_oversized_token_is_refused() {
        let f = fixture(SigningAlgorithm::RS256);
        let token = sign(&f, &claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut wider = claims();
        wider.scope = "calendar-events:read calendar-events:write admin".into();
        parts[1] = B64.encode(serde_json::to_vec(&wider).unwrap());
        assert_eq!(check(&f, &parts.join("."), NOW), Err(TokenInvalid::Signature));
        let mut big = claims();
        big.custom.insert("pad".into(), "x".repeat(MAX_TOKEN_LEN).into());
        assert_eq!(check(&f, &sign(&f, &big), NOW), Err(TokenInvalid::TooLarge));
        assert_eq!(check(&f, "eyJ.not.ajwt", NOW), Err(TokenInvalid::Malformed));
    }

    // ---- issue 13: forgeries and collisions ----

    #[test]
    fn a_repeated_expires_in_is_refused_like_every_repeated_parameter() {
        let e =
            TokenRequest::parse(b"grant_type=client_credentials&expires_in=60&expires_in=3600").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(
            e.description().contains("expires_in appears more than once"),
            "{e:?}"
        );
        for body in [
            "grant_type=client_credentials&grant_type=client_credentials",
            "grant_type=client_credentials&role=a&role=b",
            "grant_type=client_credentials&policy=a&policy=b",
            "grant_type=client_credentials&claim.tenant=a&claim.tenant=b",
        ] {
            assert_eq!(
                TokenRequest::parse(body.as_bytes()).unwrap_err().code(),
                "invalid_request",
                "{body}"
            );
        }
    }

    #[test]
    fn custom_claims_never_nest_nor_take_a_reserved_name() {
        for body in ["claim.tenant.id=x", "claim.=x", "claim.a%20b=x", "claim.1st=x"] {
            let e =
                TokenRequest::parse(format!("grant_type=client_credentials&{body}").as_bytes()).unwrap_err();
            assert!(e.description().contains("cannot nest"), "{body}: {e:?}");
        }
        // A policy from before the CRD's rule listed `active`: still refused.
        let mut p = policy();
        for name in ["active", "Active", "username", "token_type", "sid"] {
            p.custom_claims.insert(name.into(), false);
            let e = build_claims(
                &p,
                &client(),
                &req(&format!("grant_type=client_credentials&claim.{name}=false")),
                NOW,
                "j".into(),
            )
            .unwrap_err();
            assert!(e.description().contains("is reserved"), "{name}: {e:?}");
        }
        for name in RESERVED_CLAIMS {
            assert!(is_reserved_claim(name) && is_reserved_claim(&name.to_ascii_uppercase()));
        }
        assert!(!is_reserved_claim("tenant"));
    }

    #[test]
    fn a_crit_header_is_refused() {
        let f = fixture(SigningAlgorithm::ES256);
        let mut h = header(Algorithm::ES256, &f.kid);
        h.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&h, &claims(), &f.enc).unwrap();
        assert_eq!(check(&f, &token, NOW), Err(TokenInvalid::Critical));
    }

    #[test]
    fn a_lifetime_beyond_max_ttl_is_refused() {
        let f = fixture(SigningAlgorithm::EdDSA);
        let mut c = claims();
        c.exp = c.iat + 3600 + CLOCK_LEEWAY;
        assert!(
            check(&f, &sign(&f, &c), NOW).is_ok(),
            "maxTTL plus the leeway is fine"
        );
        c.exp = c.iat + 3600 + CLOCK_LEEWAY + 1;
        assert_eq!(check(&f, &sign(&f, &c), NOW), Err(TokenInvalid::Lifetime));
        // Ten years, the forgery of the issue.
        c.exp = c.iat + 10 * 365 * 86400;
        assert_eq!(check(&f, &sign(&f, &c), NOW), Err(TokenInvalid::Lifetime));
    }

    #[test]
    fn reserved_or_non_string_custom_claims_in_a_signed_token_are_refused() {
        let f = fixture(SigningAlgorithm::ES256);
        for (name, value) in [
            ("active", serde_json::json!("false")),
            ("username", serde_json::json!("root")),
            ("tenant", serde_json::json!({"id": "acme"})),
            ("tenant", serde_json::json!(["acme"])),
            ("tenant", serde_json::json!(7)),
            ("tenant", serde_json::json!(false)),
        ] {
            let mut c = claims();
            c.custom.insert(name.into(), value.clone());
            assert_eq!(
                check(&f, &sign(&f, &c), NOW),
                Err(TokenInvalid::Claims),
                "{name}={value}"
            );
        }
    }
}
