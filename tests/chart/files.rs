//! The chart's files: its CRDs are byte for byte the files of `crds/`, its
//! appVersion is the crate's version, every value is documented.

use crate::helm::*;
use serde_yaml::Value;
use std::path::Path;
use std::process::Command;

/// The files of `crds/`, sorted, as (file name, content).
pub fn crd_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// What the chart renders for one CRD file when crds.keep is on.
pub fn with_keep_annotation(crd: &str) -> String {
    let kept = crd.replacen(
        "\nmetadata:\n",
        "\nmetadata:\n  annotations:\n    helm.sh/resource-policy: keep\n",
        1,
    );
    assert_ne!(kept, crd, "a CRD file without a top-level metadata:");
    kept
}

/// The text of every document `templates/crds.yaml` rendered.
pub fn rendered_crd_texts(text: &str) -> Vec<String> {
    const SOURCE: &str = "# Source: latchkey/templates/crds.yaml\n";
    format!("\n{text}")
        .split("\n---\n")
        .filter_map(|doc| doc.strip_prefix(SOURCE))
        .map(|doc| format!("{}\n", doc.trim_end_matches('\n')))
        .collect()
}

#[test]
fn chart_crds_are_the_files_of_crds_dir() {
    let committed = crd_files(&repo().join("crds"));
    let in_chart = crd_files(&chart_dir().join("files/crds"));
    assert!(!committed.is_empty(), "crds/ is empty");
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&in_chart),
        names(&committed),
        "charts/latchkey/files/crds/ and crds/ hold different files: run e2e/chart-crds"
    );
    for ((file, want), (_, have)) in committed.iter().zip(&in_chart) {
        assert!(
            want == have,
            "charts/latchkey/files/crds/{file} differs from crds/{file}: run e2e/chart-crds"
        );
    }
    // The script's own check agrees.
    let out = run_bounded(
        {
            let mut c = Command::new(repo().join("e2e/chart-crds"));
            c.arg("--check");
            c
        },
        "e2e/chart-crds --check",
        STEP_TIMEOUT,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(chart["name"].as_str(), Some("latchkey"));
}

#[test]
fn every_value_is_documented() {
    // A key with a value on its line needs a comment right above it, unless
    // it is part of a documented default: one of its parents has a `# --`
    // comment (for example resources.requests.cpu). Keys that only open a
    // section (`webhook:`) are checked through their children.
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_comment = |l: &str| l.trim_start().starts_with('#');
    // The comment lines right above line i.
    let comments = |i: usize| -> Vec<&str> {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| is_comment(l))
            .copied()
            .collect()
    };
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || is_comment(line) || t.starts_with('-') || !t.contains(':') || t.ends_with(':') {
            continue;
        }
        if !comments(i).is_empty() {
            continue;
        }
        let mut level = indent(line);
        let mut documented_parent = false;
        for j in (0..i).rev() {
            let l = lines[j];
            if l.trim().is_empty() || is_comment(l) || indent(l) >= level {
                continue;
            }
            level = indent(l);
            if comments(j).iter().any(|c| c.trim_start().starts_with("# --")) {
                documented_parent = true;
                break;
            }
        }
        if !documented_parent {
            undocumented.push(format!("line {}: {}", i + 1, t));
        }
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml keys without a comment: {undocumented:#?}"
    );
}
