//! Discovery, JWKS and the token endpoint under each issuer's path.

use super::*;

/// Discovery, JWKS and the token endpoint under each issuer's path.
pub async fn by_issuer(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let lookup = |suffix: &str| {
        path.strip_suffix(suffix)
            .and_then(|prefix| state.tokens.by_issuer_path(prefix.trim_end_matches('/')))
    };
    let json_response = |body: String, max_age: u64| {
        let cache = if max_age == 0 {
            HeaderValue::from_static("no-cache")
        } else {
            crate::server::index::header(&format!("public, max-age={max_age}"))
        };
        (
            StatusCode::OK,
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, cache),
            ],
            body,
        )
            .into_response()
    };
    if method == Method::GET || method == Method::HEAD {
        if let Some(p) = lookup(DISCOVERY_SUFFIX) {
            return json_response(p.discovery.clone(), p.jwks_max_age);
        }
        if let Some(p) = lookup(JWKS_SUFFIX) {
            return json_response(p.jwks.clone(), p.jwks_max_age);
        }
    }
    if let Some(p) = lookup(REVOKE_SUFFIX) {
        if method != Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, [("allow", "POST")]).into_response();
        }
        let headers = request.headers().clone();
        let Ok(body) = axum::body::to_bytes(request.into_body(), 64 * 1024).await else {
            return token_error(&TokenError::InvalidRequest(
                "the request body is too large".into(),
            ));
        };
        return revoke::revoke_response(&state, &headers, &body, Some(p)).await;
    }
    if let Some(p) = lookup(TOKEN_SUFFIX) {
        if method != Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, [("allow", "POST")]).into_response();
        }
        let headers = request.headers().clone();
        let Ok(body) = axum::body::to_bytes(request.into_body(), 64 * 1024).await else {
            return token_error(&TokenError::InvalidRequest(
                "the request body is too large".into(),
            ));
        };
        super::federation::prefetch(&state, &body).await;
        return token_response(&state, &headers, &body, Some(p));
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}
