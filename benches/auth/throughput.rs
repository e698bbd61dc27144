//! `throughput`: wrk on loopback against one `latchkey serve` and one
//! nginx, interleaved, then the API-key route open loop at half its
//! measured maximum rate (see main.rs).

use crate::harness::{Bench, Rounds, env_or, http_status, http_status_with, repeat, wrk};
use crate::stats::{median, percentile};
use latchkey::key::ApiKeyValue;
use std::time::{Duration, Instant};

pub async fn throughput() {
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
    let repeat = repeat();
    let seconds: u32 = env_or("BENCH_SECONDS", 5);
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
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, url, k, ok) = &targets[i];
        let r = wrk(url, connections, seconds, *k);
        if *ok {
            assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
        }
        r
    });
    rounds.print(&format!(
        "\nwrk -t1 -c{connections} -d{seconds}s --latency, median of {repeat} interleaved runs (loopback, same run):"
    ));
    rounds.print_ratio("ratio valid-key decision / ceiling:     ", 1, 0);
    rounds.print_ratio("ratio invalid-key decision / ceiling:   ", 2, 0);
    rounds.print_ratio("ratio nginx+auth_request / nginx:       ", 4, 3);

    // Half of the measured maximum, open loop: requests evenly spaced in
    // time (not wrk's 1 ms bursts), latency counted from each request's
    // scheduled time so that a stall is not hidden (coordinated omission).
    let target = rounds.median(1, |r| r.rps) / 2.0;
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
