//! External auth through the real proxies: nginx configured as ingress-nginx
//! generates it for `auth-url` + `auth-response-headers` (with the 429
//! recipe), and Caddy with `forward_auth` + `copy_headers`, both in front of a
//! `latchkey run` and an upstream that echoes the headers it receives
//! (`e2e/proxy/`). Both reach latchkey over HTTPS and verify its certificate
//! against latchkey's CA (nginx `proxy_ssl_verify`, Caddy
//! `tls_trusted_ca_certs`); a route trusting another CA fails. Envoy ext_authz requests (and a ForwardAuth request, the
//! contract the real Traefik of tests/proxy_traefik.rs relies on) are sent
//! to latchkey directly with the headers those proxies send.
//!
//! nginx and Caddy come from Debian (`e2e/deps` installs them); without them
//! these tests fail and say so.

mod common;

use common::process::LoggedChild;
use common::proxy::*;
use common::tls::reqwest_trusting;
use common::*;
use kube::Api;
use latchkey::crd::ApiKey;
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};

/// latchkey, the echo upstream, nginx and Caddy for one namespace.
struct Stack {
    ns: TestNamespace,
    latchkey: LatchkeyProcess,
    latchkey_url: String,
    nginx: String,
    caddy: String,
    /// Where the configurations and the proxies' logs are.
    dir: std::path::PathBuf,
    http: reqwest::Client,
    api_keys: Api<ApiKey>,
    procs: Vec<LoggedChild>,
}

impl Stack {
    async fn start(prefix: &str) -> Self {
        Self::start_env(prefix, &[]).await
    }

    /// With more environment variables for latchkey (`RUST_LOG`).
    async fn start_env(prefix: &str, env: &[(&str, &str)]) -> Self {
        require("caddy");
        let ns = TestNamespace::new(prefix).await;
        // The test configurations copy X-Auth-Claim-tenant (see e2e/proxy/).
        // HTTPS: the proxies verify latchkey's certificate against its CA.
        let mut args = vec!["--claim-header".to_owned(), "tenant".to_owned()];
        args.extend(tls_flags(&ns.name));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (latchkey, latchkey_url) = LatchkeyProcess::start_http_env("run", &ns.name, &args, env);
        assert!(latchkey_url.starts_with("https://"), "{latchkey_url}");
        let latchkey_addr = latchkey_url.trim_start_matches("https://").to_owned();
        let dir = std::env::temp_dir().join(format!("latchkey-proxies-{}", ns.name));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let trust = TrustFiles::write(&ns.name, &dir);

        let (nginx_port, caddy_port) = (free_port(), free_port());
        let mut procs = Vec::new();
        let (echo, upstream) = spawn_echo(&dir);
        procs.push(echo);

        let mut vars = vec![
            ("PREFIX", dir.display().to_string()),
            ("LISTEN", format!("127.0.0.1:{nginx_port}")),
            ("LATCHKEY", latchkey_addr.clone()),
            ("UPSTREAM", upstream.clone()),
        ];
        vars.extend(trust.vars());
        render("nginx.conf.in", &dir.join("nginx.conf"), &vars);
        procs.push(start_nginx(&dir, &dir.join("nginx.conf"), nginx_port));

        let mut vars = vec![
            ("LISTEN", format!("127.0.0.1:{caddy_port}")),
            ("LATCHKEY", latchkey_addr),
            ("UPSTREAM", upstream),
        ];
        vars.extend(trust.vars());
        render("Caddyfile.in", &dir.join("Caddyfile"), &vars);
        procs.push(start_caddy(&dir, &dir.join("Caddyfile"), caddy_port));

        let client = client().await;
        Self {
            api_keys: Api::namespaced(client, &ns.name),
            ns,
            latchkey,
            latchkey_url,
            nginx: format!("http://127.0.0.1:{nginx_port}"),
            caddy: format!("http://127.0.0.1:{caddy_port}"),
            dir,
            // Trusts latchkey's CA only (the proxies themselves are plain HTTP).
            http: reqwest_trusting(&trust.pem),
            procs,
        }
    }

    fn proxies(&self) -> [(&'static str, &str); 2] {
        [("nginx", &self.nginx), ("caddy", &self.caddy)]
    }

    /// Applies an ApiKey; returns its key once it is Ready and latchkey
    /// accepts it.
    async fn key(&self, name: &str, spec: &str) -> String {
        served_key_with(&self.ns.name, name, spec, &self.latchkey_url, &self.http).await
    }

    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, url, headers).await
    }

    async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Answer {
        send(&self.http, method, url, headers)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}\n{}", self.latchkey.log_text()))
    }
}

/// A TokenPolicy `orders` in `ns` with the role `admin` and the custom claim
/// `tenant`, applied.
fn orders_policy(ns: &str) {
    apply(&token_policy_manifest(
        ns,
        "orders",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\", \"orders:admin\"]\n  \
         roles:\n    admin: [{scopes: [\"orders:read\", \"orders:admin\"]}]\n  customClaims:\n  - name: tenant\n",
    ));
}

/// A token for `key` from latchkey's `/token` with `form`.
async fn mint(s: &Stack, key: &str, form: &str) -> String {
    eventually(Duration::from_secs(30), "a token from /token", || async {
        let resp = s
            .http
            .post(format!("{}/token", s.latchkey_url))
            .basic_auth("client", Some(key))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
        v["access_token"].as_str().map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn nginx_and_caddy_enforce_latchkeys_decisions() {
    let s = Stack::start("proxy-auth").await;
    let key = s
        .key(
            "billing",
            "  subject: billing-service\n  scopes: [\"orders:read\"]\n",
        )
        .await;
    let auth = format!("Bearer {key}");
    let mut bad_sum = key.clone();
    let last = bad_sum.pop().unwrap();
    bad_sum.push(if last == 'x' { 'y' } else { 'x' });

    for (proxy, base) in s.proxies() {
        let url = format!("{base}/api/orders?page=2");

        // No key: 401 with a challenge that carries no error.
        let a = s.get(&url, &[]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{proxy}: no key");
        assert_eq!(
            a.header("www-authenticate"),
            "Bearer realm=\"latchkey\"",
            "{proxy}"
        );

        // Garbage and a bad checksum: 401.
        for bad in ["Bearer garbage", &format!("Bearer {bad_sum}")] {
            let a = s.get(&url, &[("authorization", bad)]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{proxy}: {bad:.14}…");
            assert!(a.header("www-authenticate").contains("invalid_token"), "{proxy}");
        }

        // A valid key: the upstream answers and sees who called, and a
        // client's own X-Auth-Subject does not get through.
        let a = s
            .get(
                &url,
                &[
                    ("authorization", &auth),
                    ("x-auth-subject", "mallory"),
                    ("x-auth-scopes", "orders:admin"),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: valid key");
        assert_eq!(
            a.upstream_header("x-auth-subject").as_deref(),
            Some("billing-service"),
            "{proxy}"
        );
        assert_eq!(
            a.upstream_header("x-auth-scopes").as_deref(),
            Some("orders:read"),
            "{proxy}"
        );
        assert_eq!(
            a.upstream_header("x-auth-key-id").as_deref(),
            Some(&key[3..15]),
            "{proxy}"
        );

        // X-Api-Key works as well, for any method (nginx's subrequest is a GET).
        let a = s.send(Method::POST, &url, &[("x-api-key", &key)]).await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: POST with X-Api-Key");

        // A route that requires a scope the key lacks: 403.
        let a = s
            .get(&format!("{base}/admin/users"), &[("authorization", &auth)])
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{proxy}: missing scope");
    }

    // Revocation: both proxies refuse the key.
    revoke(&s.api_keys, "billing").await;
    for (proxy, base) in s.proxies() {
        let url = format!("{base}/api/orders");
        eventually(
            Duration::from_secs(10),
            &format!("{proxy} refuses the revoked key"),
            || async {
                (s.get(&url, &[("authorization", &auth)]).await.status == StatusCode::UNAUTHORIZED)
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn nginx_and_caddy_refuse_a_latchkey_whose_ca_they_do_not_trust() {
    let s = Stack::start("proxy-wrong-ca").await;
    let key = s.key("svc", "  scopes: [\"orders:read\"]\n").await;
    for (proxy, base) in s.proxies() {
        // The same key through a route that trusts latchkey's CA: allowed.
        let a = s.get(&format!("{base}/api/orders"), &[("x-api-key", &key)]).await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: {}", a.body);
        assert!(a.reached_upstream(), "{proxy}");
        // Trusting another CA: the handshake fails, so neither latchkey's
        // allow (the upstream) nor its 401 (a challenge) comes through.
        let (expected, why) = match proxy {
            "nginx" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "auth_request turns the 502 into 500",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "reverse_proxy's answer to a failed upstream",
            ),
        };
        for (what, headers) in [
            ("a valid key", vec![("x-api-key", key.as_str())]),
            ("no key", vec![]),
        ] {
            let a = s.get(&format!("{base}/wrong-ca/orders"), &headers).await;
            assert_eq!(a.status, expected, "{proxy} with {what} ({why}): {}", a.body);
            assert!(
                !a.reached_upstream(),
                "{proxy} with {what}: the upstream answered"
            );
            assert_eq!(
                a.header("www-authenticate"),
                "",
                "{proxy} with {what}: latchkey answered"
            );
        }
    }
    let nginx_log = std::fs::read_to_string(s.dir.join("error.log")).unwrap_or_default();
    assert!(
        nginx_log.contains("upstream SSL certificate verify error"),
        "nginx says why:\n{nginx_log}"
    );
    let caddy_log = s.procs[2].log_text();
    assert!(
        caddy_log.contains("certificate signed by unknown authority"),
        "Caddy says why:\n{caddy_log}"
    );
}

#[tokio::test]
async fn over_the_rate_limit_each_proxy_answers_429_with_retry_after() {
    let s = Stack::start("proxy-rate").await;
    let key = s
        .key(
            "limited",
            "  scopes: [\"orders:read\"]\n  rateLimit: {requestsPerSecond: 1, burst: 2}\n",
        )
        .await;
    for (proxy, base) in s.proxies() {
        let url = format!("{base}/api/orders");
        let mut limited = None;
        for _ in 0..6 {
            let a = s.get(&url, &[("x-api-key", &key)]).await;
            if a.status == StatusCode::TOO_MANY_REQUESTS {
                limited = Some(a);
                break;
            }
            assert_eq!(a.status, StatusCode::OK, "{proxy}: {}", a.body);
        }
        let a = limited.unwrap_or_else(|| panic!("{proxy}: no 429 in 6 requests at burst 2"));
        let retry: u64 = a
            .header("retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("{proxy}: Retry-After {:?}", a.header("retry-after")));
        assert!(retry >= 1, "{proxy}");
        // Let the bucket refill before the next proxy.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[tokio::test]
async fn traefik_and_envoy_style_requests_get_their_contracts() {
    let s = Stack::start("proxy-styles").await;
    let key = s
        .key("svc", "  subject: svc\n  scopes: [\"orders:read\"]\n")
        .await;
    let base = &s.latchkey_url;

    // Traefik ForwardAuth: GET with X-Forwarded-* describing the original request.
    let traefik = |credential: Option<&str>| {
        let mut h: Vec<(&str, String)> = [
            ("x-forwarded-method", "POST"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", "/orders?page=2"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-for", "203.0.113.7"),
        ]
        .map(|(k, v)| (k, v.to_owned()))
        .into();
        if let Some(c) = credential {
            h.push(("x-api-key", c.to_owned()));
        }
        h
    };
    let a = s
        .get(
            &format!("{base}/auth/forward?scope=orders:read"),
            &refs(&traefik(Some(&key))),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-auth-subject"), "svc");
    assert_eq!(a.header("x-auth-scopes"), "orders:read");
    let a = s
        .get(&format!("{base}/auth/forward"), &refs(&traefik(None)))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = s
        .get(
            &format!("{base}/auth/forward?scope=orders:write"),
            &refs(&traefik(Some(&key))),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // Envoy ext_authz (HTTP) and Gateway API ExternalAuth: the client's method
    // and path under the prefix; allow is exactly 200.
    let auth = format!("Bearer {key}");
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
    ] {
        let a = s
            .send(
                method.clone(),
                &format!("{base}/auth/envoy/orders/17?expand=items"),
                &[
                    ("authorization", &auth),
                    ("host", "api.example.com"),
                    ("x-request-id", "abc"),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "envoy {method}");
        assert_eq!(a.header("x-auth-subject"), "svc");
        let a = s
            .send(
                method.clone(),
                &format!("{base}/auth/envoy/orders/17"),
                &[("authorization", "Bearer nope")],
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "envoy {method} with a bad key"
        );
    }
    // The query is the client's own, not a requirement of the route.
    let a = s
        .get(
            &format!("{base}/auth/envoy/search?scope=admin&audience=x"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a client's own `scope` query parameter is not a requirement"
    );
}

#[tokio::test]
async fn a_token_from_an_api_key_passes_nginx_and_caddy_until_the_key_is_revoked() {
    let s = Stack::start("proxy-token").await;
    apply(&token_policy_manifest(
        &s.ns.name,
        "orders",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n  customClaims:\n  - name: tenant\n",
    ));
    let key = s
        .key(
            "login",
            "  subject: login-service\n  scopes: [\"orders:read\"]\n  tokenPolicyRef:\n    name: orders\n",
        )
        .await;
    let token = eventually(Duration::from_secs(30), "a token from /token", || async {
        let resp = s
            .http
            .post(format!("{}/token", s.latchkey_url))
            .basic_auth("login", Some(&key))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&claim.tenant=acme")
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
        v["access_token"].as_str().map(str::to_owned)
    })
    .await;
    let bearer = format!("Bearer {token}");
    for (proxy, base) in s.proxies() {
        let url = format!("{base}/api/orders");
        let a = s
            .get(&url, &[("authorization", &bearer), ("x-auth-subject", "mallory")])
            .await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: token");
        assert_eq!(
            a.upstream_header("x-auth-subject").as_deref(),
            Some("login-service"),
            "{proxy}"
        );
        assert_eq!(
            a.upstream_header("x-auth-scopes").as_deref(),
            Some("orders:read"),
            "{proxy}"
        );
        let a = s
            .get(&format!("{base}/admin/users"), &[("authorization", &bearer)])
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{proxy}: token lacks the scope");
    }
    // Revoke the API key: its token is refused through nginx within a second.
    revoke(&s.api_keys, "login").await;
    let revoked = Instant::now();
    let url = format!("{}/api/orders", s.nginx);
    eventually(Duration::from_secs(5), "nginx refuses the token", || async {
        (s.get(&url, &[("authorization", &bearer)]).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let took = revoked.elapsed();
    println!("token refused through nginx {took:?} after the API key was revoked");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let a = s
        .get(&format!("{}/api/orders", s.caddy), &[("authorization", &bearer)])
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "caddy");
}

#[tokio::test]
async fn no_client_sent_identity_header_reaches_the_upstream_through_any_location() {
    let s = Stack::start("proxy-forge").await;
    orders_policy(&s.ns.name);
    let key = s
        .key(
            "svc",
            "  subject: svc\n  scopes: [\"orders:read\", \"orders:admin\"]\n  tokenPolicyRef: {name: orders}\n",
        )
        .await;
    let token = mint(
        &s,
        &key,
        "grant_type=client_credentials&role=admin&claim.tenant=acme",
    )
    .await;
    // A delegated token (X-Auth-Actor set): a policy with delegation and its login handler's key.
    apply(&token_policy_manifest(
        &s.ns.name,
        "users",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\", \"orders:admin\"]\n  \
         delegation: {subjectPattern: \"^user-[0-9]+$\"}\n",
    ));
    let handler = s
        .key(
            "handler",
            "  subject: login-handler\n  scopes: [\"orders:read\", \"orders:admin\"]\n  tokenPolicyRef: {name: users}\n",
        )
        .await;
    let delegated = mint(
        &s,
        &handler,
        "grant_type=client_credentials&requested_subject=user-42",
    )
    .await;
    let credentials = [
        ("the key as X-Api-Key", "x-api-key", key.clone()),
        ("the key as Bearer", "authorization", format!("Bearer {key}")),
        ("a token", "authorization", format!("Bearer {token}")),
        (
            "a delegated token",
            "authorization",
            format!("Bearer {delegated}"),
        ),
    ];
    let mut checked = 0;
    for (proxy, base) in s.proxies() {
        for location in ["/api/orders", "/admin/users"] {
            for (what, name, value) in &credentials {
                let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
                headers.push((name, value));
                let a = s.get(&format!("{base}{location}"), &headers).await;
                let at = format!("{proxy} {location} with {what}");
                assert_eq!(a.status, StatusCode::OK, "{at}: {}", a.body);
                let received = a.upstream_headers();
                let forged: Vec<_> = received.iter().filter(|(_, v)| v.contains("forged")).collect();
                assert!(forged.is_empty(), "{at}: the upstream received {forged:?}");
                // latchkey's own values arrived instead, once each.
                let one = |n: &str| {
                    let values: Vec<&str> = received
                        .iter()
                        .filter(|(k, _)| k == n)
                        .map(|(_, v)| v.as_str())
                        .collect();
                    assert!(values.len() <= 1, "{at}: {n} arrived {} times", values.len());
                    values.first().map(|v| v.to_string()).unwrap_or_default()
                };
                assert_eq!(one("x-auth-namespace"), s.ns.name, "{at}");
                if *what == "a delegated token" {
                    assert_eq!(one("x-auth-subject"), "user-42", "{at}");
                    assert_eq!(one("x-auth-actor"), "login-handler", "{at}");
                    assert_eq!(one("x-auth-key-id"), handler[3..15], "{at}");
                    assert_eq!(one("x-auth-role"), "", "{at}");
                    checked += 1;
                    continue;
                }
                assert_eq!(one("x-auth-actor"), "", "{at}");
                assert_eq!(one("x-auth-subject"), "svc", "{at}");
                assert_eq!(one("x-auth-key-id"), key[3..15], "{at}");
                if *what == "a token" {
                    assert_eq!(one("x-auth-role"), "admin", "{at}");
                    assert_eq!(one("x-auth-claim-tenant"), "acme", "{at}");
                    assert_eq!(one("x-auth-claims"), r#"{"tenant":"acme"}"#, "{at}");
                } else {
                    // Empty: nginx drops an empty header, Caddy sets it empty.
                    assert_eq!(one("x-auth-role"), "", "{at}");
                    assert_eq!(one("x-auth-claim-tenant"), "", "{at}");
                    assert_eq!(one("x-auth-claims"), "{}", "{at}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
}

#[tokio::test]
async fn repeated_credentials_are_refused_through_nginx_and_caddy() {
    let s = Stack::start("proxy-repeat").await;
    let key = s.key("svc", "  scopes: [\"orders:read\"]\n").await;
    let other = s.key("other", "  scopes: [\"orders:read\"]\n").await;
    let (mine, theirs) = (format!("Bearer {key}"), format!("Bearer {other}"));
    for (proxy, base) in s.proxies() {
        let url = format!("{base}/api/orders");
        for (what, headers) in [
            (
                "two Authorization headers",
                vec![
                    ("authorization", mine.as_str()),
                    ("authorization", theirs.as_str()),
                ],
            ),
            (
                "the same Authorization twice",
                vec![("authorization", mine.as_str()), ("authorization", mine.as_str())],
            ),
            (
                "Bearer and a different X-Api-Key",
                vec![("authorization", mine.as_str()), ("x-api-key", other.as_str())],
            ),
            (
                "two X-Api-Key headers",
                vec![("x-api-key", key.as_str()), ("x-api-key", other.as_str())],
            ),
        ] {
            let a = s.get(&url, &headers).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{proxy}: {what}: {}", a.body);
            assert!(
                !a.body.contains("\"headers\""),
                "{proxy}: {what}: the upstream was reached"
            );
        }
        // One credential, or the same one in both places, still passes.
        let a = s
            .get(&url, &[("authorization", &mine), ("x-api-key", &key)])
            .await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: the same credential twice");
    }
}

#[tokio::test]
async fn credentials_in_urls_and_headers_never_reach_the_debug_log() {
    let s = Stack::start_env("proxy-logs", &[("RUST_LOG", "debug")]).await;
    orders_policy(&s.ns.name);
    let key = s
        .key(
            "svc",
            "  scopes: [\"orders:read\"]\n  tokenPolicyRef: {name: orders}\n",
        )
        .await;
    let token = mint(&s, &key, "grant_type=client_credentials&claim.tenant=acme").await;
    let mut bad_token = token.clone();
    let c = bad_token.pop().unwrap();
    bad_token.push(if c == 'A' { 'B' } else { 'A' });
    let (user_pass, secret) = ("hunter2userpass", "s3cr3tclientvalue");
    let query = format!(
        "?api_key={key}&access_token={token}&token={bad_token}&key={key}&client_secret={secret}&page=2"
    );
    let auth = format!("Bearer {key}");
    for (proxy, base) in s.proxies() {
        // Through the proxy: X-Original-URL / X-Forwarded-Uri carry the query.
        let a = s
            .get(&format!("{base}/api/orders{query}"), &[("authorization", &auth)])
            .await;
        assert_eq!(a.status, StatusCode::OK, "{proxy}: {}", a.body);
        let a = s
            .get(
                &format!("{base}/api/orders{query}"),
                &[("authorization", &format!("Bearer {bad_token}"))],
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{proxy}");
    }
    // Straight to latchkey, as a proxy that forwards user information would.
    let a = s
        .get(
            &format!("{}/auth/nginx", s.latchkey_url),
            &[
                ("authorization", &format!("Bearer {token}")),
                (
                    "x-original-url",
                    &format!("https://alice:{user_pass}@app.example/x{query}"),
                ),
                ("x-original-method", "GET"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = s
        .get(
            &format!("{}/auth/forward", s.latchkey_url),
            &[
                ("x-api-key", &key),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", &format!("bob:{user_pass}@app.example")),
                ("x-forwarded-uri", &format!("/x{query}")),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // /token with the key in the body and as Basic.
    let resp = s
        .http
        .post(format!("{}/token", s.latchkey_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_secret={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Give the writer a moment, then read everything latchkey logged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = s.latchkey.log_text();
    let decisions = log.lines().filter(|l| l.contains("auth decision")).count();
    assert!(
        decisions >= 6,
        "debug logging is on and logs the URLs ({decisions} decisions):\n{log}"
    );
    let sa_token = std::fs::read_to_string(latchkey_kubeconfig()).unwrap();
    let sa_token = sa_token
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|t| t.trim().trim_matches('"').to_owned())
        .expect("the ServiceAccount token in latchkey's kubeconfig");
    let secrets = [
        ("the API key", key.as_str()),
        ("the API key's secret part", &key[16..]),
        ("the token", token.as_str()),
        ("the token's signature", token.rsplit('.').next().unwrap()),
        ("a tampered token", bad_token.as_str()),
        ("a URL password", user_pass),
        ("a client_secret", secret),
        ("latchkey's ServiceAccount token", sa_token.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 12, "{what} is long enough to grep for");
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("{what} is in latchkey's debug log: {line}");
        }
    }
    assert!(log.contains("[REDACTED]"), "the URLs were logged, redacted");
    assert!(log.contains("page=2"), "the rest of the URL is kept");
    println!(
        "latchkey's debug log: {} lines, {decisions} auth decisions, {} redactions, no credential",
        log.lines().count(),
        log.matches("[REDACTED").count()
    );
}

/// Issue 15's data restriction through real nginx and Caddy: a `data-entry`
/// token for tenant acme reads `/calendar-events/acme/…`, is refused
/// globex's and every traversal spelling that could reach it, publishes to
/// `/topics/acme-events` only; an `admin` token may write; an API key
/// passes a `resource=path` route on its scopes alone; a client's own
/// `X-Original-URL` / `X-Forwarded-Uri` changes nothing.
#[tokio::test]
async fn tokens_reach_only_their_tenants_resources_through_nginx_and_caddy() {
    let s = Stack::start("proxy-perms").await;
    apply(&token_policy_manifest(
        &s.ns.name,
        "login",
        "  audiences: [calendar]\n  \
         allowedScopes: [calendar-events:read, calendar-events:write, collaboration:publish, collaboration:subscribe]\n  \
         customClaims: [{name: tenant, required: true}]\n  \
         roles:\n    data-entry:\n    - scopes: [calendar-events:read]\n      resources: [\"/calendar-events/{tenant}/\"]\n    \
         - scopes: [collaboration:publish, collaboration:subscribe]\n      resources: [\"/topics/{tenant}-events\"]\n    \
         admin:\n    - scopes: [calendar-events:read, calendar-events:write]\n      resources: [\"/calendar-events/{tenant}/\"]\n",
    ));
    let login = s
        .key(
            "login-handler",
            "  scopes: [calendar-events:read, calendar-events:write, collaboration:publish, collaboration:subscribe]\n  \
             tokenPolicyRef: {name: login}\n",
        )
        .await;
    let reader_key = s.key("reader", "  scopes: [calendar-events:read]\n").await;
    let data_entry = mint(
        &s,
        &login,
        "grant_type=client_credentials&role=data-entry&claim.tenant=acme",
    )
    .await;
    let admin = mint(
        &s,
        &login,
        "grant_type=client_credentials&role=admin&claim.tenant=acme",
    )
    .await;
    let bearer = |t: &str| format!("Bearer {t}");
    let (de, ad, key) = (bearer(&data_entry), bearer(&admin), bearer(&reader_key));

    for (proxy, base) in s.proxies() {
        let at = |what: &str| format!("{proxy}: {what}\n{}", s.latchkey.log_text());
        // Allowed: the tenant's own calendar, with the identity of the token.
        let (status, text) = raw_request(
            base,
            "GET",
            "/calendar-events/acme/1?x=1",
            &[("Authorization", &de)],
        )
        .await;
        assert_eq!(status, 200, "{}", at(&text));
        assert!(
            text.contains("\"path\": \"/calendar-events/acme/1?x=1\""),
            "{}",
            at(&text)
        );
        assert!(text.contains("data-entry"), "{}", at(&text));
        // Refused: the other tenant, however spelt; never the upstream.
        for target in TRAVERSALS {
            let (status, text) = raw_request(base, "GET", target, &[("Authorization", &de)]).await;
            assert!(
                !text.contains("header_list"),
                "{}",
                at(&format!("{target} reached the upstream: {text}"))
            );
            assert_eq!(status, traversal_status(target), "{}", at(target));
        }
        // The query never widens: the path is still acme's.
        let (status, text) = raw_request(
            base,
            "GET",
            "/calendar-events/acme/1?/../../globex/1",
            &[("Authorization", &de)],
        )
        .await;
        assert_eq!(status, 200, "{}", at(&text));
        assert!(
            text.contains("\"path\": \"/calendar-events/acme/1?/../../globex/1\""),
            "{}",
            at(&text)
        );
        // Writing needs the admin role.
        let (status, _) =
            raw_request(base, "POST", "/calendar-events/acme/1", &[("Authorization", &de)]).await;
        assert_eq!(status, 403, "{}", at("data-entry wrote"));
        let (status, text) =
            raw_request(base, "POST", "/calendar-events/acme/1", &[("Authorization", &ad)]).await;
        assert_eq!(status, 200, "{}", at(&text));
        let (status, _) = raw_request(
            base,
            "POST",
            "/calendar-events/globex/1",
            &[("Authorization", &ad)],
        )
        .await;
        assert_eq!(status, 403, "{}", at("admin wrote globex"));
        // Topics: exactly acme-events and below, never a longer name.
        for (target, want) in [
            ("/topics/acme-events", 200),
            ("/topics/acme-events/x", 200),
            ("/topics/acme-eventsX", 403),
            ("/topics/globex-events", 403),
            ("/topics/acme-events/../globex-events", 400),
        ] {
            let (status, _) = raw_request(base, "POST", target, &[("Authorization", &de)]).await;
            assert_eq!(status, want, "{}", at(&format!("publish {target}")));
        }
        // The admin role has no topic permission.
        let (status, _) = raw_request(base, "POST", "/topics/acme-events", &[("Authorization", &ad)]).await;
        assert_eq!(status, 403, "{}", at("admin published"));
        // An API key has no resources: its scopes alone, any tenant.
        let (status, text) = raw_request(
            base,
            "GET",
            "/calendar-events/globex/1",
            &[("Authorization", &key)],
        )
        .await;
        assert_eq!(status, 200, "{}", at(&text));
        let (status, _) = raw_request(
            base,
            "POST",
            "/calendar-events/globex/1",
            &[("Authorization", &key)],
        )
        .await;
        assert_eq!(status, 403, "{}", at("the reader key wrote"));
        // A client's own original-URL headers are overwritten by the proxy.
        let forged = [
            ("Authorization", de.as_str()),
            ("X-Original-URL", "http://app.example/calendar-events/acme/1"),
            ("X-Forwarded-Uri", "/calendar-events/acme/1"),
        ];
        let (status, text) = raw_request(base, "GET", "/calendar-events/globex/1", &forged).await;
        assert_eq!(status, 403, "{}", at(&text));
    }
    // The 403 says what is missing, never the token's content (Caddy hands
    // latchkey's answer on; nginx keeps WWW-Authenticate for 401 only).
    let (_, text) = raw_request(
        &s.caddy,
        "GET",
        "/calendar-events/globex/1",
        &[("Authorization", &de)],
    )
    .await;
    let challenge = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_default();
    assert!(
        challenge.contains("scope=\"calendar-events:read\"")
            && challenge.contains("no permission that holds the required scopes covers the request's path")
            && !challenge.contains("acme"),
        "{challenge}"
    );
    let (status, text) = raw_request(
        &s.caddy,
        "GET",
        "/calendar-events/acme/%2e%2e/globex/1",
        &[("Authorization", &de)],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("percent-encodes an unreserved character"), "{text}");
}
