//! The admission webhook's server: `/validate` over TLS, thin over the pure
//! rules of [`crate::admission`], with certificates latchkey makes itself
//! ([`tls`]) and the ValidatingWebhookConfiguration it keeps pointing at
//! them ([`configuration`]).
//!
//! **Certificates** come from [`crate::tls`], shared with the auth
//! server's HTTPS listener. A CA (rcgen, ECDSA P-256, ten years) lives in
//! one Secret of latchkey's namespace (`--webhook-ca-secret NS/NAME`, type
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
//! Lease), with a sync round the moment it takes the Lease (a fresh
//! install's first round runs before any replica holds it); every replica
//! serves reviews with the shared CA whether it leads or not. A `latchkey serve` without a
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
//!
//! **Files.** [`sync`] (the CA Secret and the configuration, every sync
//! interval), [`configuration`] (the configuration's pure builders),
//! [`review`] (the `/validate` handler), [`serve`] (the TLS listener); here:
//! the options, the error and [`run`].

pub mod configuration;
mod review;
mod serve;
mod sync;

pub use crate::tls::{load_or_create_ca, url_host};
pub use serve::MAX_CONNECTIONS;
pub use sync::sync_configuration;

use crate::tls::{self, TlsError};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The field manager of latchkey's writes to the configuration and CA Secret.
const FIELD_MANAGER: &str = "latchkey";

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

/// Wraps a kube error of the API call made while `action`.
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
    /// The watched namespaces: the TokenPolicies the webhook may list, and
    /// for a configuration latchkey creates its namespaceSelector; with the
    /// three below, its failure policy, timeout and the operations checked
    /// on Secrets.
    pub namespaces: crate::namespaces::WatchNamespaces,
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
    /// only the leader writes the configuration, at once when it takes the
    /// Lease and then every sync interval. `None`: always write.
    pub leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// `--require-grants`: namespaces no CredentialGrant selects claim nothing.
    pub require_grants: bool,
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
    // The serving certificate, and the tasks that keep it (and, with
    // latchkey's own CA, the CA Secret and the configuration) current.
    let (certs, background) = if let Some(dir) = options.cert_dir.clone() {
        // cert-manager mode: its certificate, its CA injection; no CA Secret
        // and no configuration writes of ours.
        let (certs, reloader) = tls::mounted::serve_mounted(dir, options.sync_interval, "webhook")?;
        (certs, vec![reloader])
    } else {
        let (serving, renewer) = tls::signed::serve_signed(
            &client,
            &options.ca_secret,
            options.serving_names(),
            options.cert_validity,
            options.renew_before,
            "webhook",
        )
        .await?;
        // The CA Secret and the configuration, checked every sync interval.
        let syncer = tokio::spawn(sync::keep_in_sync(
            client.clone(),
            options.clone(),
            serving.clone(),
        ));
        tracing::info!(names = ?serving.names, "serving certificates of latchkey's CA");
        (serving.certs.clone(), vec![renewer, syncer])
    };
    let tls_config = tls::certs::server_config(certs, &[b"http/1.1"])?;
    let served = serve::listen_and_serve(&options, tls_config, client, allowed_users, shutdown).await;
    for task in background {
        task.abort();
    }
    served
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
