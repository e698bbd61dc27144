//! ApiKeys and TokenPolicies: their manifests, waiting until they are
//! Ready (and served), the key a Secret holds, revocation, Events, and
//! [`Scenario`] (a namespace with its own controller).

use super::{LatchkeyProcess, TestNamespace, apply, client, eventually};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use latchkey::conditions;
use latchkey::crd::{ApiKey, TokenPolicy};
use latchkey::key::sha256_hex;
use std::time::Duration;

/// How long an object may take to become Ready (or an Event to appear).
pub const WAIT: Duration = Duration::from_secs(60);

/// An ApiKey manifest; `spec` is YAML lines under `spec:` (indented two spaces).
pub fn api_key_manifest(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// A TokenPolicy manifest; `spec` is YAML lines under `spec:`.
pub fn token_policy_manifest(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: latchkey.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// The SHA-256 of the key a Secret holds (`api-key`), as status lists it.
pub fn key_hash(secret: &Secret) -> Option<String> {
    Some(sha256_hex(&secret.data.as_ref()?.get("api-key")?.0))
}

/// Sets `spec.revoked: true` on ApiKey `name` (a merge patch; returns when
/// the API server has answered). Takes the tests' own `Api` so that a test
/// timing the patch times the patch alone.
pub async fn revoke(api_keys: &Api<ApiKey>, name: &str) {
    api_keys
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
}

/// Waits (up to `timeout`) for an Event about `name` in `ns` with this
/// reason and type; returns it.
pub async fn wait_for_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    type_: &str,
    timeout: Duration,
) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(
        timeout,
        &format!("a {type_} Event {reason} about {name}"),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some(type_)
            })
        },
    )
    .await
}

/// Waits until TokenPolicy `name` is Ready; returns it.
pub async fn ready_policy(policies: &Api<TokenPolicy>, name: &str) -> TokenPolicy {
    eventually(WAIT, &format!("TokenPolicy {name} Ready"), || async {
        let p = policies.get(name).await.ok()?;
        conditions::is_true(&p.status.as_ref()?.conditions, conditions::READY).then_some(p)
    })
    .await
}

/// Applies ApiKey `name` in `ns` with `spec` (YAML lines under `spec:`),
/// waits until it is Ready and until the latchkey server at `server` (a base
/// URL) accepts the key its Secret holds; returns that key.
pub async fn served_key(ns: &str, name: &str, spec: &str, server: &str) -> String {
    served_key_with(ns, name, spec, server, &reqwest::Client::new()).await
}

/// [`served_key`] asking the server with `http` (an HTTPS client trusting
/// the server's CA).
pub async fn served_key_with(
    ns: &str,
    name: &str,
    spec: &str,
    server: &str,
    http: &reqwest::Client,
) -> String {
    apply(&api_key_manifest(ns, name, spec));
    let client = client().await;
    let api_keys: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client, ns);
    let wait = WAIT;
    let key = eventually(wait, &format!("ApiKey {name} Ready"), || async {
        let ak = api_keys.get(name).await.ok()?;
        conditions::is_true(&ak.status.as_ref()?.conditions, conditions::READY).then_some(())?;
        let secret = secrets.get(&ak.secret_name()).await.ok()?;
        String::from_utf8(secret.data?.get("api-key")?.0.clone()).ok()
    })
    .await;
    eventually(wait, "the latchkey server accepts the new key", || async {
        let resp = http
            .get(format!("{server}/auth/envoy"))
            .header("x-api-key", &key)
            .send()
            .await
            .ok()?;
        (resp.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    key
}

/// A namespace with its own `latchkey controller`, and clients for ApiKeys
/// and Secrets in it.
pub struct Scenario {
    pub ns: TestNamespace,
    pub controller: LatchkeyProcess,
    pub client: Client,
    pub api_keys: Api<ApiKey>,
    pub secrets: Api<Secret>,
}

impl Scenario {
    pub async fn new(prefix: &str) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let controller = LatchkeyProcess::start(&ns.name);
        let client = client().await;
        Self {
            api_keys: Api::namespaced(client.clone(), &ns.name),
            secrets: Api::namespaced(client.clone(), &ns.name),
            ns,
            controller,
            client,
        }
    }

    /// Waits until `name` is Ready, settled (no pending key) and its Secret
    /// holds the current key, and `extra` holds; returns both.
    pub async fn settled(&self, name: &str, what: &str, extra: impl Fn(&ApiKey) -> bool) -> (ApiKey, Secret) {
        eventually(WAIT, what, || async {
            let ak = self.api_keys.get(name).await.ok()?;
            let status = ak.status.as_ref()?;
            if !conditions::is_true(&status.conditions, conditions::READY) || status.pending_key.is_some() {
                return None;
            }
            let secret = self.secrets.get_opt(&ak.secret_name()).await.ok()??;
            let current = status.current_key.as_ref()?;
            (key_hash(&secret)? == current.sha256 && extra(&ak)).then_some((ak, secret))
        })
        .await
    }

    /// Sets the `latchkey.dev/rotate` annotation of `name` to `value`.
    pub async fn request_rotation(&self, name: &str, value: &str) {
        let patch = serde_json::json!({"metadata": {"annotations": {"latchkey.dev/rotate": value}}});
        self.api_keys
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// Waits for an Event about `name` in this namespace (up to [`WAIT`]).
    pub async fn wait_for_event(&self, name: &str, reason: &str, type_: &str) -> Event {
        wait_for_event(&self.client, &self.ns.name, name, reason, type_, WAIT).await
    }
}
