//! Unit tests of the TokenPolicy plan: no cluster, a fixed clock, real keys.

use super::*;
use crate::crd::{TokenPolicySpec, TokenPolicyStatus};
use crate::fixtures::t;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

const BASE: &str = "https://auth.example.com";

fn policy() -> TokenPolicy {
    let mut p = TokenPolicy::new(
        "login",
        TokenPolicySpec {
            audiences: vec!["orders".into()],
            allowed_scopes: vec!["orders:read".into()],
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("shop".into());
    p.metadata.uid = Some("uid-1".into());
    p.metadata.generation = Some(1);
    p
}

fn observed<'a>(policy: &'a TokenPolicy, secret: Option<&'a Secret>, now: Timestamp) -> Observed<'a> {
    Observed {
        policy,
        secret,
        jwks_in_config_map: None,
        issuer_conflicts: &[],
        issuer_base_url: BASE,
        now,
    }
}

fn reason(phase: &Phase) -> &str {
    match phase {
        Phase::Ready { reason, .. } | Phase::Reconciling { reason, .. } | Phase::Stalled { reason, .. } => {
            reason
        }
    }
}

fn message(phase: &Phase) -> &str {
    match phase {
        Phase::Ready { message, .. }
        | Phase::Reconciling { message, .. }
        | Phase::Stalled { message, .. } => message,
    }
}

fn no_generation(_: SigningAlgorithm) -> Result<GeneratedKey, KeyError> {
    panic!("the plan generated a key it should not have")
}

/// The Secret the controller would hold after applying `data`.
fn secret_with(policy: &TokenPolicy, data: &BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(policy.signing_secret_name()),
            owner_references: Some(vec![OwnerReference {
                uid: "uid-1".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// One reconcile, then the object as the API server would have it.
fn reconcile_once(policy: &mut TokenPolicy, secret: &mut Option<Secret>, now: Timestamp) -> PolicyPlan {
    let plan = plan(&observed(policy, secret.as_ref(), now), keys::generate).unwrap();
    if let Some(data) = &plan.secret_data {
        *secret = Some(secret_with(policy, data));
    }
    policy.status = Some(plan.status.clone());
    plan
}

#[test]
fn the_first_reconcile_writes_a_key_to_the_secret_before_status_lists_it() {
    let p = policy();
    let plan = plan(&observed(&p, None, t(0)), keys::generate).unwrap();
    let data = plan.secret_data.as_ref().expect("the Secret is written");
    assert_eq!(data.len(), 1);
    let kid = plan.status.keys[0].kid.clone();
    assert!(data.contains_key(&format!("{kid}.pem")));
    assert_eq!(plan.status.active_key_id.as_deref(), Some(kid.as_str()));
    assert_eq!(
        plan.status.issuer.as_deref(),
        Some("https://auth.example.com/issuers/shop/login")
    );
    assert_eq!(reason(&plan.phase), "KeysPublished");
    let jwks: serde_json::Value = serde_json::from_str(plan.jwks.as_deref().unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].reason, "SigningKeyPublished");
    assert!(
        !plan.events[0].message.contains("PRIVATE"),
        "no key material in Events"
    );
}

#[test]
fn a_second_reconcile_with_nothing_due_writes_nothing() {
    let mut p = policy();
    let mut secret = None;
    let first = reconcile_once(&mut p, &mut secret, t(0));
    let jwks = first.jwks.clone().unwrap();
    let again = plan(
        &Observed {
            jwks_in_config_map: Some(&jwks),
            ..observed(&p, secret.as_ref(), t(60))
        },
        no_generation,
    )
    .unwrap();
    assert!(again.secret_data.is_none(), "the Secret already holds the keys");
    assert!(again.jwks.is_none(), "the ConfigMap already holds the JWKS");
    assert_eq!(Some(&again.status), p.status.as_ref(), "status unchanged");
    assert!(again.events.is_empty());
    assert!(again.requeue > Duration::ZERO);
}

#[test]
fn a_rotate_request_publishes_a_second_key_and_is_honoured_once() {
    let mut p = policy();
    let mut secret = None;
    reconcile_once(&mut p, &mut secret, t(0));
    p.metadata
        .annotations
        .get_or_insert_default()
        .insert(ROTATE_ANNOTATION.into(), "now-1".into());
    let rotated = reconcile_once(&mut p, &mut secret, t(100));
    assert_eq!(
        rotated.status.keys.len(),
        2,
        "the new key is published next to the old one"
    );
    assert_eq!(rotated.status.last_rotate_request.as_deref(), Some("now-1"));
    assert_eq!(secret.as_ref().unwrap().data.as_ref().unwrap().len(), 2);
    let again = plan(&observed(&p, secret.as_ref(), t(101)), no_generation).unwrap();
    assert_eq!(
        again.status.keys.len(),
        2,
        "the same request is not honoured twice"
    );
}

#[test]
fn a_secret_of_that_name_owned_by_someone_else_stalls_and_is_left_alone() {
    let p = policy();
    let mut foreign = secret_with(&p, &BTreeMap::new());
    foreign.metadata.owner_references = None;
    let plan = plan(&observed(&p, Some(&foreign), t(0)), no_generation).unwrap();
    assert!(matches!(plan.phase, Phase::Stalled { .. }));
    assert_eq!(reason(&plan.phase), "SecretConflict");
    assert!(message(&plan.phase).contains("login-signing-keys"));
    assert!(plan.secret_data.is_none() && plan.jwks.is_none() && plan.events.is_empty());
}

#[test]
fn an_issuer_claimed_twice_stalls_both_and_writes_nothing_else() {
    let p = policy();
    let others = ["attacker/login".to_string()];
    let plan = plan(
        &Observed {
            issuer_conflicts: &others,
            ..observed(&p, None, t(0))
        },
        no_generation,
    )
    .unwrap();
    assert!(matches!(plan.phase, Phase::Stalled { .. }));
    assert_eq!(reason(&plan.phase), ISSUER_CONFLICT);
    assert!(
        message(&plan.phase).contains("attacker/login"),
        "{}",
        message(&plan.phase)
    );
    assert!(plan.secret_data.is_none() && plan.jwks.is_none());
    assert_eq!(plan.requeue, CONFLICT_RECHECK);
}

#[test]
fn an_invalid_spec_stalls_with_what_is_wrong() {
    let mut p = policy();
    p.spec.token_ttl = Some("15 minutes".into());
    let plan = plan(&observed(&p, None, t(0)), no_generation).unwrap();
    assert_eq!(reason(&plan.phase), "InvalidSpec");
    assert!(
        message(&plan.phase).contains("tokenTTL"),
        "{}",
        message(&plan.phase)
    );
}

#[test]
fn a_failed_generation_fails_the_reconcile_and_writes_nothing() {
    let p = policy();
    let err = plan(&observed(&p, None, t(0)), |alg| {
        Err(KeyError::Generate(alg.as_str()))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "could not generate a ES256 signing key");
}

#[test]
fn a_lost_private_key_is_replaced_at_once_with_a_warning() {
    let mut p = policy();
    let mut secret = None;
    reconcile_once(&mut p, &mut secret, t(0));
    let emptied = secret_with(&p, &BTreeMap::new());
    let plan = plan(&observed(&p, Some(&emptied), t(10)), keys::generate).unwrap();
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == "SigningKeyLost" && e.warning)
    );
    let new_kid = plan.status.active_key_id.clone().unwrap();
    assert_ne!(
        Some(new_kid.as_str()),
        p.status.as_ref().unwrap().keys[0].kid.as_str().into()
    );
    assert!(plan.secret_data.unwrap().contains_key(&format!("{new_kid}.pem")));
}

#[test]
fn unreadable_entries_in_the_secret_are_named_and_ignored() {
    let mut p = policy();
    let mut secret = None;
    reconcile_once(&mut p, &mut secret, t(0));
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .as_ref()
        .unwrap()
        .data
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    data.insert("garbage.pem".into(), b"not a key".to_vec());
    let with_garbage = secret_with(&p, &data);
    let plan = plan(&observed(&p, Some(&with_garbage), t(10)), no_generation).unwrap();
    assert_eq!(reason(&plan.phase), "UnreadableKeysIgnored");
    assert!(message(&plan.phase).contains("garbage"));
}

#[test]
fn status_keeps_fields_the_plan_does_not_own() {
    let mut p = policy();
    p.status = Some(TokenPolicyStatus {
        observed_generation: Some(1),
        ..Default::default()
    });
    let plan = plan(&observed(&p, None, t(0)), keys::generate).unwrap();
    assert_eq!(plan.status.observed_generation, Some(1));
}
