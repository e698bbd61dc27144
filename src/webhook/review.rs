//! The review handler: `/validate` parses an AdmissionReview, looks up
//! what the rules of [`crate::admission`] need (a Secret's owners, a
//! TokenPolicy, every policy's issuer, the cached CredentialGrants) and
//! answers with their verdict.

use crate::admission::{self, Facts, Found, Lookups, review};
use crate::crd::TokenPolicy;
use crate::namespaces::WatchNamespaces;
use crate::tls::short_error;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a lookup on the admission path may take (the API server's
/// `timeoutSeconds` is the bound of the whole call).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handler shares.
struct WebhookState {
    client: Client,
    config: admission::Config,
    /// The watched namespaces (where TokenPolicies can always be listed).
    namespaces: WatchNamespaces,
    /// The CredentialGrants, from a watch (`None` until the first list).
    grants: Arc<RwLock<Option<Arc<crate::grants::Grants>>>>,
}

/// The review routes, and the CredentialGrant watch that feeds them (abort
/// it when serving ends).
pub(super) fn start(
    client: Client,
    allowed_users: BTreeSet<String>,
    namespaces: WatchNamespaces,
    require_grants: bool,
) -> (Router, JoinHandle<()>) {
    // The CredentialGrants, cached from a watch: no API call per review.
    let grants = Arc::new(RwLock::new(None));
    let grant_watch = {
        let cache = grants.clone();
        tokio::spawn(crate::grants::watch(
            Api::all(client.clone()),
            require_grants,
            move |g| *cache.write().unwrap_or_else(|e| e.into_inner()) = Some(g),
        ))
    };
    let app = router(Arc::new(WebhookState {
        client,
        config: admission::Config { allowed_users },
        namespaces,
        grants,
    }));
    (app, grant_watch)
}

impl WebhookState {
    async fn look_up(&self, needs: &Lookups) -> Facts {
        let mut facts = Facts::default();
        if let Some((ns, name)) = &needs.secret {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            // Metadata only: the webhook never receives a Secret's data.
            facts.secret = Some(
                match tokio::time::timeout(LOOKUP_TIMEOUT, secrets.get_metadata_opt(name)).await {
                    Ok(Ok(Some(meta))) => Found::Present(meta.metadata.owner_references.unwrap_or_default()),
                    Ok(Ok(None)) => Found::Absent,
                    Ok(Err(e)) => Found::Unknown(short_error(&e)),
                    Err(_) => Found::Unknown("timed out".into()),
                },
            );
        }
        if needs.grants {
            let cached = self.grants.read().unwrap_or_else(|e| e.into_inner()).clone();
            facts.grants = Some(match cached {
                Some(grants) => Found::Present(grants),
                None => Found::Unknown("not loaded yet".into()),
            });
        }
        if let Some((ns, name)) = &needs.token_policy {
            let policies: Api<TokenPolicy> = Api::namespaced(self.client.clone(), ns);
            facts.token_policy = Some(
                match tokio::time::timeout(LOOKUP_TIMEOUT, policies.get_opt(name)).await {
                    Ok(Ok(Some(p))) => Found::Present(p.spec.allowed_scopes),
                    Ok(Ok(None)) => Found::Absent,
                    Ok(Err(e)) => Found::Unknown(short_error(&e)),
                    Err(_) => Found::Unknown("timed out".into()),
                },
            );
        }
        if needs.issuers {
            facts.issuers = Some(self.issuers().await);
        }
        facts
    }

    /// Every TokenPolicy's `spec.issuer`, cluster-wide (issuer paths are
    /// routed cluster-wide), or only the watched namespaces' when latchkey
    /// may list no more (a namespace list: one list per namespace).
    async fn issuers(&self) -> Found<Vec<admission::PolicyIssuer>> {
        let list = |api: Api<TokenPolicy>| async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, api.list(&Default::default())).await {
                Ok(Ok(list)) => Ok(list
                    .items
                    .into_iter()
                    .map(|p| admission::PolicyIssuer {
                        namespace: p.metadata.namespace.unwrap_or_default(),
                        name: p.metadata.name.unwrap_or_default(),
                        issuer: p.spec.issuer,
                    })
                    .collect()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(kube::Error::Service("timed out".into())),
            }
        };
        let found = match (list(Api::all(self.client.clone())).await, self.namespaces.names()) {
            (Ok(all), _) => Ok(all),
            (Err(kube::Error::Api(s)), Some(names)) if s.code == 403 => {
                let mut all = Vec::new();
                let mut failed = None;
                for ns in names {
                    match list(Api::namespaced(self.client.clone(), ns)).await {
                        Ok(found) => all.extend(found),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(all), Err)
            }
            (Err(e), _) => Err(e),
        };
        match found {
            Ok(all) => Found::Present(all),
            Err(e) => Found::Unknown(short_error(&e)),
        }
    }
}

async fn validate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let request = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "refused a malformed AdmissionReview");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let facts = state.look_up(&admission::lookups(&request)).await;
    let verdict = admission::decide(&request, &facts, &state.config);
    tracing::info!(
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or_default(),
        name = request.name.as_deref().unwrap_or_default(),
        operation = %request.operation,
        user = %request.user_info.username,
        dry_run = request.dry_run.unwrap_or(false),
        allowed = verdict.allowed,
        message = %verdict.message,
        "admission review"
    );
    axum::Json(review::render(&request.uid, &verdict)).into_response()
}

/// The webhook's routes.
fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/livez", get(|| async { "ok" }))
        // A Secret's review carries it twice (object and oldObject), up to 1 MiB each.
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state)
}
