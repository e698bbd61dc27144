//! The ApiKey custom resource (`latchkey.dev/v1alpha1`, short name `ak`).
//!
//! Spec is owned by the user (or their GitOps tool): latchkey never writes it.
//! Status is written by the controller, with Server-Side Apply, except the
//! usage fields (`lastUsedAt`, `keyUsage`, `retiredKeyPresented`), which the
//! auth server writes with an optimistic-lock merge patch.

// Several `printcolumn(...)` entries look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use super::rules;
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
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.currentKey.id"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    // Times that may lie in the future are `string` columns: kubectl renders
    // a `date` column as the age since that time, and prints `<invalid>` for
    // any future one. A relative "in 29d" kept in status would be stale
    // between reconciles (and cost a status write per tick to keep fresh),
    // while the RFC 3339 value is exact, sortable and never stale. Times that
    // are always past (last rotation, creation) stay `date`.
    printcolumn(name = "Next Rotation", type_ = "string", json_path = ".status.nextRotationAt"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Last Rotated",
        type_ = "date",
        json_path = ".status.lastRotatedAt",
        priority = 1
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(
    "has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)"
).message("spec.secretName cannot be changed after creation; create a new ApiKey for a new Secret").field_path(".secretName"))]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)"
).message("spec.revoked cannot be set back to false: revocation is permanent; create a new ApiKey for a new key").field_path(".revoked"))]
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
    #[x_kube(validation = Rule::new(rules::SCOPE_ENTRIES)
        .message("every entry of spec.scopes must start with a letter or digit and contain only letters, digits and . _ : / * - (no spaces)"))]
    pub scopes: Vec<String>,

    /// Hosts or APIs where the key is valid, for example `orders.example.com`
    /// or `https://api.example.com`. Empty means every audience. At most 16,
    /// no duplicates, each 1–253 printable characters without spaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::PRINTABLE_ENTRIES).message(rules::PRINTABLE_AUDIENCES_MESSAGE))]
    pub audiences: Vec<String>,

    /// Scheduled rotation: a new key every `interval`; the previous key stays
    /// valid for `gracePeriod` after it was replaced, so consumers reload
    /// without a failed request. Without it the key is rotated only on request
    /// (the `latchkey.dev/rotate` annotation: any new value asks for one
    /// rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,

    /// A hard end (RFC 3339, for example `2027-01-31T00:00:00Z`): after it no
    /// key of this ApiKey is valid and it is not rotated any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// `true` revokes every key of this ApiKey at once (the auth server
    /// refuses them within a second). One-way: it cannot be set back to
    /// `false`; create a new ApiKey instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,

    /// Requests per second (and burst) allowed per key, enforced by each
    /// latchkey server replica on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// The TokenPolicy (in this namespace) under which this key may be
    /// exchanged for short-lived tokens at `POST /token`. A policy may also
    /// admit keys by label (its `spec.apiKeySelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_policy_ref: Option<TokenPolicyRef>,
}

/// A reference to a TokenPolicy in the ApiKey's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyRef {
    /// Name of the TokenPolicy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Go-style duration syntax accepted by the API server's CEL `duration()`
/// (`720h`, `1h30m`, `90s`).
const DURATION_PATTERN: &str = "^([0-9]{1,5}h)?([0-9]{1,5}m)?([0-9]{1,5}s)?$";

/// When keys are rotated, and how long a replaced key stays valid.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "!has(self.gracePeriod) || duration(self.gracePeriod) <= duration(self.interval)"
).message("spec.rotation.gracePeriod must not be longer than spec.rotation.interval").field_path(".gracePeriod"))]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// How often a new key is issued, as a duration such as `720h` (30 days),
    /// `24h` or `1h30m`. At least `1m`, at most `8760h` (365 days).
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('1m') && duration(self) <= duration('8760h')"
    ).message("spec.rotation.interval must be a duration between 1m and 8760h (365 days), for example 720h"))]
    pub interval: String,

    /// How long the previous key stays valid after a rotation, as a duration
    /// such as `24h`. At least `30s`, at most `720h` (30 days), and not longer
    /// than `interval`. Defaults to `1h`, or to `interval` when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('30s') && duration(self) <= duration('720h')"
    ).message("spec.rotation.gracePeriod must be a duration between 30s and 720h (30 days), for example 24h"))]
    pub grace_period: Option<String>,
}

/// A token bucket per key: `requestsPerSecond` refill, `burst` capacity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second allowed per key, 1–100000.
    // Kubernetes knows int32, not the uint32 format schemars would emit.
    #[schemars(range(min = 1, max = 100000), extend("format" = "int32"))]
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate, 1–1000000.
    /// Defaults to `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000), extend("format" = "int32"))]
    pub burst: Option<u32>,
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
    /// When the key stops being valid: set on a replaced key (rotation time
    /// plus grace period), absent while the key is current (then
    /// `spec.expiresAt` and `spec.revoked` alone end it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Time>,
}

/// The use of one key, as the auth server records it (`status.keyUsage`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    /// When this key (or a token it obtained) was last accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// Requests accepted with this key or its tokens, since it was issued
    /// (approximate: a server replica that dies loses at most one flush
    /// interval of its counts).
    #[serde(default)]
    pub allowed: i64,
    /// Requests with this key or its tokens refused by a route's
    /// requirement or the rate limit, by reason.
    #[serde(default)]
    pub denied: DeniedCounts,
}

/// Refused uses of a valid key, by the reason of the refusal.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeniedCounts {
    /// A scope the route requires is missing (403).
    #[serde(default)]
    pub scope: i64,
    /// Not valid for the route's audience.
    #[serde(default)]
    pub audience: i64,
    /// From a namespace the route does not accept.
    #[serde(default)]
    pub namespace: i64,
    /// The route accepts only tokens of some issuers.
    #[serde(default)]
    pub issuer: i64,
    /// Over the ApiKey's rate limit (429).
    #[serde(default)]
    pub rate_limited: i64,
}

/// Presentations of keys that are no longer valid (`status.retiredKeyPresented`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetiredKeyPresented {
    /// How many requests presented one (approximate).
    #[serde(default)]
    pub count: i64,
    /// When one was last presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_presented_at: Option<Time>,
    /// The id of the key last presented (an id, never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_id: Option<String>,
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

    /// Replaced keys that are still valid (in their grace period), oldest
    /// first, each with its `validUntil`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<KeyRecord>,

    /// Counts the keys delivered to the Secret: 1 for the first key, +1 for
    /// every rotation or replacement. Never decreases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,

    /// When the current key was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<Time>,

    /// When the next scheduled rotation is due (absent without
    /// `spec.rotation`, or when the ApiKey is revoked or expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,

    /// The last value of the `latchkey.dev/rotate` annotation that was
    /// honoured with a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,

    /// The value of the `latchkey.dev/rotate` annotation that `pendingKey`
    /// answers: it becomes `lastRotateRequest` when the key is delivered, so
    /// a request is honoured exactly once even across a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_rotate_request: Option<String>,

    /// When a key of this ApiKey was last accepted by a latchkey server
    /// (written at most about once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,

    /// Use of each key that status lists, by key id: when it was last
    /// accepted and approximate counts since it was issued. Written by the
    /// auth server (batched, about once a minute), never by the controller;
    /// an entry goes when its key leaves status. Informational: anyone who
    /// may patch `apikeys/status` can change it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub key_usage: BTreeMap<String, KeyUsage>,

    /// Keys of this ApiKey presented after they stopped being valid (grace
    /// period over, ApiKey revoked or expired): a consumer that never
    /// reloaded, or a leaked key. Written by the auth server, approximate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_key_presented: Option<RetiredKeyPresented>,

    /// Ids of replaced keys for which the controller published the
    /// `PreviousKeyStillInUse` Warning Event (once per key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub still_in_use_reported: Vec<String>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus conventions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl ApiKeyStatus {
    /// This status without the fields the auth server writes (`lastUsedAt`,
    /// `keyUsage`, `retiredKeyPresented`): what the controller compares and
    /// applies, so that its Server-Side Apply neither owns nor removes them.
    pub fn without_server_fields(mut self) -> Self {
        self.last_used_at = None;
        self.key_usage.clear();
        self.retired_key_presented = None;
        self
    }

    /// The key records status lists: current, pending, previous.
    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.current_key
            .iter()
            .chain(self.pending_key.iter())
            .chain(self.previous_keys.iter())
    }

    /// The ids of the keys status lists (current, pending, previous).
    pub fn listed_ids(&self) -> impl Iterator<Item = &str> {
        self.records().map(|k| k.id.as_str())
    }
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

    /// Whether `spec.revoked` is set.
    pub fn is_revoked(&self) -> bool {
        self.spec.revoked == Some(true)
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
