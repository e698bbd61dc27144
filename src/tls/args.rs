//! The TLS flags of the auth server's two listeners (`--http-tls…` and
//! `--grpc-tls…`, flattened into `serve` and `run`), checked into a
//! [`Source`] each.

use super::{Flags, Mode, Source, TlsError, serving_names};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ListenerTlsArgs {
    /// HTTPS on --http-addr: `self-signed` (latchkey's CA, shared with the
    /// webhook), `dir` (a mounted certificate), or `off` (plain HTTP).
    #[arg(long, env = "LATCHKEY_HTTP_TLS", value_enum, default_value = "off")]
    pub http_tls: Mode,
    /// With --http-tls dir: the directory holding tls.crt and tls.key.
    #[arg(long, env = "LATCHKEY_HTTP_TLS_CERT_DIR")]
    http_tls_cert_dir: Option<PathBuf>,
    /// With --http-tls self-signed: a DNS name (or IP) of the certificate,
    /// for example latchkey.latchkey-system.svc; repeatable. Default:
    /// localhost and the loopback addresses. The issuer base URL's host is added.
    #[arg(long)]
    http_tls_dns_name: Vec<String>,
    /// Lifetime of the self-signed serving certificate (tests shorten it).
    #[arg(long, default_value_t = 30 * 24 * 3600, hide = true)]
    http_tls_cert_validity_seconds: u64,
    /// Renew it this long before it expires.
    #[arg(long, default_value_t = 10 * 24 * 3600, hide = true)]
    http_tls_cert_renew_before_seconds: u64,
    /// How often the CA Secret, or the mounted directory, is re-read.
    #[arg(long, default_value_t = 60, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    http_tls_sync_seconds: u64,
    /// TLS on --grpc-addr, the choices of --http-tls: `self-signed`
    /// (latchkey's CA), `dir` (a mounted certificate), or `off` (h2c).
    #[arg(long, env = "LATCHKEY_GRPC_TLS", value_enum, default_value = "off")]
    grpc_tls: Mode,
    /// With --grpc-tls dir: the directory holding tls.crt and tls.key (it
    /// may be the HTTP listener's).
    #[arg(long, env = "LATCHKEY_GRPC_TLS_CERT_DIR")]
    grpc_tls_cert_dir: Option<PathBuf>,
    /// With --grpc-tls self-signed: a DNS name (or IP) of the certificate;
    /// repeatable. Default: those of --http-tls-dns-name.
    #[arg(long)]
    grpc_tls_dns_name: Vec<String>,
}

impl ListenerTlsArgs {
    /// The HTTP listener's certificate source, or `None` for plain HTTP;
    /// `ca_secret` is the shared CA's Secret, `base_url` the issuer base URL
    /// (its host becomes a SAN).
    pub fn http_source(
        &self,
        ca_secret: (String, String),
        base_url: &str,
    ) -> Result<Option<Source>, TlsError> {
        let names = serving_names(&self.http_tls_dns_name, &[base_url], true);
        let flags = self.flags("--http-tls", self.http_tls, &self.http_tls_cert_dir, names);
        flags.source(ca_secret)
    }

    /// The gRPC listener's certificate source (`None`: h2c), with the
    /// renewal timing of the HTTP listener's; TLS without a gRPC listener
    /// (`grpc_on`) is refused.
    pub fn grpc_source(
        &self,
        ca_secret: (String, String),
        grpc_on: bool,
    ) -> Result<Option<Source>, TlsError> {
        let explicit = match self.grpc_tls_dns_name.is_empty() {
            true => &self.http_tls_dns_name,
            false => &self.grpc_tls_dns_name,
        };
        let names = serving_names(explicit, &[], true);
        let flags = self.flags("--grpc-tls", self.grpc_tls, &self.grpc_tls_cert_dir, names);
        let source = flags.source(ca_secret)?;
        if source.is_some() && !grpc_on {
            return Err(TlsError::Flags(
                "--grpc-tls is only read with --grpc-addr; add the address or drop --grpc-tls".into(),
            ));
        }
        Ok(source)
    }

    fn flags(
        &self,
        prefix: &'static str,
        mode: Mode,
        cert_dir: &Option<PathBuf>,
        names: Vec<String>,
    ) -> Flags {
        Flags {
            prefix,
            mode,
            cert_dir: cert_dir.clone(),
            names,
            validity_seconds: self.http_tls_cert_validity_seconds,
            renew_before_seconds: self.http_tls_cert_renew_before_seconds,
            sync_seconds: self.http_tls_sync_seconds,
        }
    }
}
