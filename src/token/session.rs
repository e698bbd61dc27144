//! Delegation and sessions, pure: tokens minted for end users by an API key
//! (`requested_subject`, RFC 8693 `act`), and their refresh by RFC 8693
//! token exchange within the session's bound. No client, no state: the
//! caller passes `now` and what it verified.
//!
//! Decisions:
//! - A TokenPolicy's `spec.delegation.subjectPattern` is an RE2 expression
//!   (the `regex` crate: linear time, no look-around or back-references)
//!   that a requested subject must match **as a whole**: it is compiled as
//!   `^(?:pattern)$`, so an unanchored `user-[0-9]+` cannot admit
//!   `evil-user-1-admin`. At most [`MAX_PATTERN_LEN`] characters, compiled
//!   to at most [`PATTERN_SIZE_LIMIT`] bytes (the webhook refuses more; a
//!   policy that bypassed it delegates nothing).
//! - Every token gets a session: a new random `sid` and `auth_time` (its
//!   `iat`) when minted with `client_credentials`, delegated or not, so any
//!   token can be refreshed within `sessionMaxAge` (default `maxTTL`) and
//!   a session is one thing to name (for revocation later). No token of a
//!   session expires after `auth_time + sessionMaxAge`.
//! - A delegated token: `sub` = the requested subject, `act: {"sub": <the
//!   ApiKey's subject>}`, `client_id` = the key id, as for any token.
//! - Refresh (`grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
//!   `subject_token_type=urn:ietf:params:oauth:token-type:access_token`):
//!   the subject token must verify (signature, `exp`, ...), be of the same
//!   policy, have been minted by a key of the same ApiKey as the caller's
//!   (a rotation does not end sessions; another ApiKey, even of the same
//!   namespace and policy, is refused), carry `sid` and `auth_time`, and
//!   its session must not be over. The new token keeps `sub`, `sid`,
//!   `auth_time`, `role`, `act` (its subject refreshed to the key's current
//!   one) and the custom claims; its scopes and audiences are the old ones
//!   or fewer (`scope=`/`audience=` narrow; more is `invalid_scope`), and
//!   never more than the key and the policy allow now. Errors on the
//!   subject token are `invalid_grant` (RFC 6749 §5.2's code for a grant
//!   that is "invalid, expired, revoked ... or was issued to another
//!   client"; RFC 8693 §2.2.2 would say `invalid_request`, less useful to a
//!   client that must tell "log in again" from "fix your request").
//! - A federated session (a token whose `idp` names the trusted issuer
//!   whose token began it, [`super::federation`]) refreshes by the same
//!   rules and the same bound, `auth_time` (the provider's login) +
//!   `sessionMaxAge`, but not by delegation's: its user is the provider's,
//!   not one the ApiKey delegated to, so `spec.delegation` is not needed;
//!   what must still hold is the policy's trust in that issuer (removed
//!   from `spec.trustedIssuers`: `invalid_grant` saying so). When the
//!   session is over the error says to log in again at the provider.
//! - Nothing is stored: the session's bound travels in the token
//!   (`auth_time`) and the policy (`sessionMaxAge`).

use super::claims::{AccessClaims, ClientKey, PolicyRules, TokenError, TokenRequest};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the token type of a latchkey access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The longest `spec.delegation.subjectPattern` (characters).
pub const MAX_PATTERN_LEN: usize = 256;
/// The most memory a compiled subject pattern may take (bytes).
pub const PATTERN_SIZE_LIMIT: usize = 64 * 1024;
/// The longest requested subject (bytes).
pub const MAX_SUBJECT_LEN: usize = 256;

/// Why a subject pattern is refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "spec.delegation.subjectPattern is {0} characters long; keep it to {MAX_PATTERN_LEN}, for example ^user-[0-9]+$"
    )]
    TooLong(usize),
    #[error(
        "spec.delegation.subjectPattern is too complex (over {PATTERN_SIZE_LIMIT} bytes compiled); simplify it: fewer or smaller counted repetitions such as {{1000}}, narrower classes such as [0-9] instead of \\d (which is Unicode)"
    )]
    TooBig,
    #[error(
        "spec.delegation.subjectPattern is not a valid RE2 regular expression: {0}; fix it (no look-around or back-references), for example ^user-[0-9]+$"
    )]
    Syntax(String),
}

/// A compiled `subjectPattern`, matching whole subjects only.
#[derive(Debug, Clone)]
pub struct SubjectPattern(Regex);

impl SubjectPattern {
    pub fn compile(pattern: &str) -> Result<Self, PatternError> {
        let len = pattern.chars().count();
        if len > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong(len));
        }
        RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(SubjectPattern)
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => PatternError::TooBig,
                // The parser's message spans lines (a caret under the spot).
                other => PatternError::Syntax(
                    other
                        .to_string()
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            })
    }

    pub fn matches(&self, subject: &str) -> bool {
        self.0.is_match(subject)
    }
}

/// Whom a policy's keys may mint tokens for.
#[derive(Debug, Clone, Default)]
pub enum Delegation {
    /// No `spec.delegation`.
    #[default]
    Off,
    To(SubjectPattern),
    /// A pattern that does not compile (the webhook was bypassed): nothing
    /// is delegated, and the client is told why.
    Broken(PatternError),
}

/// What a policy says about delegation and sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionRules {
    pub delegation: Delegation,
    pub session_max_age_seconds: i64,
    /// `spec.trustedIssuers[].issuer`: whose sessions (a token's `idp`) may
    /// still be refreshed.
    pub trusted_issuers: Vec<String>,
}

impl SessionRules {
    /// From a policy's spec; `max_ttl_seconds` is the default session length
    /// (also used, with a warning by the caller's CRD rules, when
    /// `sessionMaxAge` does not parse).
    pub fn of(spec: &crate::crd::TokenPolicySpec, max_ttl_seconds: i64) -> Self {
        let delegation = match &spec.delegation {
            None => Delegation::Off,
            Some(d) => match SubjectPattern::compile(&d.subject_pattern) {
                Ok(p) => Delegation::To(p),
                Err(e) => Delegation::Broken(e),
            },
        };
        let session_max_age_seconds = spec
            .session_max_age
            .as_deref()
            .and_then(|v| crate::time::parse_duration("spec.sessionMaxAge", v).ok())
            .map_or(max_ttl_seconds, |d| d.as_secs());
        SessionRules {
            delegation,
            session_max_age_seconds,
            trusted_issuers: spec.trusted_issuers.iter().map(|t| t.issuer.clone()).collect(),
        }
    }
}

/// RFC 8693 §4.1's actor claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
}

/// A `subject_token`, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SubjectToken(pub String);

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(…)")
    }
}

/// The delegation and exchange parameters of a token request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRequest {
    /// `requested_subject` (client_credentials only): the end user.
    pub requested_subject: Option<String>,
    /// Set when `grant_type` is token exchange.
    pub exchange: bool,
    pub subject_token: Option<SubjectToken>,
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub actor_token: bool,
}

impl SessionRequest {
    pub const PARAMETERS: [&'static str; 6] = [
        "requested_subject",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "actor_token",
        "actor_token_type",
    ];

    /// Takes one of [`Self::PARAMETERS`] (each at most once).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), TokenError> {
        let dup = || TokenError::InvalidRequest(format!("parameter {name} appears more than once"));
        let once = |slot: &mut Option<String>| match slot.replace(value.to_owned()) {
            Some(_) => Err(dup()),
            None => Ok(()),
        };
        match name {
            "requested_subject" => {
                if value.is_empty() || value.len() > MAX_SUBJECT_LEN || value.chars().any(char::is_control) {
                    return Err(TokenError::InvalidRequest(format!(
                        "requested_subject must be 1-{MAX_SUBJECT_LEN} bytes of printable characters"
                    )));
                }
                once(&mut self.requested_subject)
            }
            "subject_token" => match self.subject_token.replace(SubjectToken(value.to_owned())) {
                Some(_) => Err(dup()),
                None => Ok(()),
            },
            "subject_token_type" => once(&mut self.subject_token_type),
            "requested_token_type" => once(&mut self.requested_token_type),
            // actor_token, actor_token_type
            _ => {
                self.actor_token = true;
                Ok(())
            }
        }
    }

    /// An exchange of an external provider's JWT (federation), not a refresh.
    pub fn external(&self) -> bool {
        use super::federation::{ID_TOKEN_TYPE, JWT_TOKEN_TYPE};
        self.exchange
            && matches!(
                self.subject_token_type.as_deref(),
                Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE)
            )
    }

    /// The parameters of a token exchange (RFC 8693 §2.1) are complete and
    /// of a kind latchkey exchanges.
    pub fn check_exchange(&mut self) -> Result<(), TokenError> {
        self.exchange = true;
        if self.subject_token.as_ref().is_none_or(|t| t.0.is_empty()) {
            return Err(TokenError::InvalidRequest(
                "subject_token is missing: send the latchkey access token to refresh".into(),
            ));
        }
        use super::federation::{ID_TOKEN_TYPE, JWT_TOKEN_TYPE};
        match self.subject_token_type.as_deref() {
            Some(ACCESS_TOKEN_TYPE | JWT_TOKEN_TYPE | ID_TOKEN_TYPE) => {}
            Some(other) => {
                return Err(TokenError::InvalidRequest(format!(
                    "subject_token_type {other} is not supported; latchkey exchanges its own access tokens \
                     (subject_token_type={ACCESS_TOKEN_TYPE}) and JWTs of a TokenPolicy's trusted issuers \
                     (subject_token_type={JWT_TOKEN_TYPE} or {ID_TOKEN_TYPE})"
                )));
            }
            None => {
                return Err(TokenError::InvalidRequest(format!(
                    "subject_token_type is missing; send subject_token_type={ACCESS_TOKEN_TYPE}"
                )));
            }
        }
        if self
            .requested_token_type
            .as_deref()
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
        {
            return Err(TokenError::InvalidRequest(format!(
                "requested_token_type may only be {ACCESS_TOKEN_TYPE}"
            )));
        }
        if self.actor_token {
            return Err(TokenError::InvalidRequest(
                "actor_token is not supported: the API key that authenticates the request is the actor"
                    .into(),
            ));
        }
        if self.requested_subject.is_some() {
            return Err(TokenError::InvalidRequest(
                "requested_subject cannot be used in a token exchange: a refresh keeps the subject_token's sub"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Starts a session on claims just built for `client_credentials`: the
/// delegated subject and actor when `requested_subject` was sent, a new
/// `sid`, `auth_time`, and `exp` within the session. `granted` says whether
/// the key's namespace may present a subject (its CredentialGrants).
pub fn start(
    claims: &mut AccessClaims,
    rules: &SessionRules,
    request: &TokenRequest,
    granted: impl Fn(&str) -> bool,
    sid: String,
    now: i64,
) -> Result<(), TokenError> {
    if let Some(subject) = &request.session.requested_subject {
        match &rules.delegation {
            Delegation::Off => {
                return Err(TokenError::UnauthorizedClient(
                    "requested_subject needs delegation: the TokenPolicy has no spec.delegation \
                     (add spec.delegation.subjectPattern to let its API keys mint tokens for users)"
                        .into(),
                ));
            }
            Delegation::Broken(e) => {
                return Err(TokenError::UnauthorizedClient(format!(
                    "the TokenPolicy's delegation is unusable: {e}"
                )));
            }
            Delegation::To(pattern) if !pattern.matches(subject) => {
                return Err(TokenError::InvalidRequest(
                    "requested_subject does not match the TokenPolicy's spec.delegation.subjectPattern"
                        .into(),
                ));
            }
            Delegation::To(_) if !granted(subject) => {
                return Err(TokenError::InvalidRequest(
                    "requested_subject is not granted to this namespace by its CredentialGrants \
                     (spec.subjects); ask the platform team, or use a subject starting with <namespace>/"
                        .into(),
                ));
            }
            Delegation::To(_) => {
                let actor = std::mem::replace(&mut claims.sub, subject.clone());
                claims.act = Some(Actor { sub: actor });
            }
        }
    }
    claims.sid = Some(sid);
    claims.auth_time = Some(now);
    claims.exp = claims.exp.min(now.saturating_add(rules.session_max_age_seconds));
    Ok(())
}

/// The subject token of an exchange, verified by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub claims: &'a AccessClaims,
    /// Signed by a key of the policy this request is for.
    pub same_policy: bool,
    /// Its `client_id` is a valid key of the caller's own ApiKey.
    pub same_api_key: bool,
}

/// The claims of the token that refreshes `presented` (RFC 8693 exchange),
/// for `client` under `policy` at `now`; `jti` is the caller's random id.
pub fn refresh(
    presented: Presented<'_>,
    rules: &SessionRules,
    policy: &PolicyRules,
    client: &ClientKey<'_>,
    request: &TokenRequest,
    now: i64,
    jti: String,
) -> Result<AccessClaims, TokenError> {
    let old = presented.claims;
    if !presented.same_policy {
        return Err(TokenError::InvalidGrant(
            "the subject_token was not issued under this TokenPolicy; refresh it where it was issued".into(),
        ));
    }
    if !presented.same_api_key {
        return Err(TokenError::InvalidGrant(
            "the subject_token was issued to another client: only the ApiKey whose key minted it may refresh it"
                .into(),
        ));
    }
    let (Some(sid), Some(auth_time)) = (&old.sid, old.auth_time) else {
        return Err(TokenError::InvalidGrant(
            "the subject_token has no session (sid, auth_time); obtain a new token with client_credentials"
                .into(),
        ));
    };
    let session_end = auth_time.saturating_add(rules.session_max_age_seconds);
    if now >= session_end {
        let again = match &old.idp {
            Some(_) => "log in again at the identity provider and exchange its new token",
            None => "obtain a new token with client_credentials",
        };
        return Err(TokenError::InvalidGrant(format!(
            "the session is over (it began at {auth_time} and lasts spec.sessionMaxAge, {} s); {again}",
            rules.session_max_age_seconds
        )));
    }
    if request.role.is_some() || !request.claims.is_empty() {
        return Err(TokenError::InvalidRequest(
            "role and claim.* cannot change in a token exchange: a refresh keeps the subject_token's".into(),
        ));
    }
    // Who acts, and for whom: still allowed now?
    let act = match (&old.idp, &old.act) {
        // Federated: the user is the provider's; what must still hold is
        // the policy's trust in that provider (delegation plays no part).
        (Some(idp), act) => {
            if !rules.trusted_issuers.iter().any(|t| t == idp) {
                return Err(TokenError::InvalidGrant(
                    "the session began with a token of an identity provider the TokenPolicy no longer trusts \
                     (spec.trustedIssuers); log in again with a provider it trusts"
                        .into(),
                ));
            }
            act.as_ref().map(|_| Actor {
                sub: client.subject.to_owned(),
            })
        }
        (None, Some(_)) => {
            let Delegation::To(pattern) = &rules.delegation else {
                return Err(TokenError::InvalidGrant(
                    "the TokenPolicy no longer allows delegation (spec.delegation); the session cannot be refreshed"
                        .into(),
                ));
            };
            if !pattern.matches(&old.sub) {
                return Err(TokenError::InvalidGrant(
                    "the subject_token's sub no longer matches spec.delegation.subjectPattern".into(),
                ));
            }
            Some(Actor {
                sub: client.subject.to_owned(),
            })
        }
        (None, None) if old.sub != client.subject => {
            return Err(TokenError::InvalidGrant(
                "the API key's subject changed since the subject_token was issued; obtain a new token".into(),
            ));
        }
        (None, None) => None,
    };

    // Scopes: the old ones or fewer, and only what the key and policy allow now.
    let now_allowed: BTreeSet<&str> = client
        .scopes
        .iter()
        .copied()
        .filter(|s| policy.allowed_scopes.contains(*s))
        .collect();
    let had: BTreeSet<&str> = old.scopes().collect();
    let scopes: BTreeSet<&str> = match &request.scopes {
        Some(asked) => {
            for s in asked {
                if !had.contains(s.as_str()) {
                    return Err(TokenError::InvalidScope(format!(
                        "scope {s} is not in the subject_token; a refresh keeps or narrows its scopes"
                    )));
                }
                if !now_allowed.contains(s.as_str()) {
                    return Err(TokenError::InvalidScope(format!(
                        "scope {s} is no longer allowed for this API key under the TokenPolicy"
                    )));
                }
            }
            asked.iter().map(String::as_str).collect()
        }
        None => had.intersection(&now_allowed).copied().collect(),
    };

    // Audiences likewise.
    let aud_now = |a: &str| {
        policy.audiences.iter().any(|p| p == a)
            && (client.audiences.is_empty() || client.audiences.iter().any(|k| &**k == a))
    };
    let aud: Vec<String> = if request.audiences.is_empty() {
        old.aud.iter().filter(|a| aud_now(a)).cloned().collect()
    } else {
        if let Some(extra) = request.audiences.iter().find(|a| !old.aud.contains(a)) {
            return Err(TokenError::InvalidScope(format!(
                "audience {extra} is not in the subject_token; a refresh keeps or narrows its audiences"
            )));
        }
        if let Some(gone) = request.audiences.iter().find(|a| !aud_now(a)) {
            return Err(TokenError::InvalidScope(format!(
                "audience {gone} is no longer allowed for this API key under the TokenPolicy"
            )));
        }
        let set: BTreeSet<String> = request.audiences.iter().cloned().collect();
        set.into_iter().collect()
    };
    if aud.is_empty() {
        return Err(TokenError::InvalidScope(
            "no audience of the subject_token is still allowed for this API key under the TokenPolicy".into(),
        ));
    }

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
    let mut claims = old.clone();
    claims.iss = policy.issuer.clone();
    claims.aud = aud;
    claims.iat = now;
    claims.nbf = None;
    claims.exp = now.saturating_add(ttl).min(session_end);
    claims.jti = jti;
    claims.client_id = client.key_id.to_owned();
    // A role's permissions narrow with the scopes (never a scope on a path
    // beyond what `scope` says).
    claims.authorization_details = super::permissions::narrow(&old.authorization_details, &scopes);
    claims.scope = scopes.into_iter().collect::<Vec<_>>().join(" ");
    claims.act = act;
    claims.sid = Some(sid.clone());
    claims.auth_time = Some(auth_time);
    Ok(claims)
}

#[cfg(test)]
mod tests;
