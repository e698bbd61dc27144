//! cert-manager mode (`--webhook-cert-dir`): serve the certificate of a
//! mounted Secret and swap in its renewals as the kubelet updates the files.
//! No CA and no configuration writes of latchkey's: cert-manager's CA
//! injector fills `caBundle`.

use super::WebhookError;
use super::tls::{self, SwappableCert, TlsError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The TLS configuration serving the certificate mounted in `dir`, and the
/// task that re-reads it every `every` (abort it when serving ends).
pub(super) fn serve_mounted(
    dir: PathBuf,
    every: Duration,
) -> Result<(rustls::ServerConfig, JoinHandle<()>), WebhookError> {
    let files = read_mounted(&dir)?;
    let first = tls::certified_key_from_pem(&files.0, &files.1, &dir.display().to_string())?;
    let certs = Arc::new(SwappableCert::new(first));
    let tls_config = tls::server_config(certs.clone())?;
    let reloader = tokio::spawn(reload_mounted(dir.clone(), certs, every, files));
    tracing::info!(dir = %dir.display(), "serving the mounted certificate");
    Ok((tls_config, reloader))
}

/// Reads `tls.crt` and `tls.key` from a mounted certificate directory.
fn read_mounted(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read =
        |f: &str| std::fs::read(dir.join(f)).map_err(|_| TlsError::BadMounted(dir.display().to_string()));
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// Swaps in the mounted certificate whenever its files change (the kubelet
/// updates a mounted Secret in place).
async fn reload_mounted(
    dir: PathBuf,
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
