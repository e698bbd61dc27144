//! The serving certificate latchkey signs with its own CA: short-lived,
//! kept in memory, renewed before its expiry and swapped into the listener
//! without a restart.

use super::WebhookError;
use super::ca_store::load_or_create_ca;
use super::tls::{self, Ca, SwappableCert, TlsError};
use kube::Client;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// The serving certificate's current state, shared with the renewal task
/// and the sync rounds (which may replace the CA).
pub(super) struct Serving {
    pub(super) ca: RwLock<Arc<Ca>>,
    certs: Arc<SwappableCert>,
    pub(super) names: Vec<String>,
    validity: Duration,
}

impl Serving {
    /// Signs a new serving certificate with the current CA and swaps it in;
    /// returns its expiry.
    pub(super) fn renew(&self) -> Result<SystemTime, TlsError> {
        let ca = self.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (cert, not_after) = ca.issue(&self.names, SystemTime::now(), self.validity)?;
        self.certs.swap(cert);
        Ok(not_after)
    }

    /// The current CA's certificate (what `caBundle` holds).
    pub(super) fn ca_pem(&self) -> String {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).cert_pem.clone()
    }
}

/// Loads (or creates) the shared CA, signs the first serving certificate
/// for `names`, and starts its renewal `renew_before` each expiry. Returns
/// the serving state, the TLS configuration and the renewal task (abort it
/// when serving ends).
pub(super) async fn serve_signed(
    client: &Client,
    ca_secret: &(String, String),
    names: Vec<String>,
    validity: Duration,
    renew_before: Duration,
) -> Result<(Arc<Serving>, rustls::ServerConfig, JoinHandle<()>), WebhookError> {
    let ca = load_or_create_ca(client, ca_secret).await?;
    let (first, not_after) = ca.issue(&names, SystemTime::now(), validity)?;
    let serving = Arc::new(Serving {
        ca: RwLock::new(Arc::new(ca)),
        certs: Arc::new(SwappableCert::new(first)),
        names,
        validity,
    });
    let tls_config = tls::server_config(serving.certs.clone())?;
    let renewer = tokio::spawn(keep_renewed(serving.clone(), not_after, renew_before));
    Ok((serving, tls_config, renewer))
}

/// Renewal: a new serving certificate `renew_before` its expiry, retried
/// shortly after a failure.
async fn keep_renewed(serving: Arc<Serving>, mut not_after: SystemTime, renew_before: Duration) {
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
                let expires =
                    crate::time::rfc3339(k8s_openapi::jiff::Timestamp::try_from(next).unwrap_or_default());
                tracing::info!(renewals, %expires, "renewed the webhook serving certificate");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the webhook serving certificate; retrying");
                not_after = SystemTime::now() + renew_before + Duration::from_secs(5);
            }
        }
    }
}
