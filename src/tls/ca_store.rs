//! The shared CA's Secret: loaded by every replica, created by the first
//! (a lost create race re-reads the winner's), so every replica and every
//! listener signs with the same CA, the webhook writes the same `caBundle`
//! and a proxy trusts one `ca.crt` whichever replica it reaches.

use super::certs::Ca;
use super::{TlsError, kube_err};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::SystemTime;

/// The shared CA: loaded from its Secret, or made and stored there.
pub async fn load_or_create_ca(client: &Client, (ns, name): &(String, String)) -> Result<Ca, TlsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let what = format!("{ns}/{name}");
    if let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(kube_err("reading the CA Secret"))?
    {
        return ca_from_secret(&secret, &what);
    }
    let ca = Ca::generate(SystemTime::now())?;
    let secret = ca_secret(name, &ca);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %what, "created the CA Secret");
            Ok(ca)
        }
        // Another replica was faster: use its CA.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = secrets
                .get(name)
                .await
                .map_err(kube_err("reading the CA Secret"))?;
            ca_from_secret(&secret, &what)
        }
        Err(e) => Err(kube_err("creating the CA Secret")(e)),
    }
}

/// The Secret `name` holding `ca` (type `kubernetes.io/tls`).
pub fn ca_secret(name: &str, ca: &Ca) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/name".to_owned(), "latchkey".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "webhook-ca".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(ca.cert_pem.clone().into_bytes())),
                ("tls.key".to_owned(), ByteString(ca.key_pem().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The CA a Secret holds; `what` (`NS/NAME`) names it in the error.
pub fn ca_from_secret(secret: &Secret, what: &str) -> Result<Ca, TlsError> {
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .map(str::to_owned)
    };
    match (field("tls.crt"), field("tls.key")) {
        (Some(cert), Some(key)) => Ca::from_pem(&cert, &key, what),
        _ => Err(TlsError::BadCaSecret(what.into())),
    }
}
