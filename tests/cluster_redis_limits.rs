//! Cluster-wide rate limits (`--rate-limit-redis-url`) against a real
//! Debian `redis-server` (started here on a free loopback port, with its
//! own directory, no persistence; stopped by PID): three `latchkey serve`
//! replicas behind a round-robin client, one ApiKey with
//! `requestsPerSecond: 20, burst: 20`, 10 s of requests at 200 per second.
//! Without Redis the replicas accept about 3 × (20 × 10 + 20); with it,
//! 20 × 10 + 20 (± 15 %). Redis killed in the middle of a run: no 5xx, the
//! fallback on `/metrics` and in one log line, and back to shared limits
//! when Redis returns. `e2e/deps` installs `redis-server`.

mod common;

use common::process::{LoggedChild, Stop};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SPEC: &str = "  rateLimit: {requestsPerSecond: 20, burst: 20}\n";
const EXPECTED: f64 = 20.0 * 10.0 + 20.0;
/// The password of the test's Redis: must never reach a log or `/metrics`.
const PASSWORD: &str = "redis-test-password-4711";

/// A `redis-server` on 127.0.0.1:`port`, in `dir`.
fn start_redis(dir: &Path, port: u16) -> LoggedChild {
    let bin = Path::new("/usr/bin/redis-server");
    let bin = if bin.exists() {
        bin.to_path_buf()
    } else {
        which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is not installed: run e2e/deps (Debian package redis-server)")
        })
    };
    std::fs::create_dir_all(dir).unwrap();
    let port_s = port.to_string();
    let mut redis = LoggedChild::spawn(
        "redis-server",
        dir.join(format!("redis-{port}-{}.log", unique())),
        Command::new(bin).current_dir(dir).args([
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
        ]),
        Stop::Kill,
    );
    redis.wait_listening(port, Duration::from_secs(20));
    redis
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// What one load run saw.
#[derive(Debug, Default)]
struct Counts {
    ok: u32,
    limited: u32,
    server_errors: u32,
    other: u32,
    failed: u32,
}

/// 2,000 requests at 200 a second (one every 5 ms), round-robin over
/// `bases`, each with `key`; `during` runs concurrently (it gets the run's
/// start instant).
async fn offer_load<F: Future<Output = ()>>(bases: &[String], key: &str, during: F) -> Counts {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = Vec::with_capacity(2000);
    let load = async {
        for i in 0..2000usize {
            tick.tick().await;
            let req = http
                .get(format!("{}/auth/nginx", bases[i % bases.len()]))
                .header("authorization", format!("Bearer {key}"))
                .send();
            tasks.push(tokio::spawn(
                async move { req.await.map(|r| r.status().as_u16()) },
            ));
        }
    };
    tokio::join!(load, during);
    let mut counts = Counts::default();
    for t in tasks {
        match t.await.unwrap() {
            Ok(200) => counts.ok += 1,
            Ok(429) => counts.limited += 1,
            Ok(s) if s >= 500 => counts.server_errors += 1,
            Ok(_) => counts.other += 1,
            Err(_) => counts.failed += 1,
        }
    }
    counts
}

fn replicas(ns: &str, extra: &[&str]) -> Vec<(LatchkeyProcess, String)> {
    (0..3)
        .map(|_| LatchkeyProcess::start_http("serve", ns, extra))
        .collect()
}

/// Waits until every replica has the key indexed (it spends a request or
/// two of the bucket), then until the bucket is full again.
async fn until_indexed(bases: &[String], key: &str) {
    let http = reqwest::Client::new();
    for base in bases {
        eventually(Duration::from_secs(60), "every replica knows the key", || async {
            let status = http
                .get(format!("{base}/auth/nginx"))
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .ok()?
                .status();
            (status == 200 || status == 429).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn metrics_of(base: &str) -> String {
    get_text(&format!("{base}/metrics")).await
}

fn within(accepted: u32, expected: f64, tolerance: f64) -> bool {
    (f64::from(accepted) - expected).abs() <= expected * tolerance
}

#[tokio::test]
async fn three_replicas_share_one_rate_limit_through_redis() {
    let ns = TestNamespace::new("redislimit").await;
    let _controller = LatchkeyProcess::start(&ns.name);
    let dir = std::env::temp_dir().join(format!("latchkey-redis-{}", ns.name));
    let port = free_port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");

    // Without Redis: each replica has its own bucket.
    let plain = replicas(&ns.name, &[]);
    let bases: Vec<String> = plain.iter().map(|(_, b)| b.clone()).collect();
    let key = served_key(&ns.name, "limited", SPEC, &bases[0]).await;
    until_indexed(&bases, &key).await;
    let alone = offer_load(&bases, &key, async {}).await;
    println!("without Redis: {alone:?} (expected about {})", 3.0 * EXPECTED);
    assert_eq!(
        (alone.server_errors, alone.failed, alone.other),
        (0, 0, 0),
        "{alone:?}"
    );
    assert!(within(alone.ok, 3.0 * EXPECTED, 0.15), "without Redis: {alone:?}");
    drop(plain);

    // With Redis: one bucket for the three.
    let mut redis = start_redis(&dir, port);
    let shared = replicas(&ns.name, &["--rate-limit-redis-url", &url]);
    let bases: Vec<String> = shared.iter().map(|(_, b)| b.clone()).collect();
    for base in &bases {
        eventually(
            Duration::from_secs(20),
            "the replica shares its limits",
            || async {
                metrics_of(base)
                    .await
                    .contains(r#"latchkey_rate_limit_shared{state="redis"} 1"#)
                    .then_some(())
            },
        )
        .await;
    }
    until_indexed(&bases, &key).await;
    let together = offer_load(&bases, &key, async {}).await;
    println!("with Redis: {together:?} (expected {EXPECTED} ± 15 %)");
    assert_eq!(
        (together.server_errors, together.failed, together.other),
        (0, 0, 0),
        "{together:?}"
    );
    assert!(within(together.ok, EXPECTED, 0.15), "with Redis: {together:?}");
    assert!(
        f64::from(alone.ok) > 2.4 * f64::from(together.ok),
        "without Redis {} vs with {}",
        alone.ok,
        together.ok
    );

    // Redis killed after 3 s and back after 6 s: no 5xx; the fallback on
    // /metrics while it is away, shared again once it is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let mut seen_fallback = Vec::new();
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for base in &bases {
            seen_fallback.push(metrics_of(base).await);
        }
        tokio::time::sleep_until((start + Duration::from_secs(6)).into()).await;
        redis = start_redis(&dir, port);
    };
    let outage = offer_load(&bases, &key, chaos).await;
    println!("Redis killed at 3 s, back at 6 s: {outage:?}");
    assert_eq!(
        (outage.server_errors, outage.failed, outage.other),
        (0, 0, 0),
        "no 5xx while Redis is away: {outage:?}"
    );
    for text in &seen_fallback {
        assert!(
            text.contains(r#"latchkey_rate_limit_shared{state="fallback"} 1"#),
            "fallback on /metrics:\n{text}"
        );
        assert!(!text.contains("latchkey_rate_limit_fallbacks_total 0"), "{text}");
    }
    for base in &bases {
        eventually(
            Duration::from_secs(20),
            "shared again once Redis is back",
            || async {
                metrics_of(base)
                    .await
                    .contains(r#"latchkey_rate_limit_shared{state="redis"} 1"#)
                    .then_some(())
            },
        )
        .await;
    }
    // And the limit holds again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = offer_load(&bases, &key, async {}).await;
    println!("after Redis came back: {after:?}");
    assert!(within(after.ok, EXPECTED, 0.15), "after the outage: {after:?}");

    for (process, base) in &shared {
        let log = process.log_text();
        // One warning per outage and one line when it ends (a busy machine
        // may add an outage of its own: the lines still come in pairs).
        let (down, up) = (
            log.matches("Redis does not answer").count(),
            log.matches("Redis answers again").count(),
        );
        assert!(
            down >= 1 && down == up,
            "{down} warnings, {up} recoveries ({base}):\n{log}"
        );
        assert!(!log.contains(PASSWORD), "the Redis password is in a log:\n{log}");
        assert!(!metrics_of(base).await.contains(PASSWORD));
    }
    // Redis holds one counter, named by a hash: no namespace, name or key.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    // (At most one: it expires once the bucket is full again.)
    assert!(keys.len() <= 1, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("latchkey:rl:") && k.len() == 12 + 32, "{keys:?}");
        assert!(!k.contains(&ns.name) && !k.contains("limited") && !k.contains(&key));
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
