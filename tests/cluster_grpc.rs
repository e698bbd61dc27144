//! Envoy's gRPC external authorization (`latchkey serve --grpc-addr`)
//! against the local control plane, driven by a client nobody on this
//! project wrote the protocol of: `e2e/extauthz-client` on Envoy's own
//! generated types (go-control-plane) and grpc-go, built by
//! `e2e/extauthz-client.sh` (a missing Go or module proxy fails the test).
//! Each answer's gRPC code, HTTP status, headers and dynamic metadata are
//! asserted; then a revocation through the gRPC path.

mod common;

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

fn client(addr: &str, args: &[&str]) -> std::process::Child {
    Command::new(client_bin())
        .arg("-addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start extauthz-client")
}

/// Sends `cases` and returns the answers by case name.
fn check_all(addr: &str, cases: &Value) -> std::collections::BTreeMap<String, Value> {
    let mut child = client(addr, &[]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "extauthz-client failed");
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

#[tokio::test]
async fn check_answers_like_the_http_routes_and_revocation_reaches_it() {
    let ns = TestNamespace::new("grpc").await;
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let (mut serve, server) = LatchkeyProcess::start_http(
        "serve",
        &ns.name,
        &["--grpc-addr", &grpc_addr, "--claim-header", "tenant"],
    );
    serve.wait_logged("gRPC ext_authz listening", &grpc_addr);
    let _controller = LatchkeyProcess::start_with(&ns.name, &["controller", "--issuer-base-url", &server]);
    let client = common::client().await;
    apply(&token_policy_manifest(
        &ns.name,
        "login",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\", \"orders:write\"]\n  tokenTTL: 5m\n",
    ));
    ready_policy(&Api::<TokenPolicy>::namespaced(client.clone(), &ns.name), "login").await;
    let key = served_key(
        &ns.name,
        "frontend",
        "  subject: frontend-svc\n  scopes: [\"orders:read\", \"orders:write\"]\n  audiences: [orders]\n  tokenPolicyRef: {name: login}\n",
        &server,
    )
    .await;
    let limited = served_key(
        &ns.name,
        "limited",
        "  scopes: [\"orders:read\"]\n  rateLimit: {requestsPerSecond: 1, burst: 1}\n",
        &server,
    )
    .await;
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
    let answers = check_all(&grpc_addr, &cases);
    let ns_name = ns.name.as_str();

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
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        header(resp.headers(), "www-authenticate"),
        answers["missing scope"]["denied_headers"]["www-authenticate"]
    );
    let metrics = get_text(&format!("{server}/metrics")).await;
    assert!(
        metrics.contains(r#"latchkey_auth_decisions_total{route="grpc",result="allow"} 2"#),
        "{metrics}"
    );

    // Revocation through the gRPC path: eventually denied; the latency is
    // printed, never asserted.
    let revokee = served_key(&ns.name, "revokee", "  scopes: [\"orders:read\"]\n", &server).await;
    let mut watcher = client_until_denied(&grpc_addr, &revokee);
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "allowed");
    let api_keys: Api<ApiKey> = Api::namespaced(client, &ns.name);
    let revoked_at = Instant::now();
    revoke(&api_keys, "revokee").await;
    let denial: Value = serde_json::from_str(&lines.next().expect("a denial").unwrap()).unwrap();
    let latency = revoked_at.elapsed();
    assert!(watcher.wait().unwrap().success());
    assert_eq!(denial["grpc_code"], UNAUTHENTICATED, "{denial}");
    assert_eq!(denial["http_status"], 401);
    println!(
        "revocation through gRPC: first denied Check {:.0} ms after the revoke patch was sent ({} checks)",
        latency.as_secs_f64() * 1000.0,
        denial["checks"]
    );

    // SIGTERM stops both listeners gracefully.
    assert!(serve.terminate().success(), "{}", serve.log_text());
    assert!(serve.log_text().contains("gRPC ext_authz stopped"));
}

/// The client repeating one Check with `key` until it is denied (bounded
/// by its own 120 s timeout).
fn client_until_denied(addr: &str, key: &str) -> std::process::Child {
    let mut child = client(addr, &["-until-denied", "-timeout", "120s"]);
    let cases = json!([case("revokee", json!({"x-api-key": key}), json!({}))]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    child
}
