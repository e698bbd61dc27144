//! The writes both reconcilers make, one way each: Server-Side Apply of a
//! child object and of a status under [`FIELD_MANAGER`], the metadata of an
//! owned child, and Events (best effort, key ids only, never a key).

use super::Context;
use super::failure::Reconciled;
use super::plan::PlannedEvent;
use crate::error::{Error, KubeResultExt, Result};
use crate::meta::FIELD_MANAGER;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
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
    apply_status_at(api, name, status, None, action).await
}

/// [`apply_status`], refused with `409 Conflict` unless the object is still
/// at `resource_version` (when given): a status decided from the watch
/// cache is never written over a newer one.
pub async fn apply_status_at<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
    resource_version: Option<&str>,
    action: &'static str,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .during(action)
}

/// How many Events may wait for the API server; more are dropped (and
/// counted): an Event never holds up a delivery.
pub const EVENT_QUEUE: usize = 4096;
/// How many Events are being created at once.
const EVENT_WRITERS: usize = 4;

/// An Event waiting to be recorded.
pub type QueuedEvent = (ObjectReference, PlannedEvent);

/// Records `note` as an Event about `object`, best effort and without
/// waiting: it is queued for a background writer (at most [`EVENT_QUEUE`]
/// wait; one more is dropped and counted in
/// `latchkey_controller_events_dropped_total`); a repeat of the same reason
/// about the same object within [`REPEAT_WINDOW`] is recorded once; a
/// failure to create it is logged, not retried.
pub async fn publish(ctx: &Context, object: &ObjectReference, note: PlannedEvent) {
    let queue = ctx
        .events
        .get_or_init(|| spawn_event_writer(ctx.client.clone(), ctx.reporter.clone()));
    if let Err(err) = queue.try_send((object.clone(), note)) {
        ctx.metrics.event_dropped();
        let reason = match &err {
            tokio::sync::mpsc::error::TrySendError::Full((_, note))
            | tokio::sync::mpsc::error::TrySendError::Closed((_, note)) => note.reason,
        };
        tracing::debug!(reason, "the Event queue is full; dropped an Event");
    }
}

/// Starts the task that creates queued Events, a few at a time.
fn spawn_event_writer(client: kube::Client, reporter: Reporter) -> tokio::sync::mpsc::Sender<QueuedEvent> {
    let (queue, rx) = tokio::sync::mpsc::channel::<QueuedEvent>(EVENT_QUEUE);
    let mut recent = RecentEvents::default();
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
        .filter(move |(object, note)| {
            futures::future::ready(recent.first_time(object, note.reason, std::time::Instant::now()))
        });
    tokio::spawn(events.for_each_concurrent(EVENT_WRITERS, move |(object, note)| {
        let (client, reporter) = (client.clone(), reporter.clone());
        async move {
            let reason = note.reason;
            let event = event_for(&object, note, &reporter, Timestamp::now());
            let api: Api<K8sEvent> =
                Api::namespaced(client, event.metadata.namespace.as_deref().unwrap_or("default"));
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(error = %err, reason, "could not record an Event");
            }
        }
    }));
    queue
}

/// How long a repeated Event (same object, same reason) is not recorded
/// again: kube's Recorder made a repeat within this time one Event with a
/// series count; latchkey records it once.
pub const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(360);

/// The Events recorded in the last [`REPEAT_WINDOW`], by object and reason
/// (about 100 bytes each; the ended ones are dropped whenever the map has
/// doubled since the last sweep).
#[derive(Default)]
pub struct RecentEvents {
    seen: std::collections::HashMap<(String, &'static str), std::time::Instant>,
    swept_at_len: usize,
}

impl RecentEvents {
    /// Whether an Event `reason` about `object` at `now` is not a repeat
    /// (and remembers it).
    pub fn first_time(
        &mut self,
        object: &ObjectReference,
        reason: &'static str,
        now: std::time::Instant,
    ) -> bool {
        let who = object.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                object.namespace.as_deref().unwrap_or_default(),
                object.name.as_deref().unwrap_or_default()
            )
        });
        if self.seen.len() >= 2 * self.swept_at_len.max(512) {
            self.seen.retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
            self.swept_at_len = self.seen.len();
        }
        match self.seen.get(&(who.clone(), reason)) {
            Some(at) if now.duration_since(*at) < REPEAT_WINDOW => false,
            _ => {
                self.seen.insert((who, reason), now);
                true
            }
        }
    }
}

/// The `events.k8s.io/v1` Event for `note` about `object` at `now`: one
/// create each (latchkey's Events do not repeat, so no series and no cache
/// of past Events is kept).
pub fn event_for(
    object: &ObjectReference,
    note: PlannedEvent,
    reporter: &Reporter,
    now: Timestamp,
) -> K8sEvent {
    K8sEvent {
        action: Some("Reconcile".into()),
        reason: Some(note.reason.into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(object.clone()),
        note: Some(note.message),
        metadata: ObjectMeta {
            namespace: object.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                object.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_the_object_the_reporter_and_never_repeats_a_name() {
        let object = ObjectReference {
            kind: Some("ApiKey".into()),
            namespace: Some("shop".into()),
            name: Some("billing".into()),
            ..Default::default()
        };
        let reporter = Reporter {
            controller: "latchkey".into(),
            instance: None,
        };
        let note = |warning| PlannedEvent {
            warning,
            reason: "KeyIssued",
            message: "issued key abc into Secret billing".into(),
        };
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let event = event_for(&object, note(false), &reporter, at);
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert!(event.metadata.name.as_deref().unwrap().starts_with("billing."));
        assert_eq!(event.reason.as_deref(), Some("KeyIssued"));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.reporting_controller.as_deref(), Some("latchkey"));
        assert_eq!(event.reporting_instance.as_deref(), Some("latchkey"));
        assert_eq!(event.regarding, Some(object.clone()));
        let mut recent = RecentEvents::default();
        let t0 = std::time::Instant::now();
        assert!(recent.first_time(&object, "KeyIssued", t0));
        assert!(!recent.first_time(&object, "KeyIssued", t0 + std::time::Duration::from_secs(10)));
        assert!(recent.first_time(&object, "Revoked", t0));
        assert!(recent.first_time(&object, "KeyIssued", t0 + REPEAT_WINDOW));
        let later = event_for(
            &object,
            note(true),
            &reporter,
            at.checked_add(std::time::Duration::from_nanos(1)).unwrap(),
        );
        assert_ne!(later.metadata.name, event.metadata.name);
        assert_eq!(later.type_.as_deref(), Some("Warning"));
    }
}
