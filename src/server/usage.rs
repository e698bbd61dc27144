//! `status.lastUsedAt`: when a key of an ApiKey was last accepted.
//!
//! Each request only stores the time in an atomic of its ApiKey's entry. Every
//! `--last-used-flush-seconds` (60 by default) a writer looks at each ApiKey
//! whose last use here is at least [`MIN_STEP`] newer than the `lastUsedAt`
//! the watch shows, and writes it with a JSON merge patch on the status
//! subresource that carries the `metadata.resourceVersion` the watch saw (an
//! optimistic lock; field manager `latchkey`, operation Update, so the
//! controller's Server-Side Apply of status neither owns nor removes it).
//!
//! With several server replicas each writes only a time newer than the one
//! stored, and a replica whose view is stale gets `409 Conflict` and skips the
//! round: `lastUsedAt` never goes backwards and is written about once a
//! minute per ApiKey at most, whatever the number of replicas.

use super::index::{Index, IndexedApiKey};
use crate::crd::ApiKey;
use crate::meta::FIELD_MANAGER;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A use is written only when it is this much newer than the stored one.
pub const MIN_STEP: i64 = 60;

/// The lastUsedAt to write for `owner`, if any.
pub fn due(owner: &IndexedApiKey, min_step: i64) -> Option<Timestamp> {
    let used = owner.usage.last_used.load(Ordering::Relaxed);
    if used == 0 {
        return None;
    }
    let newer = owner
        .status_last_used
        .is_none_or(|seen| used >= seen.as_second() + min_step);
    newer.then(|| Timestamp::from_second(used).ok()).flatten()
}

/// Writes due lastUsedAt values every `every` until the task is dropped.
pub async fn run(client: Client, index: Arc<Index>, every: Duration) {
    // A flush interval below a minute (tests) lowers the step with it.
    let min_step = MIN_STEP.min(every.as_secs().max(1) as i64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for owner in index.owners() {
            let Some(at) = due(&owner, min_step) else {
                continue;
            };
            let api: Api<ApiKey> = Api::namespaced(client.clone(), owner.namespace());
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": owner.resource_version},
                "status": {"lastUsedAt": at.to_string()},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api
                .patch_status(owner.name(), &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(
                        namespace = owner.namespace(),
                        name = owner.name(),
                        "recorded lastUsedAt"
                    )
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    // Changed (or deleted) since the watch saw it: the next
                    // round decides again from the newer version.
                }
                Err(err) => tracing::warn!(
                    namespace = owner.namespace(),
                    name = owner.name(),
                    error = %err,
                    "could not record lastUsedAt"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeySpec, ApiKeyStatus, KeyRecord};
    use crate::key::ApiKeyValue;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn owner(index: &Index, last_used_at: Option<i64>) -> Arc<IndexedApiKey> {
        let key = ApiKeyValue::generate();
        let mut ak = ApiKey::new("k", ApiKeySpec::default());
        ak.metadata.namespace = Some("ns".into());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(KeyRecord {
                id: key.key_id().into(),
                sha256: key.sha256_hex(),
                issued_at: Time(Timestamp::UNIX_EPOCH),
                valid_until: None,
            }),
            last_used_at: last_used_at.map(|s| Time(Timestamp::from_second(s).unwrap())),
            ..Default::default()
        });
        index.apply(&ak);
        index.owners().pop().unwrap()
    }

    #[test]
    fn a_use_is_written_once_it_is_a_step_newer_than_the_stored_one() {
        let index = Index::default();
        let o = owner(&index, None);
        assert_eq!(due(&o, 60), None, "never used here");
        o.usage.last_used.store(1_000, Ordering::Relaxed);
        assert_eq!(due(&o, 60), Timestamp::from_second(1_000).ok());

        let o = owner(&index, Some(1_000));
        o.usage.last_used.store(1_059, Ordering::Relaxed);
        assert_eq!(due(&o, 60), None, "less than a minute newer");
        o.usage.last_used.store(1_060, Ordering::Relaxed);
        assert!(due(&o, 60).is_some());
        // Another replica stored a later time: never backwards.
        let o = owner(&index, Some(5_000));
        assert_eq!(
            o.usage.last_used.load(Ordering::Relaxed),
            1_060,
            "usage survives updates"
        );
        assert_eq!(due(&o, 60), None);
    }
}
