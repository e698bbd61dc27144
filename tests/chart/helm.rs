//! Running the repository's helm (bounded, built once) and reading what it
//! renders: documents, kinds, names, RBAC rules.

use crate::common;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const RELEASE: &str = "latchkey";
pub const CHART: &str = "charts/latchkey";
/// Every helm call is bounded by this…
pub const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// …and building helm (first run on a machine) by this.
pub const HELM_BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

pub fn repo() -> &'static Path {
    common::repo()
}

pub fn chart_dir() -> PathBuf {
    repo().join(CHART)
}

/// Runs `cmd` from the repository root, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    cmd.current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Read both pipes on threads so a large output cannot block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap().unwrap(),
        stderr: err_reader.join().unwrap().unwrap(),
    }
}

/// `e2e/cluster helm ARGS…`.
pub fn helm(args: &[&str]) -> Output {
    ensure_helm();
    let mut cmd = Command::new(repo().join("e2e/cluster"));
    cmd.arg("helm").args(args);
    run_bounded(cmd, &format!("helm {}", args.join(" ")), STEP_TIMEOUT)
}

/// Builds helm once (minutes on a fresh machine; then a cache hit), so the
/// bounded steps time the chart, not the build.
pub fn ensure_helm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(repo().join("e2e/cluster"));
        cmd.args(["helm", "version", "--short"]);
        let out = run_bounded(
            cmd,
            "e2e/cluster helm version (building helm)",
            HELM_BUILD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "helm could not be built or run (e2e/cluster helm version):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// `--set` arguments for helm.
pub fn sets<'a>(values: &[&'a str]) -> Vec<&'a str> {
    values.iter().flat_map(|v| ["--set", v]).collect()
}

/// `helm template` with `values`: the raw text.
pub fn template_text(values: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", "latchkey-system"];
    args.extend(sets(values));
    helm_ok(&args)
}

/// `helm template` with `values`: the objects.
pub fn template(values: &[&str]) -> Vec<Value> {
    parse_docs(&template_text(values))
}

pub fn parse_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| format!("{}/{}", kind(d), name(d))).collect()
}

pub fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} rendered; got {:?}", kinds(docs)))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a Role or ClusterRole as (apiGroup, resource, resourceNames, verbs).
pub fn rules(role: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.push((
                    group.clone(),
                    resource,
                    strings(&rule["resourceNames"]),
                    strings(&rule["verbs"]),
                ));
            }
        }
    }
    out
}

/// The verbs a role grants on `group/resource`.
pub fn verbs(role: &Value, group: &str, resource: &str) -> Vec<String> {
    rules(role)
        .into_iter()
        .filter(|(g, r, _, _)| g == group && r == resource)
        .flat_map(|(_, _, _, v)| v)
        .collect()
}
