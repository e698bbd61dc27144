//! `latchkey controller --http-addr`: `/livez`, `/readyz` and `/metrics` of
//! the controller alone (under `latchkey run` the auth server's listener
//! serves them, its `/metrics` with the controller's families added).
//! `/readyz` is 200 once both controllers have their first list, and all
//! the while this process stands by for the Lease (see
//! [`ControllerMetrics::is_ready`]).

use super::metrics::ControllerMetrics;
use crate::error::{Error, Result};
use crate::listener;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

/// The probes' connection cap: scrapers and kubelets, not clients.
const MAX_CONNECTIONS: usize = 64;

struct Probes {
    metrics: Arc<ControllerMetrics>,
    registry: prometheus_client::registry::Registry,
}

/// The router of the three routes.
fn router(metrics: Arc<ControllerMetrics>) -> Router {
    let registry = metrics.registry();
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(Probes { metrics, registry }))
}

async fn readyz(State(p): State<Arc<Probes>>) -> Response {
    if p.metrics.is_ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the controllers have not listed ApiKeys and TokenPolicies yet",
        )
            .into_response()
    }
}

async fn metrics_text(State(p): State<Arc<Probes>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &p.registry) {
        Ok(()) => (
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

/// Serves the probes on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<ControllerMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tcp = listener::bind(addr).map_err(|e| Error::Server(format!("cannot listen on {addr}: {e}")))?;
    let bound = tcp.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "controller probes listening");
    let hygiene = listener::Hygiene {
        max_connections: MAX_CONNECTIONS,
        ..listener::Hygiene::default()
    };
    let plain = |tcp: tokio::net::TcpStream, _| async move { Some(tcp) };
    let open = prometheus_client::metrics::gauge::Gauge::default();
    let protocol = listener::Protocol::Http1;
    listener::serve(
        tcp,
        protocol,
        hygiene,
        open,
        plain,
        router(metrics),
        shutdown,
        "probes",
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_controllers_and_metrics_name_the_families() {
        let metrics = Arc::new(ControllerMetrics::default());
        let app = router(metrics.clone());
        assert_eq!(get(app.clone(), "/livez").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_leading(true);
        metrics.set_started();
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, text) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("latchkey_leader 1"), "{text}");
        assert!(text.contains("# TYPE latchkey_controller_reconcile_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }
}
