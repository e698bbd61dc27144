//! The pure plan of one TokenPolicy reconcile: from the policy, its
//! signing-key Secret, its JWKS ConfigMap and the other policies' issuers
//! (all fetched by the caller) to the writes to make, in order: the
//! Secret's private keys, the status with its phase, the ConfigMap's JWKS,
//! and the Events. No client; the caller passes `now` and the key generator.

use crate::conditions::Phase;
use crate::controller::plan::PlannedEvent;
use crate::crd::{SigningAlgorithm, TokenPolicy, TokenPolicyStatus};
use crate::meta::{PEM_SUFFIX, ROTATE_ANNOTATION};
use crate::time::rfc3339;
use crate::token::jwks::jwks_json;
use crate::token::keys::{self, GeneratedKey, KeyError};
use crate::token::schedule::{self, GenerateCause, PrivateKeyInfo, Settings};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reason of `Stalled=True` while another policy claims the same issuer path.
pub const ISSUER_CONFLICT: &str = "IssuerConflict";
/// How often a policy in conflict looks again (a deletion on the other side
/// may reach the store after the event that woke this one).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(10);
/// How often a stalled policy is looked at when nothing changes.
const STALLED_RECHECK: Duration = crate::controller::RESYNC;

/// kid → (PKCS#8 PEM, what it is).
pub type PrivateKeys = BTreeMap<String, (Vec<u8>, PrivateKeyInfo)>;

/// What the reconcile read before deciding.
pub struct Observed<'a> {
    pub policy: &'a TokenPolicy,
    /// The signing-key Secret `<policy>-signing-keys`, if it exists.
    pub secret: Option<&'a Secret>,
    /// The JWKS the ConfigMap `<policy>-jwks` holds now.
    pub jwks_in_config_map: Option<&'a str>,
    /// Other policies (`namespace/name`) whose issuer has this one's path.
    pub issuer_conflicts: &'a [String],
    /// The base of default issuers (`--issuer-base-url`).
    pub issuer_base_url: &'a str,
    pub now: Timestamp,
}

/// The writes of one reconcile, in the order they are made.
#[derive(Debug)]
pub struct PolicyPlan {
    /// 1. The Secret's data (`<kid>.pem` → PEM) when it must be applied.
    pub secret_data: Option<BTreeMap<String, Vec<u8>>>,
    /// 2. The status (without conditions: `phase` gives them).
    pub status: TokenPolicyStatus,
    pub phase: Phase,
    /// 3. The ConfigMap's JWKS when it must be applied.
    pub jwks: Option<String>,
    /// 4. Events, once the status is written.
    pub events: Vec<PlannedEvent>,
    /// When to look again.
    pub requeue: Duration,
}

impl PolicyPlan {
    /// Only a status with `phase`: nothing else is written.
    fn stalled(status: TokenPolicyStatus, phase: Phase, requeue: Duration) -> Self {
        Self {
            secret_data: None,
            status,
            phase,
            jwks: None,
            events: Vec::new(),
            requeue,
        }
    }
}

/// Whether `meta` has a controller owner reference to the object with `uid`.
pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Reads the Secret's private keys: kid → (PEM, algorithm, public JWK).
/// Entries that are not a readable key are skipped (and reported).
pub fn read_private_keys(
    secret: Option<&Secret>,
    listed: &BTreeMap<String, SigningAlgorithm>,
) -> (PrivateKeys, Vec<String>) {
    let mut keys = BTreeMap::new();
    let mut unreadable = Vec::new();
    let data = secret.and_then(|s| s.data.as_ref());
    for (name, value) in data.into_iter().flatten() {
        let Some(kid) = name.strip_suffix(PEM_SUFFIX) else {
            continue;
        };
        // The algorithm status lists, else whichever reads the key.
        let candidates: Vec<SigningAlgorithm> = match listed.get(kid) {
            Some(alg) => vec![*alg],
            None => vec![
                SigningAlgorithm::ES256,
                SigningAlgorithm::EdDSA,
                SigningAlgorithm::RS256,
            ],
        };
        let found = candidates
            .into_iter()
            .find_map(|alg| keys::public_jwk(kid, alg, &value.0).ok().map(|jwk| (alg, jwk)));
        match found {
            Some((algorithm, public_jwk)) => {
                keys.insert(
                    kid.to_owned(),
                    (
                        value.0.clone(),
                        PrivateKeyInfo {
                            algorithm,
                            public_jwk,
                        },
                    ),
                );
            }
            None => unreadable.push(kid.to_owned()),
        }
    }
    (keys, unreadable)
}

/// Decides the whole reconcile. `generate` makes a new key pair when the
/// schedule asks for one (the only effect; its failure fails the reconcile).
pub fn plan(
    observed: &Observed<'_>,
    generate: impl FnOnce(SigningAlgorithm) -> Result<GeneratedKey, KeyError>,
) -> Result<PolicyPlan, KeyError> {
    let Observed {
        policy, secret, now, ..
    } = *observed;
    let status = policy.status.clone().unwrap_or_default();
    let secret_name = policy.signing_secret_name();
    let uid = policy.metadata.uid.as_deref().unwrap_or_default();
    if let Some(s) = secret
        && !owned_by(&s.metadata, uid)
    {
        let phase = Phase::stalled(
            "SecretConflict",
            format!(
                "Secret {secret_name} exists and is not owned by this TokenPolicy; delete or rename it, \
                 or give the TokenPolicy another name"
            ),
        );
        return Ok(PolicyPlan::stalled(status, phase, STALLED_RECHECK));
    }
    let settings = match Settings::of(&policy.spec) {
        Ok(s) => s,
        Err(err) => {
            let phase = Phase::stalled("InvalidSpec", err.to_string());
            return Ok(PolicyPlan::stalled(status, phase, STALLED_RECHECK));
        }
    };
    // An issuer path is one policy's: while another claims it, neither is
    // served (the server refuses both) and both say so.
    if !observed.issuer_conflicts.is_empty() {
        let phase = Phase::stalled(
            ISSUER_CONFLICT,
            format!(
                "the issuer {} has the same path as the issuer of TokenPolicy {}; latchkey serves \
                 discovery, JWKS and tokens by that path, so it serves neither policy until only one \
                 claims it: delete one of them (spec.issuer cannot change; re-create it with an issuer of its own)",
                policy.issuer(observed.issuer_base_url),
                observed.issuer_conflicts.join(", ")
            ),
        );
        return Ok(PolicyPlan::stalled(status, phase, CONFLICT_RECHECK));
    }

    let listed: BTreeMap<String, SigningAlgorithm> =
        status.keys.iter().map(|k| (k.kid.clone(), k.algorithm)).collect();
    let (private, unreadable) = read_private_keys(secret, &listed);
    let infos: BTreeMap<String, PrivateKeyInfo> = private
        .iter()
        .map(|(k, (_, info))| (k.clone(), info.clone()))
        .collect();
    let request = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotate_requested = request.is_some() && request != status.last_rotate_request;
    let key_plan = schedule::plan(&status.keys, &infos, &settings, rotate_requested, now);

    let mut keys_after = key_plan.keys.clone();
    let mut pems: BTreeMap<String, Vec<u8>> = private
        .into_iter()
        .filter(|(kid, _)| !key_plan.removed.contains(kid))
        .map(|(kid, (pem, _))| (kid, pem))
        .collect();
    let mut events = Vec::new();
    if let Some(new) = &key_plan.generate {
        let generated = generate(new.algorithm)?;
        let jwk = keys::public_jwk(&generated.kid, new.algorithm, generated.pem.as_bytes())?;
        schedule::add_key(&mut keys_after, new, generated.kid.clone(), jwk, &settings);
        events.push(published_event(new, &generated.kid));
        pems.insert(generated.kid.clone(), generated.pem.into_bytes());
    }
    events.extend(key_plan.adopted.iter().map(|kid| PlannedEvent {
        warning: false,
        reason: "SigningKeyPublished",
        message: format!("published key {kid}, found in the Secret but not yet in status"),
    }));
    events.extend(key_plan.lost.iter().map(|kid| PlannedEvent {
        warning: true,
        reason: "SigningKeyLost",
        message: format!(
            "the private key of {kid} is missing from Secret {secret_name}; it stops signing now \
             and stays published until its tokens expire"
        ),
    }));
    events.extend(key_plan.removed.iter().map(|kid| PlannedEvent {
        warning: false,
        reason: "SigningKeyRemoved",
        message: format!("removed key {kid}: every token it signed has expired"),
    }));

    // 1. The Secret: private keys first, applied only when they differ.
    let have: BTreeMap<String, Vec<u8>> = secret
        .and_then(|s| s.data.as_ref())
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let want: BTreeMap<String, Vec<u8>> = pems
        .iter()
        .map(|(kid, pem)| (format!("{kid}{PEM_SUFFIX}"), pem.clone()))
        .collect();
    let secret_data = (secret.is_none() || have != want).then_some(want);

    // 2. Status: publishes new keys, names the signing key.
    let mut next = status.clone();
    next.keys = keys_after;
    next.issuer = Some(policy.issuer(observed.issuer_base_url));
    next.signing_secret_name = Some(secret_name.clone());
    next.jwks_config_map_name = Some(policy.jwks_config_map_name());
    let signing = schedule::signing_key(&next.keys, now);
    next.active_key_id = signing.map(|k| k.kid.clone());
    next.algorithm = signing.map(|k| k.algorithm);
    next.last_rotated_at = next
        .keys
        .iter()
        .map(|k| k.published_at.clone())
        .max_by_key(|t| t.0);
    next.next_rotation_at = schedule::next_rotation_at(&next.keys, &settings, now).map(Time);
    if key_plan.answers_request {
        next.last_rotate_request = request;
    }
    let phase = match (signing, unreadable.is_empty()) {
        (Some(k), true) => Phase::ready(
            "KeysPublished",
            format!("key {} signs; {} key(s) published", k.kid, next.keys.len()),
        ),
        (Some(_), false) => Phase::ready(
            "UnreadableKeysIgnored",
            format!(
                "Secret {secret_name} holds entries that are not readable private keys ({}); they are ignored",
                unreadable.join(", ")
            ),
        ),
        (None, _) => Phase::reconciling("WaitingForKey", "no key signs yet"),
    };

    // 3. The JWKS ConfigMap, for consumers who read it rather than the HTTP endpoint.
    let jwks = jwks_json(&next);
    let jwks = (observed.jwks_in_config_map != Some(jwks.as_str())).then_some(jwks);
    let deadline = schedule::next_deadline(&next.keys, &settings, now);
    Ok(PolicyPlan {
        secret_data,
        status: next,
        phase,
        jwks,
        events,
        requeue: crate::controller::rotation::requeue_after(deadline, now),
    })
}

fn published_event(new: &schedule::NewKey, kid: &str) -> PlannedEvent {
    let why = match new.cause {
        GenerateCause::First => "first signing key",
        GenerateCause::Scheduled => "scheduled rotation",
        GenerateCause::Requested => "rotation requested by the latchkey.dev/rotate annotation",
        GenerateCause::Algorithm => "spec.algorithm changed",
        GenerateCause::Lost => "the signing key's private key was missing",
    };
    PlannedEvent {
        warning: new.cause == GenerateCause::Lost,
        reason: "SigningKeyPublished",
        message: format!(
            "published {} key {kid} ({why}); it signs from {}",
            new.algorithm.as_str(),
            rfc3339(new.active_from)
        ),
    }
}

#[cfg(test)]
mod tests;
