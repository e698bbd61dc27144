//! The admission webhook's server: `/validate` over TLS, thin over the pure
//! rules of [`crate::admission`], with certificates latchkey makes itself
//! ([`tls`]) and the ValidatingWebhookConfiguration it keeps pointing at
//! them ([`configuration`]).
//!
//! **Certificates.** A CA (rcgen, ECDSA P-256, ten years) lives in one
//! Secret of latchkey's namespace (`--webhook-ca-secret NS/NAME`, type
//! `kubernetes.io/tls`): the first replica creates it, the others (and every
//! restart) load it, and a lost create race re-reads the winner's. Each
//! process then signs its own short-lived serving certificate in memory
//! (`--webhook-dns-name`s and the `--webhook-url` host as SANs), renews it
//! before expiry and swaps it into the listener without a restart. Since
//! every replica trusts the same CA, the `caBundle` is the same whoever
//! writes it and whatever replica the API server reaches. Each sync round
//! re-reads the Secret: a replaced CA is adopted, a deleted one re-created.
//!
//! **The configuration.** Out of cluster (`--webhook-url`, development and
//! the tests) latchkey creates or updates the whole configuration
//! (`--webhook-configuration-name`) with that URL, Server-Side Apply. In
//! cluster the chart creates it with a Service reference and latchkey only
//! patches `caBundle` into it. Under `latchkey run` only the leader writes
//! it (`Options::leading`, set while this replica holds the controllers'
//! Lease); every replica serves reviews. A `latchkey serve` without a
//! controller writes it too: the write is idempotent, every replica holds
//! the same CA.
//!
//! **Issuer uniqueness.** A TokenPolicy CREATE lists every TokenPolicy in
//! the cluster (issuer paths are routed cluster-wide; only the watched
//! namespace when latchkey may list no more) so that
//! [`crate::admission`] can name the policy that already holds the path.
//!
//! **latchkey's identity.** Only latchkey may change or delete the Secrets
//! it manages. Who "latchkey" is comes from `--webhook-allowed-user`
//! (repeatable), by default the username of latchkey's own credentials,
//! asked from the API server at startup with a SelfSubjectReview
//! (`authentication.k8s.io/v1`; in cluster
//! `system:serviceaccount:<ns>:<serviceaccount>`). Kubernetes' own cleanup
//! (garbage collector, namespace controller, kube-controller-manager) is
//! always allowed ([`crate::admission::SYSTEM_USERS`]).

pub mod configuration;
pub mod tls;

use crate::admission::{self, Facts, Found, Lookups, review};
use crate::crd::TokenPolicy;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tls::{Ca, SwappableCert, TlsError};

/// The field manager of latchkey's writes to the configuration and CA Secret.
const FIELD_MANAGER: &str = "latchkey";
/// How long a lookup on the admission path may take (the API server's
/// `timeoutSeconds` is the bound of the whole call).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the webhook server. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "could not find out latchkey's own username with a SelfSubjectReview ({0}); pass --webhook-allowed-user"
    )]
    Identity(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid webhook option: {0}")]
    Option(String),
}

impl From<WebhookError> for crate::Error {
    fn from(err: WebhookError) -> Self {
        crate::Error::Webhook(Box::new(err))
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> WebhookError {
    move |source| WebhookError::Kube { action, source }
}

/// Options of the webhook server (flags `--webhook-*`).
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// Out of cluster: the URL the API server calls; latchkey then creates
    /// the whole configuration. `None`: only inject the CA.
    pub url: Option<String>,
    pub configuration_name: String,
    /// Namespace and name of the CA Secret.
    pub ca_secret: (String, String),
    /// SANs of the serving certificate besides the URL's host.
    pub dns_names: Vec<String>,
    /// latchkey's own usernames; empty: ask with a SelfSubjectReview.
    pub allowed_users: Vec<String>,
    /// For a configuration latchkey creates: namespaceSelector, failure
    /// policy, timeout and the operations checked on Secrets.
    pub namespace: Option<String>,
    pub failure_policy: String,
    pub timeout_seconds: u8,
    pub secret_operations: Vec<String>,
    /// Lifetime of a serving certificate and how long before its end it is renewed.
    pub cert_validity: Duration,
    pub renew_before: Duration,
    /// How often the CA Secret and the configuration are checked.
    pub sync_interval: Duration,
    /// Whether this process writes the configuration (the leader's job; see
    /// the module comment).
    pub inject_ca: bool,
    /// cert-manager mode: serve `tls.crt`/`tls.key` from this directory
    /// (a mounted Certificate Secret, re-read every `sync_interval`), keep
    /// no CA and leave `caBundle` to cert-manager's CA injector.
    pub cert_dir: Option<std::path::PathBuf>,
    /// With leader election (`latchkey run`): true while this replica leads;
    /// only the leader writes the configuration. `None`: always write.
    pub leading: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// `--require-grants`: namespaces no CredentialGrant selects claim nothing.
    pub require_grants: bool,
}

/// Reads `tls.crt` and `tls.key` from a mounted certificate directory.
fn read_mounted(dir: &std::path::Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read =
        |f: &str| std::fs::read(dir.join(f)).map_err(|_| TlsError::BadMounted(dir.display().to_string()));
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// cert-manager mode: swaps in the mounted certificate whenever its files
/// change (the kubelet updates a mounted Secret in place).
async fn reload_mounted(
    dir: std::path::PathBuf,
    certs: Arc<SwappableCert>,
    every: Duration,
    mut current: (Vec<u8>, Vec<u8>),
) {
    loop {
        tokio::time::sleep(every).await;
        match read_mounted(&dir) {
            Ok(files) if files != current => {
                match tls::certified_key_from_pem(&files.0, &files.1, &dir.display().to_string()) {
                    Ok(key) => {
                        certs.swap(key);
                        current = files;
                        tracing::info!(dir = %dir.display(), "loaded the renewed mounted serving certificate");
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the previous serving certificate"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the previous serving certificate"),
        }
    }
}

impl Options {
    /// Every SAN of the serving certificate: the DNS names and the URL's host.
    pub fn serving_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.dns_names.clone();
        if let Some(host) = self.url.as_deref().and_then(url_host) {
            names.push(host);
        }
        if names.is_empty() {
            names.push("localhost".into());
        }
        names.dedup();
        names
    }
}

/// The host of `https://HOST[:PORT]/…` (brackets of an IPv6 address removed).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// What the handler shares.
struct WebhookState {
    client: Client,
    config: admission::Config,
    /// The watched namespace, if any (where TokenPolicies can always be listed).
    namespace: Option<String>,
    /// The CredentialGrants, from a watch (`None` until the first list).
    grants: Arc<RwLock<Option<Arc<crate::grants::Grants>>>>,
}

/// latchkey's username as the API server sees it.
pub async fn own_username(client: &Client) -> Result<String, WebhookError> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| WebhookError::Identity(e.to_string()))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| WebhookError::Identity("no username in the answer".into()))
}

/// The shared CA: loaded from its Secret, or made and stored there.
pub async fn load_or_create_ca(client: &Client, (ns, name): &(String, String)) -> Result<Ca, WebhookError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let what = format!("{ns}/{name}");
    if let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(kube_err("reading the webhook CA Secret"))?
    {
        return ca_from_secret(&secret, &what);
    }
    let ca = Ca::generate(SystemTime::now())?;
    let secret = ca_secret(name, &ca);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %what, "created the webhook CA");
            Ok(ca)
        }
        // Another replica was faster: use its CA.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = secrets
                .get(name)
                .await
                .map_err(kube_err("reading the webhook CA Secret"))?;
            ca_from_secret(&secret, &what)
        }
        Err(e) => Err(kube_err("creating the webhook CA Secret")(e)),
    }
}

fn ca_secret(name: &str, ca: &Ca) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/name".to_owned(), "latchkey".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "webhook-ca".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(ca.cert_pem.clone().into_bytes())),
                ("tls.key".to_owned(), ByteString(ca.key_pem().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

fn ca_from_secret(secret: &Secret, what: &str) -> Result<Ca, WebhookError> {
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .map(str::to_owned)
    };
    match (field("tls.crt"), field("tls.key")) {
        (Some(cert), Some(key)) => Ok(Ca::from_pem(&cert, &key, what)?),
        _ => Err(TlsError::BadCaSecret(what.into()).into()),
    }
}

/// Brings the configuration in line with `ca_pem`: the whole object out of
/// cluster, only `caBundle` in cluster.
pub async fn sync_configuration(
    client: &Client,
    options: &Options,
    ca_pem: &str,
) -> Result<(), WebhookError> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration as Vwc;
    let api: Api<Vwc> = Api::all(client.clone());
    let name = &options.configuration_name;
    if let Some(url) = &options.url {
        let shape = configuration::Shape {
            name: name.clone(),
            url: url.clone(),
            namespace: options.namespace.clone(),
            failure_policy: options.failure_policy.clone(),
            timeout_seconds: options.timeout_seconds,
            secret_operations: options.secret_operations.clone(),
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(configuration::desired(&shape, ca_pem)),
        )
        .await
        .map_err(kube_err("applying the ValidatingWebhookConfiguration"))?;
        return Ok(());
    }
    let current = api
        .get(name)
        .await
        .map_err(kube_err("reading the ValidatingWebhookConfiguration"))?;
    let current = serde_json::to_value(&current).unwrap_or_default();
    if let Some(patch) = configuration::ca_bundle_patch(&current, ca_pem) {
        api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_err("patching the caBundle"))?;
        tracing::info!(configuration = %name, "wrote the CA into caBundle");
    }
    Ok(())
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
    /// routed cluster-wide), or only the watched namespace's when latchkey
    /// may list no more.
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
        let found = match (list(Api::all(self.client.clone())).await, &self.namespace) {
            (Ok(all), _) => Ok(all),
            (Err(kube::Error::Api(s)), Some(ns)) if s.code == 403 => {
                list(Api::namespaced(self.client.clone(), ns)).await
            }
            (Err(e), _) => Err(e),
        };
        match found {
            Ok(all) => Found::Present(all),
            Err(e) => Found::Unknown(short_error(&e)),
        }
    }
}

/// A kube error as a status code and reason, never the server's message
/// (which could echo a request body).
fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        _ => "API server unreachable".into(),
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

/// The serving certificate's current state, shared with the renewal task.
struct Serving {
    ca: RwLock<Arc<Ca>>,
    certs: Arc<SwappableCert>,
    names: Vec<String>,
    validity: Duration,
}

impl Serving {
    /// Signs a new serving certificate with the current CA and swaps it in;
    /// returns its expiry.
    fn renew(&self) -> Result<SystemTime, TlsError> {
        let ca = self.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (cert, not_after) = ca.issue(&self.names, SystemTime::now(), self.validity)?;
        self.certs.swap(cert);
        Ok(not_after)
    }

    fn ca_pem(&self) -> String {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).cert_pem.clone()
    }
}

/// Runs the webhook server until `shutdown` completes.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    for p in [&options.failure_policy] {
        if p != "Fail" && p != "Ignore" {
            return Err(WebhookError::Option(format!(
                "failure policy must be Fail or Ignore, not {p:?}"
            )));
        }
    }
    let allowed_users: BTreeSet<String> = if options.allowed_users.is_empty() {
        [own_username(&client).await?].into()
    } else {
        options.allowed_users.iter().cloned().collect()
    };
    tracing::info!(users = ?allowed_users, "only these users (and Kubernetes' cleanup) may change latchkey's Secrets");
    if let Some(dir) = options.cert_dir.clone() {
        // cert-manager mode: its certificate, its CA injection; no CA Secret
        // and no configuration writes of ours.
        let files = read_mounted(&dir)?;
        let first = tls::certified_key_from_pem(&files.0, &files.1, &dir.display().to_string())?;
        let certs = Arc::new(SwappableCert::new(first));
        let tls_config = tls::server_config(certs.clone())?;
        let reloader = tokio::spawn(reload_mounted(dir.clone(), certs, options.sync_interval, files));
        tracing::info!(dir = %dir.display(), "serving the mounted certificate");
        let served = listen_and_serve(
            options.addr,
            tls_config,
            client,
            allowed_users,
            options.namespace.clone(),
            options.require_grants,
            shutdown,
        )
        .await;
        reloader.abort();
        return served;
    }
    let ca = load_or_create_ca(&client, &options.ca_secret).await?;
    let names = options.serving_names();
    let (first, mut not_after) = ca.issue(&names, SystemTime::now(), options.cert_validity)?;
    let serving = Arc::new(Serving {
        ca: RwLock::new(Arc::new(ca)),
        certs: Arc::new(SwappableCert::new(first)),
        names,
        validity: options.cert_validity,
    });
    let tls_config = tls::server_config(serving.certs.clone())?;

    // Renewal: a new serving certificate `renew_before` its expiry.
    let renewer = {
        let serving = serving.clone();
        let renew_before = options.renew_before;
        tokio::spawn(async move {
            let mut renewals: u64 = 0;
            loop {
                let delay = tls::renewal_delay(
                    SystemTime::now(),
                    not_after,
                    renew_before,
                    Duration::from_millis(500),
                );
                tokio::time::sleep(delay).await;
                match serving.renew() {
                    Ok(next) => {
                        not_after = next;
                        renewals += 1;
                        let expires = crate::time::rfc3339(
                            k8s_openapi::jiff::Timestamp::try_from(next).unwrap_or_default(),
                        );
                        tracing::info!(renewals, %expires, "renewed the webhook serving certificate");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the webhook serving certificate; retrying");
                        not_after = SystemTime::now() + renew_before + Duration::from_secs(5);
                    }
                }
            }
        })
    };

    // The CA Secret and the configuration, checked every sync interval.
    let syncer = {
        let serving = serving.clone();
        let client = client.clone();
        let options = options.clone();
        tokio::spawn(async move {
            loop {
                sync_round(&client, &options, &serving).await;
                tokio::time::sleep(options.sync_interval).await;
            }
        })
    };

    tracing::info!(names = ?serving.names, "serving certificates of latchkey's CA");
    let served = listen_and_serve(
        options.addr,
        tls_config,
        client,
        allowed_users,
        options.namespace.clone(),
        options.require_grants,
        shutdown,
    )
    .await;
    renewer.abort();
    syncer.abort();
    served
}

/// Binds `addr` and serves `/validate` over TLS until `shutdown`.
async fn listen_and_serve(
    addr: SocketAddr,
    tls_config: rustls::ServerConfig,
    client: Client,
    allowed_users: BTreeSet<String>,
    namespace: Option<String>,
    require_grants: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let listener = crate::listener::bind(addr).map_err(|source| WebhookError::Listen { addr, source })?;
    tracing::info!(%addr, "admission webhook listening (TLS)");
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
        namespace,
        grants,
    }));
    serve_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls_config)),
        app,
        shutdown,
    )
    .await;
    grant_watch.abort();
    tracing::info!("admission webhook stopped");
    Ok(())
}

/// One round of keeping the CA Secret and the configuration in line.
async fn sync_round(client: &Client, options: &Options, serving: &Serving) {
    // The Secret is the truth: adopt a replaced CA, re-create a deleted one.
    let (ns, name) = &options.ca_secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => match ca_from_secret(&secret, &format!("{ns}/{name}")) {
            Ok(stored) if stored.cert_pem != serving.ca_pem() => {
                *serving.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(stored);
                match serving.renew() {
                    Ok(_) => tracing::info!("adopted the CA of the webhook CA Secret"),
                    Err(e) => tracing::warn!(error = %e, "could not sign with the new CA"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the webhook CA Secret is unusable; keeping the CA in memory")
            }
        },
        Ok(None) => {
            let ca = serving.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
            match secrets
                .create(&PostParams::default(), &ca_secret(name, &ca))
                .await
            {
                Ok(_) => tracing::info!("re-created the deleted webhook CA Secret"),
                Err(e) => {
                    tracing::warn!(error = %short_error(&e), "could not re-create the webhook CA Secret")
                }
            }
        }
        Err(e) => tracing::warn!(error = %short_error(&e), "could not read the webhook CA Secret"),
    }
    let leads = options
        .leading
        .as_ref()
        .is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire));
    if options.inject_ca
        && leads
        && let Err(e) = sync_configuration(client, options, &serving.ca_pem()).await
    {
        tracing::warn!(error = %e, "could not update the ValidatingWebhookConfiguration; retrying");
    }
}

/// Connections the webhook listener serves at once (only API servers call
/// it); the auth server's cap leaves room for these.
pub const MAX_CONNECTIONS: usize = 256;

/// Accepts TLS connections and serves `app` on each (HTTP/1.1) until
/// `shutdown`, under the same connection hygiene as the auth server
/// (header-read and idle timeouts, a connection cap, a drain on shutdown;
/// see `server::listener`). The TLS handshake must finish within the
/// header-read timeout.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let hygiene = crate::listener::Hygiene {
        max_connections: MAX_CONNECTIONS,
        ..Default::default()
    };
    let handshake = move |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let acceptor = acceptor.clone();
        async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    None
                }
            }
        }
    };
    let open = prometheus_client::metrics::gauge::Gauge::default();
    crate::listener::serve(listener, hygiene, open, handshake, app, shutdown, "webhook").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_host_becomes_a_san() {
        assert_eq!(
            url_host("https://127.0.0.1:9443/validate").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:9443/validate").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://example.com/validate").as_deref(),
            Some("example.com")
        );
        assert_eq!(url_host("http://example.com/validate"), None);
        assert_eq!(url_host("https:///x"), None);
    }
}
