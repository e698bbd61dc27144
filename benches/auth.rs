//! Benchmarks of the auth server, run by `e2e/bench-auth` and `e2e/bench-index`
//! (which build the release binary and bring the local control plane up):
//!
//! - `throughput`: wrk on loopback against one `latchkey serve` and one nginx,
//!   in the same run and with the same connections: latchkey's plain `/livez`
//!   (the ceiling) vs `/auth/nginx` with a valid key vs an invalid key, and
//!   nginx serving a static file without auth vs with `auth_request` to
//!   latchkey. Each is run `BENCH_REPEAT` times (default 3), interleaved, and
//!   the median is printed with the ratios; then the API-key route at half of
//!   its measured maximum rate, open loop (evenly spaced requests), for p99.
//! - `revocation N`: N times, create an ApiKey, wait until nginx lets it
//!   through, patch `revoked: true` and time from the patch's return to the
//!   first 401 through nginx; prints p50, p99 and max.
//! - `tokens`: JWT signatures and verifications per second on one core for
//!   each algorithm (in process); then, over HTTP against one `latchkey
//!   serve`: `POST /token` mints per second, and `/auth/nginx` with a JWT
//!   first seen (every request a different token, pre-signed with the
//!   policy's key from its Secret) vs repeated (the same token: cached), next
//!   to the `/livez` ceiling and the API-key route, medians of `BENCH_REPEAT`.
//! - `cache-flood N`: one `latchkey serve` (default limits) and ten ApiKeys
//!   of one TokenPolicy; N distinct valid big tokens (~6 KiB, sixteen
//!   250-character custom claims each, signed with the policy's key, spread
//!   over the ten `client_id`s) sent to `/auth/nginx` as fast as two
//!   threads can sign them, while a third thread times a cached token on
//!   its own keep-alive connection. Prints the server's RSS before and
//!   after, the cache's bytes and entries (`/metrics`), and the cached
//!   token's median and p99 latency before vs during the flood (the ratio).
//! - `index-synthetic N`: the auth index's memory for N synthetic ApiKeys
//!   (RSS before and after), per key.
//! - `index-real N`: N real ApiKeys on the control plane, then the RSS of a
//!   `latchkey serve` that indexed them minus one that watches an empty
//!   namespace, per key.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use latchkey::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord};
use latchkey::key::ApiKeyValue;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run this through e2e/bench-auth"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A child process stopped by PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} is not listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A namespace of the local control plane for one benchmark, deleted at the end.
struct Bench {
    client: kube::Client,
    ns: String,
    api_keys: Api<ApiKey>,
    secrets: Api<Secret>,
    kubeconfig: String,
    latchkey: String,
    dir: PathBuf,
}

impl Bench {
    async fn new(prefix: &str) -> Self {
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

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }

    /// `latchkey <mode>` watching `ns` on a free port; returns it and its port.
    fn latchkey(&self, mode: &str, ns: &str) -> (Proc, u16) {
        let port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("latchkey-{mode}-{port}.log"))).unwrap();
        let child = Command::new(&self.latchkey)
            .args([
                mode,
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--watch-namespace",
                ns,
            ])
            .args(["--kubeconfig", &self.kubeconfig])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start latchkey");
        wait_port(port, "latchkey");
        let deadline = Instant::now() + Duration::from_secs(300);
        while http_status(port, "/readyz") != Some(200) {
            assert!(Instant::now() < deadline, "latchkey never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        (Proc(child), port)
    }

    /// nginx from `e2e/proxy/nginx.conf.in` in front of latchkey on `latchkey_port`.
    fn nginx(&self, latchkey_port: u16) -> (Proc, u16) {
        let port = free_port();
        let template =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/proxy/nginx.conf.in"))
                .unwrap();
        let conf = template
            .replace("@PREFIX@", &self.dir.display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@LATCHKEY@", &format!("127.0.0.1:{latchkey_port}"))
            .replace("@UPSTREAM@", "127.0.0.1:9")
            .replace("@STATIC@", &self.dir.join("static").display().to_string());
        let path = self.dir.join(format!("nginx-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (run e2e/deps)");
        wait_port(port, "nginx");
        (Proc(child), port)
    }

    /// Creates an ApiKey and returns its key once the Secret holds it.
    async fn key(&self, name: &str, scopes: &[&str]) -> String {
        let ak = ApiKey::new(
            name,
            ApiKeySpec {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        self.api_keys.create(&PostParams::default(), &ak).await.unwrap();
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
}

/// Status of one plain HTTP/1.1 GET to 127.0.0.1:`port` (optionally with a key).
fn http_status_with(port: u16, path: &str, key: Option<&str>) -> Option<u16> {
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

fn http_status(port: u16, path: &str) -> Option<u16> {
    http_status_with(port, path, None)
}

/// What wrk printed: requests/s and latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    requests: u64,
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

fn wrk(url: &str, connections: u32, seconds: u32, key: Option<&str>) -> WrkResult {
    wrk_script(url, connections, seconds, key, None)
}

/// wrk with a Lua script (`-s`), for POSTs and per-request tokens.
fn wrk_script(
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

/// What the open-loop generator measured.
struct Paced {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Sends `rate` requests per second for `seconds`, evenly spaced over
/// `connections` keep-alive connections (one OS thread each, sleeping until
/// each request's slot), and measures each from its slot to the end of its
/// response.
fn open_loop(port: u16, path: &str, key: &str, rate: f64, seconds: u32, connections: u32) -> Paced {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n");
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(seconds as u64);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let request = request.clone();
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut latencies = Vec::new();
                let mut buf = vec![0u8; 4096];
                // Connections are offset so that together they are evenly spaced.
                let mut slot = start + interval.mul_f64(c as f64 / connections as f64);
                while slot < end {
                    let now = Instant::now();
                    if slot > now {
                        std::thread::sleep(slot - now);
                    }
                    stream.write_all(request.as_bytes()).expect("send");
                    // Read one response: headers, then Content-Length bytes.
                    let mut got = 0;
                    loop {
                        let n = stream.read(&mut buf[got..]).expect("read");
                        assert!(n > 0, "connection closed");
                        got += n;
                        let text = std::str::from_utf8(&buf[..got]).unwrap_or_default();
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            assert!(text.starts_with("HTTP/1.1 200"), "not allowed: {text}");
                            let length: usize = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got >= head_end + 4 + length {
                                break;
                            }
                        }
                    }
                    latencies.push(slot.elapsed());
                    slot += interval;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("sender thread"))
        .collect();
    all.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Paced {
        rps: all.len() as f64 / seconds as f64,
        p50_us: us(percentile(&all, 0.5)),
        p99_us: us(percentile(&all, 0.99)),
        max_us: us(*all.last().expect("some requests")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn throughput() {
    let bench = Bench::new("bench-auth").await;
    // The controller delivers the key; the measured server is `serve` alone.
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let key = bench.key("bench", &["orders:read"]).await;
    let (_server, lk) = bench.latchkey("serve", &bench.ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status_with(lk, "/auth/nginx?scope=orders:read", Some(&key)) != Some(200) {
        assert!(Instant::now() < deadline, "latchkey never accepted the bench key");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_nginx, ng) = bench.nginx(lk);
    assert_eq!(
        http_status(ng, "/static-auth/index.html"),
        Some(401),
        "nginx must refuse without a key"
    );
    assert_eq!(
        http_status_with(ng, "/static-auth/index.html", Some(&key)),
        Some(200)
    );

    let invalid = ApiKeyValue::generate();
    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let connections = 64;
    let targets: [(&str, String, Option<&str>, bool); 5] = [
        (
            "latchkey /livez (ceiling)",
            format!("http://127.0.0.1:{lk}/livez"),
            None,
            true,
        ),
        (
            "latchkey /auth/nginx, valid key",
            format!("http://127.0.0.1:{lk}/auth/nginx?scope=orders:read"),
            Some(&key),
            true,
        ),
        (
            "latchkey /auth/nginx, invalid key",
            format!("http://127.0.0.1:{lk}/auth/nginx?scope=orders:read"),
            Some(invalid.expose()),
            false,
        ),
        (
            "nginx static, no auth",
            format!("http://127.0.0.1:{ng}/static/index.html"),
            None,
            true,
        ),
        (
            "nginx static + auth_request",
            format!("http://127.0.0.1:{ng}/static-auth/index.html"),
            Some(&key),
            true,
        ),
    ];
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    for round in 0..repeat {
        for (i, (name, url, k, ok)) in targets.iter().enumerate() {
            let r = wrk(url, connections, seconds, *k);
            if *ok {
                assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
            }
            eprintln!("round {}: {name}: {:.0} req/s", round + 1, r.rps);
            results[i].push(r);
        }
    }
    let med = |i: usize, f: fn(&WrkResult) -> f64| median(results[i].iter().map(f).collect());
    println!(
        "\nwrk -t1 -c{connections} -d{seconds}s --latency, median of {repeat} interleaved runs (loopback, same run):"
    );
    println!("{:<38} {:>10} {:>10} {:>10}", "target", "req/s", "p50", "p99");
    for (i, (name, ..)) in targets.iter().enumerate() {
        println!(
            "{name:<38} {:>10.0} {:>8.0}us {:>8.0}us",
            med(i, |r| r.rps),
            med(i, |r| r.p50_us),
            med(i, |r| r.p99_us)
        );
    }
    let ceiling = med(0, |r| r.rps);
    println!(
        "ratio valid-key decision / ceiling:     {:.2}",
        med(1, |r| r.rps) / ceiling
    );
    println!(
        "ratio invalid-key decision / ceiling:   {:.2}",
        med(2, |r| r.rps) / ceiling
    );
    println!(
        "ratio nginx+auth_request / nginx:       {:.2}",
        med(4, |r| r.rps) / med(3, |r| r.rps)
    );

    // Half of the measured maximum, open loop: requests evenly spaced in
    // time (not wrk's 1 ms bursts), latency counted from each request's
    // scheduled time so that a stall is not hidden (coordinated omission).
    let target = med(1, |r| r.rps) / 2.0;
    let path = "/auth/nginx?scope=orders:read";
    // The same generator at the same rate against the plain 200 route, run
    // alternately: what the 2 shared cores (generator threads and server
    // workers on the same CPUs) add to any route's tail, as the baseline.
    let (mut decided, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        decided.push(open_loop(lk, path, &key, target, seconds, 8));
        plain.push(open_loop(lk, "/livez", &key, target, seconds, 8));
    }
    let med_p = |v: &[Paced], f: fn(&Paced) -> f64| median(v.iter().map(f).collect());
    for (name, runs) in [
        ("valid-key decision", &decided),
        ("plain /livez (baseline)", &plain),
    ] {
        println!(
            "{name}, open loop at half the max rate ({target:.0} req/s wanted, {:.0} sent over 8 connections), median of {repeat}: p50 {:.0}us, p99 {:.0}us, max {:.0}us",
            med_p(runs, |p| p.rps),
            med_p(runs, |p| p.p50_us),
            med_p(runs, |p| p.p99_us),
            med_p(runs, |p| p.max_us)
        );
    }
    println!(
        "open-loop p99, decision minus baseline: {:.0}us",
        med_p(&decided, |p| p.p99_us) - med_p(&plain, |p| p.p99_us)
    );
    // Closed loop, as a cross-check: the number of connections whose rate
    // comes closest to half the maximum.
    let closest = [1u32, 2, 3, 4, 6, 8, 12, 16]
        .into_iter()
        .map(|c| (c, wrk(&targets[1].1, c, seconds, Some(&key))))
        .min_by(|(_, a), (_, b)| (a.rps - target).abs().total_cmp(&(b.rps - target).abs()))
        .expect("one run");
    println!(
        "valid-key decision, closed loop nearest half the max rate ({} connections, {:.0} req/s = {:.0}% of max): p50 {:.0}us, p99 {:.0}us",
        closest.0,
        closest.1.rps,
        100.0 * closest.1.rps / (target * 2.0),
        closest.1.p50_us,
        closest.1.p99_us
    );
    drop(_nginx);
    bench.cleanup().await;
}

/// Signatures and verifications per second on one core, per algorithm.
fn crypto_per_core() {
    use latchkey::crd::SigningAlgorithm;
    use latchkey::token::{claims, keys};
    println!("\nJWT crypto on one core (in process, 1 s each):");
    println!("{:<8} {:>12} {:>14}", "alg", "signs/s", "verifies/s");
    for alg in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let key = keys::generate(alg).unwrap();
        let enc = keys::encoding_key(&key.kid, alg, key.pem.as_bytes()).unwrap();
        let jwk = keys::public_jwk(&key.kid, alg, key.pem.as_bytes()).unwrap();
        let verifying = claims::VerifyingKey {
            algorithm: keys::jwt_algorithm(alg),
            key: keys::decoding_key(&key.kid, alg, &jwk).unwrap(),
            issuer: "http://127.0.0.1/issuers/bench/p".into(),
            audiences: vec!["orders".into()],
            max_ttl_seconds: 3600,
        };
        let now = 1_800_000_000;
        let claims = claims::AccessClaims {
            iss: verifying.issuer.clone(),
            sub: "bench".into(),
            aud: vec!["orders".into()],
            exp: now + 900,
            iat: now,
            nbf: None,
            jti: "j".repeat(22),
            client_id: "AbCdEfGhIjKl".into(),
            scope: "orders:read".into(),
            role: None,
            custom: Default::default(),
        };
        let header = claims::header(verifying.algorithm, &key.kid);
        let (mut signs, start) = (0u64, Instant::now());
        let mut token = String::new();
        while start.elapsed() < Duration::from_secs(1) {
            token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
            signs += 1;
        }
        let sign_rate = signs as f64 / start.elapsed().as_secs_f64();
        let (mut verifies, start) = (0u64, Instant::now());
        while start.elapsed() < Duration::from_secs(1) {
            claims::verify(&token, |_| Some(&verifying), now).unwrap();
            verifies += 1;
        }
        let verify_rate = verifies as f64 / start.elapsed().as_secs_f64();
        println!("{:<8} {sign_rate:>12.0} {verify_rate:>14.0}", alg.as_str());
    }
}

async fn tokens() {
    use latchkey::crd::TokenPolicy;
    use latchkey::token::{claims, keys};
    crypto_per_core();

    let bench = Bench::new("bench-tokens").await;
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let policy: TokenPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "bench", "namespace": bench.ns},
        "spec": {"audiences": ["orders"], "allowedScopes": ["orders:read"], "tokenTTL": "1h"},
    }))
    .unwrap();
    let policies: Api<TokenPolicy> = Api::namespaced(bench.client.clone(), &bench.ns);
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let ak: ApiKey = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
        "metadata": {"name": "bench", "namespace": bench.ns},
        "spec": {"scopes": ["orders:read"], "tokenPolicyRef": {"name": "bench"}},
    }))
    .unwrap();
    bench.api_keys.create(&PostParams::default(), &ak).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = loop {
        if let Ok(Some(s)) = bench.secrets.get_opt("bench").await
            && let Some(k) = s.data.and_then(|d| d.get("api-key").cloned())
        {
            break String::from_utf8(k.0).unwrap();
        }
        assert!(Instant::now() < deadline, "no Secret for the bench ApiKey");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_server, lk) = bench.latchkey("serve", &bench.ns);
    // One token from the server, to learn the issuer and kid.
    let token_url = format!("http://127.0.0.1:{lk}/token");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("bench:{key}"))
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let minted = loop {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: {basic}")])
            .args(["-d", "grant_type=client_credentials", &token_url])
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(t) = v["access_token"].as_str() {
            break t.to_owned();
        }
        assert!(Instant::now() < deadline, "/token never answered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let auth_url = format!("http://127.0.0.1:{lk}/auth/nginx?scope=orders:read");
    assert_eq!(
        http_status_with(lk, "/auth/nginx?scope=orders:read", Some(&minted)),
        Some(200)
    );

    // Pre-sign distinct tokens with the policy's own key (from its Secret),
    // so that each first-seen request carries a token the server never saw.
    let status = policies.get("bench").await.unwrap().status.unwrap();
    let record = status
        .keys
        .iter()
        .find(|k| Some(&k.kid) == status.active_key_id.as_ref())
        .unwrap();
    let secret = bench.secrets.get("bench-signing-keys").await.unwrap();
    let pem = secret.data.unwrap()[&format!("{}.pem", record.kid)].0.clone();
    let enc = keys::encoding_key(&record.kid, record.algorithm, &pem).unwrap();
    let mut template: claims::AccessClaims = {
        let payload = minted.split('.').nth(1).unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let header = claims::header(keys::jwt_algorithm(record.algorithm), &record.kid);
    let first_seen_tokens: usize = std::env::var("BENCH_FIRST_SEEN_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let tokens_file = bench.dir.join("tokens.txt");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tokens_file).unwrap());
        for i in 0..first_seen_tokens {
            template.jti = format!("bench{i:017}");
            writeln!(f, "{}", jsonwebtoken::encode(&header, &template, &enc).unwrap()).unwrap();
        }
    }
    let first_seen_lua = bench.dir.join("first-seen.lua");
    std::fs::write(
        &first_seen_lua,
        format!(
            "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i + 1\n  local t = tokens[((i - 1) % #tokens) + 1]\n  \
             return wrk.format(nil, nil, {{[\"Authorization\"] = \"Bearer \" .. t}})\nend\n",
            tokens_file.display()
        ),
    )
    .unwrap();
    let mint_lua = bench.dir.join("mint.lua");
    std::fs::write(
        &mint_lua,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"grant_type=client_credentials\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{basic}\"\n"
        ),
    )
    .unwrap();

    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seconds = 3;
    let connections = 64;
    type Target<'a> = (&'a str, String, Option<&'a str>, Option<&'a Path>);
    let targets: [Target; 5] = [
        (
            "latchkey /livez (ceiling)",
            format!("http://127.0.0.1:{lk}/livez"),
            None,
            None,
        ),
        ("/auth/nginx, API key", auth_url.clone(), Some(&key), None),
        (
            "/auth/nginx, JWT repeated (cached)",
            auth_url.clone(),
            Some(&minted),
            None,
        ),
        (
            "/auth/nginx, JWT first seen",
            auth_url.clone(),
            None,
            Some(&first_seen_lua),
        ),
        (
            "POST /token (mint ES256)",
            token_url.clone(),
            None,
            Some(&mint_lua),
        ),
    ];
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    for round in 0..repeat {
        for (i, (name, url, k, script)) in targets.iter().enumerate() {
            let r = wrk_script(url, connections, seconds, *k, *script);
            assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
            if i == 3 {
                assert!(
                    r.requests as usize <= first_seen_tokens,
                    "first-seen ran out of distinct tokens ({} requests, {first_seen_tokens} tokens): \
                     raise BENCH_FIRST_SEEN_TOKENS",
                    r.requests
                );
            }
            eprintln!("round {}: {name}: {:.0} req/s", round + 1, r.rps);
            results[i].push(r);
        }
    }
    let med = |i: usize, f: fn(&WrkResult) -> f64| median(results[i].iter().map(f).collect());
    println!("\nwrk -t1 -c{connections} -d{seconds}s --latency, median of {repeat} interleaved runs:");
    println!("{:<38} {:>10} {:>10} {:>10}", "target", "req/s", "p50", "p99");
    for (i, (name, ..)) in targets.iter().enumerate() {
        println!(
            "{name:<38} {:>10.0} {:>8.0}us {:>8.0}us",
            med(i, |r| r.rps),
            med(i, |r| r.p50_us),
            med(i, |r| r.p99_us)
        );
    }
    let ceiling = med(0, |r| r.rps);
    println!(
        "ratio API key / ceiling:            {:.2}",
        med(1, |r| r.rps) / ceiling
    );
    println!(
        "ratio JWT repeated / ceiling:       {:.2}",
        med(2, |r| r.rps) / ceiling
    );
    println!(
        "ratio JWT first seen / ceiling:     {:.2}",
        med(3, |r| r.rps) / ceiling
    );
    bench.cleanup().await;
}

/// One HTTP/1.1 request on a keep-alive connection; returns the status.
fn keepalive_request(stream: &mut std::net::TcpStream, request: &[u8], buf: &mut Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    stream.write_all(request).expect("send");
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).expect("read body");
                assert!(n > 0, "the server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn cache_flood(n: usize) {
    use latchkey::crd::TokenPolicy;
    use latchkey::token::{claims, keys};
    const CLIENTS: usize = 10;
    const CLAIMS: usize = 16;
    let bench = Bench::new("bench-flood").await;
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let custom: Vec<serde_json::Value> = (0..CLAIMS)
        .map(|i| serde_json::json!({"name": format!("c{i}")}))
        .collect();
    let policy: TokenPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "flood", "namespace": bench.ns},
        "spec": {"audiences": ["orders"], "allowedScopes": ["orders:read"], "tokenTTL": "1h",
                 "maxTTL": "1h", "customClaims": custom},
    }))
    .unwrap();
    let policies: Api<TokenPolicy> = Api::namespaced(bench.client.clone(), &bench.ns);
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let mut keys_ = Vec::new();
    for c in 0..CLIENTS {
        let ak: ApiKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": format!("flood{c}"), "namespace": bench.ns},
            "spec": {"scopes": ["orders:read"], "tokenPolicyRef": {"name": "flood"}},
        }))
        .unwrap();
        bench.api_keys.create(&PostParams::default(), &ak).await.unwrap();
    }
    for c in 0..CLIENTS {
        let name = format!("flood{c}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let key = loop {
            if let Ok(Some(s)) = bench.secrets.get_opt(&name).await
                && let Some(k) = s.data.and_then(|d| d.get("api-key").cloned())
            {
                break String::from_utf8(k.0).unwrap();
            }
            assert!(Instant::now() < deadline, "no Secret for {name}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        keys_.push(key);
    }
    let (server, lk) = bench.latchkey("serve", &bench.ns);
    let pid = server.0.id();
    let http = reqwest::Client::new();
    // One token per key from the server: the templates (issuer, client_id).
    let mut minted = Vec::new();
    for key in &keys_ {
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = loop {
            let r = http
                .post(format!("http://127.0.0.1:{lk}/token"))
                .basic_auth("flood", Some(key))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<serde_json::Value>().await
                && let Some(t) = v["access_token"].as_str()
            {
                break t.to_owned();
            }
            assert!(Instant::now() < deadline, "/token never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        minted.push(token);
    }
    let status = policies.get("flood").await.unwrap().status.unwrap();
    let record = status
        .keys
        .iter()
        .find(|k| Some(&k.kid) == status.active_key_id.as_ref())
        .unwrap()
        .clone();
    let secret = bench.secrets.get("flood-signing-keys").await.unwrap();
    let pem = secret.data.unwrap()[&format!("{}.pem", record.kid)].0.clone();
    let enc = std::sync::Arc::new(keys::encoding_key(&record.kid, record.algorithm, &pem).unwrap());
    let header = claims::header(keys::jwt_algorithm(record.algorithm), &record.kid);
    let templates: Vec<claims::AccessClaims> = minted
        .iter()
        .map(|t| {
            let payload = t.split('.').nth(1).unwrap();
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
            let mut c: claims::AccessClaims = serde_json::from_slice(&bytes).unwrap();
            for i in 0..CLAIMS {
                let v: String = std::iter::repeat_n(char::from(b'a' + i as u8), 250).collect();
                c.custom.insert(format!("c{i}"), serde_json::json!(v));
            }
            c
        })
        .collect();
    let sample = jsonwebtoken::encode(&header, &templates[0], &enc).unwrap();
    let cached = minted[0].clone();
    let request_for = |t: &str| {
        format!("GET /auth/nginx?scope=orders:read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n")
    };
    let measure = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>, at_least: usize| {
        let request = request_for(&cached);
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", lk)).unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut lat = Vec::new();
            while lat.len() < at_least || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(keepalive_request(&mut s, request.as_bytes(), &mut buf), 200);
                lat.push(t.elapsed());
                std::thread::sleep(Duration::from_micros(500));
            }
            lat.sort();
            lat
        })
    };
    let metrics_text = || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{lk}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Warm up: the cached token is cached, the allocator has its arenas.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _ = measure(stop.clone(), 500).join().unwrap();
    let rss_before = rss_kib(pid);
    let before = measure(stop.clone(), 3000).join().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = measure(stop.clone(), 1);
    let started = Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let floods: Vec<_> = (0..2)
        .map(|f| {
            let (templates, enc, header, sent) = (templates.clone(), enc.clone(), header.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", lk)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let mut refused = 0usize;
                let mut i = f;
                while i < n {
                    let mut c = templates[i % CLIENTS].clone();
                    c.jti = format!("flood{i:020}");
                    let t = jsonwebtoken::encode(&header, &c, &enc).unwrap();
                    let request = format!(
                        "GET /auth/nginx?scope=orders:read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
                    );
                    if keepalive_request(&mut s, request.as_bytes(), &mut buf) != 200 {
                        refused += 1;
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 2;
                }
                refused
            })
        })
        .collect();
    let refused: usize = floods.into_iter().map(|t| t.join().unwrap()).sum();
    let flood_time = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.join().unwrap();
    let rss_after = rss_kib(pid);
    let m = metrics_text();
    assert_eq!(refused, 0, "flood tokens were refused");
    let pct = |v: &[Duration], p: f64| percentile(v, p).as_secs_f64() * 1e6;
    println!(
        "\ncache flood: {n} distinct valid tokens of {} bytes over {CLIENTS} client_ids in {flood_time:.1?} ({:.0}/s)",
        sample.len(),
        n as f64 / flood_time.as_secs_f64()
    );
    println!(
        "server RSS: before {:.1} MiB, after {:.1} MiB (+{:.1} MiB); cache {:.1} MiB in {} entries (bound {} MiB)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / 1024.0,
        metric(&m, "latchkey_token_cache_bytes") / 1048576.0,
        metric(&m, "latchkey_token_cache_entries"),
        latchkey::server::token_cache::DEFAULT_CACHE_BYTES >> 20
    );
    println!(
        "cached token /auth/nginx: before p50 {:.0}us p99 {:.0}us ({} requests); during the flood p50 {:.0}us p99 {:.0}us ({} requests); ratio p50 {:.2}",
        pct(&before, 0.5),
        pct(&before, 0.99),
        before.len(),
        pct(&during, 0.5),
        pct(&during, 0.99),
        during.len(),
        pct(&during, 0.5) / pct(&before, 0.5)
    );
    drop(server);
    bench.cleanup().await;
}

async fn revocation(trials: usize) {
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

fn index_synthetic(n: usize) {
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

async fn index_real(n: usize) {
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
    let (full_kib, idle_kib) = (rss_kib(full.0.id()), rss_kib(idle.0.id()));
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let n = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("throughput") => throughput().await,
        Some("revocation") => revocation(n(20)).await,
        Some("tokens") => tokens().await,
        Some("cache-flood") => cache_flood(n(200_000)).await,
        Some("index-synthetic") => index_synthetic(n(100_000)),
        Some("index-real") => index_real(n(10_000)).await,
        other => panic!(
            "unknown benchmark {other:?}: throughput | revocation N | tokens | cache-flood N | index-synthetic N | index-real N"
        ),
    }
}
