//! `redis-limits`: the API-key route with cluster-wide rate limits on
//! (`latchkey serve --rate-limit-redis-url`, a real redis-server on
//! loopback) against the same route without a limit, on the same server,
//! interleaved; and the same limited key on a second server without Redis
//! (per-replica limits). The limit (100,000/s, burst 1,000,000) is far
//! above what wrk reaches here, so every answer is a 200 and the ratio is
//! the cost of the lease, not of refusals. Prints the load average: the
//! two cores are shared.

use crate::harness::{Bench, Rounds, env_or, free_port, http_status_with, repeat, wrk_cpu};
use crate::process::{LoggedChild, Stop};
use kube::api::PostParams;
use latchkey::crd::{ApiKey, ApiKeySpec, RateLimit};
use std::process::Command;
use std::time::{Duration, Instant};

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn metric_lines(port: u16) -> String {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(e) => format!("no /metrics: {e}"),
    };
    text.lines()
        .filter(|l| l.starts_with("latchkey_rate_limit_"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn redis_limits() {
    let bench = Bench::new("bench-redis").await;
    let redis_dir = bench.dir.join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis_port = free_port();
    let port_s = redis_port.to_string();
    assert!(
        std::path::Path::new("/usr/bin/redis-server").exists(),
        "redis-server is not installed: run e2e/deps (Debian package redis-server)"
    );
    let mut redis = LoggedChild::spawn(
        "redis-server",
        redis_dir.join("redis.log"),
        Command::new("/usr/bin/redis-server")
            .current_dir(&redis_dir)
            .args([
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&redis_dir),
        Stop::Kill,
    );
    redis.wait_listening(redis_port, Duration::from_secs(20));
    let url = format!("redis://127.0.0.1:{redis_port}");

    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let plain = bench.key("plain", &["orders:read"]).await;
    let limited = ApiKey::new(
        "limited",
        ApiKeySpec {
            scopes: vec!["orders:read".into()],
            rate_limit: Some(RateLimit {
                requests_per_second: 100_000,
                burst: Some(1_000_000),
            }),
            ..Default::default()
        },
    );
    bench
        .api_keys
        .create(&PostParams::default(), &limited)
        .await
        .unwrap();
    let limited = bench.secret_key("limited").await;
    let (shared_server, shared) = bench.latchkey_with("serve", &bench.ns, &["--rate-limit-redis-url", &url]);
    let (local_server, local) = bench.latchkey("serve", &bench.ns);
    let path = "/auth/nginx?scope=orders:read";
    let deadline = Instant::now() + Duration::from_secs(60);
    for (port, key) in [(shared, &plain), (shared, &limited), (local, &limited)] {
        while http_status_with(port, path, Some(key)) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "latchkey never accepted the bench keys"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let lines = metric_lines(shared).await;
    assert!(
        lines.contains(r#"latchkey_rate_limit_shared{state="redis"} 1"#),
        "the server does not share its limits through Redis:\n{lines}"
    );

    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let connections = 64;
    let load_before = load_average();
    let targets: [(&str, u16, Option<&str>, u32); 4] = [
        ("/livez (ceiling)", shared, None, shared_server.pid()),
        ("key without a limit", shared, Some(&plain), shared_server.pid()),
        (
            "key with a limit, Redis",
            shared,
            Some(&limited),
            shared_server.pid(),
        ),
        (
            "key with a limit, per replica",
            local,
            Some(&limited),
            local_server.pid(),
        ),
    ];
    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, port, key, pid) = targets[i];
        let url = match key {
            None => format!("http://127.0.0.1:{port}/livez"),
            Some(_) => format!("http://127.0.0.1:{port}{path}"),
        };
        let r = wrk_cpu(&url, connections, seconds, key, &[pid]);
        assert_eq!(
            r.non_2xx, 0,
            "{name}: non-2xx answers (the limit is above wrk's rate)"
        );
        r
    });
    rounds.print_cpu(&format!(
        "\nwrk -t1 -c{connections} -d{seconds}s, median of {} interleaved runs (loopback; load average before {load_before}, after {}):",
        repeat(),
        load_average()
    ));
    rounds.print_ratio(
        "ratio Redis-limited key / key without a limit (goal >= 0.8): ",
        2,
        1,
    );
    rounds.print_ratio(
        "ratio per-replica-limited key / key without a limit:         ",
        3,
        1,
    );
    rounds.print_ratio(
        "ratio key without a limit / ceiling:                         ",
        1,
        0,
    );
    println!(
        "the Redis-limited server's metrics after the runs:\n{}",
        metric_lines(shared).await
    );
    drop(redis);
    bench.cleanup().await;
}
