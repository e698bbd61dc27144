//! How the tools people use read latchkey's objects, on the real local
//! control plane with a real `latchkey controller`:
//!
//! - `kubectl get apikeys,tokenpolicies` (and `-o wide`): the printer
//!   columns show future times (next rotation, expiry) as their RFC 3339
//!   value and past ones (last rotation, age) as an age, never `<invalid>`.

mod common;

use common::*;
use serde_json::Value;

/// One `kubectl get` table: rows of (column name → cell), per header line
/// (`kubectl get a,b` prints one table per kind). Cells are cut at the
/// header's column offsets (kubectl aligns them so), as headers such as
/// `NEXT ROTATION` hold a space.
fn tables(text: &str) -> Vec<Vec<std::collections::BTreeMap<String, String>>> {
    let mut out = Vec::new();
    let mut columns: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("NAME ") {
            columns = header_columns(line);
            out.push(Vec::new());
            continue;
        }
        let mut row = std::collections::BTreeMap::new();
        for (i, (start, name)) in columns.iter().enumerate() {
            let end = columns.get(i + 1).map_or(line.len(), |c| c.0).min(line.len());
            let cell = line.get(*start..end).unwrap_or("").trim().to_owned();
            row.insert(name.clone(), cell);
        }
        out.last_mut().expect("a row before any header").push(row);
    }
    out
}

/// The header's column names and where each starts (names are separated by
/// at least two spaces).
fn header_columns(line: &str) -> Vec<(usize, String)> {
    let mut cols = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i] == b' ' && bytes.get(i + 1).is_none_or(|b| *b == b' ')) {
            i += 1;
        }
        cols.push((start, line[start..i].to_owned()));
    }
    cols
}

fn row<'a>(
    table: &'a [std::collections::BTreeMap<String, String>],
    name: &str,
) -> &'a std::collections::BTreeMap<String, String> {
    table
        .iter()
        .find(|r| r["NAME"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {table:?}"))
}

/// An age as kubectl prints it (`12s`, `3m4s`, `5h`, `2d`…).
fn is_age(cell: &str) -> bool {
    !cell.is_empty()
        && cell.chars().all(|c| c.is_ascii_digit() || "smhdy".contains(c))
        && cell.chars().next().is_some_and(|c| c.is_ascii_digit())
}

fn json_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, p| &v[*p])
        .as_str()
        .unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

#[tokio::test]
async fn printer_columns_show_future_times_as_rfc3339_and_never_invalid() {
    let s = Scenario::new("printer").await;
    let ns = s.ns.name.as_str();
    let future = "2099-01-31T00:00:00Z";
    let past = "2020-01-31T00:00:00Z";
    apply(&api_key_manifest(
        ns,
        "future",
        &format!("  rotation: {{interval: 720h, gracePeriod: 1h}}\n  expiresAt: \"{future}\"\n"),
    ));
    apply(&api_key_manifest(
        ns,
        "expired",
        &format!("  expiresAt: \"{past}\"\n"),
    ));
    apply(&token_policy_manifest(
        ns,
        "policy",
        "  audiences: [api]\n  signingKeys: {rotationInterval: 720h}\n",
    ));
    kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "apikey/future",
        "tokenpolicy/policy",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    kubectl_ok(&[
        "wait",
        "--for=condition=Stalled",
        "apikey/expired",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    let get_json = |what: &str| -> Value {
        serde_json::from_str(&kubectl_ok(&["get", what, "-n", ns, "-o", "json"])).unwrap()
    };
    let ak = get_json("apikey/future");
    let tp = get_json("tokenpolicy/policy");
    let ak_next = json_at(&ak, &["status", "nextRotationAt"]);
    let tp_next = json_at(&tp, &["status", "nextRotationAt"]);

    for wide in [false, true] {
        let mut args = vec!["get", "apikeys,tokenpolicies", "-n", ns];
        if wide {
            args.extend(["-o", "wide"]);
        }
        let text = kubectl_ok(&args);
        println!("kubectl {}\n{text}", args.join(" "));
        assert!(!text.contains("<invalid>"), "{text}");
        let t = tables(&text);
        assert_eq!(t.len(), 2, "one table per kind:\n{text}");
        let (keys, policies) = (&t[0], &t[1]);

        let f = row(keys, "apikey.latchkey.dev/future");
        assert_eq!(f["READY"], "True", "{text}");
        assert_eq!(f["NEXT ROTATION"], ak_next, "{text}");
        assert_eq!(f["EXPIRES"], future, "{text}");
        assert_eq!(f["REVISION"], "1", "{text}");
        assert!(is_age(&f["AGE"]), "{text}");
        let e = row(keys, "apikey.latchkey.dev/expired");
        assert_eq!(e["READY"], "False", "{text}");
        assert_eq!(e["REASON"], "Expired", "{text}");
        assert_eq!(e["EXPIRES"], past, "{text}");
        assert_eq!(e["NEXT ROTATION"], "", "{text}"); // kubectl leaves a missing field blank

        let p = row(policies, "tokenpolicy.latchkey.dev/policy");
        assert_eq!(p["READY"], "True", "{text}");
        assert_eq!(p["NEXT ROTATION"], tp_next, "{text}");

        assert_eq!(f.contains_key("LAST ROTATED"), wide, "{text}");
        if wide {
            assert!(is_age(&f["LAST ROTATED"]), "{text}");
            assert!(is_age(&p["LAST ROTATED"]), "{text}");
            assert_eq!(f["SECRET"], "future", "{text}");
            assert!(p["ISSUER"].ends_with(&format!("/issuers/{ns}/policy")), "{text}");
        }
    }
}
