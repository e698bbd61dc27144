//! `grpc`: gRPC `Check` per second against HTTP `/auth/envoy` on the same
//! `latchkey serve`, with a valid key and with a repeated token (see
//! main.rs).

use crate::harness::{Bench, Rounds, WrkResult, env_or, http_status_with, repeat, wrk};
use kube::Api;
use kube::api::PostParams;
use latchkey::crd::{ApiKey, TokenPolicy};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// `seconds` of Checks with `credential` (as `Authorization: Bearer`) from
/// `streams` concurrent calls over `conns` connections, as a WrkResult.
fn check_rate(
    bin: &PathBuf,
    addr: &str,
    credential: &str,
    seconds: u32,
    conns: u32,
    streams: u32,
) -> WrkResult {
    let mut child = Command::new(bin)
        .args(["-addr", addr, "-bench", "-duration", &format!("{seconds}s")])
        .args(["-conns", &conns.to_string(), "-streams", &streams.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start extauthz-client");
    let cases =
        serde_json::json!([{"name": "bench", "headers": {"authorization": format!("Bearer {credential}")}}]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "extauthz-client -bench failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the client's JSON line");
    let checks = v["checks"].as_u64().unwrap_or(0);
    WrkResult {
        rps: v["rate"].as_f64().unwrap_or(0.0),
        requests: checks,
        non_2xx: v["not_ok"].as_u64().unwrap_or(0) + v["errors"].as_u64().unwrap_or(0),
        ..Default::default()
    }
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
    let grpc_port = crate::harness::free_port();
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let (_server, lk) = bench.latchkey_with("serve", &bench.ns, &["--grpc-addr", &grpc_addr]);
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

    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let connections = 64;
    let conns: u32 = env_or("BENCH_GRPC_CONNS", 4);
    let streams: u32 = env_or("BENCH_GRPC_STREAMS", 64);
    let http_url = format!("http://127.0.0.1:{lk}/auth/envoy");
    let targets: [(&str, &str, bool); 4] = [
        ("HTTP /auth/envoy, valid key (wrk)", &key, false),
        ("gRPC Check, valid key (Go client)", &key, true),
        ("HTTP /auth/envoy, repeated token (wrk)", &token, false),
        ("gRPC Check, repeated token (Go client)", &token, true),
    ];
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, credential, grpc) = targets[i];
        let r = match grpc {
            true => check_rate(&bin, &grpc_addr, credential, seconds, conns, streams),
            false => wrk(&http_url, connections, seconds, Some(credential)),
        };
        assert_eq!(r.non_2xx, 0, "{name}: denials or errors during the benchmark");
        r
    });
    rounds.print(&format!(
        "\nloopback, same server, median of {} interleaved runs of {seconds}s: wrk -t1 -c{connections}; \
         extauthz-client -bench -conns {conns} -streams {streams}:",
        repeat()
    ));
    rounds.print_ratio("ratio gRPC / HTTP, valid key:      ", 1, 0);
    rounds.print_ratio("ratio gRPC / HTTP, repeated token: ", 3, 2);
    println!("(goal: ≥ 0.8; the Go client and wrk share the machine's 2 cores with the server)");
    bench.cleanup().await;
}
