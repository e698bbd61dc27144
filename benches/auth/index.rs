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
    let before = rss_kib(pid);
    let index = Index::default();
    let mut rebuild = Rebuild::default();
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
    }
    index.replace(rebuild);
    let after = rss_kib(pid);
    let (keys, api_keys) = index.len();
    println!(
        "synthetic index: {keys} keys of {api_keys} ApiKeys: RSS +{:.1} MiB, {:.0} bytes per key",
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / keys as f64
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

pub async fn index_real(n: usize) {
    use futures::StreamExt;
    let bench = Bench::new("bench-index").await;
    let empty = Bench::new("bench-index-empty").await;
    // Real ApiKey objects with a real status (one key each), written by the
    // admin rather than the controller so that N = 10,000 takes a minute.
    let started = Instant::now();
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
    eprintln!(
        "created {n} ApiKeys with a key in status in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let (full, _) = bench.latchkey("serve", &bench.ns);
    let (idle, _) = bench.latchkey("serve", &empty.ns);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (full_kib, idle_kib) = (rss_kib(full.pid()), rss_kib(idle.pid()));
    println!(
        "real ApiKeys: latchkey serve RSS {:.1} MiB with {n} ApiKeys vs {:.1} MiB with none: {:.0} bytes per key (includes the watch's list buffers the allocator kept)",
        full_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        (full_kib.saturating_sub(idle_kib)) as f64 * 1024.0 / n as f64
    );
    drop((full, idle));
    bench.cleanup().await;
    empty.cleanup().await;
}
