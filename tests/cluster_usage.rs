//! Usage per key against the local control plane, with TWO `latchkey serve`
//! replicas (flushing every second) and one `latchkey controller`:
//! after a rotation, using the old key moves only the old key's
//! `status.keyUsage` entry; its counts add up across the replicas, also
//! while the controller rewrites status in a rotation (the race between the
//! controller's Server-Side Apply and the servers' merge patches);
//! `PreviousKeyStillInUse` appears once for a key used in the last quarter
//! of its grace period; a retired key (grace over, ApiKey revoked) is
//! refused like an unknown one and counted in status and in `/metrics`.
//!
//! The bound on counts across replicas: a replica that is stopped (SIGTERM,
//! a rolling update) writes what it counted since its last flush before it
//! exits, so nothing is lost; one that is SIGKILLed loses exactly what it
//! counted since its last write (at most one flush interval of its share),
//! and nothing else.

mod common;

use common::*;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use latchkey::crd::{ApiKey, KeyUsage};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// The grace period: its last quarter (22.5 s) starts 67.5 s after a rotation.
const GRACE_SECONDS: u64 = 90;
const SPEC: &str = "  scopes: [\"orders:read\"]\n  rotation: {interval: 1h, gracePeriod: 90s}\n";

fn id_of(key: &str) -> String {
    latchkey::key::check(key).unwrap().to_owned()
}

/// One request with `key` on `/auth/nginx<query>`; its status and challenge.
async fn auth(server: &str, key: &str, query: &str) -> (StatusCode, String) {
    let resp = reqwest::Client::new()
        .get(format!("{server}/auth/nginx{query}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let challenge = header(resp.headers(), "www-authenticate").to_owned();
    (resp.status(), challenge)
}

/// `n` requests with `key` on `server`, each expected to answer `want`.
async fn send(server: &str, key: &str, query: &str, n: usize, want: StatusCode) {
    for _ in 0..n {
        assert_eq!(auth(server, key, query).await.0, want, "{query}");
    }
}

async fn usage_of(api_keys: &Api<ApiKey>, id: &str) -> Option<KeyUsage> {
    api_keys.get("svc").await.ok()?.status?.key_usage.get(id).cloned()
}

/// Whether the cluster's ApiKey CRD knows `status.keyUsage`. The control
/// plane is shared: another worktree's test binary re-applies its own
/// `crds/` at start, and an older schema prunes the field the servers write
/// (their patches then succeed without effect). A timeout says so.
fn crd_knows_key_usage() -> bool {
    let (_, out, _) = kubectl(&[
        "get",
        "crd",
        "apikeys.latchkey.dev",
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.status.properties.keyUsage.type}",
    ]);
    out.trim() == "object"
}

/// Re-applies this worktree's CRDs when the shared cluster holds an older
/// ApiKey schema (see [`crd_knows_key_usage`]); called while the test waits,
/// since another worktree's tests may apply theirs at any moment. Ours only
/// adds optional status fields, so theirs keep working under it.
fn ensure_crd() {
    if !crd_knows_key_usage() {
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            repo().join("crds").to_str().unwrap(),
        ]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/apikeys.latchkey.dev",
            "--timeout=60s",
        ]);
    }
}

/// Waits until the stored usage of `id` has `allowed` and `scope` denials
/// exactly (no replica died, so nothing is lost: the bound is exact here;
/// see README "Usage per key" for the general one).
async fn counted(api_keys: &Api<ApiKey>, id: &str, allowed: i64, scope: i64) -> KeyUsage {
    let mut last = None;
    let what = format!("keyUsage[{id}] allowed {allowed}, denied.scope {scope}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ensure_crd();
        let u = usage_of(api_keys, id).await;
        if let Some(u) = &u
            && u.allowed == allowed
            && u.denied.scope == scope
        {
            return u.clone();
        }
        if let Some(u) = &u {
            assert!(
                u.allowed <= allowed && u.denied.scope <= scope,
                "counted more than sent: {u:?}, want {what}"
            );
        }
        last = u.or(last);
        assert!(
            Instant::now() < deadline,
            "{what}: last seen {last:?}; the cluster's ApiKey CRD knows keyUsage: {}",
            crd_knows_key_usage()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The value of an unlabelled counter in `/metrics` text.
async fn metric(server: &str, name: &str) -> u64 {
    let text = get_text(&format!("{server}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn in_use_events(ns: &str, id: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client().await, ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("PreviousKeyStillInUse")
                && e.note.as_deref().is_some_and(|n| n.contains(id))
        })
        .collect()
}

#[tokio::test]
async fn usage_per_key_across_two_replicas_still_in_use_warning_and_retired_keys() {
    let s = Scenario::new("usage").await;
    ensure_crd();
    let ns = s.ns.name.clone();
    let flush = ["--last-used-flush-seconds", "1"];
    let (a_proc, a) = LatchkeyProcess::start_http("serve", &ns, &flush);
    let (b_proc, b) = LatchkeyProcess::start_http("serve", &ns, &flush);
    let old = served_key(&ns, "svc", SPEC, &a).await;
    send(&b, &old, "", 1, StatusCode::OK).await;
    let old_id = id_of(&old);

    // A rotation: the old key enters its grace period.
    let rotated_at = Instant::now();
    s.request_rotation("svc", "r1").await;
    let (ak, secret) = s
        .settled("svc", "rotated once", |ak| {
            ak.status.as_ref().is_some_and(|st| st.previous_keys.len() == 1)
        })
        .await;
    let new = String::from_utf8(secret.data.unwrap()["api-key"].0.clone()).unwrap();
    let new_id = id_of(&new);
    assert_ne!(new_id, old_id);
    assert_eq!(ak.status.unwrap().previous_keys[0].id, old_id);

    // The uses before the rotation (served_key's probes) settle first.
    let settled = format!(
        "the first uses flushed and settled (the cluster's CRD knows keyUsage: {})",
        crd_knows_key_usage()
    );
    let base = eventually(WAIT, &settled, || async {
        ensure_crd();
        let before = usage_of(&s.api_keys, &old_id).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = usage_of(&s.api_keys, &old_id).await?;
        (before == after).then_some(after)
    })
    .await;

    // The old key on both replicas: allows and scope denials.
    send(&a, &old, "?scope=orders:read", 7, StatusCode::OK).await;
    send(&b, &old, "?scope=orders:read", 5, StatusCode::OK).await;
    send(&a, &old, "?scope=admin", 2, StatusCode::FORBIDDEN).await;
    send(&b, &old, "?scope=admin", 3, StatusCode::FORBIDDEN).await;
    let u = counted(&s.api_keys, &old_id, base.allowed + 12, base.denied.scope + 5).await;
    assert!(u.last_used_at.is_some());
    let status = s.api_keys.get("svc").await.unwrap().status.unwrap();
    assert!(
        status
            .key_usage
            .get(&new_id)
            .is_none_or(|n| n.last_used_at.is_none() && n.allowed == 0),
        "only the old key moved: {:?}",
        status.key_usage
    );

    // The race: traffic on both replicas (each flushing every second) while
    // the controller rewrites status three times for a second rotation.
    // Neither side loses the other's writes.
    let traffic = |server: String, key: String| {
        tokio::spawn(async move {
            let mut n = 0;
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                assert_eq!(auth(&server, &key, "").await.0, StatusCode::OK);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let (ta, tb) = (traffic(a.clone(), old.clone()), traffic(b.clone(), old.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.request_rotation("svc", "r2").await;
    let sent = ta.await.unwrap() + tb.await.unwrap();
    s.settled("svc", "rotated twice", |ak| {
        ak.status.as_ref().is_some_and(|st| st.previous_keys.len() == 2)
    })
    .await;
    let u = counted(&s.api_keys, &old_id, u.allowed + sent, u.denied.scope).await;
    println!(
        "old key counted across the rotation's status writes: allowed {} ({sent} in the race)",
        u.allowed
    );

    // Uses in the last quarter of the grace period: one Warning Event.
    let quarter = Duration::from_secs(GRACE_SECONDS * 3 / 4 + 2);
    tokio::time::sleep(quarter.saturating_sub(rotated_at.elapsed())).await;
    ensure_crd();
    send(&a, &old, "", 2, StatusCode::OK).await;
    let event = eventually(
        WAIT,
        "a Warning Event PreviousKeyStillInUse about svc",
        || async {
            ensure_crd();
            in_use_events(&ns, &old_id).await.into_iter().next()
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains(&old_id), "{note}");
    assert!(
        !note.contains(&old) && !note.contains(&new),
        "never a key: {note}"
    );
    send(&b, &old, "", 2, StatusCode::OK).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = in_use_events(&ns, &old_id).await;
    assert_eq!(events.len(), 1, "once per key: {events:?}");
    assert!(
        events[0].series.as_ref().is_none_or(|s| s.count <= 1),
        "not repeated: {:?}",
        events[0].series
    );

    // Grace over and pruned: the old key is retired, refused like a key that
    // never existed, and counted.
    eventually(WAIT, "the old key pruned from status", || async {
        let st = s.api_keys.get("svc").await.ok()?.status?;
        (!st.previous_keys.iter().any(|k| k.id == old_id)).then_some(())
    })
    .await;
    let (metric_a, metric_b) = (
        metric(&a, "latchkey_retired_key_presented_total").await,
        metric(&b, "latchkey_retired_key_presented_total").await,
    );
    let before = s
        .api_keys
        .get("svc")
        .await
        .unwrap()
        .status
        .unwrap()
        .retired_key_presented
        .map_or(0, |r| r.count);
    let unknown = auth(&a, latchkey::key::ApiKeyValue::generate().expose(), "").await;
    for server in [&a, &b, &a] {
        let answer = eventually(WAIT, "both replicas see the prune", || async {
            let answer = auth(server, &old, "").await;
            (answer.0 == StatusCode::UNAUTHORIZED).then_some(answer)
        })
        .await;
        assert_eq!(answer, unknown, "a retired key is answered like an unknown one");
    }
    let presented = metric(&a, "latchkey_retired_key_presented_total").await - metric_a
        + metric(&b, "latchkey_retired_key_presented_total").await
        - metric_b;
    assert!(
        presented >= 3,
        "the metric counts every presentation: {presented}"
    );
    ensure_crd();
    eventually(Duration::from_secs(30), "retiredKeyPresented counted", || async {
        let r = s.api_keys.get("svc").await.ok()?.status?.retired_key_presented?;
        (r.count == before + presented as i64 && r.last_key_id.as_deref() == Some(old_id.as_str()))
            .then_some(())
    })
    .await;
    let text = get_text(&format!("{a}/metrics")).await;
    assert!(
        text.lines()
            .filter(|l| l.contains("retired_key_presented"))
            .all(|l| !l.contains(&ns) && !l.contains("svc")),
        "no tenant label"
    );

    // A revoked ApiKey's key: refused like an unknown one, counted.
    let (_, current) = s.settled("svc", "settled", |_| true).await;
    let current = String::from_utf8(current.data.unwrap()["api-key"].0.clone()).unwrap();
    revoke(&s.api_keys, "svc").await;
    eventually(WAIT, "the revoked key refused", || async {
        let answer = auth(&b, &current, "").await;
        (answer == unknown).then_some(())
    })
    .await;
    let current_id = id_of(&current);
    eventually(Duration::from_secs(30), "the revoked key counted", || async {
        let r = s.api_keys.get("svc").await.ok()?.status?.retired_key_presented?;
        (r.last_key_id.as_deref() == Some(current_id.as_str())).then_some(())
    })
    .await;

    for p in [&a_proc, &b_proc, &s.controller] {
        let log = p.log_text();
        assert!(!log.contains(&old) && !log.contains(&new), "no key logged");
    }
}

/// The bound, with three replicas: `a` flushing every second, `b` and `c`
/// never before they stop (a one-hour flush interval). `b` is stopped with
/// SIGTERM: its counts arrive exactly (its last flush); `c` is SIGKILLed:
/// exactly its own unflushed counts are lost, and `a`'s still add up.
#[tokio::test]
async fn a_stopped_replica_flushes_its_counts_and_a_killed_one_loses_only_its_own() {
    let s = Scenario::new("usage-bound").await;
    ensure_crd();
    let ns = s.ns.name.clone();
    let (_a_proc, a) = LatchkeyProcess::start_http("serve", &ns, &["--last-used-flush-seconds", "1"]);
    let hour = ["--last-used-flush-seconds", "3600"];
    let (mut b_proc, b) = LatchkeyProcess::start_http("serve", &ns, &hour);
    let (mut c_proc, c) = LatchkeyProcess::start_http("serve", &ns, &hour);
    let key = served_key(&ns, "svc", SPEC, &a).await;
    let id = id_of(&key);
    // served_key's probes (on `a`) settle first.
    let base = eventually(WAIT, "the first uses flushed and settled", || async {
        ensure_crd();
        let before = usage_of(&s.api_keys, &id).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = usage_of(&s.api_keys, &id).await?;
        (before == after).then_some(after)
    })
    .await;
    // Both wait for the key in their own index.
    for server in [&b, &c] {
        eventually(WAIT, "the replica knows the key", || async {
            (auth(server, &key, "?scope=orders:read").await.0 == StatusCode::OK).then_some(())
        })
        .await;
    }
    send(&b, &key, "?scope=orders:read", 6, StatusCode::OK).await;
    send(&b, &key, "?scope=admin", 2, StatusCode::FORBIDDEN).await;
    send(&c, &key, "?scope=orders:read", 3, StatusCode::OK).await;
    send(&c, &key, "?scope=admin", 1, StatusCode::FORBIDDEN).await;
    // Nothing of b's or c's is written before they stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(usage_of(&s.api_keys, &id).await, Some(base.clone()));

    // SIGTERM: b writes its 7 allowed (1 + 6) and 2 denials, then exits.
    let status = b_proc.terminate();
    assert!(status.success(), "b stopped cleanly: {status:?}");
    let u = counted(&s.api_keys, &id, base.allowed + 7, base.denied.scope + 2).await;
    println!(
        "after b's SIGTERM: allowed {} (+7), denied.scope {} (+2)",
        u.allowed, u.denied.scope
    );

    // SIGKILL: c's 4 allowed (1 + 3) and 1 denial are lost, nothing more;
    // a's uses after it still add up exactly.
    c_proc.kill();
    send(&a, &key, "?scope=orders:read", 5, StatusCode::OK).await;
    send(&a, &key, "?scope=admin", 1, StatusCode::FORBIDDEN).await;
    let u = counted(&s.api_keys, &id, u.allowed + 5, u.denied.scope + 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        usage_of(&s.api_keys, &id)
            .await
            .map(|u| (u.allowed, u.denied.scope)),
        Some((u.allowed, u.denied.scope))
    );
    println!(
        "after c's SIGKILL: allowed {} (c's 4 lost), denied.scope {} (c's 1 lost)",
        u.allowed, u.denied.scope
    );
    let log = b_proc.log_text();
    assert!(!log.contains(&key), "no key logged");
}
