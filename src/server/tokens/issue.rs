//! `POST /token` (and `<issuer>/token`): client authentication with an API key, the request narrowed by the key and the policy, a signed RFC 9068 token.

use super::*;

pub(super) fn token_error(err: &TokenError) -> Response {
    let status = match err {
        TokenError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        TokenError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        TokenError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = (
        status,
        axum::Json(json!({"error": err.code(), "error_description": err.description()})),
    )
        .into_response();
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if let TokenError::RateLimited { retry_after, limit } = err {
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        headers.insert(decision::X_RATELIMIT_LIMIT, HeaderValue::from(*limit));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"latchkey\""),
        );
    }
    resp
}

/// The API key a token request authenticates with: HTTP Basic (the key as
/// the password; the user name is ignored), `Authorization: Bearer`, or the
/// form's `client_secret`. More than one (a repeated `Authorization` header,
/// a header and `client_secret` both) is `invalid_request` (RFC 6749 §2.3:
/// one authentication method per request), never "first wins".
pub(super) fn client_key(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, TokenError> {
    let more_than_one = || {
        TokenError::InvalidRequest(
            "authenticate once: one Authorization header or client_secret, not several".into(),
        )
    };
    let mut auths = headers.get_all(AUTHORIZATION).iter();
    let auth = auths.next();
    if auths.next().is_some() {
        return Err(more_than_one());
    }
    let auth = auth.and_then(|v| v.to_str().ok()).map(str::trim);
    let mut secrets = form_urlencoded::parse(body).filter(|(k, _)| k == "client_secret");
    let secret = secrets.next().map(|(_, v)| v.into_owned());
    if secrets.next().is_some() {
        return Err(more_than_one());
    }
    let from_header = match auth.and_then(|a| a.split_once(' ')) {
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("basic") => {
            let password = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|t| t.split_once(':').map(|(_, p)| p.to_owned()));
            // A Basic header that does not decode is no credential at all.
            Some(password.ok_or_else(|| {
                TokenError::InvalidClient("the Basic credentials do not decode as user:password".into())
            })?)
        }
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("bearer") => Some(value.trim().to_owned()),
        _ => None,
    };
    match (from_header, secret) {
        (Some(_), Some(_)) => Err(more_than_one()),
        (header, secret) => Ok(header.or(secret)),
    }
}

/// Issues a token; `fixed` is the policy of an `<issuer>/token` URL.
pub fn issue(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Result<serde_json::Value, TokenError> {
    let form = crate::server::introspect::is_form(headers);
    if !form {
        return Err(TokenError::InvalidRequest(
            "send the request as application/x-www-form-urlencoded".into(),
        ));
    }
    let presented = client_key(headers, body)?.ok_or_else(|| {
        TokenError::InvalidClient(
            "authenticate with the API key as HTTP Basic password or Bearer token".into(),
        )
    })?;
    let request = TokenRequest::parse(body)?;
    if !state.index.is_synced() || !state.tokens.is_synced() {
        return Err(TokenError::TemporarilyUnavailable(
            "the server is still loading".into(),
        ));
    }
    let now = state.clock.now();
    let (entry, key_id) = decision::verify(&presented, &state.index, now).map_err(|invalid| {
        if decision::note_retired(&presented, invalid, &state.index, now).retired_key_presented() {
            state.metrics.observe_retired_key();
        }
        TokenError::InvalidClient("the API key is unknown, revoked or expired".into())
    })?;
    let owner = &entry.owner;
    // A use of the key like any other: its bucket, its lastUsedAt.
    decision::use_key(&owner.usage, &entry.counters, now).map_err(|l| TokenError::RateLimited {
        retry_after: l.retry_after,
        limit: l.limit,
    })?;
    let snapshot = state.tokens.snapshot();
    let policy = match (fixed, &request.policy) {
        (Some(p), _) => Some(p),
        (None, Some(name)) => snapshot
            .by_name
            .get(&(owner.namespace().to_owned(), name.clone()))
            .cloned(),
        (None, None) => {
            let mut admitting = snapshot.by_name.values().filter(|p| p.admits(owner));
            match (admitting.next(), admitting.next()) {
                (Some(_), Some(_)) => {
                    return Err(TokenError::InvalidRequest(
                        "several TokenPolicies admit this API key; name one with policy=<name>".into(),
                    ));
                }
                (one, _) => one.cloned(),
            }
        }
    };
    let Some(policy) = policy.filter(|p| p.admits(owner)) else {
        return Err(TokenError::UnauthorizedClient(
            "this API key may not exchange tokens here: set its spec.tokenPolicyRef, or match a \
             TokenPolicy's spec.apiKeySelector in its namespace"
                .into(),
        ));
    };
    if !policy.conflicts.is_empty() {
        // Which other policy is for its status (IssuerConflict), not for a client.
        return Err(TokenError::UnauthorizedClient(
            "the TokenPolicy's issuer is also claimed by another TokenPolicy; no token is issued \
             until one of them changes spec.issuer (see the TokenPolicy's status)"
                .into(),
        ));
    }
    let now_s = now.as_second();
    let Some(signer) = policy.signer(now_s) else {
        return Err(TokenError::TemporarilyUnavailable(
            "the TokenPolicy has no signing key yet; retry in a few seconds".into(),
        ));
    };
    let scopes: Vec<&str> = owner.scopes().collect();
    let key_id = String::from_utf8_lossy(&key_id).into_owned();
    let client = ClientKey {
        key_id: &key_id,
        subject: owner.subject(),
        scopes: &scopes,
        audiences: &owner.audiences,
    };
    let jti = key::random_id(22);
    let exchange = request.session.exchange;
    let claims = if request.session.external() {
        super::federation::exchanged_claims(state, &policy, &client, &request, now_s, jti)?
    } else if exchange {
        super::exchange::refreshed_claims(
            &state.index,
            &snapshot,
            &policy,
            owner,
            &client,
            &request,
            now,
            jti,
            &state.tokens.revoked_here(),
        )?
    } else {
        let mut claims = claims::build_claims(&policy.rules, &client, &request, now_s, jti)?;
        let grants = state.index.grants();
        let granted = |subject: &str| grants.subject_granted(owner.namespace(), subject);
        let sid = key::random_id(22);
        crate::token::session::start(&mut claims, &policy.session, &request, granted, sid, now_s)?;
        claims
    };
    let token = jsonwebtoken::encode(
        &claims::header(signer.algorithm, &signer.kid),
        &claims,
        &signer.key,
    )
    .map_err(|_| TokenError::TemporarilyUnavailable("signing failed".into()))?;
    tracing::debug!(policy = %policy.name, kid = %signer.kid, client_id = %key_id, exchange, "issued a token");
    let mut answer = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - now_s,
        "scope": claims.scope,
    });
    if exchange {
        // RFC 8693 §2.2.1.
        answer["issued_token_type"] = json!(crate::token::session::ACCESS_TOKEN_TYPE);
    }
    Ok(answer)
}

pub(super) fn token_response(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Response {
    let result = issue(state, headers, body, fixed);
    state
        .metrics
        .observe_token(result.as_ref().err().map(TokenError::code));
    match result {
        Ok(value) => {
            let mut resp = axum::Json(value).into_response();
            let headers = resp.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(err) => token_error(&err),
    }
}

/// `POST /token`.
pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    super::federation::prefetch(&state, &body).await;
    token_response(&state, &headers, &body, None)
}
