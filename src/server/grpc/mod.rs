//! Envoy's gRPC external authorization on `--grpc-addr`:
//! `envoy.service.auth.v3.Authorization/Check` over h2c or TLS
//! (`--grpc-tls`, the choices of `--http-tls`), a thin front end
//! like the HTTP handlers: [`adapter`] turns the `CheckRequest` into the
//! client's headers and the route's requirement (`context_extensions`),
//! [`super::decide`] decides, and [`adapter::answer`] turns the decision
//! into the `CheckResponse`. Same metrics (`route="grpc"`), same
//! per-key-id throttle of failed authentications, and the listener's
//! connection hygiene ([`crate::listener`], HTTP/2). Connections come from
//! one handshake function: plain, or [`crate::tls::accept`] with ALPN `h2`.
//!
//! Only the CheckRequest's HTTP headers (the credential), its
//! `context_extensions` (the route's requirement, set by the proxy's
//! configuration) and its path (debug logs only) are read; nothing else a
//! client could shape in the request is trusted.

pub mod adapter;

use super::guard::Guard;
use super::{AppState, Proxy};
use crate::error::{Error, Result};
use crate::listener::{self, Hygiene, Protocol};
use axum::http::header::{CACHE_CONTROL, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The largest `CheckRequest` decoded: Envoy's default request-header limit
/// (60 KiB) with room for a buffered body the proxy may be told to send.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The `Authorization` service over the auth server's state.
pub struct ExtAuthz {
    pub state: Arc<AppState>,
    pub guard: Arc<Guard>,
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> std::result::Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.decide(request.get_ref())))
    }
}

impl ExtAuthz {
    /// The answer to one `CheckRequest`.
    pub fn decide(&self, request: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let state = &self.state;
        let claim_headers = &state.options.claim_headers;
        let headers = match adapter::request_headers(request) {
            Ok(h) => h,
            Err(refused) => {
                state.metrics.observe(Proxy::Grpc, &refused, started.elapsed());
                return adapter::answer(refused, claim_headers, &HeaderMap::new());
            }
        };
        let (requirement, unknown) = adapter::requirement(request);
        if !unknown.is_empty() {
            tracing::debug!(keys = ?unknown, "context_extensions keys latchkey does not know; ignored");
        }
        let throttle = &self.guard.throttle;
        let key_id = self.guard.auth_key_id_to_check(&headers);
        if let Some((by, wait)) = throttle.blocked(None, key_id.as_ref(), throttle.now_ms()) {
            state.metrics.observe_throttled(by);
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from(wait));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return adapter::denied(StatusCode::TOO_MANY_REQUESTS, &h, "throttled");
        }
        let decision = super::decide(state, &headers, &requirement);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let url = crate::redact::redact(adapter::path(request));
            tracing::debug!(route = "grpc", result = decision.label(), %url, "auth decision");
        }
        state.metrics.observe(Proxy::Grpc, &decision, started.elapsed());
        // A 401 for a key that does authenticate (a wrong audience) is not a
        // failed authentication.
        if decision.failed_authentication()
            && let Some(limiter) = &throttle.by_key_id
            && let Some(id) = key_id.or_else(|| self.guard.auth_key_id(&headers))
        {
            limiter.failed(&id, throttle.now_ms());
        }
        adapter::answer(decision, claim_headers, &headers)
    }
}

/// The gRPC service as an axum router (tonic's routes; an unknown method
/// answers `UNIMPLEMENTED`).
pub fn router(service: ExtAuthz) -> axum::Router {
    let server = AuthorizationServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(server).into_axum_router()
}

/// Binds `addr` and returns the listener's serving future (until
/// `shutdown`, then a drain): TLS when `tls` (an acceptor over the kept-current
/// certificate with ALPN `h2`, see [`acceptor`], and where the certificate
/// comes from, for the log line) is given, else h2c.
pub fn listen(
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
    state: Arc<AppState>,
    guard: Arc<Guard>,
    hygiene: Hygiene,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = ()>> {
    let tcp = listener::bind(addr)
        .map_err(|e| Error::Server(format!("cannot listen on {addr} (--grpc-addr): {e}")))?;
    let bound = tcp.local_addr().unwrap_or(addr);
    let (scheme, certificate) = match &tls {
        Some((_, source)) => ("TLS (h2)", source.clone()),
        None => (
            "h2c, plain text",
            "none: API keys, tokens and identities cross the network in clear text (local development only; --grpc-tls self-signed or dir outside it)".to_owned(),
        ),
    };
    tracing::info!(addr = %bound, scheme, certificate = %certificate, "gRPC ext_authz listening");
    let open = state.metrics.grpc_connections();
    let app = router(ExtAuthz { state, guard });
    Ok(match tls {
        Some((acceptor, _)) => {
            let handshake = move |tcp, peer| crate::tls::accept(acceptor.clone(), tcp, peer, "gRPC");
            futures::future::Either::Left(serve(tcp, hygiene, open, handshake, app, shutdown))
        }
        None => {
            let plain = |tcp: tokio::net::TcpStream, _| async move { Some(tcp) };
            futures::future::Either::Right(serve(tcp, hygiene, open, plain, app, shutdown))
        }
    })
}

/// The gRPC listener's TLS acceptor over `serving`'s certificate: ALPN `h2`
/// only (gRPC is HTTP/2).
pub fn acceptor(serving: &crate::tls::Serving) -> Result<tokio_rustls::TlsAcceptor> {
    serving.acceptor(&[b"h2"]).map_err(|e| Error::Tls {
        listener: "gRPC",
        source: Box::new(e),
    })
}

/// Serves `app` over HTTP/2 on the connections `handshake` makes of the
/// accepted ones (plain, or [`crate::tls::accept`]).
pub async fn serve<IO, H, HF>(
    tcp: tokio::net::TcpListener,
    hygiene: Hygiene,
    open: prometheus_client::metrics::gauge::Gauge,
    handshake: H,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(tokio::net::TcpStream, SocketAddr) -> HF + Clone + Send + 'static,
    HF: Future<Output = Option<IO>> + Send,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    listener::serve(
        tcp,
        Protocol::Http2,
        hygiene,
        open,
        handshake,
        app,
        shutdown,
        "grpc",
    )
    .await;
    tracing::info!("gRPC ext_authz stopped");
}
