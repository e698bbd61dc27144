//! Envoy's gRPC external authorization (`latchkey serve --grpc-addr`)
//! against the local control plane, driven by a client nobody on this
//! project wrote the protocol of: `e2e/extauthz-client` on Envoy's own
//! generated types (go-control-plane) and grpc-go, built by
//! `e2e/extauthz-client.sh` (a missing Go or module proxy fails the test).
//! Each answer's gRPC code, HTTP status, headers and dynamic metadata are
//! asserted, over h2c and over TLS (`--grpc-tls self-signed`, the client
//! trusting only latchkey's CA; another CA is refused); then a revocation
//! through the gRPC path, on both at once.

mod common;

use common::tls::ca_pem;
use common::*;
use kube::Api;
use latchkey::crd::{ApiKey, TokenPolicy};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const UNAUTHENTICATED: i64 = 16;
const PERMISSION_DENIED: i64 = 7;
const INVALID_ARGUMENT: i64 = 3;
const RESOURCE_EXHAUSTED: i64 = 8;

/// The client binary, built once per test binary (cached across runs).
fn client_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo().join("e2e/extauthz-client.sh"))
            .output()
            .expect("run e2e/extauthz-client.sh");
        assert!(
            out.status.success(),
            "building the gRPC ext_authz client failed (Go and the Go module proxy are needed):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A gRPC listener as the client reaches it: h2c, or TLS trusting only
/// the CA in `cacert` and expecting the certificate to name `latchkey.test`.
#[derive(Clone)]
struct Endpoint {
    addr: String,
    cacert: Option<PathBuf>,
}

impl Endpoint {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["-addr".to_owned(), self.addr.clone()];
        if let Some(ca) = &self.cacert {
            args.extend(["-cacert".to_owned(), ca.display().to_string()]);
            args.extend(["-servername".to_owned(), "latchkey.test".to_owned()]);
        }
        args
    }

    fn name(&self) -> &'static str {
        if self.cacert.is_some() { "TLS" } else { "h2c" }
    }
}

fn client(endpoint: &Endpoint, args: &[&str], stderr: Stdio) -> std::process::Child {
    Command::new(client_bin())
        .args(endpoint.args())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start extauthz-client")
}

/// Sends `cases` and returns the answers by case name.
fn check_all(endpoint: &Endpoint, cases: &Value) -> std::collections::BTreeMap<String, Value> {
    let mut child = client(endpoint, &[], Stdio::inherit());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "extauthz-client failed ({})",
        endpoint.name()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

fn case(name: &str, headers: Value, extensions: Value) -> Value {
    json!({"name": name, "headers": headers, "path": "/orders/1?page=2", "context_extensions": extensions})
}

fn assert_denied(answer: &Value, code: i64, status: i64, challenge: &str) {
    assert_eq!(answer["grpc_code"], code, "{answer}");
    assert_eq!(answer["http_status"], status, "{answer}");
    let denied = &answer["denied_headers"];
    assert_eq!(denied["cache-control"], "no-store", "{answer}");
    let www = denied["www-authenticate"].as_str().unwrap_or_default();
    assert!(www.starts_with(challenge), "{answer}");
    assert!(answer["dynamic_metadata"].as_object().unwrap().is_empty());
}

/// The set headers of an allow, each overwriting (never appending).
fn assert_allowed<'a>(answer: &'a Value, subject: &str, namespace: &str, name: &str) -> &'a Value {
    assert_eq!(answer["grpc_code"], 0, "{answer}");
    assert_eq!(answer["http_status"], 200, "{answer}");
    let set = &answer["headers_set"];
    for h in [
        "x-auth-subject",
        "x-auth-scopes",
        "x-auth-key-id",
        "x-auth-namespace",
        "x-auth-role",
        "x-auth-claims",
        "x-auth-actor",
        "x-auth-claim-tenant",
    ] {
        assert!(set.get(h).is_some(), "{h} not set: {answer}");
        assert_eq!(
            answer["append_actions"][h], "OVERWRITE_IF_EXISTS_OR_ADD",
            "{answer}"
        );
    }
    assert!(set.get("cache-control").is_none());
    assert_eq!(set["x-auth-subject"], subject);
    assert_eq!(set["x-auth-namespace"], namespace);
    let md = &answer["dynamic_metadata"];
    assert_eq!(md["subject"], subject);
    assert_eq!(md["api_key_namespace"], namespace);
    assert_eq!(md["api_key_name"], name);
    assert_eq!(md["key_id"], set["x-auth-key-id"]);
    set
}

/// A CA nobody trusts (PEM), for the refusal.
fn other_ca() -> String {
    rcgen::generate_simple_self_signed(vec!["latchkey.test".to_owned()])
        .unwrap()
        .cert
        .pem()
}

#[tokio::test]
async fn check_answers_like_the_http_routes_over_h2c_and_tls_and_revocation_reaches_it() {
    let ns = TestNamespace::new("grpc").await;
    // Two servers of the namespace: gRPC over h2c, and over TLS with a
    // certificate of latchkey's CA (the CA Secret <ns>/grpc-ca) for
    // latchkey.test. Tokens are issued by the first; the second shares its
    // issuer base URL, so it accepts them too.
    let h2c_addr = format!("127.0.0.1:{}", free_port());
    let (mut serve, server) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &["--grpc-addr", &h2c_addr, "--claim-header", "tenant"],
    );
    serve.wait_logged("gRPC ext_authz listening", &h2c_addr);
    let log = serve.log_text();
    assert!(
        log.contains("h2c, plain text") && log.contains("clear text"),
        "{log}"
    );
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let ca_secret = format!("{}/grpc-ca", ns.name);
    let (mut serve_tls, tls_server) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &[
            "--grpc-addr",
            &tls_addr,
            "--grpc-tls",
            "self-signed",
            "--grpc-tls-dns-name",
            "latchkey.test",
            "--webhook-ca-secret",
            &ca_secret,
            "--issuer-base-url",
            &server,
            "--claim-header",
            "tenant",
        ],
    );
    serve_tls.wait_logged("gRPC ext_authz listening", &tls_addr);
    let log = serve_tls.log_text();
    assert!(
        log.contains("TLS (h2)") && log.contains("signed by latchkey's CA"),
        "{log}"
    );
    let dir = std::env::temp_dir().join(format!("latchkey-grpc-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, wrong_file) = (dir.join("ca.crt"), dir.join("other-ca.crt"));
    std::fs::write(&ca_file, ca_pem(&ns.name, "grpc-ca")).unwrap();
    std::fs::write(&wrong_file, other_ca()).unwrap();
    let endpoints = [
        (
            Endpoint {
                addr: h2c_addr,
                cacert: None,
            },
            server.clone(),
        ),
        (
            Endpoint {
                addr: tls_addr,
                cacert: Some(ca_file),
            },
            tls_server.clone(),
        ),
    ];

    let _controller = LatchkeyProcess::start_with(&ns.name, &["controller", "--issuer-base-url", &server]);
    let kube = common::client().await;
    apply(&token_policy_manifest(
        &ns.name,
        "login",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\", \"orders:write\"]\n  tokenTTL: 5m\n",
    ));
    ready_policy(&Api::<TokenPolicy>::namespaced(kube.clone(), &ns.name), "login").await;
    let frontend = "  subject: frontend-svc\n  scopes: [\"orders:read\", \"orders:write\"]\n  audiences: [orders]\n  tokenPolicyRef: {name: login}\n";
    let limited_spec = "  scopes: [\"orders:read\"]\n  rateLimit: {requestsPerSecond: 1, burst: 1}\n";
    let revokee_spec = "  scopes: [\"orders:read\"]\n";
    let (mut key, mut limited, mut revokee) = (String::new(), String::new(), String::new());
    for base in [&server, &tls_server] {
        key = served_key(&ns.name, "frontend", frontend, base).await;
        limited = served_key(&ns.name, "limited", limited_spec, base).await;
        revokee = served_key(&ns.name, "revokee", revokee_spec, base).await;
    }
    let resp = post_token(
        &format!("{server}/token"),
        &key,
        "grant_type=client_credentials&scope=orders:read",
    )
    .await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let token = resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = |c: &str| format!("Bearer {c}");

    let cases = json!([
        case("no key", json!({}), json!({})),
        case("bad key", json!({"x-api-key": "lk_not_a_key"}), json!({})),
        case(
            "valid key",
            json!({"x-api-key": key, "x-auth-subject": "admin", "x-auth-forged": "1", "x-other": "kept"}),
            json!({"scope": "orders:read orders:write", "audience": "orders", "namespace": ns.name, "resource": "path"}),
        ),
        case(
            "valid token",
            json!({"authorization": bearer(&token)}),
            json!({"scope": "orders:read"})
        ),
        case(
            "missing scope",
            json!({"x-api-key": key}),
            json!({"scope": "orders:read admin"})
        ),
        case(
            "token missing scope",
            json!({"authorization": bearer(&token)}),
            json!({"scope": "orders:write"})
        ),
        case(
            "wrong audience",
            json!({"x-api-key": key}),
            json!({"audience": "billing"})
        ),
        case(
            "other namespace",
            json!({"x-api-key": key}),
            json!({"namespace": "kube-system default"})
        ),
        case("limited 1", json!({"x-api-key": limited}), json!({})),
        case("limited 2", json!({"x-api-key": limited}), json!({})),
        case("limited 3", json!({"x-api-key": limited}), json!({})),
        case(
            "two credentials",
            json!({"x-api-key": key, "authorization": bearer(&limited)}),
            json!({})
        ),
    ]);
    for (endpoint, base) in &endpoints {
        let answers = check_all(endpoint, &cases);
        assert_answers(&answers, &ns.name, &key, base).await;
    }

    // The CA is checked: a client trusting another CA gets no answer at
    // all, and neither does one speaking h2c to the TLS port.
    let tls = &endpoints[1].0;
    for (what, wrong) in [
        (
            "another CA",
            Endpoint {
                cacert: Some(wrong_file),
                ..tls.clone()
            },
        ),
        (
            "h2c on the TLS port",
            Endpoint {
                cacert: None,
                ..tls.clone()
            },
        ),
    ] {
        let mut child = client(&wrong, &[], Stdio::piped());
        let cases = json!([case("valid key", json!({"x-api-key": key}), json!({}))]);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cases.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: refused, not answered");
        assert!(out.stdout.is_empty(), "{what}: no answer printed");
        if wrong.cacert.is_some() {
            assert!(
                stderr.contains("certificate signed by unknown authority"),
                "{what}: {stderr}"
            );
        }
        assert!(!stderr.contains(&key), "the client's error carries no key");
    }

    // Revocation through the gRPC path, h2c and TLS at once: each is
    // eventually denied; the latency is printed, never asserted.
    let watchers: Vec<_> = endpoints
        .iter()
        .map(|(endpoint, _)| {
            let mut child = client_until_denied(endpoint, &revokee);
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!(first["event"], "allowed");
            // The denial's line, and when it arrived.
            let reader = std::thread::spawn(move || {
                let line = lines.next().expect("a denial").unwrap();
                (serde_json::from_str::<Value>(&line).unwrap(), Instant::now())
            });
            (endpoint.name(), child, reader)
        })
        .collect();
    let api_keys: Api<ApiKey> = Api::namespaced(kube, &ns.name);
    let revoked_at = Instant::now();
    revoke(&api_keys, "revokee").await;
    let mut denials = Vec::new();
    for (name, mut child, reader) in watchers {
        let (denial, seen) = reader.join().unwrap();
        assert!(child.wait().unwrap().success(), "{name}");
        denials.push((name, denial, seen - revoked_at));
    }
    for (name, denial, latency) in denials {
        assert_eq!(denial["grpc_code"], UNAUTHENTICATED, "{name}: {denial}");
        assert_eq!(denial["http_status"], 401);
        println!(
            "revocation through gRPC ({name}): first denied Check seen {:.0} ms after the revoke patch was sent ({} Checks in all, one every 5 ms)",
            latency.as_secs_f64() * 1000.0,
            denial["checks"]
        );
    }

    // SIGTERM stops both listeners gracefully.
    for serve in [&mut serve, &mut serve_tls] {
        assert!(serve.terminate().success(), "{}", serve.log_text());
        assert!(serve.log_text().contains("gRPC ext_authz stopped"));
    }
}

/// The answers to the cases of the test above, from one server (HTTP base
/// URL `server`).
async fn assert_answers(
    answers: &std::collections::BTreeMap<String, Value>,
    ns_name: &str,
    key: &str,
    server: &str,
) {
    assert_denied(
        &answers["no key"],
        UNAUTHENTICATED,
        401,
        "Bearer realm=\"latchkey\"",
    );
    assert_eq!(
        answers["no key"]["denied_headers"]["www-authenticate"],
        "Bearer realm=\"latchkey\""
    );
    assert_denied(
        &answers["bad key"],
        UNAUTHENTICATED,
        401,
        "Bearer realm=\"latchkey\", error=\"invalid_token\"",
    );

    let valid = &answers["valid key"];
    let set = assert_allowed(valid, "frontend-svc", ns_name, "frontend");
    assert_eq!(set["x-auth-scopes"], "orders:read orders:write");
    assert_eq!(set["x-auth-role"], "");
    assert_eq!(set["x-auth-claims"], "{}");
    // The client's X-Auth-Subject is overwritten (Envoy removes after it
    // sets: listing it would erase latchkey's value); its other X-Auth-*
    // header is removed; other headers are left alone.
    assert_eq!(valid["headers_to_remove"], json!(["x-auth-forged"]), "{valid}");

    let via_token = &answers["valid token"];
    let set = assert_allowed(via_token, "frontend-svc", ns_name, "frontend");
    assert_eq!(set["x-auth-scopes"], "orders:read");
    assert_eq!(set["x-auth-key-id"], valid["headers_set"]["x-auth-key-id"]);

    for name in ["missing scope", "token missing scope"] {
        assert_denied(
            &answers[name],
            PERMISSION_DENIED,
            403,
            "Bearer realm=\"latchkey\", error=\"insufficient_scope\"",
        );
    }
    assert_denied(
        &answers["wrong audience"],
        UNAUTHENTICATED,
        401,
        "Bearer realm=\"latchkey\", error=\"invalid_token\"",
    );
    // A route that accepts only other namespaces' credentials refuses this one.
    assert_denied(
        &answers["other namespace"],
        UNAUTHENTICATED,
        401,
        "Bearer realm=\"latchkey\", error=\"invalid_token\"",
    );
    let limited3 = &answers["limited 3"];
    assert_eq!(limited3["grpc_code"], RESOURCE_EXHAUSTED, "{limited3}");
    assert_eq!(limited3["http_status"], 429);
    assert_eq!(limited3["denied_headers"]["x-ratelimit-limit"], "1");
    assert_eq!(limited3["denied_headers"]["cache-control"], "no-store");
    assert!(
        limited3["denied_headers"]["retry-after"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_denied(
        &answers["two credentials"],
        INVALID_ARGUMENT,
        400,
        "Bearer realm=\"latchkey\", error=\"invalid_request\"",
    );

    // Each denial equals the HTTP route's answer for the same case.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{server}/auth/nginx?scope=orders:read+admin"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        header(resp.headers(), "www-authenticate"),
        answers["missing scope"]["denied_headers"]["www-authenticate"]
    );
    // The gRPC allows are counted under their own route (how many of the
    // rate-limited key's first calls pass depends on the time since the
    // wait for it).
    let allowed = answers.values().filter(|a| a["grpc_code"] == 0).count();
    let metrics = get_text(&format!("{server}/metrics")).await;
    let line = format!(r#"latchkey_auth_decisions_total{{route="grpc",result="allow"}} {allowed}"#);
    assert!(metrics.contains(&line), "{line} in {metrics}");
}

/// The client repeating one Check with `key` until it is denied (bounded
/// by its own 120 s timeout).
fn client_until_denied(endpoint: &Endpoint, key: &str) -> std::process::Child {
    let mut child = client(endpoint, &["-until-denied", "-timeout", "120s"], Stdio::inherit());
    let cases = json!([case("revokee", json!({"x-api-key": key}), json!({}))]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    child
}
