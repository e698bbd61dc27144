//! Federation on the server: the JWK Sets of the issuers TokenPolicies
//! trust (`spec.trustedIssuers`), fetched over HTTP and cached, and the
//! exchange of an external JWT at `/token` (the pure decision is
//! [`crate::token::federation`]).
//!
//! Decisions:
//! - A JWK Set is fetched only for an issuer some policy trusts, from its
//!   `jwksURL` or the `jwks_uri` of its discovery document, both `https://`
//!   or loopback `http://`; at most every [`fed::MIN_REFETCH_SECONDS`] per
//!   set whatever the requests (an unknown `kid` refreshes it, so a
//!   provider's rotation is picked up), and again when older than
//!   [`fed::MAX_KEYS_AGE_SECONDS`]. Responses over [`fed::MAX_JWKS_BYTES`],
//!   redirects and slow providers (5 s) are failures; a failed fetch keeps
//!   the keys held. Sets not refreshed for an hour are forgotten, so the
//!   cache holds at most the sets of the trusted issuers in use.
//! - The fetch happens before the synchronous `/token` decision, from the
//!   request's unverified `iss` and `kid`; the decision then verifies with
//!   the keys held.

use super::*;
use crate::token::federation::{self as fed, ExternalKey, Trusted};
use std::sync::Mutex;

/// A trusted issuer of a policy, with where its keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedSource {
    pub trusted: Trusted,
    pub jwks_url: Option<String>,
}

impl TrustedSource {
    pub fn of(spec: &crate::crd::TrustedIssuer) -> Self {
        TrustedSource {
            trusted: Trusted::of(spec),
            jwks_url: spec.jwks_url.clone(),
        }
    }

    /// The cache key: the JWKS URL, or the issuer's discovery.
    fn source(&self) -> String {
        self.jwks_url
            .clone()
            .unwrap_or_else(|| format!("discovery:{}", self.trusted.issuer))
    }
}

/// A JWK Set not refreshed for this long is forgotten (see [`ExternalKeys::refresh`]).
const UNUSED_SET_SECONDS: i64 = 3600;

#[derive(Default)]
struct KeySet {
    keys: Arc<Vec<ExternalKey>>,
    fetched_at: Option<i64>,
    last_attempt: Option<i64>,
}

/// The JWK Sets of trusted issuers, by source.
#[derive(Default)]
pub struct ExternalKeys {
    sets: Mutex<HashMap<String, KeySet>>,
    client: std::sync::OnceLock<reqwest::Client>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0} is not an https:// (or loopback http://) URL")]
    Url(String),
    #[error("GET {0} failed: {1}")]
    Http(String, String),
    #[error("GET {0}: {1}")]
    Body(String, String),
}

impl ExternalKeys {
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            // reqwest (rustls-no-provider) takes the process's default
            // provider: ring, latchkey's one (kube's client installs it too;
            // whichever comes first wins, and it is the same).
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
    }

    /// The keys held for `source` (empty if none).
    pub fn keys(&self, source: &TrustedSource) -> Arc<Vec<ExternalKey>> {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.get(&source.source())
            .map(|s| s.keys.clone())
            .unwrap_or_default()
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        if !fed::fetchable_url(url) {
            return Err(FetchError::Url(url.to_owned()));
        }
        let http = |e: &dyn std::fmt::Display| FetchError::Http(url.to_owned(), e.to_string());
        let mut resp = self.client().get(url).send().await.map_err(|e| http(&e))?;
        if !resp.status().is_success() {
            return Err(http(&resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > fed::MAX_JWKS_BYTES {
                return Err(FetchError::Body(
                    url.to_owned(),
                    "the response is too large".into(),
                ));
            }
        }
        Ok(body)
    }

    async fn fetch(&self, source: &TrustedSource) -> Result<Vec<ExternalKey>, FetchError> {
        let url = match &source.jwks_url {
            Some(url) => url.clone(),
            None => {
                let discovery = format!("{}/.well-known/openid-configuration", source.trusted.issuer);
                let doc: serde_json::Value = serde_json::from_slice(&self.get(&discovery).await?)
                    .map_err(|e| FetchError::Body(discovery.clone(), e.to_string()))?;
                doc.get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| FetchError::Body(discovery, "no jwks_uri".into()))?
            }
        };
        let body = self.get(&url).await?;
        fed::parse_jwks(&body).map_err(|e| FetchError::Body(url, e.to_string()))
    }

    /// Fetches the set of `source` if it is due (see [`fed::should_fetch`]).
    pub async fn refresh(&self, source: &TrustedSource, kid: &str, now: i64) {
        let key = source.source();
        {
            let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
            // Sets unused for an hour (a policy that no longer trusts the
            // issuer) are dropped: only configured sources are ever added.
            sets.retain(|_, s| {
                s.last_attempt
                    .is_some_and(|at| now.saturating_sub(at) < UNUSED_SET_SECONDS)
            });
            let set = sets.entry(key.clone()).or_default();
            let has_kid = set.keys.iter().any(|k| k.kid == kid);
            if !fed::should_fetch(set.fetched_at, set.last_attempt, has_kid, now) {
                return;
            }
            set.last_attempt = Some(now);
        }
        match self.fetch(source).await {
            Ok(keys) => {
                tracing::info!(issuer = %source.trusted.issuer, keys = keys.len(), "fetched a trusted issuer's JWK Set");
                let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
                let set = sets.entry(key).or_default();
                set.keys = Arc::new(keys);
                set.fetched_at = Some(now);
            }
            Err(e) => {
                tracing::warn!(issuer = %source.trusted.issuer, error = %e, "cannot fetch a trusted issuer's JWK Set");
            }
        }
    }
}

/// Before `/token` decides: for an exchange of an external JWT, refreshes
/// the JWK Sets of the trusted issuers named like its `iss`, if due.
pub(super) async fn prefetch(state: &AppState, body: &[u8]) {
    let mut token = None;
    let mut external = false;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "subject_token" => token = Some(value.into_owned()),
            "subject_token_type" => external = matches!(&*value, fed::JWT_TOKEN_TYPE | fed::ID_TOKEN_TYPE),
            _ => {}
        }
    }
    let Some(token) = token.filter(|_| external) else {
        return;
    };
    let (Ok(issuer), Ok(kid)) = (fed::claimed_issuer(&token), fed::key_id(&token)) else {
        return;
    };
    let snapshot = state.tokens.snapshot();
    let mut seen = Vec::new();
    for policy in snapshot.by_name.values() {
        for source in policy.trusted.iter().filter(|t| t.trusted.issuer == issuer) {
            if !seen.contains(source) {
                seen.push(source.clone());
            }
        }
    }
    let now = state.clock.now().as_second();
    for source in &seen {
        state.tokens.external.refresh(source, &kid, now).await;
    }
}

/// The claims of the token an external JWT is exchanged for under `policy`,
/// by the API key `client` (the actor).
pub(super) fn exchanged_claims(
    state: &AppState,
    policy: &PolicyEntry,
    client: &ClientKey<'_>,
    request: &TokenRequest,
    now: i64,
    jti: String,
) -> Result<AccessClaims, TokenError> {
    let token = request
        .session
        .subject_token
        .as_ref()
        .map(|t| t.0.as_str())
        .unwrap_or_default();
    let invalid = |e: fed::ExternalInvalid| TokenError::InvalidGrant(e.to_string());
    let issuer = fed::claimed_issuer(token).map_err(invalid)?;
    let source = policy
        .trusted
        .iter()
        .find(|t| t.trusted.issuer == issuer)
        .ok_or_else(|| invalid(fed::ExternalInvalid::UntrustedIssuer))?;
    let keys = state.tokens.external.keys(source);
    let verified = fed::verify(
        token,
        &source.trusted,
        |kid| keys.iter().find(|k| k.kid == kid),
        now,
    )
    .map_err(invalid)?;
    let mapped = fed::map(&verified, &source.trusted, &policy.rules).map_err(invalid)?;
    let grants = state.index.grants();
    let granted = |subject: &str| grants.subject_granted(&policy.namespace, subject);
    fed::exchange(
        &verified,
        &mapped,
        &policy.rules,
        &policy.session,
        client,
        true,
        request,
        granted,
        now,
        key::random_id(22),
        jti,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A loopback JWK Set server counting its GETs.
    async fn jwks_server(doc: String) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let doc = doc.clone();
                async move { doc }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, hits)
    }

    fn source(jwks_url: &str) -> TrustedSource {
        TrustedSource {
            trusted: Trusted {
                issuer: "http://127.0.0.1:1".into(),
                audiences: vec!["latchkey".into()],
                subject_claim: "sub".into(),
                role_claim: None,
                claims: Default::default(),
            },
            jwks_url: Some(jwks_url.into()),
        }
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_every_ten_seconds() {
        let key = keys::generate(crate::crd::SigningAlgorithm::ES256).unwrap();
        let jwk =
            keys::public_jwk(&key.kid, crate::crd::SigningAlgorithm::ES256, key.pem.as_bytes()).unwrap();
        let (url, hits) = jwks_server(format!("{{\"keys\":[{jwk}]}}")).await;
        let cache = ExternalKeys::default();
        let src = source(&url);
        let now = 1_800_000_000;
        cache.refresh(&src, &key.kid, now).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(cache.keys(&src).len(), 1);
        // A known kid: no fetch; 100 made-up kids in the same second: none.
        cache.refresh(&src, &key.kid, now + 1).await;
        for i in 0..100 {
            cache.refresh(&src, &format!("made-up-{i}"), now + 1).await;
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        cache
            .refresh(&src, "made-up", now + fed::MIN_REFETCH_SECONDS)
            .await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Not fetched from a URL that is neither https nor loopback.
        let far = source("http://192.0.2.1/jwks");
        cache.refresh(&far, "k", now).await;
        assert!(cache.keys(&far).is_empty());
    }
}
