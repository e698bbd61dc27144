//! HTTPS on the auth server's listener against the local control plane:
//! `latchkey serve --http-tls self-signed` signs with the CA of its CA
//! Secret (the webhook's), `--http-tls dir` serves a mounted certificate
//! directory. Clients we did not write verify it: reqwest (rustls) trusting
//! only that CA, curl `--cacert`, and nginx with `proxy_ssl_verify on`
//! (`e2e/proxy/nginx-tls.conf.in`) under certificate renewals.

mod common;

use common::proxy::{render, require, start_nginx};
use common::tls::{ca_pem, connector, https, reqwest_trusting, untrusted_ca};
use common::{LatchkeyProcess, TestNamespace, served_key_with};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY_SPEC: &str = "  subject: billing-service\n  scopes: [\"orders:read\"]\n";

/// `latchkey serve` over HTTPS with latchkey's CA in Secret `<ns>/https-ca`
/// and `extra` flags; its base URL.
fn serve_self_signed(ns: &str, extra: &[&str]) -> (LatchkeyProcess, String) {
    let ca = format!("{ns}/https-ca");
    let mut args = vec![
        "--http-tls",
        "self-signed",
        "--webhook-ca-secret",
        &ca,
        "--http-tls-dns-name",
        "latchkey.test",
        "--http-tls-dns-name",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    LatchkeyProcess::start_http("serve", ns, &args)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// `curl --cacert <ca> -H 'X-Api-Key: <key>' <url>`: the exit code and the
/// HTTP status it printed.
fn curl(ca: &Path, key: &str, url: &str) -> (i32, String) {
    let out = Command::new(require("curl"))
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("X-Api-Key: {key}")])
        .arg(url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_serves_a_certificate_of_the_ca_secret_and_other_cas_are_refused() {
    let ns = TestNamespace::new("lk-https").await;
    // The controller mints the key; the server under test only serves.
    let _controller = LatchkeyProcess::start(&ns.name);
    let (latchkey, url) = serve_self_signed(&ns.name, &[]);
    assert!(url.starts_with("https://"), "{url}");
    let log = latchkey.log_text();
    assert!(log.contains("signed by latchkey's CA"), "{log}");
    let ca = ca_pem(&ns.name, "https-ca");
    let http = reqwest_trusting(&ca);
    let key = served_key_with(&ns.name, "billing", KEY_SPEC, &url, &http).await;

    // reqwest (rustls) trusting only the CA: the answer of the HTTP route.
    let resp = http
        .get(format!("{url}/auth/nginx?scope=orders:read"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::header(resp.headers(), "x-auth-subject"),
        "billing-service"
    );
    let resp = http
        .get(format!("{url}/auth/nginx?scope=orders:read"))
        .header("x-api-key", "lk_nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a bad key is still refused over HTTPS");

    // curl --cacert, and by the DNS name of the certificate.
    let dir = std::env::temp_dir().join(format!("latchkey-https-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, wrong_file) = (dir.join("ca.crt"), dir.join("other-ca.crt"));
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&wrong_file, untrusted_ca()).unwrap();
    let (code, status) = curl(&ca_file, &key, &format!("{url}/auth/nginx?scope=orders:read"));
    assert_eq!((code, status.as_str()), (0, "200"));
    let by_name = format!("https://latchkey.test:{}/auth/nginx", port_of(&url));
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("latchkey.test:{}:127.0.0.1", port_of(&url))])
        .args(["-H", &format!("X-Api-Key: {key}"), &by_name])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the DNS SAN verifies"
    );

    // Another CA: the handshake fails, no HTTP answer at all.
    let (code, status) = curl(&wrong_file, &key, &format!("{url}/auth/nginx"));
    assert_eq!(
        code, 60,
        "curl: peer certificate cannot be authenticated (got {status})"
    );
    let err = reqwest_trusting(&untrusted_ca())
        .get(format!("{url}/auth/nginx"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect_err("a client trusting another CA is refused");
    assert!(err.is_connect(), "a handshake error, not an HTTP one: {err:?}");
    // Plain HTTP on the HTTPS port gets no answer from the auth routes.
    let plain = reqwest::Client::new()
        .get(url.replace("https://", "http://") + "/auth/nginx")
        .header("x-api-key", &key)
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    assert!(!latchkey.log_text().contains(&key), "the key is never logged");
}

/// A kubelet-style mounted Secret: `tls.crt`/`tls.key` are links through
/// `..data`, which is swapped atomically to a new version directory.
fn mount(dir: &Path, version: &str, cert: &str, key: &str) {
    let data = dir.join(version);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if !dir.join(f).exists() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

/// A certificate for 127.0.0.1 and latchkey.test with serial `serial`, signed by a CA of the
/// test (as cert-manager's issuer would): (chain PEM, key PEM).
fn issued(ca: &(rcgen::Issuer<'static, rcgen::KeyPair>, String), serial: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), "latchkey.test".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.signed_by(&key, &ca.0).unwrap();
    (format!("{}{}", cert.pem(), ca.1), key.serialize_pem())
}

fn test_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test issuer");
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    (rcgen::Issuer::new(params, key), pem)
}

/// The serial of the certificate 127.0.0.1:`port` serves now (a fresh
/// handshake verified against `ca`), as openssl prints it.
fn served_serial(ca: &str, port: u16) -> Result<String, String> {
    let (leaf, response) = https(
        &connector(ca),
        port,
        "127.0.0.1",
        "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut child = Command::new("openssl")
        .args(["x509", "-inform", "der", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&leaf).unwrap();
    let out = child.wait_with_output().unwrap();
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_mounted_certificate_is_served_without_a_restart() {
    let ns = TestNamespace::new("lk-https-dir").await;
    let dir = std::env::temp_dir().join(format!("latchkey-https-dir-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = test_ca();
    let (cert, key) = issued(&ca, 1);
    mount(&dir, "..v1", &cert, &key);
    let dir_arg = dir.display().to_string();
    let (mut latchkey, url) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &[
            "--http-tls",
            "dir",
            "--http-tls-cert-dir",
            &dir_arg,
            "--http-tls-sync-seconds",
            "1",
        ],
    );
    let port = port_of(&url);
    let pid = latchkey.pid();
    assert_eq!(served_serial(&ca.1, port).unwrap(), "serial=01");

    // A half-written update (the key missing) keeps the served certificate.
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/tls.crt"), issued(&ca, 9).0).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_serial(&ca.1, port).unwrap(), "serial=01");

    let (cert, key) = issued(&ca, 2);
    mount(&dir, "..v3", &cert, &key);
    let started = Instant::now();
    let seen = loop {
        let serial = served_serial(&ca.1, port).expect("every handshake verifies");
        if serial == "serial=02" || started.elapsed() > Duration::from_secs(15) {
            break serial;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "the new certificate served {:?} after the swap",
        started.elapsed()
    );
    assert_eq!(seen, "serial=02", "{}", latchkey.log_text());
    assert_eq!(latchkey.pid(), pid, "no restart");
    let log = latchkey.log_text();
    assert!(
        log.contains("keeping the previous HTTP serving certificate"),
        "{log}"
    );
    assert!(
        log.contains("loaded the renewed mounted serving certificate"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(latchkey.terminate().success());
}

/// nginx from `e2e/proxy/nginx-tls.conf.in` in front of latchkey at
/// `latchkey` (HOST:PORT) trusting the CA file `ca`; its port.
fn nginx_tls(dir: &Path, latchkey: &str, ca: &Path) -> (common::process::LoggedChild, u16) {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("static/index.html"), "ok\n").unwrap();
    let port = common::free_port();
    let conf = dir.join(format!("nginx-{port}.conf"));
    render(
        "nginx-tls.conf.in",
        &conf,
        &[
            ("PREFIX", dir.display().to_string()),
            ("LISTEN", format!("127.0.0.1:{port}")),
            ("LATCHKEY", latchkey.to_owned()),
            ("CA", ca.display().to_string()),
            ("TLS_NAME", "latchkey.test".to_owned()),
            ("STATIC", dir.join("static").display().to_string()),
        ],
    );
    (start_nginx(dir, &conf, port), port)
}

/// What a loop of auth requests through nginx saw.
#[derive(Default)]
struct Load {
    sent: u32,
    /// Allowed (200) and refused (401), each as expected.
    allowed: u32,
    refused: u32,
    failed: Vec<String>,
}

/// Sends auth requests through nginx on `port` until `done` says so: by
/// turns on `/fresh-auth/` (a new connection and a full, verified
/// handshake each) and `/static-auth/` (kept-alive connections), with
/// `key` (expects 200) and without (expects latchkey's 401).
async fn load_through_nginx(port: u16, key: &str, mut done: impl FnMut() -> bool) -> Load {
    let http = reqwest::Client::new();
    let mut load = Load::default();
    while !done() {
        for path in ["/fresh-auth/", "/static-auth/"] {
            for with_key in [true, true, true, false] {
                let mut req = http.get(format!("http://127.0.0.1:{port}{path}index.html"));
                if with_key {
                    req = req.bearer_auth(key);
                }
                load.sent += 1;
                let expected = if with_key { 200 } else { 401 };
                match req.send().await {
                    Ok(r) if r.status() == expected => {
                        if with_key {
                            load.allowed += 1
                        } else {
                            load.refused += 1
                        }
                    }
                    Ok(r) => load
                        .failed
                        .push(format!("{path} (expected {expected}): {}", r.status())),
                    Err(e) => load.failed.push(format!("{path}: {e}")),
                }
            }
        }
    }
    load
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_under_load_through_nginx_lose_no_request_and_a_wrong_ca_is_refused() {
    let ns = TestNamespace::new("lk-https-nginx").await;
    let _controller = LatchkeyProcess::start(&ns.name);
    // A certificate lives 4 s and is renewed 2 s before its end: one renewal
    // every ~2 s.
    let (latchkey, url) = serve_self_signed(
        &ns.name,
        &[
            "--http-tls-cert-validity-seconds",
            "4",
            "--http-tls-cert-renew-before-seconds",
            "2",
        ],
    );
    let ca = ca_pem(&ns.name, "https-ca");
    let key = served_key_with(&ns.name, "billing", KEY_SPEC, &url, &reqwest_trusting(&ca)).await;
    let dir = std::env::temp_dir().join(format!("latchkey-https-nginx-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, wrong_file) = (dir.join("ca.crt"), dir.join("other-ca.crt"));
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&wrong_file, untrusted_ca()).unwrap();
    let addr = url.trim_start_matches("https://");
    let (_nginx, port) = nginx_tls(&dir.join("good"), addr, &ca_file);
    let (_wrong, wrong_port) = nginx_tls(&dir.join("wrong"), addr, &wrong_file);
    let http = reqwest::Client::new();
    let get = |port: u16, path: &'static str| {
        http.get(format!("http://127.0.0.1:{port}{path}index.html"))
            .bearer_auth(&key)
            .send()
    };

    // Verification is on: nginx trusting another CA fails the subrequest.
    for path in ["/static-auth/", "/fresh-auth/"] {
        let resp = get(wrong_port, path).await.unwrap();
        assert_eq!(resp.status(), 500, "{path} through nginx with a wrong CA");
    }
    let error_log = std::fs::read_to_string(dir.join("wrong/error.log")).unwrap_or_default();
    assert!(
        error_log.contains("upstream SSL certificate verify error"),
        "{error_log}"
    );
    // Without a key nginx passes latchkey's 401 on: the auth answer, over HTTPS.
    let resp = http
        .get(format!("http://127.0.0.1:{port}/static-auth/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let renewals = |log: &str| log.matches("renewed the HTTP serving certificate").count();
    let before = renewals(&latchkey.log_text());
    let started = Instant::now();
    let load = load_through_nginx(port, &key, || {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no two renewals within 60 s"
        );
        started.elapsed() >= Duration::from_secs(9) && renewals(&latchkey.log_text()) >= before + 2
    })
    .await;
    let after = renewals(&latchkey.log_text());
    println!(
        "self-signed: {} requests through nginx over HTTPS in {:?}: {} allowed, {} refused (no key), {} failed, {} certificate renewals",
        load.sent,
        started.elapsed(),
        load.allowed,
        load.refused,
        load.failed.len(),
        after - before
    );
    let error_log = std::fs::read_to_string(dir.join("good/error.log")).unwrap_or_default();
    assert!(
        load.failed.is_empty(),
        "failed requests: {:?}\n{error_log}",
        load.failed
    );
    assert_eq!(load.allowed + load.refused, load.sent);
    assert!(after - before >= 2, "only {} renewals", after - before);
}

#[tokio::test(flavor = "multi_thread")]
async fn mounted_certificate_replacements_under_load_through_nginx_lose_no_request() {
    let ns = TestNamespace::new("lk-https-dir-load").await;
    let _controller = LatchkeyProcess::start(&ns.name);
    let dir = std::env::temp_dir().join(format!("latchkey-https-dir-load-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = test_ca();
    let (cert, key_pem) = issued(&ca, 1);
    mount(&certs, "..v1", &cert, &key_pem);
    let certs_arg = certs.display().to_string();
    let (latchkey, url) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &[
            "--http-tls",
            "dir",
            "--http-tls-cert-dir",
            &certs_arg,
            "--http-tls-sync-seconds",
            "1",
        ],
    );
    let key = served_key_with(&ns.name, "billing", KEY_SPEC, &url, &reqwest_trusting(&ca.1)).await;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca.1).unwrap();
    let (_nginx, port) = nginx_tls(&dir.join("nginx"), url.trim_start_matches("https://"), &ca_file);

    // cert-manager renews: the kubelet swaps `..data` to a new certificate
    // of the same issuer every 1.5 s while the requests run.
    let loaded = |log: &str| {
        log.matches("loaded the renewed mounted serving certificate")
            .count()
    };
    let started = Instant::now();
    let mut serial = 1;
    let mut next_swap = started;
    let load = load_through_nginx(port, &key, || {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reloads within 60 s"
        );
        if serial < 5 && Instant::now() >= next_swap {
            serial += 1;
            let (cert, key_pem) = issued(&ca, serial);
            mount(&certs, &format!("..v{serial}"), &cert, &key_pem);
            next_swap = Instant::now() + Duration::from_millis(1500);
        }
        // Done a few sync rounds after the last swap.
        serial == 5 && Instant::now() >= next_swap + Duration::from_secs(2)
    })
    .await;
    println!(
        "mounted: {} requests through nginx over HTTPS in {:?}: {} allowed, {} refused (no key), {} failed, {} certificates loaded",
        load.sent,
        started.elapsed(),
        load.allowed,
        load.refused,
        load.failed.len(),
        loaded(&latchkey.log_text())
    );
    let error_log = std::fs::read_to_string(dir.join("nginx/error.log")).unwrap_or_default();
    assert!(
        load.failed.is_empty(),
        "failed requests: {:?}\n{error_log}",
        load.failed
    );
    assert_eq!(load.allowed + load.refused, load.sent);
    assert_eq!(served_serial(&ca.1, port_of(&url)).unwrap(), "serial=05");
    assert!(loaded(&latchkey.log_text()) >= 1);
}
