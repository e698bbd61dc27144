//! The TokenPolicy reconciler: fetch the policy, its signing-key Secret and
//! JWKS ConfigMap → decide ([`plan`], over [`crate::token::schedule`]) →
//! write the Secret, then status, then the JWKS ConfigMap → Events → requeue
//! at the next deadline.
//!
//! Write order is what keeps every token verifiable (see the schedule's
//! module comment): a private key reaches the Secret before status lists it
//! (a crash in between leaves a key that the next reconcile adopts), and a
//! key leaves the Secret before it leaves status, only once every token it
//! signed has expired.

use super::Context;
use super::apply::{apply_object, apply_status, owned_metadata, publish};
use crate::conditions::{self, Phase};
use crate::crd::{TokenPolicy, TokenPolicyStatus};
use crate::error::{Error, KubeResultExt, Result};
use crate::meta::{JWKS_DATA_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TOKEN_POLICY_LABEL};
use crate::time::whole_second;
use crate::token::keys;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod plan;

pub use crate::meta::PEM_SUFFIX;
pub use crate::token::jwks::jwks_json;
pub use plan::{ISSUER_CONFLICT, PrivateKeys, read_private_keys};

/// Reconciles one TokenPolicy: fetch → [`plan::plan`] → apply → status.
/// Idempotent: a resync with nothing due makes no write.
#[tracing::instrument(skip_all, fields(namespace = policy.namespace(), name = policy.name_any()))]
pub async fn reconcile(policy: Arc<TokenPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let Some((namespace, policy)) = super::apply::fetch_fresh(&*policy, &ctx.client).await? else {
        return Ok(Action::await_change());
    };
    let policies: Api<TokenPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret_name = policy.signing_secret_name();
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .during("reading the signing-key Secret")?;
    let config_map_name = policy.jwks_config_map_name();
    let config_map = config_maps
        .get_opt(&config_map_name)
        .await
        .during("reading the JWKS ConfigMap")?;
    let now = whole_second(ctx.clock.now());
    let conflicts = ctx.issuer_conflicts(&policy);

    // Plan.
    let observed = plan::Observed {
        policy: &policy,
        secret: secret.as_ref(),
        jwks_in_config_map: config_map
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(JWKS_DATA_KEY))
            .map(String::as_str),
        issuer_conflicts: &conflicts,
        issuer_base_url: &ctx.issuer_base_url,
        now,
    };
    let mut generated = false;
    let plan = plan::plan(&observed, |algorithm| {
        generated = true;
        keys::generate(algorithm)
    })
    .map_err(|e| Error::SigningKey(e.to_string()))?;

    // Apply, in the order that keeps every token verifiable.
    if let Some(data) = plan.secret_data {
        let secret = Secret {
            metadata: owned_metadata(&policy, &secret_name, labels(&policy)),
            type_: Some("Opaque".into()),
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Default::default()
        };
        apply_object(&secrets, &secret_name, &secret, "applying the signing-key Secret").await?;
    }
    let policy = write_status(&policies, &policy, plan.status, &plan.phase, now).await?;
    if generated {
        // Counted once status (which lists the key) is written.
        ctx.metrics.signing_key_generated();
    }
    if let Some(jwks) = plan.jwks {
        let config_map = ConfigMap {
            metadata: owned_metadata(&policy, &config_map_name, labels(&policy)),
            data: Some(BTreeMap::from([(JWKS_DATA_KEY.to_owned(), jwks)])),
            ..Default::default()
        };
        apply_object(
            &config_maps,
            &config_map_name,
            &config_map,
            "applying the JWKS ConfigMap",
        )
        .await?;
    }
    for note in plan.events {
        publish(&ctx, &policy.object_ref(&()), note).await;
    }
    Ok(Action::requeue(plan.requeue))
}

fn labels(policy: &TokenPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (TOKEN_POLICY_LABEL.to_owned(), policy.name_any()),
    ])
}

/// Writes `status` with `phase` unless the object already has exactly that.
pub(super) async fn write_status(
    policies: &Api<TokenPolicy>,
    policy: &TokenPolicy,
    mut status: TokenPolicyStatus,
    phase: &Phase,
    now: Timestamp,
) -> Result<TokenPolicy> {
    // The auth server's revoked sessions are its own (a merge patch): never
    // in the controller's apply, so the apply neither owns nor removes them.
    status = status.without_server_fields();
    status.observed_generation = policy.metadata.generation;
    conditions::apply_phase(&mut status.conditions, phase, policy.metadata.generation, now);
    let current = policy
        .status
        .clone()
        .map(TokenPolicyStatus::without_server_fields);
    if current.as_ref() == Some(&status) {
        return Ok(policy.clone());
    }
    apply_status(
        policies,
        &policy.name_any(),
        &status,
        "writing the TokenPolicy status",
    )
    .await
}
