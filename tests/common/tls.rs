//! TLS clients for the tests of latchkey's HTTPS listeners (the webhook's,
//! the auth server's): trusting exactly one CA, as the API server (caBundle)
//! and a proxy (its trusted CA file) do.

use super::kubectl_ok;
use std::sync::Arc;
use std::time::Duration;

/// Makes ring the process' rustls provider (once): reqwest has no provider
/// of its own here (Cargo.toml says why), and every test binary that
/// touches the cluster passes through [`super::kubeconfig`], which calls this.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM certificate (`tls.crt`) of the CA Secret `ns/name`.
pub fn ca_pem(ns: &str, name: &str) -> String {
    let b64 = kubectl_ok(&[
        "get",
        "secret",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.data.tls\\.crt}",
    ]);
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap(),
    )
    .unwrap()
}

/// A TLS client configuration that trusts only `ca`, with a full handshake
/// every time (a resumed session shows the old certificate).
pub fn connector(ca: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config(ca, false))
}

fn client_config(ca: &str, resume: bool) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config
}

/// A reqwest client that trusts only `ca` (no system roots).
pub fn reqwest_trusting(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(ca, true))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One HTTPS request to 127.0.0.1:`port` over a fresh connection
/// (blocking), `name` the server name verified; returns the leaf
/// certificate served and the raw response.
pub fn https(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
    request: &str,
) -> Result<(Vec<u8>, String), String> {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // The server closes after the response (Connection: close); a missing
    // close_notify is not an error here.
    if let Err(e) = tls.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(e.to_string());
    }
    let leaf = tls.conn.peer_certificates().ok_or("no certificate")?[0].to_vec();
    Ok((leaf, String::from_utf8_lossy(&response).into_owned()))
}

/// A CA nobody trusts (PEM), for the refusals.
pub fn untrusted_ca() -> String {
    rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .cert
        .pem()
}
