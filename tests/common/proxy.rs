//! What the tests through real proxies share (tests/proxy_auth.rs: nginx and
//! Caddy; tests/proxy_traefik.rs: Traefik): the configurations of
//! `e2e/proxy/` filled in, the echo upstream, an answer and what the
//! upstream received, the identity headers a client tries to forge, and
//! latchkey over HTTPS with the CA files the proxies trust ([`tls_flags`],
//! [`TrustFiles`]).

use super::process::{LoggedChild, Stop};
use super::repo;
use reqwest::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The name nginx (`proxy_ssl_name`) and Caddy (`tls_server_name`) verify
/// on latchkey's certificate; Traefik verifies the address's host,
/// 127.0.0.1. Both are in the certificate ([`tls_flags`]).
pub const TLS_NAME: &str = "latchkey.test";

/// The flags of a latchkey behind the proxy tests: HTTPS with a certificate
/// signed by latchkey's CA in the Secret `<ns>/proxy-ca`, for [`TLS_NAME`]
/// and 127.0.0.1.
pub fn tls_flags(ns: &str) -> Vec<String> {
    [
        "--http-tls",
        "self-signed",
        "--webhook-ca-secret",
        &format!("{ns}/proxy-ca"),
        "--http-tls-dns-name",
        TLS_NAME,
        "--http-tls-dns-name",
        "127.0.0.1",
    ]
    .map(str::to_owned)
    .into()
}

/// What the proxies trust: latchkey's CA (from the Secret [`tls_flags`]
/// names) and a CA that did not sign latchkey's certificate.
pub struct TrustFiles {
    /// latchkey's CA certificate (PEM), for the tests' own client.
    pub pem: String,
    /// `<dir>/ca.crt`: latchkey's CA.
    pub ca: PathBuf,
    /// `<dir>/wrong-ca.crt`: another CA (the refusal routes).
    pub wrong_ca: PathBuf,
}

impl TrustFiles {
    /// Writes both CA files into `dir` for the latchkey of `ns`.
    pub fn write(ns: &str, dir: &Path) -> Self {
        let pem = super::tls::ca_pem(ns, "proxy-ca");
        let (ca, wrong_ca) = (dir.join("ca.crt"), dir.join("wrong-ca.crt"));
        std::fs::write(&ca, &pem).unwrap();
        std::fs::write(&wrong_ca, super::tls::untrusted_ca()).unwrap();
        Self { pem, ca, wrong_ca }
    }

    /// The template variables `CA`, `WRONG_CA` and `TLS_NAME`.
    pub fn vars(&self) -> [(&'static str, String); 3] {
        [
            ("CA", self.ca.display().to_string()),
            ("WRONG_CA", self.wrong_ca.display().to_string()),
            ("TLS_NAME", TLS_NAME.to_owned()),
        ]
    }
}

/// How long the echo upstream and a proxy may take to listen.
pub const LISTEN_WAIT: Duration = Duration::from_secs(20);

/// The path of `tool`; fails the test, saying how to install it, when it is missing.
pub fn require(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} is not installed: run e2e/deps (it installs nginx, caddy and wrk from Debian)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// nginx with prefix `dir` on the configuration `conf`, once it listens on `port`.
pub fn start_nginx(dir: &Path, conf: &Path, port: u16) -> LoggedChild {
    let mut nginx = LoggedChild::spawn(
        "nginx",
        dir.join(format!("nginx-{port}.log")),
        Command::new(require("nginx"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(dir.join("error.log")),
        Stop::Term,
    );
    nginx.wait_listening(port, LISTEN_WAIT);
    nginx
}

/// Writes `e2e/proxy/<template>` to `out` with every `@NAME@` of `vars`
/// filled; panics if a placeholder is left.
pub fn render(template: &str, out: &Path, vars: &[(&str, String)]) {
    let mut text = std::fs::read_to_string(repo().join("e2e/proxy").join(template)).unwrap();
    for (name, value) in vars {
        text = text.replace(&format!("@{name}@"), value);
    }
    let unfilled = text
        .split('@')
        .skip(1)
        .step_by(2)
        .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    assert!(
        unfilled.is_none(),
        "unfilled placeholder @{unfilled:?}@ in {template}"
    );
    std::fs::write(out, text).unwrap();
}

/// Caddy (`caddy run`) on the Caddyfile `conf`, its state and log in
/// `dir`, once it listens on `port`.
pub fn start_caddy(dir: &Path, conf: &Path, port: u16) -> LoggedChild {
    let mut caddy = LoggedChild::spawn(
        "caddy",
        dir.join(format!("caddy-{port}.log")),
        Command::new(require("caddy"))
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(conf)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", dir),
        Stop::Term,
    );
    caddy.wait_listening(port, LISTEN_WAIT);
    caddy
}

/// Request-targets that must never reach tenant globex's calendar with an
/// `acme` permission (`/calendar-events/acme/`): globex's own path, every
/// traversal spelling that could resolve to it somewhere (dot segments,
/// encoded, doubled, with `;`, `\`, overlong UTF-8), a longer name and the
/// prefix without its slash. Those with `..`, `%` or `//` are not canonical
/// (400), the others are another resource (403): README, "resource=path".
pub const TRAVERSALS: [&str; 20] = [
    "/calendar-events/globex/1",
    "/calendar-events/acme/../globex/1",
    "/calendar-events/acme/./../globex/1",
    "/calendar-events/acme/%2e%2e/globex/1",
    "/calendar-events/acme/%2E%2E/globex/1",
    "/calendar-events/acme/.%2e/globex/1",
    "/calendar-events/acme/%2e%2e%2fglobex/1",
    "/calendar-events/acme%2F..%2Fglobex/1",
    "/calendar-events/acme/..%2Fglobex/1",
    "/calendar-events/acme/..%5Cglobex/1",
    "/calendar-events/acme/..\\globex/1",
    "/calendar-events/acme//../globex/1",
    "/calendar-events/acme/..;/globex/1",
    "/calendar-events/acme/..%3B/globex/1",
    "/calendar-events/acme/%252e%252e/globex/1",
    "/calendar-events/%61cme/../globex/1",
    "/calendar-events/acme/%C0%AE%C0%AE/globex/1",
    "//calendar-events/globex/1",
    "/calendar-events/acmeglobex/1",
    "/calendar-events/acme",
];

/// The status latchkey gives [`TRAVERSALS`]' `target` for an acme token.
pub fn traversal_status(target: &str) -> u16 {
    if target.contains("..") || target.contains('%') || target.contains("//") {
        400
    } else {
        403
    }
}

/// `e2e/proxy/echo.py` on a free loopback port (log in `dir`), listening;
/// returns it and its `127.0.0.1:<port>`.
pub fn spawn_echo(dir: &Path) -> (LoggedChild, String) {
    let port = super::free_port();
    let mut echo = LoggedChild::spawn(
        "echo",
        dir.join("echo.log"),
        Command::new("python3")
            .arg(repo().join("e2e/proxy/echo.py"))
            .arg(port.to_string()),
        Stop::Term,
    );
    echo.wait_listening(port, LISTEN_WAIT);
    (echo, format!("127.0.0.1:{port}"))
}

/// Header pairs as the `&str` pairs [`send`] takes.
pub fn refs<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `method url` with `headers` (repeated names are sent repeated).
pub async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<Answer> {
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A proxy's answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        super::header(&self.headers, name)
    }

    /// Whether this is the echo upstream's answer (the request got through).
    pub fn reached_upstream(&self) -> bool {
        serde_json::from_str::<serde_json::Value>(&self.body).is_ok_and(|v| v["header_list"].is_array())
    }

    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not the echo upstream's JSON ({e}): {}", self.body))
    }

    /// The headers the echo upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"][name].as_str().map(str::to_owned)
    }

    /// Every (name in lower case, value) the echo upstream received, repeats included.
    pub fn upstream_headers(&self) -> Vec<(String, String)> {
        let list = self.echo()["header_list"].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                    p[1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The one value of `name` the upstream received ("" when none);
    /// panics, naming `at`, if it arrived more than once.
    pub fn upstream_one(&self, name: &str, at: &str) -> String {
        let values: Vec<String> = self
            .upstream_headers()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        assert!(values.len() <= 1, "{at}: {name} arrived {} times", values.len());
        values.into_iter().next().unwrap_or_default()
    }
}

/// Every identity header a client might forge, each with a value that
/// contains `forged`, one of them twice, and the underscore spellings some
/// frameworks (CGI, WSGI) read as the same header.
pub const FORGED: [(&str, &str); 12] = [
    ("x-auth-subject", "forged-subject"),
    ("x-auth-scopes", "orders:read orders:admin forged"),
    ("x-auth-key-id", "forged-key-id"),
    ("x-auth-namespace", "forged-namespace"),
    ("x-auth-role", "forged-role"),
    ("x-auth-role", "forged-role-again"),
    ("x-auth-claim-tenant", "forged-tenant"),
    ("x-auth-claims", "{\"tenant\":\"forged\"}"),
    ("x_auth_role", "forged-underscore"),
    ("x_auth_namespace", "forged-underscore"),
    ("x-auth-actor", "forged-actor"),
    ("x_auth_actor", "forged-underscore"),
];

/// One request with a request-target sent byte for byte (`..`, `%2e`, `//`,
/// `\`: what an HTTP client library would normalise away), `Connection:
/// close`; returns the status and the raw answer (headers and body).
pub async fn raw_request(base: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let io = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(head.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        std::io::Result::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .unwrap_or_else(|_| panic!("{method} {target} at {base}: no answer in 10 s"))
        .unwrap_or_else(|e| panic!("{method} {target} at {base}: {e}"));
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target} at {base}: not an HTTP answer: {text:?}"));
    (status, text)
}
