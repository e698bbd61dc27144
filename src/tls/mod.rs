//! TLS for every listener latchkey serves (the admission webhook, the auth
//! server's HTTP listener, and the gRPC listener to come): where the
//! serving certificate comes from, and the handshake.
//!
//! **Two sources** ([`Source`]):
//! - **latchkey's own CA** ([`signed`]): a CA (rcgen, ECDSA P-256, ten
//!   years) in one Secret of latchkey's namespace (`--webhook-ca-secret`,
//!   type `kubernetes.io/tls`), shared by every replica and every listener:
//!   the first creates it, the others load it ([`ca_store`]). Each process
//!   signs one short-lived serving certificate per listener in memory,
//!   renews it before expiry and swaps it in without a restart
//!   ([`certs::SwappableCert`]); the Secret is re-read every sync round (a
//!   replaced CA is adopted, a deleted one re-created). A client trusts the
//!   CA certificate (the Secret's `tls.crt`, never its key).
//! - **a mounted directory** ([`mounted`]): `tls.crt`/`tls.key` of a
//!   Secret someone else keeps (cert-manager), re-read every sync round and
//!   swapped in when they change; a half-written pair keeps the previous
//!   certificate.
//!
//! Listeners take a [`Serving`] (the swappable certificate and the tasks
//! keeping it current) and build their rustls configuration with their own
//! ALPN ([`Serving::acceptor`]); [`accept`] is the handshake for
//! [`crate::listener::serve`].
//!
//! Private keys exist only in the CA Secret, the mounted files and memory;
//! they are never logged, and errors never carry them.

pub mod args;
pub mod ca_store;
pub mod certs;
pub mod mounted;
pub mod signed;

use kube::Client;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub use ca_store::load_or_create_ca;
pub use certs::SwappableCert;

/// Errors of certificate handling. They never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a key or certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA Secret {0} is incomplete or not PEM (expected tls.crt and tls.key)")]
    BadCaSecret(String),
    #[error("the serving key is not usable by rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("a SAN {0:?} is neither an IP address nor a DNS name")]
    BadName(String),
    #[error("the mounted serving certificate in {0} is unreadable or not PEM (expected tls.crt and tls.key)")]
    BadMounted(String),
    #[error("{0}")]
    Flags(String),
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Wraps a kube error of the API call made while `action`.
pub(crate) fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> TlsError {
    move |source| TlsError::Kube { action, source }
}

/// A kube error as a status code and reason, never the server's message
/// (which could echo a request body).
pub fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        _ => "API server unreachable".into(),
    }
}

/// Where a listener's serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Signed by latchkey's CA, kept in the Secret `ca_secret` (NS, NAME),
    /// for `names` (SANs), valid for `validity`, renewed `renew_before`
    /// its end; the Secret re-read every `sync_interval`.
    Signed {
        ca_secret: (String, String),
        names: Vec<String>,
        validity: Duration,
        renew_before: Duration,
        sync_interval: Duration,
    },
    /// `tls.crt` and `tls.key` in `dir`, re-read every `reload_every`.
    Mounted { dir: PathBuf, reload_every: Duration },
}

impl Source {
    /// For log lines: where the certificate comes from.
    pub fn describe(&self) -> String {
        match self {
            Source::Signed { ca_secret, .. } => {
                format!("signed by latchkey's CA ({}/{})", ca_secret.0, ca_secret.1)
            }
            Source::Mounted { dir, .. } => format!("mounted from {}", dir.display()),
        }
    }
}

/// A listener's TLS mode (`--http-tls`, and the gRPC listener's to come).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain text: credentials cross the network in clear text (local development).
    Off,
    /// A certificate signed by latchkey's CA (the --webhook-ca-secret Secret), renewed in memory.
    SelfSigned,
    /// tls.crt and tls.key mounted in the cert dir (cert-manager), reloaded when they change.
    Dir,
}

/// A listener's TLS flags (`<prefix>`, `<prefix>-cert-dir`, …), checked
/// together into a [`Source`].
#[derive(Debug, Clone)]
pub struct Flags {
    /// The mode flag's name, for errors (`--http-tls`).
    pub prefix: &'static str,
    pub mode: Mode,
    pub cert_dir: Option<PathBuf>,
    /// SANs for [`Mode::SelfSigned`] (see [`serving_names`]).
    pub names: Vec<String>,
    pub validity_seconds: u64,
    pub renew_before_seconds: u64,
    pub sync_seconds: u64,
}

impl Flags {
    /// The certificate source, `None` for plain text; `ca_secret` is the
    /// shared CA's Secret. A cert dir without `dir` mode, or `dir` without
    /// one, is refused naming the flags.
    pub fn source(&self, ca_secret: (String, String)) -> Result<Option<Source>, TlsError> {
        let secs = Duration::from_secs;
        let p = self.prefix;
        match (self.mode, &self.cert_dir) {
            (Mode::Off, None) => Ok(None),
            (Mode::SelfSigned, None) => Ok(Some(Source::Signed {
                ca_secret,
                names: self.names.clone(),
                validity: secs(self.validity_seconds),
                renew_before: secs(self.renew_before_seconds),
                sync_interval: secs(self.sync_seconds),
            })),
            (Mode::Dir, Some(dir)) => Ok(Some(Source::Mounted {
                dir: dir.clone(),
                reload_every: secs(self.sync_seconds),
            })),
            (Mode::Dir, None) => Err(TlsError::Flags(format!(
                "{p} dir needs {p}-cert-dir (the directory with tls.crt and tls.key)"
            ))),
            (_, Some(_)) => Err(TlsError::Flags(format!(
                "{p}-cert-dir is only read with {p} dir; add it or drop the directory"
            ))),
        }
    }
}

/// A listener's serving certificate and the tasks that keep it current
/// (aborted on drop).
pub struct Serving {
    pub certs: Arc<SwappableCert>,
    /// With latchkey's CA: the signing state (its CA certificate, renewals).
    pub signed: Option<Arc<signed::Signed>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Serving {
    /// A TLS acceptor over the current certificate, offering `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let config = certs::server_config(self.certs.clone(), alpn)?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Starts serving certificates from `source` for the listener named
/// `listener` (in logs): loads or creates the CA and signs the first
/// certificate, or reads the mounted one; then keeps it current.
pub async fn start(client: &Client, source: &Source, listener: &'static str) -> Result<Serving, TlsError> {
    match source {
        Source::Signed {
            ca_secret,
            names,
            validity,
            renew_before,
            sync_interval,
        } => {
            let (signed, renewer) = signed::serve_signed(
                client,
                ca_secret,
                names.clone(),
                *validity,
                *renew_before,
                listener,
            )
            .await?;
            let syncer = tokio::spawn(signed::keep_ca_current(
                client.clone(),
                ca_secret.clone(),
                signed.clone(),
                *sync_interval,
            ));
            Ok(Serving {
                certs: signed.certs.clone(),
                signed: Some(signed),
                tasks: vec![renewer, syncer],
            })
        }
        Source::Mounted { dir, reload_every } => {
            let (certs, reloader) = mounted::serve_mounted(dir.clone(), *reload_every, listener)?;
            Ok(Serving {
                certs,
                signed: None,
                tasks: vec![reloader],
            })
        }
    }
}

/// The TLS handshake of one connection for [`crate::listener::serve`]:
/// the stream, or `None` (logged at debug) when the client fails it.
pub async fn accept(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &'static str,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match acceptor.accept(tcp).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "{listener} TLS handshake failed");
            None
        }
    }
}

/// The host of `https://HOST[:PORT]/…` (brackets of an IPv6 address
/// removed); `None` for another scheme.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The SANs of a serving certificate: the `explicit` names (flags), else
/// `localhost` and the loopback addresses; plus the host of every https
/// `url` clients are told to use (the webhook URL, the issuer base URL).
/// In order, without repeats.
pub fn serving_names(explicit: &[String], urls: &[&str], loopback_default: bool) -> Vec<String> {
    let mut names: Vec<String> = explicit.to_vec();
    if names.is_empty() {
        if loopback_default {
            names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        } else {
            names.push("localhost".into());
        }
    }
    names.extend(urls.iter().filter_map(|u| url_host(u)));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_names_come_first_and_the_urls_hosts_are_added_once() {
        let names = serving_names(
            &["latchkey.ns.svc".into(), "latchkey.ns.svc.cluster.local".into()],
            &["https://auth.example.com/x", "https://LATCHKEY.ns.svc:8443"],
            true,
        );
        assert_eq!(
            names,
            [
                "latchkey.ns.svc",
                "latchkey.ns.svc.cluster.local",
                "auth.example.com"
            ]
        );
    }

    #[test]
    fn without_names_loopback_is_served() {
        assert_eq!(
            serving_names(&[], &["https://127.0.0.1:8080"], true),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(serving_names(&[], &["http://example.com"], false), ["localhost"]);
        assert_eq!(
            serving_names(&[], &["https://[::1]:9443/validate"], false),
            ["localhost", "::1"]
        );
    }

    #[test]
    fn user_info_is_no_host() {
        assert_eq!(url_host("https://u:p@h.example:1/").as_deref(), Some("h.example"));
    }
}
