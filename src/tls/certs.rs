//! Certificates, made with rcgen: a CA (kept in a Secret so every replica
//! and every restart uses the same one, and the webhook's `caBundle` and the
//! proxies' trusted CA file stay valid) and a serving certificate per
//! process and listener, signed by the CA, renewed in memory before it
//! expires and swapped into the TLS listener without a restart
//! ([`SwappableCert`]).
//!
//! Private keys exist only in the CA Secret and in memory; they are never
//! logged, and errors never carry them.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::TlsError;

/// A serving certificate from PEM files someone else issued (cert-manager):
/// the chain in `tls.crt`, the key in `tls.key`.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let bad = || TlsError::BadMounted(what.to_owned());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if chain.is_empty() {
        return Err(bad());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| bad())?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The CA's subject. Never change it: the issuer of serving certificates is
/// rebuilt from it and the stored key (see [`Ca::from_pem`]). It names the
/// webhook because the webhook had it first; every listener shares the CA.
const CA_COMMON_NAME: &str = "latchkey webhook CA";

/// How long a CA is valid. Renewing the CA is a manual step (delete the
/// Secret and restart the replicas); ten years makes that rare.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Serving certificates start a minute in the past, for clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

/// A CA: its certificate (PEM, what goes into `caBundle`) and key.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "latchkey");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// A new CA (ECDSA P-256), valid from now for [`CA_VALIDITY`].
    pub fn generate(now: SystemTime) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA stored in a Secret (`tls.crt`, `tls.key`). `what` names the
    /// Secret in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::BadCaSecret(what.into()))?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(TlsError::BadCaSecret(what.into()));
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The key as PEM, for the Secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid
    /// from now for `validity`; returns it with its expiry.
    pub fn issue(
        &self,
        names: &[String],
        now: SystemTime,
        validity: Duration,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| TlsError::BadName(name.clone()))?,
                ),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "latchkey".into()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + validity;
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|_| TlsError::BadCaSecret("CA certificate".into()))?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_der];
        Ok((Arc::new(CertifiedKey::new(chain, signing)), not_after))
    }
}

/// A `ResolvesServerCert` whose certificate can be replaced while the
/// listener runs: new handshakes get the new one, open connections keep
/// theirs.
#[derive(Debug)]
pub struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SwappableCert {
    pub fn new(cert: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(cert),
        }
    }

    pub fn swap(&self, cert: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while swapping an
        // Arc: the value is still whole.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = cert;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3) over `certs`,
/// offering `alpn` (`http/1.1` for the HTTP listeners; `h2` for gRPC).
///
/// Resumption with **stateless session tickets** (rustls' `Ticketer`:
/// ChaCha20-Poly1305 under a random key of this process, rotated every 6
/// hours; TLS 1.3 resumption stays forward-secret, PSK with (EC)DHE).
/// rustls' default instead keeps 256 sessions in memory and, in TLS 1.3,
/// takes each ticket once: nginx resumes every new upstream connection
/// with the one session it saved last, so with several connections at
/// once most found their ticket taken and paid a full handshake (an ECDSA
/// signature and a certificate chain). A ticket of another replica or of
/// a restarted process does not decrypt: a full handshake, as before.
pub fn server_config(certs: Arc<SwappableCert>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

/// When to renew a certificate that expires at `not_after`: `renew_before`
/// earlier, but not before `now + min_wait` (so a misconfiguration cannot
/// spin).
pub fn renewal_delay(
    now: SystemTime,
    not_after: SystemTime,
    renew_before: Duration,
    min_wait: Duration,
) -> Duration {
    not_after
        .checked_sub(renew_before)
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or_default()
        .max(min_wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_survives_its_secret_and_signs_serving_certificates() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem(), "ns/ca").unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        let (cert, not_after) = again
            .issue(
                &["127.0.0.1".into(), "latchkey.ns.svc".into()],
                now,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(cert.cert.len(), 2, "leaf and CA");
        assert_eq!(not_after, now + Duration::from_secs(60));
        assert!(Ca::from_pem("junk", "junk", "ns/ca").is_err());
        let err = Ca::from_pem(&ca.cert_pem, "junk", "ns/ca")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("PRIVATE KEY"));
    }

    /// A serving certificate of a new CA, and a client configuration that
    /// trusts that CA (sessions kept in rustls' default client cache).
    fn cert_and_client() -> (Arc<SwappableCert>, Arc<rustls::ClientConfig>) {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let (cert, _) = ca
            .issue(&["127.0.0.1".into()], SystemTime::now(), Duration::from_secs(60))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca_der: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        (Arc::new(SwappableCert::new(cert)), Arc::new(client))
    }

    fn connect(config: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        rustls::ClientConnection::new(config.clone(), name).unwrap()
    }

    /// A whole handshake in memory; the client keeps the server's tickets.
    fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
        let mut c = connect(client);
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..4 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
    }

    /// The bytes of `client`'s next ClientHello (offering its last ticket).
    fn next_hello(client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
        let mut c = connect(client);
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// How a server with `config` takes the ClientHello `hello`.
    fn kind_of(config: &Arc<rustls::ServerConfig>, hello: &[u8]) -> Option<rustls::HandshakeKind> {
        let mut s = rustls::ServerConnection::new(config.clone()).unwrap();
        s.read_tls(&mut &hello[..]).unwrap();
        s.process_new_packets().unwrap();
        s.handshake_kind()
    }

    #[test]
    fn a_session_ticket_resumes_however_often_it_is_presented() {
        use rustls::HandshakeKind::{Full, Resumed};
        let (certs, client) = cert_and_client();
        let server = Arc::new(server_config(certs.clone(), &[b"http/1.1"]).unwrap());
        handshake(&server, &client);
        // nginx offers the session it saved last on every new upstream
        // connection: the same ticket, again and again.
        let hello = next_hello(&client);
        for _ in 0..3 {
            assert_eq!(kind_of(&server, &hello), Some(Resumed));
        }
        // rustls' default (sessions in the server's memory) takes a TLS 1.3
        // ticket once: the second connection with it pays a full handshake.
        let default = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(certs),
        );
        let mut fresh_client = (*client).clone();
        fresh_client.resumption = rustls::client::Resumption::default();
        let fresh_client = Arc::new(fresh_client);
        handshake(&default, &fresh_client);
        let hello = next_hello(&fresh_client);
        assert_eq!(kind_of(&default, &hello), Some(Resumed));
        assert_eq!(kind_of(&default, &hello), Some(Full));
    }

    #[test]
    fn renewal_is_due_before_expiry_and_never_spins() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let after = |s| now + Duration::from_secs(s);
        let d = |s| Duration::from_secs(s);
        assert_eq!(renewal_delay(now, after(100), d(30), d(1)), d(70));
        assert_eq!(renewal_delay(now, after(10), d(30), d(1)), d(1));
        assert_eq!(renewal_delay(now, now, d(0), d(1)), d(1));
    }
}
