//! An ApiKey as the auth server's watch reads it: the object without the
//! metadata the index never looks at. `managedFields` (one entry per writer,
//! each a tree of field names), `annotations` (kubectl's client-side apply
//! keeps a copy of the whole object there), `ownerReferences` and
//! `finalizers` are skipped while the JSON is parsed instead of being
//! allocated and dropped: a page of the first list (100 ApiKeys, see
//! `feed_index`) then costs a fraction of the memory at its peak, and
//! glibc keeps a process's peak (issue 18: the RSS per indexed key, and
//! what is given back).
//!
//! Only the server's index feed uses it; the controller reads whole ApiKeys.
//! An object that lacks `spec` is an error here as for [`ApiKey`].

use crate::crd::{ApiKey, ApiKeySpec, ApiKeyStatus};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// An ApiKey whose metadata holds only name, namespace, uid,
/// resourceVersion, generation and labels.
#[derive(Clone, Debug)]
pub struct WatchedApiKey(pub ApiKey);

/// The metadata fields the index and the watch read; every other field of
/// `metadata` is skipped by serde without allocating.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
}

/// `apiVersion` and `kind` are skipped too (list items lack them anyway).
#[derive(Deserialize)]
struct LeanObject {
    metadata: LeanMeta,
    spec: ApiKeySpec,
    #[serde(default)]
    status: Option<ApiKeyStatus>,
}

impl<'de> Deserialize<'de> for WatchedApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let LeanObject {
            metadata,
            spec,
            status,
        } = LeanObject::deserialize(deserializer)?;
        let mut api_key = ApiKey::new("", spec);
        api_key.metadata = ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            resource_version: metadata.resource_version,
            generation: metadata.generation,
            labels: metadata.labels,
            ..ObjectMeta::default()
        };
        api_key.status = status;
        Ok(Self(api_key))
    }
}

impl Resource for WatchedApiKey {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ApiKey::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ApiKey::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ApiKey::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ApiKey::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_object() -> serde_json::Value {
        json!({
            "apiVersion": "latchkey.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {
                "name": "billing", "namespace": "team-a", "uid": "u-1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "billing"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
                "finalizers": ["x"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-2"}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "latchkey.dev/v1alpha1",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:scopes": {}}}}]
            },
            "spec": {"scopes": ["orders:read"], "subject": "svc-billing"},
            "status": {"currentKey": {"id": "abcdefghijkl", "sha256": "00", "issuedAt": "2026-01-01T00:00:00Z"}}
        })
    }

    #[test]
    fn the_index_reads_the_same_spec_status_and_identity_without_the_rest_of_the_metadata() {
        let full: ApiKey = serde_json::from_value(full_object()).unwrap();
        let lean: WatchedApiKey = serde_json::from_value(full_object()).unwrap();
        let lean = lean.0;
        assert_eq!(
            serde_json::to_value(&lean.spec).unwrap(),
            serde_json::to_value(&full.spec).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&lean.status).unwrap(),
            serde_json::to_value(&full.status).unwrap()
        );
        let (l, f) = (&lean.metadata, &full.metadata);
        assert_eq!(
            (
                &l.name,
                &l.namespace,
                &l.uid,
                &l.resource_version,
                l.generation,
                &l.labels
            ),
            (
                &f.name,
                &f.namespace,
                &f.uid,
                &f.resource_version,
                f.generation,
                &f.labels
            )
        );
        assert!(l.managed_fields.is_none() && l.annotations.is_none());
        assert!(l.owner_references.is_none() && l.finalizers.is_none());
        assert_eq!(WatchedApiKey::plural(&()), ApiKey::plural(&()));
        assert_eq!(WatchedApiKey::api_version(&()), ApiKey::api_version(&()));
    }

    #[test]
    fn a_list_item_without_api_version_and_kind_is_read_and_one_without_spec_is_refused() {
        let mut item = full_object();
        let o = item.as_object_mut().unwrap();
        o.remove("apiVersion");
        o.remove("kind");
        o.remove("status");
        let lean: WatchedApiKey = serde_json::from_value(item.clone()).unwrap();
        assert!(lean.0.status.is_none());
        item.as_object_mut().unwrap().remove("spec");
        let err = serde_json::from_value::<WatchedApiKey>(item).unwrap_err();
        assert!(err.to_string().contains("spec"), "{err}");
    }
}
