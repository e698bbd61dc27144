//! The webhook's listener: binds the address and accepts TLS connections
//! for the review routes, under the auth server's connection hygiene.

use super::{Options, WebhookError, review};
use axum::Router;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// Connections the webhook listener serves at once (only API servers call
/// it); the auth server's cap leaves room for these.
pub const MAX_CONNECTIONS: usize = 256;

/// Binds `options.addr` and serves `/validate` over TLS until `shutdown`.
pub(super) async fn listen_and_serve(
    options: &Options,
    tls_config: rustls::ServerConfig,
    client: kube::Client,
    allowed_users: BTreeSet<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let addr = options.addr;
    let listener = crate::listener::bind(addr).map_err(|source| WebhookError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "admission webhook listening (TLS)");
    let (app, grant_watch) = review::start(
        client,
        allowed_users,
        options.namespaces.clone(),
        options.require_grants,
    );
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

/// Accepts TLS connections and serves `app` on each (HTTP/1.1) until
/// `shutdown`, under the same connection hygiene as the auth server
/// (header-read and idle timeouts, a connection cap, a drain on shutdown;
/// see `crate::listener`). The TLS handshake must finish within the
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
        crate::tls::accept(acceptor.clone(), tcp, peer, "webhook")
    };
    let open = prometheus_client::metrics::gauge::Gauge::default();
    let http1 = crate::listener::Protocol::Http1;
    crate::listener::serve(
        listener, http1, hygiene, open, handshake, app, shutdown, "webhook",
    )
    .await;
}
