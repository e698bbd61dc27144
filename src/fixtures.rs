//! Fixtures shared by the unit tests (compiled for tests only): a fixed
//! epoch for readable times, and ApiKeys and TokenPolicies as the watch
//! would deliver them.

use crate::crd::{
    ApiKey, ApiKeySpec, ApiKeyStatus, KeyRecord, SigningAlgorithm, SigningKeyRecord, TokenPolicy,
    TokenPolicySpec, TokenPolicyStatus,
};
use crate::key::ApiKeyValue;
use crate::token::keys;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// `secs` seconds after a fixed instant (2027-01-15), so tests read as offsets.
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A key record `id` (hash `hash-<id>`, issued at `t(0)`) valid until
/// `t(valid_until)`, or without end.
pub fn record(id: &str, valid_until: Option<i64>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        sha256: format!("hash-{id}"),
        issued_at: Time(t(0)),
        valid_until: valid_until.map(|s| Time(t(s))),
    }
}

/// An ApiKey `shop/<name>` with the scopes `orders:read orders:write` whose
/// status lists `keys` (the first as current, the rest as previous, each
/// with its end of validity).
pub fn api_key_with(name: &str, keys: &[(&ApiKeyValue, Option<Timestamp>)]) -> ApiKey {
    let mut ak = ApiKey::new(
        name,
        ApiKeySpec {
            scopes: vec!["orders:read".into(), "orders:write".into()],
            ..Default::default()
        },
    );
    ak.metadata.namespace = Some("shop".into());
    let mut records = keys.iter().map(|(k, until)| KeyRecord {
        id: k.key_id().into(),
        sha256: k.sha256_hex(),
        issued_at: Time(Timestamp::UNIX_EPOCH),
        valid_until: until.map(Time),
    });
    ak.status = Some(ApiKeyStatus {
        current_key: records.next(),
        previous_keys: records.collect(),
        ..Default::default()
    });
    ak
}

/// A TokenPolicy `shop/login` (audience `orders`, scope `orders:read`) with
/// one published, active signing key of `alg`, and that key.
pub fn policy_with_key(alg: SigningAlgorithm) -> (TokenPolicy, keys::GeneratedKey) {
    let key = keys::generate(alg).unwrap();
    let jwk = keys::public_jwk(&key.kid, alg, key.pem.as_bytes()).unwrap();
    let mut policy = TokenPolicy::new(
        "login",
        TokenPolicySpec {
            audiences: vec!["orders".into()],
            allowed_scopes: vec!["orders:read".into()],
            ..Default::default()
        },
    );
    policy.metadata.namespace = Some("shop".into());
    policy.metadata.uid = Some("uid-shop-login".into());
    policy.status = Some(TokenPolicyStatus {
        keys: vec![SigningKeyRecord {
            kid: key.kid.clone(),
            algorithm: alg,
            public_jwk: jwk,
            published_at: Time(Timestamp::UNIX_EPOCH),
            active_from: Time(Timestamp::UNIX_EPOCH),
            retires_at: None,
            remove_after: None,
            max_ttl_seconds: 3600,
        }],
        ..Default::default()
    });
    (policy, key)
}

/// The signing-key Secret the controller writes for `policy` (its name, a
/// controller reference with its uid), holding `key`, as the server's feed
/// keeps it.
pub fn signing_secret(
    policy: &TokenPolicy,
    key: &keys::GeneratedKey,
) -> std::collections::BTreeMap<(String, String), crate::server::tokens::SigningSecret> {
    std::collections::BTreeMap::from([(
        (
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.signing_secret_name(),
        ),
        crate::server::tokens::SigningSecret {
            controller_uid: policy.metadata.uid.clone(),
            keys: std::collections::BTreeMap::from([(key.kid.clone(), key.pem.clone().into_bytes())]),
        },
    )])
}
