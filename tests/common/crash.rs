//! The pieces of the rotation crash tests (tests/cluster_lifecycle.rs with
//! one controller, tests/cluster_ha.rs with two elected replicas): a poller
//! that checks the key invariant all along, the moment a kill is aimed at,
//! and where a kill landed.

use super::{Scenario, key_hash};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use latchkey::crd::ApiKey;
use latchkey::validity;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What the poller counted.
#[derive(Debug, Default)]
pub struct PollCounts {
    /// Reads of both the Secret and the ApiKey.
    pub checks: AtomicU64,
    /// Reads where the Secret's key was not valid per status.
    pub violations: AtomicU64,
    /// Reads where status had a pending key.
    pub pending_seen: AtomicU64,
    /// Reads where status.revision was lower than an earlier read's.
    pub revision_drops: AtomicU64,
}

/// Reads ApiKey `name`'s Secret, then the ApiKey, every 20 ms until
/// stopped: status only ever adds a key before the Secret gets it, so a key
/// the Secret held at the first read is still listed at the second unless
/// the invariant broke.
pub struct InvariantPoller {
    stop: Arc<AtomicBool>,
    counts: Arc<PollCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl InvariantPoller {
    pub fn start(api_keys: Api<ApiKey>, secrets: Api<Secret>, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(PollCounts::default());
        let (stop_, counts_, name) = (stop.clone(), counts.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let mut highest = 0;
            while !stop_.load(Ordering::Relaxed) {
                let secret = secrets.get(&name).await;
                let ak = api_keys.get(&name).await;
                if let (Ok(secret), Ok(ak)) = (secret, ak) {
                    let hash = key_hash(&secret).expect("the Secret holds a key");
                    counts_.checks.fetch_add(1, Ordering::Relaxed);
                    if ak.status.as_ref().is_some_and(|s| s.pending_key.is_some()) {
                        counts_.pending_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    let revision = ak.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
                    if !validity::is_valid_hash(&ak, &hash, Timestamp::now()) {
                        counts_.violations.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "VIOLATION: Secret key id {} not valid per status (revision {revision})",
                            secret
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get("latchkey.dev/key-id"))
                                .map(String::as_str)
                                .unwrap_or_default()
                        );
                    }
                    if revision < highest {
                        counts_.revision_drops.fetch_add(1, Ordering::Relaxed);
                        eprintln!("VIOLATION: status.revision went from {highest} to {revision}");
                    }
                    highest = highest.max(revision);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { stop, counts, task }
    }

    /// Stops the poller; returns its counts.
    pub async fn stop(self) -> Arc<PollCounts> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.counts
    }
}

/// Where a kill landed in a rotation for request `request` (read while
/// nothing writes): 0 before the rotation began, 1 after write 1 (pending
/// key in status), 2 after write 2 (the Secret holds the pending key), 3
/// after write 3 (the rotation done).
pub async fn kill_point(s: &Scenario, name: &str, request: &str) -> usize {
    let ak = s.api_keys.get(name).await.unwrap();
    let secret = s.secrets.get(name).await.unwrap();
    let status = ak.status.as_ref().unwrap();
    let held = key_hash(&secret).unwrap();
    match &status.pending_key {
        Some(pending) if pending.sha256 == held => 2,
        Some(_) => 1,
        None if status.last_rotate_request.as_deref() == Some(request) => 3,
        None => 0,
    }
}

/// Whether a settled ApiKey breaks the invariant: the Secret's key is not
/// valid per status, or a pending key is left.
fn settled_violation(ak: &ApiKey, secret: &Secret) -> bool {
    let hash = key_hash(secret).unwrap();
    !validity::is_valid_hash(ak, &hash, Timestamp::now()) || ak.status.as_ref().unwrap().pending_key.is_some()
}

impl Scenario {
    /// After a kill: waits until `name` settled with rotate request
    /// `request` honoured (`what` names the wait); counts a broken invariant
    /// in `settled_violations`, asserts that status.revision is `revision +
    /// 1` (each request delivers exactly one key) and returns it.
    pub async fn settled_once(
        &self,
        name: &str,
        request: &str,
        what: &str,
        revision: i64,
        settled_violations: &mut usize,
    ) -> i64 {
        let (ak, secret) = self
            .settled(name, what, |ak| {
                ak.status.as_ref().unwrap().last_rotate_request.as_deref() == Some(request)
            })
            .await;
        if settled_violation(&ak, &secret) {
            *settled_violations += 1;
        }
        let now_revision = ak.status.as_ref().unwrap().revision.unwrap();
        assert_eq!(
            now_revision,
            revision + 1,
            "rotate request {request} delivered exactly one key"
        );
        now_revision
    }

    /// Requests rotation `request` of `name` and returns at the moment a
    /// crash test kills: `aimed` 0–10 ms after a watch shows the pending key
    /// for this request in status (the whole delivery takes a few ms, so
    /// random moments alone rarely land inside it), otherwise at a random
    /// moment 0–300 ms after the request.
    pub async fn request_rotation_for_a_kill(&self, name: &str, request: &str, aimed: bool) {
        if !aimed {
            self.request_rotation(name, request).await;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..300u64))).await;
            return;
        }
        let watch = watcher(
            self.api_keys.clone(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .applied_objects();
        let mut watch = std::pin::pin!(watch);
        watch.try_next().await.expect("watch the ApiKey"); // the initial list
        self.request_rotation(name, request).await;
        let pending_for_request = |ak: &ApiKey| {
            ak.status.as_ref().is_some_and(|st| {
                st.pending_key.is_some() && st.pending_rotate_request.as_deref() == Some(request)
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(ak)) = watch.try_next().await {
                if pending_for_request(&ak) {
                    break;
                }
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..10u64))).await;
    }
}
