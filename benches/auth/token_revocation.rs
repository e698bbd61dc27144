//! `token-revocation N`: from the return of `POST /revoke` at one of two
//! `latchkey serve` replicas to the first 401 for the token on **both**
//! (each had verified and cached it), N times, alternating the replica
//! that revokes; prints p50, p99 and max (see main.rs).

use crate::harness::{Bench, http_status_with};
use crate::stats::percentile;
use kube::Api;
use kube::api::PostParams;
use latchkey::crd::{ApiKey, TokenPolicy};
use std::process::Command;
use std::time::{Duration, Instant};

/// One issuer for both replicas, as behind one Service.
const ISSUER_BASE: &str = "http://127.0.0.1:8080";
const ROUTE: &str = "/auth/nginx?scope=orders:read";

fn post(port: u16, path: &str, basic: &str, form: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: {basic}"), "-d", form])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

pub async fn token_revocation(trials: usize) {
    let bench = Bench::new("bench-token-revoke").await;
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let policy: TokenPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "bench", "namespace": bench.ns},
        "spec": {"audiences": ["orders"], "allowedScopes": ["orders:read"], "tokenTTL": "15m",
                 "sessionMaxAge": "8h", "delegation": {"subjectPattern": "^user-[0-9]+$"}},
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
    let extra = ["--issuer-base-url", ISSUER_BASE];
    let (_a, a) = bench.latchkey_with("serve", &bench.ns, &extra);
    let (_b, b) = bench.latchkey_with("serve", &bench.ns, &extra);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("bench:{key}"))
    );
    let mint = |port: u16, user: usize| -> Option<String> {
        let (code, v) = post(
            port,
            "/token",
            &basic,
            &format!("grant_type=client_credentials&requested_subject=user-{user}"),
        );
        if code != 200 {
            eprintln!("POST /token at {port}: {code} {v}");
        }
        (code == 200).then(|| v["access_token"].as_str().map(str::to_owned))?
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while mint(a, 0).is_none_or(|t| http_status_with(b, ROUTE, Some(&t)) != Some(200)) {
        assert!(
            Instant::now() < deadline,
            "the replicas never served the policy's tokens"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut latencies = Vec::new();
    for i in 0..trials {
        let (here, there) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let token = mint(here, i + 1).expect("a token");
        for port in [a, b] {
            assert_eq!(http_status_with(port, ROUTE, Some(&token)), Some(200));
        }
        let (code, _) = post(here, "/revoke", &basic, &format!("token={token}"));
        assert_eq!(code, 200, "POST /revoke");
        let returned = Instant::now();
        for port in [here, there] {
            while http_status_with(port, ROUTE, Some(&token)) != Some(401) {
                assert!(
                    returned.elapsed() < Duration::from_secs(30),
                    "token {i} still accepted 30 s after /revoke"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let latency = returned.elapsed();
        eprintln!(
            "trial {}: refused by both replicas {:.1} ms after /revoke returned",
            i + 1,
            latency.as_secs_f64() * 1e3
        );
        latencies.push(latency);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "token revocation (POST /revoke) → refused by both replicas, {trials} trials: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    bench.cleanup().await;
}
