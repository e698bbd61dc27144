//! `grpc`: gRPC `Check` per second against HTTP `/auth/envoy` on the same
//! `latchkey serve`, with a valid key and with a repeated token; gRPC over
//! TLS against h2c (see main.rs).
//!
//! The load generators are alike: wrk (C, HTTP/1.1) for HTTP and h2load
//! (C, nghttp2, Debian's nghttp2-client) for gRPC, each one thread with 64
//! requests in flight (wrk: 64 connections; h2load: 4 connections of 16
//! streams, a proxy's shape). h2load posts a `CheckRequest` that
//! e2e/extauthz-client encoded with Envoy's generated types; it does not
//! read gRPC trailers, so the server's own decision counters must show
//! every Check of the round allowed. The Go client (grpc-go) in a loop is
//! measured too, as the earlier figures were: it costs the 2 cores more
//! than the server does. Next to each rate, the server's CPU time per
//! request (`/proc/<pid>/stat`), which no load generator can skew.

use crate::harness::{Bench, Rounds, WrkResult, env_or, http_status_with, repeat, wrk};
use kube::Api;
use kube::api::PostParams;
use latchkey::crd::{ApiKey, TokenPolicy};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The Go client, built (or found in the cache) by e2e/extauthz-client.sh.
fn client_bin() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/extauthz-client.sh");
    let out = Command::new(script).output().expect("run e2e/extauthz-client.sh");
    assert!(
        out.status.success(),
        "building the gRPC client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn bench_case(credential: &str) -> String {
    serde_json::json!([{"name": "bench", "headers": {"authorization": format!("Bearer {credential}")}}])
        .to_string()
}

/// Runs the Go client with `args`, the bench case of `credential` on stdin.
fn go_client(bin: &Path, args: &[&str], credential: &str) -> Vec<u8> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start extauthz-client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(bench_case(credential).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "extauthz-client {args:?} failed");
    out.stdout
}

/// `seconds` of Checks from the Go client: `streams` concurrent calls over
/// `conns` connections.
fn go_rate(bin: &Path, addr: &str, credential: &str, seconds: u32, conns: u32, streams: u32) -> WrkResult {
    let (conns, streams, duration) = (conns.to_string(), streams.to_string(), format!("{seconds}s"));
    let args = [
        "-addr",
        addr,
        "-bench",
        "-duration",
        &duration,
        "-conns",
        &conns,
        "-streams",
        &streams,
    ];
    let v: serde_json::Value =
        serde_json::from_slice(&go_client(bin, &args, credential)).expect("the client's JSON line");
    WrkResult {
        rps: v["rate"].as_f64().unwrap_or(0.0),
        requests: v["checks"].as_u64().unwrap_or(0),
        non_2xx: v["not_ok"].as_u64().unwrap_or(0) + v["errors"].as_u64().unwrap_or(0),
        ..Default::default()
    }
}

/// `seconds` of h2load posting the framed `CheckRequest` in `body` to
/// `url` (h2c for http://, TLS with ALPN h2 for https://).
fn h2load(url: &str, body: &Path, seconds: u32, conns: u32, streams: u32) -> WrkResult {
    let out = Command::new("h2load")
        .args(["-t1", &format!("-c{conns}"), &format!("-m{streams}")])
        .args(["-D", &seconds.to_string(), "--warm-up-time=1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("{url}{CHECK_PATH}"))
        .output()
        .expect("run h2load (e2e/deps installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            ["finished", "in", _, rate, "req/s", ..] => r.rps = rate.parse().unwrap_or(0.0),
            [
                "requests:",
                _,
                "total",
                _,
                "started",
                _,
                "done",
                ok,
                "succeeded",
                failed,
                "failed",
                errored,
                "errored",
                ..,
            ] => {
                r.requests = ok.parse().unwrap_or(0);
                r.non_2xx = failed.parse::<u64>().unwrap_or(0) + errored.parse::<u64>().unwrap_or(0);
            }
            _ => {}
        }
    }
    assert!(r.rps > 0.0, "h2load printed no rate for {url}:\n{text}");
    r
}

/// The server's decisions on the gRPC route so far: (allows, the rest).
fn grpc_decisions(http_port: u16) -> (u64, u64) {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{http_port}/metrics")])
        .output()
        .expect("curl");
    let mut counts = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = line.strip_prefix(r#"latchkey_auth_decisions_total{route="grpc",result=""#) else {
            continue;
        };
        let (result, n) = rest.split_once("\"} ").unwrap_or_default();
        let n: u64 = n.trim().parse().unwrap_or(0);
        match result {
            "allow" => counts.0 += n,
            _ => counts.1 += n,
        }
    }
    counts
}

/// The CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0)
    })
}

/// How a target is driven.
#[derive(Clone, Copy)]
enum Load {
    Wrk,
    H2load { tls: bool },
    Go,
}

pub async fn grpc() {
    let bin = client_bin();
    let bench = Bench::new("bench-grpc").await;
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
    let key = bench.secret_key("bench").await;
    let grpc_addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let (server, lk) = bench.latchkey_with("serve", &bench.ns, &["--grpc-addr", &grpc_addr]);
    // The same server with gRPC over TLS (latchkey's CA), for TLS vs h2c.
    let tls_addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let ca_secret = format!("{}/bench-ca", bench.ns);
    let (tls_server, lt) = bench.latchkey_with(
        "serve",
        &bench.ns,
        &[
            "--grpc-addr",
            &tls_addr,
            "--grpc-tls",
            "self-signed",
            "--webhook-ca-secret",
            &ca_secret,
        ],
    );
    let token_url = format!("http://127.0.0.1:{lk}/token");
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: Bearer {key}")])
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
    for credential in [&key, &token] {
        assert_eq!(http_status_with(lk, "/auth/envoy", Some(credential)), Some(200));
    }
    assert_eq!(http_status_with(lt, "/auth/envoy", Some(&key)), Some(200));
    // The Check bodies h2load posts, and one Check of each through the Go
    // client over TLS, verifying the certificate against the CA.
    let body = |name: &str, credential: &str| {
        let path = bench.dir.join(name);
        std::fs::write(&path, go_client(&bin, &["-encode"], credential)).unwrap();
        path
    };
    let (key_body, token_body) = (body("check-key.bin", &key), body("check-token.bin", &token));
    let ca = bench.dir.join("ca.crt");
    let ca_pem = bench.secrets.get("bench-ca").await.unwrap().data.unwrap()["tls.crt"]
        .0
        .clone();
    std::fs::write(&ca, ca_pem).unwrap();
    let one = go_client(
        &bin,
        &[
            "-addr",
            &tls_addr,
            "-cacert",
            ca.to_str().unwrap(),
            "-servername",
            "localhost",
        ],
        &key,
    );
    let one: serde_json::Value = serde_json::from_slice(&one).unwrap();
    assert_eq!(one["grpc_code"], 0, "an allowed Check over verified TLS: {one}");

    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let connections = 64;
    let conns: u32 = env_or("BENCH_GRPC_CONNS", 4);
    let streams: u32 = env_or("BENCH_GRPC_STREAMS", 16);
    let http_url = format!("http://127.0.0.1:{lk}/auth/envoy");
    let h2c_url = format!("http://{grpc_addr}");
    let tls_url = format!("https://{tls_addr}");
    let targets: [(&str, &str, Load); 6] = [
        ("HTTP /auth/envoy, valid key (wrk)", &key, Load::Wrk),
        (
            "gRPC Check, valid key (h2load)",
            &key,
            Load::H2load { tls: false },
        ),
        ("HTTP /auth/envoy, repeated token (wrk)", &token, Load::Wrk),
        (
            "gRPC Check, repeated token (h2load)",
            &token,
            Load::H2load { tls: false },
        ),
        (
            "gRPC Check over TLS, valid key (h2load)",
            &key,
            Load::H2load { tls: true },
        ),
        ("gRPC Check, valid key (Go client)", &key, Load::Go),
    ];
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let mut cpu_per_request: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let rounds = Rounds::run(&names, |i| {
        let (name, credential, load) = targets[i];
        let (pid, port) = match load {
            Load::H2load { tls: true } => (tls_server.pid(), lt),
            _ => (server.pid(), lk),
        };
        let before = (cpu_seconds(pid), grpc_decisions(port));
        let r = match load {
            Load::Wrk => wrk(&http_url, connections, seconds, Some(credential)),
            Load::H2load { tls } => {
                let body = if credential == key { &key_body } else { &token_body };
                h2load(
                    if tls { &tls_url } else { &h2c_url },
                    body,
                    seconds,
                    conns,
                    streams,
                )
            }
            Load::Go => go_rate(&bin, &grpc_addr, credential, seconds, conns, 64),
        };
        let (cpu, decisions) = (cpu_seconds(pid) - before.0, grpc_decisions(port));
        assert_eq!(r.non_2xx, 0, "{name}: denials or errors during the benchmark");
        if !matches!(load, Load::Wrk) {
            assert_eq!(decisions.1, before.1.1, "{name}: the server denied Checks");
            assert!(
                decisions.0 - before.1.0 >= r.requests,
                "{name}: fewer allows than answers"
            );
        }
        // Over the whole run (h2load's warm-up second included).
        let served = match load {
            Load::Wrk => r.requests,
            _ => decisions.0 - before.1.0,
        };
        cpu_per_request[i].push(cpu * 1e6 / served.max(1) as f64);
        r
    });
    rounds.print(&format!(
        "\nloopback, median of {} interleaved runs of {seconds}s, one load-generator thread each: \
         wrk -t1 -c{connections}; h2load -t1 -c{conns} -m{streams}; extauthz-client -bench -conns {conns} -streams 64:",
        repeat()
    ));
    println!("server CPU per request (user+system, median):");
    for (name, cpu) in names.iter().zip(&cpu_per_request) {
        println!("  {name:<44} {:>6.1} us", crate::stats::median(cpu.clone()));
    }
    rounds.print_ratio("ratio gRPC / HTTP, valid key (h2load / wrk):      ", 1, 0);
    rounds.print_ratio("ratio gRPC / HTTP, repeated token (h2load / wrk): ", 3, 2);
    rounds.print_ratio("ratio gRPC TLS / h2c, valid key (h2load):         ", 4, 1);
    rounds.print_ratio("ratio gRPC / HTTP, valid key (Go client / wrk):   ", 5, 0);
    println!("(goal: gRPC / HTTP >= 0.8; everything shares the machine's 2 cores with the server)");
    bench.cleanup().await;
}
