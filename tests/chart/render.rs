//! `helm lint` and `helm template`: what the values ask for is rendered
//! (CRDs, RBAC, webhook, Deployment, NetworkPolicy, namespaced mode,
//! cert-manager), what latchkey cannot do is refused.

use crate::files::*;
use crate::helm::*;
use serde_yaml::Value;

#[test]
fn helm_lint_passes_for_the_defaults_and_the_variants() {
    for values in [
        vec![],
        vec!["crds.install=false"],
        vec!["webhook.enabled=false"],
        vec!["networkPolicy.enabled=true", "serviceMonitor.enabled=true"],
        vec!["grafana.dashboard.enabled=true"],
        vec!["watchNamespaces={team-a}"],
        vec!["watchNamespaces={team-a,team-b}"],
        vec!["server.tls.mode=certManager", "webhook.certManager.enabled=true"],
        vec!["server.tls.mode=off"],
        vec!["server.grpc.enabled=true", "networkPolicy.enabled=true"],
        vec![
            "server.rateLimitRedis.url=redis://redis:6379",
            "networkPolicy.enabled=true",
        ],
        vec!["server.rateLimitRedis.existingSecret.name=latchkey-redis"],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend(sets(&values));
        let out = helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "helm lint {values:?}:\n{out}");
    }
}

#[test]
fn packaged_chart_carries_the_crds() {
    // Users install the packaged chart (a .tgz or an OCI artifact): files/crds/
    // must be in it and render the same.
    let dir = std::env::temp_dir().join(format!("latchkey-chart-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = helm_ok(&["package", CHART, "--destination", dir.to_str().unwrap()]);
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    let tgz = dir.join(format!("latchkey-{}.tgz", chart["version"].as_str().unwrap()));
    assert!(tgz.exists(), "helm package wrote no {}: {out}", tgz.display());
    let packaged = helm_ok(&[
        "template",
        RELEASE,
        tgz.to_str().unwrap(),
        "--namespace",
        "latchkey-system",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        rendered_crd_texts(&packaged),
        rendered_crd_texts(&template_text(&[])),
        "the packaged chart renders other CRDs than the chart directory"
    );
    assert_eq!(
        rendered_crd_texts(&packaged).len(),
        crd_files(&repo().join("crds")).len()
    );
}

#[test]
fn default_render_has_crds_rbac_deployment_webhook_and_pdb() {
    let text = template_text(&[]);
    let docs = parse_docs(&text);
    let have = kinds(&docs);
    for want in [
        "CustomResourceDefinition/apikeys.latchkey.dev",
        "ServiceAccount/latchkey",
        "ClusterRole/latchkey",
        "ClusterRoleBinding/latchkey",
        "ClusterRole/latchkey-webhook",
        "ClusterRoleBinding/latchkey-webhook",
        "ClusterRole/latchkey-grants",
        "ClusterRoleBinding/latchkey-grants",
        "Role/latchkey-self",
        "RoleBinding/latchkey-self",
        "Deployment/latchkey",
        "Service/latchkey",
        "ValidatingWebhookConfiguration/latchkey",
        "PodDisruptionBudget/latchkey",
    ] {
        assert!(
            have.contains(want),
            "{want} missing from the default render: {have:?}"
        );
    }
    assert!(
        !have
            .iter()
            .any(|k| k.starts_with("NetworkPolicy/") || k.starts_with("ServiceMonitor/"))
    );

    // CRDs: every file of crds/, unchanged but for the keep annotation.
    let files = crd_files(&repo().join("crds"));
    let rendered = rendered_crd_texts(&text);
    assert_eq!(rendered.len(), files.len(), "one CRD per file of crds/");
    for (file, content) in &files {
        assert!(
            rendered.contains(&with_keep_annotation(content)),
            "crds/{file} is not rendered as the file plus helm.sh/resource-policy: keep"
        );
    }
    let unkept = rendered_crd_texts(&template_text(&["crds.keep=false"]));
    for (file, content) in &files {
        assert!(
            unkept.contains(content),
            "crds/{file} is not rendered byte for byte with crds.keep=false"
        );
    }

    // Deployment: 2 replicas of `latchkey run`, probes, hardened.
    let deploy = find(&docs, "Deployment", "latchkey");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("latchkey"));
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(
        &args[..3],
        ["run", "--http-addr", "0.0.0.0:8080"],
        "args: {args:?}"
    );
    assert!(!args.contains(&"--watch-namespace".to_owned()));
    // The webhook: served on its port, with the CA Secret and the Service's name.
    for pair in [
        ["--webhook-addr", "0.0.0.0:8443"],
        ["--webhook-configuration-name", "latchkey"],
        ["--webhook-ca-secret", "latchkey-system/latchkey-webhook-ca"],
        ["--webhook-dns-name", "latchkey.latchkey-system.svc"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    // Leader election on a Lease named like the release, in its namespace.
    let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
    assert_eq!(after("--lease-name"), Some("latchkey"), "args: {args:?}");
    assert_eq!(after("--lease-duration-seconds"), Some("15"));
    assert_eq!(after("--lease-grace-seconds"), Some("5"));
    assert!(!args.contains(&"--no-leader-election".to_owned()));
    let env_names: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        env_names.contains(&"POD_NAMESPACE"),
        "the Lease's namespace: {env_names:?}"
    );
    assert_eq!(c["image"].as_str(), Some("ghcr.io/latchkey-dev/latchkey:0.1.0"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/livez"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(
        c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string()
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    // Graceful shutdown: a 5 s preStop sleep (the endpoint's removal reaches
    // kube-proxy and the proxies first), then SIGTERM and the drain.
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64(), Some(5));
    assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(30));

    // Service: http 8080 and webhook 8443.
    let svc = find(&docs, "Service", "latchkey");
    let ports: Vec<(String, u64)> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("http".to_owned(), 8080), ("webhook".to_owned(), 8443)]);

    // PodDisruptionBudget.
    let pdb = find(&docs, "PodDisruptionBudget", "latchkey");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    // Webhook: the Service's /validate, no side effects, explicit policy and timeout.
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    let hooks = vwc["webhooks"].as_sequence().unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in hooks {
        let svc = &hook["clientConfig"]["service"];
        assert_eq!(svc["name"].as_str(), Some("latchkey"));
        assert_eq!(svc["namespace"].as_str(), Some("latchkey-system"));
        assert_eq!(svc["path"].as_str(), Some("/validate"));
        assert_eq!(svc["port"].as_u64(), Some(8443));
        assert_eq!(hook["sideEffects"].as_str(), Some("None"));
        assert_eq!(hook["failurePolicy"].as_str(), Some("Fail"));
        assert!(hook["timeoutSeconds"].as_u64().is_some());
        assert!(
            hook["clientConfig"]["caBundle"].is_null(),
            "latchkey patches the caBundle itself"
        );
    }
    let resources = &hooks[0]["rules"][0];
    assert_eq!(strings(&resources["resources"]), ["apikeys", "tokenpolicies"]);
    assert_eq!(strings(&resources["operations"]), ["CREATE", "UPDATE"]);
    let secrets = &hooks[1];
    assert_eq!(strings(&secrets["rules"][0]["resources"]), ["secrets"]);
    assert_eq!(
        secrets["objectSelector"]["matchLabels"]["app.kubernetes.io/managed-by"].as_str(),
        Some("latchkey"),
        "the Secrets webhook sees only the Secrets latchkey labels as its own"
    );

    // RBAC: exactly the verbs each resource needs.
    let cluster = find(&docs, "ClusterRole", "latchkey");
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "patch"];
    assert_eq!(verbs(cluster, "latchkey.dev", "apikeys"), read);
    assert_eq!(verbs(cluster, "latchkey.dev", "tokenpolicies"), read);
    assert_eq!(verbs(cluster, "latchkey.dev", "apikeys/status"), ["patch"]);
    assert_eq!(verbs(cluster, "latchkey.dev", "tokenpolicies/status"), ["patch"]);
    assert_eq!(verbs(cluster, "", "secrets"), write);
    assert_eq!(verbs(cluster, "", "configmaps"), write);
    assert_eq!(verbs(cluster, "events.k8s.io", "events"), ["create", "patch"]);
    let this = find(&docs, "Role", "latchkey-self");
    assert_eq!(namespace(this), "latchkey-system");
    assert_eq!(
        verbs(this, "coordination.k8s.io", "leases"),
        ["get", "create", "patch"]
    );
    assert_eq!(verbs(this, "", "secrets"), write);
    let grants = find(&docs, "ClusterRole", "latchkey-grants");
    assert_eq!(
        rules(grants),
        [(
            "latchkey.dev".to_owned(),
            "credentialgrants".to_owned(),
            vec![],
            vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()]
        )],
        "CredentialGrants: read only"
    );
    assert!(
        !args.contains(&"--require-grants".to_owned()),
        "open mode by default"
    );
    let webhook = find(&docs, "ClusterRole", "latchkey-webhook");
    assert_eq!(
        rules(webhook),
        [(
            "admissionregistration.k8s.io".to_owned(),
            "validatingwebhookconfigurations".to_owned(),
            vec!["latchkey".to_owned()],
            vec!["get".to_owned(), "patch".to_owned()]
        )]
    );
    for role in docs
        .iter()
        .filter(|d| kind(d) == "ClusterRole" || kind(d) == "Role")
    {
        for (group, resource, _, verbs) in rules(role) {
            assert!(
                group != "*" && resource != "*" && !verbs.contains(&"*".to_owned()),
                "wildcard in {}",
                name(role)
            );
            assert!(
                !verbs.contains(&"delete".to_owned()),
                "{} may delete {resource}",
                name(role)
            );
        }
    }
}

#[test]
fn values_turn_parts_off_and_on() {
    // No CRDs.
    let docs = template(&["crds.install=false"]);
    assert!(!docs.iter().any(|d| kind(d) == "CustomResourceDefinition"));

    // No webhook: no configuration, no right on webhook configurations, no port.
    let docs = template(&["webhook.enabled=false"]);
    let have = kinds(&docs);
    assert!(
        !have
            .iter()
            .any(|k| k.starts_with("ValidatingWebhookConfiguration/"))
    );
    assert!(!have.contains("ClusterRole/latchkey-webhook"));
    let deploy = find(&docs, "Deployment", "latchkey");
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    // Only the CA Secret stays, for the HTTPS listener (tests/chart/tls.rs).
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--webhook") && a != "--webhook-ca-secret"),
        "{args:?}"
    );
    let svc = find(&docs, "Service", "latchkey");
    assert_eq!(svc["spec"]["ports"].as_sequence().unwrap().len(), 1);

    // gRPC ext_authz: off by default (no flag, no port); on, the flag, the
    // container port and a Service port `grpc` (TLS by default: see tls.rs).
    assert!(!args.iter().any(|a| a == "--grpc-addr"), "{args:?}");
    let docs = template(&[
        "server.grpc.enabled=true",
        "server.grpc.port=9101",
        "service.grpcPort=9001",
    ]);
    let container = &find(&docs, "Deployment", "latchkey")["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert!(
        args.windows(2).any(|w| w == ["--grpc-addr", "0.0.0.0:9101"]),
        "{args:?}"
    );
    let ports = container["ports"].as_sequence().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "grpc" && p["containerPort"] == 9101),
        "{ports:?}"
    );
    let svc = find(&docs, "Service", "latchkey");
    let grpc = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a Service port named grpc");
    assert_eq!(grpc["port"], 9001);
    assert_eq!(grpc["targetPort"], "grpc");
    assert!(grpc["appProtocol"].is_null(), "TLS by default, not h2c: {grpc:?}");
    let docs = template(&["server.grpc.enabled=true", "networkPolicy.enabled=true"]);
    let np = find(&docs, "NetworkPolicy", "latchkey");
    assert!(
        np["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|rule| rule["ports"][0]["port"] == "grpc"),
        "{np:?}"
    );

    // Leader election off (one replica) or with other timing; the timing checked.
    let args_of = |docs: &[Value]| {
        strings(&find(docs, "Deployment", "latchkey")["spec"]["template"]["spec"]["containers"][0]["args"])
    };
    let args = args_of(&template(&["leaderElection.enabled=false", "replicaCount=1"]));
    assert!(args.contains(&"--no-leader-election".to_owned()), "{args:?}");
    assert!(!args.contains(&"--lease-name".to_owned()));
    let args = args_of(&template(&[
        "leaderElection.leaseDurationSeconds=30",
        "leaderElection.leaseGraceSeconds=10",
    ]));
    assert!(
        args.windows(2).any(|w| w == ["--lease-duration-seconds", "30"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--lease-grace-seconds", "10"]),
        "{args:?}"
    );
    // One --claim-header per server.claimHeaders entry; none by default.
    assert!(!args.contains(&"--claim-header".to_owned()), "{args:?}");
    let args = args_of(&template(&["server.claimHeaders={tenant,region}"]));
    let claims: Vec<&[String]> = args.windows(2).filter(|w| w[0] == "--claim-header").collect();
    assert_eq!(
        claims,
        [["--claim-header", "tenant"], ["--claim-header", "region"]],
        "{args:?}"
    );
    let bad = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "leaderElection.leaseGraceSeconds=15",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("must be at least 1 and less than leaderElection.leaseDurationSeconds")
    );

    // An explicit failure policy and timeout, checked.
    let docs = template(&["webhook.failurePolicy=Ignore", "webhook.timeoutSeconds=3"]);
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(vwc["webhooks"][0]["failurePolicy"].as_str(), Some("Ignore"));
    assert_eq!(vwc["webhooks"][1]["timeoutSeconds"].as_u64(), Some(3));
    let bad = helm(&[
        "template",
        RELEASE,
        CHART,
        "--set",
        "webhook.failurePolicy=Sometimes",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhook.failurePolicy must be Fail or Ignore"));

    // Strict mode: --require-grants, and NOTES say which mode is on.
    let args = args_of(&template(&["grants.strict=true"]));
    assert!(args.contains(&"--require-grants".to_owned()), "{args:?}");
    let notes = |values: &[&str]| {
        // NOTES only come out of install; a release of its own, without the
        // CRDs and the webhook configuration, so that nothing conflicts with
        // the install test's objects in the same cluster.
        let mut args = vec![
            "install",
            "notes-check",
            CHART,
            "--dry-run=client",
            "--namespace",
            "notes-check",
            "--set",
            "crds.install=false",
            "--set",
            "webhook.enabled=false",
        ];
        args.extend(sets(values));
        helm_ok(&args)
    };
    let open = notes(&[]);
    assert!(
        open.contains("Open mode")
            && open.contains("ANY subject")
            && open.contains("--set grants.strict=true"),
        "{open}"
    );
    assert!(notes(&["grants.strict=true"]).contains("Strict mode is ON"));

    // NetworkPolicy and ServiceMonitor.
    let docs = template(&["networkPolicy.enabled=true", "serviceMonitor.enabled=true"]);
    let np = find(&docs, "NetworkPolicy", "latchkey");
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress_ports: Vec<&str> = np["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["ports"][0]["port"].as_str().unwrap())
        .collect();
    assert_eq!(ingress_ports, ["http", "webhook"]);
    find(&docs, "ServiceMonitor", "latchkey");

    // The Grafana dashboard: off by default; on, a ConfigMap for Grafana's
    // sidecar holding files/grafana/latchkey.json (valid JSON) as it is.
    // tests/cluster_controller_metrics.rs checks the metrics it names.
    assert!(!kinds(&template(&[])).contains("ConfigMap/latchkey-dashboard"));
    let docs = template(&["grafana.dashboard.enabled=true"]);
    let cm = find(&docs, "ConfigMap", "latchkey-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    let file =
        std::fs::read_to_string(crate::common::repo().join("charts/latchkey/files/grafana/latchkey.json"))
            .unwrap();
    let shipped = cm["data"]["latchkey.json"].as_str().unwrap();
    assert_eq!(shipped, file.trim_end_matches('\n'));
    let dashboard: serde_json::Value = serde_json::from_str(shipped).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "latchkey");

    // One watched namespace: Roles there, nothing cluster-wide but the webhook.
    let docs = template(&["watchNamespaces={team-a}"]);
    let have = kinds(&docs);
    assert!(!have.contains("ClusterRole/latchkey"), "{have:?}");
    assert!(!have.contains("ClusterRoleBinding/latchkey"), "{have:?}");
    assert!(
        have.contains("ClusterRole/latchkey-grants") && have.contains("ClusterRoleBinding/latchkey-grants"),
        "CredentialGrants are cluster-scoped: read cluster-wide in one-namespace mode too: {have:?}"
    );
    let role = find(&docs, "Role", "latchkey");
    assert_eq!(namespace(role), "team-a");
    assert_eq!(
        verbs(role, "", "secrets"),
        ["get", "list", "watch", "create", "patch"]
    );
    assert_eq!(verbs(role, "latchkey.dev", "apikeys"), ["get", "list", "watch"]);
    let binding = find(&docs, "RoleBinding", "latchkey");
    assert_eq!(namespace(binding), "team-a");
    assert_eq!(
        binding["subjects"][0]["namespace"].as_str(),
        Some("latchkey-system")
    );
    let deploy = find(&docs, "Deployment", "latchkey");
    let args = strings(&deploy["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.windows(2).any(|w| w == ["--watch-namespace", "team-a"]),
        "args: {args:?}"
    );
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(
        vwc["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("team-a")
    );
    // A list of namespaces: tests/chart/namespaces.rs.

    // No shutdown delay: no preStop hook; a grace period shorter than the
    // delay plus the 10 s drain is refused.
    let docs = template(&["shutdownDelaySeconds=0"]);
    let deploy = find(&docs, "Deployment", "latchkey");
    assert!(deploy["spec"]["template"]["spec"]["containers"][0]["lifecycle"].is_null());
    let bad = helm(&["template", RELEASE, CHART, "--set", "shutdownDelaySeconds=25"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("shutdownDelaySeconds + 10"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn cert_manager_mode_mounts_its_certificate_and_lets_it_inject_the_ca() {
    // The HTTP listener on cert-manager too, or it would keep latchkey's CA.
    let docs = template(&["webhook.certManager.enabled=true", "server.tls.mode=certManager"]);
    let cert = find(&docs, "Certificate", "latchkey-webhook");
    assert_eq!(cert["spec"]["secretName"].as_str(), Some("latchkey-webhook-tls"));
    assert_eq!(
        cert["spec"]["dnsNames"][0].as_str(),
        Some("latchkey.latchkey-system.svc")
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"].as_str(), Some("Issuer"));
    find(&docs, "Issuer", "latchkey-webhook");
    let vwc = find(&docs, "ValidatingWebhookConfiguration", "latchkey");
    assert_eq!(
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some("latchkey-system/latchkey-webhook")
    );
    let deploy = find(&docs, "Deployment", "latchkey");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--webhook-cert-dir", "/etc/latchkey/webhook-tls"]),
        "{args:?}"
    );
    assert!(
        !args.contains(&"--webhook-ca-secret".to_owned()),
        "no CA of its own: {args:?}"
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/latchkey/webhook-tls")
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some("latchkey-webhook-tls")
    );
    // With an issuer of one's own, no self-signed Issuer.
    let docs = template(&[
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(!docs.iter().any(|d| d["kind"].as_str() == Some("Issuer")));
    let cert = find(&docs, "Certificate", "latchkey-webhook");
    assert_eq!(cert["spec"]["issuerRef"]["name"].as_str(), Some("corp-ca"));
}

#[test]
fn shared_rate_limits_take_the_redis_url_from_values_or_a_secret_never_a_password_in_values() {
    let container = |docs: &[Value]| {
        find(docs, "Deployment", "latchkey")["spec"]["template"]["spec"]["containers"][0].clone()
    };
    let redis_env = |c: &Value| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some("LATCHKEY_RATE_LIMIT_REDIS_URL"))
            .cloned()
    };
    // Off by default: no flag, no variable, no egress to Redis.
    let docs = template(&["networkPolicy.enabled=true"]);
    let c = container(&docs);
    assert!(!strings(&c["args"]).iter().any(|a| a == "--rate-limit-redis-url"));
    assert!(redis_env(&c).is_none());
    let np = find(&docs, "NetworkPolicy", "latchkey");
    let egress_ports = |np: &Value| -> Vec<String> {
        np["spec"]["egress"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_sequence().unwrap().iter())
            .map(|p| match &p["port"] {
                Value::Number(n) => n.to_string(),
                other => other.as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    };
    assert!(!egress_ports(np).contains(&"6379".to_owned()), "{np:?}");

    // A URL without credentials: the flag.
    let docs = template(&[
        "server.rateLimitRedis.url=redis://redis.cache.svc:6379/2",
        "networkPolicy.enabled=true",
        "server.rateLimitRedis.networkPolicyTo[0].namespaceSelector.matchLabels.team=cache",
    ]);
    let args = strings(&container(&docs)["args"]);
    assert!(
        args.windows(2)
            .any(|w| w == ["--rate-limit-redis-url", "redis://redis.cache.svc:6379/2"]),
        "args: {args:?}"
    );
    let np = find(&docs, "NetworkPolicy", "latchkey");
    assert!(egress_ports(np).contains(&"6379".to_owned()), "{np:?}");
    let to_redis = np["spec"]["egress"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"].as_u64() == Some(6379))
        .unwrap();
    assert_eq!(
        to_redis["to"][0]["namespaceSelector"]["matchLabels"]["team"].as_str(),
        Some("cache")
    );

    // From a Secret: the variable the binary reads, never the URL in the spec.
    let docs = template(&[
        "server.rateLimitRedis.existingSecret.name=latchkey-redis",
        "server.rateLimitRedis.existingSecret.key=redis-url",
    ]);
    let c = container(&docs);
    assert!(!strings(&c["args"]).iter().any(|a| a == "--rate-limit-redis-url"));
    let env = redis_env(&c).expect("LATCHKEY_RATE_LIMIT_REDIS_URL from the Secret");
    assert_eq!(
        env["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("latchkey-redis")
    );
    assert_eq!(
        env["valueFrom"]["secretKeyRef"]["key"].as_str(),
        Some("redis-url")
    );

    // Refused at render time, each saying what to change.
    for (values, says) in [
        (
            vec!["server.rateLimitRedis.url=redis://:hunter2@redis:6379"],
            "existingSecret",
        ),
        (
            vec![
                "server.rateLimitRedis.url=redis://redis:6379",
                "server.rateLimitRedis.existingSecret.name=latchkey-redis",
            ],
            "not both",
        ),
        (
            vec![
                "server.rateLimitRedis.existingSecret.name=latchkey-redis",
                "server.rateLimitRedis.existingSecret.key=",
            ],
            "existingSecret.key",
        ),
    ] {
        let mut args = vec!["template", RELEASE, CHART];
        args.extend(sets(&values));
        let out = helm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm rendered {values:?}");
        assert!(stderr.contains(says), "{values:?}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the refusal repeats the password: {stderr}"
        );
    }
}
