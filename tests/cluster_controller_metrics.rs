//! The controller's observability against the local control plane:
//!
//! - two `latchkey controller --http-addr` on one Lease: the leader's
//!   `/metrics` during and after a burst of 20 ApiKeys (and a TokenPolicy, a
//!   requested rotation) add up (reconciles by kind and result, the duration
//!   histogram's count, failures by error kind, keys delivered by reason,
//!   signing keys), `latchkey_leader 1`; the standby says `latchkey_leader 0`,
//!   reconciles nothing and is ready (`/readyz` 200); the leader SIGKILLed
//!   (by PID), the standby takes over: `latchkey_leader 1`, it re-reconciles
//!   every ApiKey and delivers only the new one's first key (no key the old
//!   leader delivered is delivered again, no signing key generated again);
//!   the rotated key's grace end is in `latchkey_controller_keys_in_grace`
//!   and `..._next_grace_end_seconds` of the leader, not of the standby, and
//!   of the new leader after the takeover;
//! - `latchkey run` serves the controller's families on the auth server's
//!   `/metrics`, and the chart's Grafana dashboard names only metric
//!   families such a scrape shows.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Short Lease timings, so that the takeover is quick.
const LEASE_ARGS: [&str; 4] = ["--lease-duration-seconds", "4", "--lease-grace-seconds", "2"];
const BURST: usize = 20;

/// One sample line of an OpenMetrics text: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            (name.to_owned(), labels, value.parse().expect("a numeric value"))
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// A `latchkey controller --http-addr` on `lease`, once its probes listen.
struct Controller {
    process: LatchkeyProcess,
    base: String,
}

impl Controller {
    fn start(ns: &str, lease: &str, identity: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut lease_args = vec!["--lease-identity", identity];
        lease_args.extend(LEASE_ARGS);
        let mut process =
            LatchkeyProcess::start_elected(ns, &["controller", "--http-addr", &addr], lease, &lease_args);
        process.wait_logged("controller probes listening", &addr);
        Self {
            process,
            base: format!("http://{addr}"),
        }
    }

    async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.base)).await
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.base))
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    }

    /// Waits until `/metrics` says `latchkey_leader <value>` and `/readyz` is 200.
    async fn wait_leader(&self, value: f64, what: &str) -> String {
        eventually(Duration::from_secs(90), what, || async {
            let text = self.metrics().await;
            (sum(&text, "latchkey_leader", &[]) == value && self.ready().await).then_some(text)
        })
        .await
    }
}

fn api_keys_manifest(ns: &str, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| api_key_manifest(ns, &format!("{prefix}-{i}"), "  scopes: [a]\n"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

// Two workers: the scraper runs while the test thread blocks in kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_metrics_add_up_through_a_burst_and_follow_the_lease() {
    let ns = TestNamespace::new("ctl-metrics").await;
    let ns = ns.name.as_str();
    let lease = format!("{LEASE_PREFIX}metrics-{ns}");
    let mut a = Controller::start(ns, &lease, "metrics-a");
    a.wait_leader(1.0, "the first controller leads and is ready")
        .await;
    let b = Controller::start(ns, &lease, "metrics-b");
    let standby = b.wait_leader(0.0, "the second controller stands by, ready").await;
    assert_eq!(
        sum(&standby, "latchkey_controller_reconciles_total", &[]),
        0.0,
        "{standby}"
    );

    // The burst: 20 ApiKeys and a TokenPolicy at once, scraped meanwhile
    // (every 20 ms, until the 20 first keys are counted, 60 s at most).
    let scraper = {
        let base = a.base.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(resp) = reqwest::get(format!("{base}/metrics")).await
                    && let Ok(t) = resp.text().await
                {
                    let delivered = sum(&t, "latchkey_controller_keys_delivered_total", &[]);
                    seen.push((
                        sum(&t, "latchkey_controller_reconciles_total", &[]),
                        sum(&t, "latchkey_controller_reconciles_in_flight", &[]),
                        delivered,
                    ));
                    if delivered >= BURST as f64 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    apply(&api_keys_manifest(ns, "burst", BURST));
    apply(&token_policy_manifest(ns, "policy", "  audiences: [api]\n"));
    let during = scraper.await.unwrap();
    let partial = during
        .iter()
        .filter(|(_, _, d)| *d > 0.0 && *d < BURST as f64)
        .count();
    println!(
        "during the burst: {} scrapes, {partial} with 1-19 keys delivered, at most {} reconciles in flight",
        during.len(),
        during.iter().map(|(_, f, _)| *f).fold(0.0, f64::max),
    );
    for pair in during.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 && pair[1].2 >= pair[0].2,
            "a counter went backwards between scrapes: {pair:?}"
        );
    }
    assert_eq!(during.last().map(|s| s.2), Some(BURST as f64), "{during:?}");
    for what in ["apikeys", "tokenpolicies"] {
        kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            what,
            "--all",
            "-n",
            ns,
            "--timeout=120s",
        ]);
    }
    kubectl_ok(&[
        "annotate",
        "apikey",
        "burst-0",
        "-n",
        ns,
        "latchkey.dev/rotate=metrics-1",
    ]);

    let text = eventually(
        Duration::from_secs(60),
        "the leader's metrics count 20 first keys and the requested rotation",
        || async {
            let t = a.metrics().await;
            let ok = sum(
                &t,
                "latchkey_controller_keys_delivered_total",
                &[("reason", "first")],
            ) == BURST as f64
                && sum(
                    &t,
                    "latchkey_controller_keys_delivered_total",
                    &[("reason", "requested")],
                ) == 1.0
                && sum(&t, "latchkey_controller_reconciles_in_flight", &[]) == 0.0;
            ok.then_some(t)
        },
    )
    .await;
    let reconciles = |kind, result| {
        sum(
            &text,
            "latchkey_controller_reconciles_total",
            &[("kind", kind), ("result", result)],
        )
    };
    let (ok, failed) = (reconciles("ApiKey", "success"), reconciles("ApiKey", "error"));
    println!(
        "after: ApiKey reconciles {ok} ok / {failed} failed, TokenPolicy {} ok; histogram count {}, sum {:.3} s",
        reconciles("TokenPolicy", "success"),
        sum(
            &text,
            "latchkey_controller_reconcile_duration_seconds_count",
            &[("kind", "ApiKey")]
        ),
        sum(
            &text,
            "latchkey_controller_reconcile_duration_seconds_sum",
            &[("kind", "ApiKey")]
        ),
    );
    assert!(ok >= (BURST + 1) as f64, "{text}");
    assert_eq!(
        sum(
            &text,
            "latchkey_controller_reconcile_duration_seconds_count",
            &[("kind", "ApiKey")]
        ),
        ok + failed,
        "every reconcile is in the histogram:\n{text}"
    );
    assert!(
        sum(
            &text,
            "latchkey_controller_reconcile_duration_seconds_sum",
            &[("kind", "ApiKey")]
        ) > 0.0
    );
    // The +Inf bucket holds every sample.
    assert_eq!(
        sum(
            &text,
            "latchkey_controller_reconcile_duration_seconds_bucket",
            &[("kind", "ApiKey"), ("le", "+Inf")]
        ),
        ok + failed
    );
    for kind in ["ApiKey", "TokenPolicy"] {
        assert_eq!(
            sum(
                &text,
                "latchkey_controller_reconcile_errors_total",
                &[("kind", kind)]
            ),
            reconciles(kind, "error"),
            "failures by error kind add up to the failed reconciles of {kind}:\n{text}"
        );
    }
    assert!(reconciles("TokenPolicy", "success") >= 1.0, "{text}");
    assert!(sum(&text, "latchkey_controller_signing_keys_generated_total", &[]) >= 1.0);
    for reason in ["scheduled", "repair"] {
        assert_eq!(
            sum(
                &text,
                "latchkey_controller_keys_delivered_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    assert_eq!(sum(&text, "latchkey_leader", &[]), 1.0);
    assert!(!text.contains(ns), "no namespace (nor name) in a label:\n{text}");

    // The rotated key is in its grace period (1 h by default): the leader
    // counts it as ending within 1 h and says how long until it ends.
    let grace_end = previous_key_valid_until(ns, "burst-0");
    let text = grace_in_metrics(&a, grace_end, "the leader").await;
    assert!(!text.contains(ns), "no namespace (nor name) in a label:\n{text}");

    // The standby did nothing meanwhile and stays ready.
    let standby = b.metrics().await;
    assert_eq!(sum(&standby, "latchkey_leader", &[]), 0.0);
    assert_eq!(sum(&standby, "latchkey_controller_reconciles_total", &[]), 0.0);
    assert_eq!(
        sum(
            &standby,
            "latchkey_controller_keys_in_grace",
            &[("ends_within", "+Inf")]
        ),
        0.0,
        "a standby reports no key in grace:\n{standby}"
    );
    assert!(
        !standby
            .lines()
            .any(|l| l.starts_with("latchkey_controller_next_grace_end_seconds")),
        "{standby}"
    );
    assert!(b.ready().await);

    // The leader dies; the standby takes over and works.
    a.process.kill();
    b.wait_leader(1.0, "the standby takes the Lease after the leader's SIGKILL")
        .await;
    apply(&api_key_manifest(ns, "after-takeover", "  scopes: [a]\n"));
    let after = eventually(
        Duration::from_secs(60),
        "the new leader delivers a first key and has reconciled every ApiKey",
        || async {
            let t = b.metrics().await;
            let done = sum(
                &t,
                "latchkey_controller_keys_delivered_total",
                &[("reason", "first")],
            ) >= 1.0
                && sum(&t, "latchkey_controller_reconciles_total", &[("kind", "ApiKey")])
                    >= (BURST + 1) as f64
                && sum(&t, "latchkey_controller_reconciles_in_flight", &[]) == 0.0;
            done.then_some(t)
        },
    )
    .await;
    // It re-reconciles what the old leader settled without delivering any
    // of those keys again: one delivery in all, the new ApiKey's first.
    assert_eq!(
        sum(&after, "latchkey_controller_keys_delivered_total", &[]),
        1.0,
        "{after}"
    );
    assert_eq!(
        sum(&after, "latchkey_controller_signing_keys_generated_total", &[]),
        0.0
    );
    for kind in ["ApiKey", "TokenPolicy"] {
        assert_eq!(
            sum(
                &after,
                "latchkey_controller_reconcile_errors_total",
                &[("kind", kind)]
            ),
            sum(
                &after,
                "latchkey_controller_reconciles_total",
                &[("kind", kind), ("result", "error")]
            ),
        );
    }
    println!(
        "after the takeover: the new leader reconciled {} ApiKeys, {} TokenPolicies, delivered 1 key",
        sum(
            &after,
            "latchkey_controller_reconciles_total",
            &[("kind", "ApiKey")]
        ),
        sum(
            &after,
            "latchkey_controller_reconciles_total",
            &[("kind", "TokenPolicy")]
        ),
    );
    assert!(!after.contains(ns), "{after}");
    // The new leader reports the same key in grace, from its own list.
    grace_in_metrics(&b, grace_end, "the new leader").await;
}

/// `status.previousKeys[0].validUntil` of ApiKey `name`, once it is set.
fn previous_key_valid_until(ns: &str, name: &str) -> std::time::SystemTime {
    let out = kubectl_ok(&[
        "get",
        "apikey",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.previousKeys[0].validUntil}",
    ]);
    let at: k8s_openapi::jiff::Timestamp = out
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} has a previous key with a validUntil, not {out:?}: {e}"));
    std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.as_second()).unwrap())
}

/// Waits until `controller`'s `/metrics` counts one key in grace, ending
/// within 1 h, and `latchkey_controller_next_grace_end_seconds` is the time
/// left until `grace_end` (within the scrape's own duration, plus 1 s for
/// whole seconds); returns the scrape.
async fn grace_in_metrics(controller: &Controller, grace_end: std::time::SystemTime, who: &str) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("{who} counts the rotated key in grace"),
        || async {
            let before = std::time::SystemTime::now();
            let t = controller.metrics().await;
            let after = std::time::SystemTime::now();
            let within = |w| sum(&t, "latchkey_controller_keys_in_grace", &[("ends_within", w)]);
            if within("1h") != 1.0 {
                return None;
            }
            for w in ["24h", "7d", "+Inf"] {
                assert_eq!(within(w), 1.0, "{w} is cumulative:\n{t}");
            }
            let next = sum(&t, "latchkey_controller_next_grace_end_seconds", &[]);
            let left = |at: std::time::SystemTime| grace_end.duration_since(at).unwrap().as_secs_f64();
            println!(
                "{who}: 1 key in grace, next grace end in {next:.1} s (validUntil in {:.1} s)",
                left(after)
            );
            assert!(
                next >= left(after) - 1.0 && next <= left(before) + 1.0,
                "next grace end {next} s, expected {:.1}..{:.1} s:\n{t}",
                left(after),
                left(before)
            );
            Some(t)
        },
    )
    .await
}

/// The metric names a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("latchkey_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn run_serves_the_controllers_families_and_the_dashboard_names_only_exported_metrics() {
    let ns = TestNamespace::new("dashboard").await;
    let (_run, url) = LatchkeyProcess::start_run(&ns.name, &[]);
    let text = eventually(
        Duration::from_secs(60),
        "latchkey run leads its Lease",
        || async {
            let t = get_text(&format!("{url}/metrics")).await;
            (sum(&t, "latchkey_leader", &[]) == 1.0).then_some(t)
        },
    )
    .await;
    // Families (`# TYPE name type`) and the sample names they allow.
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                exported.insert(format!("{family}{s}"));
            }
        }
    }
    for family in [
        "latchkey_auth_decisions_total",
        "latchkey_controller_reconciles_total",
        "latchkey_controller_reconcile_duration_seconds_bucket",
        "latchkey_controller_reconcile_errors_total",
        "latchkey_controller_keys_delivered_total",
        "latchkey_controller_signing_keys_generated_total",
        "latchkey_leader",
        "latchkey_controller_keys_in_grace",
        "latchkey_controller_next_grace_end_seconds",
    ] {
        assert!(
            exported.contains(family),
            "run's /metrics lacks {family}:\n{text}"
        );
    }

    let path = repo().join("charts/latchkey/files/grafana/latchkey.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is valid JSON");
    let mut named = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            named.extend(metric_names(target["expr"].as_str().expect("a PromQL expr")));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"].as_str() {
            named.extend(metric_names(q));
        }
    }
    println!("the dashboard names {} metrics: {named:?}", named.len());
    let unknown: Vec<_> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics latchkey does not export: {unknown:?}\n{text}"
    );
    for needed in [
        "latchkey_auth_decisions_total",
        "latchkey_auth_decision_seconds_bucket",
        "latchkey_controller_keys_delivered_total",
        "latchkey_controller_reconcile_errors_total",
        "latchkey_leader",
        "latchkey_controller_keys_in_grace",
        "latchkey_controller_next_grace_end_seconds",
    ] {
        assert!(named.contains(needed), "the dashboard shows no {needed}");
    }
}
