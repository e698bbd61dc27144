//! The ApiKey reconciler: fetch → decide ([`plan`]) → apply → status.

use super::{Context, FIELD_MANAGER, RESYNC, plan};
use crate::conditions::{self, Phase};
use crate::crd::{ApiKey, ApiKeyStatus};
use crate::error::{Error, KubeResultExt, Result};
use crate::key::ApiKeyValue;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;

/// Reconciles one ApiKey. Idempotent: when the Secret and status already
/// match, it makes no write at all.
#[tracing::instrument(skip_all, fields(namespace = api_key.namespace(), name = api_key.name_any()))]
pub async fn reconcile(api_key: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = api_key.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let name = api_key.name_any();
    let api_keys: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    // Decide from fresh reads, never from the watch cache: a cache that has
    // not yet seen our last status write would mistake the key we just
    // delivered for a foreign one.
    let Some(api_key) = api_keys.get_opt(&name).await.during("reading the ApiKey")? else {
        return Ok(Action::await_change());
    };
    if api_key.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the Secret through its owner reference.
        return Ok(Action::await_change());
    }
    let secret = secrets
        .get_opt(&api_key.secret_name())
        .await
        .during("reading the Secret")?;
    let observation = plan::observe_secret(&api_key, secret.as_ref(), FIELD_MANAGER);
    let decision = plan::decide(api_key.status.as_ref(), &observation);
    let now = ctx.clock.now();
    let status = api_key.status.clone().unwrap_or_default();
    let writer = Writer {
        ctx: &ctx,
        api_keys: &api_keys,
        secrets: &secrets,
        api_key: &api_key,
    };

    match &decision {
        plan::KeyDecision::Keep {
            key,
            refresh_metadata,
        }
        | plan::KeyDecision::Promote {
            key,
            refresh_metadata,
        } => {
            if *refresh_metadata {
                writer.apply_secret(key).await?;
            }
            // Keep: the Secret holds currentKey; a pending key that never
            // reached it is dropped. Promote: it holds pendingKey, now current.
            let delivered = match decision {
                plan::KeyDecision::Promote { .. } => status.pending_key,
                _ => status.current_key,
            };
            let next = plan::next_status(&api_key, delivered, None, &plan::ready_phase(&api_key), now);
            writer.write_status(next).await?;
        }
        &plan::KeyDecision::Issue(reason) => {
            let key = ApiKeyValue::generate();
            let record = plan::record_for(&key, now);
            // 1. status knows the key before the Secret holds it.
            let issuing = Phase::reconciling(
                "IssuingKey",
                format!("writing key {} into Secret {}", record.id, api_key.secret_name()),
            );
            // The old current key is not in the Secret any more (it was
            // deleted or overwritten), so it is not carried over.
            let pending_status = plan::next_status(&api_key, None, Some(record.clone()), &issuing, now);
            let api_key = writer.write_status(pending_status).await?;
            // 2. the Secret receives it.
            let writer = Writer {
                api_key: &api_key,
                ..writer
            };
            writer.apply_secret(&key).await?;
            // 3. it becomes current.
            let done = plan::next_status(
                &api_key,
                Some(record.clone()),
                None,
                &plan::ready_phase(&api_key),
                now,
            );
            writer.write_status(done).await?;
            let (event_reason, note) = plan::issue_event(reason, &api_key, &record.id);
            let type_ = match reason {
                plan::IssueReason::FirstKey => EventType::Normal,
                plan::IssueReason::SecretMissing | plan::IssueReason::KeyMismatch => EventType::Warning,
            };
            writer.publish(type_, event_reason, note).await;
            tracing::info!(key_id = %record.id, reason = event_reason, "issued a key");
        }
        plan::KeyDecision::Conflict => {
            let phase = plan::conflict_phase(&api_key);
            let was_stalled = conditions::is_true(&status.conditions, conditions::STALLED);
            let next = plan::next_status(&api_key, status.current_key, status.pending_key, &phase, now);
            writer.write_status(next).await?;
            if !was_stalled && let Phase::Stalled { reason, message } = phase {
                writer.publish(EventType::Warning, &reason, message).await;
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// The writes of one reconcile, all Server-Side Apply under [`FIELD_MANAGER`].
struct Writer<'a> {
    ctx: &'a Context,
    api_keys: &'a Api<ApiKey>,
    secrets: &'a Api<Secret>,
    api_key: &'a ApiKey,
}

impl Writer<'_> {
    async fn apply_secret(&self, key: &ApiKeyValue) -> Result<()> {
        let secret = plan::desired_secret(self.api_key, key);
        let name = self.api_key.secret_name();
        let mut body = serde_json::to_value(&secret).expect("a Secret serializes");
        body["apiVersion"] = "v1".into();
        body["kind"] = "Secret".into();
        self.secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .during("applying the Secret")?;
        Ok(())
    }

    /// Writes `status` unless it equals what the object already has; returns
    /// the object as it is after the write.
    async fn write_status(&self, status: ApiKeyStatus) -> Result<ApiKey> {
        if self.api_key.status.as_ref() == Some(&status) {
            return Ok(self.api_key.clone());
        }
        let body = serde_json::json!({
            "apiVersion": ApiKey::api_version(&()),
            "kind": ApiKey::kind(&()),
            "status": status,
        });
        self.api_keys
            .patch_status(
                &self.api_key.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .during("writing the ApiKey status")
    }

    /// Events are best effort: a failure to record one is logged, not retried.
    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = self
            .ctx
            .recorder
            .publish(&event, &self.api_key.object_ref(&()))
            .await
        {
            tracing::warn!(error = %err, reason, "could not record an Event");
        }
    }
}
