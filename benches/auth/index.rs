//! `index-synthetic N` and `index-real N`: the auth index's memory per
//! key, in process and in a real `latchkey serve` (see main.rs).

use crate::harness::{Bench, rss_kib};
use kube::api::{Patch, PatchParams, PostParams};
use latchkey::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord};
use latchkey::key::ApiKeyValue;
use std::time::{Duration, Instant};

pub fn index_synthetic(n: usize) {
    use latchkey::server::index::{Index, Rebuild};
    let pid = std::process::id();
    let template = {
        let mut ak = ApiKey::new(
            "k",
            ApiKeySpec {
                scopes: vec!["orders:read".into(), "invoices:write".into()],
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some("team-payments".into());
        ak
    };
    // The decision's cost with one key indexed, before anything else is
    // in memory (the baseline of the ratio below).
    let one = ApiKeyValue::generate();
    let small = Index::default();
    let mut r = Rebuild::default();
    r.apply(&with_key(&template, "one", &one), None);
    small.replace(r);
    let per_decision_one = time_decisions(&small, std::slice::from_ref(&one));
    let before = rss_kib(pid);
    let index = Index::default();
    let mut rebuild = Rebuild::default();
    // Every 100th key is kept to present (1,000 of 100,000: most lookups
    // then miss the CPU caches, as in a server with that many clients).
    let mut sample = Vec::new();
    for i in 0..n {
        let key = ApiKeyValue::generate();
        let mut ak = template.clone();
        ak.metadata.name = Some(format!("billing-service-{i}"));
        ak.status = Some(ApiKeyStatus {
            current_key: Some(KeyRecord {
                id: key.key_id().into(),
                sha256: key.sha256_hex(),
                issued_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
                valid_until: None,
            }),
            ..Default::default()
        });
        rebuild.apply(&ak, None);
        if i % 100 == 0 {
            sample.push(key);
        }
    }
    index.replace(rebuild);
    let after = rss_kib(pid);
    let (keys, api_keys) = index.len();
    println!(
        "synthetic index: {keys} keys of {api_keys} ApiKeys: RSS +{:.1} MiB, {:.0} bytes per key",
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / keys as f64
    );
    let per_decision_many = time_decisions(&index, &sample);
    let per_decision_many_one = time_decisions(&index, &sample[..1]);
    println!(
        "decision (in process, decide_key_request with scope=orders:read, allowed): {:.0} ns with 1 key indexed; with {keys}: {:.0} ns cycling over {} of them ({:.2}x), {:.0} ns repeating one ({:.2}x)",
        per_decision_one,
        per_decision_many,
        sample.len(),
        per_decision_many / per_decision_one,
        per_decision_many_one,
        per_decision_many_one / per_decision_one,
    );
    // A CredentialGrant change re-computes every ApiKey's identity (never
    // per request): how long that takes for all of them.
    let spec = latchkey::crd::CredentialGrantSpec {
        namespaces: vec!["team-*".into()],
        scopes: vec!["orders:*".into()],
        ..Default::default()
    };
    let grants = std::sync::Arc::new(latchkey::grants::Grants::new(vec![("g".into(), spec)], false));
    // Meanwhile a reader looks a key up in a loop: the longest lookup is
    // how long requests wait for the swap (the write lock).
    let index = std::sync::Arc::new(index);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (index, stop) = (index.clone(), stop.clone());
        std::thread::spawn(move || {
            let (id, hash) = ([b'x'; latchkey::key::KEY_ID_LEN], [0u8; 32]);
            let mut longest = std::time::Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let _ = index.find(&id, &hash);
                longest = longest.max(t.elapsed());
            }
            longest
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    index.set_grants(grants);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest = reader.join().unwrap();
    println!(
        "a CredentialGrant change re-computes {api_keys} ApiKeys in {:.1} ms; the longest lookup meanwhile: {:.1} ms",
        took.as_secs_f64() * 1000.0,
        longest.as_secs_f64() * 1000.0
    );
}

/// An ApiKey like `template` named `name` whose status lists `key`.
fn with_key(template: &ApiKey, name: &str, key: &ApiKeyValue) -> ApiKey {
    let mut ak = template.clone();
    ak.metadata.name = Some(name.into());
    ak.status = Some(ApiKeyStatus {
        current_key: Some(KeyRecord {
            id: key.key_id().into(),
            sha256: key.sha256_hex(),
            issued_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            valid_until: None,
        }),
        ..Default::default()
    });
    ak
}

/// Median of 5 runs of the nanoseconds one decision takes, presenting
/// `keys` in turn (each must be allowed).
fn time_decisions(index: &latchkey::server::index::Index, keys: &[ApiKeyValue]) -> f64 {
    use latchkey::server::decision::{Decision, Requirement, decide_key_request};
    let requirement = Requirement::from_query(Some("scope=orders:read"));
    let now = k8s_openapi::jiff::Timestamp::now();
    let rounds = 200_000;
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for i in 0..rounds {
                let key = &keys[i % keys.len()];
                let d = decide_key_request(Some(key.expose()), &requirement, index, now, 1);
                assert!(matches!(d, Decision::Allow { .. }), "{d:?}");
                std::hint::black_box(d);
            }
            started.elapsed().as_nanos() as f64 / rounds as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

pub async fn index_real(n: usize) {
    let bench = Bench::new("bench-index").await;
    let empty = Bench::new("bench-index-empty").await;
    let started = Instant::now();
    create_api_keys(&bench, n).await;
    eprintln!(
        "created {n} ApiKeys with a key in status in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // From the process's start to ready (`/readyz`: the first list of
    // every ApiKey indexed).
    let started = Instant::now();
    let (full, full_port) = bench.latchkey("serve", &bench.ns);
    let first_sync = started.elapsed();
    let started = Instant::now();
    let (idle, _) = bench.latchkey("serve", &empty.ns);
    let empty_start = started.elapsed();
    println!(
        "first sync: latchkey serve ready {:.2} s after its start with {n} ApiKeys ({:.2} s watching an empty namespace)",
        first_sync.as_secs_f64(),
        empty_start.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (full_kib, idle_kib) = (rss_kib(full.pid()), rss_kib(idle.pid()));
    println!(
        "real ApiKeys: latchkey serve RSS {:.1} MiB with {n} ApiKeys vs {:.1} MiB with none: {:.0} bytes per key (includes the watch's list buffers the allocator kept)",
        full_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        (full_kib.saturating_sub(idle_kib)) as f64 * 1024.0 / n as f64
    );
    // Every ApiKey deleted: what the server gives back once its index is
    // empty again.
    bench
        .api_keys
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while index_keys(full_port) != Some(0) {
        assert!(Instant::now() < deadline, "the server never saw the deletions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (deleted_kib, idle_kib) = (rss_kib(full.pid()), rss_kib(idle.pid()));
    println!(
        "after deleting them: RSS {:.1} MiB (the idle server {:.1} MiB): {:.0} % of the growth given back",
        deleted_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        100.0 * full_kib.saturating_sub(deleted_kib) as f64 / full_kib.saturating_sub(idle_kib).max(1) as f64
    );
    // The same number created again: what the allocator kept is reused
    // (the RSS grows by much less than the first time), not leaked.
    create_api_keys(&bench, n).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while index_keys(full_port) != Some(n as u64) {
        assert!(Instant::now() < deadline, "the server never saw the new ApiKeys");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again_kib = rss_kib(full.pid());
    println!(
        "{n} ApiKeys created again: RSS {:.1} MiB ({:.0} bytes per key above the RSS after the deletions; {:.0} the first time)",
        again_kib as f64 / 1024.0,
        again_kib.saturating_sub(deleted_kib) as f64 * 1024.0 / n as f64,
        full_kib.saturating_sub(idle_kib) as f64 * 1024.0 / n as f64
    );
    drop((full, idle));
    bench.cleanup().await;
    empty.cleanup().await;
}

/// `n` real ApiKeys with a real status (one key each), written by the
/// admin rather than the controller so that 10,000 take a minute.
async fn create_api_keys(bench: &Bench, n: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| {
            let api_keys = bench.api_keys.clone();
            async move {
                let name = format!("billing-service-{i}");
                let ak = ApiKey::new(
                    &name,
                    ApiKeySpec {
                        scopes: vec!["orders:read".into(), "invoices:write".into()],
                        ..Default::default()
                    },
                );
                api_keys.create(&PostParams::default(), &ak).await.unwrap();
                let key = ApiKeyValue::generate();
                let status = serde_json::json!({"status": {"currentKey": {
                    "id": key.key_id(), "sha256": key.sha256_hex(),
                    "issuedAt": k8s_openapi::jiff::Timestamp::now().to_string(),
                }}});
                api_keys
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// `latchkey_index_keys` from the server's `/metrics`.
fn index_keys(port: u16) -> Option<u64> {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_index_keys "))
        .and_then(|v| v.trim().parse().ok())
}
