//! The ApiKey reconciler: fetch → decide ([`plan`], [`schedule`]) → apply →
//! status, and requeue at the next deadline.

use super::apply::apply_object;
use super::failure::Reconciled;
use super::metrics::Delivered;
use super::plan::{self, DeliveryCause, PlannedEvent, SecretStamp};
use super::rotation::{self, Schedule};
use super::{Context, FIELD_MANAGER, RESYNC};
use crate::conditions::Phase;
use crate::crd::{ApiKey, ApiKeyStatus, TokenPolicy};
use crate::error::{KubeResultExt, Result};
use crate::key::ApiKeyValue;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;

/// Reconciles one ApiKey. Idempotent: when the Secret and status already
/// match, it makes no write at all.
///
/// It decides from the watch cache (the ApiKey, and its Secret's metadata)
/// and its first status write carries the cached `resourceVersion`: a cache
/// that has not yet seen a newer status (our own last write, or anyone's)
/// gets `409 Conflict` and the reconcile starts again once from fresh reads.
/// The Secret's data is read when the metadata alone does not show that it
/// holds `currentKey` ([`plan::holds_current_key`]).
#[tracing::instrument(skip_all, fields(namespace = api_key.namespace(), name = api_key.name_any()))]
pub async fn reconcile(api_key: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action> {
    match reconcile_from(&api_key, &ctx, Read::Cache).await {
        Err(err) if err.is_conflict() => {
            tracing::debug!("the cached ApiKey was stale; reconciling again from fresh reads");
            reconcile_from(&api_key, &ctx, Read::Fresh).await
        }
        other => other,
    }
}

/// Where a reconcile reads the ApiKey and its Secret's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The watch caches (writes guarded by the cached `resourceVersion`).
    Cache,
    /// GETs from the API server.
    Fresh,
}

async fn reconcile_from(cached: &Arc<ApiKey>, ctx: &Context, read: Read) -> Result<Action> {
    let (namespace, api_key) = match read {
        Read::Fresh => match super::apply::fetch_fresh(&**cached, &ctx.client).await? {
            Some(fresh) => fresh,
            None => return Ok(Action::await_change()),
        },
        Read::Cache => {
            if cached.metadata.deletion_timestamp.is_some() {
                return Ok(Action::await_change());
            }
            let namespace = cached.namespace().ok_or(crate::error::Error::MissingObjectKey {
                kind: ApiKey::KIND,
                field: "namespace",
            })?;
            (namespace, (**cached).clone())
        }
    };
    let api_keys: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret_name = api_key.secret_name();
    let cached_secret = match read {
        Read::Cache => ctx.secrets.metadata(&namespace, &secret_name).await,
        Read::Fresh => None,
    };
    let settled =
        cached_secret.is_some_and(|m| plan::holds_current_key(&api_key, &m.metadata, FIELD_MANAGER));
    let (observation, secret_version) = if settled {
        (plan::SecretObservation::HoldsCurrent, None)
    } else {
        let secret = secrets.get_opt(&secret_name).await.during("reading the Secret")?;
        let version = secret.as_ref().and_then(|s| s.metadata.resource_version.clone());
        (
            plan::observe_secret(&api_key, secret.as_ref(), FIELD_MANAGER),
            version,
        )
    };
    let missing_policy = match &api_key.spec.token_policy_ref {
        Some(r) => Api::<TokenPolicy>::namespaced(ctx.client.clone(), &namespace)
            .get_metadata_opt(&r.name)
            .await
            .during("reading the TokenPolicy")?
            .is_none()
            .then(|| r.name.clone()),
        None => None,
    };
    let now = rotation::whole_second(ctx.clock.now());
    let writer = ApiKeyWrites {
        ctx,
        namespace: &namespace,
        api_keys: &api_keys,
        secrets: &secrets,
        missing_policy,
        now,
        guard: std::sync::Mutex::new(api_key.metadata.resource_version.clone()),
    };
    let schedule = match Schedule::of(&api_key.spec) {
        Ok(s) => s,
        Err(err) => {
            // The CRD's pattern refuses these; an older CRD might not have.
            let status = api_key.status.clone().unwrap_or_default();
            let phase = Phase::stalled("InvalidRotation", err.to_string());
            let status = plan::complete_status(&api_key, status, &Schedule::default(), &phase, now);
            writer.write_status(&api_key, status).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let plan = plan::plan(&api_key, &observation, &schedule, now);

    if let Some((key, stamp)) = &plan.refresh_secret {
        // Decided from the Secret just read: refused if it changed since.
        writer
            .apply_secret(&api_key, key, *stamp, secret_version.as_deref())
            .await?;
    }
    let (api_key, status) = match &plan.deliver {
        None => {
            let api_key = writer.write_status(&api_key, plan.status.clone()).await?;
            if let Some(note) = plan.event {
                writer.publish(&api_key, note).await;
            }
            for note in plan.in_use {
                writer.publish(&api_key, note).await;
            }
            (api_key, plan.status)
        }
        Some(cause) => {
            // The settled status goes out with write 1 (and the Event of a
            // promotion it contains after it).
            let (api_key, status) = writer
                .deliver(api_key, &plan.status, cause, &schedule, now)
                .await?;
            if let Some(note) = plan.event {
                writer.publish(&api_key, note).await;
            }
            for note in plan.in_use {
                writer.publish(&api_key, note).await;
            }
            (api_key, status)
        }
    };
    let deadline = rotation::next_deadline(&api_key, &status, &schedule, now);
    // While a replaced key may still warn, look at the flushed usage again.
    let deadline = match plan::next_check(&status, &schedule, now) {
        Some(check) => Some(deadline.map_or(check, |d| d.min(check))),
        None => deadline,
    };
    Ok(Action::requeue(rotation::requeue_after(deadline, now)))
}

/// The writes of one reconcile: Server-Side Apply under [`FIELD_MANAGER`].
struct ApiKeyWrites<'a> {
    ctx: &'a Context,
    namespace: &'a str,
    api_keys: &'a Api<ApiKey>,
    secrets: &'a Api<Secret>,
    /// The name in `spec.tokenPolicyRef` when no such TokenPolicy exists.
    missing_policy: Option<String>,
    now: Timestamp,
    /// The `resourceVersion` the reconcile decided from, which its first
    /// status write carries (taken by it; later writes follow our own).
    guard: std::sync::Mutex<Option<String>>,
}

impl ApiKeyWrites<'_> {
    /// Delivers a new key in three writes (see [`plan`]); returns the ApiKey
    /// and the status after the last one.
    async fn deliver(
        &self,
        api_key: ApiKey,
        settled: &ApiKeyStatus,
        cause: &DeliveryCause,
        schedule: &Schedule,
        now: Timestamp,
    ) -> Result<(ApiKey, ApiKeyStatus)> {
        let key = ApiKeyValue::generate();
        let record = plan::record_for(&key, now);
        // 1. status knows the key before the Secret holds it.
        let pending = plan::pending_status(&api_key, settled, record, cause);
        let api_key = self.write_status(&api_key, pending.clone()).await?;
        // 2. the Secret receives it.
        let stamp = plan::pending_stamp(&pending).expect("a pending key has a stamp");
        self.apply_secret(&api_key, &key, stamp, None).await?;
        // 3. it becomes current; the old current key enters its grace period.
        let delivered = plan::delivered_status(&api_key, &pending, schedule, now);
        let api_key = self.write_status(&api_key, delivered.clone()).await?;
        let note = plan::delivery_event(cause, &api_key, &pending, &delivered);
        tracing::info!(
            key_id = %key.key_id(),
            revision = stamp.revision,
            reason = note.reason,
            "delivered a new key"
        );
        self.publish(&api_key, note).await;
        self.ctx.metrics.delivered(delivered_reason(cause));
        Ok((api_key, delivered))
    }

    /// Applies the Secret with `key` (refused when it is no longer at
    /// `resource_version`, if given); its watch event triggers nothing.
    async fn apply_secret(
        &self,
        api_key: &ApiKey,
        key: &ApiKeyValue,
        stamp: SecretStamp,
        resource_version: Option<&str>,
    ) -> Result<()> {
        let mut secret = plan::desired_secret(api_key, key, stamp);
        secret.metadata.resource_version = resource_version.map(str::to_owned);
        let name = api_key.secret_name();
        let cache = &self.ctx.secrets;
        cache.expect(self.namespace, &name, key.key_id(), stamp.revision);
        let applied = apply_object(self.secrets, &name, &secret, "applying the Secret").await;
        if applied.is_err() {
            cache.forget(self.namespace, &name);
        }
        applied.map(|_| ())
    }

    /// Writes `status` unless the object already has it (the usage fields,
    /// which the auth server writes, are left out of both the comparison and
    /// the body); returns the object as it is after the write.
    async fn write_status(&self, api_key: &ApiKey, status: ApiKeyStatus) -> Result<ApiKey> {
        let mut status = status.without_server_fields();
        if let Some(policy) = &self.missing_policy {
            super::policy_ref::note_missing_policy(
                &mut status,
                policy,
                api_key.metadata.generation,
                self.now,
            );
        }
        if same_status(api_key.status.as_ref(), &status) {
            return Ok(api_key.clone());
        }
        let guard = self.guard.lock().expect("guard lock").take();
        apply_status(self.api_keys, &api_key.name_any(), &status, guard.as_deref()).await
    }

    /// Events are best effort: a failure to record one is logged, not retried.
    async fn publish(&self, api_key: &ApiKey, note: PlannedEvent) {
        publish(self.ctx, api_key, note).await
    }
}

/// The `reason` a delivery is counted under in the controller's metrics.
fn delivered_reason(cause: &DeliveryCause) -> Delivered {
    match cause {
        DeliveryCause::Issue(plan::IssueReason::FirstKey) => Delivered::First,
        DeliveryCause::Issue(plan::IssueReason::SecretMissing | plan::IssueReason::KeyMismatch) => {
            Delivered::Repair
        }
        DeliveryCause::Rotation(rotation::RotationCause::Scheduled) => Delivered::Scheduled,
        DeliveryCause::Rotation(rotation::RotationCause::Requested(_)) => Delivered::Requested,
    }
}

/// Whether `have` equals `want`, ignoring the auth server's usage fields.
fn same_status(have: Option<&ApiKeyStatus>, want: &ApiKeyStatus) -> bool {
    have.is_some_and(|have| have.clone().without_server_fields() == *want)
}

/// Server-Side Apply of the whole status (without `lastUsedAt`), refused
/// unless the ApiKey is at `resource_version` (when given).
async fn apply_status(
    api_keys: &Api<ApiKey>,
    name: &str,
    status: &ApiKeyStatus,
    resource_version: Option<&str>,
) -> Result<ApiKey> {
    let status = ApiKey::without_foreign_fields(status.clone());
    super::apply::apply_status_at(api_keys, name, &status, resource_version, ApiKey::STATUS_ACTION).await
}

async fn publish(ctx: &Context, api_key: &ApiKey, note: PlannedEvent) {
    super::apply::publish(ctx, &api_key.object_ref(&()), note).await
}
