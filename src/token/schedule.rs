//! The signing-key schedule of a TokenPolicy, pure (the caller passes `now`).
//!
//! A key goes through: **published** (listed in status and so in the JWKS)
//! → **active** from `activeFrom` (the newest key whose `activeFrom` has
//! passed signs) → **retired** at `retiresAt` (the next key's `activeFrom`)
//! → **removed** after `removeAfter` = `retiresAt` + the longest `maxTTL`
//! seen while it signed + [`LEEWAY`], when no token it signed can still be
//! unexpired.
//!
//! Decisions:
//! - A new key is published `prePublish` before it signs, so verifiers'
//!   JWKS caches hold it first; the very first key (nothing signs yet) and a
//!   key replacing a lost one sign at once.
//! - Rotation is due `rotationInterval` after the signing key became active
//!   (minus `prePublish`, so that the switch itself happens on time); after
//!   downtime there is one new key, not one per missed interval; at most one
//!   key waits to become active; a clock that goes backwards never produces
//!   a key (a waiting key already exists, or the signing key is not due).
//! - A rotate-now request (`latchkey.dev/rotate`, a new value) publishes a
//!   new key at once (it signs after `prePublish`); a request that arrives
//!   while a key is already waiting is answered by that key.
//! - Crash safety: the controller writes the Secret (private keys) first,
//!   then status, then the JWKS ConfigMap. A private key the Secret holds but
//!   status does not list is a key whose status write was lost: it is
//!   adopted (published now), never regenerated. A listed key whose private
//!   key is gone cannot sign: it is retired now (it stays published until its
//!   tokens expire) and a replacement signs at once.

use crate::crd::{SigningAlgorithm, SigningKeyRecord, TokenPolicySpec};
use crate::time::{DurationError, parse_duration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;

/// Added to `maxTTL` before a retired key leaves the JWKS (clock skew, and
/// the verifier's own leeway).
pub const LEEWAY: SignedDuration = SignedDuration::from_secs(60);
pub const DEFAULT_ROTATION_INTERVAL: SignedDuration = SignedDuration::from_hours(720);
pub const DEFAULT_PRE_PUBLISH: SignedDuration = SignedDuration::from_mins(10);
pub const DEFAULT_TOKEN_TTL: SignedDuration = SignedDuration::from_mins(15);
pub const DEFAULT_MAX_TTL: SignedDuration = SignedDuration::from_hours(1);

/// A TokenPolicy's durations and algorithm, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub algorithm: SigningAlgorithm,
    pub rotation_interval: SignedDuration,
    pub pre_publish: SignedDuration,
    pub token_ttl: SignedDuration,
    pub max_ttl: SignedDuration,
}

impl Settings {
    pub fn of(spec: &TokenPolicySpec) -> Result<Self, DurationError> {
        let keys = spec.signing_keys.as_ref();
        let parse = |field, value: Option<&String>, default| match value {
            Some(v) => parse_duration(field, v),
            None => Ok(default),
        };
        let max_ttl = parse("spec.maxTTL", spec.max_ttl.as_ref(), DEFAULT_MAX_TTL)?;
        Ok(Self {
            algorithm: spec.algorithm.unwrap_or_default(),
            rotation_interval: parse(
                "spec.signingKeys.rotationInterval",
                keys.and_then(|k| k.rotation_interval.as_ref()),
                DEFAULT_ROTATION_INTERVAL,
            )?,
            pre_publish: parse(
                "spec.signingKeys.prePublish",
                keys.and_then(|k| k.pre_publish.as_ref()),
                DEFAULT_PRE_PUBLISH,
            )?,
            token_ttl: parse(
                "spec.tokenTTL",
                spec.token_ttl.as_ref(),
                DEFAULT_TOKEN_TTL.min(max_ttl),
            )?,
            max_ttl,
        })
    }
}

/// What the Secret holds for one kid: its algorithm and public JWK (derived
/// from the private key by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateKeyInfo {
    pub algorithm: SigningAlgorithm,
    pub public_jwk: String,
}

/// Why a key is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateCause {
    /// No key yet.
    First,
    /// The signing key's interval is over.
    Scheduled,
    /// A rotate-now request.
    Requested,
    /// `spec.algorithm` changed.
    Algorithm,
    /// The signing key's private key is gone.
    Lost,
}

/// A key to generate, and when it is published and signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKey {
    pub cause: GenerateCause,
    pub algorithm: SigningAlgorithm,
    pub published_at: Timestamp,
    pub active_from: Timestamp,
}

/// The outcome of one look at a policy's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPlan {
    /// Status keys after this reconcile, oldest first (without the key to
    /// generate: [`add_key`] puts it in).
    pub keys: Vec<SigningKeyRecord>,
    /// Kids adopted from the Secret (their status write had been lost).
    pub adopted: Vec<String>,
    /// Kids whose private key is gone while they could still sign.
    pub lost: Vec<String>,
    /// Kids removed (every token they signed has expired).
    pub removed: Vec<String>,
    pub generate: Option<NewKey>,
    /// Whether a pending rotate-now request is answered by this plan.
    pub answers_request: bool,
}

fn ts(t: &Time) -> Timestamp {
    t.0
}

fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(t)
}

/// The key that signs at `now`: the newest whose `activeFrom` has passed and
/// that is not retired.
pub fn signing_key(keys: &[SigningKeyRecord], now: Timestamp) -> Option<&SigningKeyRecord> {
    keys.iter()
        .filter(|k| ts(&k.active_from) <= now && k.retires_at.as_ref().is_none_or(|r| ts(r) > now))
        .max_by_key(|k| ts(&k.active_from))
}

/// A key published but not yet signing.
pub fn waiting_key(keys: &[SigningKeyRecord], now: Timestamp) -> Option<&SigningKeyRecord> {
    keys.iter().find(|k| ts(&k.active_from) > now)
}

/// When the key that signs now is due to be replaced (the next key then
/// signs): `activeFrom + rotationInterval`, or the waiting key's `activeFrom`.
pub fn next_rotation_at(keys: &[SigningKeyRecord], settings: &Settings, now: Timestamp) -> Option<Timestamp> {
    if let Some(waiting) = waiting_key(keys, now) {
        return Some(ts(&waiting.active_from));
    }
    signing_key(keys, now).map(|k| plus(ts(&k.active_from), settings.rotation_interval))
}

/// Computes the next state of a policy's keys.
///
/// `private` lists what the Secret holds; `rotate_requested` is true while a
/// `latchkey.dev/rotate` value has not been honoured yet.
pub fn plan(
    status_keys: &[SigningKeyRecord],
    private: &BTreeMap<String, PrivateKeyInfo>,
    settings: &Settings,
    rotate_requested: bool,
    now: Timestamp,
) -> KeyPlan {
    let max_ttl_s = settings.max_ttl.as_secs();
    let mut keys: Vec<SigningKeyRecord> = status_keys.to_vec();
    let mut lost = Vec::new();
    // A listed key without its private key cannot sign any more.
    for key in keys.iter_mut() {
        let can_still_sign = key.retires_at.as_ref().is_none_or(|r| ts(r) > now);
        if can_still_sign && !private.contains_key(&key.kid) {
            key.retires_at = Some(Time(now));
            lost.push(key.kid.clone());
        }
    }
    // The longest maxTTL in force while a key could sign bounds its tokens.
    for key in keys.iter_mut() {
        if key.retires_at.as_ref().is_none_or(|r| ts(r) > now) || lost.contains(&key.kid) {
            key.max_ttl_seconds = key.max_ttl_seconds.max(max_ttl_s);
        }
        if let Some(retires) = &key.retires_at {
            let remove = plus(
                plus(ts(retires), SignedDuration::from_secs(key.max_ttl_seconds)),
                LEEWAY,
            );
            key.remove_after = Some(Time(remove));
        }
    }
    let removed: Vec<String> = keys
        .iter()
        .filter(|k| k.remove_after.as_ref().is_some_and(|r| ts(r) <= now))
        .map(|k| k.kid.clone())
        .collect();
    keys.retain(|k| !removed.contains(&k.kid));

    // Private keys status does not list: adopt them (a lost status write).
    let mut adopted = Vec::new();
    for (kid, info) in private {
        if keys.iter().any(|k| &k.kid == kid) || removed.contains(kid) {
            continue;
        }
        if status_keys.iter().any(|k| &k.kid == kid) {
            continue; // listed before and retired-and-removed: never re-published
        }
        let active_from = if signing_key(&keys, now).is_some() {
            plus(now, settings.pre_publish)
        } else {
            now
        };
        let record = SigningKeyRecord {
            kid: kid.clone(),
            algorithm: info.algorithm,
            public_jwk: info.public_jwk.clone(),
            published_at: Time(now),
            active_from: Time(active_from),
            retires_at: None,
            remove_after: None,
            max_ttl_seconds: max_ttl_s,
        };
        retire_older(&mut keys, active_from);
        keys.push(record);
        adopted.push(kid.clone());
    }
    keys.sort_by_key(|k| ts(&k.active_from));

    let signing = signing_key(&keys, now);
    let waiting = waiting_key(&keys, now).is_some();
    let cause = match signing {
        _ if waiting => None,
        None if keys.is_empty() => Some(GenerateCause::First),
        None => Some(GenerateCause::Lost),
        Some(_) if rotate_requested => Some(GenerateCause::Requested),
        Some(s) if s.algorithm != settings.algorithm => Some(GenerateCause::Algorithm),
        Some(s)
            if now
                >= plus(
                    ts(&s.active_from),
                    settings.rotation_interval - settings.pre_publish,
                ) =>
        {
            Some(GenerateCause::Scheduled)
        }
        Some(_) => None,
    };
    let generate = cause.map(|cause| NewKey {
        cause,
        algorithm: settings.algorithm,
        published_at: now,
        active_from: if signing.is_some() {
            plus(now, settings.pre_publish)
        } else {
            now
        },
    });
    let answers_request = rotate_requested && (generate.is_some() || waiting || !adopted.is_empty());
    KeyPlan {
        keys,
        adopted,
        lost,
        removed,
        generate,
        answers_request,
    }
}

/// Every key without a `retiresAt` stops signing when a key active from
/// `active_from` takes over.
fn retire_older(keys: &mut [SigningKeyRecord], active_from: Timestamp) {
    for key in keys.iter_mut().filter(|k| k.retires_at.is_none()) {
        key.retires_at = Some(Time(active_from));
        key.remove_after = Some(Time(plus(
            plus(active_from, SignedDuration::from_secs(key.max_ttl_seconds)),
            LEEWAY,
        )));
    }
}

/// Lists a generated key (its private key already in the Secret).
pub fn add_key(
    keys: &mut Vec<SigningKeyRecord>,
    new: &NewKey,
    kid: String,
    public_jwk: String,
    settings: &Settings,
) {
    retire_older(keys, new.active_from);
    keys.push(SigningKeyRecord {
        kid,
        algorithm: new.algorithm,
        public_jwk,
        published_at: Time(new.published_at),
        active_from: Time(new.active_from),
        retires_at: None,
        remove_after: None,
        max_ttl_seconds: settings.max_ttl.as_secs(),
    });
}

/// The next instant the controller must look again: a waiting key becoming
/// active (status names the signing key), a rotation falling due, a key
/// leaving the JWKS.
pub fn next_deadline(keys: &[SigningKeyRecord], settings: &Settings, now: Timestamp) -> Option<Timestamp> {
    let mut candidates = Vec::new();
    if let Some(w) = waiting_key(keys, now) {
        candidates.push(ts(&w.active_from));
    } else if let Some(s) = signing_key(keys, now) {
        candidates.push(plus(
            ts(&s.active_from),
            settings.rotation_interval - settings.pre_publish,
        ));
    }
    candidates.extend(keys.iter().filter_map(|k| k.remove_after.as_ref().map(ts)));
    candidates.into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    fn settings() -> Settings {
        Settings {
            algorithm: SigningAlgorithm::ES256,
            rotation_interval: SignedDuration::from_hours(24),
            pre_publish: SignedDuration::from_mins(10),
            token_ttl: SignedDuration::from_mins(15),
            max_ttl: SignedDuration::from_hours(1),
        }
    }

    fn info() -> PrivateKeyInfo {
        PrivateKeyInfo {
            algorithm: SigningAlgorithm::ES256,
            public_jwk: "{}".into(),
        }
    }

    /// Runs one reconcile like the controller: plan, generate, list.
    fn step(
        keys: &[SigningKeyRecord],
        private: &mut BTreeMap<String, PrivateKeyInfo>,
        rotate: bool,
        now: Timestamp,
        kid: &str,
    ) -> (KeyPlan, Vec<SigningKeyRecord>) {
        let s = settings();
        let p = plan(keys, private, &s, rotate, now);
        for removed in &p.removed {
            private.remove(removed);
        }
        let mut out = p.keys.clone();
        if let Some(new) = &p.generate {
            private.insert(kid.into(), info());
            add_key(&mut out, new, kid.into(), "{}".into(), &s);
        }
        (p, out)
    }

    #[test]
    fn the_first_key_signs_at_once() {
        let mut private = BTreeMap::new();
        let (p, keys) = step(&[], &mut private, false, t(0), "a");
        assert_eq!(p.generate.unwrap().cause, GenerateCause::First);
        assert_eq!(signing_key(&keys, t(0)).unwrap().kid, "a");
        assert_eq!(next_rotation_at(&keys, &settings(), t(0)), Some(t(86_400)));
        // A resync changes nothing.
        let (p, again) = step(&keys, &mut private, false, t(5), "x");
        assert!(p.generate.is_none());
        assert_eq!(again, keys);
        assert_eq!(next_deadline(&keys, &settings(), t(5)), Some(t(86_400 - 600)));
    }

    #[test]
    fn publish_then_sign_then_retire_then_remove() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        // Due prePublish before the interval ends.
        let due = 86_400 - 600;
        let (p, keys) = step(&keys, &mut private, false, t(due), "b");
        assert_eq!(p.generate.unwrap().cause, GenerateCause::Scheduled);
        let b = keys.iter().find(|k| k.kid == "b").unwrap();
        assert_eq!(b.published_at, Time(t(due)));
        assert_eq!(b.active_from, Time(t(86_400)));
        // Published but not signing yet: a still signs.
        assert_eq!(signing_key(&keys, t(due + 1)).unwrap().kid, "a");
        assert_eq!(signing_key(&keys, t(86_400)).unwrap().kid, "b");
        let a = keys.iter().find(|k| k.kid == "a").unwrap();
        assert_eq!(a.retires_at, Some(Time(t(86_400))));
        assert_eq!(a.remove_after, Some(Time(t(86_400 + 3600 + 60))));
        // a stays published until every token it signed has expired.
        let (p, keys) = step(&keys, &mut private, false, t(86_400 + 3600 + 59), "x");
        assert!(p.removed.is_empty() && keys.len() == 2);
        let (p, keys) = step(&keys, &mut private, false, t(86_400 + 3660), "x");
        assert_eq!(p.removed, vec!["a".to_string()]);
        assert_eq!(keys.len(), 1);
        assert!(!private.contains_key("a"));
    }

    #[test]
    fn downtime_of_several_intervals_gives_one_new_key() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        let (p, keys) = step(&keys, &mut private, false, t(10 * 86_400), "b");
        assert_eq!(p.generate.unwrap().cause, GenerateCause::Scheduled);
        // The old key keeps signing during pre-publication, and nothing more is generated.
        let (p, keys) = step(&keys, &mut private, false, t(10 * 86_400 + 1), "c");
        assert!(p.generate.is_none());
        assert_eq!(keys.len(), 2);
        assert_eq!(signing_key(&keys, t(10 * 86_400 + 1)).unwrap().kid, "a");
    }

    #[test]
    fn rotate_now_during_pre_publication_is_answered_by_the_waiting_key() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        let (p, keys) = step(&keys, &mut private, true, t(100), "b");
        assert_eq!(p.generate.unwrap().cause, GenerateCause::Requested);
        assert!(p.answers_request);
        assert_eq!(keys.last().unwrap().active_from, Time(t(700)));
        let (p, keys) = step(&keys, &mut private, true, t(200), "c");
        assert!(p.generate.is_none() && p.answers_request);
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_clock_going_backwards_generates_nothing() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(1000), "a");
        let (p, _) = step(&keys, &mut private, false, t(0), "b");
        assert!(p.generate.is_none());
    }

    #[test]
    fn a_private_key_without_status_is_adopted_not_regenerated() {
        // Crash after the Secret write, before the status write.
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        private.insert("b".into(), info());
        let (p, keys) = step(&keys, &mut private, true, t(500), "c");
        assert_eq!(p.adopted, vec!["b".to_string()]);
        assert!(p.generate.is_none());
        assert!(p.answers_request);
        let b = keys.iter().find(|k| k.kid == "b").unwrap();
        assert_eq!(b.published_at, Time(t(500)));
        assert_eq!(
            b.active_from,
            Time(t(1100)),
            "adopted keys are published before they sign"
        );
        assert_eq!(signing_key(&keys, t(600)).unwrap().kid, "a");
    }

    #[test]
    fn a_lost_private_key_is_retired_and_replaced_at_once() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        private.clear();
        let (p, keys) = step(&keys, &mut private, false, t(50), "b");
        assert_eq!(p.lost, vec!["a".to_string()]);
        assert_eq!(p.generate.unwrap().cause, GenerateCause::Lost);
        assert_eq!(signing_key(&keys, t(50)).unwrap().kid, "b");
        // a still verifies the tokens it signed.
        let a = keys.iter().find(|k| k.kid == "a").unwrap();
        assert_eq!(a.retires_at, Some(Time(t(50))));
        assert_eq!(a.remove_after, Some(Time(t(50 + 3600 + 60))));
    }

    #[test]
    fn changing_the_algorithm_rotates_and_a_longer_max_ttl_keeps_retired_keys_longer() {
        let mut private = BTreeMap::new();
        let (_, keys) = step(&[], &mut private, false, t(0), "a");
        let mut s = settings();
        s.algorithm = SigningAlgorithm::EdDSA;
        s.max_ttl = SignedDuration::from_hours(2);
        let p = plan(&keys, &private, &s, false, t(10));
        let new = p.generate.unwrap();
        assert_eq!(new.cause, GenerateCause::Algorithm);
        assert_eq!(new.algorithm, SigningAlgorithm::EdDSA);
        let mut keys = p.keys;
        add_key(&mut keys, &new, "b".into(), "{}".into(), &s);
        let a = keys.iter().find(|k| k.kid == "a").unwrap();
        assert_eq!(a.max_ttl_seconds, 7200);
        assert_eq!(a.remove_after, Some(Time(t(610 + 7200 + 60))));
    }

    #[test]
    fn settings_defaults_and_errors() {
        let spec = TokenPolicySpec::default();
        let s = Settings::of(&spec).unwrap();
        assert_eq!(s.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(s.max_ttl, DEFAULT_MAX_TTL);
        let bad = TokenPolicySpec {
            max_ttl: Some("soon".into()),
            ..Default::default()
        };
        assert!(
            Settings::of(&bad)
                .unwrap_err()
                .to_string()
                .contains("spec.maxTTL")
        );
    }
}
