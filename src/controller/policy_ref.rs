//! An ApiKey whose `spec.tokenPolicyRef` names a TokenPolicy that does not
//! exist (yet). The admission webhook accepts it (GitOps tools apply in any
//! order); the key is delivered and works for external auth, but the
//! ApiKey is not Ready: `Ready=False`, `Reconciling=True`, reason
//! [`TOKEN_POLICY_MISSING`], until the policy arrives (a watch on
//! TokenPolicies reconciles the ApiKeys that name it).

use crate::conditions::{self, Phase};
use crate::crd::ApiKeyStatus;
use k8s_openapi::jiff::Timestamp;

pub const TOKEN_POLICY_MISSING: &str = "TokenPolicyMissing";

/// Turns a Ready `status` into "waiting for TokenPolicy `policy`"; any other
/// phase (stalled, retrying, rotating) says more and is left alone.
pub fn note_missing_policy(status: &mut ApiKeyStatus, policy: &str, generation: Option<i64>, now: Timestamp) {
    if !conditions::is_true(&status.conditions, conditions::READY) {
        return;
    }
    let phase = Phase::reconciling(
        TOKEN_POLICY_MISSING,
        format!(
            "the key is delivered and works for external auth, but TokenPolicy {policy:?} (spec.tokenPolicyRef) \
             does not exist in this namespace yet: tokens can be minted once it does"
        ),
    );
    conditions::apply_phase(&mut status.conditions, &phase, generation, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_key_waits_for_its_policy_and_other_phases_stay() {
        let now = Timestamp::UNIX_EPOCH;
        let mut status = ApiKeyStatus::default();
        conditions::apply_phase(
            &mut status.conditions,
            &Phase::ready("KeyDelivered", "ok"),
            Some(1),
            now,
        );
        note_missing_policy(&mut status, "tp", Some(1), now);
        assert!(!conditions::is_true(&status.conditions, conditions::READY));
        assert!(conditions::is_true(&status.conditions, conditions::RECONCILING));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .unwrap();
        assert_eq!(ready.reason, TOKEN_POLICY_MISSING);
        assert!(ready.message.contains("\"tp\""));

        let mut stalled = ApiKeyStatus::default();
        let phase = Phase::stalled("Revoked", "revoked");
        conditions::apply_phase(&mut stalled.conditions, &phase, Some(1), now);
        let before = stalled.clone();
        note_missing_policy(&mut stalled, "tp", Some(1), now);
        assert_eq!(stalled, before);
    }
}
