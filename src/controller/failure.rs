//! A failed reconcile, for either kind: what status says about it
//! (`Reconciling=True`, reason `RetryingAfterError`, what failed and when the
//! next try is; never a key, a hash or the API server's full message).

use super::Context;
use super::apply::apply_status;
use crate::conditions::{self, Phase};
use crate::crd::{ApiKey, ApiKeyStatus, TokenPolicy, TokenPolicyStatus};
use crate::error::Error;
use crate::time::{rfc3339, whole_second};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

/// A kind latchkey reconciles, as far as recording a failure goes.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + Debug + DeserializeOwned
{
    type Status: Serialize + Clone + PartialEq + Default;
    /// The kind's name in errors and messages.
    const KIND: &'static str;
    /// What the fresh read is called in errors.
    const READ_ACTION: &'static str;
    /// What the status write is called in errors.
    const STATUS_ACTION: &'static str;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    fn observed_generation(status: &mut Self::Status) -> &mut Option<i64>;
    /// Drops the fields that another writer owns (the controller's apply
    /// must neither compare nor send them).
    fn without_foreign_fields(status: Self::Status) -> Self::Status {
        status
    }
}

impl Reconciled for ApiKey {
    type Status = ApiKeyStatus;
    const KIND: &'static str = "ApiKey";
    const READ_ACTION: &'static str = "reading the ApiKey";
    const STATUS_ACTION: &'static str = "writing the ApiKey status";
    fn status(&self) -> Option<&ApiKeyStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &mut ApiKeyStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn observed_generation(status: &mut ApiKeyStatus) -> &mut Option<i64> {
        &mut status.observed_generation
    }
    /// `lastUsedAt`, `keyUsage` and `retiredKeyPresented` are the auth server's.
    fn without_foreign_fields(status: ApiKeyStatus) -> ApiKeyStatus {
        status.without_server_fields()
    }
}

impl Reconciled for TokenPolicy {
    type Status = TokenPolicyStatus;
    const KIND: &'static str = "TokenPolicy";
    const READ_ACTION: &'static str = "reading the TokenPolicy";
    const STATUS_ACTION: &'static str = "writing the TokenPolicy status";
    fn status(&self) -> Option<&TokenPolicyStatus> {
        self.status.as_ref()
    }
    fn conditions(status: &mut TokenPolicyStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn observed_generation(status: &mut TokenPolicyStatus) -> &mut Option<i64> {
        &mut status.observed_generation
    }
    fn without_foreign_fields(status: TokenPolicyStatus) -> TokenPolicyStatus {
        status.without_server_fields()
    }
}

/// What status says about a failed reconcile: what failed, never the API
/// server's full message (it could echo a request body).
pub fn failure_summary(err: &Error) -> String {
    match err {
        Error::Kube {
            action,
            source: kube::Error::Api(status),
        } => format!(
            "Kubernetes API call failed while {action}: {} {}",
            status.code, status.reason
        ),
        Error::Kube { action, .. } => format!("Kubernetes API call failed while {action}"),
        other => other.to_string(),
    }
}

/// Records a failed reconcile in status, best effort. Re-reads the object
/// and writes its whole status back (Server-Side Apply would drop the fields
/// left out), changing only the conditions.
pub async fn record_failure<K: Reconciled>(object: &K, err: &Error, delay: Duration, ctx: &Context) {
    let (Some(ns), Some(name)) = (object.meta().namespace.as_deref(), object.meta().name.as_deref()) else {
        return;
    };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Ok(Some(fresh)) = api.get_opt(name).await else {
        return;
    };
    let now = whole_second(ctx.clock.now());
    let retry_at = now
        .checked_add(k8s_openapi::jiff::SignedDuration::try_from(delay).unwrap_or_default())
        .unwrap_or(now);
    let phase = Phase::reconciling(
        "RetryingAfterError",
        format!(
            "{}; retrying in {}s (at {})",
            failure_summary(err),
            delay.as_secs(),
            rfc3339(retry_at)
        ),
    );
    let before = fresh.status().cloned().map(K::without_foreign_fields);
    let status = failed_status::<K>(before.clone(), &phase, fresh.meta().generation, now);
    if before.as_ref() == Some(&status) {
        return;
    }
    if let Err(err) = apply_status(&api, name, &status, K::STATUS_ACTION).await {
        tracing::debug!(error = %err, "could not record the failure in status");
    }
}

/// The status that records `phase` (a failure) for `generation`: the
/// conditions, and `observedGeneration` with them. The controller did observe
/// that generation, it failed to carry it out: without this a kind whose
/// first reconcile fails (a TokenPolicy whose signing-key Secret is refused)
/// would have no `observedGeneration`, and Argo CD's health script would say
/// "Waiting for latchkey to observe generation 1" instead of the error.
fn failed_status<K: Reconciled>(
    before: Option<K::Status>,
    phase: &Phase,
    generation: Option<i64>,
    now: k8s_openapi::jiff::Timestamp,
) -> K::Status {
    let mut status = before.unwrap_or_default();
    conditions::apply_phase(K::conditions(&mut status), phase, generation, now);
    *K::observed_generation(&mut status) = generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    #[test]
    fn a_failure_records_the_generation_it_failed_to_carry_out() {
        let phase = Phase::reconciling("RetryingAfterError", "x failed; retrying in 1s");
        // A first reconcile that failed: no status before.
        let status = failed_status::<TokenPolicy>(None, &phase, Some(1), t(0));
        assert_eq!(status.observed_generation, Some(1));
        let reconciling = conditions::find(&status.conditions, conditions::RECONCILING).unwrap();
        assert_eq!(reconciling.status, "True");
        assert_eq!(reconciling.reason, "RetryingAfterError");
        assert_eq!(reconciling.observed_generation, Some(1));
        // A later generation: the rest of status stays as it was.
        let before = ApiKeyStatus {
            observed_generation: Some(1),
            secret_name: Some("svc".into()),
            ..Default::default()
        };
        let status = failed_status::<ApiKey>(Some(before), &phase, Some(2), t(0));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.secret_name.as_deref(), Some("svc"));
    }
}
