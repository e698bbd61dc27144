//! The TokenPolicy reconciler: fetch the policy and its signing-key Secret →
//! decide ([`crate::token::schedule`]) → write the Secret, then status, then
//! the JWKS ConfigMap → requeue at the next deadline.
//!
//! Write order is what keeps every token verifiable (see the schedule's
//! module comment): a private key reaches the Secret before status lists it
//! (a crash in between leaves a key that the next reconcile adopts), and a
//! key leaves the Secret before it leaves status, only once every token it
//! signed has expired.

use super::plan::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, Note, rfc3339};
use super::schedule::{ROTATE_ANNOTATION, whole_second};
use super::{Context, FIELD_MANAGER, RESYNC};
use crate::conditions::{self, Phase};
use crate::crd::{SigningAlgorithm, TokenPolicy, TokenPolicyStatus};
use crate::error::{Error, KubeResultExt, Result};
use crate::token::keys;
use crate::token::schedule::{self, GenerateCause, PrivateKeyInfo, Settings};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::meta::{JWKS_DATA_KEY, PEM_SUFFIX, TOKEN_POLICY_LABEL};
pub use crate::token::jwks::jwks_json;

/// Reason of `Stalled=True` while another policy claims the same issuer path.
pub const ISSUER_CONFLICT: &str = "IssuerConflict";
/// How often a policy in conflict looks again (a deletion on the other side
/// may reach the store after the event that woke this one).
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// kid → (PKCS#8 PEM, what it is).
pub type PrivateKeys = BTreeMap<String, (Vec<u8>, PrivateKeyInfo)>;

/// Reads the Secret's private keys: kid → (PEM, algorithm, public JWK).
/// Entries that are not a readable key are skipped (and reported).
pub fn read_private_keys(
    secret: Option<&Secret>,
    listed: &BTreeMap<String, SigningAlgorithm>,
) -> (PrivateKeys, Vec<String>) {
    let mut keys = BTreeMap::new();
    let mut unreadable = Vec::new();
    let data = secret.and_then(|s| s.data.as_ref());
    for (name, value) in data.into_iter().flatten() {
        let Some(kid) = name.strip_suffix(PEM_SUFFIX) else {
            continue;
        };
        // The algorithm status lists, else whichever reads the key.
        let candidates: Vec<SigningAlgorithm> = match listed.get(kid) {
            Some(alg) => vec![*alg],
            None => vec![
                SigningAlgorithm::ES256,
                SigningAlgorithm::EdDSA,
                SigningAlgorithm::RS256,
            ],
        };
        let found = candidates
            .into_iter()
            .find_map(|alg| keys::public_jwk(kid, alg, &value.0).ok().map(|jwk| (alg, jwk)));
        match found {
            Some((algorithm, public_jwk)) => {
                keys.insert(
                    kid.to_owned(),
                    (
                        value.0.clone(),
                        PrivateKeyInfo {
                            algorithm,
                            public_jwk,
                        },
                    ),
                );
            }
            None => unreadable.push(kid.to_owned()),
        }
    }
    (keys, unreadable)
}

/// Reconciles one TokenPolicy. Idempotent: a resync with nothing due makes no write.
#[tracing::instrument(skip_all, fields(namespace = policy.namespace(), name = policy.name_any()))]
pub async fn reconcile(policy: Arc<TokenPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = policy.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = policy.name_any();
    let policies: Api<TokenPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);

    let Some(policy) = policies.get_opt(&name).await.during("reading the TokenPolicy")? else {
        return Ok(Action::await_change());
    };
    if policy.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = whole_second(ctx.clock.now());
    let status = policy.status.clone().unwrap_or_default();
    let secret_name = policy.signing_secret_name();
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .during("reading the signing-key Secret")?;
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let owned_by_us = |meta: &ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    if let Some(s) = &secret
        && !owned_by_us(&s.metadata)
    {
        let phase = Phase::stalled(
            "SecretConflict",
            format!(
                "Secret {secret_name} exists and is not owned by this TokenPolicy; delete or rename it, \
                 or give the TokenPolicy another name"
            ),
        );
        write_status(&policies, &policy, status, &phase, now).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let settings = match Settings::of(&policy.spec) {
        Ok(s) => s,
        Err(err) => {
            let phase = Phase::stalled("InvalidSpec", err.to_string());
            write_status(&policies, &policy, status, &phase, now).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };

    // An issuer path is one policy's: while another claims it, neither is
    // served (the server refuses both) and both say so.
    let conflicts = ctx.issuer_conflicts(&policy);
    if !conflicts.is_empty() {
        let phase = Phase::stalled(
            ISSUER_CONFLICT,
            format!(
                "the issuer {} has the same path as the issuer of TokenPolicy {}; latchkey serves \
                 discovery, JWKS and tokens by that path, so it serves neither policy until only one \
                 claims it: delete one of them (spec.issuer cannot change; re-create it with an issuer of its own)",
                policy.issuer(&ctx.issuer_base_url),
                conflicts.join(", ")
            ),
        );
        write_status(&policies, &policy, status, &phase, now).await?;
        return Ok(Action::requeue(CONFLICT_RECHECK));
    }

    let listed: BTreeMap<String, SigningAlgorithm> =
        status.keys.iter().map(|k| (k.kid.clone(), k.algorithm)).collect();
    let (private, unreadable) = read_private_keys(secret.as_ref(), &listed);
    let infos: BTreeMap<String, PrivateKeyInfo> = private
        .iter()
        .map(|(k, (_, info))| (k.clone(), info.clone()))
        .collect();
    let request = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotate_requested = request.is_some() && request != status.last_rotate_request;
    let plan = schedule::plan(&status.keys, &infos, &settings, rotate_requested, now);

    let mut keys_after = plan.keys.clone();
    let mut pems: BTreeMap<String, Vec<u8>> = private
        .into_iter()
        .filter(|(kid, _)| !plan.removed.contains(kid))
        .map(|(kid, (pem, _))| (kid, pem))
        .collect();
    let mut notes = Vec::new();
    if let Some(new) = &plan.generate {
        let generated = keys::generate(new.algorithm).map_err(|e| Error::Server(e.to_string()))?;
        let jwk = keys::public_jwk(&generated.kid, new.algorithm, generated.pem.as_bytes())
            .map_err(|e| Error::Server(e.to_string()))?;
        schedule::add_key(&mut keys_after, new, generated.kid.clone(), jwk, &settings);
        let why = match new.cause {
            GenerateCause::First => "first signing key",
            GenerateCause::Scheduled => "scheduled rotation",
            GenerateCause::Requested => "rotation requested by the latchkey.dev/rotate annotation",
            GenerateCause::Algorithm => "spec.algorithm changed",
            GenerateCause::Lost => "the signing key's private key was missing",
        };
        notes.push(Note {
            warning: new.cause == GenerateCause::Lost,
            reason: "SigningKeyPublished",
            message: format!(
                "published {} key {} ({why}); it signs from {}",
                new.algorithm.as_str(),
                generated.kid,
                rfc3339(new.active_from)
            ),
        });
        pems.insert(generated.kid.clone(), generated.pem.into_bytes());
    }
    for kid in &plan.adopted {
        notes.push(Note {
            warning: false,
            reason: "SigningKeyPublished",
            message: format!("published key {kid}, found in the Secret but not yet in status"),
        });
    }
    for kid in &plan.lost {
        notes.push(Note {
            warning: true,
            reason: "SigningKeyLost",
            message: format!(
                "the private key of {kid} is missing from Secret {secret_name}; it stops signing now \
                 and stays published until its tokens expire"
            ),
        });
    }
    for kid in &plan.removed {
        notes.push(Note {
            warning: false,
            reason: "SigningKeyRemoved",
            message: format!("removed key {kid}: every token it signed has expired"),
        });
    }

    // 1. The Secret: private keys first.
    let have: BTreeMap<String, Vec<u8>> = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let want: BTreeMap<String, Vec<u8>> = pems
        .iter()
        .map(|(kid, pem)| (format!("{kid}{PEM_SUFFIX}"), pem.clone()))
        .collect();
    if secret.is_none() || have != want {
        apply_secret(&secrets, &policy, &secret_name, want).await?;
    }

    // 2. Status: publishes new keys, names the signing key.
    let mut next = status.clone();
    next.keys = keys_after;
    next.issuer = Some(policy.issuer(&ctx.issuer_base_url));
    next.signing_secret_name = Some(secret_name.clone());
    next.jwks_config_map_name = Some(policy.jwks_config_map_name());
    let signing = schedule::signing_key(&next.keys, now);
    next.active_key_id = signing.map(|k| k.kid.clone());
    next.algorithm = signing.map(|k| k.algorithm);
    next.last_rotated_at = next
        .keys
        .iter()
        .map(|k| k.published_at.clone())
        .max_by_key(|t| t.0);
    next.next_rotation_at = schedule::next_rotation_at(&next.keys, &settings, now).map(Time);
    if plan.answers_request {
        next.last_rotate_request = request.clone();
    }
    let phase = match (signing, unreadable.is_empty()) {
        (Some(k), true) => Phase::ready(
            "KeysPublished",
            format!("key {} signs; {} key(s) published", k.kid, next.keys.len()),
        ),
        (Some(_), false) => Phase::ready(
            "UnreadableKeysIgnored",
            format!(
                "Secret {secret_name} holds entries that are not readable private keys ({}); they are ignored",
                unreadable.join(", ")
            ),
        ),
        (None, _) => Phase::reconciling("WaitingForKey", "no key signs yet"),
    };
    let policy = write_status(&policies, &policy, next.clone(), &phase, now).await?;

    // 3. The JWKS ConfigMap, for consumers who read it rather than the HTTP endpoint.
    let jwks = jwks_json(&next);
    let cm_name = policy.jwks_config_map_name();
    let current = config_maps
        .get_opt(&cm_name)
        .await
        .during("reading the JWKS ConfigMap")?;
    let current_jwks = current
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(JWKS_DATA_KEY));
    if current_jwks != Some(&jwks) {
        apply_config_map(&config_maps, &policy, &cm_name, jwks).await?;
    }
    for note in notes {
        publish(&ctx, &policy, note).await;
    }
    let deadline = schedule::next_deadline(&next.keys, &settings, now);
    Ok(Action::requeue(super::schedule::requeue_after(deadline, now)))
}

fn labels(policy: &TokenPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (TOKEN_POLICY_LABEL.to_owned(), policy.name_any()),
    ])
}

/// Metadata of an object the policy owns: its name, the policy's labels and
/// a controller owner reference (garbage-collected with the policy).
fn owned_metadata(policy: &TokenPolicy, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: policy.metadata.namespace.clone(),
        labels: Some(labels(policy)),
        owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Server-Side Apply of a core/v1 object under [`FIELD_MANAGER`].
async fn apply_core<K>(api: &Api<K>, name: &str, object: &K, action: &'static str) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + serde::Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let mut body = serde_json::to_value(object).expect("a core object serializes");
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .during(action)?;
    Ok(())
}

async fn apply_secret(
    secrets: &Api<Secret>,
    policy: &TokenPolicy,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let secret = Secret {
        metadata: owned_metadata(policy, name),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    apply_core(secrets, name, &secret, "applying the signing-key Secret").await
}

async fn apply_config_map(
    config_maps: &Api<ConfigMap>,
    policy: &TokenPolicy,
    name: &str,
    jwks: String,
) -> Result<()> {
    let cm = ConfigMap {
        metadata: owned_metadata(policy, name),
        data: Some(BTreeMap::from([(JWKS_DATA_KEY.to_owned(), jwks)])),
        ..Default::default()
    };
    apply_core(config_maps, name, &cm, "applying the JWKS ConfigMap").await
}

/// Writes `status` with `phase` unless the object already has exactly that.
async fn write_status(
    policies: &Api<TokenPolicy>,
    policy: &TokenPolicy,
    mut status: TokenPolicyStatus,
    phase: &Phase,
    now: Timestamp,
) -> Result<TokenPolicy> {
    status.observed_generation = policy.metadata.generation;
    conditions::apply_phase(&mut status.conditions, phase, policy.metadata.generation, now);
    if policy.status.as_ref() == Some(&status) {
        return Ok(policy.clone());
    }
    let body = serde_json::json!({
        "apiVersion": TokenPolicy::api_version(&()),
        "kind": TokenPolicy::kind(&()),
        "status": status,
    });
    policies
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .during("writing the TokenPolicy status")
}

/// Records a failed reconcile in status, best effort (Reconciling=True,
/// reason `RetryingAfterError`, with the retry delay), as for ApiKeys.
pub async fn record_failure(policy: &TokenPolicy, err: &Error, delay: Duration, ctx: &Context) {
    let (Some(ns), Some(name)) = (
        policy.metadata.namespace.as_deref(),
        policy.metadata.name.as_deref(),
    ) else {
        return;
    };
    let policies: Api<TokenPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let Ok(Some(fresh)) = policies.get_opt(name).await else {
        return;
    };
    let now = whole_second(ctx.clock.now());
    let phase = Phase::reconciling(
        "RetryingAfterError",
        format!(
            "{}; retrying in {}s",
            super::failure_summary(err),
            delay.as_secs()
        ),
    );
    let status = fresh.status.clone().unwrap_or_default();
    if let Err(err) = write_status(&policies, &fresh, status, &phase, now).await {
        tracing::debug!(error = %err, "could not record the failure in status");
    }
}

async fn publish(ctx: &Context, policy: &TokenPolicy, note: Note) {
    super::api_key::publish_to(ctx, &policy.object_ref(&()), note).await
}
