//! The watches of TokenPolicies and their signing-key Secrets that keep the snapshot up to date.

use super::*;

#[allow(clippy::large_enum_variant)] // one event at a time; boxing buys nothing
enum Change {
    Policy(Result<watcher::Event<TokenPolicy>, watcher::Error>),
    Secret(Result<watcher::Event<Secret>, watcher::Error>),
}

/// (namespace, Secret name).
type SecretKey = (String, String);
/// kid → PKCS#8 PEM.
pub type PemsByKid = BTreeMap<String, Vec<u8>>;

/// A watched Secret by namespace and name, with its controller owner's uid
/// (when a TokenPolicy) and its private keys. Which policy it serves is
/// decided in [`build_snapshot`] by name and that uid, never by its label.
pub(super) fn secret_keys(secret: &Secret) -> Option<(SecretKey, SigningSecret)> {
    let ns = secret.namespace()?;
    let name = secret.metadata.name.clone()?;
    let controller_uid = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "TokenPolicy" && o.api_version.starts_with("latchkey.dev/"))
        .map(|o| o.uid.clone());
    let keys = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_suffix(PEM_SUFFIX)?.to_owned(), v.0.clone())))
        .collect();
    Some(((ns, name), SigningSecret { controller_uid, keys }))
}

/// Keeps `tokens` up to date from watches of TokenPolicies and their
/// signing-key Secrets until the streams end.
/// `namespaces`: where (one watch per listed namespace, merged).
pub async fn feed(
    client: kube::Client,
    namespaces: crate::namespaces::WatchNamespaces,
    tokens: Arc<Tokens>,
    issuer_base_url: String,
) {
    let policy_events = namespaces
        .watch::<TokenPolicy>(&client, watcher::Config::default())
        .map(Change::Policy);
    let secret_events = namespaces
        .watch::<Secret>(&client, watcher::Config::default().labels(TOKEN_POLICY_LABEL))
        .map(Change::Secret);
    let mut events = futures::stream::select(policy_events.boxed(), secret_events.boxed());
    let mut policy_store: BTreeMap<(String, String), TokenPolicy> = BTreeMap::new();
    let mut secret_store: BTreeMap<SecretKey, SigningSecret> = BTreeMap::new();
    let (mut policy_init, mut secret_init) = (None::<BTreeMap<_, _>>, None::<BTreeMap<_, _>>);
    let (mut policies_done, mut secrets_done) = (false, false);
    let key_of = |p: &TokenPolicy| (p.namespace().unwrap_or_default(), p.name_any());
    while let Some(change) = events.next().await {
        let mut changed = true;
        match change {
            Change::Policy(Ok(event)) => match event {
                watcher::Event::Init => {
                    policy_init = Some(BTreeMap::new());
                    changed = false;
                }
                watcher::Event::InitApply(p) => {
                    if let Some(init) = policy_init.as_mut() {
                        init.insert(key_of(&p), p);
                    }
                    changed = false;
                }
                watcher::Event::InitDone => {
                    policy_store = policy_init.take().unwrap_or_default();
                    policies_done = true;
                }
                watcher::Event::Apply(p) => {
                    policy_store.insert(key_of(&p), p);
                }
                watcher::Event::Delete(p) => {
                    policy_store.remove(&key_of(&p));
                }
            },
            Change::Secret(Ok(event)) => match event {
                watcher::Event::Init => {
                    secret_init = Some(BTreeMap::new());
                    changed = false;
                }
                watcher::Event::InitApply(s) => {
                    if let (Some(init), Some((k, v))) = (secret_init.as_mut(), secret_keys(&s)) {
                        init.insert(k, v);
                    }
                    changed = false;
                }
                watcher::Event::InitDone => {
                    secret_store = secret_init.take().unwrap_or_default();
                    secrets_done = true;
                }
                watcher::Event::Apply(s) => {
                    if let Some((k, v)) = secret_keys(&s) {
                        secret_store.insert(k, v);
                    }
                }
                watcher::Event::Delete(s) => {
                    if let Some((k, _)) = secret_keys(&s) {
                        secret_store.remove(&k);
                    }
                }
            },
            Change::Policy(Err(err)) => {
                tracing::warn!(error = %err, "TokenPolicy watch failed; retrying");
                changed = false;
            }
            Change::Secret(Err(err)) => {
                tracing::warn!(error = %err, "signing-key Secret watch failed; retrying");
                changed = false;
            }
        }
        if changed && policies_done && secrets_done {
            tokens.replace(build_snapshot(&policy_store, &secret_store, &issuer_base_url));
            if !tokens.is_synced() {
                tracing::info!(policies = policy_store.len(), "TokenPolicies loaded");
                tokens.mark_synced();
            }
        }
    }
}
