use super::review::{self, AdmissionRequest};
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn request(
    kind: (&str, &str),
    operation: &str,
    user: &str,
    object: Value,
    old: Option<Value>,
) -> AdmissionRequest {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "uid-1",
            "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "namespace": "team",
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("x")),
            "operation": operation,
            "userInfo": {"username": user},
            "object": object,
            "oldObject": old,
        }
    });
    review::parse(body.to_string().as_bytes()).unwrap()
}

fn api_key(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
           "metadata": {"name": name, "namespace": "team", "uid": "ak-uid"}, "spec": spec})
}

fn owner(uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "latchkey.dev/v1alpha1".into(),
        kind: "ApiKey".into(),
        name: "billing".into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[test]
fn a_new_api_key_may_not_take_a_secret_someone_else_holds() {
    let req = request(
        ("latchkey.dev", "ApiKey"),
        "CREATE",
        "alice",
        api_key("billing", json!({"secretName": "db-creds"})),
        None,
    );
    assert_eq!(
        lookups(&req).secret,
        Some(("team".to_owned(), "db-creds".to_owned()))
    );
    let facts = |f| Facts {
        secret: Some(f),
        token_policy: None,
        ..Default::default()
    };
    let v = decide(&req, &facts(Found::Present(vec![])), &Config::default());
    assert!(!v.allowed);
    assert!(
        v.message.contains("Secret \"db-creds\" already exists"),
        "{}",
        v.message
    );
    assert!(v.message.contains("spec.secretName"));
    let v = decide(
        &req,
        &facts(Found::Present(vec![owner("other")])),
        &Config::default(),
    );
    assert!(!v.allowed);
    // Its own Secret (a re-create after a crash), or none: fine.
    assert!(
        decide(
            &req,
            &facts(Found::Present(vec![owner("ak-uid")])),
            &Config::default()
        )
        .allowed
    );
    assert!(decide(&req, &facts(Found::Absent), &Config::default()).allowed);
    let v = decide(&req, &facts(Found::Unknown("timeout".into())), &Config::default());
    assert!(v.allowed && !v.warnings.is_empty());
}

#[test]
fn an_update_never_looks_at_the_secret() {
    let ak = api_key("billing", json!({}));
    let req = request(
        ("latchkey.dev", "ApiKey"),
        "UPDATE",
        "alice",
        ak.clone(),
        Some(ak),
    );
    assert_eq!(lookups(&req), Lookups::default());
    assert!(decide(&req, &Facts::default(), &Config::default()).allowed);
}

#[test]
fn scopes_must_be_within_an_existing_policy() {
    let ak = api_key(
        "billing",
        json!({"scopes": ["orders:read", "orders:write", "admin"], "tokenPolicyRef": {"name": "tp"}}),
    );
    let req = request(("latchkey.dev", "ApiKey"), "CREATE", "alice", ak, None);
    assert_eq!(
        lookups(&req).token_policy,
        Some(("team".to_owned(), "tp".to_owned()))
    );
    let facts = |f| Facts {
        secret: Some(Found::Absent),
        token_policy: Some(f),
        ..Default::default()
    };
    let v = decide(
        &req,
        &facts(Found::Present(vec!["orders:read".into()])),
        &Config::default(),
    );
    assert!(!v.allowed);
    assert!(
        v.message
            .contains("spec.scopes [orders:write, admin] not allowed by TokenPolicy \"tp\""),
        "{}",
        v.message
    );
    let all = vec!["orders:read".into(), "orders:write".into(), "admin".into()];
    assert!(decide(&req, &facts(Found::Present(all)), &Config::default()).allowed);
    // Apply order: a policy that does not exist yet is fine, with a warning.
    let v = decide(&req, &facts(Found::Absent), &Config::default());
    assert!(v.allowed);
    assert!(v.warnings[0].contains("TokenPolicyMissing"));
}

#[test]
fn an_update_checks_only_the_scopes_it_adds() {
    let old = api_key(
        "billing",
        json!({"scopes": ["legacy"], "tokenPolicyRef": {"name": "tp"}}),
    );
    let same = request(
        ("latchkey.dev", "ApiKey"),
        "UPDATE",
        "alice",
        old.clone(),
        Some(old.clone()),
    );
    assert_eq!(lookups(&same).token_policy, None, "nothing added: no lookup");
    let more = api_key(
        "billing",
        json!({"scopes": ["legacy", "new"], "tokenPolicyRef": {"name": "tp"}}),
    );
    let req = request(("latchkey.dev", "ApiKey"), "UPDATE", "alice", more, Some(old));
    let facts = Facts {
        secret: None,
        token_policy: Some(Found::Present(vec![])),
        ..Default::default()
    };
    let v = decide(&req, &facts, &Config::default());
    assert!(!v.allowed);
    assert!(
        v.message.contains("[new]") && !v.message.contains("legacy,"),
        "{}",
        v.message
    );
}

#[test]
fn the_issuer_of_a_policy_cannot_change() {
    let tp = |issuer: Option<&str>| {
        let mut spec = json!({"audiences": ["api"]});
        if let Some(i) = issuer {
            spec["issuer"] = json!(i);
        }
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
               "metadata": {"name": "tp", "namespace": "team"}, "spec": spec})
    };
    let kind = ("latchkey.dev", "TokenPolicy");
    let req = request(
        kind,
        "UPDATE",
        "alice",
        tp(Some("https://b")),
        Some(tp(Some("https://a"))),
    );
    let v = decide(&req, &Facts::default(), &Config::default());
    assert!(!v.allowed);
    assert!(v.message.contains("spec.issuer cannot be changed"));
    assert!(v.message.contains("create a new TokenPolicy"));
    let req = request(kind, "UPDATE", "alice", tp(Some("https://a")), Some(tp(None)));
    assert!(!decide(&req, &Facts::default(), &Config::default()).allowed);
    let req = request(kind, "UPDATE", "alice", tp(None), Some(tp(None)));
    assert!(decide(&req, &Facts::default(), &Config::default()).allowed);
    let req = request(kind, "CREATE", "alice", tp(Some("https://a")), None);
    assert!(decide(&req, &Facts::default(), &Config::default()).allowed);
}

fn new_policy(ns: &str, name: &str, issuer: Option<&str>) -> AdmissionRequest {
    let mut spec = json!({"audiences": ["api"]});
    if let Some(i) = issuer {
        spec["issuer"] = json!(i);
    }
    let mut req = request(
        ("latchkey.dev", "TokenPolicy"),
        "CREATE",
        "mallory",
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        None,
    );
    req.namespace = Some(ns.into());
    req
}

#[test]
fn roles_that_cannot_work_are_refused_with_what_to_change() {
    let with_roles = |roles: Value| {
        let mut req = new_policy("team", "login", None);
        let spec = req.object.as_mut().unwrap().pointer_mut("/spec").unwrap();
        spec["allowedScopes"] = json!(["calendar-events:read", "collaboration:publish"]);
        spec["customClaims"] = json!([{"name": "tenant", "required": true}]);
        spec["roles"] = roles;
        decide(&req, &Facts::default(), &Config::default())
    };
    let good = with_roles(json!({"data-entry": [
        {"scopes": ["calendar-events:read"], "resources": ["/calendar-events/{tenant}/"]},
        {"scopes": ["collaboration:publish"], "resources": ["/topics/{tenant}-events"]},
        {"scopes": ["calendar-events:read"]}
    ]}));
    assert!(good.allowed, "{}", good.message);
    for (roles, says) in [
        (
            json!({"r": [{"scopes": ["calendar-events:read"], "resources": ["/calendar-events/{org}/"]}]}),
            "names the claim org, which spec.customClaims does not declare: add it there",
        ),
        (
            json!({"r": [{"scopes": ["calendar-events:read"], "resources": ["/calendar-events/{tenant/"]}]}),
            "has a '{' without its '}': close it",
        ),
        (
            json!({"r": [{"scopes": ["calendar-events:write"]}]}),
            "scope calendar-events:write is not in spec.allowedScopes; add it there",
        ),
        (
            json!({"r": [{"scopes": ["calendar-events:read"], "resources": ["/calendar-events/../{tenant}/"]}]}),
            "'..' segment",
        ),
    ] {
        let v = with_roles(roles.clone());
        assert!(!v.allowed, "{roles}");
        assert!(v.message.contains(says), "{roles}: {}", v.message);
        assert!(v.message.starts_with("spec.roles.r: "), "{}", v.message);
    }
}

fn holders(list: &[(&str, &str, Option<&str>)]) -> Facts {
    Facts {
        issuers: Some(Found::Present(
            list.iter()
                .map(|(ns, name, issuer)| PolicyIssuer {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                    issuer: issuer.map(str::to_owned),
                })
                .collect(),
        )),
        ..Default::default()
    }
}

#[test]
fn a_new_policy_may_not_take_an_issuer_path_someone_holds() {
    let req = new_policy("aaa-x", "evil", Some("https://auth.example.com/tenants/a"));
    assert!(lookups(&req).issuers);
    let existing = holders(&[
        ("sec-a", "login", Some("https://auth.example.com/tenants/a")),
        ("sec-b", "api", None),
    ]);
    let v = decide(&req, &existing, &Config::default());
    assert!(!v.allowed);
    assert!(
        v.message.contains("TokenPolicy sec-a/login, which holds it"),
        "{}",
        v.message
    );
    assert!(v.message.contains("choose another spec.issuer"), "{}", v.message);
    // Same path on another host: the same route on the server, refused too.
    let req = new_policy("aaa-x", "evil", Some("http://other.example/tenants/a/"));
    assert!(!decide(&req, &existing, &Config::default()).allowed);
    // Its own unique issuer, or its default: fine.
    for issuer in [Some("https://auth.example.com/tenants/b"), None] {
        let req = new_policy("aaa-x", "evil", issuer);
        assert!(decide(&req, &existing, &Config::default()).allowed, "{issuer:?}");
    }
    // A default path another policy's explicit issuer already has.
    let squatted = holders(&[(
        "aaa-x",
        "evil",
        Some("https://auth.example.com/issuers/sec-a/login"),
    )]);
    let v = decide(&new_policy("sec-a", "login", None), &squatted, &Config::default());
    assert!(!v.allowed);
    assert!(
        v.message.contains("that TokenPolicy aaa-x/evil holds"),
        "{}",
        v.message
    );
}

#[test]
fn an_explicit_issuer_may_not_squat_another_policy_s_default_path() {
    // No lookup needed: refused even when listing failed, for any base URL.
    let unknown = Facts {
        issuers: Some(Found::Unknown("403 Forbidden".into())),
        ..Default::default()
    };
    for issuer in [
        "http://127.0.0.1:8080/issuers/sec-a/login",
        "https://auth.example.com/prefix/issuers/sec-a/login",
        "https://auth.example.com/issuers/sec-a/%6Cogin",
        "https://auth.example.com/issuers/aaa-x/other",
    ] {
        let v = decide(
            &new_policy("aaa-x", "evil", Some(issuer)),
            &unknown,
            &Config::default(),
        );
        assert!(!v.allowed, "{issuer}");
        assert!(
            v.message.contains("default issuer of TokenPolicy"),
            "{}",
            v.message
        );
        assert!(v.message.contains("remove spec.issuer"), "{}", v.message);
    }
    let v = decide(
        &new_policy("aaa-x", "evil", Some("https://a.example/issuers/sec-a/login")),
        &unknown,
        &Config::default(),
    );
    assert!(v.message.contains("sec-a/login"), "{}", v.message);
    // Its own default path spelled out, and other shapes: allowed (with a
    // warning that uniqueness was not checked).
    for issuer in [
        "https://auth.example.com/issuers/aaa-x/evil",
        "https://auth.example.com/issuers/sec-a",
        "https://auth.example.com/issuers/sec-a/login/v2",
    ] {
        let v = decide(
            &new_policy("aaa-x", "evil", Some(issuer)),
            &unknown,
            &Config::default(),
        );
        assert!(v.allowed, "{issuer}: {}", v.message);
        assert!(v.warnings[0].contains("IssuerConflict"));
    }
}

fn managed_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "billing", "namespace": "team",
                        "labels": {"app.kubernetes.io/managed-by": "latchkey"},
                        "ownerReferences": [{"apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
                                             "name": "billing", "uid": "ak-uid", "controller": true}]}})
}

#[test]
fn only_latchkey_and_kubernetes_cleanup_write_managed_secrets() {
    let config = Config {
        allowed_users: ["system:serviceaccount:latchkey-system:latchkey".to_owned()].into(),
    };
    let secret = managed_secret();
    for op in ["UPDATE", "DELETE"] {
        let as_user = |user: &str| {
            let object = if op == "DELETE" {
                Value::Null
            } else {
                secret.clone()
            };
            decide(
                &request(("", "Secret"), op, user, object, Some(secret.clone())),
                &Facts::default(),
                &config,
            )
        };
        let v = as_user("someone");
        assert!(!v.allowed, "{op}");
        assert!(v.message.contains("managed by latchkey"), "{}", v.message);
        assert!(
            v.message
                .contains("kubectl annotate apikey billing latchkey.dev/rotate")
        );
        assert!(as_user("system:serviceaccount:latchkey-system:latchkey").allowed);
        for user in SYSTEM_USERS {
            assert!(as_user(user).allowed, "{user} {op}");
        }
    }
    // Someone's own Secret that merely gains the label, and CREATE: allowed.
    let mut plain = secret.clone();
    plain["metadata"]["labels"] = json!({});
    let req = request(("", "Secret"), "UPDATE", "someone", secret.clone(), Some(plain));
    assert!(decide(&req, &Facts::default(), &config).allowed);
    let req = request(("", "Secret"), "CREATE", "someone", secret, None);
    assert!(decide(&req, &Facts::default(), &config).allowed);
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z:/._-]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("ApiKey"),
            Just("TokenPolicy"),
            Just("Secret"),
            Just("CREATE"),
            Just("UPDATE"),
            Just("DELETE"),
            Just("latchkey.dev"),
            Just("latchkey"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_owned()),
                    Just("spec".to_owned()),
                    Just("name".to_owned()),
                    Just("labels".to_owned()),
                    Just("scopes".to_owned()),
                    Just("secretName".to_owned()),
                    Just("tokenPolicyRef".to_owned()),
                    Just("issuer".to_owned()),
                    Just("audiences".to_owned()),
                    Just("ownerReferences".to_owned()),
                    Just("app.kubernetes.io/managed-by".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Checks the shape of every answer: uid echoed, allowed a bool, a message.
fn well_formed(rendered: &Value, uid: &str) {
    assert_eq!(rendered["apiVersion"], review::API_VERSION);
    assert_eq!(rendered["kind"], "AdmissionReview");
    assert_eq!(rendered["response"]["uid"], uid);
    assert!(rendered["response"]["allowed"].is_boolean());
    assert!(
        !rendered["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
}

fn all_facts() -> impl Strategy<Value = Facts> {
    let found_owners = prop_oneof![
        Just(None),
        Just(Some(Found::Absent)),
        Just(Some(Found::Present(vec![]))),
        Just(Some(Found::Present(vec![owner("ak-uid")]))),
        Just(Some(Found::Unknown("timeout".into()))),
    ];
    let found_policy = prop_oneof![
        Just(None),
        Just(Some(Found::Absent)),
        prop::collection::vec("[a-z:]{1,6}", 0..4).prop_map(|v| Some(Found::Present(v))),
        Just(Some(Found::Unknown("forbidden".into()))),
    ];
    (found_owners, found_policy).prop_map(|(secret, token_policy)| Facts {
        secret,
        token_policy,
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Arbitrary bytes: a 400-style error or a request, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = review::parse(&body);
    }

    /// Reviews with arbitrary objects of every kind and operation: every
    /// answer is well-formed.
    #[test]
    fn arbitrary_reviews_get_well_formed_answers(
        kind in prop_oneof![Just(("latchkey.dev", "ApiKey")), Just(("latchkey.dev", "TokenPolicy")), Just(("", "Secret")), Just(("apps", "Deployment"))],
        operation in prop_oneof![Just("CREATE"), Just("UPDATE"), Just("DELETE"), Just("CONNECT"), Just("")],
        user in prop_oneof![Just("someone".to_owned()), Just("latchkey".to_owned()), Just(String::new())],
        object in any_json(),
        old in prop::option::of(any_json()),
        facts in all_facts(),
    ) {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                        "namespace": "team", "operation": operation,
                        "userInfo": {"username": user}, "object": object, "oldObject": old}
        });
        let request = review::parse(body.to_string().as_bytes()).unwrap();
        let _ = lookups(&request);
        let config = Config { allowed_users: ["latchkey".to_owned()].into() };
        let verdict = decide(&request, &facts, &config);
        well_formed(&review::render(&request.uid, &verdict), "u");
    }

    /// Well-typed ApiKeys with random scopes against random policies: a
    /// denial always names a scope that the policy lacks.
    #[test]
    fn scope_denials_name_a_missing_scope(
        scopes in prop::collection::btree_set("[a-c]:(read|write)", 0..5),
        allowed in prop::collection::vec("[a-c]:(read|write)", 0..5),
    ) {
        let ak = api_key("k", json!({"scopes": scopes, "tokenPolicyRef": {"name": "tp"}}));
        let request = request(("latchkey.dev", "ApiKey"), "CREATE", "alice", ak, None);
        let facts = Facts { secret: Some(Found::Absent), token_policy: Some(Found::Present(allowed.clone())), ..Default::default() };
        let verdict = decide(&request, &facts, &Config::default());
        let outside: Vec<_> = scopes.iter().filter(|s| !allowed.contains(s)).collect();
        prop_assert_eq!(verdict.allowed, outside.is_empty());
        for s in outside {
            prop_assert!(verdict.message.contains(s.as_str()));
        }
    }
}

#[test]
fn a_subject_pattern_must_compile_within_its_bound() {
    let tp = |pattern: &str| {
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "TokenPolicy",
               "metadata": {"name": "tp", "namespace": "team"},
               "spec": {"audiences": ["api"], "delegation": {"subjectPattern": pattern}, "sessionMaxAge": "8h"}})
    };
    let kind = ("latchkey.dev", "TokenPolicy");
    for op in ["CREATE", "UPDATE"] {
        let old = (op == "UPDATE").then(|| tp("^user-[0-9]+$"));
        let ok = request(kind, op, "alice", tp("^user-[0-9]+$"), old.clone());
        assert!(decide(&ok, &Facts::default(), &Config::default()).allowed, "{op}");
        for (bad, says) in [
            ("(?<=x)user", "not a valid RE2"),
            (r"\w{1000}\w{1000}", "too complex"),
            ("^(user-[0-9]+$", "not a valid RE2"),
        ] {
            let req = request(kind, op, "alice", tp(bad), old.clone());
            let v = decide(&req, &Facts::default(), &Config::default());
            assert!(!v.allowed, "{op} {bad}");
            assert!(v.message.contains(says), "{op} {bad}: {}", v.message);
            assert!(
                v.message.contains("spec.delegation.subjectPattern"),
                "{}",
                v.message
            );
        }
    }
}
