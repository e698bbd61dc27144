//! Refresh by RFC 8693 token exchange at `/token` (and `<issuer>/token`):
//! the subject token verified against the published keys, then the pure
//! decision of [`crate::token::session::refresh`].

use super::*;
use crate::token::session::{self, Presented};
use revoke::revoked_in;

/// The claims of the token that refreshes the request's `subject_token`,
/// for the caller's key (`client`, of ApiKey `owner`) under `policy`.
#[allow(clippy::too_many_arguments)]
pub(super) fn refreshed_claims(
    index: &Index,
    snapshot: &Snapshot,
    policy: &PolicyEntry,
    owner: &IndexedApiKey,
    client: &ClientKey<'_>,
    request: &TokenRequest,
    now: Timestamp,
    jti: String,
    revoked_here: &HashMap<String, i64>,
) -> Result<AccessClaims, TokenError> {
    let token = request
        .session
        .subject_token
        .as_ref()
        .map(|t| t.0.as_str())
        .unwrap_or_default();
    let now_s = now.as_second();
    let (old, kid) = claims::verify(token, |kid| snapshot.by_kid.get(kid), now_s).map_err(|e| {
        TokenError::InvalidGrant(format!(
            "the subject_token is not a valid latchkey access token: {}",
            e.description()
        ))
    })?;
    let same_policy = snapshot
        .policy_by_kid
        .get(&kid)
        .is_some_and(|p| p.namespace == policy.namespace && p.name == policy.name);
    // The key that minted it must still be valid (as on every route), and
    // be of the caller's own ApiKey (any of its keys: a rotation keeps sessions).
    let same_api_key = KeyId::try_from(old.client_id.as_bytes())
        .ok()
        .and_then(|id| {
            index.find_valid_with(&id, now, |entry| {
                entry.owner.namespace() == owner.namespace() && entry.owner.name() == owner.name()
            })
        })
        .ok_or_else(|| {
            TokenError::InvalidGrant(
                "the API key that minted the subject_token is revoked, expired or past its grace period"
                    .into(),
            )
        })?;
    // A revoked session (or subject, or policy cutoff) cannot be refreshed.
    if let Some(why) = snapshot
        .policy_by_kid
        .get(&kid)
        .and_then(|p| revoked_in(p, revoked_here, &old))
    {
        return Err(TokenError::InvalidGrant(format!(
            "the subject_token is revoked ({}); log in again",
            why.description()
        )));
    }
    let presented = Presented {
        claims: &old,
        same_policy,
        same_api_key,
    };
    session::refresh(
        presented,
        &policy.session,
        &policy.rules,
        client,
        request,
        now_s,
        jti,
    )
}
