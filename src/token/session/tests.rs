//! Delegation and refresh, with an injected clock (plain seconds).

use super::*;
use crate::token::claims::build_claims;

const NOW: i64 = 1_800_000_000;
const KEY_SCOPES: &[&str] = &["calendar-events:read", "calendar-events:write", "orders:read"];

fn policy() -> PolicyRules {
    PolicyRules {
        issuer: "http://127.0.0.1/issuers/shop/login".into(),
        audiences: vec!["calendar".into(), "pubsub".into()],
        allowed_scopes: ["calendar-events:read", "calendar-events:write"]
            .into_iter()
            .map(String::from)
            .collect(),
        custom_claims: [("tenant".to_string(), false)].into(),
        token_ttl_seconds: 900,
        max_ttl_seconds: 3600,
        ..Default::default()
    }
}

fn rules(pattern: Option<&str>, session: i64) -> SessionRules {
    SessionRules {
        delegation: pattern.map_or(Delegation::Off, |p| {
            Delegation::To(SubjectPattern::compile(p).unwrap())
        }),
        session_max_age_seconds: session,
        trusted_issuers: vec![IDP.into()],
    }
}

const IDP: &str = "https://idp.example.com";

/// A token as a federated exchange mints it at `at`: the provider's
/// subject, `act` (the ApiKey that asked), the session begun at the
/// provider's login `auth_time`, `idp`.
fn federated(auth_time: i64, at: i64) -> AccessClaims {
    let request = req("grant_type=client_credentials&claim.tenant=acme");
    let mut claims = build_claims(&policy(), &client("KeyIdAAAAAAA"), &request, at, "j0".into()).unwrap();
    claims.sub = "alice@idp".into();
    claims.act = Some(Actor {
        sub: "login-handler".into(),
    });
    claims.sid = Some("sid-fed".into());
    claims.auth_time = Some(auth_time);
    claims.idp = Some(IDP.into());
    claims.role = Some("data-entry".into());
    claims
}

#[test]
fn a_federated_session_refreshes_without_delegation_until_auth_time_plus_session_max_age() {
    // The provider's login was 100 s before the exchange; sessions last 2000 s.
    let login = NOW - 100;
    let old = federated(login, NOW);
    for pattern in [None, Some("^user-[0-9]+$")] {
        let r = rules(pattern, 2000);
        let new = refresh_at(&old, &r, "", NOW + 600).unwrap();
        assert_eq!(new.sub, "alice@idp");
        assert_eq!(
            new.act,
            Some(Actor {
                sub: "login-handler".into()
            })
        );
        assert_eq!(new.sid.as_deref(), Some("sid-fed"));
        assert_eq!(new.auth_time, Some(login));
        assert_eq!(new.idp.as_deref(), Some(IDP));
        assert_eq!(new.role.as_deref(), Some("data-entry"));
        assert_eq!(new.custom["tenant"], "acme");
        assert_eq!(new.client_id, "KeyIdBBBBBBB");
        assert_eq!(new.exp, NOW + 600 + 900);
        // Near the end: cut at the session's bound, never beyond.
        let late = refresh_at(&old, &r, "", login + 1500).unwrap();
        assert_eq!(late.exp, login + 2000);
        // A refresh of the refresh keeps the same bound.
        let again = refresh_at(&late, &r, "", login + 1999).unwrap();
        assert_eq!(again.exp, login + 2000);
        assert_eq!(again.idp.as_deref(), Some(IDP));
        // Over: refused, saying to log in at the provider.
        for at in [login + 2000, login + 5000] {
            let e = refresh_at(&late, &r, "", at).unwrap_err();
            assert!(matches!(e, TokenError::InvalidGrant(_)), "{e:?}");
            let msg = e.description();
            assert!(
                msg.contains("the session is over") && msg.contains("log in again at the identity provider"),
                "{msg}"
            );
            assert!(!msg.contains("delegation"), "{msg}");
        }
    }
}

#[test]
fn a_federated_session_ends_when_its_issuer_is_no_longer_trusted() {
    let old = federated(NOW, NOW);
    let mut r = rules(None, 2000);
    r.trusted_issuers = vec!["https://other.example.com".into()];
    let e = refresh_at(&old, &r, "", NOW + 10).unwrap_err();
    assert!(matches!(e, TokenError::InvalidGrant(_)), "{e:?}");
    assert!(e.description().contains("spec.trustedIssuers"), "{e:?}");
    r.trusted_issuers.clear();
    assert!(refresh_at(&old, &r, "", NOW + 10).is_err());
}

#[test]
fn a_federated_session_narrows_like_any_other_and_keeps_its_role_and_tenant() {
    let old = federated(NOW, NOW);
    let r = rules(None, 2000);
    // role, claim.* and a wider scope are refused as for every refresh.
    for extra in ["&role=admin", "&claim.tenant=globex"] {
        let e = refresh_at(&old, &r, extra, NOW + 10).unwrap_err();
        assert!(matches!(e, TokenError::InvalidRequest(_)), "{extra}: {e:?}");
    }
    let e = refresh_at(&old, &r, "&scope=orders%3Aread", NOW + 10).unwrap_err();
    assert!(matches!(e, TokenError::InvalidScope(_)), "{e:?}");
    // Another ApiKey's key cannot refresh it.
    let e = refresh(
        Presented {
            claims: &old,
            same_policy: true,
            same_api_key: false,
        },
        &r,
        &policy(),
        &client("KeyIdBBBBBBB"),
        &req(EXCHANGE),
        NOW + 10,
        "j1".into(),
    )
    .unwrap_err();
    assert!(e.description().contains("issued to another client"), "{e:?}");
}

#[test]
fn a_delegated_session_still_needs_delegation() {
    // Without idp, act means delegation: its rules are unchanged.
    let old = mint(
        &rules(Some("^user-[0-9]+$"), 2000),
        "grant_type=client_credentials&requested_subject=user-42",
        NOW,
    )
    .unwrap();
    assert_eq!(old.idp, None);
    let e = refresh_at(&old, &rules(None, 2000), "", NOW + 10).unwrap_err();
    assert!(e.description().contains("no longer allows delegation"), "{e:?}");
}

fn client(key_id: &'static str) -> ClientKey<'static> {
    ClientKey {
        key_id,
        subject: "login-handler",
        scopes: KEY_SCOPES,
        audiences: &[],
    }
}

fn req(body: &str) -> TokenRequest {
    TokenRequest::parse(body.as_bytes()).unwrap()
}

/// A token minted at `at` with `body` under `rules`.
fn mint(rules: &SessionRules, body: &str, at: i64) -> Result<AccessClaims, TokenError> {
    let request = TokenRequest::parse(body.as_bytes())?;
    let mut claims = build_claims(&policy(), &client("KeyIdAAAAAAA"), &request, at, "j0".into())?;
    start(&mut claims, rules, &request, |_| true, "sid-1".into(), at)?;
    Ok(claims)
}

const EXCHANGE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
    &subject_token=eyJ.x.y&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";

fn same(claims: &AccessClaims) -> Presented<'_> {
    Presented {
        claims,
        same_policy: true,
        same_api_key: true,
    }
}

fn refresh_at(
    old: &AccessClaims,
    rules: &SessionRules,
    extra: &str,
    at: i64,
) -> Result<AccessClaims, TokenError> {
    let body = format!("{EXCHANGE}{extra}");
    refresh(
        same(old),
        rules,
        &policy(),
        &client("KeyIdBBBBBBB"),
        &req(&body),
        at,
        "j1".into(),
    )
}

#[test]
fn a_pattern_matches_whole_subjects_only() {
    let p = SubjectPattern::compile("user-[0-9]+").unwrap();
    assert!(p.matches("user-42"));
    for s in ["evil-user-1", "user-1-admin", "user-", "user-1\n", ""] {
        assert!(!p.matches(s), "{s:?}");
    }
    let alt = SubjectPattern::compile("a|b").unwrap();
    assert!(
        alt.matches("a") && !alt.matches("ab"),
        "anchoring wraps alternations whole"
    );
}

#[test]
fn bad_patterns_are_refused_with_what_to_change() {
    let long = "a".repeat(MAX_PATTERN_LEN + 1);
    assert_eq!(
        SubjectPattern::compile(&long).unwrap_err(),
        PatternError::TooLong(257)
    );
    let big = SubjectPattern::compile(r"\w{1000}\w{1000}").unwrap_err();
    assert_eq!(big, PatternError::TooBig);
    assert!(big.to_string().contains("simplify"), "{big}");
    for bad in ["(?=user)", "user-(", r"(a)\1"] {
        let e = SubjectPattern::compile(bad).unwrap_err();
        assert!(matches!(e, PatternError::Syntax(_)), "{bad}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains("^user-[0-9]+$") && !msg.contains('\n'), "{msg}");
    }
}

#[test]
fn a_delegated_token_names_the_user_and_the_actor() {
    let r = rules(Some("^user-[0-9]+$"), 8 * 3600);
    let c = mint(&r, "grant_type=client_credentials&requested_subject=user-42", NOW).unwrap();
    assert_eq!(c.sub, "user-42");
    assert_eq!(
        c.act,
        Some(Actor {
            sub: "login-handler".into()
        })
    );
    assert_eq!(c.client_id, "KeyIdAAAAAAA");
    assert_eq!((c.sid.as_deref(), c.auth_time), (Some("sid-1"), Some(NOW)));
    assert_eq!(c.exp, NOW + 900);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["act"], serde_json::json!({"sub": "login-handler"}));
    // Without requested_subject: the key's own subject, still a session.
    let own = mint(&r, "grant_type=client_credentials", NOW).unwrap();
    assert_eq!((own.sub.as_str(), own.act.is_none()), ("login-handler", true));
    assert_eq!(own.auth_time, Some(NOW));
}

#[test]
fn requested_subjects_are_refused_without_delegation_or_outside_the_pattern() {
    let body = "grant_type=client_credentials&requested_subject=user-42";
    assert_eq!(
        mint(&rules(None, 3600), body, NOW).unwrap_err().code(),
        "unauthorized_client"
    );
    let r = rules(Some("^user-[0-9]+$"), 3600);
    for subject in ["admin", "user-42x", "user-1%0Aadmin", "shop%2Flogin-handler"] {
        let e = mint(
            &r,
            &format!("grant_type=client_credentials&requested_subject={subject}"),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(e.code(), "invalid_request"), "{subject}: {e:?}");
    }
    let broken = SessionRules {
        trusted_issuers: Vec::new(),
        delegation: Delegation::Broken(PatternError::TooBig),
        session_max_age_seconds: 3600,
    };
    assert_eq!(
        mint(&broken, body, NOW).unwrap_err().code(),
        "unauthorized_client"
    );
    // Not granted to the namespace.
    let request = req(body);
    let mut claims = build_claims(&policy(), &client("KeyIdAAAAAAA"), &request, NOW, "j".into()).unwrap();
    let e = start(&mut claims, &r, &request, |_| false, "s".into(), NOW).unwrap_err();
    assert!(e.description().contains("CredentialGrants"), "{e:?}");
}

#[test]
fn a_session_shorter_than_the_token_caps_its_exp() {
    let c = mint(&rules(None, 60), "grant_type=client_credentials", NOW).unwrap();
    assert_eq!(c.exp, NOW + 60);
}

#[test]
fn refresh_works_until_session_max_age_and_not_after() {
    let r = rules(Some("^user-[0-9]+$"), 1800);
    let first = mint(
        &r,
        "grant_type=client_credentials&requested_subject=user-42&claim.tenant=acme",
        NOW,
    )
    .unwrap();
    // Ten minutes later: a fresh token, same sub, sid, auth_time, claims.
    let second = refresh_at(&first, &r, "", NOW + 600).unwrap();
    assert_eq!(second.sub, "user-42");
    assert_eq!(second.sid, first.sid);
    assert_eq!(second.auth_time, Some(NOW));
    assert_eq!(second.iat, NOW + 600);
    assert_eq!(second.exp, NOW + 600 + 900);
    assert_eq!(
        second.client_id, "KeyIdBBBBBBB",
        "the key that refreshed (same ApiKey)"
    );
    assert_eq!(
        second.act,
        Some(Actor {
            sub: "login-handler".into()
        })
    );
    assert_eq!(second.custom, first.custom);
    assert_eq!(second.jti, "j1");
    // Near the end the token ends with the session.
    let third = refresh_at(&second, &r, "", NOW + 1500).unwrap();
    assert_eq!(third.exp, NOW + 1800);
    let last = refresh_at(&third, &r, "", NOW + 1799).unwrap();
    assert_eq!(last.exp, NOW + 1800);
    // At and after the end: invalid_grant.
    for at in [NOW + 1800, NOW + 1801, NOW + 100_000] {
        let e = refresh_at(&third, &r, "", at).unwrap_err();
        assert_eq!(e.code(), "invalid_grant", "{at}");
        assert!(e.description().contains("session is over"), "{e:?}");
    }
}

#[test]
fn refresh_keeps_or_narrows_scopes_and_audiences() {
    let r = rules(None, 3600);
    let old = mint(&r, "grant_type=client_credentials", NOW).unwrap();
    assert_eq!(old.scope, "calendar-events:read calendar-events:write");
    let same = refresh_at(&old, &r, "", NOW + 1).unwrap();
    assert_eq!(same.scope, old.scope);
    assert_eq!(same.aud, old.aud);
    let narrow = refresh_at(&old, &r, "&scope=calendar-events:read&audience=calendar", NOW + 1).unwrap();
    assert_eq!(
        (narrow.scope.as_str(), narrow.aud.clone()),
        ("calendar-events:read", vec!["calendar".to_string()])
    );
    // The narrowed token cannot widen back.
    let e = refresh_at(&narrow, &r, "&scope=calendar-events:write", NOW + 2).unwrap_err();
    assert_eq!(e.code(), "invalid_scope");
    let e = refresh_at(&narrow, &r, "&audience=pubsub", NOW + 2).unwrap_err();
    assert_eq!(e.code(), "invalid_scope");
    // A scope the key holds but the old token did not: refused too.
    let e = refresh_at(&narrow, &r, "&scope=orders:read", NOW + 2).unwrap_err();
    assert_eq!(e.code(), "invalid_scope");
    // Role and claims cannot change; expires_in stays within maxTTL.
    for extra in ["&role=data-entry", "&claim.tenant=globex", "&expires_in=3601"] {
        let e = refresh_at(&old, &r, extra, NOW + 1).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{extra}");
    }
    assert_eq!(
        refresh_at(&old, &r, "&expires_in=60", NOW + 1).unwrap().exp,
        NOW + 61
    );
}

#[test]
fn refresh_drops_what_the_key_or_policy_no_longer_allow() {
    let r = rules(None, 3600);
    let old = mint(&r, "grant_type=client_credentials", NOW).unwrap();
    let narrower = ClientKey {
        scopes: &["calendar-events:read"],
        ..client("KeyIdAAAAAAA")
    };
    let body = EXCHANGE.to_owned();
    let c = refresh(
        same(&old),
        &r,
        &policy(),
        &narrower,
        &req(&body),
        NOW + 1,
        "j".into(),
    )
    .unwrap();
    assert_eq!(c.scope, "calendar-events:read");
    let e = refresh(
        same(&old),
        &r,
        &policy(),
        &narrower,
        &req(&format!("{body}&scope=calendar-events:write")),
        NOW + 1,
        "j".into(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_scope");
}

#[test]
fn refresh_is_refused_for_another_client_policy_or_a_token_without_session() {
    let r = rules(Some("^user-[0-9]+$"), 3600);
    let old = mint(&r, "grant_type=client_credentials&requested_subject=user-7", NOW).unwrap();
    let body = req(EXCHANGE);
    let try_with = |p: Presented<'_>| {
        refresh(
            p,
            &r,
            &policy(),
            &client("KeyIdAAAAAAA"),
            &body,
            NOW + 1,
            "j".into(),
        )
        .unwrap_err()
    };
    let other_client = try_with(Presented {
        same_api_key: false,
        ..same(&old)
    });
    assert_eq!(other_client.code(), "invalid_grant");
    assert!(other_client.description().contains("another client"));
    let other_policy = try_with(Presented {
        same_policy: false,
        ..same(&old)
    });
    assert_eq!(other_policy.code(), "invalid_grant");
    let mut no_session = old.clone();
    no_session.sid = None;
    assert_eq!(try_with(same(&no_session)).code(), "invalid_grant");
    // Delegation withdrawn or narrowed since: the session ends.
    let off = rules(None, 3600);
    assert_eq!(
        refresh_at(&old, &off, "", NOW + 1).unwrap_err().code(),
        "invalid_grant"
    );
    let narrowed = rules(Some("^user-[0-6]$"), 3600);
    assert_eq!(
        refresh_at(&old, &narrowed, "", NOW + 1).unwrap_err().code(),
        "invalid_grant"
    );
    // A non-delegated token whose key's subject changed.
    let own = mint(&off, "grant_type=client_credentials", NOW).unwrap();
    let renamed = ClientKey {
        subject: "someone-else",
        ..client("KeyIdAAAAAAA")
    };
    let e = refresh(same(&own), &off, &policy(), &renamed, &body, NOW + 1, "j".into()).unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
}

#[test]
fn exchange_requests_are_checked_when_parsed() {
    let ok = req(EXCHANGE);
    assert!(ok.session.exchange);
    assert!(
        !format!("{ok:?}").contains("eyJ.x.y"),
        "Debug never shows the subject token"
    );
    let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
    for body in [
        grant.to_owned(),
        format!("{grant}&subject_token=eyJ.x.y"),
        format!(
            "{grant}&subject_token=eyJ.x.y&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"
        ),
        format!("{EXCHANGE}&actor_token=x"),
        format!("{EXCHANGE}&requested_subject=user-1"),
        format!("{EXCHANGE}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Arefresh_token"),
        format!("{EXCHANGE}&subject_token=again"),
        "grant_type=client_credentials&requested_subject=a&requested_subject=b".to_owned(),
        "grant_type=client_credentials&requested_subject=".to_owned(),
    ] {
        let e = TokenRequest::parse(body.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{body}");
    }
    // An external provider's JWT (federation) is an exchange too, not a refresh.
    for kind in ["jwt", "id_token"] {
        let body = format!(
            "{grant}&subject_token=eyJ.x.y&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3A{kind}"
        );
        assert!(
            TokenRequest::parse(body.as_bytes()).unwrap().session.external(),
            "{kind}"
        );
    }
    assert!(!ok.session.external());
    assert_eq!(
        TokenRequest::parse(b"grant_type=refresh_token").unwrap_err(),
        TokenError::UnsupportedGrantType
    );
}

#[test]
fn a_refresh_keeps_a_roles_paths_and_narrows_its_permissions_with_the_scopes() {
    use crate::crd::Permission;
    let r = rules(None, 3600);
    let mut p = policy();
    p.roles.insert(
        "admin".into(),
        vec![
            Permission {
                scopes: vec!["calendar-events:read".into()],
                resources: vec!["/calendar-events/{tenant}/".into()],
            },
            Permission {
                scopes: vec!["calendar-events:write".into()],
                resources: vec!["/calendar-events/{tenant}/drafts/".into()],
            },
        ],
    );
    let request = req("grant_type=client_credentials&role=admin&claim.tenant=acme");
    let mut old = build_claims(&p, &client("KeyIdAAAAAAA"), &request, NOW, "j0".into()).unwrap();
    start(&mut old, &r, &request, |_| true, "sid-1".into(), NOW).unwrap();
    assert_eq!(old.authorization_details.len(), 2);
    let same = refresh_at(&old, &r, "", NOW + 1).unwrap();
    assert_eq!(same.authorization_details, old.authorization_details);
    // Asking for read only: the write permission goes with its scope, so
    // no detail ever holds an action beyond `scope`.
    let narrow = refresh_at(&old, &r, "&scope=calendar-events:read", NOW + 1).unwrap();
    assert_eq!(narrow.scope, "calendar-events:read");
    assert_eq!(narrow.authorization_details.len(), 1);
    assert_eq!(narrow.authorization_details[0].paths, ["/calendar-events/acme/"]);
}
