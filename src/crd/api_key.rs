//! The ApiKey custom resource (`latchkey.dev/v1alpha1`, short name `ak`).
//!
//! Spec is owned by the user (or their GitOps tool): latchkey never writes it.
//! Status is written only by the controller, with Server-Side Apply.

// Several `printcolumn(...)` entries look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Spec of an ApiKey: which Secret receives the key, and what the key stands for.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    plural = "apikeys",
    namespaced,
    shortname = "ak",
    category = "latchkey",
    status = "ApiKeyStatus",
    derive = "PartialEq",
    doc = "An ApiKey is a long-lived API key for a program. latchkey generates the key, \
           writes it into a Secret in the same namespace (owned by the ApiKey, so it is \
           garbage-collected with it) and records only the key's id and SHA-256 hash in \
           status. The key itself never leaves that Secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.currentKey.id"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(
    "has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)"
).message("spec.secretName cannot be changed after creation; create a new ApiKey for a new Secret").field_path(".secretName"))]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Name of the Secret, in the ApiKey's namespace, that receives the key
    /// (data key `api-key`). Defaults to the ApiKey's name. Must be a DNS-1123
    /// subdomain; cannot be changed after creation. latchkey refuses to take
    /// over a Secret it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message("spec.secretName must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    pub secret_name: Option<String>,

    /// Labels and annotations to put on the Secret, for example for a reloader
    /// (stakater/Reloader, a checksum annotation). The ApiKey's own labels are
    /// never copied to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// Identity reported downstream (the `X-Auth-Subject` header) when this key
    /// is accepted. Defaults to `<namespace>/<name>`. Letters, digits and
    /// `. _ : @ / + = -`, at most 253 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$')")
        .message("spec.subject must start with a letter or digit and contain only letters, digits and . _ : @ / + = -"))]
    pub subject: Option<String>,

    /// Fixed permissions of the key, for example `orders:read`. Each scope is
    /// 1–128 characters of letters, digits and `. _ : / * -`, starting with a
    /// letter or digit (an OAuth 2.0 scope token without spaces or quotes).
    /// At most 64, no duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[A-Za-z0-9][A-Za-z0-9._:/*-]*$'))")
        .message("every entry of spec.scopes must start with a letter or digit and contain only letters, digits and . _ : / * - (no spaces)"))]
    pub scopes: Vec<String>,

    /// Hosts or APIs where the key is valid, for example `orders.example.com`
    /// or `https://api.example.com`. Empty means every audience. At most 16,
    /// no duplicates, each 1–253 printable characters without spaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(a, a.matches('^[!-~]+$'))")
        .message("every entry of spec.audiences must be printable ASCII without spaces"))]
    pub audiences: Vec<String>,
}

/// Metadata latchkey puts on the Secret it writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels for the Secret. Keys under `latchkey.dev/` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('latchkey.dev/'))")
        .message("spec.secretTemplate.labels must not use the reserved prefix latchkey.dev/"))]
    pub labels: BTreeMap<String, String>,

    /// Annotations for the Secret. Keys under `latchkey.dev/` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('latchkey.dev/'))")
        .message("spec.secretTemplate.annotations must not use the reserved prefix latchkey.dev/"))]
    pub annotations: BTreeMap<String, String>,
}

/// One key of an ApiKey, as status records it: never the key itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// The public key id (the part after `lk_`).
    pub id: String,
    /// Lower-case hex SHA-256 of the whole key.
    pub sha256: String,
    /// When latchkey generated the key.
    pub issued_at: Time,
}

/// Observed state of an ApiKey, written by latchkey.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The Secret that holds the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// The key the Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key: Option<KeyRecord>,

    /// A key that latchkey is about to write into the Secret. It is recorded
    /// (and valid) before the Secret receives it, so that a crash between the
    /// two writes never leaves a key in the Secret that status does not know;
    /// it becomes `currentKey` once the Secret holds it, and is dropped if it
    /// never got there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key: Option<KeyRecord>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus conventions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl ApiKey {
    /// The Secret's name: `spec.secretName`, or the ApiKey's own name.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The subject reported downstream: `spec.subject`, or `<namespace>/<name>`.
    pub fn subject(&self) -> String {
        self.spec.subject.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }
}
