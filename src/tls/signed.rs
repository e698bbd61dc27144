//! A serving certificate latchkey signs with its own CA: short-lived, kept
//! in memory, renewed before its expiry and swapped into the listener
//! without a restart; and the CA Secret re-read every sync round (a
//! replaced CA is adopted, a deleted one re-created).

use super::ca_store::{ca_from_secret, ca_secret, load_or_create_ca};
use super::certs::{self, Ca, SwappableCert};
use super::{TlsError, short_error};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// The serving certificate's current state, shared with the renewal task
/// and the sync rounds (which may replace the CA).
pub struct Signed {
    ca: RwLock<Arc<Ca>>,
    pub certs: Arc<SwappableCert>,
    pub names: Vec<String>,
    validity: Duration,
    /// Which listener this serves ("webhook", "HTTP"), for log lines.
    pub listener: &'static str,
}

impl Signed {
    /// Signs a new serving certificate with the current CA and swaps it in;
    /// returns its expiry.
    pub fn renew(&self) -> Result<SystemTime, TlsError> {
        let ca = self.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (cert, not_after) = ca.issue(&self.names, SystemTime::now(), self.validity)?;
        self.certs.swap(cert);
        Ok(not_after)
    }

    /// The current CA's certificate (what `caBundle` and a proxy's trusted
    /// CA file hold).
    pub fn ca_pem(&self) -> String {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).cert_pem.clone()
    }

    fn replace_ca(&self, ca: Ca) {
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ca);
    }
}

/// Loads (or creates) the shared CA, signs the first serving certificate
/// for `names`, and starts its renewal `renew_before` each expiry. Returns
/// the serving state and the renewal task (abort it when serving ends).
pub async fn serve_signed(
    client: &Client,
    ca_secret: &(String, String),
    names: Vec<String>,
    validity: Duration,
    renew_before: Duration,
    listener: &'static str,
) -> Result<(Arc<Signed>, JoinHandle<()>), TlsError> {
    let ca = load_or_create_ca(client, ca_secret).await?;
    let (first, not_after) = ca.issue(&names, SystemTime::now(), validity)?;
    let serving = Arc::new(Signed {
        ca: RwLock::new(Arc::new(ca)),
        certs: Arc::new(SwappableCert::new(first)),
        names,
        validity,
        listener,
    });
    let renewer = tokio::spawn(keep_renewed(serving.clone(), not_after, renew_before));
    Ok((serving, renewer))
}

/// Renewal: a new serving certificate `renew_before` its expiry, retried
/// shortly after a failure.
async fn keep_renewed(serving: Arc<Signed>, mut not_after: SystemTime, renew_before: Duration) {
    let mut renewals: u64 = 0;
    let listener = serving.listener;
    loop {
        let delay = certs::renewal_delay(
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
                tracing::info!(renewals, %expires, "renewed the {listener} serving certificate");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the {listener} serving certificate; retrying");
                not_after = SystemTime::now() + renew_before + Duration::from_secs(5);
            }
        }
    }
}

/// One look at the CA Secret: the Secret is the truth, so a replaced CA is
/// adopted (and a certificate signed with it at once) and a deleted one
/// re-created from memory. Failures are logged and retried next round.
pub async fn sync_ca_secret(client: &Client, (ns, name): &(String, String), serving: &Signed) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let listener = serving.listener;
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => match ca_from_secret(&secret, &format!("{ns}/{name}")) {
            Ok(stored) if stored.cert_pem != serving.ca_pem() => {
                serving.replace_ca(stored);
                match serving.renew() {
                    Ok(_) => tracing::info!("the {listener} listener adopted the CA of the CA Secret"),
                    Err(e) => tracing::warn!(error = %e, "could not sign with the new CA"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the CA Secret is unusable; keeping the CA in memory")
            }
        },
        Ok(None) => {
            let ca = serving.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
            match secrets
                .create(&PostParams::default(), &ca_secret(name, &ca))
                .await
            {
                Ok(_) => tracing::info!("re-created the deleted CA Secret"),
                // Another listener or replica was faster.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %short_error(&e), "could not re-create the CA Secret")
                }
            }
        }
        Err(e) => tracing::warn!(error = %short_error(&e), "could not read the CA Secret"),
    }
}

/// [`sync_ca_secret`] now and every `every`, forever (abort the task when
/// serving ends).
pub async fn keep_ca_current(
    client: Client,
    ca_secret: (String, String),
    serving: Arc<Signed>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        sync_ca_secret(&client, &ca_secret, &serving).await;
    }
}
