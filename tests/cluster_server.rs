//! The auth server against the real local control plane: a `latchkey run`
//! process (controller + server) answers HTTP on loopback from the ApiKeys
//! it watches. The same answers through real nginx and Caddy are tested in
//! `tests/proxy_auth.rs`.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use latchkey::crd::ApiKey;
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};

struct Server {
    ns: TestNamespace,
    process: LatchkeyProcess,
    base: String,
    http: reqwest::Client,
    api_keys: Api<ApiKey>,
    secrets: Api<Secret>,
}

impl Server {
    async fn start(prefix: &str, extra: &[&str]) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let (process, base) = LatchkeyProcess::start_run(&ns.name, extra);
        let client = client().await;
        Self {
            api_keys: Api::namespaced(client.clone(), &ns.name),
            secrets: Api::namespaced(client, &ns.name),
            ns,
            process,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Applies an ApiKey; returns its key once it is Ready and latchkey
    /// accepts it.
    async fn key(&self, name: &str, spec: &str) -> String {
        served_key(&self.ns.name, name, spec, &self.base).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {path} failed: {e}\n{}", self.process.log_text()));
        (resp.status(), resp.headers().clone())
    }

    async fn auth(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, reqwest::header::HeaderMap) {
        self.request(Method::GET, path, headers).await
    }

    async fn introspect(&self, caller: Option<&str>, body: &str) -> (StatusCode, String) {
        let mut req = self
            .http
            .post(format!("{}/introspect", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        if let Some(c) = caller {
            req = req.header("authorization", format!("Bearer {c}"));
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn every_route_answers_from_the_apikeys_status() {
    let s = Server::start("srv-routes", &["--last-used-flush-seconds", "1"]).await;
    let key = s
        .key(
            "billing",
            "  subject: billing-service\n  scopes: [\"orders:read\", \"latchkey:introspect\"]\n  audiences: [\"api.example.com\"]\n",
        )
        .await;
    let auth = bearer(&key);

    // Probes.
    assert_eq!(s.auth("/livez", &[]).await.0, StatusCode::OK);
    assert_eq!(s.auth("/readyz", &[]).await.0, StatusCode::OK);

    // Allow, on each family's route, with identity headers and a short cache.
    for (method, path, headers) in [
        (
            Method::GET,
            "/auth/nginx?scope=orders:read&audience=api.example.com",
            vec![
                ("authorization", auth.as_str()),
                ("x-original-url", "https://api.example.com/orders/1"),
                ("x-original-method", "POST"),
            ],
        ),
        (
            Method::GET,
            "/auth/forward?scope=orders:read",
            vec![
                ("x-api-key", key.as_str()),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/orders"),
            ],
        ),
        (
            Method::DELETE,
            "/auth/envoy/orders/1?force=true",
            vec![("authorization", auth.as_str())],
        ),
        (Method::PATCH, "/auth/envoy", vec![("x-api-key", key.as_str())]),
    ] {
        let (status, headers) = s.request(method.clone(), path, &headers).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}");
        assert_eq!(header(&headers, "x-auth-subject"), "billing-service");
        assert_eq!(
            header(&headers, "x-auth-scopes"),
            "orders:read latchkey:introspect"
        );
        assert_eq!(header(&headers, "x-auth-key-id"), &key[3..15]);
        assert_eq!(header(&headers, "cache-control"), "private, max-age=1");
    }

    // No credential: a challenge without an error.
    let (status, headers) = s.auth("/auth/nginx", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "www-authenticate"), "Bearer realm=\"latchkey\"");
    assert_eq!(header(&headers, "cache-control"), "no-store");

    // Garbage, a bad checksum, an audience the key does not have.
    let mut bad_sum = key.clone();
    let last = bad_sum.pop().unwrap();
    bad_sum.push(if last == 'x' { 'y' } else { 'x' });
    for (path, presented) in [
        ("/auth/nginx", "garbage".to_owned()),
        ("/auth/nginx", bad_sum),
        ("/auth/nginx?audience=other.example.com", key.clone()),
    ] {
        let (status, headers) = s.auth(path, &[("authorization", &bearer(&presented))]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(header(&headers, "www-authenticate").contains("error=\"invalid_token\""));
    }

    // A scope the key lacks.
    let (status, headers) = s
        .auth("/auth/forward?scope=orders:write", &[("authorization", &auth)])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(header(&headers, "www-authenticate").contains("error=\"insufficient_scope\""));

    // Introspection: the caller needs latchkey:introspect.
    let (status, body) = s.introspect(Some(&key), &format!("token={key}")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["sub"], "billing-service");
    assert_eq!(v["client_id"], &key[3..15]);
    let (status, body) = s.introspect(Some(&key), "token=lk_nothing").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"active":false}"#));
    assert_eq!(
        s.introspect(None, &format!("token={key}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.introspect(Some(&key), "").await.0, StatusCode::BAD_REQUEST);

    // lastUsedAt is recorded (flushed every second here).
    eventually(WAIT, "status.lastUsedAt", || async {
        s.api_keys.get("billing").await.ok()?.status?.last_used_at
    })
    .await;

    // Metrics count decisions by route and result.
    let text = get_text(&format!("{}/metrics", s.base)).await;
    assert!(
        text.contains(r#"latchkey_auth_decisions_total{route="nginx",result="allow"}"#),
        "{text}"
    );
    assert!(!text.contains(&key), "metrics never carry a key");
    assert!(!s.process.log_text().contains(&key), "logs never carry a key");
}

#[tokio::test]
async fn rotation_keeps_the_old_key_valid_and_revocation_refuses_both_at_once() {
    let s = Server::start("srv-revoke", &[]).await;
    let old = s.key("svc", "  scopes: [\"orders:read\"]\n").await;
    s.api_keys
        .patch(
            "svc",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"latchkey.dev/rotate": "1"}}})),
        )
        .await
        .unwrap();
    let new = eventually(WAIT, "a rotated key in the Secret", || async {
        let secret = s.secrets.get("svc").await.ok()?;
        let key = String::from_utf8(secret.data?.get("api-key")?.0.clone()).ok()?;
        (key != old).then_some(key)
    })
    .await;
    eventually(WAIT, "the server accepts the rotated key", || async {
        (s.auth("/auth/nginx", &[("authorization", &bearer(&new))]).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        s.auth("/auth/nginx", &[("authorization", &bearer(&old))]).await.0,
        StatusCode::OK,
        "the previous key stays valid during its grace period"
    );

    revoke(&s.api_keys, "svc").await;
    let revoked_at = Instant::now();
    for key in [&new, &old] {
        eventually(Duration::from_secs(10), "the revoked key is refused", || async {
            (s.auth("/auth/nginx", &[("authorization", &bearer(key))]).await.0 == StatusCode::UNAUTHORIZED)
                .then_some(())
        })
        .await;
    }
    println!(
        "revoked keys refused {:?} after the patch returned",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after() {
    let s = Server::start("srv-rate", &[]).await;
    let key = s
        .key("limited", "  rateLimit: {requestsPerSecond: 1, burst: 3}\n")
        .await;
    // `key()` used one request already; burst 3 leaves at most 2 more at once.
    let mut statuses = Vec::new();
    let mut retry_after = String::new();
    for _ in 0..5 {
        let (status, headers) = s.auth("/auth/forward", &[("x-api-key", &key)]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = header(&headers, "retry-after").to_owned();
            assert_eq!(header(&headers, "x-ratelimit-limit"), "1");
            assert_eq!(header(&headers, "cache-control"), "no-store");
        } else {
            assert_eq!(
                header(&headers, "cache-control"),
                "no-store",
                "a metered allow is never cached"
            );
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry_after:?}"
    );
}

#[tokio::test]
async fn last_used_at_from_two_replicas_only_moves_forward() {
    let s = Server::start("srv-replicas", &["--last-used-flush-seconds", "1"]).await;
    let key = s.key("shared", "  scopes: [\"orders:read\"]\n").await;
    // A second server replica on the same ApiKeys.
    let (_replica, replica) =
        LatchkeyProcess::start_http("serve", &s.ns.name, &["--last-used-flush-seconds", "1"]);
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        for base in [&s.base, &replica] {
            let resp = s
                .http
                .get(format!("{base}/auth/forward"))
                .header("x-api-key", &key)
                .send()
                .await
                .unwrap();
            assert!(
                resp.status() == StatusCode::OK || resp.status() == StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                resp.status()
            );
        }
        if let Some(t) = s
            .api_keys
            .get("shared")
            .await
            .unwrap()
            .status
            .and_then(|st| st.last_used_at)
        {
            seen.push(t.0);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!seen.is_empty(), "no lastUsedAt written");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "lastUsedAt went backwards: {seen:?}"
    );
    let distinct = seen.windows(2).filter(|w| w[0] != w[1]).count() + 1;
    // Written about once per flush step (1 s here), not once per request or per replica.
    assert!(distinct <= 10, "{distinct} writes in 8 s: {seen:?}");
    println!("lastUsedAt with two replicas: {distinct} distinct values in 8 s, never backwards");
}
