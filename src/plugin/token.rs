//! `kubectl latchkey token POLICY --key-from-secret NS/NAME`: exchanges the
//! key an ApiKey's Secret holds for a token at a latchkey server's `/token`
//! (`--url BASE`, for example a `kubectl port-forward`), or at the policy's
//! `<issuer>/token`. Prints only the token.

use super::cluster::{Cluster, KubeFlags, Target, source_chain};
use super::error::PluginError;
use crate::crd::TokenPolicy;
use crate::meta::SECRET_DATA_KEY;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The TokenPolicy (in -n NAMESPACE).
    pub policy: String,
    /// The Secret holding the API key (data key `api-key`), as NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pub key_from_secret: String,
    /// A scope to ask for (repeatable); default: every scope key and policy allow.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// An audience to ask for (repeatable).
    #[arg(long = "audience", value_name = "AUDIENCE")]
    pub audiences: Vec<String>,
    /// A role of the policy to ask for.
    #[arg(long)]
    pub role: Option<String>,
    /// The latchkey server's base URL, e.g. http://127.0.0.1:8080 from
    /// `kubectl port-forward -n latchkey-system svc/latchkey 8080`: POSTs to
    /// <URL>/token with policy=POLICY. Default: the policy's issuer
    /// (status.issuer) + /token.
    #[arg(long)]
    pub url: Option<String>,
    /// A PEM file of the CA to trust for an https URL (and only it), for
    /// example latchkey's own CA (the chart's HTTPS default): `kubectl get
    /// secret -n latchkey-system latchkey-webhook-ca -o
    /// jsonpath='{.data.tls\.crt}' | base64 -d > ca.crt`.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
}

/// The HTTP client: one that trusts only the CA of `cacert` when given
/// (latchkey's own CA is in no system store), the default one otherwise.
fn http_client(cacert: Option<&std::path::Path>) -> Result<reqwest::Client, PluginError> {
    let Some(path) = cacert else {
        return Ok(reqwest::Client::new());
    };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let unreadable =
        |e: &dyn std::fmt::Display| PluginError::Input(format!("--cacert {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no PEM certificate in it"));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| unreadable(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| unreadable(&e))
}

/// `NS/NAME` split, or a message saying what is expected.
pub fn split_secret_ref(text: &str) -> Result<(&str, &str), PluginError> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns, name)),
        _ => Err(PluginError::Input(format!(
            "--key-from-secret {text:?} is not NAMESPACE/NAME (for example shop/frontend)"
        ))),
    }
}

/// The form of the token request (without the key: that is the Basic password).
pub fn form(args: &TokenArgs, with_policy: bool) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if with_policy {
        form.append_pair("policy", &args.policy);
    }
    if !args.scopes.is_empty() {
        form.append_pair("scope", &args.scopes.join(" "));
    }
    for a in &args.audiences {
        form.append_pair("audience", a);
    }
    if let Some(role) = &args.role {
        form.append_pair("role", role);
    }
    form.finish()
}

pub async fn run(flags: &KubeFlags, args: TokenArgs) -> Result<(), PluginError> {
    let (secret_ns, secret_name) = split_secret_ref(&args.key_from_secret)?;
    let cluster = Cluster::connect(flags).await?;
    let secret = Api::<Secret>::namespaced(cluster.client.clone(), secret_ns)
        .get(secret_name)
        .await
        .map_err(|e| cluster.error(e, "get", Target::secrets(Some(secret_ns)).named(secret_name)))?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_DATA_KEY))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| {
            PluginError::Input(format!(
                "Secret {secret_ns}/{secret_name} has no data key {SECRET_DATA_KEY}: name the Secret of an ApiKey"
            ))
        })?;
    let (url, with_policy) = match &args.url {
        Some(base) => (format!("{}/token", base.trim_end_matches('/')), true),
        None => {
            let ns = cluster.namespace.as_str();
            let policy = Api::<TokenPolicy>::namespaced(cluster.client.clone(), ns)
                .get(&args.policy)
                .await
                .map_err(|e| cluster.error(e, "get", Target::token_policies(Some(ns)).named(&args.policy)))?;
            let issuer = policy.status.and_then(|s| s.issuer).ok_or_else(|| {
                PluginError::Input(format!(
                    "TokenPolicy {ns}/{} has no issuer in status yet: wait until it is Ready, or pass --url",
                    args.policy
                ))
            })?;
            (format!("{}/token", issuer.trim_end_matches('/')), false)
        }
    };
    let http_err = |e: reqwest::Error| PluginError::Http {
        url: url.clone(),
        message: format!(
            "{}; is the server reachable from here? (pass --url with a `kubectl port-forward` address)",
            source_chain(&e)
        ),
    };
    let resp = http_client(args.cacert.as_deref())?
        .post(&url)
        .basic_auth("kubectl-latchkey", Some(key))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&args, with_policy))
        .send()
        .await
        .map_err(http_err)?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        return Err(PluginError::TokenRefused {
            url,
            status: status.as_u16(),
            error: body["error"].as_str().unwrap_or("no error code").to_owned(),
            description: body["error_description"]
                .as_str()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
        });
    }
    let token = body["access_token"].as_str().ok_or_else(|| PluginError::Http {
        url: url.clone(),
        message: "the answer has no access_token".to_owned(),
    })?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TokenArgs {
        TokenArgs {
            policy: "login".to_owned(),
            key_from_secret: "shop/frontend".to_owned(),
            scopes: vec!["a:read".to_owned(), "b:write".to_owned()],
            audiences: vec!["calendar".to_owned(), "pubsub".to_owned()],
            role: None,
            url: None,
            cacert: None,
        }
    }

    #[test]
    fn the_form_asks_for_scopes_audiences_and_the_policy() {
        assert_eq!(
            form(&args(), true),
            "grant_type=client_credentials&policy=login&scope=a%3Aread+b%3Awrite&audience=calendar&audience=pubsub"
        );
        let mut bare = args();
        bare.scopes.clear();
        bare.audiences.clear();
        bare.role = Some("data-entry".to_owned());
        assert_eq!(
            form(&bare, false),
            "grant_type=client_credentials&role=data-entry"
        );
    }

    #[test]
    fn secret_refs_are_namespace_slash_name() {
        assert_eq!(split_secret_ref("shop/frontend").unwrap(), ("shop", "frontend"));
        for bad in ["frontend", "/x", "x/", "a/b/c"] {
            assert!(split_secret_ref(bad).is_err(), "{bad}");
        }
    }
}
