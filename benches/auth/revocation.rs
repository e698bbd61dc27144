//! `revocation N`: from a `revoked: true` patch's return to the first 401
//! through nginx, N times (see main.rs).

use crate::harness::{Bench, http_status_with};
use crate::stats::percentile;
use kube::api::{Patch, PatchParams};
use std::time::{Duration, Instant};

pub async fn revocation(trials: usize) {
    let bench = Bench::new("bench-revoke").await;
    let (_latchkey, lk) = bench.latchkey("run", &bench.ns);
    let (_nginx, ng) = bench.nginx(lk);
    let mut latencies = Vec::new();
    for i in 0..trials {
        let name = format!("revoke-{i}");
        let key = bench.key(&name, &["orders:read"]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status_with(ng, "/static-auth/index.html", Some(&key)) != Some(200) {
            assert!(Instant::now() < deadline, "nginx never let key {i} through");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bench
            .api_keys
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"revoked": true}})),
            )
            .await
            .unwrap();
        let returned = Instant::now();
        while http_status_with(ng, "/static-auth/index.html", Some(&key)) != Some(401) {
            assert!(
                returned.elapsed() < Duration::from_secs(30),
                "key {i} still accepted 30 s after revocation"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let latency = returned.elapsed();
        eprintln!(
            "trial {}: first 401 through nginx {:.1} ms after the patch returned",
            i + 1,
            latency.as_secs_f64() * 1e3
        );
        latencies.push(latency);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "revocation → first 401 through nginx, {trials} trials: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    bench.cleanup().await;
}
