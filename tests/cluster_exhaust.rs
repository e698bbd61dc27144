//! Resource exhaustion against a real `latchkey serve`/`run` on loopback
//! (issue 13): half-sent and idle connections are closed by the header-read
//! and idle timeouts while `/livez` keeps answering, the connection cap
//! closes what is over it, a 1 MB `/token` body is refused before it is
//! read, and a brute force is answered 429 after the bound while a valid
//! key of another id still passes.

mod common;

use common::*;
use latchkey::key::ApiKeyValue;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Raises this test process' open-file soft limit to its hard limit (the
/// connection test holds ~2,000 sockets); returns the new soft limit.
fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE")
}

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// One `GET /livez` on a fresh connection: the status, within 2 s.
fn livez(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => panic!(
                "the server answered a held connection: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("reading a held connection: {e}"),
        }
    }
}

/// `latchkey_http_connections` from `/metrics` (this request's own
/// connection included).
fn open_connections(addr: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("latchkey_http_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no latchkey_http_connections in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_while_livez_answers() {
    let soft = raise_fd_limit();
    const HALF: usize = 1000;
    const IDLE: usize = 1000;
    assert!(
        soft > (HALF + IDLE + 200) as u64,
        "the test needs {} open files, the hard limit allows {soft}",
        HALF + IDLE + 200
    );
    let ns = TestNamespace::new("exhaust-conn").await;
    let (server, base) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &[
            "--http-header-read-timeout-seconds",
            "2",
            "--http-idle-timeout-seconds",
            "12",
        ],
    );
    let addr = addr_of(&base);
    let result = tokio::task::spawn_blocking(move || {
        let opened = Instant::now();
        let mut half = Vec::with_capacity(HALF);
        let mut idle: Vec<TcpStream> = Vec::with_capacity(IDLE);
        for i in 0..HALF + IDLE {
            if i % 100 == 99 {
                // Paced, so that the listen queue never overflows (the
                // kernel would then hold connections in SYN retries).
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            if i % 2 == 0 {
                // A request line never finished.
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .unwrap();
                half.push(s);
            } else {
                idle.push(s);
            }
        }
        let open_time = opened.elapsed();
        // /livez keeps answering while they are open.
        let mut livez_ms = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            assert_eq!(
                livez(&addr),
                Some(200),
                "/livez with {} connections open",
                HALF + IDLE
            );
            livez_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every half-sent connection is closed after the 2 s header-read
        // timeout (bounded: within 10 s of opening).
        let mut half_closed_s = Vec::new();
        for (i, s) in half.iter_mut().enumerate() {
            let left = Duration::from_secs(10).saturating_sub(opened.elapsed());
            assert!(
                closed_within(s, left.max(Duration::from_millis(1))),
                "half-sent connection {i} still open {:?} after opening",
                opened.elapsed()
            );
            half_closed_s.push(opened.elapsed().as_secs_f64());
        }
        let all_half_closed = opened.elapsed();
        // The idle ones are still open then (their timeout is 12 s): the
        // server's own count of open connections says so ...
        let open_now = open_connections(&addr);
        assert!(
            (IDLE as u64..=IDLE as u64 + 5).contains(&open_now),
            "{open_now} connections open {all_half_closed:?} after opening, {IDLE} idle ones expected"
        );
        assert_eq!(livez(&addr), Some(200));
        // ... and closed after it (bounded: within 25 s of opening).
        loop {
            let open_now = open_connections(&addr);
            if open_now <= 2 {
                break;
            }
            assert!(
                opened.elapsed() < Duration::from_secs(25),
                "{open_now} connections still open {:?} after opening",
                opened.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let all_idle_closed = opened.elapsed();
        assert_eq!(livez(&addr), Some(200));
        (
            open_time,
            median(livez_ms),
            half_closed_s,
            all_half_closed,
            all_idle_closed,
        )
    })
    .await
    .unwrap();
    let (open_time, livez_ms, half_closed_s, all_half_closed, all_idle_closed) = result;
    println!(
        "{HALF} half-sent + {IDLE} idle connections opened in {open_time:?}; /livez median {livez_ms:.1} ms \
         meanwhile; half-sent closed after {:.2} s (first) … {:.2} s (last, {all_half_closed:?}); \
         idle closed by {all_idle_closed:?}",
        half_closed_s.first().unwrap(),
        half_closed_s.last().unwrap()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_the_slots_come_back() {
    raise_fd_limit();
    let ns = TestNamespace::new("exhaust-cap").await;
    let (_server, base) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &[
            "--http-max-connections",
            "50",
            "--http-header-read-timeout-seconds",
            "2",
        ],
    );
    let addr = addr_of(&base);
    tokio::task::spawn_blocking(move || {
        // The start-up probe's connection is closed and its slot free.
        std::thread::sleep(Duration::from_secs(1));
        let opened = Instant::now();
        let mut held: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(b"GET /livez HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        // Give the server a moment to accept all 50.
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..5 {
            let mut over = TcpStream::connect(&addr).unwrap();
            let t = Instant::now();
            assert!(
                closed_within(&mut over, Duration::from_millis(1500)),
                "connection {i} over the cap was not closed"
            );
            println!("a connection over the cap was closed after {:?}", t.elapsed());
        }
        assert!(
            opened.elapsed() < Duration::from_secs(2),
            "took too long to test the cap"
        );
        // The held ones time out (2 s), and /livez answers again.
        for s in &mut held {
            assert!(closed_within(s, Duration::from_secs(10)));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while livez(&addr) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "/livez never answered after the slots freed up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// Sends `head` (and then `body`, from another thread) and returns the
/// status of the answer and the time until its first byte.
fn post(addr: &str, head: &str, body: Option<Vec<u8>>) -> (u16, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let writer = body.map(|b| {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(&b); // the server may close before the end
        })
    });
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("an answer before the read timeout");
    let elapsed = started.elapsed();
    let status = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&buf[..n])));
    drop(s);
    if let Some(w) = writer {
        let _ = w.join();
    }
    (status, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_token_body_is_refused_before_it_is_read() {
    let ns = TestNamespace::new("exhaust-body").await;
    let (_server, base) = LatchkeyProcess::start_http("serve", &ns.name, &[]);
    let addr = addr_of(&base);
    tokio::task::spawn_blocking(move || {
        let mb = 1 << 20;
        let head = |path: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Authorization: Basic bG9naW46eA==\r\nContent-Length: {mb}\r\n\r\n"
            )
        };
        // Refused on the declared length alone: the body is never sent.
        let mut times = Vec::new();
        for path in ["/token", "/issuers/x/y/token", "/introspect"] {
            for _ in 0..20 {
                let (status, t) = post(&addr, &head(path), None);
                assert_eq!(status, 413, "{path}");
                assert!(t < Duration::from_secs(1), "{path}: refused after {t:?}");
                times.push(t.as_secs_f64() * 1000.0);
            }
        }
        // The whole megabyte sent: refused as well, without waiting for it.
        let (status, with_body) = post(&addr, &head("/token"), Some(vec![b'a'; mb]));
        assert_eq!(status, 413);
        // Chunked (no Content-Length): read up to the limit, then refused.
        let chunked = "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                       Transfer-Encoding: chunked\r\n\r\n";
        let mut body = Vec::new();
        for _ in 0..64 {
            body.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
            body.extend_from_slice(&[b'a'; 16 * 1024]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let (status, chunked_t) = post(&addr, chunked, Some(body));
        assert_eq!(status, 413, "a chunked body over the limit");
        println!(
            "1 MB body refused with 413: declared Content-Length median {:.2} ms, max {:.2} ms over {} \
             requests; with the body sent {with_body:?}; chunked {chunked_t:?}",
            median(times.clone()),
            times.iter().cloned().fold(0.0, f64::max),
            times.len()
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_gets_429_after_the_bound_and_other_keys_still_pass() {
    let ns = TestNamespace::new("exhaust-brute").await;
    let (server, base) = LatchkeyProcess::start_run(&ns.name, &[]);
    let victim = served_key(&ns.name, "victim", "  scopes: [orders:read]\n", &base).await;
    let other = served_key(
        &ns.name,
        "other",
        "  scopes: [orders:read]\n  audiences: [orders]\n",
        &base,
    )
    .await;
    let victim_id = ApiKeyValue::parse(&victim).unwrap().key_id().to_owned();
    let http = reqwest::Client::new();
    let auth = |key: String| {
        let http = http.clone();
        let url = format!("{base}/auth/nginx?scope=orders:read");
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").cloned())
        }
    };
    // Guesses of the victim's secret on an auth route: 10 failures, then 429.
    for i in 0..10 {
        let guess = ApiKeyValue::with_random_secret(&victim_id);
        assert_eq!(auth(guess.expose().to_owned()).await.0, 401, "guess {i}");
    }
    let (status, retry) = auth(ApiKeyValue::with_random_secret(&victim_id).expose().to_owned()).await;
    assert_eq!(status, 429, "the 11th guess");
    let retry: u64 = retry.expect("Retry-After").to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Another key id passes (the auth routes do not throttle by source: the
    // proxy's address is everybody's).
    assert_eq!(auth(other.clone()).await.0, 200);
    // A wrong audience is not a failed authentication.
    for _ in 0..15 {
        let r = http
            .get(format!("{base}/auth/nginx?audience=elsewhere"))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    assert_eq!(auth(other.clone()).await.0, 200);

    // /token, called directly: by source. 20 failures with unknown keys
    // (each its own id), then 429 before the key is looked at.
    let token = |key: String| {
        let http = http.clone();
        let url = format!("{base}/token");
        async move {
            let r = http
                .post(url)
                .basic_auth("login", Some(key))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            (status, retry, r.text().await.unwrap())
        }
    };
    for i in 0..20 {
        let (status, _, body) = token(ApiKeyValue::generate().expose().to_owned()).await;
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let (status, retry, body) = token(ApiKeyValue::generate().expose().to_owned()).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    assert!(body.contains("temporarily_unavailable"), "{body}");
    // The auth routes still serve valid keys from the same address.
    assert_eq!(auth(other.clone()).await.0, 200);

    let metrics = get_text(&format!("{base}/metrics")).await;
    for by in ["key_id", "source"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("latchkey_auth_throttled_total{{by=\"{by}\"}}")))
            .unwrap_or_else(|| panic!("no throttled metric by {by}:\n{metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1, "{line}");
    }
    assert!(!metrics.contains(&victim_id), "a key id in the metrics");
    assert!(!server.log_text().contains(&victim), "a key in the log");
}
