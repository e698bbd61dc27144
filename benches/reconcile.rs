//! `e2e/bench-reconcile N`: create N ApiKeys at once on the local control
//! plane and report the time until all are Ready, keys per second, and the
//! controller's peak RSS (VmHWM). Run through the script, which builds the
//! release binary and brings the cluster up.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use latchkey::conditions;
use latchkey::crd::{ApiKey, ApiKeySpec};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of the control plane's processes, by the PIDs `e2e/cluster` recorded.
fn control_plane_cpu() -> Vec<(String, f64)> {
    let dir = std::env::var("BENCH_CLUSTER_DIR").unwrap_or_default();
    ["kube-apiserver", "etcd"]
        .iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(format!("{dir}/{name}.pid")).ok()?;
            Some((name.to_string(), cpu_seconds(pid.trim().parse().ok()?)?))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let kubeconfig =
        std::env::var("BENCH_KUBECONFIG").expect("BENCH_KUBECONFIG (set by e2e/bench-reconcile)");
    let binary = std::env::var("BENCH_LATCHKEY").expect("BENCH_LATCHKEY (set by e2e/bench-reconcile)");
    let concurrency = std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "32".into());
    let client = latchkey::client::from_kubeconfig(Some(std::path::Path::new(&kubeconfig)))
        .await
        .expect("a client for the local cluster");

    let ns_name = format!("bench-{}", std::process::id());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &ns).await.unwrap();

    let log = std::fs::File::create(std::env::temp_dir().join("latchkey-bench-controller.log")).unwrap();
    let mut controller = Command::new(&binary)
        .args([
            "controller",
            "--kubeconfig",
            &kubeconfig,
            "--watch-namespace",
            &ns_name,
        ])
        .args(["--concurrency", &concurrency])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the controller");
    let pid = controller.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = peak_rss_kib(pid).unwrap_or(0);

    let api: Api<ApiKey> = Api::namespaced(client.clone(), &ns_name);
    // Count Ready ApiKeys from a watch, started before the first create.
    let watch_api = api.clone();
    let ready = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut stream = watcher(watch_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(ak) = stream.try_next().await.expect("watch ApiKeys") {
            let is_ready = ak
                .status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY));
            if is_ready {
                seen.insert(ak.metadata.name.unwrap());
                if seen.len() == n {
                    return Instant::now();
                }
            }
        }
        panic!("watch ended early");
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu_before = control_plane_cpu();
    let controller_cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let ak = ApiKey::new(
                    &format!("key-{i:05}"),
                    ApiKeySpec {
                        scopes: vec!["bench:read".into()],
                        ..Default::default()
                    },
                );
                api.create(&PostParams::default(), &ak)
                    .await
                    .expect("create ApiKey");
            }
        })
        .buffer_unordered(64)
        .collect::<()>()
        .await;
    let created = start.elapsed();
    let done = tokio::time::timeout(Duration::from_secs(1800), ready)
        .await
        .expect("all ApiKeys Ready within 30 minutes")
        .unwrap();
    let elapsed = done - start;
    let rss_peak = peak_rss_kib(pid).unwrap_or(0);
    let controller_cpu = cpu_seconds(pid).unwrap_or(0.0) - controller_cpu_before;
    let cpu_after = control_plane_cpu();

    println!("bench-reconcile: N = {n}, controller concurrency = {concurrency}");
    println!("  all {n} ApiKeys created in   {:>8.2} s", created.as_secs_f64());
    println!("  all {n} ApiKeys Ready after  {:>8.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput                  {:>8.1} keys/s",
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  controller RSS idle         {:>8.1} MiB",
        rss_idle as f64 / 1024.0
    );
    println!(
        "  controller peak RSS         {:>8.1} MiB",
        rss_peak as f64 / 1024.0
    );

    let wall = elapsed.as_secs_f64();
    println!(
        "  CPU while reconciling       latchkey {controller_cpu:.1} s ({:.0} % of one core)",
        100.0 * controller_cpu / wall
    );
    for ((name, before), (_, after)) in cpu_before.iter().zip(&cpu_after) {
        println!(
            "                              {name} {:.1} s ({:.0} % of one core)",
            after - before,
            100.0 * (after - before) / wall
        );
    }
    let _ = controller.kill();
    let _ = controller.wait();
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
}
