//! Unit tests of [`super`]: external tokens signed here with keys made
//! here, an injected `now`.

use super::*;
use crate::crd::{Permission, SigningAlgorithm};
use crate::token::keys;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "http://127.0.0.1:4444";

struct Provider {
    kid: String,
    alg: SigningAlgorithm,
    pem: String,
    jwk: String,
}

fn provider(alg: SigningAlgorithm) -> Provider {
    let k = keys::generate(alg).unwrap();
    let jwk = keys::public_jwk(&k.kid, alg, k.pem.as_bytes()).unwrap();
    Provider {
        kid: k.kid,
        alg,
        pem: k.pem,
        jwk,
    }
}

impl Provider {
    fn jwks(&self) -> Vec<ExternalKey> {
        parse_jwks(format!("{{\"keys\":[{}]}}", self.jwk).as_bytes()).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(keys::jwt_algorithm(self.alg));
        header.kid = Some(self.kid.clone());
        let key = keys::encoding_key(&self.kid, self.alg, self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

fn trusted() -> Trusted {
    Trusted {
        issuer: ISSUER.into(),
        audiences: vec!["latchkey".into()],
        subject_claim: "sub".into(),
        role_claim: Some("groups".into()),
        claims: [("tenant".to_string(), "org".to_string())].into(),
    }
}

fn good_claims() -> Value {
    json!({"iss": ISSUER, "sub": "user-42", "aud": ["latchkey", "other"], "exp": NOW + 300,
           "iat": NOW - 10, "groups": ["staff", "data-entry", "admin"], "org": "acme"})
}

fn policy() -> PolicyRules {
    let perm = |s: &str| Permission {
        scopes: vec![s.to_string()],
        resources: vec!["/calendar-events/{tenant}/".into()],
    };
    PolicyRules {
        issuer: "http://127.0.0.1/issuers/shop/tokens".into(),
        audiences: vec!["calendar".into()],
        allowed_scopes: ["calendar-events:read", "calendar-events:write"]
            .into_iter()
            .map(String::from)
            .collect(),
        roles: [
            ("data-entry".to_string(), vec![perm("calendar-events:write")]),
            ("admin".to_string(), vec![perm("calendar-events:read")]),
        ]
        .into(),
        custom_claims: [("tenant".to_string(), true)].into(),
        token_ttl_seconds: 900,
        max_ttl_seconds: 3600,
    }
}

fn session(max_age: i64) -> SessionRules {
    SessionRules {
        session_max_age_seconds: max_age,
        ..Default::default()
    }
}

const KEY_SCOPES: &[&str] = &["calendar-events:read", "calendar-events:write"];

fn client() -> ClientKey<'static> {
    ClientKey {
        key_id: "AbCdEfGhIjKl",
        subject: "shop/login",
        scopes: KEY_SCOPES,
        audiences: &[],
    }
}

fn check(p: &Provider, token: &str, now: i64) -> Result<Verified, ExternalInvalid> {
    let keys = p.jwks();
    verify(token, &trusted(), |kid| keys.iter().find(|k| k.kid == kid), now)
}

#[test]
fn a_good_token_verifies_and_maps_subject_role_and_tenant() {
    for alg in [
        SigningAlgorithm::RS256,
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
    ] {
        let p = provider(alg);
        let token = p.sign(&good_claims());
        assert_eq!(claimed_issuer(&token).unwrap(), ISSUER);
        assert_eq!(key_id(&token).unwrap(), p.kid);
        let v = check(&p, &token, NOW).unwrap();
        assert_eq!(v.auth_time, NOW - 10, "{alg:?}: iat without auth_time");
        let m = map(&v, &trusted(), &policy()).unwrap();
        assert_eq!(m.sub, "user-42");
        // "staff" names no role; the order of the claim is kept.
        assert_eq!(m.roles, vec!["data-entry", "admin"]);
        assert_eq!(m.claims["tenant"], "acme");
    }
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_with_leeway() {
    let p = provider(SigningAlgorithm::ES256);
    let token = p.sign(&good_claims());
    assert!(check(&p, &token, NOW + 300 + CLOCK_LEEWAY).is_ok());
    assert_eq!(
        check(&p, &token, NOW + 301 + CLOCK_LEEWAY),
        Err(ExternalInvalid::Expired)
    );
    let mut c = good_claims();
    c["nbf"] = json!(NOW + 120);
    assert_eq!(check(&p, &p.sign(&c), NOW), Err(ExternalInvalid::NotYetValid));
    let mut c = good_claims();
    c["iat"] = json!(NOW + 120);
    assert_eq!(check(&p, &p.sign(&c), NOW), Err(ExternalInvalid::NotYetValid));
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(&p, &p.sign(&c), NOW), Err(ExternalInvalid::Malformed));
}

#[test]
fn a_foreign_audience_or_a_wrong_issuer_is_refused() {
    let p = provider(SigningAlgorithm::ES256);
    for aud in [
        json!("other"),
        json!(["a", "b"]),
        json!([]),
        json!(null),
        json!(7),
    ] {
        let mut c = good_claims();
        c["aud"] = aud.clone();
        assert_eq!(
            check(&p, &p.sign(&c), NOW),
            Err(ExternalInvalid::Audience),
            "{aud}"
        );
    }
    let mut c = good_claims();
    c["aud"] = json!("latchkey");
    assert!(check(&p, &p.sign(&c), NOW).is_ok(), "aud as one string");
    for iss in [
        "http://127.0.0.1:4444/",
        "http://127.0.0.1:4445",
        "https://evil.example",
    ] {
        let mut c = good_claims();
        c["iss"] = json!(iss);
        assert_eq!(
            check(&p, &p.sign(&c), NOW),
            Err(ExternalInvalid::UntrustedIssuer),
            "{iss}"
        );
    }
}

#[test]
fn alg_confusion_is_refused() {
    let p = provider(SigningAlgorithm::RS256);
    let payload = B64.encode(good_claims().to_string());
    // alg none, with and without a signature.
    let none = format!(
        "{}.{payload}.",
        B64.encode(json!({"alg": "none", "kid": p.kid}).to_string())
    );
    assert_eq!(check(&p, &none, NOW), Err(ExternalInvalid::Malformed));
    // HS256 keyed with the public key (as a JWK and as its modulus).
    for secret in [
        p.jwk.clone(),
        serde_json::from_str::<Value>(&p.jwk).unwrap()["n"].to_string(),
    ] {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(p.kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &good_claims(),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&p, &forged, NOW), Err(ExternalInvalid::Algorithm));
    }
    // Another algorithm of the same family is not the key's either.
    let mut header = jsonwebtoken::Header::new(Algorithm::PS256);
    header.kid = Some(p.kid.clone());
    let key = keys::encoding_key(&p.kid, p.alg, p.pem.as_bytes()).unwrap();
    let ps = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    assert_eq!(check(&p, &ps, NOW), Err(ExternalInvalid::Algorithm));
    // A signature of another key under the same kid.
    let other = provider(SigningAlgorithm::RS256);
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some(p.kid.clone());
    let key = keys::encoding_key(&other.kid, other.alg, other.pem.as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    assert_eq!(check(&p, &forged, NOW), Err(ExternalInvalid::Signature));
}

#[test]
fn symmetric_encryption_and_mismatched_keys_are_dropped_from_the_jwks() {
    let rsa = provider(SigningAlgorithm::RS256);
    let mut ec: Value = serde_json::from_str(&provider(SigningAlgorithm::ES256).jwk).unwrap();
    let mut enc: Value = serde_json::from_str(&rsa.jwk).unwrap();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    ec["alg"] = json!("RS256");
    let mut no_kid: Value = serde_json::from_str(&rsa.jwk).unwrap();
    no_kid.as_object_mut().unwrap().remove("kid");
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        enc, ec, no_kid, {"kty": "weird", "kid": "x"},
        serde_json::from_str::<Value>(&rsa.jwk).unwrap(),
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        (keys[0].kid.as_str(), keys[0].algorithm),
        (rsa.kid.as_str(), Algorithm::RS256)
    );
    // A JWK without alg gets the one its type implies.
    let mut bare: Value = serde_json::from_str(&rsa.jwk).unwrap();
    bare.as_object_mut().unwrap().remove("alg");
    let keys = parse_jwks(json!({"keys": [bare]}).to_string().as_bytes()).unwrap();
    assert_eq!(keys[0].algorithm, Algorithm::RS256);
    assert_eq!(parse_jwks(b"[]").unwrap_err(), JwksError::Malformed);
    assert_eq!(
        parse_jwks(&vec![b' '; MAX_JWKS_BYTES + 1]).unwrap_err(),
        JwksError::TooLarge
    );
}

#[test]
fn an_unknown_kid_or_a_crit_header_is_refused() {
    let p = provider(SigningAlgorithm::ES256);
    let other = provider(SigningAlgorithm::ES256);
    let token = other.sign(&good_claims());
    assert_eq!(check(&p, &token, NOW), Err(ExternalInvalid::UnknownKey));
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(p.kid.clone());
    header.crit = Some(vec!["exp".into()]);
    let key = keys::encoding_key(&p.kid, p.alg, p.pem.as_bytes()).unwrap();
    let crit = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    assert_eq!(check(&p, &crit, NOW), Err(ExternalInvalid::Critical));
}

#[test]
fn mapping_refuses_a_missing_subject_a_token_without_a_role_and_odd_claims() {
    let p = provider(SigningAlgorithm::ES256);
    let mapped = |c: Value| map(&check(&p, &p.sign(&c), NOW).unwrap(), &trusted(), &policy());
    let mut c = good_claims();
    c["groups"] = json!(["staff"]);
    assert_eq!(mapped(c), Err(ExternalInvalid::NoRole("groups".into())));
    let mut c = good_claims();
    c["groups"] = json!("admin");
    assert_eq!(mapped(c).unwrap().roles, vec!["admin"]);
    for sub in [
        json!(""),
        json!(42),
        json!("a\nb"),
        json!("x".repeat(MAX_SUBJECT_LEN + 1)),
    ] {
        let mut c = good_claims();
        c["sub"] = sub;
        assert_eq!(mapped(c), Err(ExternalInvalid::Claim("sub".into())));
    }
    let mut c = good_claims();
    c["org"] = json!(["acme", "globex"]);
    assert_eq!(mapped(c), Err(ExternalInvalid::Claim("org".into())));
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("org");
    assert!(mapped(c).unwrap().claims.is_empty());
}

const BODY: &str = "grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=eyJ.e.x\
                    &subject_token_type=urn:ietf:params:oauth:token-type:jwt";

fn exchanged(claims: Value, body: &str, max_age: i64, acting: bool) -> Result<AccessClaims, TokenError> {
    let p = provider(SigningAlgorithm::ES256);
    let v = check(&p, &p.sign(&claims), NOW).unwrap();
    let m = map(&v, &trusted(), &policy()).unwrap();
    let request = TokenRequest::parse(body.as_bytes()).unwrap();
    exchange(
        &v,
        &m,
        &policy(),
        &session(max_age),
        &client(),
        acting,
        &request,
        |sub: &str| sub != "not-granted",
        NOW,
        "sid-1".into(),
        "jti-1".into(),
    )
}

#[test]
fn the_exchanged_token_names_the_external_subject_with_act_role_and_tenant() {
    let body = BODY;
    let c = exchanged(good_claims(), body, 8 * 3600, true).unwrap();
    assert_eq!(c.sub, "user-42");
    assert_eq!(
        c.act,
        Some(Actor {
            sub: "shop/login".into()
        })
    );
    assert_eq!(c.role.as_deref(), Some("data-entry"));
    assert_eq!(c.custom["tenant"], "acme");
    assert_eq!(c.scope, "calendar-events:write");
    assert_eq!(c.authorization_details.len(), 1);
    assert_eq!(c.authorization_details[0].paths, vec!["/calendar-events/acme/"]);
    assert_eq!((c.sid.as_deref(), c.auth_time), (Some("sid-1"), Some(NOW - 10)));
    // The session names its provider: a refresh is judged by federation's
    // rules, not delegation's (session::refresh).
    assert_eq!(c.idp.as_deref(), Some(ISSUER));
    assert_eq!(c.exp, NOW + 900);
    assert_eq!(c.client_id, "AbCdEfGhIjKl");
    let c = exchanged(good_claims(), body, 8 * 3600, false).unwrap();
    assert_eq!(c.act, None);
    // role= picks among the mapped roles, and only among them.
    let c = exchanged(good_claims(), &format!("{body}&role=admin"), 3600, true).unwrap();
    assert_eq!(c.role.as_deref(), Some("admin"));
    let mut only = good_claims();
    only["groups"] = json!(["data-entry"]);
    let e = exchanged(only, &format!("{body}&role=admin"), 3600, true).unwrap_err();
    assert_eq!(e.code(), "invalid_scope");
    // The tenant comes from the provider, never from the request.
    let e = exchanged(good_claims(), &format!("{body}&claim.tenant=globex"), 3600, true).unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    // A required custom claim missing from the external token.
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("org");
    let e = exchanged(c, body, 3600, true).unwrap_err();
    assert!(
        e.description().contains("claim.tenant is required"),
        "{}",
        e.description()
    );
}

#[test]
fn a_subject_the_namespace_may_not_present_is_refused() {
    let mut c = good_claims();
    c["sub"] = json!("not-granted");
    let e = exchanged(c, BODY, 3600, true).unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    assert!(
        e.description().contains("CredentialGrants"),
        "{}",
        e.description()
    );
}

#[test]
fn the_session_bound_caps_exp_and_ends_the_exchange() {
    let body = BODY;
    // Session began 50 minutes ago (auth_time wins over iat); 1 h bound.
    let mut c = good_claims();
    c["auth_time"] = json!(NOW - 3000);
    let t = exchanged(c.clone(), body, 3600, true).unwrap();
    assert_eq!((t.auth_time, t.exp), (Some(NOW - 3000), NOW + 600));
    // Not bound by the external token's own exp (5 minutes).
    let t = exchanged(good_claims(), body, 3600, true).unwrap();
    assert_eq!(t.exp, NOW + 900);
    // Over: refused as a grant that is no longer valid.
    let e = exchanged(c, body, 3000, true).unwrap_err();
    assert_eq!(e.code(), "invalid_grant");
    // A future auth_time is taken as now.
    let mut c = good_claims();
    c["auth_time"] = json!(NOW + 20);
    let t = exchanged(c, body, 3600, true).unwrap();
    assert_eq!(t.auth_time, Some(NOW));
}

#[test]
fn jwks_refetches_are_bounded() {
    // Never fetched: now; then not again for an unknown kid within the bound.
    assert!(should_fetch(None, None, false, NOW));
    assert!(
        !should_fetch(None, Some(NOW - 3), false, NOW),
        "a failed fetch is not retried at once"
    );
    assert!(
        should_fetch(Some(NOW - 20), Some(NOW - 20), false, NOW),
        "unknown kid"
    );
    assert!(
        !should_fetch(Some(NOW - 5), Some(NOW - 5), false, NOW),
        "unknown kid, just fetched"
    );
    assert!(
        !should_fetch(Some(NOW - 20), Some(NOW - 20), true, NOW),
        "known kid, fresh set"
    );
    let old = NOW - MAX_KEYS_AGE_SECONDS;
    assert!(should_fetch(Some(old), Some(old), true, NOW), "old set");
    // However many unknown kids arrive in a minute, at most 6 fetches.
    let (mut fetched, mut attempt, mut count) = (None, None, 0);
    for t in 0..60 {
        if should_fetch(fetched, attempt, false, NOW + t) {
            (fetched, attempt, count) = (Some(NOW + t), Some(NOW + t), count + 1);
        }
    }
    assert_eq!(count, 60 / MIN_REFETCH_SECONDS);
}

#[test]
fn keys_are_fetched_over_https_or_from_loopback_only() {
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:4444/.well-known/jwks.json",
        "http://localhost:4444/x",
        "http://[::1]:4444/x",
    ] {
        assert!(fetchable_url(ok), "{ok}");
    }
    for bad in [
        "http://idp.example.com/jwks",
        "http://10.0.0.1/jwks",
        "http://127.0.0.1.evil.example/jwks",
        "http://user@127.0.0.1/jwks",
        "ftp://127.0.0.1/jwks",
        "https:///jwks",
        "https://user@idp.example.com/jwks",
        "https://idp.example.com/a b",
    ] {
        assert!(!fetchable_url(bad), "{bad}");
    }
}
