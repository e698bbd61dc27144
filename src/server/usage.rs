//! The usage the auth server writes into ApiKey status: `lastUsedAt` (the
//! ApiKey's), `keyUsage` (per key id: `lastUsedAt`, `allowed`, `denied` by
//! reason) and `retiredKeyPresented`.
//!
//! Each request only touches atomics of its ApiKey's entry and of its key
//! ([`super::counters`]). Every `--last-used-flush-seconds` (60 by default)
//! a writer looks at each ApiKey and, when something is due, writes it with
//! one JSON merge patch on the status subresource that carries the
//! `metadata.resourceVersion` the watch saw (an optimistic lock; field
//! manager `latchkey`, operation Update, so the controller's Server-Side
//! Apply of status neither owns nor removes these fields, and the controller
//! never writes them). Due is:
//! - a `lastUsedAt` (the ApiKey's or a key's) at least [`MIN_STEP`] newer
//!   than the stored one;
//! - counts not written yet (allowed, denied, retired keys presented): the
//!   stored value plus this replica's delta is written, and the delta is
//!   subtracted only once the write succeeded;
//! - a `keyUsage` entry whose key status no longer lists (set to `null`).
//!
//! With several replicas a replica whose view is stale gets `409 Conflict`
//! and skips the round, keeping its deltas: nothing goes backwards, no count
//! is added twice or lost. A replica that stops (SIGTERM) flushes once more
//! after its listeners stop ([`run`]); one that dies loses what it counted
//! since its last write: at most one flush interval of its share.

use super::counters::{Deltas, KeyCounters};
use super::index::{Index, IndexedApiKey, KeyId, StoredUsage};
use crate::crd::ApiKey;
use crate::meta::FIELD_MANAGER;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A use is written only when it is this much newer than the stored one.
pub const MIN_STEP: i64 = 60;

/// The lastUsedAt to write for `owner`, if any.
pub fn due(owner: &IndexedApiKey, min_step: i64) -> Option<Timestamp> {
    newer(
        owner.usage.last_used.load(Ordering::Relaxed),
        owner.status_last_used,
        min_step,
    )
}

/// `used` when it is at least `min_step` newer than `stored` (never backwards).
fn newer(used: i64, stored: Option<i64>, min_step: i64) -> Option<Timestamp> {
    if used == 0 {
        return None;
    }
    let newer = stored
        .filter(|s| *s != 0)
        .is_none_or(|seen| used >= seen + min_step);
    newer.then(|| Timestamp::from_second(used).ok()).flatten()
}

/// One ApiKey's write: the merge patch, and what to subtract once it is in.
#[derive(Debug)]
pub struct Flush {
    pub patch: Value,
    pub keys: Vec<(Arc<KeyCounters>, Deltas)>,
    pub retired: u64,
}

impl Flush {
    /// The write reached the API server: its counts are no longer deltas.
    pub fn written(&self, owner: &IndexedApiKey) {
        for (counters, deltas) in &self.keys {
            counters.written(deltas);
        }
        owner
            .usage
            .retired
            .count
            .fetch_sub(self.retired, Ordering::Relaxed);
    }
}

/// What to write for `owner`, whose listed keys have `keys`' counters, if
/// anything is due.
pub fn plan_flush(owner: &IndexedApiKey, keys: &[(KeyId, Arc<KeyCounters>)], min_step: i64) -> Option<Flush> {
    let mut status = Map::new();
    if let Some(at) = due(owner, min_step) {
        status.insert("lastUsedAt".into(), at.to_string().into());
    }
    let mut key_usage = Map::new();
    let mut taken = Vec::new();
    for (id, counters) in keys {
        let stored = owner
            .stored_usage
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, u)| *u)
            .unwrap_or_default();
        let last = newer(
            counters.last_used.load(Ordering::Relaxed),
            Some(stored.last_used),
            min_step,
        );
        let deltas = counters.deltas();
        if last.is_none() && deltas.is_empty() {
            continue;
        }
        let mut entry = entry_with(&stored, &deltas);
        if let Some(at) = last {
            entry.insert("lastUsedAt".into(), at.to_string().into());
        }
        key_usage.insert(String::from_utf8_lossy(id).into_owned(), entry.into());
        taken.push((counters.clone(), deltas));
    }
    for id in &owner.stale_usage {
        key_usage.insert(id.to_string(), Value::Null);
    }
    if !key_usage.is_empty() {
        status.insert("keyUsage".into(), key_usage.into());
    }
    let retired = &owner.usage.retired;
    let presented = retired.count.load(Ordering::Relaxed);
    if presented > 0 {
        let (count, last_at) = owner.stored_retired;
        let last_at = last_at.max(retired.last_at.load(Ordering::Relaxed));
        let mut value = Map::new();
        value.insert("count".into(), (count.saturating_add(presented as i64)).into());
        if let Ok(at) = Timestamp::from_second(last_at) {
            value.insert("lastPresentedAt".into(), at.to_string().into());
        }
        if let Some(id) = *retired.last_key.lock().expect("retired lock") {
            value.insert(
                "lastKeyId".into(),
                String::from_utf8_lossy(&id).into_owned().into(),
            );
        }
        status.insert("retiredKeyPresented".into(), value.into());
    }
    if status.is_empty() {
        return None;
    }
    Some(Flush {
        patch: json!({
            "metadata": {"resourceVersion": owner.identity.resource_version()},
            "status": status,
        }),
        keys: taken,
        retired: presented,
    })
}

/// A `keyUsage` entry's counts: the stored ones plus this replica's.
fn entry_with(stored: &StoredUsage, deltas: &Deltas) -> Map<String, Value> {
    let add = |s: i64, d: u64| s.saturating_add(d as i64);
    let mut denied = Map::new();
    for (why, (s, d)) in super::counters::Denied::ALL
        .iter()
        .zip(stored.denied.iter().zip(deltas.denied))
    {
        denied.insert(why.field().into(), add(*s, d).into());
    }
    let mut entry = Map::new();
    entry.insert("allowed".into(), add(stored.allowed, deltas.allowed).into());
    entry.insert("denied".into(), denied.into());
    entry
}

/// Writes due usage every `every`; once `stop` completes (the listeners
/// have stopped: no request counts any more), one last round, then returns.
/// A round is never cut short, so a write the API server applied is never
/// kept as a delta (and added again): the final round is what makes a
/// graceful shutdown (a rolling update) lose no count.
pub async fn run(client: Client, index: Arc<Index>, every: Duration, stop: impl Future<Output = ()>) {
    // A flush interval below a minute (tests) lowers the step with it.
    let min_step = MIN_STEP.min(every.as_secs().max(1) as i64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = &mut stop => true,
        };
        if !last {
            flush_round(&client, &index, min_step).await;
            continue;
        }
        // A conflict (another replica wrote meanwhile) is retried from the
        // watch's newer view, a few times.
        for attempt in 1..=FINAL_ROUNDS {
            if flush_round(&client, &index, min_step).await {
                tracing::debug!(attempt, "usage flushed a last time");
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::warn!(
            "the last usage flush met conflicts: some usage counted since the previous flush is lost"
        );
        return;
    }
}

/// How many rounds the last flush tries while writes conflict.
const FINAL_ROUNDS: u32 = 3;

/// One round: every ApiKey with due usage, one merge patch each. Whether
/// every write that was due succeeded (a deleted ApiKey counts as done).
async fn flush_round(client: &Client, index: &Index, min_step: i64) -> bool {
    let mut all_written = true;
    for (owner, keys) in index.flush_view() {
        let Some(flush) = plan_flush(&owner, &keys, min_step) else {
            continue;
        };
        let api: Api<ApiKey> = Api::namespaced(client.clone(), owner.namespace());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api
            .patch_status(owner.name(), &params, &Patch::Merge(&flush.patch))
            .await
        {
            Ok(_) => {
                flush.written(&owner);
                tracing::debug!(
                    namespace = owner.namespace(),
                    name = owner.name(),
                    // Key ids and counts, never a key or hash.
                    usage = %flush.patch["status"],
                    "recorded usage"
                )
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Deleted: nothing to record.
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Changed since the watch saw it: the next round decides
                // again from the newer version, with the deltas kept.
                all_written = false;
            }
            Err(err) => {
                all_written = false;
                tracing::warn!(
                    namespace = owner.namespace(),
                    name = owner.name(),
                    error = %err,
                    "could not record usage"
                )
            }
        }
    }
    all_written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApiKeySpec, ApiKeyStatus, DeniedCounts, KeyRecord, KeyUsage, RetiredKeyPresented};
    use crate::key::ApiKeyValue;
    use crate::server::counters::Denied;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn record(key: &ApiKeyValue, until: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: key.key_id().into(),
            sha256: key.sha256_hex(),
            issued_at: Time(Timestamp::UNIX_EPOCH),
            valid_until: until.map(time),
        }
    }

    /// The ApiKey `ns/k` listing `current` (and `previous`), as the watch
    /// delivers it with `status`'s usage fields, indexed.
    fn indexed(
        index: &Index,
        current: &ApiKeyValue,
        previous: Option<&ApiKeyValue>,
        usage: ApiKeyStatus,
    ) -> ApiKey {
        let mut ak = ApiKey::new("k", ApiKeySpec::default());
        ak.metadata.namespace = Some("ns".into());
        ak.metadata.resource_version = Some("7".into());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(record(current, None)),
            previous_keys: previous
                .map(|p| record(p, Some(4_000_000_000)))
                .into_iter()
                .collect(),
            ..usage
        });
        index.apply(&ak);
        ak
    }

    fn view(index: &Index) -> (Arc<IndexedApiKey>, Vec<(KeyId, Arc<KeyCounters>)>) {
        index.flush_view().pop().unwrap()
    }

    fn counters(keys: &[(KeyId, Arc<KeyCounters>)], key: &ApiKeyValue) -> Arc<KeyCounters> {
        keys.iter()
            .find(|(i, _)| *i == key.key_id().as_bytes())
            .unwrap()
            .1
            .clone()
    }

    fn owner(index: &Index, last_used_at: Option<i64>) -> Arc<IndexedApiKey> {
        let key = ApiKeyValue::generate();
        let usage = ApiKeyStatus {
            last_used_at: last_used_at.map(time),
            ..Default::default()
        };
        indexed(index, &key, None, usage);
        index.owners().pop().unwrap()
    }

    #[test]
    fn a_use_is_written_once_it_is_a_step_newer_than_the_stored_one() {
        let index = Index::default();
        let o = owner(&index, None);
        assert_eq!(due(&o, 60), None, "never used here");
        o.usage.last_used.store(1_000, Ordering::Relaxed);
        assert_eq!(due(&o, 60), Timestamp::from_second(1_000).ok());

        let o = owner(&index, Some(1_000));
        o.usage.last_used.store(1_059, Ordering::Relaxed);
        assert_eq!(due(&o, 60), None, "less than a minute newer");
        o.usage.last_used.store(1_060, Ordering::Relaxed);
        assert!(due(&o, 60).is_some());
        // Another replica stored a later time: never backwards.
        let o = owner(&index, Some(5_000));
        assert_eq!(
            o.usage.last_used.load(Ordering::Relaxed),
            1_060,
            "usage survives updates"
        );
        assert_eq!(due(&o, 60), None);
    }

    #[test]
    fn only_the_key_used_moves_and_counts_add_to_the_stored_ones() {
        let index = Index::default();
        let (new, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let mut stored = ApiKeyStatus::default();
        stored.key_usage.insert(
            old.key_id().into(),
            KeyUsage {
                last_used_at: Some(time(1_000)),
                allowed: 40,
                denied: DeniedCounts {
                    scope: 2,
                    ..Default::default()
                },
            },
        );
        indexed(&index, &new, Some(&old), stored.clone());
        let (o, keys) = view(&index);
        assert!(plan_flush(&o, &keys, 60).is_none(), "nothing happened here");
        let c = counters(&keys, &old);
        c.allow(1_030);
        c.deny(Denied::Scope);
        c.deny(Denied::RateLimited);
        let flush = plan_flush(&o, &keys, 60).unwrap();
        let usage = &flush.patch["status"]["keyUsage"];
        assert_eq!(
            flush.patch["metadata"]["resourceVersion"], "7",
            "the optimistic lock"
        );
        assert!(usage.get(new.key_id()).is_none(), "the new key was not used");
        let entry = &usage[old.key_id()];
        assert_eq!(entry["allowed"], 41);
        assert_eq!(entry["denied"]["scope"], 3);
        assert_eq!(entry["denied"]["rateLimited"], 1);
        assert!(
            entry.get("lastUsedAt").is_none(),
            "less than a step newer: counts only"
        );
        // Another replica wrote a later time and more counts meanwhile: the
        // write was refused (409), the deltas stay and go on the new view.
        stored.key_usage.get_mut(old.key_id()).unwrap().allowed = 100;
        stored.key_usage.get_mut(old.key_id()).unwrap().last_used_at = Some(time(2_000));
        indexed(&index, &new, Some(&old), stored.clone());
        let (o, keys) = view(&index);
        c.allow(1_070);
        let flush = plan_flush(&o, &keys, 60).unwrap();
        let entry = &flush.patch["status"]["keyUsage"][old.key_id()];
        assert_eq!(entry["allowed"], 102);
        assert!(entry.get("lastUsedAt").is_none(), "never backwards: 1070 < 2000");
        flush.written(&o);
        assert!(c.deltas().is_empty(), "written: nothing left to add");
        c.allow(2_060);
        let flush = plan_flush(&o, &keys, 60).unwrap();
        let entry = &flush.patch["status"]["keyUsage"][old.key_id()];
        assert_eq!(
            entry["lastUsedAt"],
            Timestamp::from_second(2_060).unwrap().to_string()
        );
    }

    #[test]
    fn entries_of_keys_that_left_status_are_pruned() {
        let index = Index::default();
        let (cur, gone) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let mut stored = ApiKeyStatus::default();
        stored.key_usage.insert(gone.key_id().into(), KeyUsage::default());
        stored.key_usage.insert(cur.key_id().into(), KeyUsage::default());
        indexed(&index, &cur, None, stored);
        let (o, keys) = view(&index);
        let flush = plan_flush(&o, &keys, 60).unwrap();
        let usage = &flush.patch["status"]["keyUsage"];
        assert_eq!(usage[gone.key_id()], Value::Null);
        assert!(usage.get(cur.key_id()).is_none());
    }

    #[test]
    fn retired_keys_presented_add_to_the_stored_count() {
        let index = Index::default();
        let (cur, old) = (ApiKeyValue::generate(), ApiKeyValue::generate());
        let stored = ApiKeyStatus {
            retired_key_presented: Some(RetiredKeyPresented {
                count: 5,
                last_presented_at: Some(time(3_000)),
                last_key_id: None,
            }),
            ..Default::default()
        };
        // old leaves status: retired, attributed by id and hash.
        indexed(&index, &cur, Some(&old), stored.clone());
        indexed(&index, &cur, None, stored);
        let id = KeyId::try_from(old.key_id().as_bytes()).unwrap();
        let hash = crate::key::sha256(old.expose().as_bytes());
        let now = Timestamp::from_second(2_000).unwrap();
        let decided = crate::server::decision::retired_or_unknown(&index, &id, &hash, now);
        assert!(decided.retired_key_presented());
        let (o, keys) = view(&index);
        let flush = plan_flush(&o, &keys, 60).unwrap();
        let r = &flush.patch["status"]["retiredKeyPresented"];
        assert_eq!(r["count"], 6);
        assert_eq!(r["lastPresentedAt"], time(3_000).0.to_string(), "never backwards");
        assert_eq!(r["lastKeyId"], old.key_id());
        flush.written(&o);
        assert!(plan_flush(&o, &keys, 60).is_none());
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;
    use crate::crd::{ApiKeySpec, ApiKeyStatus, KeyRecord};
    use crate::key::ApiKeyValue;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// RFC 7386 merge of `patch` into `target`.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    #[test]
    fn once_written_and_seen_back_nothing_is_due() {
        let index = Index::default();
        let key = ApiKeyValue::generate();
        let mut ak = ApiKey::new("k", ApiKeySpec::default());
        ak.metadata.namespace = Some("ns".into());
        ak.metadata.resource_version = Some("1".into());
        ak.status = Some(ApiKeyStatus {
            current_key: Some(KeyRecord {
                id: key.key_id().into(),
                sha256: key.sha256_hex(),
                issued_at: Time(Timestamp::UNIX_EPOCH),
                valid_until: None,
            }),
            ..Default::default()
        });
        index.apply(&ak);
        let (o, keys) = index.flush_view().pop().unwrap();
        o.usage.last_used.store(5_000, Ordering::Relaxed);
        keys[0].1.allow(5_000);
        let flush = plan_flush(&o, &keys, 1).unwrap();
        flush.written(&o);
        let mut json = serde_json::to_value(&ak).unwrap();
        merge(&mut json, &flush.patch);
        json["metadata"]["resourceVersion"] = "2".into();
        let seen: ApiKey = serde_json::from_value(json).unwrap();
        index.apply(&seen);
        let (o, keys) = index.flush_view().pop().unwrap();
        assert!(
            plan_flush(&o, &keys, 1).is_none(),
            "{:?}",
            plan_flush(&o, &keys, 1)
        );
    }
}
