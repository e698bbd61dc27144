//! Keeping the CA Secret and the ValidatingWebhookConfiguration in line,
//! every sync interval: the Secret is the truth (a replaced CA is adopted, a
//! deleted one re-created), and the leader writes the configuration (the
//! whole object out of cluster, only `caBundle` in cluster).

use super::ca_store::{ca_from_secret, ca_secret};
use super::serving_cert::Serving;
use super::{FIELD_MANAGER, Options, WebhookError, configuration, kube_err, short_error};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::sync::Arc;

/// Brings the configuration in line with `ca_pem`: the whole object out of
/// cluster, only `caBundle` in cluster.
pub async fn sync_configuration(
    client: &Client,
    options: &Options,
    ca_pem: &str,
) -> Result<(), WebhookError> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration as Vwc;
    let api: Api<Vwc> = Api::all(client.clone());
    let name = &options.configuration_name;
    if let Some(url) = &options.url {
        let spec = configuration::ConfigurationSpec {
            name: name.clone(),
            url: url.clone(),
            namespace: options.namespace.clone(),
            failure_policy: options.failure_policy.clone(),
            timeout_seconds: options.timeout_seconds,
            secret_operations: options.secret_operations.clone(),
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(configuration::desired(&spec, ca_pem)),
        )
        .await
        .map_err(kube_err("applying the ValidatingWebhookConfiguration"))?;
        return Ok(());
    }
    let current = api
        .get(name)
        .await
        .map_err(kube_err("reading the ValidatingWebhookConfiguration"))?;
    let current = serde_json::to_value(&current).unwrap_or_default();
    if let Some(patch) = configuration::ca_bundle_patch(&current, ca_pem) {
        api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_err("patching the caBundle"))?;
        tracing::info!(configuration = %name, "wrote the CA into caBundle");
    }
    Ok(())
}

/// A sync round now, then one every `options.sync_interval`, forever (abort
/// the task when serving ends).
pub(super) async fn keep_in_sync(client: Client, options: Options, serving: Arc<Serving>) {
    loop {
        sync_round(&client, &options, &serving).await;
        tokio::time::sleep(options.sync_interval).await;
    }
}

/// One round of keeping the CA Secret and the configuration in line.
async fn sync_round(client: &Client, options: &Options, serving: &Serving) {
    // The Secret is the truth: adopt a replaced CA, re-create a deleted one.
    let (ns, name) = &options.ca_secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => match ca_from_secret(&secret, &format!("{ns}/{name}")) {
            Ok(stored) if stored.cert_pem != serving.ca_pem() => {
                *serving.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(stored);
                match serving.renew() {
                    Ok(_) => tracing::info!("adopted the CA of the webhook CA Secret"),
                    Err(e) => tracing::warn!(error = %e, "could not sign with the new CA"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the webhook CA Secret is unusable; keeping the CA in memory")
            }
        },
        Ok(None) => {
            let ca = serving.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
            match secrets
                .create(&PostParams::default(), &ca_secret(name, &ca))
                .await
            {
                Ok(_) => tracing::info!("re-created the deleted webhook CA Secret"),
                Err(e) => {
                    tracing::warn!(error = %short_error(&e), "could not re-create the webhook CA Secret")
                }
            }
        }
        Err(e) => tracing::warn!(error = %short_error(&e), "could not read the webhook CA Secret"),
    }
    let leads = options
        .leading
        .as_ref()
        .is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire));
    if options.inject_ca
        && leads
        && let Err(e) = sync_configuration(client, options, &serving.ca_pem()).await
    {
        tracing::warn!(error = %e, "could not update the ValidatingWebhookConfiguration; retrying");
    }
}
