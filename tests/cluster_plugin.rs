//! `kubectl latchkey` (the built `kubectl-latchkey` binary) against the
//! local control plane: `status` (one namespace, one ApiKey, all
//! namespaces), `rotate` (waits; the old key becomes a previous key),
//! `revoke` (refused on a non-terminal without `--yes`), `inspect` of a
//! current, a previous, a forged, a retired, an expired and a garbage key and of a
//! token, `token` through a running server, and the errors a person acts on:
//! a missing ApiKey, an unreachable cluster, a forbidden namespace (a
//! ServiceAccount with no rights, and one whose Role covers only its own
//! namespace: `status`, `rotate --no-wait` work there and every command is
//! refused in the other), and `--help` for each command. No output may
//! contain a key.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use latchkey::crd::{ApiKey, TokenPolicy};
use latchkey::key::ApiKeyValue;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `kubectl-latchkey --kubeconfig K ARGS…` with `stdin` (none: an empty,
/// non-terminal standard input); returns (success, stdout, stderr).
fn plugin(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-latchkey"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl-latchkey");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// [`plugin`] as admin, asserting success; returns stdout.
fn plugin_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = plugin(kubeconfig(), args, stdin);
    assert!(ok, "kubectl-latchkey {args:?} failed:\n{out}{err}");
    out
}

/// [`plugin`] with `kubeconfig`, asserting failure; returns (stdout, stderr).
fn plugin_fails(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let (ok, out, err) = plugin(kubeconfig, args, stdin);
    assert!(!ok, "kubectl-latchkey {args:?} succeeded:\n{out}{err}");
    (out, err)
}

/// Runs the plugin (as admin) with a pseudo-terminal as its standard input
/// and output, through util-linux `script`, typing `typed`; returns what the
/// terminal showed.
fn on_a_terminal(args: &[&str], typed: &str) -> String {
    let mut line = format!(
        "{} --kubeconfig {}",
        env!("CARGO_BIN_EXE_kubectl-latchkey"),
        kubeconfig().display()
    );
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux) for a pseudo-terminal");
    child.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn assert_no_key(text: &str, keys: &[&str]) {
    for key in keys {
        assert!(!text.contains(key), "a key was printed:\n{text}");
    }
}

async fn api_key(ns: &str, name: &str) -> ApiKey {
    Api::<ApiKey>::namespaced(client().await, ns)
        .get(name)
        .await
        .unwrap()
}

async fn secret_key(ns: &str, name: &str) -> String {
    let secret = Api::<Secret>::namespaced(client().await, ns)
        .get(name)
        .await
        .unwrap();
    String::from_utf8(secret.data.unwrap()["api-key"].0.clone()).unwrap()
}

fn current_id(ak: &ApiKey) -> String {
    ak.status
        .as_ref()
        .unwrap()
        .current_key
        .as_ref()
        .unwrap()
        .id
        .clone()
}

#[tokio::test]
async fn status_rotate_inspect_and_revoke() {
    let ns = TestNamespace::new("plugin").await;
    let n = ns.name.as_str();
    // lastUsedAt is written every second here (60s by default).
    let (_latchkey, server) = LatchkeyProcess::start_run(n, &["--last-used-flush-seconds", "1"]);
    let first = served_key(
        n,
        "alpha",
        "  rotation:\n    interval: 720h\n    gracePeriod: 1h\n",
        &server,
    )
    .await;
    let beta = served_key(n, "beta", "  scopes: [\"x:read\"]\n", &server).await;
    let old_id = current_id(&api_key(n, "alpha").await);
    let mut printed = String::new();

    // served_key used the keys: the ApiKey's last use reaches status.
    let api_keys: Api<ApiKey> = Api::namespaced(client().await, n);
    eventually(WAIT, "status.lastUsedAt of alpha", || async {
        api_keys.get("alpha").await.ok()?.status?.last_used_at.map(|_| ())
    })
    .await;

    // status: one namespace, one ApiKey with its keys, every namespace.
    let out = plugin_ok(&["status", "-n", n], None);
    assert!(out.starts_with("NAME "), "{out}");
    for needle in ["alpha", "beta", &old_id, "KEY ID", "NEXT ROTATION"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    // The next rotation is 720h after the key was issued, a moment ago.
    assert!(out.contains(" in 30d ") || out.contains(" in 29d23h "), "{out}");
    let alpha_row = out.lines().find(|l| l.starts_with("alpha ")).unwrap();
    assert!(
        alpha_row.contains(" ago ") || alpha_row.contains(" now "),
        "last used: {out}"
    );
    printed.push_str(&out);
    let out = plugin_ok(&["status", "alpha", "-n", n], None);
    assert!(out.contains("STATE") && out.contains("current"), "{out}");
    printed.push_str(&out);
    let out = plugin_ok(&["status", "-A"], None);
    assert!(out.starts_with("NAMESPACE "), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(n) && l.contains("alpha")),
        "{out}"
    );
    printed.push_str(&out);

    // rotate: waits, prints the new key id; the old key is a previous key.
    let out = plugin_ok(&["rotate", "alpha", "-n", n, "--timeout", "60s"], None);
    let after = api_key(n, "alpha").await;
    let new_id = current_id(&after);
    assert_ne!(new_id, old_id);
    assert!(out.contains(&format!("key id {old_id} -> {new_id}")), "{out}");
    let status = after.status.as_ref().unwrap();
    assert!(status.previous_keys.iter().any(|k| k.id == old_id));
    assert!(
        status.last_rotate_request.is_some(),
        "the request is recorded in status"
    );
    printed.push_str(&out);
    let out = plugin_ok(&["status", "alpha", "-n", n], None);
    assert!(
        out.lines()
            .any(|l| l.starts_with("previous") && l.contains(&old_id)),
        "{out}"
    );
    printed.push_str(&out);

    // inspect: the previous key (in grace), the current one, a forged one.
    let out = plugin_ok(&["inspect"], Some(&format!("{first}\n")));
    assert!(out.contains(&format!("key id:    {old_id}")), "{out}");
    assert!(
        out.contains(&format!("previous key of ApiKey {n}/alpha, in grace until")),
        "{out}"
    );
    assert!(out.contains("valid:     yes"), "{out}");
    assert!(
        out.contains("last used: ") && !out.contains("last used: -"),
        "{out}"
    );
    printed.push_str(&out);
    let current = secret_key(n, "alpha").await;
    let out = plugin_ok(&["inspect"], Some(&current));
    assert!(out.contains(&format!("current key of ApiKey {n}/alpha")), "{out}");
    printed.push_str(&out);
    let forged = ApiKeyValue::with_random_secret(&new_id);
    let out = plugin_ok(&["inspect", "-n", n], Some(forged.expose()));
    assert!(
        out.contains("does not match") && out.contains("valid:     no"),
        "{out}"
    );
    printed.push_str(&out);

    // inspect: garbage, and a key on the command line (refused, not echoed).
    let (out, err) = plugin_fails(kubeconfig(), &["inspect"], Some("lk_not-a-key"));
    assert!(out.contains("not a latchkey API key"), "{out}{err}");
    let (out, err) = plugin_fails(kubeconfig(), &["inspect", &current], None);
    assert!(
        err.contains("standard input, never from the command line"),
        "{err}"
    );
    printed.push_str(&out);
    printed.push_str(&err);

    // inspect: a retired key (its ApiKey deleted).
    kubectl_ok(&["delete", "apikey", "beta", "-n", n, "--wait=true"]);
    let out = plugin_ok(&["inspect"], Some(&beta));
    assert!(
        out.contains("unknown or retired") && out.contains("valid:     no"),
        "{out}"
    );
    printed.push_str(&out);

    // revoke: refused on a non-terminal without --yes; then revoked.
    let (out, err) = plugin_fails(kubeconfig(), &["revoke", "alpha", "-n", n], None);
    assert!(
        err.contains("standard input is not a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert!(!api_key(n, "alpha").await.is_revoked());
    printed.push_str(&out);
    // On a terminal (util-linux `script` gives it one) it asks; a wrong answer changes nothing.
    let out = on_a_terminal(&["revoke", "alpha", "-n", n], "alpha-not\n");
    assert!(out.contains("Type its name (or yes) to confirm"), "{out}");
    assert!(out.contains("not confirmed"), "{out}");
    assert!(!api_key(n, "alpha").await.is_revoked());
    printed.push_str(&out);
    let out = plugin_ok(&["revoke", "alpha", "-n", n, "--yes"], None);
    assert!(out.contains("revoked"), "{out}");
    let revoked = api_key(n, "alpha").await;
    assert!(revoked.is_revoked());
    let managers: Vec<String> = revoked
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "kubectl-latchkey"), "{managers:?}");
    let out = plugin_ok(&["inspect"], Some(&current));
    assert!(out.contains("REVOKED") && out.contains("valid:     no"), "{out}");
    printed.push_str(&out);
    let (_, err) = plugin_fails(kubeconfig(), &["rotate", "alpha", "-n", n], None);
    assert!(err.contains("is revoked"), "{err}");

    assert_no_key(&printed, &[&first, &beta, &current]);
}

#[tokio::test]
async fn token_minted_and_inspected() {
    let ns = TestNamespace::new("plugin-token").await;
    let n = ns.name.as_str();
    let (_latchkey, server) = LatchkeyProcess::start_run(n, &[]);
    apply(&token_policy_manifest(
        n,
        "login",
        "  audiences: [calendar, pubsub]\n  allowedScopes: [\"calendar-events:read\", \"calendar-events:write\"]\n",
    ));
    let policy = ready_policy(&Api::<TokenPolicy>::namespaced(client().await, n), "login").await;
    let kid = policy.status.unwrap().active_key_id.unwrap();
    let key = served_key(
        n,
        "frontend",
        "  subject: login-service\n  scopes: [\"calendar-events:read\"]\n  tokenPolicyRef:\n    name: login\n",
        &server,
    )
    .await;
    let secret = format!("{n}/frontend");

    // Through --url (the server's base URL) and through the policy's issuer.
    let out = plugin_ok(
        &[
            "token",
            "login",
            "-n",
            n,
            "--key-from-secret",
            &secret,
            "--scope",
            "calendar-events:read",
            "--audience",
            "calendar",
            "--url",
            &server,
        ],
        None,
    );
    let token = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "only the token: {out}");
    assert_eq!(token.split('.').count(), 3, "{out}");
    let out = plugin_ok(&["token", "login", "-n", n, "--key-from-secret", &secret], None);
    assert_eq!(out.trim().split('.').count(), 3, "{out}");
    assert_no_key(&out, &[&key]);

    // Over HTTPS (the chart's default): --cacert trusts latchkey's CA only;
    // without it the handshake fails and nothing is printed on stdout.
    let (_https_server, https_url) = LatchkeyProcess::start_http(
        "serve",
        n,
        &[
            "--http-tls",
            "self-signed",
            "--webhook-ca-secret",
            &format!("{n}/plugin-ca"),
            "--http-tls-dns-name",
            "127.0.0.1",
        ],
    );
    assert!(https_url.starts_with("https://"), "{https_url}");
    let ca_file = std::env::temp_dir().join(format!("latchkey-plugin-ca-{n}.crt"));
    std::fs::write(&ca_file, common::tls::ca_pem(n, "plugin-ca")).unwrap();
    let base = [
        "token",
        "login",
        "-n",
        n,
        "--key-from-secret",
        &secret,
        "--url",
        &https_url,
    ];
    let cacert = ["--cacert", ca_file.to_str().unwrap()];
    let out = plugin_ok(&[&base[..], &cacert[..]].concat(), None);
    assert_eq!(out.trim().split('.').count(), 3, "a token over HTTPS: {out}");
    let (out, err) = plugin_fails(kubeconfig(), &base, None);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&https_url), "names the URL: {err}");
    std::fs::remove_file(&ca_file).unwrap();

    // The token works where a key does.
    let resp = reqwest::Client::new()
        .get(format!("{server}/auth/nginx"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);

    // inspect: header and claims, UNVERIFIED, and the policy publishing its kid.
    let out = plugin_ok(&["inspect"], Some(&token));
    assert!(out.contains("UNVERIFIED"), "{out}");
    assert!(out.contains(&format!("kid: \"{kid}\"")), "{out}");
    assert!(out.contains("sub: \"login-service\""), "{out}");
    assert!(out.contains("scope: \"calendar-events:read\""), "{out}");
    assert!(
        out.contains(&format!(
            "kid published by TokenPolicy {n}/login (its signing key)"
        )),
        "{out}"
    );
    assert!(!out.contains("is not this policy's issuer"), "{out}");

    // A refused exchange says why, and prints no token.
    let (out, err) = plugin_fails(
        kubeconfig(),
        &[
            "token",
            "login",
            "-n",
            n,
            "--key-from-secret",
            &secret,
            "--scope",
            "admin",
            "--url",
            &server,
        ],
        None,
    );
    assert!(out.is_empty() && err.contains("invalid_scope"), "{out}{err}");
    assert_no_key(&err, &[&key]);
}

#[tokio::test]
async fn errors_a_person_can_act_on() {
    let ns = TestNamespace::new("plugin-errors").await;
    let n = ns.name.as_str();

    // A missing ApiKey: named, with its namespace.
    for cmd in [
        &["status", "nope", "-n", n][..],
        &["rotate", "nope", "-n", n],
        &["revoke", "nope", "-n", n, "--yes"],
    ] {
        let (_, err) = plugin_fails(kubeconfig(), cmd, None);
        assert!(
            err.contains(&format!("ApiKey \"nope\" not found in namespace \"{n}\"")),
            "{cmd:?}: {err}"
        );
    }

    // A missing Secret (token), an unknown context.
    let (_, err) = plugin_fails(
        kubeconfig(),
        &[
            "token",
            "login",
            "-n",
            n,
            "--key-from-secret",
            &format!("{n}/absent"),
        ],
        None,
    );
    assert!(
        err.contains(&format!("Secret \"absent\" not found in namespace \"{n}\"")),
        "{err}"
    );
    let (_, err) = plugin_fails(kubeconfig(), &["--context", "elsewhere", "status"], None);
    assert!(
        err.contains("context \"elsewhere\" is not in the kubeconfig"),
        "{err}"
    );

    // An unreachable cluster: the server, the context and the kubeconfig.
    let port = free_port();
    let closed = std::env::temp_dir().join(format!("latchkey-e2e-closed-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &closed,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: nobody\n  user:\n    token: x\ncontexts:\n- name: gone-context\n  context:\n    cluster: gone\n    user: nobody\n\
             current-context: gone-context\n"
        ),
    )
    .unwrap();
    let (_, err) = plugin_fails(&closed, &["status", "-n", n], None);
    std::fs::remove_file(&closed).unwrap();
    assert!(
        err.contains(&format!("cannot reach the cluster at https://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.contains("gone-context") && err.contains(closed.to_str().unwrap()),
        "{err}"
    );

    // A forbidden namespace: a ServiceAccount with no rights at all.
    kubectl_ok(&["create", "serviceaccount", "nobody", "-n", n]);
    let token = kubectl_ok(&["create", "token", "nobody", "-n", n, "--duration=10m"]);
    let forbidden = token_kubeconfig(token.trim(), "nobody", &format!("nobody-{n}"));
    let (_, err) = plugin_fails(&forbidden, &["status", "-n", n], None);
    assert!(
        err.contains(&format!("may not list apikeys.latchkey.dev in namespace \"{n}\"")),
        "{err}"
    );
    let (_, err) = plugin_fails(&forbidden, &["rotate", "x", "-n", n], None);
    assert!(
        err.contains(&format!("may not get apikeys.latchkey.dev in namespace \"{n}\"")),
        "{err}"
    );
    let (_, err) = plugin_fails(
        &forbidden,
        &[
            "token",
            "login",
            "-n",
            n,
            "--key-from-secret",
            &format!("{n}/frontend"),
            "--url",
            "http://127.0.0.1:9",
        ],
        None,
    );
    assert!(
        err.contains(&format!("may not get secrets in namespace \"{n}\"")),
        "{err}"
    );
    // inspect falls back from every namespace to -n's, then says what is refused.
    let stray = ApiKeyValue::generate();
    let (out, err) = plugin_fails(&forbidden, &["inspect", "-n", n], Some(stray.expose()));
    assert!(out.contains(&format!("key id:    {}", stray.key_id())), "{out}");
    assert!(
        err.contains(&format!("may not list apikeys.latchkey.dev in namespace \"{n}\"")),
        "{err}"
    );
    assert_no_key(&(out + &err), &[stray.expose()]);
    let (_, err) = plugin_fails(&forbidden, &["status", "-A"], None);
    assert!(
        err.contains("may not list apikeys.latchkey.dev in all namespaces"),
        "{err}"
    );
    std::fs::remove_file(&forbidden).unwrap();
}

#[tokio::test]
async fn inspect_a_key_after_its_grace_period() {
    let ns = TestNamespace::new("plugin-grace").await;
    let n = ns.name.as_str();
    let (_latchkey, server) = LatchkeyProcess::start_run(n, &[]);
    let old = served_key(
        n,
        "short",
        "  rotation:\n    interval: 720h\n    gracePeriod: 30s\n",
        &server,
    )
    .await;
    plugin_ok(&["rotate", "short", "-n", n], None);
    let out = plugin_ok(&["inspect", "-n", n], Some(&old));
    assert!(
        out.contains("in grace until") && out.contains("valid:     yes"),
        "{out}"
    );
    // After the 30s grace period the key is pruned from status: retired.
    let out = eventually(Duration::from_secs(120), "the old key leaves status", || async {
        let out = plugin_ok(&["inspect", "-n", n], Some(&old));
        out.contains("unknown or retired").then_some(out)
    })
    .await;
    assert!(out.contains("valid:     no"), "{out}");
    assert_no_key(&out, &[&old]);
}

#[tokio::test]
async fn kubectl_runs_it_as_a_plugin() {
    let ns = TestNamespace::new("plugin-kubectl").await;
    let out = Command::new(repo().join("e2e/cluster"))
        .args(["bin", "kubectl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kubectl = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-latchkey"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // kubectl passes no flags of its own to a plugin: the kubeconfig comes from $KUBECONFIG.
    let out = Command::new(&kubectl)
        .args(["latchkey", "status", "-n", &ns.name])
        .env("PATH", &path)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "kubectl latchkey status: {stdout}{stderr}");
    assert_eq!(stdout, format!("No ApiKeys in namespace {}.\n", ns.name));
    let out = Command::new(&kubectl)
        .args(["latchkey", "status", "nope", "-n", &ns.name])
        .env("PATH", &path)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kubectl passes the plugin's exit status on"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ApiKey \"nope\" not found"));
}

/// Rights in one namespace, not in another: a ServiceAccount whose Role in
/// namespace `own` allows what `status`, `rotate` and `revoke` need there
/// works there (`rotate --no-wait` returns at once, with no controller
/// running, having set the annotation) and is refused, with the namespace
/// named, in `other`, where the same ApiKey name exists.
#[tokio::test]
async fn rights_in_one_namespace_are_forbidden_in_another() {
    let own = TestNamespace::new("plugin-own").await;
    let other = TestNamespace::new("plugin-other").await;
    let (o, x) = (own.name.as_str(), other.name.as_str());
    for ns in [o, x] {
        apply(&api_key_manifest(ns, "svc", "  scopes: [a]\n"));
    }
    apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: tenant\n  namespace: {o}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: apikeys\n  namespace: {o}\n\
         rules:\n- apiGroups: [latchkey.dev]\n  resources: [apikeys, tokenpolicies]\n  verbs: [get, list, patch]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: tenant-apikeys\n  namespace: {o}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: apikeys}}\n\
         subjects:\n- {{kind: ServiceAccount, name: tenant, namespace: {o}}}\n"
    ));
    let token = kubectl_ok(&["create", "token", "tenant", "-n", o, "--duration=10m"]);
    let tenant = token_kubeconfig(token.trim(), "tenant", &format!("tenant-{o}"));

    // RBAC takes effect within moments: the first status may need a retry.
    let out = eventually(
        Duration::from_secs(30),
        "the Role lets the tenant list",
        || async {
            let (ok, out, _) = plugin(&tenant, &["status", "-n", o], None);
            ok.then_some(out)
        },
    )
    .await;
    assert!(out.contains("svc"), "{out}");
    let (ok, out, err) = plugin(&tenant, &["rotate", "svc", "-n", o, "--no-wait"], None);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("rotation of ApiKey {o}/svc requested")),
        "{out}"
    );
    let requested = kubectl_ok(&[
        "get",
        "apikey",
        "svc",
        "-n",
        o,
        "-o",
        "jsonpath={.metadata.annotations.latchkey\\.dev/rotate}",
    ]);
    assert!(!requested.trim().is_empty(), "the annotation is set");

    for cmd in [
        &["status", "-n", x][..],
        &["status", "svc", "-n", x],
        &["rotate", "svc", "-n", x, "--no-wait"],
        &["revoke", "svc", "-n", x, "--yes"],
    ] {
        let (_, err) = plugin_fails(&tenant, cmd, None);
        assert!(
            err.contains("may not") && err.contains(&format!("in namespace \"{x}\"")),
            "{cmd:?}: {err}"
        );
    }
    // Nothing changed there.
    let theirs = kubectl_ok(&["get", "apikey", "svc", "-n", x, "-o", "json"]);
    let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
    assert!(theirs["metadata"]["annotations"]["latchkey.dev/rotate"].is_null());
    assert!(theirs["spec"]["revoked"].is_null());
    std::fs::remove_file(&tenant).unwrap();
}

/// `--help` for the plugin and each command: exit 0, the command's purpose
/// and its own flags (no cluster needed).
#[test]
fn every_command_has_help() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-latchkey"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    for command in ["status", "rotate", "revoke", "inspect", "token"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(command)),
            "the plugin's help lists {command}:\n{top}"
        );
    }
    for flag in ["--kubeconfig", "--context", "--namespace"] {
        assert!(top.contains(flag), "{flag}:\n{top}");
    }
    for (command, says, flags) in [
        (
            "status",
            "A table of ApiKeys",
            &["--all-namespaces", "--kind"][..],
        ),
        ("rotate", "Rotate an ApiKey now", &["--no-wait", "--timeout"]),
        ("revoke", "Revoke every key", &["--yes"]),
        ("inspect", "standard input", &["--offline"]),
        (
            "token",
            "prints only the token",
            &[
                "--key-from-secret",
                "--scope",
                "--audience",
                "--role",
                "--url",
                "--cacert",
            ],
        ),
    ] {
        let text = help(&[command]);
        assert!(text.contains(says), "{command}:\n{text}");
        for flag in flags.iter().chain(&["--kubeconfig", "--context", "--namespace"]) {
            assert!(text.contains(flag), "{command} --help names {flag}:\n{text}");
        }
    }
}

/// `inspect` of the key of an ApiKey that has expired since: listed as its
/// current key, EXPIRED, refused (`valid: no`).
#[tokio::test]
async fn inspect_a_key_of_an_expired_apikey() {
    let ns = TestNamespace::new("plugin-expired").await;
    let n = ns.name.as_str();
    let (_latchkey, server) = LatchkeyProcess::start_run(n, &[]);
    let expires = k8s_openapi::jiff::Timestamp::now().as_second() + 10;
    let expires = k8s_openapi::jiff::Timestamp::from_second(expires).unwrap();
    let key = served_key(n, "brief", &format!("  expiresAt: \"{expires}\"\n"), &server).await;
    let out = plugin_ok(&["inspect", "-n", n], Some(&key));
    assert!(out.contains("valid:     yes"), "{out}");
    let out = eventually(Duration::from_secs(60), "the key is expired", || async {
        let out = plugin_ok(&["inspect", "-n", n], Some(&key));
        out.contains("EXPIRED").then_some(out)
    })
    .await;
    assert!(out.contains("valid:     no") && out.contains("current"), "{out}");
    assert!(out.contains(&format!("{n}/brief")), "{out}");
    assert_no_key(&out, &[&key]);
}
