//! The writes both reconcilers make, one way each: Server-Side Apply of a
//! child object and of a status under [`FIELD_MANAGER`], the metadata of an
//! owned child, and Events (best effort, key ids only, never a key).

use super::Context;
use super::failure::Reconciled;
use super::plan::PlannedEvent;
use crate::error::{Error, KubeResultExt, Result};
use crate::meta::FIELD_MANAGER;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Metadata of an object `owner` controls: its name and namespace, `labels`
/// and a controller owner reference (garbage-collected with the owner).
pub fn owned_metadata<O>(owner: &O, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta
where
    O: Resource<DynamicType = ()>,
{
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The fetch step of either reconcile: the object's namespace and a fresh
/// read of it, never the watch cache (a cache that has not yet seen our
/// last status write would mistake the key we just delivered for a foreign
/// one); `None` when it is gone or being deleted (the garbage collector
/// removes its children through their owner references).
pub async fn fetch_fresh<K: Reconciled>(watched: &K, client: &kube::Client) -> Result<Option<(String, K)>> {
    let namespace = watched.meta().namespace.clone().ok_or(Error::MissingObjectKey {
        kind: K::KIND,
        field: "namespace",
    })?;
    let name = watched.meta().name.clone().ok_or(Error::MissingObjectKey {
        kind: K::KIND,
        field: "name",
    })?;
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let fresh = api.get_opt(&name).await.during(K::READ_ACTION)?;
    Ok(fresh
        .filter(|object| object.meta().deletion_timestamp.is_none())
        .map(|object| (namespace, object)))
}

/// Server-Side Apply of a whole object (forced: latchkey owns what it writes).
pub async fn apply_object<K>(api: &Api<K>, name: &str, object: &K, action: &'static str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + Debug + DeserializeOwned,
{
    let mut body = serde_json::to_value(object).expect("a Kubernetes object serializes");
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .during(action)
}

/// Server-Side Apply of the status subresource of `name` with `status`.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S, action: &'static str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .during(action)
}

/// Records `note` as an Event about `object`, best effort: a failure is
/// logged, not retried.
pub async fn publish(ctx: &Context, object: &ObjectReference, note: PlannedEvent) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.into(),
        note: Some(note.message),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, object).await {
        tracing::warn!(error = %err, reason = note.reason, "could not record an Event");
    }
}
