//! `tokens`: JWT signatures and verifications per second on one core, then
//! `/token` mints (plain and delegated) and `/auth/nginx` with first-seen vs
//! repeated JWTs, and a user's role token on a `resource=path` route with
//! revoked sessions in the policy, over HTTP against one `latchkey serve`
//! (see main.rs).

use crate::harness::{Bench, Rounds, claims_of, env_or, http_status_with, repeat, wrk_script_cpu};
use kube::Api;
use kube::api::PostParams;
use latchkey::crd::{ApiKey, SigningAlgorithm, TokenPolicy};
use latchkey::token::{claims, keys};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Signatures and verifications per second on one core, per algorithm.
fn crypto_per_core() {
    println!("\nJWT crypto on one core (in process, 1 s each):");
    println!("{:<8} {:>12} {:>14}", "alg", "signs/s", "verifies/s");
    for alg in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let key = keys::generate(alg).unwrap();
        let enc = keys::encoding_key(&key.kid, alg, key.pem.as_bytes()).unwrap();
        let jwk = keys::public_jwk(&key.kid, alg, key.pem.as_bytes()).unwrap();
        let verifying = claims::VerifyingKey {
            algorithm: keys::jwt_algorithm(alg),
            key: keys::decoding_key(&key.kid, alg, &jwk).unwrap(),
            issuer: "http://127.0.0.1/issuers/bench/p".into(),
            audiences: vec!["orders".into()],
            max_ttl_seconds: 3600,
        };
        let now = 1_800_000_000;
        let claims = claims::AccessClaims {
            iss: verifying.issuer.clone(),
            sub: "bench".into(),
            aud: vec!["orders".into()],
            exp: now + 900,
            iat: now,
            nbf: None,
            jti: "j".repeat(22),
            client_id: "AbCdEfGhIjKl".into(),
            scope: "orders:read".into(),
            role: None,
            act: None,
            sid: None,
            auth_time: None,
            authorization_details: Vec::new(),
            idp: None,
            custom: Default::default(),
        };
        let header = claims::header(verifying.algorithm, &key.kid);
        let (mut signs, start) = (0u64, Instant::now());
        let mut token = String::new();
        while start.elapsed() < Duration::from_secs(1) {
            token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
            signs += 1;
        }
        let sign_rate = signs as f64 / start.elapsed().as_secs_f64();
        let (mut verifies, start) = (0u64, Instant::now());
        while start.elapsed() < Duration::from_secs(1) {
            claims::verify(&token, |_| Some(&verifying), now).unwrap();
            verifies += 1;
        }
        let verify_rate = verifies as f64 / start.elapsed().as_secs_f64();
        println!("{:<8} {sign_rate:>12.0} {verify_rate:>14.0}", alg.as_str());
    }
}

pub async fn tokens() {
    crypto_per_core();

    let bench = Bench::new("bench-tokens").await;
    let (_controller, _) = bench.latchkey("run", &bench.ns);
    let policy: TokenPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "bench", "namespace": bench.ns},
        "spec": {"audiences": ["orders"], "allowedScopes": ["orders:read"], "tokenTTL": "1h",
                 "sessionMaxAge": "8h", "delegation": {"subjectPattern": "^user-[0-9]+$"},
                 "customClaims": [{"name": "tenant"}],
                 "roles": {"data-entry": [{"scopes": ["orders:read"], "resources": ["/orders/{tenant}/"]}]}},
    }))
    .unwrap();
    let policies: Api<TokenPolicy> = Api::namespaced(bench.client.clone(), &bench.ns);
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let ak: ApiKey = serde_json::from_value(serde_json::json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
        "metadata": {"name": "bench", "namespace": bench.ns},
        "spec": {"scopes": ["orders:read"], "tokenPolicyRef": {"name": "bench"}},
    }))
    .unwrap();
    bench.api_keys.create(&PostParams::default(), &ak).await.unwrap();
    let key = bench.secret_key("bench").await;
    let (server, lk) = bench.latchkey("serve", &bench.ns);
    let server_pid = server.pid();
    // One token from the server, to learn the issuer and kid.
    let token_url = format!("http://127.0.0.1:{lk}/token");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("bench:{key}"))
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let minted = loop {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: {basic}")])
            .args(["-d", "grant_type=client_credentials", &token_url])
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(t) = v["access_token"].as_str() {
            break t.to_owned();
        }
        assert!(Instant::now() < deadline, "/token never answered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let auth_url = format!("http://127.0.0.1:{lk}/auth/nginx?scope=orders:read");
    assert_eq!(
        http_status_with(lk, "/auth/nginx?scope=orders:read", Some(&minted)),
        Some(200)
    );
    // A user's token (issue 15's scenario): delegated, a role whose
    // permission covers /orders/acme/, checked with resource=path against
    // nginx's X-Original-URL, after REVOKED other sessions were logged out
    // (so that every request checks a populated revocation set).
    let post = |path: &str, form: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: {basic}")])
            .args(["-d", form, &format!("http://127.0.0.1:{lk}{path}")])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let user_form =
        "grant_type=client_credentials&requested_subject=user-42&role=data-entry&claim.tenant=acme";
    let user_token = post("/token", user_form)["access_token"]
        .as_str()
        .expect("a user token")
        .to_owned();
    const REVOKED: usize = 100;
    for i in 0..REVOKED {
        let other = post(
            "/token",
            &format!(
                "grant_type=client_credentials&requested_subject=user-{}&role=data-entry&claim.tenant=acme",
                1000 + i
            ),
        );
        post(
            "/revoke",
            &format!("token={}", other["access_token"].as_str().expect("a token")),
        );
    }
    let path_url = format!("{auth_url}&resource=path");
    let path_lua = bench.dir.join("resource-path.lua");
    std::fs::write(
        &path_lua,
        "wrk.headers[\"X-Original-URL\"] = \"http://app.example/orders/acme/1\"\n",
    )
    .unwrap();
    let path_status = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {user_token}")])
            .args(["-H", &format!("X-Original-URL: http://app.example{path}")])
            .arg(&path_url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        path_status("/orders/acme/1"),
        "200",
        "the user token on its own path"
    );
    assert_eq!(
        path_status("/orders/globex/1"),
        "403",
        "the user token on another tenant's path"
    );

    // Pre-sign distinct tokens with the policy's own key (from its Secret),
    // so that each first-seen request carries a token the server never saw.
    let (enc, header) = bench.signing_key(&policies, "bench").await;
    let mut template = claims_of(&minted);
    let first_seen_tokens: usize = env_or("BENCH_FIRST_SEEN_TOKENS", 200_000);
    let tokens_file = bench.dir.join("tokens.txt");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tokens_file).unwrap());
        for i in 0..first_seen_tokens {
            template.jti = format!("bench{i:017}");
            writeln!(f, "{}", jsonwebtoken::encode(&header, &template, &enc).unwrap()).unwrap();
        }
    }
    let first_seen_lua = bench.dir.join("first-seen.lua");
    std::fs::write(
        &first_seen_lua,
        format!(
            "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i + 1\n  local t = tokens[((i - 1) % #tokens) + 1]\n  \
             return wrk.format(nil, nil, {{[\"Authorization\"] = \"Bearer \" .. t}})\nend\n",
            tokens_file.display()
        ),
    )
    .unwrap();
    let mint_lua = bench.dir.join("mint.lua");
    std::fs::write(
        &mint_lua,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"grant_type=client_credentials\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{basic}\"\n"
        ),
    )
    .unwrap();
    // A delegated mint: the pattern matched, act, a new session.
    let delegated_lua = bench.dir.join("mint-delegated.lua");
    std::fs::write(
        &delegated_lua,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"grant_type=client_credentials&requested_subject=user-42\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{basic}\"\n"
        ),
    )
    .unwrap();

    let repeat = repeat();
    let seconds = 3;
    let connections = 64;
    type Target<'a> = (&'a str, String, Option<&'a str>, Option<&'a Path>);
    let targets: [Target; 7] = [
        (
            "latchkey /livez (ceiling)",
            format!("http://127.0.0.1:{lk}/livez"),
            None,
            None,
        ),
        ("/auth/nginx, API key", auth_url.clone(), Some(&key), None),
        (
            "/auth/nginx, JWT repeated (cached)",
            auth_url.clone(),
            Some(&minted),
            None,
        ),
        (
            "/auth/nginx, JWT first seen",
            auth_url.clone(),
            None,
            Some(&first_seen_lua),
        ),
        (
            "POST /token (mint ES256)",
            token_url.clone(),
            None,
            Some(&mint_lua),
        ),
        (
            "POST /token (delegated mint ES256)",
            token_url.clone(),
            None,
            Some(&delegated_lua),
        ),
        (
            "/auth/nginx, user token repeated, resource=path",
            path_url.clone(),
            Some(&user_token),
            Some(&path_lua),
        ),
    ];
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let rounds = Rounds::run(&names, |i| {
        let (name, url, k, script) = &targets[i];
        let r = wrk_script_cpu(url, connections, seconds, *k, *script, &[server_pid]);
        assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
        if i == 3 {
            assert!(
                r.requests as usize <= first_seen_tokens,
                "first-seen ran out of distinct tokens ({} requests, {first_seen_tokens} tokens): \
                 raise BENCH_FIRST_SEEN_TOKENS",
                r.requests
            );
        }
        r
    });
    rounds.print_cpu(&format!(
        "\nwrk -t1 -c{connections} -d{seconds}s --latency, median of {repeat} interleaved runs:"
    ));
    rounds.print_ratio("ratio API key / ceiling:            ", 1, 0);
    rounds.print_ratio("ratio JWT repeated / ceiling:       ", 2, 0);
    rounds.print_ratio("ratio JWT first seen / ceiling:     ", 3, 0);
    rounds.print_ratio("ratio delegated mint / mint:        ", 5, 4);
    rounds.print_ratio(
        &format!("ratio user token, resource=path, {REVOKED} revoked sessions / ceiling (goal ≥ 0.85): "),
        6,
        0,
    );
    // The rate depends on what else the two cores run (wrk among them);
    // the server's CPU per request much less.
    rounds.print_cpu_ratio("server CPU per request, /livez / API key:          ", 1, 0);
    rounds.print_cpu_ratio("server CPU per request, /livez / JWT repeated:     ", 2, 0);
    rounds.print_cpu_ratio("server CPU per request, /livez / user token, path: ", 6, 0);
    bench.cleanup().await;
}
