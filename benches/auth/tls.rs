//! `tls`: what HTTPS on the auth server's listener costs, with keepalive
//! (see main.rs).

use crate::harness::{Bench, Rounds, env_or, http_status_with, repeat, with_children, wrk_cpu};
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
    let (plain, lp) = bench.latchkey("serve", &bench.ns);
    let tls_flags = [
        "--http-tls",
        "self-signed",
        "--webhook-ca-secret",
        &ca_secret,
        "--http-tls-dns-name",
        "latchkey.test",
    ];
    let (tls, lt) = bench.latchkey_with("serve", &bench.ns, &tls_flags);
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
    let (nginx_plain_proc, np) = bench.nginx(lp);
    let (nginx_tls_proc, nt) = bench.nginx_tls(lt, &ca);
    assert_eq!(http_status_with(nt, "/static-auth/index.html", None), Some(401));
    assert_eq!(
        http_status_with(nt, "/static-auth/index.html", Some(&key)),
        Some(200),
        "nginx verifies latchkey's certificate and passes the allow on"
    );

    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let connections = 64;
    let (plain_pid, tls_pid) = (plain.pid(), tls.pid());
    let nginx_plain: Vec<u32> = with_children(nginx_plain_proc.pid());
    let nginx_tls: Vec<u32> = with_children(nginx_tls_proc.pid());
    let both = |nginx: &[u32], latchkey: u32| [nginx, &[latchkey]].concat();
    // (name, URL, key, the processes whose CPU the request costs)
    let targets: [(&str, String, Option<&str>, Vec<u32>); 7] = [
        (
            "latchkey plain HTTP /auth/nginx",
            format!("http://127.0.0.1:{lp}{path}"),
            Some(&key),
            vec![plain_pid],
        ),
        (
            "latchkey HTTPS /auth/nginx",
            format!("https://127.0.0.1:{lt}{path}"),
            Some(&key),
            vec![tls_pid],
        ),
        (
            "nginx static, no auth",
            format!("http://127.0.0.1:{nt}/static/index.html"),
            None,
            nginx_tls.clone(),
        ),
        (
            "nginx + auth_request, plain HTTP",
            format!("http://127.0.0.1:{np}/static-auth/index.html"),
            Some(&key),
            both(&nginx_plain, plain_pid),
        ),
        (
            "nginx + auth_request, HTTPS verified",
            format!("http://127.0.0.1:{nt}/static-auth/index.html"),
            Some(&key),
            both(&nginx_tls, tls_pid),
        ),
        // Without upstream keepalive: what a handshake per subrequest costs,
        // full or resumed (session tickets).
        (
            "nginx + auth, HTTPS, full handshake each",
            format!("http://127.0.0.1:{nt}/fresh-auth/index.html"),
            Some(&key),
            both(&nginx_tls, tls_pid),
        ),
        (
            "nginx + auth, HTTPS, resumed each",
            format!("http://127.0.0.1:{nt}/resumed-auth/index.html"),
            Some(&key),
            both(&nginx_tls, tls_pid),
        ),
    ];
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, url, k, pids) = &targets[i];
        let r = wrk_cpu(url, connections, seconds, *k, pids);
        assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
        r
    });
    rounds.print_cpu(&format!(
        "\nwrk -t1 -c{connections} -d{seconds}s --latency (keepalive), median of {} interleaved runs (loopback, same run); \
         CPU per request from /proc (server: latchkey, or nginx's processes + latchkey):",
        repeat()
    ));
    rounds.print_ratio(
        "ratio latchkey HTTPS / plain HTTP, req/s (goal >= 0.85):        ",
        1,
        0,
    );
    rounds.print_cpu_ratio(
        "ratio latchkey plain / HTTPS, server CPU per request:          ",
        1,
        0,
    );
    rounds.print_ratio(
        "ratio nginx+auth over HTTPS / nginx alone, req/s:               ",
        4,
        2,
    );
    rounds.print_ratio(
        "ratio nginx+auth over HTTPS / over plain HTTP, req/s:           ",
        4,
        3,
    );
    rounds.print_cpu_ratio(
        "ratio nginx+auth plain / HTTPS, server CPU per request:         ",
        4,
        3,
    );
    bench.cleanup().await;
}
