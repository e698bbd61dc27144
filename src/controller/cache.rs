//! What the ApiKey controller keeps of its Secrets: their metadata only
//! (a metadata-only watch of the Secrets it labelled; their data is read
//! only when a key must be verified), and the Secret writes of its own that
//! are in flight, so that the watch event each one causes triggers no
//! second reconcile.

use super::FIELD_MANAGER;
use super::plan;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// How long a reconcile waits for the Secret watch's first list before it
/// reads the Secret instead.
pub const FIRST_LIST: std::time::Duration = std::time::Duration::from_secs(10);

/// The Secrets' metadata and our own writes in flight.
#[derive(Default)]
pub struct SecretCache {
    store: RwLock<Option<Store<PartialObjectMeta<Secret>>>>,
    /// By Secret: the key id and revision our apply in flight writes.
    own_writes: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl SecretCache {
    /// The controllers run with this store.
    pub fn watch(&self, store: Store<PartialObjectMeta<Secret>>) {
        *self.store.write().expect("secret store lock") = Some(store);
    }

    /// The metadata of Secret `namespace/name` as the watch last saw it,
    /// once the watch has its first list (waiting up to [`FIRST_LIST`] for
    /// it: the first reconciles after a start would otherwise all read
    /// their Secrets); `None` if it is not there, or there is no list yet.
    pub async fn metadata(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        let store = self.store.read().expect("secret store lock").clone()?;
        if tokio::time::timeout(FIRST_LIST, store.wait_until_ready())
            .await
            .is_err()
        {
            return None;
        }
        store.get(&ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(namespace))
    }

    /// We are about to apply `namespace/name` with the key `key_id` at `revision`.
    pub fn expect(&self, namespace: &str, name: &str, key_id: &str, revision: i64) {
        self.own_writes
            .lock()
            .expect("own writes lock")
            .insert((namespace.into(), name.into()), (key_id.into(), revision));
    }

    /// The apply failed: its event will not come.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.own_writes
            .lock()
            .expect("own writes lock")
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Whether a watch event showing `secret` is the one our own apply
    /// caused (see [`plan::is_own_secret_write`]). The expectation is used
    /// once: the Secret's next event (whoever made it) triggers a reconcile.
    pub fn is_own_write(&self, secret: &ObjectMeta) -> bool {
        let (Some(ns), Some(name)) = (secret.namespace.as_ref(), secret.name.as_ref()) else {
            return false;
        };
        let expected = self
            .own_writes
            .lock()
            .expect("own writes lock")
            .remove(&(ns.clone(), name.clone()));
        expected.is_some_and(|(key_id, revision)| {
            plan::is_own_secret_write(secret, &key_id, revision, FIELD_MANAGER)
        })
    }

    /// How many of our writes are waiting for their event (a test and debug aid).
    pub fn in_flight(&self) -> usize {
        self.own_writes.lock().expect("own writes lock").len()
    }
}
