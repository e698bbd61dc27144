//! One metering path for an API key and the tokens it mints, against the
//! local control plane: a `latchkey run` process serves a rate-limited
//! ApiKey that names a TokenPolicy. Its tokens and `/token` take from the
//! key's bucket (429 after the burst), a token's allows are `no-store`, and
//! `status.lastUsedAt` moves when a token is used or issued. Also the
//! `namespace=`/`issuer=` route requirements and `X-Auth-Namespace`.

mod common;

use common::*;
use kube::Api;
use latchkey::conditions;
use latchkey::crd::{ApiKey, TokenPolicy};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// TokenPolicy `login` in `ns`, Ready; returns its issuer.
async fn login_policy_issuer(ns: &str) -> String {
    apply(&token_policy_manifest(
        ns,
        "login",
        "  audiences: [orders]\n  allowedScopes: [\"orders:read\"]\n",
    ));
    let policies: Api<TokenPolicy> = Api::namespaced(client().await, ns);
    eventually(WAIT, "TokenPolicy login Ready", || async {
        let p = policies.get("login").await.ok()?;
        let status = p.status.as_ref()?;
        conditions::is_true(&status.conditions, conditions::READY).then(|| status.issuer.clone())?
    })
    .await
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        header(&self.headers, name)
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

async fn token_request(server: &str, path: &str, key: &str) -> Answer {
    answer(post_token(&format!("{server}{path}"), key, "grant_type=client_credentials").await).await
}

async fn auth(server: &str, credential: &str, query: &str) -> Answer {
    let resp = reqwest::Client::new()
        .get(format!("{server}/auth/nginx{query}"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    answer(resp).await
}

/// Sends `f` up to 6 times back to back and returns the answers up to and
/// including the first 429 (at `burst: 1` the second request at the latest).
async fn until_limited<F, Fut>(mut f: F) -> Vec<Answer>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let mut answers = Vec::new();
    for _ in 0..6 {
        let a = f().await;
        let limited = a.status == StatusCode::TOO_MANY_REQUESTS;
        answers.push(a);
        if limited {
            break;
        }
    }
    answers
}

fn assert_limited(what: &str, answers: &[Answer]) {
    let last = answers.last().unwrap();
    assert_eq!(
        last.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: no 429 in {} requests at requestsPerSecond 1, burst 1 ({:?})",
        answers.len(),
        answers.iter().map(|a| a.status.as_u16()).collect::<Vec<_>>()
    );
    let retry: u64 = last.header("retry-after").parse().unwrap_or(0);
    assert!(retry >= 1, "{what}: Retry-After {:?}", last.header("retry-after"));
    assert_eq!(last.header("x-ratelimit-limit"), "1", "{what}");
    assert_eq!(last.header("cache-control"), "no-store", "{what}");
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.json);
    }
}

async fn last_used(api_keys: &Api<ApiKey>, name: &str) -> Option<i64> {
    let ak = api_keys.get(name).await.ok()?;
    Some(ak.status?.last_used_at?.0.as_second())
}

/// Refills a bucket of 1 request per second.
async fn refill() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_rate_limited_keys_tokens_and_token_requests_share_its_bucket_and_its_last_use() {
    let ns = TestNamespace::new("metering").await;
    let (latchkey, server) = LatchkeyProcess::start_run(&ns.name, &["--last-used-flush-seconds", "1"]);
    let issuer = login_policy_issuer(&ns.name).await;
    let key = served_key(
        &ns.name,
        "limited",
        "  scopes: [\"orders:read\"]\n  tokenPolicyRef: {name: login}\n  rateLimit: {requestsPerSecond: 1, burst: 1}\n",
        &server,
    )
    .await;
    let token = eventually(WAIT, "a token from /token", || async {
        refill().await;
        let a = token_request(&server, "/token", &key).await;
        a.json["access_token"].as_str().map(str::to_owned)
    })
    .await;

    // /token and <issuer>/token take from the key's bucket.
    let issuer_path = issuer
        .strip_prefix(&server)
        .expect("default issuer under the server");
    let token_path = format!("{issuer_path}/token");
    for path in ["/token", token_path.as_str()] {
        refill().await;
        let answers = until_limited(|| token_request(&server, path, &key)).await;
        assert_limited(path, &answers);
        assert_eq!(answers.last().unwrap().json["error"], "rate_limited", "{path}");
    }

    // The token on the auth routes: allowed once per refill, never cacheable,
    // and from the key's namespace.
    refill().await;
    let answers = until_limited(|| auth(&server, &token, "?scope=orders:read")).await;
    assert_limited("the token on /auth/nginx", &answers);
    let allow = &answers[0];
    assert_eq!(
        allow.header("cache-control"),
        "no-store",
        "a rate-limited key's token allow"
    );
    assert_eq!(allow.header("x-auth-namespace"), ns.name);
    // The key itself shares the bucket with its token.
    refill().await;
    assert_eq!(auth(&server, &token, "").await.status, StatusCode::OK);
    assert_eq!(
        auth(&server, &key, "").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // lastUsedAt moves on a token use, and on /token, not only on key uses.
    let api_keys: Api<ApiKey> = Api::namespaced(client().await, &ns.name);
    eventually(WAIT, "lastUsedAt written", || last_used(&api_keys, "limited")).await;
    for what in ["token use", "token request"] {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let at = k8s_openapi::jiff::Timestamp::now().as_second();
        let a = match what {
            "token use" => auth(&server, &token, "").await,
            _ => token_request(&server, "/token", &key).await,
        };
        assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.json);
        eventually(
            Duration::from_secs(20),
            &format!("lastUsedAt moves on a {what}"),
            || async { last_used(&api_keys, "limited").await.filter(|t| *t >= at) },
        )
        .await;
    }
    assert!(!latchkey.log_text().contains(&key), "the key is not logged");
}

#[tokio::test]
async fn routes_can_require_the_credentials_namespace_and_issuer() {
    let ns = TestNamespace::new("requires").await;
    let (_latchkey, server) = LatchkeyProcess::start_run(&ns.name, &[]);
    let issuer = login_policy_issuer(&ns.name).await;
    let key = served_key(
        &ns.name,
        "svc",
        "  scopes: [\"orders:read\"]\n  tokenPolicyRef: {name: login}\n",
        &server,
    )
    .await;
    let token = eventually(WAIT, "a token from /token", || async {
        let a = token_request(&server, "/token", &key).await;
        a.json["access_token"].as_str().map(str::to_owned)
    })
    .await;
    let iss: String = form_urlencoded::byte_serialize(issuer.as_bytes()).collect();
    let other_ns = format!("{}-other", ns.name);
    let own = format!("?namespace={}", ns.name);
    let either = format!("?namespace={other_ns}&namespace={}", ns.name);
    let neither = format!("?namespace={other_ns}&namespace=kube-system");
    let by_issuer = format!("?issuer={iss}");
    let both = format!("?issuer={iss}&namespace={}&scope=orders:read", ns.name);
    let other_issuer = format!("?issuer={iss}x");
    for (credential, what) in [(&key, "key"), (&token, "token")] {
        for query in ["", &own, &either] {
            let a = auth(&server, credential, query).await;
            assert_eq!(a.status, StatusCode::OK, "{what} {query}");
            assert_eq!(a.header("x-auth-namespace"), ns.name, "{what} {query}");
        }
        let a = auth(&server, credential, &neither).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what} {neither}");
        let challenge = a.header("www-authenticate");
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains("namespace"),
            "{what}: {challenge}"
        );
        assert!(
            !challenge.contains(&other_ns),
            "the route's list is not disclosed: {challenge}"
        );
        let a = auth(&server, credential, &other_issuer).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what} {other_issuer}");
        assert!(a.header("www-authenticate").contains("issuer"), "{what}");
    }
    // An issuer requirement: only the token passes; the key has no issuer.
    assert_eq!(auth(&server, &token, &by_issuer).await.status, StatusCode::OK);
    assert_eq!(auth(&server, &token, &both).await.status, StatusCode::OK);
    let a = auth(&server, &key, &by_issuer).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "an API key on an issuer route"
    );
}
