//! Keeping the CA Secret and the ValidatingWebhookConfiguration in line,
//! every sync interval: the Secret is the truth (a replaced CA is adopted, a
//! deleted one re-created), and the leader writes the configuration (the
//! whole object out of cluster, only `caBundle` in cluster).

use super::{FIELD_MANAGER, Options, WebhookError, configuration, kube_err};
use crate::tls::signed::Signed;
use kube::api::{Patch, PatchParams};
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
pub(super) async fn keep_in_sync(client: Client, options: Options, serving: Arc<Signed>) {
    loop {
        sync_round(&client, &options, &serving).await;
        tokio::time::sleep(options.sync_interval).await;
    }
}

/// One round of keeping the CA Secret and the configuration in line.
async fn sync_round(client: &Client, options: &Options, serving: &Signed) {
    // The Secret is the truth: adopt a replaced CA, re-create a deleted one.
    crate::tls::signed::sync_ca_secret(client, &options.ca_secret, serving).await;
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
