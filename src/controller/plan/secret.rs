//! The Secret we want, and whether the one there has our metadata.

use super::*;

/// The Secret we want for `api_key` holding `key`, for Server-Side Apply.
pub fn desired_secret(api_key: &ApiKey, key: &ApiKeyValue, stamp: SecretStamp) -> Secret {
    let (labels, annotations) = desired_metadata(api_key, key, stamp);
    Secret {
        metadata: ObjectMeta {
            name: Some(api_key.secret_name()),
            namespace: api_key.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: api_key.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_owned(),
            ByteString(key.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

pub(super) fn desired_metadata(
    api_key: &ApiKey,
    key: &ApiKeyValue,
    stamp: SecretStamp,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    desired_metadata_for(api_key, key.key_id(), stamp)
}

fn desired_metadata_for(
    api_key: &ApiKey,
    key_id: &str,
    stamp: SecretStamp,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let template = api_key.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = template.annotations;
    annotations.insert(KEY_ID_ANNOTATION.into(), key_id.into());
    annotations.insert(REVISION_ANNOTATION.into(), stamp.revision.to_string());
    annotations.insert(ROTATED_AT_ANNOTATION.into(), rfc3339(stamp.rotated_at));
    (labels, annotations)
}

/// Whether the Secret's labels and annotations that `field_manager` owns are
/// exactly those we would apply now: a removed template entry must go, so a
/// subset check is not enough; `managedFields` says which ones are ours.
pub(super) fn metadata_in_sync(
    api_key: &ApiKey,
    secret: &Secret,
    key: &ApiKeyValue,
    stamp: SecretStamp,
    field_manager: &str,
) -> bool {
    metadata_in_sync_for(api_key, &secret.metadata, key.key_id(), stamp, field_manager)
        && secret.type_.as_deref() == Some("Opaque")
}

/// [`metadata_in_sync`] from the metadata alone, for the key with `key_id`
/// (a Secret's type cannot change once it is created).
pub(super) fn metadata_in_sync_for(
    api_key: &ApiKey,
    secret: &ObjectMeta,
    key_id: &str,
    stamp: SecretStamp,
    field_manager: &str,
) -> bool {
    let (labels, annotations) = desired_metadata_for(api_key, key_id, stamp);
    let (owned_labels, owned_annotations) = owned_metadata_keys(secret, field_manager);
    let same = |want: &BTreeMap<String, String>,
                owned: &BTreeSet<String>,
                have: &Option<BTreeMap<String, String>>| {
        want.keys().cloned().collect::<BTreeSet<_>>() == *owned
            && want
                .iter()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    same(&labels, &owned_labels, &secret.labels)
        && same(&annotations, &owned_annotations, &secret.annotations)
}

/// Label and annotation keys that `field_manager` applied, read from the
/// Secret's `managedFields` (`f:metadata` → `f:labels` → `f:<key>`).
pub fn owned_metadata_keys(secret: &ObjectMeta, field_manager: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut labels = BTreeSet::new();
    let mut annotations = BTreeSet::new();
    for entry in secret.managed_fields.iter().flatten() {
        if entry.manager.as_deref() != Some(field_manager) || entry.operation.as_deref() != Some("Apply") {
            continue;
        }
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let meta = fields.0.get("f:metadata");
        for (section, into) in [("f:labels", &mut labels), ("f:annotations", &mut annotations)] {
            if let Some(map) = meta.and_then(|m| m.get(section)).and_then(|s| s.as_object()) {
                into.extend(map.keys().filter_map(|k| k.strip_prefix("f:")).map(str::to_owned));
            }
        }
    }
    (labels, annotations)
}

/// Keeps of a cached Secret's `managedFields` only what
/// [`owned_metadata_keys`] and [`data_applied_only_by`] read: each entry's
/// manager, operation and subresource, and of its `fieldsV1` the `f:data`
/// set and `f:metadata`'s `f:labels` and `f:annotations`. The rest (the
/// time, the owner reference's key with its uid, `f:type`) is most of an
/// entry and nothing reads it; the watch cache holds one per ApiKey.
pub fn keep_read_managed_fields(secret: &mut ObjectMeta) {
    for entry in secret.managed_fields.iter_mut().flatten() {
        entry.time = None;
        entry.api_version = None;
        entry.fields_type = None;
        let Some(serde_json::Value::Object(fields)) = entry.fields_v1.as_mut().map(|f| &mut f.0) else {
            continue;
        };
        let data = fields.remove("f:data");
        let metadata = fields.remove("f:metadata");
        fields.clear();
        if let Some(data) = data {
            fields.insert("f:data".into(), data);
        }
        if let Some(serde_json::Value::Object(mut metadata)) = metadata {
            let mut kept = serde_json::Map::new();
            for section in ["f:labels", "f:annotations"] {
                if let Some(v) = metadata.remove(section) {
                    kept.insert(section.into(), v);
                }
            }
            fields.insert("f:metadata".into(), kept.into());
        }
    }
}
