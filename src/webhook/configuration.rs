//! The ValidatingWebhookConfiguration: built whole for out-of-cluster runs
//! (`--webhook-url`), or only its `caBundle` patched when the chart created
//! it with a Service reference. Pure builders here; the API calls are in
//! [`super::sync`].

use base64::Engine;
use serde_json::{Value, json};

/// The two webhooks' names, as in the chart.
pub const RESOURCES_WEBHOOK: &str = "resources.latchkey.dev";
pub const SECRETS_WEBHOOK: &str = "secrets.latchkey.dev";

/// What latchkey decides of a configuration it creates itself: everything
/// but the CA, which [`desired`] adds.
#[derive(Debug, Clone)]
pub struct ConfigurationSpec {
    pub name: String,
    /// `https://HOST:PORT/validate`.
    pub url: String,
    /// Only these namespaces (`kubernetes.io/metadata.name`), or every one.
    pub namespaces: crate::namespaces::WatchNamespaces,
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
    pub timeout_seconds: u8,
    /// Operations checked on latchkey's Secrets.
    pub secret_operations: Vec<String>,
}

pub fn ca_bundle(ca_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
}

/// The whole configuration (for Server-Side Apply).
pub fn desired(spec: &ConfigurationSpec, ca_pem: &str) -> Value {
    let client = json!({"url": spec.url, "caBundle": ca_bundle(ca_pem)});
    // One namespace as before (matchLabels); a list as `In` (the
    // namespace controller sets the label on every namespace).
    let namespace_selector = match spec.namespaces.names() {
        Some([ns]) => json!({"matchLabels": {"kubernetes.io/metadata.name": ns}}),
        Some(names) => json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "In", "values": names,
        }]}),
        None => json!({}),
    };
    let hook = |name: &str, rules: Value, object_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": client,
            "rules": rules,
            "namespaceSelector": namespace_selector,
            "objectSelector": object_selector,
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "failurePolicy": spec.failure_policy,
            "timeoutSeconds": spec.timeout_seconds,
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": spec.name, "labels": {"app.kubernetes.io/managed-by": "latchkey-webhook"}},
        "webhooks": [
            hook(RESOURCES_WEBHOOK, json!([{
                "apiGroups": ["latchkey.dev"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["apikeys", "tokenpolicies"], "scope": "Namespaced",
            }]), json!({})),
            hook(SECRETS_WEBHOOK, json!([{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": spec.secret_operations,
                "resources": ["secrets"], "scope": "Namespaced",
            }]), json!({"matchLabels": {
                crate::meta::MANAGED_BY_LABEL: crate::meta::MANAGED_BY_VALUE
            }})),
        ],
    })
}

/// A strategic merge patch that sets `caBundle` on every webhook of
/// `current` (an existing configuration) that lacks it, or `None` when all
/// have it. Webhooks merge by `name`, so nothing else is touched.
pub fn ca_bundle_patch(current: &Value, ca_pem: &str) -> Option<Value> {
    let bundle = ca_bundle(ca_pem);
    let stale: Vec<Value> = current["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|hook| hook["clientConfig"]["caBundle"].as_str() != Some(bundle.as_str()))
        .map(|hook| json!({"name": hook["name"], "clientConfig": {"caBundle": bundle}}))
        .collect();
    (!stale.is_empty()).then(|| json!({"webhooks": stale}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConfigurationSpec {
        ConfigurationSpec {
            name: "latchkey-test".into(),
            url: "https://127.0.0.1:9443/validate".into(),
            namespaces: "team".parse().unwrap(),
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            secret_operations: vec!["UPDATE".into(), "DELETE".into()],
        }
    }

    #[test]
    fn the_configuration_has_both_webhooks_limited_to_the_namespace() {
        let vwc = desired(&spec(), "PEM");
        let hooks = vwc["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        for hook in hooks {
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["timeoutSeconds"], 5);
            assert_eq!(hook["clientConfig"]["caBundle"], ca_bundle("PEM"));
            assert_eq!(
                hook["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "team"
            );
        }
        assert_eq!(
            hooks[1]["objectSelector"]["matchLabels"]["app.kubernetes.io/managed-by"],
            "latchkey"
        );
    }

    #[test]
    fn a_namespace_list_selects_those_namespaces_and_every_namespace_selects_all() {
        let list = ConfigurationSpec {
            namespaces: "a,b".parse().unwrap(),
            ..spec()
        };
        let vwc = desired(&list, "PEM");
        for hook in vwc["webhooks"].as_array().unwrap() {
            assert_eq!(
                hook["namespaceSelector"],
                serde_json::json!({"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"],
                }]})
            );
        }
        let all = ConfigurationSpec {
            namespaces: crate::namespaces::WatchNamespaces::All,
            ..spec()
        };
        assert_eq!(
            desired(&all, "PEM")["webhooks"][0]["namespaceSelector"],
            serde_json::json!({})
        );
    }

    #[test]
    fn the_ca_bundle_patch_touches_only_stale_webhooks() {
        let mut vwc = desired(&spec(), "OLD");
        vwc["webhooks"][1]["clientConfig"]["caBundle"] = ca_bundle("NEW").into();
        let patch = ca_bundle_patch(&vwc, "NEW").unwrap();
        let hooks = patch["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0]["name"], RESOURCES_WEBHOOK);
        assert_eq!(hooks[0]["clientConfig"]["caBundle"], ca_bundle("NEW"));
        vwc["webhooks"][0]["clientConfig"]["caBundle"] = ca_bundle("NEW").into();
        assert_eq!(ca_bundle_patch(&vwc, "NEW"), None);
    }
}
