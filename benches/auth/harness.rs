//! What every benchmark uses: a namespace of the local control plane with
//! latchkey and nginx processes on loopback ([`Bench`]), plain HTTP probes,
//! wrk and its results over interleaved rounds ([`Rounds`]), and the
//! environment knobs.

pub use crate::ports::free_port;
use crate::process::{LoggedChild, Stop};
use crate::stats::median;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use latchkey::crd::{ApiKey, ApiKeySpec, TokenPolicy};
use latchkey::token::{claims, keys};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run this through e2e/bench-auth"))
}

/// Environment variable `name` parsed, or `default` when it is unset or
/// does not parse (`BENCH_REPEAT`, `BENCH_SECONDS`, …).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How many interleaved rounds each wrk target runs (`BENCH_REPEAT`, 3).
pub fn repeat() -> usize {
    env_or("BENCH_REPEAT", 3)
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A namespace of the local control plane for one benchmark, deleted at the end.
pub struct Bench {
    pub client: kube::Client,
    pub ns: String,
    pub api_keys: Api<ApiKey>,
    pub secrets: Api<Secret>,
    kubeconfig: String,
    latchkey: String,
    pub dir: PathBuf,
}

impl Bench {
    pub async fn new(prefix: &str) -> Self {
        let kubeconfig = env("BENCH_KUBECONFIG");
        let client = latchkey::client::from_kubeconfig(Some(Path::new(&kubeconfig)))
            .await
            .expect("a client for the local cluster");
        let ns = format!("{prefix}-{}", std::process::id());
        let obj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!("latchkey-bench-{ns}"));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::create_dir_all(dir.join("static")).unwrap();
        std::fs::write(dir.join("static/index.html"), "ok\n").unwrap();
        Self {
            api_keys: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            kubeconfig,
            latchkey: env("BENCH_LATCHKEY"),
            dir,
        }
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }

    /// `latchkey <mode>` watching `ns` on a free port, once it is ready
    /// (its own `auth server listening` line, then `/readyz`: see
    /// tests/common/process.rs); returns it and its port. Logs warnings,
    /// and the server's few info lines (startup, index loads; none per
    /// request) for that line.
    pub fn latchkey(&self, mode: &str, ns: &str) -> (LoggedChild, u16) {
        self.latchkey_with(mode, ns, &[])
    }

    /// [`latchkey`](Self::latchkey) with `extra` flags (`--grpc-addr …`);
    /// with `--http-tls` among them, ready over HTTPS.
    pub fn latchkey_with(&self, mode: &str, ns: &str, extra: &[&str]) -> (LoggedChild, u16) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = LoggedChild::spawn(
            &format!("latchkey {mode}"),
            self.dir.join(format!("latchkey-{mode}-{port}.log")),
            Command::new(&self.latchkey)
                .args([mode, "--http-addr", &addr, "--watch-namespace", ns])
                .args(extra)
                .args(["--kubeconfig", &self.kubeconfig])
                .env("RUST_LOG", "warn,latchkey::server=info"),
            Stop::Term,
        );
        if extra.contains(&"--http-tls") {
            child.wait_serving_https(&addr, Duration::from_secs(300));
        } else {
            child.wait_serving(&addr, Duration::from_secs(300));
        }
        (child, port)
    }

    /// nginx from `e2e/proxy/nginx-plain.conf.in` in front of latchkey's plain
    /// HTTP listener on `latchkey_port` (the benchmarks' baseline).
    pub fn nginx(&self, latchkey_port: u16) -> (LoggedChild, u16) {
        self.nginx_from(
            "nginx-plain.conf.in",
            &[
                ("@LATCHKEY@", format!("127.0.0.1:{latchkey_port}")),
                ("@UPSTREAM@", "127.0.0.1:9".to_owned()),
            ],
        )
    }

    /// nginx from `e2e/proxy/nginx-tls.conf.in` in front of latchkey's
    /// HTTPS listener on `latchkey_port`, verifying it against the CA file
    /// `ca` for the name `latchkey.test`.
    pub fn nginx_tls(&self, latchkey_port: u16, ca: &Path) -> (LoggedChild, u16) {
        self.nginx_from(
            "nginx-tls.conf.in",
            &[
                ("@LATCHKEY@", format!("127.0.0.1:{latchkey_port}")),
                ("@CA@", ca.display().to_string()),
                ("@TLS_NAME@", "latchkey.test".to_owned()),
            ],
        )
    }

    /// nginx from `e2e/proxy/<template>` with `vars` and the prefix, listen
    /// address and static directory filled in.
    fn nginx_from(&self, template: &str, vars: &[(&str, String)]) -> (LoggedChild, u16) {
        let port = free_port();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("e2e/proxy")
                .join(template),
        )
        .unwrap();
        let mut conf = template
            .replace("@PREFIX@", &self.dir.display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@STATIC@", &self.dir.join("static").display().to_string());
        for (name, value) in vars {
            conf = conf.replace(name, value);
        }
        let path = self.dir.join(format!("nginx-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut child = LoggedChild::spawn(
            "nginx (run e2e/deps)",
            self.dir.join(format!("nginx-{port}.out")),
            Command::new("nginx")
                .arg("-p")
                .arg(&self.dir)
                .arg("-c")
                .arg(&path)
                .arg("-e")
                .arg(self.dir.join("error.log")),
            Stop::Term,
        );
        child.wait_listening(port, Duration::from_secs(30));
        (child, port)
    }

    /// Creates an ApiKey and returns its key once the Secret holds it.
    pub async fn key(&self, name: &str, scopes: &[&str]) -> String {
        let ak = ApiKey::new(
            name,
            ApiKeySpec {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        self.api_keys.create(&PostParams::default(), &ak).await.unwrap();
        self.secret_key(name).await
    }

    /// The key in ApiKey `name`'s Secret, once it is there (60 s at most).
    pub async fn secret_key(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.secrets.get_opt(name).await
                && let Some(k) = s.data.and_then(|d| d.get("api-key").cloned())
            {
                return String::from_utf8(k.0).unwrap();
            }
            assert!(Instant::now() < deadline, "no Secret for ApiKey {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// TokenPolicy `name`'s active signing key, read from its Secret (as
    /// an attacker or a benchmark with Secret read rights could), and the
    /// JWT header latchkey signs with it.
    pub async fn signing_key(
        &self,
        policies: &Api<TokenPolicy>,
        name: &str,
    ) -> (jsonwebtoken::EncodingKey, jsonwebtoken::Header) {
        let status = policies.get(name).await.unwrap().status.unwrap();
        let record = status
            .keys
            .iter()
            .find(|k| Some(&k.kid) == status.active_key_id.as_ref())
            .unwrap();
        let secret = self.secrets.get(&format!("{name}-signing-keys")).await.unwrap();
        let pem = secret.data.unwrap()[&format!("{}.pem", record.kid)].0.clone();
        let key = keys::encoding_key(&record.kid, record.algorithm, &pem).unwrap();
        let header = claims::header(keys::jwt_algorithm(record.algorithm), &record.kid);
        (key, header)
    }
}

/// The claims of a JWT latchkey issued (decoded, not verified): a template
/// for tokens signed with [`Bench::signing_key`].
pub fn claims_of(token: &str) -> claims::AccessClaims {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Status of one plain HTTP/1.1 GET to 127.0.0.1:`port` (optionally with a key).
pub fn http_status_with(port: u16, path: &str, key: Option<&str>) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: app.example\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_status_with(port, path, None)
}

/// What wrk printed: requests/s and latency percentiles in microseconds;
/// with [`wrk_cpu`], also the CPU each request cost the servers and wrk.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub requests: u64,
    /// CPU time (user + system) of the measured server processes per
    /// request, in microseconds (0 unless measured).
    pub server_cpu_us: f64,
    /// wrk's own CPU time per request, in microseconds (0 unless measured).
    pub client_cpu_us: f64,
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields 14.. of `/proc/<pid>/stat` (utime, stime, cutime, cstime, …),
/// after the command name (which may hold spaces).
fn stat_times(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let t = stat_times(&pid.to_string());
    (t.first().unwrap_or(&0) + t.get(1).unwrap_or(&0)) as f64 / clock_ticks()
}

/// `pid` and its child processes (nginx's master and its worker), for
/// [`wrk_cpu`].
pub fn with_children(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// CPU seconds the children this process waited for have used (wrk).
fn children_cpu_seconds() -> f64 {
    let t = stat_times("self");
    (t.get(2).unwrap_or(&0) + t.get(3).unwrap_or(&0)) as f64 / clock_ticks()
}

/// [`wrk`], and the CPU time per request of the `servers` (PIDs: latchkey,
/// nginx) and of wrk itself, read from /proc before and after. On a shared
/// machine the rate depends on what else runs (wrk included: its TLS runs
/// on the same cores); CPU per request does much less.
pub fn wrk_cpu(url: &str, connections: u32, seconds: u32, key: Option<&str>, servers: &[u32]) -> WrkResult {
    wrk_script_cpu(url, connections, seconds, key, None, servers)
}

/// [`wrk_cpu`] with a Lua script, as [`wrk_script`].
pub fn wrk_script_cpu(
    url: &str,
    connections: u32,
    seconds: u32,
    key: Option<&str>,
    script: Option<&Path>,
    servers: &[u32],
) -> WrkResult {
    let server_cpu = || servers.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (server_before, client_before) = (server_cpu(), children_cpu_seconds());
    let mut r = wrk_script(url, connections, seconds, key, script);
    let (server_after, client_after) = (server_cpu(), children_cpu_seconds());
    let per_request = |seconds: f64| seconds * 1e6 / r.requests.max(1) as f64;
    r.server_cpu_us = per_request(server_after - server_before);
    r.client_cpu_us = per_request(client_after - client_before);
    r
}

fn parse_duration_us(s: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * factor)
}

pub fn wrk(url: &str, connections: u32, seconds: u32, key: Option<&str>) -> WrkResult {
    wrk_script(url, connections, seconds, key, None)
}

/// wrk with a Lua script (`-s`), for POSTs and per-request tokens.
pub fn wrk_script(
    url: &str,
    connections: u32,
    seconds: u32,
    key: Option<&str>,
    script: Option<&Path>,
) -> WrkResult {
    let mut cmd = Command::new("wrk");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    let out = cmd.arg(url).output().expect("run wrk (run e2e/deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["50%", v] => r.p50_us = parse_duration_us(v).unwrap_or(0.0),
            ["99%", v] => r.p99_us = parse_duration_us(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", v] => r.non_2xx = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    assert!(
        r.rps > 0.0,
        "wrk printed no rate for {url}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// wrk results of several targets over interleaved rounds (every target
/// once per round, so that drift over time hits them all alike).
pub struct Rounds {
    names: Vec<String>,
    /// `results[i]`: target i's result of each round.
    results: Vec<Vec<WrkResult>>,
}

impl Rounds {
    /// Runs [`repeat`] rounds; `measure(i)` runs target `i` (named
    /// `names[i]`) once and checks its result.
    pub fn run(names: &[&str], mut measure: impl FnMut(usize) -> WrkResult) -> Self {
        let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); names.len()];
        for round in 0..repeat() {
            for (i, name) in names.iter().enumerate() {
                let r = measure(i);
                eprintln!("round {}: {name}: {:.0} req/s", round + 1, r.rps);
                results[i].push(r);
            }
        }
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            results,
        }
    }

    /// The median over the rounds of `f` of target `i`.
    pub fn median(&self, i: usize, f: fn(&WrkResult) -> f64) -> f64 {
        median(self.results[i].iter().map(f).collect())
    }

    /// Prints `label` (padded as wanted) and the ratio of the median
    /// req/s of target `i` to target `j`.
    pub fn print_ratio(&self, label: &str, i: usize, j: usize) {
        println!(
            "{label}{:.2}",
            self.median(i, |r| r.rps) / self.median(j, |r| r.rps)
        );
    }

    /// Prints `label` and the ratio of the median server CPU per request of
    /// target `j` to that of target `i` (so that, like a rate ratio, 1.0
    /// means "costs the same" and below 1 "`i` costs more").
    pub fn print_cpu_ratio(&self, label: &str, i: usize, j: usize) {
        println!(
            "{label}{:.2}",
            self.median(j, |r| r.server_cpu_us) / self.median(i, |r| r.server_cpu_us)
        );
    }

    /// Prints `title`, then a row per target: medians of req/s, p50, p99,
    /// and the CPU per request of the servers and of wrk.
    pub fn print_cpu(&self, title: &str) {
        println!("{title}");
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>14} {:>12}",
            "target", "req/s", "p50", "p99", "server CPU/req", "wrk CPU/req"
        );
        for (i, name) in self.names.iter().enumerate() {
            println!(
                "{name:<40} {:>10.0} {:>8.0}us {:>8.0}us {:>12.1}us {:>10.1}us",
                self.median(i, |r| r.rps),
                self.median(i, |r| r.p50_us),
                self.median(i, |r| r.p99_us),
                self.median(i, |r| r.server_cpu_us),
                self.median(i, |r| r.client_cpu_us)
            );
        }
    }

    /// Prints `title`, then a row per target: medians of req/s, p50, p99.
    pub fn print(&self, title: &str) {
        println!("{title}");
        println!("{:<38} {:>10} {:>10} {:>10}", "target", "req/s", "p50", "p99");
        for (i, name) in self.names.iter().enumerate() {
            println!(
                "{name:<38} {:>10.0} {:>8.0}us {:>8.0}us",
                self.median(i, |r| r.rps),
                self.median(i, |r| r.p50_us),
                self.median(i, |r| r.p99_us)
            );
        }
    }
}
