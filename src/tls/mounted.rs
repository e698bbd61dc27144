//! cert-manager mode: serve the certificate of a mounted Secret
//! (`tls.crt`, `tls.key`) and swap in its renewals as the kubelet updates
//! the files. No CA of latchkey's.

use super::TlsError;
use super::certs::{self, SwappableCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The files of a mounted certificate: `tls.crt` (the chain) and `tls.key`.
pub type Files = (Vec<u8>, Vec<u8>);

/// What one look at the directory leads to.
pub enum Reload {
    /// The files are those being served: nothing to do.
    Unchanged,
    /// New files that parse: serve this key from the next handshake on.
    Swap(Arc<CertifiedKey>),
    /// Unreadable or unparsable files (the kubelet may be half-way through
    /// an update): keep serving the previous certificate and say why.
    KeepPrevious(TlsError),
}

/// The pure decision of one reload round: `read` (the files just read, or
/// why not) against `current` (the files served).
pub fn decide(current: &Files, read: Result<&Files, TlsError>, what: &str) -> Reload {
    match read {
        Ok(files) if files == current => Reload::Unchanged,
        Ok(files) => match certs::certified_key_from_pem(&files.0, &files.1, what) {
            Ok(key) => Reload::Swap(key),
            Err(e) => Reload::KeepPrevious(e),
        },
        Err(e) => Reload::KeepPrevious(e),
    }
}

/// The certificate mounted in `dir`, served through a [`SwappableCert`],
/// and the task that re-reads it every `every` (abort it when serving
/// ends). `listener` names the listener in logs.
pub fn serve_mounted(
    dir: PathBuf,
    every: Duration,
    listener: &'static str,
) -> Result<(Arc<SwappableCert>, JoinHandle<()>), TlsError> {
    let files = read_mounted(&dir)?;
    let first = certs::certified_key_from_pem(&files.0, &files.1, &dir.display().to_string())?;
    let certs = Arc::new(SwappableCert::new(first));
    let reloader = tokio::spawn(reload_mounted(dir.clone(), certs.clone(), every, files, listener));
    tracing::info!(dir = %dir.display(), "the {listener} listener serves the mounted certificate");
    Ok((certs, reloader))
}

/// Reads `tls.crt` and `tls.key` from a mounted certificate directory.
fn read_mounted(dir: &Path) -> Result<Files, TlsError> {
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
    mut current: Files,
    listener: &'static str,
) {
    let what = dir.display().to_string();
    loop {
        tokio::time::sleep(every).await;
        let (decision, read) = match read_mounted(&dir) {
            Ok(files) => (decide(&current, Ok(&files), &what), Some(files)),
            Err(e) => (decide(&current, Err(e), &what), None),
        };
        match decision {
            Reload::Unchanged => {}
            Reload::Swap(key) => {
                certs.swap(key);
                if let Some(files) = read {
                    current = files;
                }
                tracing::info!(dir = %what, "the {listener} listener loaded the renewed mounted serving certificate");
            }
            Reload::KeepPrevious(e) => {
                tracing::warn!(error = %e, "keeping the previous {listener} serving certificate")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> Files {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            made.cert.pem().into_bytes(),
            made.signing_key.serialize_pem().into_bytes(),
        )
    }

    #[test]
    fn unchanged_files_are_not_reloaded_and_new_ones_are() {
        let current = pem_pair();
        assert!(matches!(decide(&current, Ok(&current), "d"), Reload::Unchanged));
        let next = pem_pair();
        assert!(matches!(decide(&current, Ok(&next), "d"), Reload::Swap(_)));
    }

    #[test]
    fn half_written_or_missing_files_keep_the_previous_certificate() {
        let current = pem_pair();
        let half = (current.0.clone(), b"-----BEGIN PRIVATE KEY-----\nAAA".to_vec());
        match decide(&current, Ok(&half), "d") {
            Reload::KeepPrevious(e) => assert!(!e.to_string().contains("PRIVATE KEY"), "{e}"),
            _ => panic!("a broken key is not served"),
        }
        let gone = Err(TlsError::BadMounted("d".into()));
        assert!(matches!(decide(&current, gone, "d"), Reload::KeepPrevious(_)));
    }
}
