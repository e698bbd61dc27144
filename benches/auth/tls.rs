//! `tls`: what HTTPS on the auth server's listener costs, with keepalive
//! (see main.rs).

use crate::harness::{Bench, Rounds, env_or, http_status_with, repeat, wrk};
use std::process::Command;
use std::time::{Duration, Instant};

/// Status of `GET https://127.0.0.1:<port><path>` with `key`, verified
/// against the CA file `ca` for the name `latchkey.test` (curl).
fn https_status(port: u16, path: &str, key: &str, ca: &std::path::Path) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("latchkey.test:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .arg(format!("https://latchkey.test:{port}{path}"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok()
}

pub async fn tls() {
    let bench = Bench::new("bench-tls").await;
    // The controller delivers the key; the measured servers are `serve` alone.
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let key = bench.key("bench", &["orders:read"]).await;
    let ca_secret = format!("{}/bench-ca", bench.ns);
    let (_plain, lp) = bench.latchkey("serve", &bench.ns);
    let tls_flags = [
        "--http-tls",
        "self-signed",
        "--webhook-ca-secret",
        &ca_secret,
        "--http-tls-dns-name",
        "latchkey.test",
    ];
    let (_tls, lt) = bench.latchkey_with("serve", &bench.ns, &tls_flags);
    let ca_pem = bench.secrets.get("bench-ca").await.unwrap().data.unwrap()["tls.crt"]
        .0
        .clone();
    let ca = bench.dir.join("ca.crt");
    std::fs::write(&ca, ca_pem).unwrap();
    let path = "/auth/nginx?scope=orders:read";
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status_with(lp, path, Some(&key)) != Some(200)
        || https_status(lt, path, &key, &ca) != Some(200)
    {
        assert!(Instant::now() < deadline, "latchkey never accepted the bench key");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_nginx_plain, np) = bench.nginx(lp);
    let (_nginx_tls, nt) = bench.nginx_tls(lt, &ca);
    assert_eq!(http_status_with(nt, "/static-auth/index.html", None), Some(401));
    assert_eq!(
        http_status_with(nt, "/static-auth/index.html", Some(&key)),
        Some(200),
        "nginx verifies latchkey's certificate and passes the allow on"
    );

    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let connections = 64;
    let targets: [(&str, String, Option<&str>); 5] = [
        (
            "latchkey plain HTTP /auth/nginx",
            format!("http://127.0.0.1:{lp}{path}"),
            Some(&key),
        ),
        (
            "latchkey HTTPS /auth/nginx",
            format!("https://127.0.0.1:{lt}{path}"),
            Some(&key),
        ),
        (
            "nginx static, no auth",
            format!("http://127.0.0.1:{nt}/static/index.html"),
            None,
        ),
        (
            "nginx + auth_request, plain HTTP",
            format!("http://127.0.0.1:{np}/static-auth/index.html"),
            Some(&key),
        ),
        (
            "nginx + auth_request, HTTPS verified",
            format!("http://127.0.0.1:{nt}/static-auth/index.html"),
            Some(&key),
        ),
    ];
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, url, k) = &targets[i];
        let r = wrk(url, connections, seconds, *k);
        assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
        r
    });
    rounds.print(&format!(
        "\nwrk -t1 -c{connections} -d{seconds}s --latency (keepalive), median of {} interleaved runs (loopback, same run):",
        repeat()
    ));
    rounds.print_ratio("ratio latchkey HTTPS / plain HTTP (goal >= 0.85):  ", 1, 0);
    rounds.print_ratio("ratio nginx+auth over HTTPS / nginx alone:         ", 4, 2);
    rounds.print_ratio("ratio nginx+auth over HTTPS / over plain HTTP:     ", 4, 3);
    bench.cleanup().await;
}
