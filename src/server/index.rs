//! The in-memory index the auth server answers from: key id → the keys that
//! status lists under that id, each with its SHA-256 and the instant it stops
//! being valid, and the facts about its ApiKey that a decision needs.
//!
//! It is fed by a watch of ApiKeys (the stream kube-runtime's reflectors are
//! built on) but keeps no ApiKey objects: only what [`crate::validity::all_keys`]
//! lists, compactly, so that 100,000 keys fit in well under 1 KiB each. A
//! revoked ApiKey contributes no key; grace ends and expiry are compared with
//! the clock on each request, so they take effect without any write.

use super::counters::{KeyCounters, RetiredKeys};
pub use super::counters::{StoredUsage, Usage};
use super::grants::{Claimed, granted, regranted};
pub use super::owner::{ClaimedAs, IdentityText, IndexedApiKey, ValidUntil};
use super::shared_limit::{Settlements, share_of};
use crate::crd::ApiKey;
use crate::grants::Grants;
use crate::key::KEY_ID_LEN;
use crate::validity;
use axum::http::HeaderValue;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// A public key id, as bytes (always [`KEY_ID_LEN`] ASCII characters).
pub type KeyId = [u8; KEY_ID_LEN];

/// One key that status lists.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub sha256: [u8; 32],
    /// When the key stops being valid (never: not before a rotation,
    /// revocation or expiry is written).
    pub valid_until: ValidUntil,
    pub owner: Arc<IndexedApiKey>,
    /// This key's use on this replica (for `status.keyUsage`).
    pub counters: Arc<KeyCounters>,
}

/// An ApiKey and the counters of the keys it lists, for the usage writer.
pub type FlushView = (Arc<IndexedApiKey>, Vec<(KeyId, Arc<KeyCounters>)>);

/// `<namespace>/<name>` of an ApiKey.
type NamespacedName = Box<str>;

/// An indexed ApiKey and the ids of the keys it lists.
type Object = (Arc<IndexedApiKey>, Box<[KeyId]>);

/// The indexed ApiKeys by `<namespace>/<name>`, read from each one's
/// [`IdentityText`]: no key of its own is allocated per ApiKey.
#[derive(Default)]
struct Objects {
    table: hashbrown::HashTable<Object>,
    hasher: std::hash::RandomState,
}

fn name_of(object: &Object) -> &str {
    object.0.identity.namespaced_name()
}

impl Objects {
    fn get(&self, name: &str) -> Option<&Object> {
        self.table
            .find(self.hasher.hash_one(name), |o| name_of(o) == name)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn remove(&mut self, name: &str) -> Option<Object> {
        let hash = self.hasher.hash_one(name);
        let entry = self.table.find_entry(hash, |o| name_of(o) == name).ok()?;
        Some(entry.remove().0)
    }

    /// Adds `object` under its owner's name, replacing the one there.
    fn insert(&mut self, object: Object) {
        let Self { table, hasher } = self;
        let name = name_of(&object);
        match table.entry(
            hasher.hash_one(name),
            |o| name_of(o) == name,
            |o| hasher.hash_one(name_of(o)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = object,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(object);
            }
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn values(&self) -> impl Iterator<Item = &Object> {
        self.table.iter()
    }

    /// Every object, mutably: an owner may be replaced only by one of the
    /// same namespace and name (its place in the table depends on them).
    fn values_mut(&mut self) -> impl Iterator<Item = &mut Object> {
        self.table.iter_mut()
    }
}

#[derive(Default)]
struct Inner {
    /// Usually one entry per id; a Vec only for the (71-bit random, so
    /// practically impossible) case of two keys with the same id.
    by_key_id: HashMap<KeyId, Vec<KeyEntry>>,
    by_object: Objects,
    /// The CredentialGrants every IndexedApiKey was computed with.
    grants: Arc<Grants>,
    /// Keys that left the index (or that a revoked ApiKey lists), to count
    /// when presented.
    retired: RetiredKeys,
    /// Rate limits shared through Redis (`--rate-limit-redis-url`).
    shared: Option<Arc<Settlements>>,
}

/// The index, shared by every request handler.
#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
    synced: AtomicBool,
    /// Set until the first list of CredentialGrants is in (when the server
    /// feeds grants): not synced before, so nothing is honoured ungranted.
    grants_pending: AtomicBool,
}

/// Builds an index from a full list (the watch's initial list, or a re-list).
#[derive(Default)]
pub struct Rebuild {
    inner: Inner,
}

impl Rebuild {
    pub fn apply(&mut self, api_key: &ApiKey, previous: Option<&Index>) {
        if let Some(p) = previous {
            let grants = p.grants();
            // Grants that changed in the middle of a list re-compute what
            // this rebuild holds already: [`Index::replace`] compares only
            // the last grants, so an ApiKey computed under older ones would
            // otherwise keep claims the grants in force do not give.
            if !Arc::ptr_eq(&grants, &self.inner.grants) {
                self.inner.grants = grants;
                regrant_all(&mut self.inner);
            }
        }
        if let Some(p) = previous {
            self.inner
                .shared
                .clone_from(&p.inner.read().expect("index lock").shared);
        }
        let carried = previous.map(|p| p.carried(api_key)).unwrap_or_default();
        upsert(&mut self.inner, api_key, carried);
    }
}

impl Index {
    /// Whether the first full list has been loaded.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) && !self.grants_pending.load(Ordering::Acquire)
    }

    /// Replaces the whole index with a finished rebuild (re-computed under
    /// the grants in force if they changed meanwhile).
    pub fn replace(&self, mut rebuild: Rebuild) {
        let mut inner = self.inner.write().expect("index lock");
        if !Arc::ptr_eq(&rebuild.inner.grants, &inner.grants) {
            rebuild.inner.grants = inner.grants.clone();
            regrant_all(&mut rebuild.inner);
        }
        // What this replica saw retired survives a re-list.
        let mut retired = std::mem::take(&mut inner.retired);
        retired.merge_from(std::mem::take(&mut rebuild.inner.retired));
        let objects = &rebuild.inner.by_object;
        retired.retain_objects(|o| objects.contains_key(o));
        rebuild.inner.retired = retired;
        rebuild.inner.shared = inner.shared.clone();
        *inner = rebuild.inner;
        self.synced.store(true, Ordering::Release);
    }

    /// Rate limits shared through `settlements` (before the first ApiKey).
    pub fn share_rate_limits(&self, settlements: Arc<Settlements>) {
        self.inner.write().expect("index lock").shared = Some(settlements);
    }

    /// The index will not be ready until [`set_grants`](Self::set_grants)
    /// is first called.
    pub fn await_grants(&self) {
        self.grants_pending.store(true, Ordering::Release);
    }

    /// New CredentialGrants: every ApiKey's identity is re-computed, under
    /// the read lock (requests go on meanwhile), then swapped in under the
    /// write lock; an ApiKey that changed in between is re-computed there.
    pub fn set_grants(&self, grants: Arc<Grants>) {
        // In the map's iteration order, which stays the same unless an
        // ApiKey is added or removed in between (then the rest is
        // re-computed under the write lock: correct, only slower).
        let fresh: Vec<(Arc<IndexedApiKey>, Arc<IndexedApiKey>)> = {
            let inner = self.inner.read().expect("index lock");
            inner
                .by_object
                .values()
                .map(|(owner, _)| (owner.clone(), Arc::new(regranted(owner, &grants))))
                .collect()
        };
        let mut inner = self.inner.write().expect("index lock");
        inner.grants = grants.clone();
        let mut fresh = fresh.iter();
        swap_owners(&mut inner, |owner| match fresh.next() {
            Some((old, new)) if Arc::ptr_eq(old, owner) => new.clone(),
            _ => Arc::new(regranted(owner, &grants)),
        });
        self.grants_pending.store(false, Ordering::Release);
    }

    /// The CredentialGrants in force.
    pub fn grants(&self) -> Arc<Grants> {
        self.inner.read().expect("index lock").grants.clone()
    }

    /// The namespace of the ApiKey that lists `key_id` (for `/introspect`
    /// of a token by its `client_id`).
    pub fn namespace_of(&self, key_id: &KeyId) -> Option<String> {
        let inner = self.inner.read().expect("index lock");
        let entries = inner.by_key_id.get(key_id)?;
        entries.first().map(|e| e.owner.namespace().to_owned())
    }

    /// A new or changed ApiKey.
    pub fn apply(&self, api_key: &ApiKey) {
        let mut inner = self.inner.write().expect("index lock");
        let carried = carried(&inner, api_key);
        upsert(&mut inner, api_key, carried);
    }

    /// A deleted ApiKey.
    pub fn delete(&self, api_key: &ApiKey) {
        let mut inner = self.inner.write().expect("index lock");
        let name = namespaced_name(api_key);
        remove(&mut inner, &name);
        inner.retired.forget(&name);
        shrink_if_sparse(&mut inner);
    }

    /// The ApiKey that recently retired the key with this id and hash (a
    /// key out of status after its grace period, or of a revoked ApiKey).
    pub fn retired_owner(&self, key_id: &KeyId, sha256: &[u8; 32]) -> Option<Arc<IndexedApiKey>> {
        let inner = self.inner.read().expect("index lock");
        let name = inner.retired.owner_of(key_id, sha256)?;
        inner.by_object.get(name).map(|(o, _)| o.clone())
    }

    /// Every indexed ApiKey with the counters of the keys it lists (for the
    /// usage writer).
    pub fn flush_view(&self) -> Vec<FlushView> {
        let inner = self.inner.read().expect("index lock");
        inner
            .by_object
            .values()
            .map(|(owner, ids)| (owner.clone(), counters_of(&inner, owner, ids).collect()))
            .collect()
    }

    /// The key listed under `key_id` whose hash is `sha256`, compared in
    /// constant time (with every entry under that id, usually one).
    pub fn find(&self, key_id: &KeyId, sha256: &[u8; 32]) -> Option<KeyEntry> {
        let inner = self.inner.read().expect("index lock");
        let entries = inner.by_key_id.get(key_id)?;
        let mut found = None;
        for entry in entries {
            if bool::from(entry.sha256.ct_eq(sha256)) {
                found = Some(entry.clone());
            }
        }
        found
    }

    /// `f` of the key listed under `key_id` whose hash is `sha256` (compared
    /// in constant time), run under the read lock: the request path takes no
    /// shared reference count out of the index.
    pub fn find_with<R>(
        &self,
        key_id: &KeyId,
        sha256: &[u8; 32],
        f: impl FnOnce(&KeyEntry) -> R,
    ) -> Option<R> {
        let inner = self.inner.read().expect("index lock");
        let entries = inner.by_key_id.get(key_id)?;
        let mut found = None;
        for entry in entries {
            if bool::from(entry.sha256.ct_eq(sha256)) {
                found = Some(entry);
            }
        }
        found.map(f)
    }

    /// Whether some key listed under `key_id` is valid at `now` (the check a
    /// token makes of the API key that obtained it).
    pub fn key_id_valid(&self, key_id: &KeyId, now: Timestamp) -> bool {
        let inner = self.inner.read().expect("index lock");
        inner
            .by_key_id
            .get(key_id)
            .is_some_and(|entries| entries.iter().any(|e| !e.valid_until.passed(now)))
    }

    /// Whether some key listed under `key_id` is valid at `now` and its
    /// ApiKey passes `admitted` (a token's check that its policy admits the
    /// key that obtained it).
    pub fn key_id_valid_where(
        &self,
        key_id: &KeyId,
        now: Timestamp,
        admitted: impl Fn(&IndexedApiKey) -> bool,
    ) -> bool {
        let inner = self.inner.read().expect("index lock");
        inner.by_key_id.get(key_id).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| !e.valid_until.passed(now) && admitted(&e.owner))
        })
    }

    /// `f` of a key listed under `key_id` that is valid at `now` (the key
    /// that minted a token: its `client_id`), under the read lock. `None`
    /// when no key under that id is valid.
    pub fn find_valid_with<R>(
        &self,
        key_id: &KeyId,
        now: Timestamp,
        f: impl FnOnce(&KeyEntry) -> R,
    ) -> Option<R> {
        let inner = self.inner.read().expect("index lock");
        let entries = inner.by_key_id.get(key_id)?;
        entries.iter().find(|e| !e.valid_until.passed(now)).map(f)
    }

    /// Number of keys and of ApiKeys indexed.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.read().expect("index lock");
        (
            inner.by_key_id.values().map(Vec::len).sum(),
            inner.by_object.len(),
        )
    }

    /// Every indexed ApiKey (for the lastUsedAt writer).
    pub fn owners(&self) -> Vec<Arc<IndexedApiKey>> {
        let inner = self.inner.read().expect("index lock");
        inner.by_object.values().map(|(o, _)| o.clone()).collect()
    }

    fn carried(&self, api_key: &ApiKey) -> Carried {
        carried(&self.inner.read().expect("index lock"), api_key)
    }
}

/// What a new version of an ApiKey takes over from the one indexed: its
/// usage (bucket, last use, retired count) and its keys' counters.
#[derive(Default)]
struct Carried {
    usage: Option<Arc<Usage>>,
    counters: HashMap<KeyId, Arc<KeyCounters>>,
}

fn carried(inner: &Inner, api_key: &ApiKey) -> Carried {
    let Some((owner, ids)) = inner.by_object.get(&namespaced_name(api_key)) else {
        return Carried::default();
    };
    Carried {
        usage: Some(owner.usage.clone()),
        counters: counters_of(inner, owner, ids).collect(),
    }
}

fn counters_of<'a>(
    inner: &'a Inner,
    owner: &'a Arc<IndexedApiKey>,
    ids: &'a [KeyId],
) -> impl Iterator<Item = (KeyId, Arc<KeyCounters>)> + 'a {
    ids.iter().filter_map(move |id| {
        let entry = inner
            .by_key_id
            .get(id)?
            .iter()
            .find(|e| Arc::ptr_eq(&e.owner, owner))?;
        Some((*id, entry.counters.clone()))
    })
}

fn namespaced_name(api_key: &ApiKey) -> NamespacedName {
    format!(
        "{}/{}",
        api_key.metadata.namespace.as_deref().unwrap_or_default(),
        api_key.metadata.name.as_deref().unwrap_or_default()
    )
    .into()
}

/// Tables at most a quarter full (after deletions) are halved and more, so
/// that an index that held many keys gives their tables back (each halving
/// follows as many deletions as the table holds: linear overall).
fn shrink_if_sparse(inner: &mut Inner) {
    const SMALLEST: usize = 1024;
    let sparse = |len: usize, capacity: usize| capacity > SMALLEST && len * 4 < capacity;
    if sparse(inner.by_key_id.len(), inner.by_key_id.capacity()) {
        inner.by_key_id.shrink_to(inner.by_key_id.len() * 2);
    }
    let objects = &mut inner.by_object;
    if sparse(objects.table.len(), objects.table.capacity()) {
        let Objects { table, hasher } = objects;
        table.shrink_to(table.len() * 2, |o| hasher.hash_one(name_of(o)));
    }
}

/// Removes an ApiKey's keys; returns each key's id and hash.
fn remove(inner: &mut Inner, name: &NamespacedName) -> Vec<(KeyId, [u8; 32])> {
    let Some((owner, ids)) = inner.by_object.remove(name) else {
        return Vec::new();
    };
    let mut removed = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(entries) = inner.by_key_id.get_mut(&id) {
            for e in entries.iter().filter(|e| Arc::ptr_eq(&e.owner, &owner)) {
                removed.push((id, e.sha256));
            }
            entries.retain(|e| !Arc::ptr_eq(&e.owner, &owner));
            if entries.is_empty() {
                inner.by_key_id.remove(&id);
            }
        }
    }
    removed
}

fn parse_record(id: &str, sha256: &str) -> Option<(KeyId, [u8; 32])> {
    let id = KeyId::try_from(id.as_bytes()).ok()?;
    let hash = <[u8; 32]>::try_from(hex::decode(sha256).ok()?).ok()?;
    Some((id, hash))
}

/// `value` as a header value; one a header cannot carry becomes empty.
pub(crate) fn header(value: &str) -> HeaderValue {
    // Subjects, scopes and names are restricted by the CRD to visible ASCII;
    // anything else becomes an empty header rather than a failed request.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Re-computes every IndexedApiKey under `inner.grants`.
fn regrant_all(inner: &mut Inner) {
    let grants = inner.grants.clone();
    swap_owners(inner, |owner| Arc::new(regranted(owner, &grants)));
}

/// Replaces every IndexedApiKey by `fresh(owner)` (called in the map's iteration
/// order), in both maps.
fn swap_owners(inner: &mut Inner, mut fresh: impl FnMut(&Arc<IndexedApiKey>) -> Arc<IndexedApiKey>) {
    let Inner {
        by_key_id, by_object, ..
    } = inner;
    for (owner, ids) in by_object.values_mut() {
        let fresh = fresh(owner);
        debug_assert_eq!(fresh.identity.namespaced_name(), owner.identity.namespaced_name());
        for id in ids.iter() {
            for entry in by_key_id.get_mut(id).into_iter().flatten() {
                if Arc::ptr_eq(&entry.owner, owner) {
                    entry.owner = fresh.clone();
                }
            }
        }
        *owner = fresh;
    }
}

fn upsert(inner: &mut Inner, api_key: &ApiKey, carried: Carried) {
    let name_in_index = namespaced_name(api_key);
    let before = remove(inner, &name_in_index);
    let rate_limit = api_key.spec.rate_limit.clone();
    let share = || inner.shared.as_ref().and_then(|s| share_of(s, api_key));
    let share_wanted = inner.shared.is_some() && rate_limit.is_some();
    let usage = match carried.usage {
        Some(u) if u.rate_limit == rate_limit && u.share.is_some() == share_wanted => u,
        Some(u) => {
            let mut fresh = Usage::new(rate_limit, share());
            fresh
                .last_used
                .store(u.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
            fresh.retired = u.retired.clone();
            Arc::new(fresh)
        }
        None => Arc::new(Usage::new(rate_limit, share())),
    };
    let status = api_key.status.as_ref();
    let stored_usage: Box<[(KeyId, StoredUsage)]> = status
        .into_iter()
        .flat_map(|s| s.key_usage.iter())
        .filter_map(|(id, u)| Some((KeyId::try_from(id.as_bytes()).ok()?, StoredUsage::from(u))))
        .collect();
    let stale_usage: Box<[Box<str>]> = status
        .into_iter()
        .flat_map(|s| {
            s.key_usage
                .keys()
                .filter(|id| !s.listed_ids().any(|l| l == id.as_str()))
        })
        .map(|id| id.as_str().into())
        .collect();
    let stored_retired = status
        .and_then(|s| s.retired_key_presented.as_ref())
        .map_or((0, 0), |r| {
            (
                r.count,
                r.last_presented_at.as_ref().map_or(0, |t| t.0.as_second()),
            )
        });
    let (namespace, name) = (
        api_key.metadata.namespace.as_deref().unwrap_or_default(),
        api_key.metadata.name.as_deref().unwrap_or_default(),
    );
    let claimed = Claimed::of(api_key);
    let resource_version = api_key.metadata.resource_version.as_deref().unwrap_or_default();
    let granted = granted(&inner.grants, namespace, name, resource_version, claimed);
    let owner = Arc::new(IndexedApiKey {
        identity: granted.identity,
        audiences: granted.audiences,
        usage,
        status_last_used: status
            .and_then(|s| s.last_used_at.as_ref())
            .map(|t| t.0.as_second()),
        stored_usage,
        stale_usage,
        stored_retired,
        token_policy: api_key
            .spec
            .token_policy_ref
            .as_ref()
            .map(|r| r.name.as_str().into()),
        labels: api_key
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect(),
        claimed: granted.claimed,
    });
    let mut ids = Vec::new();
    for (record, valid_until) in validity::all_keys(api_key) {
        let Some((id, hash)) = parse_record(&record.id, &record.sha256) else {
            continue;
        };
        inner.retired.unretire(&id);
        inner
            .by_key_id
            .entry(id)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(KeyEntry {
                sha256: hash,
                valid_until: ValidUntil::new(valid_until),
                owner: owner.clone(),
                counters: carried.counters.get(&id).cloned().unwrap_or_default(),
            });
        ids.push(id);
    }
    // Keys the previous version listed and this one does not (grace over,
    // revoked), and a revoked ApiKey's keys: remembered as retired.
    let unlisted = status
        .into_iter()
        .flat_map(|s| s.records())
        .filter_map(|r| parse_record(&r.id, &r.sha256));
    for (id, hash) in before.into_iter().chain(unlisted) {
        if !ids.contains(&id) {
            inner.retired.retire(id, hash, &name_in_index);
        }
    }
    debug_assert_eq!(owner.identity.namespaced_name(), &*name_in_index);
    inner.by_object.insert((owner, ids.into_boxed_slice()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::api_key_with;
    use crate::key::ApiKeyValue;

    fn id(k: &ApiKeyValue) -> KeyId {
        KeyId::try_from(k.key_id().as_bytes()).unwrap()
    }

    fn hash(k: &ApiKeyValue) -> [u8; 32] {
        <[u8; 32]>::try_from(hex::decode(k.sha256_hex()).unwrap()).unwrap()
    }

    #[test]
    fn apply_update_and_delete() {
        let index = Index::default();
        let (a, b) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let ak = api_key_with("billing", &[(&a, None)]);
        index.apply(&ak);
        let lookup = |k: &ApiKeyValue| index.find(&id(k), &hash(k));
        let entry = lookup(&a).unwrap();
        assert_eq!(hex::encode(entry.sha256), a.sha256_hex());
        assert_eq!(entry.owner.subject(), "shop/billing");
        assert_eq!(entry.owner.scopes_text(), "orders:read orders:write");

        // A rotation: b current, a in grace. The usage state survives.
        entry.owner.usage.last_used.store(42, Ordering::Relaxed);
        let until = Timestamp::from_second(2_000_000_000).unwrap();
        index.apply(&api_key_with("billing", &[(&b, None), (&a, Some(until))]));
        assert_eq!(index.len(), (2, 1));
        let old = lookup(&a).unwrap();
        assert_eq!(old.valid_until.second(), Some(until.as_second()));
        assert_eq!(old.owner.usage.last_used.load(Ordering::Relaxed), 42);

        // Revoked: no key left.
        let mut revoked = api_key_with("billing", &[(&b, None), (&a, Some(until))]);
        revoked.spec.revoked = Some(true);
        index.apply(&revoked);
        assert!(lookup(&a).is_none() && lookup(&b).is_none());

        index.apply(&api_key_with("billing", &[(&b, None)]));
        index.delete(&api_key_with("billing", &[]));
        assert_eq!(index.len(), (0, 0));
    }

    #[test]
    fn tables_shrink_after_deletions_and_the_keys_left_are_found() {
        let index = Index::default();
        let keys: Vec<ApiKeyValue> = (0..5000).map(|_| ApiKeyValue::generate()).collect();
        let objects: Vec<ApiKey> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| api_key_with(&format!("k-{i}"), &[(k, None)]))
            .collect();
        for o in &objects {
            index.apply(o);
        }
        let capacities = |index: &Index| {
            let inner = index.inner.read().unwrap();
            (inner.by_key_id.capacity(), inner.by_object.table.capacity())
        };
        let full = capacities(&index);
        assert!(full.0 >= 5000 && full.1 >= 5000, "{full:?}");
        for o in &objects[10..] {
            index.delete(o);
        }
        assert_eq!(index.len(), (10, 10));
        let left = capacities(&index);
        assert!(left.0 <= 1024 * 2 && left.1 <= 1024 * 2, "{full:?} -> {left:?}");
        for (k, o) in keys.iter().zip(&objects).take(10) {
            let entry = index.find(&id(k), &hash(k)).unwrap();
            assert_eq!(entry.owner.name(), o.metadata.name.as_deref().unwrap());
        }
        // And they grow again as keys come back.
        for o in &objects[10..] {
            index.apply(o);
        }
        assert_eq!(index.len(), (5000, 5000));
        assert!(keys.iter().all(|k| index.find(&id(k), &hash(k)).is_some()));
    }

    fn grant(namespaces: &[&str], scopes: &[&str]) -> Arc<Grants> {
        let spec = crate::crd::CredentialGrantSpec {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Arc::new(Grants::new(vec![("g".into(), spec)], false))
    }

    #[test]
    fn grants_narrow_what_an_api_key_is_honoured_with_and_changes_recompute_it() {
        let index = Index::default();
        index.await_grants();
        let a = ApiKeyValue::generate();
        let mut ak = api_key_with("billing", &[(&a, None)]);
        ak.spec.subject = Some("orders-svc".into());
        ak.spec.audiences = vec!["orders.example.com".into()];
        let mut rebuild = Rebuild::default();
        rebuild.apply(&ak, Some(&index));
        index.replace(rebuild);
        assert!(!index.is_synced(), "not ready before the first list of grants");
        let lookup = || index.find(&id(&a), &hash(&a)).unwrap().owner;
        // A grant for shop: orders:read only, no subject, no audience.
        lookup().usage.last_used.store(7, Ordering::Relaxed);
        index.set_grants(grant(&["shop"], &["orders:read"]));
        assert!(index.is_synced());
        let owner = lookup();
        assert_eq!(owner.scopes_text(), "orders:read");
        assert_eq!(
            owner.subject(),
            "shop/billing",
            "the ungranted subject falls back"
        );
        assert!(
            !owner.audiences.is_empty() && owner.audiences.iter().all(|a| a.is_empty()),
            "valid for no audience, never for every one: {:?}",
            owner.audiences
        );
        assert_eq!(owner.usage.last_used.load(Ordering::Relaxed), 7, "usage survives");
        assert!(index.owners().iter().all(|o| Arc::ptr_eq(o, &owner)));
        // A grant for another namespace only: shop is open again.
        index.set_grants(grant(&["other"], &[]));
        let owner = lookup();
        assert_eq!(owner.scopes_text(), "orders:read orders:write");
        assert_eq!(owner.subject(), "orders-svc");
        assert_eq!(&*owner.audiences, [Box::<str>::from("orders.example.com")]);
        // An apply under grants uses them; a rebuild made under old grants is re-computed.
        let mut stale = Rebuild::default();
        stale.apply(&ak, None);
        index.set_grants(grant(&["shop"], &["orders:write"]));
        index.replace(stale);
        assert_eq!(lookup().scopes_text(), "orders:write");
        index.apply(&ak);
        assert_eq!(lookup().scopes_text(), "orders:write");
        assert_eq!(index.namespace_of(&id(&a)).as_deref(), Some("shop"));
        // The claims are kept apart only while the grants change them.
        assert!(matches!(lookup().claimed, ClaimedAs::Apart(_)));
        index.set_grants(grant(&["other"], &[]));
        assert!(matches!(
            lookup().claimed,
            ClaimedAs::Granted {
                subject_claimed: true
            }
        ));
        assert_eq!(*lookup().claimed(), Claimed::of(&ak));
    }

    #[test]
    fn grants_that_arrive_in_the_middle_of_a_list_reach_the_api_keys_listed_before_them() {
        // The CI failure of stop 21: a strict server whose first list of
        // grants arrived while the ApiKeys were being listed honoured the
        // keys listed before it with every claim of their spec.
        let index = Index::default();
        index.await_grants();
        let (a, b) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let mut rebuild = Rebuild::default();
        rebuild.apply(&api_key_with("before", &[(&a, None)]), Some(&index));
        index.set_grants(Arc::new(Grants::new(Vec::new(), true)));
        rebuild.apply(&api_key_with("after", &[(&b, None)]), Some(&index));
        index.replace(rebuild);
        assert!(index.is_synced());
        for k in [&a, &b] {
            assert_eq!(
                index.find(&id(k), &hash(k)).unwrap().owner.scopes_text(),
                "",
                "strict mode without a grant: no scope"
            );
        }
    }

    #[test]
    fn a_rebuild_replaces_everything_and_marks_synced() {
        let index = Index::default();
        assert!(!index.is_synced());
        let (a, b) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        index.apply(&api_key_with("gone", &[(&a, None)]));
        let mut rebuild = Rebuild::default();
        rebuild.apply(&api_key_with("kept", &[(&b, None)]), Some(&index));
        index.replace(rebuild);
        assert!(index.is_synced());
        assert!(index.find(&id(&a), &hash(&a)).is_none());
        assert!(index.find(&id(&b), &hash(&b)).is_some());
        // Right id, wrong hash.
        assert!(index.find(&id(&b), &hash(&a)).is_none());
    }
}
