//! `cache-flood N`: N distinct valid big tokens against one `latchkey
//! serve` while a cached token is timed on its own connection (see main.rs).

use crate::harness::{Bench, claims_of, rss_kib};
use crate::stats::percentile;
use kube::Api;
use kube::api::PostParams;
use latchkey::crd::{ApiKey, TokenPolicy};
use latchkey::token::claims;
use std::process::Command;
use std::time::{Duration, Instant};

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

pub async fn cache_flood(n: usize) {
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
        keys_.push(bench.secret_key(&format!("flood{c}")).await);
    }
    let (server, lk) = bench.latchkey("serve", &bench.ns);
    let pid = server.pid();
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
    let (enc, header) = bench.signing_key(&policies, "flood").await;
    let enc = std::sync::Arc::new(enc);
    let templates: Vec<claims::AccessClaims> = minted
        .iter()
        .map(|t| {
            let mut c = claims_of(t);
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
