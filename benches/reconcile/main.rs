//! `e2e/bench-reconcile N`: create N ApiKeys at once on the local control
//! plane and report the time until all are Ready, keys per second, the
//! controller's peak RSS (VmHWM), the API calls per key by verb and resource
//! (the API server's `apiserver_request_total` before and after), and a
//! forced resync: the controller restarted over the N unchanged ApiKeys
//! (writes made, which must be 0, and the time until all are reconciled).
//! Last, the floor (`floor.rs`): the same N keys delivered by this client
//! alone with the calls no crash-safe controller can skip, and latchkey's
//! keys/s as a share of it.
//! Run through the script, which builds the release binary and brings the
//! cluster up.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use latchkey::conditions;
use latchkey::crd::{ApiKey, ApiKeySpec};
use ports::free_port;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod floor;
#[path = "../../tests/common/ports.rs"]
#[allow(dead_code)]
mod ports;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` figure in KiB (`VmHWM:` the peak RSS, `VmRSS:` now).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `latchkey run` (controller and auth server in one process) instead of
/// `latchkey controller` when BENCH_RUN=1.
fn run_mode() -> bool {
    std::env::var("BENCH_RUN").is_ok_and(|v| v == "1")
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The 1-minute load average (the CPU is shared: every figure is printed beside it).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
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

/// The API server's `apiserver_request_total`, summed by (verb, resource[/subresource]).
/// It counts every client of the shared control plane, not only ours.
async fn api_requests(client: &kube::Client) -> BTreeMap<(String, String), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let (resource, sub) = (label("resource"), label("subresource"));
        let resource = if sub.is_empty() {
            resource
        } else {
            format!("{resource}/{sub}")
        };
        *counts.entry((label("verb"), resource)).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

const OURS: [&str; 5] = ["apikeys", "apikeys/status", "secrets", "events", "tokenpolicies"];

/// Prints the calls made between `before` and `after` on the resources the
/// controller touches, per key; `own` are the bench's own calls to subtract.
/// Returns the total printed.
fn print_calls(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
    n: usize,
    own: &[(&str, &str, f64)],
) -> f64 {
    let mut total = 0.0;
    let mut writes = 0.0;
    for ((verb, resource), a) in after {
        if !OURS.contains(&resource.as_str()) || verb == "WATCH" {
            continue;
        }
        let mut d = a - before
            .get(&(verb.clone(), resource.clone()))
            .copied()
            .unwrap_or(0.0);
        for (v, r, c) in own {
            if v == verb && r == resource {
                d -= c;
            }
        }
        if d < 0.5 {
            continue;
        }
        total += d;
        if !matches!(verb.as_str(), "GET" | "LIST") {
            writes += d;
        }
        println!(
            "    {verb:<7} {resource:<15} {d:>8.0}   {:>6.2} per key",
            d / n as f64
        );
    }
    println!(
        "    total                   {total:>8.0}   {:>6.2} per key (writes {:.2})",
        total / n as f64,
        writes / n as f64
    );
    total
}

struct Controller {
    child: Child,
    port: u16,
}

impl Controller {
    fn start(binary: &str, kubeconfig: &str, ns: &str, concurrency: &str, log: &str) -> Self {
        let port = free_port();
        let log = std::fs::File::create(std::env::temp_dir().join(log)).unwrap();
        let command = if run_mode() { "run" } else { "controller" };
        let child = Command::new(binary)
            .args([command, "--kubeconfig", kubeconfig, "--watch-namespace", ns])
            .args(["--concurrency", concurrency, "--no-leader-election"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        Self { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// ApiKey reconciles finished so far (success and error).
    async fn reconciles(&self, http: &reqwest::Client) -> Option<f64> {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(r#"latchkey_controller_reconciles_total{kind="ApiKey""#))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Waits until no reconcile has finished for `quiet`.
    async fn settle(&self, http: &reqwest::Client, quiet: Duration) -> f64 {
        let mut last = -1.0;
        let mut since = Instant::now();
        loop {
            let now = self.reconciles(http).await.unwrap_or(-1.0);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// resourceVersions of the namespace's ApiKeys and Secrets, and its Event count.
async fn snapshot(client: &kube::Client, ns: &str) -> (BTreeMap<String, String>, usize) {
    let mut versions = BTreeMap::new();
    let lp = ListParams::default();
    for ak in Api::<ApiKey>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .unwrap()
    {
        versions.insert(
            format!("apikey/{}", ak.metadata.name.unwrap()),
            ak.metadata.resource_version.unwrap(),
        );
    }
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .unwrap()
    {
        versions.insert(
            format!("secret/{}", s.metadata.name.unwrap()),
            s.metadata.resource_version.unwrap(),
        );
    }
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
        .len();
    (versions, events)
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
    let http = reqwest::Client::new();

    let ns_name = format!("bench-{}", std::process::id());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &ns).await.unwrap();

    let controller = Controller::start(
        &binary,
        &kubeconfig,
        &ns_name,
        &concurrency,
        "latchkey-bench-controller.log",
    );
    let pid = controller.pid();
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

    let load_start = load();
    let calls_before = api_requests(&client).await;
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
    let load_ready = load();
    let controller_cpu = cpu_seconds(pid).unwrap_or(0.0) - controller_cpu_before;
    let cpu_after = control_plane_cpu();
    // Reconciles our own writes triggered come after Ready: count them too.
    let reconciles = controller.settle(&http, Duration::from_secs(3)).await;
    let calls_after = api_requests(&client).await;
    let rss_peak = peak_rss_kib(pid).unwrap_or(0);

    println!(
        "bench-reconcile: N = {n}, latchkey {}, concurrency = {concurrency}",
        if run_mode() { "run" } else { "controller" }
    );
    println!("  load average (1 min) at start {load_start}, at all Ready {load_ready}");
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
    println!(
        "  ApiKey reconciles           {:>8.0}   {:>6.2} per key",
        reconciles,
        reconciles / n as f64
    );

    let keys_per_second = n as f64 / elapsed.as_secs_f64();
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
    println!(
        "  API calls (apiserver_request_total, whole control plane; the bench's {n} creates subtracted):"
    );
    print_calls(&calls_before, &calls_after, n, &[("POST", "apikeys", n as f64)]);
    controller.stop();

    // A forced resync: a new controller lists the N unchanged ApiKeys and
    // reconciles each once; it must write nothing.
    let (versions_before, events_before) = snapshot(&client, &ns_name).await;
    let load_resync = load();
    let calls_before = api_requests(&client).await;
    let started = Instant::now();
    let controller = Controller::start(
        &binary,
        &kubeconfig,
        &ns_name,
        &concurrency,
        "latchkey-bench-resync.log",
    );
    loop {
        if controller.reconciles(&http).await.unwrap_or(0.0) >= n as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "resync within 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resync = started.elapsed();
    let load_resynced = load();
    controller.settle(&http, Duration::from_secs(2)).await;
    let calls_after = api_requests(&client).await;
    let (versions_after, events_after) = snapshot(&client, &ns_name).await;
    let changed = versions_after
        .iter()
        .filter(|(k, v)| versions_before.get(*k) != Some(*v))
        .count();
    let rss_resync = peak_rss_kib(controller.pid()).unwrap_or(0);
    let rss_now = status_kib(controller.pid(), "VmRSS:").unwrap_or(0);
    // Memory given back once the keys are gone.
    let mut rss_deleted = None;
    if run_mode() {
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .expect("delete the ApiKeys");
        while !api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .unwrap()
            .items
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        rss_deleted = status_kib(controller.pid(), "VmRSS:");
    }
    controller.stop();
    println!(
        "  resync of {n} unchanged ApiKeys (controller restarted; load {load_resync} → {load_resynced}):"
    );
    println!(
        "    all reconciled after        {:>8.2} s (from the process start, list included)",
        resync.as_secs_f64()
    );
    println!(
        "    objects written             {changed:>8} (ApiKeys and Secrets whose resourceVersion moved), Events {}",
        events_after.saturating_sub(events_before)
    );
    println!(
        "    controller peak RSS         {:>8.1} MiB",
        rss_resync as f64 / 1024.0
    );
    println!(
        "    RSS with the {n} keys         {:>8.1} MiB ({:.1} KiB per key above the idle RSS)",
        rss_now as f64 / 1024.0,
        rss_now.saturating_sub(rss_idle) as f64 / n as f64
    );
    if let Some(deleted) = rss_deleted {
        println!(
            "    RSS 15 s after deleting them {:>8.1} MiB",
            deleted as f64 / 1024.0
        );
    }
    println!("    API calls (apiserver_request_total; the bench's own lists subtracted):");
    print_calls(
        &calls_before,
        &calls_after,
        n,
        &[
            ("LIST", "apikeys", 1.0),
            ("LIST", "secrets", 1.0),
            ("LIST", "events", 1.0),
        ],
    );
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;

    let floor_ns = format!("{ns_name}-floor");
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": floor_ns}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let workers = concurrency.parse().expect("BENCH_CONCURRENCY is a number");
    let load_floor = load();
    let calls_before = api_requests(&client).await;
    let floor = floor::run(&client, &floor_ns, n, workers).await;
    let calls_after = api_requests(&client).await;
    let floor_keys_per_second = n as f64 / floor.delivered.as_secs_f64();
    println!(
        "  the floor: the same {n} keys, only the crash-safe delivery's calls, no latchkey (load {load_floor} → {}):",
        load()
    );
    println!(
        "    created in {:.2} s, all delivered after {:.2} s: {floor_keys_per_second:.1} keys/s; latchkey's {keys_per_second:.1} is {:.2} of it",
        floor.created.as_secs_f64(),
        floor.delivered.as_secs_f64(),
        keys_per_second / floor_keys_per_second
    );
    println!("    API calls (apiserver_request_total; the {n} creates subtracted):");
    let calls = print_calls(&calls_before, &calls_after, n, &[("POST", "apikeys", n as f64)]) + n as f64;
    let calls_per_second = calls / floor.delivered.as_secs_f64();
    println!(
        "    the API server answered {calls_per_second:.0} of these calls/s (the creates included): \
         200 keys/s would need at most {:.1} calls per key, the create included",
        calls_per_second / 200.0
    );
    let _ = namespaces.delete(&floor_ns, &DeleteParams::default()).await;
}
