//! The auth server (`latchkey serve`, and half of `latchkey run`): axum
//! handlers, thin over [`decision`], answering from an in-memory [`index`]
//! fed by a watch of ApiKeys. It reads no Secret and makes no API call on the
//! request path.
//!
//! Routes:
//! - `/auth/nginx`: nginx `auth_request`, ingress-nginx `auth-url`, NGINX
//!   Gateway Fabric. The original request arrives in `X-Original-URL` and
//!   `X-Original-Method`, which nginx sets itself; nothing else is trusted.
//! - `/auth/forward`: Traefik ForwardAuth and Caddy `forward_auth`
//!   (`X-Forwarded-Method/Proto/Host/Uri`).
//! - `/auth/envoy` and `/auth/envoy/*`: Envoy ext_authz (HTTP) and Gateway
//!   API `ExternalAuth`, which send the client's method and path.
//!
//!   All three accept any method and never read a body. The nginx and
//!   forward routes take the required `scope`s and `audience` from the auth
//!   URL's query; the Envoy route cannot (its query is the client's) and only
//!   checks the key. The original request
//!   only goes into debug logs: decisions depend on the key and the route's
//!   requirement, never on headers a client could forge, with one
//!   exception: a route with `resource=path` judges the original path from
//!   the one header its proxy sets itself (`X-Original-URL`,
//!   `X-Forwarded-Uri`), canonical or refused ([`crate::token::path`]).
//! - `POST /introspect`: RFC 7662 (see [`introspect`]).
//! - On `--grpc-addr`, a second listener: Envoy's gRPC
//!   `envoy.service.auth.v3.Authorization/Check` (see [`grpc`]), with the
//!   route's requirement in `context_extensions`.
//! - `/livez`, `/readyz` (after the first full list of ApiKeys), `/metrics`.

pub mod counters;
pub mod decision;
pub mod grants;
pub mod grpc;
pub mod guard;
pub mod identity;
pub mod index;
pub mod introspect;
pub use crate::listener;
pub mod metrics;
pub mod owner;
pub mod redis_limit;
pub mod requirement;
pub mod shared_limit;
pub mod throttle;
pub mod token_cache;
pub mod tokens;
pub mod usage;
pub mod watched;

#[cfg(test)]
mod router_tests;

use crate::clock::Clock;
use crate::error::{Error, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use decision::Requirement;
use futures::StreamExt;
use index::{Index, Rebuild};
use kube::runtime::watcher;
use kube::{Api, Client};
use requirement::RequirementMemo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `latchkey serve` (and the server half of `latchkey run`).
#[derive(Debug, Clone)]
pub struct Options {
    pub http_addr: SocketAddr,
    /// The gRPC ext_authz listener (`--grpc-addr`), off when `None`.
    pub grpc_addr: Option<SocketAddr>,
    /// The namespaces whose ApiKeys and TokenPolicies are watched (every
    /// one, one, or a list: one watch each, one index).
    pub namespaces: crate::namespaces::WatchNamespaces,
    /// A header that carries the API key besides `Authorization: Bearer` and `X-Api-Key`.
    pub api_key_header: Option<HeaderName>,
    /// The longest a proxy may cache an allow.
    pub decision_cache_seconds: u64,
    /// How often `status.lastUsedAt` is brought up to date.
    pub last_used_flush: Duration,
    /// The base of default TokenPolicy issuers (`<base>/issuers/<ns>/<name>`).
    pub issuer_base_url: String,
    /// Custom claims that get a header of their own on every allow
    /// (`--claim-header`), besides the fixed identity headers.
    pub claim_headers: Vec<decision::ClaimHeader>,
    /// `--require-grants`: a namespace no CredentialGrant selects may claim
    /// nothing (strict mode).
    pub require_grants: bool,
    /// Connection, body, throttle and cache limits.
    pub limits: Limits,
    /// Serve HTTPS with certificates from here (`--http-tls`); `None`:
    /// plain HTTP, for local development.
    pub tls: Option<crate::tls::Source>,
    /// TLS on the gRPC listener (`--grpc-tls`); `None`: h2c.
    pub grpc_tls: Option<crate::tls::Source>,
    /// Share every ApiKey's rate limit with the other replicas through
    /// this Redis (`--rate-limit-redis-url`); `None`: per replica.
    pub rate_limit_redis: Option<redis_limit::RedisUrl>,
}

#[cfg(test)]
impl Options {
    /// The defaults of the CLI on loopback, for in-process tests.
    pub fn for_tests(issuer_base_url: &str) -> Self {
        Self {
            http_addr: "127.0.0.1:0".parse().expect("an address"),
            grpc_addr: None,
            namespaces: crate::namespaces::WatchNamespaces::All,
            api_key_header: None,
            decision_cache_seconds: 1,
            last_used_flush: Duration::from_secs(60),
            issuer_base_url: issuer_base_url.into(),
            claim_headers: Vec::new(),
            limits: Default::default(),
            require_grants: false,
            tls: None,
            grpc_tls: None,
            rate_limit_redis: None,
        }
    }
}

/// What the server lets one client cost it (see [`listener`], [`guard`],
/// [`throttle`], [`token_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub hygiene: listener::Hygiene,
    pub max_body_bytes: usize,
    pub throttle: throttle::Config,
    pub token_cache: token_cache::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hygiene: listener::Hygiene::default(),
            max_body_bytes: guard::MAX_BODY_BYTES,
            throttle: throttle::Config::default(),
            token_cache: token_cache::Limits::default(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub index: Arc<Index>,
    pub tokens: Arc<tokens::Tokens>,
    pub clock: Arc<dyn Clock>,
    pub options: Options,
    pub metrics: metrics::Metrics,
}

/// Which proxy family a route serves (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Nginx,
    Forward,
    Envoy,
    /// Envoy's gRPC ext_authz (`--grpc-addr`).
    Grpc,
}

impl Proxy {
    pub const ALL: [Proxy; 4] = [Proxy::Nginx, Proxy::Forward, Proxy::Envoy, Proxy::Grpc];

    pub fn label(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Forward => "forward",
            Proxy::Envoy => "envoy",
            Proxy::Grpc => "grpc",
        }
    }

    /// The original request's target (path and query, or nginx's whole
    /// URL) from the one header this family's proxy sets itself: nginx's
    /// `X-Original-URL` (nginx overwrites a client's), Traefik's and
    /// Caddy's `X-Forwarded-Uri` (both overwrite a client's). A repeated or
    /// unreadable header: none (refused when the path is needed).
    fn target(self, headers: &HeaderMap) -> Option<&str> {
        let name = match self {
            Proxy::Nginx => "x-original-url",
            Proxy::Forward => "x-forwarded-uri",
            Proxy::Envoy | Proxy::Grpc => return None,
        };
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => decision::visible_ascii(v),
            _ => None,
        }
    }

    /// The original method and URL as this family's proxy reports them (for
    /// debug logs only).
    fn original(self, headers: &HeaderMap, request_path: &str) -> (String, String) {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        match self {
            Proxy::Nginx => (get("x-original-method"), get("x-original-url")),
            Proxy::Forward => (
                get("x-forwarded-method"),
                format!(
                    "{}://{}{}",
                    get("x-forwarded-proto"),
                    get("x-forwarded-host"),
                    get("x-forwarded-uri")
                ),
            ),
            // The gRPC front end logs from the CheckRequest itself.
            Proxy::Grpc => (String::new(), request_path.to_owned()),
            Proxy::Envoy => (
                String::new(),
                request_path
                    .strip_prefix("/auth/envoy")
                    .unwrap_or(request_path)
                    .to_owned(),
            ),
        }
    }
}

/// The router with every route, over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/auth/nginx", any(|s, r| auth(s, Proxy::Nginx, r)))
        .route("/auth/forward", any(|s, r| auth(s, Proxy::Forward, r)))
        .route("/auth/envoy", any(|s, r| auth(s, Proxy::Envoy, r)))
        .route("/auth/envoy/{*path}", any(|s, r| auth(s, Proxy::Envoy, r)))
        .route("/introspect", post(introspect::handle))
        .route("/token", post(tokens::token))
        .route("/revoke", post(tokens::revoke))
        .fallback(tokens::by_issuer)
        .with_state(state)
}

thread_local! {
    /// This worker thread's parsed auth-URL queries (see [`RequirementMemo`]).
    static REQUIREMENTS: std::cell::RefCell<RequirementMemo> = Default::default();
}

async fn auth(State(state): State<Arc<AppState>>, family: Proxy, request: Request) -> Response {
    let started = Instant::now();
    let headers = request.headers();
    let decision = REQUIREMENTS.with_borrow_mut(|memo| {
        // Envoy appends the client's own path and query to the prefix: a
        // query there is the client's, not a requirement of the route.
        let requirement = memo.get(match family {
            Proxy::Envoy => None,
            _ => request.uri().query(),
        });
        // Always this request's own (or none), never a previous one's.
        requirement.set_target(match requirement.resource {
            decision::ResourceRule::Path => family.target(headers),
            _ => None,
        });
        decide(&state, headers, requirement)
    });
    if tracing::enabled!(tracing::Level::DEBUG) {
        // The original URL may carry credentials (`?api_key=`, user info):
        // redacted here, and again by the log writer.
        let (method, url) = family.original(headers, request.uri().path());
        let url = crate::redact::redact(&url);
        tracing::debug!(route = family.label(), result = decision.label(), %method, %url, "auth decision");
    }
    state.metrics.observe(family, &decision, started.elapsed());
    // The key id of a key that failed to authenticate, for the guard's
    // per-key-id throttle (read only then: an allow reads no more).
    let failed = decision.failed_authentication().then(|| {
        let presented = decision::credential(headers, state.options.api_key_header.as_ref());
        guard::FailedAuthentication(presented.ok().flatten().and_then(guard::key_id_of))
    });
    let mut response = decision.into_response_with(&state.options.claim_headers);
    if let Some(failed) = failed {
        response.extensions_mut().insert(failed);
    }
    response
}

/// The decision for a request's `headers` under `requirement`: the
/// credential (an API key, or a JWT), then the one pure decision. Every
/// front end (the HTTP routes, gRPC) calls this.
pub fn decide(state: &AppState, headers: &HeaderMap, requirement: &Requirement) -> decision::Decision {
    let now = state.clock.now();
    let cache_seconds = state.options.decision_cache_seconds;
    match decision::credential(headers, state.options.api_key_header.as_ref()) {
        Err(refused) => refused,
        Ok(Some(token)) if crate::token::claims::looks_like_jwt(token) => tokens::decide_token(
            token,
            requirement,
            &state.index,
            &state.tokens,
            now,
            cache_seconds,
        ),
        Ok(presented) => {
            decision::decide_key_request(presented, requirement, &state.index, now, cache_seconds)
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.index.is_synced() && state.tokens.is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ApiKeys, CredentialGrants and TokenPolicies not loaded yet",
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let (keys, api_keys) = state.index.len();
    let (entries, bytes) = state.tokens.cache().usage();
    state.metrics.set_token_cache(entries, bytes);
    match state.metrics.encode(keys, api_keys) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Keeps `index` up to date from a watch of ApiKeys until the stream ends.
/// A (re-)list is built aside and swapped in whole once complete, so a
/// request never sees a half-loaded index.
pub async fn feed_index(client: Client, namespaces: crate::namespaces::WatchNamespaces, index: Arc<Index>) {
    let mut rebuild: Option<Rebuild> = None;
    // Paged lists, not one list from the watch cache: with 100,000
    // ApiKeys a single list would be hundreds of megabytes at once. 100 per
    // page, not kube's 500: what glibc keeps of a page's buffers stays
    // resident next to the index (e2e/bench-index, 10,000 ApiKeys, one
    // build otherwise: 946-1,008 bytes per key in three runs with 100,
    // 1,013-1,045 in two with 500), for 100 list calls where there were
    // 20 (ready in 0.6-0.8 s either way).
    // A namespace list: one watch per namespace, merged into these events.
    // Read lean ([`watched::WatchedApiKey`]): no managedFields or
    // annotations are allocated while a page is parsed.
    let mut events =
        namespaces.watch::<watched::WatchedApiKey>(&client, watcher::Config::default().page_size(100));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => rebuild = Some(Rebuild::default()),
            Ok(watcher::Event::InitApply(api_key)) => {
                if let Some(r) = rebuild.as_mut() {
                    r.apply(&api_key.0, Some(&index));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = rebuild.take() {
                    index.replace(r);
                    let (keys, api_keys) = index.len();
                    tracing::info!(keys, api_keys, "ApiKey index loaded");
                }
            }
            Ok(watcher::Event::Apply(api_key)) => index.apply(&api_key.0),
            Ok(watcher::Event::Delete(api_key)) => index.delete(&api_key.0),
            Err(err) => tracing::warn!(error = %err, "ApiKey watch failed; retrying"),
        }
    }
}

/// Runs the server until `shutdown` completes.
pub async fn run(
    client: Client,
    clock: Arc<dyn Clock>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_metrics(client, clock, options, shutdown, |_| {}).await
}

/// [`run`], with more metric families on `/metrics` (`more` registers them).
pub async fn run_with_metrics(
    client: Client,
    clock: Arc<dyn Clock>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
    more: impl FnOnce(&mut prometheus_client::registry::Registry),
) -> Result<()> {
    let scope = options.namespaces.clone();
    let index = Arc::new(Index::default());
    // Cluster-wide rate limits: the settle loop beside the request path.
    let shared_limits = options.rate_limit_redis.clone().map(|url| {
        let settlements = Arc::new(shared_limit::Settlements::default());
        index.share_rate_limits(settlements.clone());
        let metrics = redis_limit::Metrics::default();
        let task = tokio::spawn(redis_limit::run(url, settlements, metrics.clone()));
        (task, metrics)
    });
    let tokens = Arc::new(tokens::Tokens::with_cache(options.limits.token_cache));
    tokens.set_store(client.clone());
    // Grants are cluster-scoped, whatever namespace the server watches.
    index.await_grants();
    let grant_feeder = tokio::spawn(grants::feed(
        Api::all(client.clone()),
        index.clone(),
        options.require_grants,
    ));
    let feeder = tokio::spawn(feed_index(client.clone(), scope.clone(), index.clone()));
    let token_feeder = tokio::spawn(tokens::feed(
        client.clone(),
        scope,
        tokens.clone(),
        options.issuer_base_url.clone(),
    ));
    let pruner = tokio::spawn(tokens::prune_loop(tokens.clone(), clock.clone()));
    let client_for_tls = client.clone();
    let (stop_flusher, flusher_stop) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn(usage::run(
        client,
        index.clone(),
        options.last_used_flush,
        async move {
            let _ = flusher_stop.await;
        },
    ));
    let sweeper = {
        let (tokens, clock) = (tokens.clone(), clock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                tokens.cache().sweep_expired(clock.now().as_second());
            }
        })
    };
    // The certificate first: a missing CA right or a bad mounted file stops
    // the start before anything listens.
    let tls = match &options.tls {
        Some(source) => Some(
            crate::tls::start(&client_for_tls, source, "HTTP")
                .await
                .map_err(|e| Error::Tls {
                    listener: "HTTP",
                    source: Box::new(e),
                })?,
        ),
        None => None,
    };
    let grpc_tls = match (&options.grpc_tls, options.grpc_addr) {
        (Some(source), Some(_)) => Some(crate::tls::start(&client_for_tls, source, "gRPC").await.map_err(
            |e| Error::Tls {
                listener: "gRPC",
                source: Box::new(e),
            },
        )?),
        _ => None,
    };
    let listener = listener::bind(options.http_addr)
        .map_err(|e| Error::Server(format!("cannot listen on {}: {e}", options.http_addr)))?;
    let limits = options.limits;
    // The bound address (the requested one, or the port the kernel chose for
    // port 0); logged only once bound, so a supervisor that waits for this
    // line knows the port is this process's.
    let bound = listener.local_addr().unwrap_or(options.http_addr);
    let (scheme, certificate) = match &options.tls {
        Some(source) => ("HTTPS", source.describe()),
        None => (
            "plain HTTP",
            "none: API keys, tokens and identities cross the network in clear text (local development only; --http-tls self-signed or dir outside it)".to_owned(),
        ),
    };
    tracing::info!(
        addr = %bound,
        scheme,
        certificate = %certificate,
        max_connections = limits.hygiene.max_connections,
        header_read_timeout_s = limits.hygiene.header_read_timeout.as_secs_f64(),
        idle_timeout_s = limits.hygiene.idle_timeout.as_secs_f64(),
        token_cache_bytes = limits.token_cache.total_bytes,
        "auth server listening"
    );
    let state = Arc::new(AppState {
        index,
        tokens,
        clock,
        metrics: metrics::Metrics::with(|registry| {
            more(registry);
            if let Some((_, m)) = &shared_limits {
                m.register(registry);
            }
        }),
        options,
    });
    let guard = Arc::new(guard::Guard {
        state: state.clone(),
        throttle: throttle::Throttle::new(limits.throttle),
        max_body_bytes: limits.max_body_bytes,
        body_timeout: limits.hygiene.header_read_timeout,
    });
    let open = state.metrics.http_connections();
    // One shutdown signal for both listeners.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let grpc = match state.options.grpc_addr {
        Some(addr) => Some(grpc::listen(
            addr,
            match (&grpc_tls, &state.options.grpc_tls) {
                (Some(serving), Some(source)) => Some((grpc::acceptor(serving)?, source.describe())),
                _ => None,
            },
            state.clone(),
            guard.clone(),
            limits.hygiene,
            shutdown.clone(),
        )?),
        None => None,
    };
    let app = router(state).layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    // The HTTP listener over TLS or plain (see `tls`); the gRPC one beside it.
    let acceptor = match &tls {
        Some(serving) => Some(serving.acceptor(&[b"http/1.1"]).map_err(|e| Error::Tls {
            listener: "HTTP",
            source: Box::new(e),
        })?),
        None => None,
    };
    let hygiene = limits.hygiene;
    let http = async move {
        match acceptor {
            Some(acceptor) => {
                let handshake = move |tcp, peer| crate::tls::accept(acceptor.clone(), tcp, peer, "HTTP");
                let protocol = listener::Protocol::Http1;
                listener::serve(
                    listener, protocol, hygiene, open, handshake, app, shutdown, "http",
                )
                .await;
            }
            None => {
                let plain = |tcp: tokio::net::TcpStream, _| async move { Some(tcp) };
                let protocol = listener::Protocol::Http1;
                listener::serve(listener, protocol, hygiene, open, plain, app, shutdown, "http").await;
            }
        }
    };
    match grpc {
        Some(grpc) => {
            tokio::join!(http, grpc);
        }
        None => http.await,
    }
    // Stops the certificate's renewal and reload tasks.
    drop(tls);
    drop(grpc_tls);
    grant_feeder.abort();
    token_feeder.abort();
    sweeper.abort();
    // What was counted since the last flush: written once more (bounded),
    // while the watch still feeds the index (a conflict is decided again
    // from the newer version).
    let _ = stop_flusher.send(());
    let flusher_abort = flusher.abort_handle();
    if tokio::time::timeout(FINAL_FLUSH, flusher).await.is_err() {
        flusher_abort.abort();
        tracing::warn!(
            timeout_s = FINAL_FLUSH.as_secs(),
            "the last usage flush did not finish in time: usage counted since the previous flush is lost"
        );
    }
    feeder.abort();
    pruner.abort();
    if let Some((task, _)) = shared_limits {
        task.abort();
    }
    tracing::info!("auth server stopped");
    Ok(())
}

pub use crate::shutdown::shutdown_signal;

/// How long the last usage flush at shutdown may take (well within a pod's
/// default 30 s termination grace period).
pub const FINAL_FLUSH: Duration = Duration::from_secs(10);
