//! The snapshot the server answers from, built from the watched TokenPolicies and their signing-key Secrets; an issuer path claimed twice serves neither policy.

use super::*;

/// The issuer path of every policy that can be served, with the policies
/// (`namespace/name`) that claim it.
pub(super) fn claims_by_path(
    policies: &BTreeMap<(String, String), TokenPolicy>,
    issuer_base_url: &str,
) -> HashMap<String, Vec<String>> {
    let mut by_path: HashMap<String, Vec<String>> = HashMap::new();
    for ((ns, name), policy) in policies {
        if schedule::Settings::of(&policy.spec).is_ok() {
            by_path
                .entry(issuer_path(&policy.issuer(issuer_base_url)))
                .or_default()
                .push(format!("{ns}/{name}"));
        }
    }
    by_path
}

/// Builds the snapshot from the policies and their signing-key Secrets
/// (by namespace and Secret name).
pub fn build_snapshot(
    policies: &BTreeMap<(String, String), TokenPolicy>,
    secrets: &BTreeMap<(String, String), SigningSecret>,
    issuer_base_url: &str,
) -> Snapshot {
    let mut snap = Snapshot::default();
    let claims = claims_by_path(policies, issuer_base_url);
    for ((ns, name), policy) in policies {
        let Ok(settings) = schedule::Settings::of(&policy.spec) else {
            continue;
        };
        let issuer = policy.issuer(issuer_base_url);
        let path = issuer_path(&issuer);
        let me = format!("{ns}/{name}");
        let conflicts: Vec<String> = claims
            .get(&path)
            .into_iter()
            .flatten()
            .filter(|p| **p != me)
            .cloned()
            .collect();
        let status_keys: &[SigningKeyRecord] = policy
            .status
            .as_ref()
            .map(|s| s.keys.as_slice())
            .unwrap_or_default();
        // Only the Secret the controller writes: its name, owned by this policy's uid.
        let uid = policy.metadata.uid.as_deref().filter(|u| !u.is_empty());
        let private = secrets
            .get(&(ns.clone(), policy.signing_secret_name()))
            .filter(|s| uid.is_some() && s.controller_uid.as_deref() == uid)
            .map(|s| &s.keys);
        let mut signers = Vec::new();
        let mut verifying = Vec::new();
        for record in status_keys {
            let alg = keys::jwt_algorithm(record.algorithm);
            if let Ok(key) = keys::decoding_key(&record.kid, record.algorithm, &record.public_jwk) {
                verifying.push((
                    record.kid.clone(),
                    VerifyingKey {
                        algorithm: alg,
                        key,
                        issuer: issuer.clone(),
                        audiences: policy.spec.audiences.clone(),
                        max_ttl_seconds: record.max_ttl_seconds.max(settings.max_ttl.as_secs()),
                    },
                ));
            }
            let pem = private.and_then(|p| p.get(&record.kid));
            if let Some(Ok(key)) = pem.map(|pem| keys::encoding_key(&record.kid, record.algorithm, pem)) {
                signers.push(Signer {
                    kid: record.kid.clone(),
                    algorithm: alg,
                    key,
                    active_from: record.active_from.0.as_second(),
                    retires_at: record.retires_at.as_ref().map(|t| t.0.as_second()),
                });
            }
        }
        if !conflicts.is_empty() {
            // Neither signs nor verifies while the path is disputed.
            signers.clear();
            verifying.clear();
        }
        signers.sort_by_key(|s| s.active_from);
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{JWKS_SUFFIX}"),
            "token_endpoint": format!("{issuer}{TOKEN_SUFFIX}"),
            "revocation_endpoint": format!("{issuer}{REVOKE_SUFFIX}"),
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["client_credentials", crate::token::session::TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "scopes_supported": policy.spec.allowed_scopes,
            "id_token_signing_alg_values_supported": [settings.algorithm.as_str()],
            "subject_types_supported": ["public"],
        });
        let entry = Arc::new(PolicyEntry {
            namespace: ns.clone(),
            name: name.clone(),
            rules: PolicyRules {
                issuer: issuer.clone(),
                audiences: policy.spec.audiences.clone(),
                allowed_scopes: policy.spec.allowed_scopes.iter().cloned().collect(),
                roles: policy.spec.roles.clone(),
                custom_claims: policy
                    .spec
                    .custom_claims
                    .iter()
                    .map(|c| (c.name.clone(), c.required))
                    .collect(),
                token_ttl_seconds: settings.token_ttl.as_secs(),
                max_ttl_seconds: settings.max_ttl.as_secs(),
            },
            selector: policy.spec.api_key_selector.clone(),
            signers,
            jwks: policy
                .status
                .as_ref()
                .map(crate::token::jwks::jwks_json)
                .unwrap_or_else(|| json!({ "keys": [] }).to_string()),
            jwks_max_age: (settings.pre_publish.as_secs() / 2).max(0) as u64,
            discovery: discovery.to_string(),
            conflicts,
            session: crate::token::session::SessionRules::of(&policy.spec, settings.max_ttl.as_secs()),
            trusted: policy
                .spec
                .trusted_issuers
                .iter()
                .map(super::federation::TrustedSource::of)
                .collect(),
            revocations: crate::token::revocation::Revocations::of(&policy.spec, policy.status.as_ref()),
            stored_revocations: policy
                .status
                .as_ref()
                .map(|s| s.revoked_sessions.clone())
                .unwrap_or_default(),
            resource_version: policy.metadata.resource_version.clone(),
        });
        if entry.conflicts.is_empty() {
            snap.by_issuer_path.insert(path, entry.clone());
        } else {
            tracing::warn!(
                namespace = %ns,
                name = %name,
                others = ?entry.conflicts,
                "TokenPolicies share an issuer path; none of them is served"
            );
        }
        for (kid, key) in verifying {
            snap.policy_by_kid.insert(kid.clone(), entry.clone());
            snap.by_kid.insert(kid, key);
        }
        snap.by_name.insert((ns.clone(), name.clone()), entry);
    }
    snap
}
