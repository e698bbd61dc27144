//! The floor: what the API server of this machine can do per key with
//! latchkey's crash-safe delivery and nothing else. No latchkey runs: this
//! client creates N ApiKeys the way the bench does (64 in flight) and, with
//! as many workers as latchkey's `--concurrency`, makes for each the writes a
//! new key cannot do without (status with the pending key, the Secret, the
//! status with the key current; all Server-Side Applies of the sizes
//! latchkey writes) and its Event, while a watch of the namespace's ApiKeys
//! and one of its Secrets' metadata run as a controller's would. No GET, no
//! planning, no key generated. latchkey's keys/s against this is the share
//! of the machine's ceiling it reaches; the floor itself bounds any
//! controller keeping the same three writes. It starts right after
//! latchkey's namespace is deleted, so that namespace's garbage collection
//! may run beside it: a floor measured so can only be lower than on an
//! idle API server (see the README for what bounds the goal regardless).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use latchkey::crd::{ApiKey, ApiKeySpec};
use serde_json::json;
use std::time::{Duration, Instant};

const MANAGER: &str = "latchkey-bench-floor";

pub struct Floor {
    pub created: Duration,
    pub delivered: Duration,
}

fn conditions(now: &str, ready: bool, reason: &str, message: &str) -> serde_json::Value {
    let condition = |kind: &str, status: bool| {
        json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": 1,
            "lastTransitionTime": now,
        })
    };
    json!([
        condition("Ready", ready),
        condition("Reconciling", !ready),
        condition("Stalled", false)
    ])
}

fn key_record(i: usize, now: &str) -> serde_json::Value {
    json!({
        "id": format!("fl{i:010}"),
        "issuedAt": now,
        "sha256": format!("{i:064x}"),
    })
}

async fn deliver(client: &kube::Client, ns: &str, ak: &ApiKey, i: usize) {
    let name = ak.metadata.name.as_deref().unwrap();
    let uid = ak.metadata.uid.as_deref().unwrap();
    let api: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let apply = PatchParams::apply(MANAGER).force();
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string();
    let message = format!("Secret {name} holds the current key");
    let pending = json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
        "status": {
            "observedGeneration": 1,
            "secretName": name,
            "pendingKey": key_record(i, &now),
            "conditions": conditions(&now, false, "Issuing", &format!("issuing a key into Secret {name}")),
        }
    });
    api.patch_status(name, &apply, &Patch::Apply(pending))
        .await
        .expect("floor: status with the pending key");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "latchkey"},
            "annotations": {
                "latchkey.dev/key-id": format!("fl{i:010}"),
                "latchkey.dev/revision": "1",
                "latchkey.dev/rotated-at": now,
            },
            "ownerReferences": [{
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
                "name": name, "uid": uid, "controller": true,
            }],
        },
        "type": "Opaque",
        "stringData": {"api-key": format!("lk_fl{i:010}_{:046}", i)},
    });
    secrets
        .patch(name, &apply, &Patch::Apply(secret))
        .await
        .expect("floor: the Secret");
    let current = json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
        "status": {
            "observedGeneration": 1,
            "secretName": name,
            "revision": 1,
            "lastRotatedAt": now,
            "currentKey": key_record(i, &now),
            "conditions": conditions(&now, true, "KeyIssued", &message),
        }
    });
    api.patch_status(name, &apply, &Patch::Apply(current))
        .await
        .expect("floor: status with the key current");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}.floor"), "namespace": ns},
        "involvedObject": {
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
            "name": name, "namespace": ns, "uid": uid,
        },
        "type": "Normal", "reason": "KeyIssued", "action": "Reconcile",
        "message": format!("issued key fl{i:010} into Secret {name}"),
        "eventTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "reportingComponent": "latchkey", "reportingInstance": "latchkey",
    }))
    .unwrap();
    // Best effort, as latchkey's Events are.
    let _ = events.create(&PostParams::default(), &event).await;
}

/// Creates `n` ApiKeys in `ns` (which must be empty) and delivers each with
/// `workers` at a time.
pub async fn run(client: &kube::Client, ns: &str, n: usize, workers: usize) -> Floor {
    let api: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    // A controller's two watches, drained.
    let watches = [
        tokio::spawn(
            watcher(api.clone(), watcher::Config::default())
                .applied_objects()
                .try_for_each(|_| async { Ok(()) }),
        ),
        tokio::spawn(
            watcher(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
                watcher::Config::default(),
            )
            .applied_objects()
            .try_for_each(|_| async { Ok(()) }),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (created_tx, created_rx) = futures::channel::mpsc::unbounded();
    let start = Instant::now();
    let creator = {
        let api = api.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..n)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        let ak = ApiKey::new(
                            &format!("key-{i:05}"),
                            ApiKeySpec {
                                scopes: vec!["bench:read".into()],
                                ..Default::default()
                            },
                        );
                        let created = api
                            .create(&PostParams::default(), &ak)
                            .await
                            .expect("floor: create ApiKey");
                        (i, created)
                    }
                })
                .buffer_unordered(64)
                .for_each(|made| {
                    let _ = created_tx.unbounded_send(made);
                    async {}
                })
                .await;
            start.elapsed()
        })
    };
    created_rx
        .for_each_concurrent(workers, |(i, ak)| {
            let client = client.clone();
            async move { deliver(&client, ns, &ak, i).await }
        })
        .await;
    let delivered = start.elapsed();
    let created = creator.await.unwrap();
    for watch in watches {
        watch.abort();
    }
    Floor { created, delivered }
}
