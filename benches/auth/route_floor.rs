//! `route-floor`: what the API-key route can reach against `/livez` with
//! any decision, on latchkey's own HTTP stack. One server in this process,
//! built as `latchkey serve` builds its own (the router, the guard layer,
//! `listener::serve` with the default limits, a runtime of its own with a
//! worker per core), over an index of one synthetic key, answers four
//! targets to wrk (64 connections, interleaved rounds):
//! - `/livez`, the ceiling;
//! - `/livez` asked with the route's request (its query and key header),
//!   for what reading the longer request costs;
//! - `/answer`: the allow the route sends for that key (its eight
//!   identity headers as the route writes them for this key, decided once
//!   at start and kept as a map of static names and values, cloned per
//!   request), to a request carrying the same key and query: everything the
//!   route does except deciding and copying the identity;
//! - `/auth/nginx?scope=orders:read`, the route itself.
//!
//! `/answer` / `/livez` is the floor: no decision, however cheap, brings the
//! route above it on this stack. No cluster is needed.

use crate::harness::{Rounds, repeat, wrk_cpu};
use latchkey::crd::{ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord};
use latchkey::key::ApiKeyValue;
use latchkey::server::decision::{Decision, Requirement};
use latchkey::server::index::{Index, Rebuild};
use latchkey::server::{AppState, Limits, Options, decide, guard, router, throttle, tokens};
use std::sync::Arc;
use std::time::Duration;

fn one_key_index(key: &ApiKeyValue) -> Arc<Index> {
    let mut ak = ApiKey::new(
        "billing-service",
        ApiKeySpec {
            scopes: vec!["orders:read".into(), "invoices:write".into()],
            ..Default::default()
        },
    );
    ak.metadata.namespace = Some("team-payments".into());
    ak.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    ak.metadata.resource_version = Some("1".into());
    ak.status = Some(ApiKeyStatus {
        current_key: Some(KeyRecord {
            id: key.key_id().into(),
            sha256: key.sha256_hex(),
            issued_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            valid_until: None,
        }),
        ..Default::default()
    });
    let index = Arc::new(Index::default());
    let mut rebuild = Rebuild::default();
    rebuild.apply(&ak, None);
    index.replace(rebuild);
    index
}

/// Starts the server on its own runtime; returns its port.
fn serve(key: &ApiKeyValue) -> u16 {
    let index = one_key_index(key);
    let limits = Limits::default();
    let state = Arc::new(AppState {
        index,
        tokens: Arc::new(tokens::Tokens::with_cache(limits.token_cache)),
        clock: Arc::new(latchkey::clock::SystemClock),
        options: Options {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: None,
            namespaces: latchkey::namespaces::WatchNamespaces::All,
            api_key_header: None,
            decision_cache_seconds: 1,
            last_used_flush: Duration::from_secs(60),
            issuer_base_url: "http://127.0.0.1".into(),
            claim_headers: Vec::new(),
            require_grants: false,
            limits,
            tls: None,
            grpc_tls: None,
            rate_limit_redis: None,
        },
        metrics: latchkey::server::metrics::Metrics::with(|_| {}),
    });
    // The route's own answer for this key, decided once.
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {}", key.expose()).parse().unwrap(),
    );
    let allow = decide(
        &state,
        &headers,
        &Requirement::from_query(Some("scope=orders:read")),
    );
    assert!(matches!(allow, Decision::Allow { .. }), "{allow:?}");
    let guard = Arc::new(guard::Guard {
        state: state.clone(),
        throttle: throttle::Throttle::new(limits.throttle),
        max_body_bytes: limits.max_body_bytes,
        body_timeout: limits.hygiene.header_read_timeout,
    });
    // Its headers, names and values static: a clone per request copies
    // them and counts no reference (the cheapest map that carries them).
    let answer = allow.into_response_with(&[]);
    let mut template = axum::http::HeaderMap::with_capacity(answer.headers().len());
    for (name, value) in answer.headers() {
        let value: &'static str = String::leak(value.to_str().unwrap().to_owned());
        template.insert(name.clone(), axum::http::HeaderValue::from_static(value));
    }
    let app = router(state.clone())
        .route(
            "/answer",
            axum::routing::get(move || {
                let mut response = axum::response::Response::new(axum::body::Body::empty());
                *response.headers_mut() = template.clone();
                async move { response }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let plain = |tcp: tokio::net::TcpStream, _| async move { Some(tcp) };
            latchkey::listener::serve(
                listener,
                latchkey::listener::Protocol::Http1,
                limits.hygiene,
                Default::default(),
                plain,
                app,
                std::future::pending::<()>(),
                "http",
            )
            .await;
        });
    });
    port
}

pub fn route_floor(seconds: u32) {
    let key = ApiKeyValue::generate();
    let port = serve(&key);
    let base = format!("http://127.0.0.1:{port}");
    let targets: [(&str, String, Option<&str>); 4] = [
        ("/livez (ceiling)", format!("{base}/livez"), None),
        (
            "/livez, the route's request",
            format!("{base}/livez?scope=orders:read"),
            Some(key.expose()),
        ),
        (
            "/answer (the allow, no decision)",
            format!("{base}/answer?scope=orders:read"),
            Some(key.expose()),
        ),
        (
            "/auth/nginx, valid key",
            format!("{base}/auth/nginx?scope=orders:read"),
            Some(key.expose()),
        ),
    ];
    // Wait for the listener (its runtime starts beside this thread).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::harness::http_status_with(port, "/answer?scope=orders:read", Some(key.expose())) != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the in-process server never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<&str> = targets.iter().map(|(name, ..)| *name).collect();
    let me = std::process::id();
    let rounds = Rounds::run(&names, |i| {
        let (name, url, key) = &targets[i];
        let r = wrk_cpu(url, 64, seconds, *key, &[me]);
        assert_eq!(r.non_2xx, 0, "{name}: non-2xx answers during the benchmark");
        r
    });
    rounds.print_cpu(&format!(
        "\nroute-floor: one in-process server (latchkey's router, guard and listener), wrk -t1 -c64 -d{seconds}s, median of {} interleaved rounds:",
        repeat()
    ));
    rounds.print_ratio("/livez with the route's request / /livez, req/s: ", 1, 0);
    rounds.print_ratio("the floor, /answer / /livez, req/s:              ", 2, 0);
    rounds.print_ratio("the route, /auth/nginx / /livez, req/s:          ", 3, 0);
    rounds.print_ratio("the route against its floor, req/s:              ", 3, 2);
    rounds.print_cpu_ratio("server CPU per request, /livez / the request:    ", 1, 0);
    rounds.print_cpu_ratio("server CPU per request, /livez / /answer:        ", 2, 0);
    rounds.print_cpu_ratio("server CPU per request, /livez / /auth/nginx:    ", 3, 0);
}
