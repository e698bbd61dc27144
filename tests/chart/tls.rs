//! HTTPS on the Service's HTTP port: on by default with latchkey's CA (the
//! webhook's CA Secret), cert-manager through a value, off only when asked;
//! probes, Service, ServiceMonitor and NOTES follow the scheme. The gRPC
//! port follows the HTTP port's mode unless told otherwise.

use crate::helm::*;
use serde_yaml::Value;

fn container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", "latchkey")["spec"]["template"]["spec"]["containers"][0]
}

/// Every value following `flag` in the container's args.
fn values_of(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

fn notes(values: &[&str]) -> String {
    let mut args = vec![
        "install",
        "notes-tls",
        CHART,
        "--dry-run=client",
        "--namespace",
        "notes-tls",
        "--set",
        "crds.install=false",
        "--set",
        "webhook.enabled=false",
    ];
    args.extend(sets(values));
    helm_ok(&args)
}

#[test]
fn https_is_on_by_default_with_the_webhooks_ca_and_https_probes() {
    let docs = template(&[]);
    let c = container(&docs);
    let args = strings(&c["args"]);
    assert_eq!(values_of(&args, "--http-tls"), ["self-signed"], "{args:?}");
    assert_eq!(
        values_of(&args, "--webhook-ca-secret"),
        ["latchkey-system/latchkey-webhook-ca"],
        "one CA Secret, given once, for both listeners: {args:?}"
    );
    assert_eq!(
        values_of(&args, "--http-tls-dns-name"),
        [
            "latchkey",
            "latchkey.latchkey-system",
            "latchkey.latchkey-system.svc",
            "latchkey.latchkey-system.svc.cluster.local"
        ]
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"].as_str(), Some("HTTPS"), "{probe}");
    }
    let svc = find(&docs, "Service", "latchkey");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"].as_str(), Some("https"));
    // The HTTPS listener needs the CA Secret even without the webhook.
    let docs = template(&["webhook.enabled=false", "server.tls.dnsNames={auth.example.com}"]);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(
        values_of(&args, "--webhook-ca-secret"),
        ["latchkey-system/latchkey-webhook-ca"]
    );
    assert_eq!(
        values_of(&args, "--http-tls-dns-name").last().map(String::as_str),
        Some("auth.example.com")
    );
    let notes = notes(&[]);
    assert!(
        notes.contains("https://notes-tls-latchkey.notes-tls.svc:8080/auth/nginx"),
        "{notes}"
    );
    assert!(notes.contains("jsonpath='{.data.tls\\.crt}'"), "{notes}");
}

#[test]
fn cert_manager_mode_mounts_a_certificate_for_the_services_names() {
    let docs = template(&["server.tls.mode=certManager"]);
    let c = container(&docs);
    let args = strings(&c["args"]);
    assert_eq!(values_of(&args, "--http-tls"), ["dir"]);
    assert_eq!(
        values_of(&args, "--http-tls-cert-dir"),
        ["/etc/latchkey/http-tls"]
    );
    assert!(values_of(&args, "--http-tls-dns-name").is_empty());
    let cert = find(&docs, "Certificate", "latchkey-http");
    assert_eq!(cert["spec"]["secretName"].as_str(), Some("latchkey-http-tls"));
    assert_eq!(
        strings(&cert["spec"]["dnsNames"])[2],
        "latchkey.latchkey-system.svc"
    );
    find(&docs, "Issuer", "latchkey-http");
    let pod = &find(&docs, "Deployment", "latchkey")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some("latchkey-http-tls")
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/latchkey/http-tls")
    );
    // Both listeners on cert-manager: two mounts, no CA Secret of latchkey's.
    let docs = template(&[
        "server.tls.mode=certManager",
        "webhook.certManager.enabled=true",
        "server.tls.certManager.issuerRef.name=corp-ca",
        "server.tls.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    let c = container(&docs);
    assert!(values_of(&strings(&c["args"]), "--webhook-ca-secret").is_empty());
    assert_eq!(c["volumeMounts"].as_sequence().map(Vec::len), Some(2));
    let cert = find(&docs, "Certificate", "latchkey-http");
    assert_eq!(cert["spec"]["issuerRef"]["name"].as_str(), Some("corp-ca"));
}

#[test]
fn plain_http_only_when_asked_and_the_notes_say_so() {
    let docs = template(&["server.tls.mode=off", "serviceMonitor.enabled=true"]);
    let c = container(&docs);
    assert_eq!(values_of(&strings(&c["args"]), "--http-tls"), ["off"]);
    assert_eq!(c["livenessProbe"]["httpGet"]["scheme"].as_str(), Some("HTTP"));
    let sm = find(&docs, "ServiceMonitor", "latchkey");
    assert!(sm["spec"]["endpoints"][0]["scheme"].is_null());
    let notes = notes(&["server.tls.mode=off"]);
    assert!(
        notes.contains("PLAIN HTTP") && notes.contains("clear text"),
        "{notes}"
    );
    // With TLS the ServiceMonitor scrapes over HTTPS.
    let docs = template(&["serviceMonitor.enabled=true"]);
    let sm = find(&docs, "ServiceMonitor", "latchkey");
    assert_eq!(sm["spec"]["endpoints"][0]["scheme"].as_str(), Some("https"));
    // A mode latchkey does not know is refused.
    let mut args = vec!["template", "latchkey", CHART];
    args.extend(sets(&["server.tls.mode=tls"]));
    let bad = helm(&args);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("server.tls.mode must be selfSigned, certManager or off")
    );
}

/// The Service port named `name`.
fn service_port<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    find(docs, "Service", "latchkey")["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("a Service port named {name}"))
}

#[test]
fn the_grpc_port_is_tls_like_the_http_port_unless_told_otherwise() {
    // Default: self-signed by latchkey's CA, for the Service's names.
    let docs = template(&["server.grpc.enabled=true"]);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(values_of(&args, "--grpc-tls"), ["self-signed"], "{args:?}");
    assert_eq!(
        values_of(&args, "--grpc-tls-dns-name"),
        values_of(&args, "--http-tls-dns-name"),
        "the HTTP certificate's names"
    );
    assert!(service_port(&docs, "grpc")["appProtocol"].is_null(), "not h2c");
    // Off by default when gRPC is: no gRPC flag at all.
    let args = strings(&container(&template(&[]))["args"]);
    assert!(values_of(&args, "--grpc-tls").is_empty(), "{args:?}");

    // HTTP on cert-manager: gRPC serves the same mounted Certificate.
    let docs = template(&["server.grpc.enabled=true", "server.tls.mode=certManager"]);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(values_of(&args, "--grpc-tls"), ["dir"]);
    assert_eq!(
        values_of(&args, "--grpc-tls-cert-dir"),
        ["/etc/latchkey/http-tls"]
    );
    find(&docs, "Certificate", "latchkey-http");

    // gRPC on cert-manager alone: the Certificate and its mount exist for
    // it, and HTTP keeps latchkey's CA.
    let docs = template(&["server.grpc.enabled=true", "server.grpc.tls.mode=certManager"]);
    let c = container(&docs);
    let args = strings(&c["args"]);
    assert_eq!(values_of(&args, "--http-tls"), ["self-signed"]);
    assert_eq!(values_of(&args, "--grpc-tls"), ["dir"]);
    assert_eq!(
        values_of(&args, "--grpc-tls-cert-dir"),
        ["/etc/latchkey/http-tls"]
    );
    assert!(values_of(&args, "--http-tls-cert-dir").is_empty());
    find(&docs, "Certificate", "latchkey-http");
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/latchkey/http-tls")
    );

    // h2c only when asked (HTTP keeps TLS), and then the Service says so;
    // gRPC on latchkey's CA needs the CA Secret even when HTTP is plain and
    // the webhook is off.
    let docs = template(&["server.grpc.enabled=true", "server.grpc.tls.mode=off"]);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(values_of(&args, "--grpc-tls"), ["off"]);
    assert_eq!(values_of(&args, "--http-tls"), ["self-signed"]);
    assert_eq!(
        service_port(&docs, "grpc")["appProtocol"].as_str(),
        Some("kubernetes.io/h2c")
    );
    let docs = template(&[
        "server.grpc.enabled=true",
        "server.tls.mode=off",
        "server.grpc.tls.mode=selfSigned",
        "webhook.enabled=false",
    ]);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(values_of(&args, "--grpc-tls"), ["self-signed"]);
    assert_eq!(
        values_of(&args, "--webhook-ca-secret"),
        ["latchkey-system/latchkey-webhook-ca"]
    );
    let tls_notes = notes(&["server.grpc.enabled=true"]);
    assert!(tls_notes.contains("speaks TLS (HTTP/2)"), "{tls_notes}");
    let h2c_notes = notes(&["server.grpc.enabled=true", "server.grpc.tls.mode=off"]);
    assert!(h2c_notes.contains("speaks h2c, PLAIN TEXT"), "{h2c_notes}");
    let mut args = vec!["template", "latchkey", CHART];
    args.extend(sets(&["server.grpc.enabled=true", "server.grpc.tls.mode=h2c"]));
    let bad = helm(&args);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("server.grpc.tls.mode must be selfSigned, certManager, off or empty")
    );
}
