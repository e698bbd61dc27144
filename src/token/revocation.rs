//! Revocation of tokens before their `exp`, pure logic: which tokens a
//! policy's revocations refuse, how long a revoked session must be
//! remembered, and the write that adds one (pruning what has expired and
//! keeping the store bounded). No client; callers pass the time.
//!
//! Three kinds, all matched against the token's **session** (`sid`, and its
//! start `auth_time`, which every refresh copies), so a refresh can never
//! bring a revoked token back:
//! - a session revoked at `POST /revoke` (`status.revokedSessions`, written
//!   by the auth server): every token with that `sid`;
//! - `spec.revokeTokensIssuedBefore` (an operator, GitOps): every token of
//!   the policy whose session began before it;
//! - `spec.revokedSubjects[]`: every token of one `sub` whose session
//!   began before the entry's `issuedBefore`.
//!
//! A token without `sid`/`auth_time` (minted before sessions existed) is
//! matched by its `iat`.

use super::claims::{AccessClaims, CLOCK_LEEWAY};
use crate::crd::{TokenPolicySpec, TokenPolicyStatus};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The most sessions a policy's status may hold revoked at once. An entry
/// is about 40 bytes of JSON (a 22-character `sid` and Unix seconds), so a
/// full store is about 400 KB of the policy object, well inside etcd's
/// 1.5 MiB request limit with the rest of the policy (the CRD schema says
/// the same with `maxProperties`).
pub const MAX_REVOKED_SESSIONS: usize = 10_000;

/// How long after the computed end of a session its entry is kept: the
/// verifiers' clock leeway (a token is accepted until `exp + 30 s`), plus
/// 30 s for a replica that refreshed the session just before the
/// revocation reached it, and for clocks that differ between replicas.
pub const KEEP_MARGIN: i64 = CLOCK_LEEWAY + 30;

/// The revocations of one policy, as the server matches tokens against them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revocations {
    /// `sid` → until when it is kept (Unix seconds).
    pub sessions: HashMap<String, i64>,
    /// Sessions that began before this are revoked.
    pub all_before: Option<i64>,
    /// `sub` → sessions that began before this are revoked.
    pub subjects: HashMap<String, i64>,
}

/// What of a token revocation looks at.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    pub sid: Option<&'a str>,
    pub sub: &'a str,
    /// The session's start: `auth_time`, else `iat`.
    pub began: i64,
}

impl<'a> TokenRef<'a> {
    pub fn of(claims: &'a AccessClaims) -> Self {
        TokenRef {
            sid: claims.sid.as_deref(),
            sub: &claims.sub,
            began: claims.auth_time.unwrap_or(claims.iat),
        }
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its session was revoked at `/revoke`.
    Session,
    /// `spec.revokeTokensIssuedBefore`.
    Policy,
    /// `spec.revokedSubjects`.
    Subject,
}

impl Revoked {
    pub fn description(self) -> &'static str {
        match self {
            Revoked::Session => "the token's session was revoked",
            Revoked::Policy => "the TokenPolicy revokes tokens issued before spec.revokeTokensIssuedBefore",
            Revoked::Subject => "the TokenPolicy revokes this subject's tokens (spec.revokedSubjects)",
        }
    }
}

impl Revocations {
    /// From a policy's spec (the operator's) and status (the server's).
    pub fn of(spec: &TokenPolicySpec, status: Option<&TokenPolicyStatus>) -> Self {
        Revocations {
            sessions: status
                .map(|s| s.revoked_sessions.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
            all_before: spec.revoke_tokens_issued_before.as_ref().map(|t| t.0.as_second()),
            subjects: spec
                .revoked_subjects
                .iter()
                .map(|r| (r.subject.clone(), r.issued_before.0.as_second()))
                .collect(),
        }
    }

    /// Whether (and why) `token` is revoked. Expired entries still match:
    /// the token they name is expired anyway.
    pub fn check(&self, token: TokenRef<'_>) -> Option<Revoked> {
        if token.sid.is_some_and(|sid| self.sessions.contains_key(sid)) {
            return Some(Revoked::Session);
        }
        if self.all_before.is_some_and(|t| token.began < t) {
            return Some(Revoked::Policy);
        }
        if self.subjects.get(token.sub).is_some_and(|t| token.began < *t) {
            return Some(Revoked::Subject);
        }
        None
    }
}

/// Until when a session revoked at `now` must be remembered: no token of
/// it can be valid after this. Every token of the session expires by its
/// end (`auth_time + sessionMaxAge`), and none was issued after `now` (a
/// refresh of a revoked session is refused), so none outlives `now +
/// max_ttl` either; the earlier of the two, plus [`KEEP_MARGIN`].
pub fn keep_until(began: i64, session_max_age: i64, max_ttl: i64, now: i64) -> i64 {
    (began + session_max_age).min(now + max_ttl) + KEEP_MARGIN
}

/// Why a revocation cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFull {
    #[error(
        "the TokenPolicy already holds {MAX_REVOKED_SESSIONS} revoked sessions that have not \
         expired; retry after some expire, or revoke by subject or by time in the TokenPolicy's \
         spec (revokedSubjects, revokeTokensIssuedBefore)"
    )]
    Full,
}

/// The `status.revokedSessions` part of a JSON merge patch that adds `sid`
/// (kept until `until`) to `stored` and removes every entry expired at
/// `now`; `None` when nothing changes. Refused when more than `bound` live
/// entries would remain.
pub fn write(
    stored: &BTreeMap<String, i64>,
    add: Option<(&str, i64)>,
    now: i64,
    bound: usize,
) -> Result<Option<Map<String, Value>>, StoreFull> {
    let mut patch = Map::new();
    for (sid, until) in stored {
        if *until < now {
            patch.insert(sid.clone(), Value::Null);
        }
    }
    let live = stored.len() - patch.len();
    if let Some((sid, until)) = add {
        match stored.get(sid) {
            Some(old) if *old >= until => {}
            Some(_) => {
                patch.insert(sid.to_owned(), until.into());
            }
            None if live >= bound => return Err(StoreFull::Full),
            None => {
                patch.insert(sid.to_owned(), until.into());
            }
        }
    }
    Ok((!patch.is_empty()).then_some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RevokedSubject;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn token<'a>(sid: &'a str, sub: &'a str, began: i64) -> TokenRef<'a> {
        TokenRef {
            sid: Some(sid),
            sub,
            began,
        }
    }

    #[test]
    fn a_revoked_session_refuses_every_token_with_its_sid() {
        let mut r = Revocations::default();
        r.sessions.insert("s1".into(), 2_000);
        assert_eq!(r.check(token("s1", "user-1", 1_000)), Some(Revoked::Session));
        // A refresh keeps sid and auth_time: refused too, whatever its iat.
        assert_eq!(r.check(token("s1", "user-1", 1_000)), Some(Revoked::Session));
        assert_eq!(r.check(token("s2", "user-1", 1_000)), None);
        let no_sid = TokenRef {
            sid: None,
            sub: "user-1",
            began: 1_000,
        };
        assert_eq!(r.check(no_sid), None);
    }

    #[test]
    fn the_policy_cutoff_refuses_sessions_that_began_before_it_only() {
        let spec = TokenPolicySpec {
            revoke_tokens_issued_before: Some(time(1_000)),
            ..Default::default()
        };
        let r = Revocations::of(&spec, None);
        assert_eq!(r.check(token("a", "x", 999)), Some(Revoked::Policy));
        assert_eq!(r.check(token("a", "x", 1_000)), None);
        assert_eq!(r.check(token("a", "x", 5_000)), None);
    }

    #[test]
    fn a_subject_cutoff_refuses_that_subject_only_and_refreshes_with_it() {
        let spec = TokenPolicySpec {
            revoked_subjects: vec![RevokedSubject {
                subject: "user-42".into(),
                issued_before: time(1_000),
            }],
            ..Default::default()
        };
        let r = Revocations::of(&spec, None);
        assert_eq!(r.check(token("a", "user-42", 900)), Some(Revoked::Subject));
        assert_eq!(r.check(token("a", "user-43", 900)), None);
        // A new login after the cutoff is fine.
        assert_eq!(r.check(token("b", "user-42", 1_001)), None);
        // Subjects match exactly.
        assert_eq!(r.check(token("a", "user-420", 900)), None);
    }

    #[test]
    fn status_entries_become_the_session_set() {
        let status = TokenPolicyStatus {
            revoked_sessions: BTreeMap::from([("s1".to_owned(), 5)]),
            ..Default::default()
        };
        let r = Revocations::of(&TokenPolicySpec::default(), Some(&status));
        assert_eq!(r.sessions.get("s1"), Some(&5));
    }

    #[test]
    fn the_controller_s_status_never_carries_the_server_s_revocations() {
        let status = TokenPolicyStatus {
            revoked_sessions: BTreeMap::from([("s1".to_owned(), 5)]),
            active_key_id: Some("k".into()),
            ..Default::default()
        };
        let theirs = status.without_server_fields();
        assert!(theirs.revoked_sessions.is_empty());
        assert_eq!(theirs.active_key_id.as_deref(), Some("k"));
        // An empty map is not serialized: the controller's apply does not own it.
        assert!(
            !serde_json::to_string(&theirs)
                .unwrap()
                .contains("revokedSessions")
        );
    }

    #[test]
    fn keep_until_is_the_session_end_or_the_longest_token_whichever_comes_first() {
        // Session of 8h that began 1h ago, tokens of at most 15m.
        assert_eq!(keep_until(0, 8 * 3600, 900, 3600), 3600 + 900 + KEEP_MARGIN);
        // Session of 10m that began 9m ago: its end comes first.
        assert_eq!(keep_until(0, 600, 900, 540), 600 + KEEP_MARGIN);
    }

    #[test]
    fn a_write_adds_and_prunes_what_expired() {
        let stored = BTreeMap::from([("old".to_owned(), 99), ("live".to_owned(), 500)]);
        let patch = write(&stored, Some(("new", 700)), 100, 10).unwrap().unwrap();
        assert_eq!(patch.get("old"), Some(&Value::Null));
        assert_eq!(patch.get("new"), Some(&Value::from(700)));
        assert!(!patch.contains_key("live"));
        // Pruning alone.
        let patch = write(&stored, None, 100, 10).unwrap().unwrap();
        assert_eq!(patch.len(), 1);
        // Nothing to do.
        assert_eq!(write(&stored, None, 50, 10), Ok(None));
        assert_eq!(write(&stored, Some(("live", 400)), 50, 10), Ok(None));
        // A later end replaces an earlier one.
        let patch = write(&stored, Some(("live", 600)), 50, 10).unwrap().unwrap();
        assert_eq!(patch.get("live"), Some(&Value::from(600)));
    }

    #[test]
    fn the_store_is_bounded_by_live_entries() {
        let stored: BTreeMap<String, i64> = (0..10).map(|i| (format!("s{i}"), 100 + i)).collect();
        assert_eq!(write(&stored, Some(("x", 500)), 0, 10), Err(StoreFull::Full));
        // Re-revoking one already stored is no growth.
        assert_eq!(write(&stored, Some(("s1", 50)), 0, 10), Ok(None));
        // Once some expired, there is room again (and they go).
        let patch = write(&stored, Some(("x", 500)), 105, 10).unwrap().unwrap();
        assert_eq!(patch.len(), 6);
        assert!(StoreFull::Full.to_string().contains("revokedSubjects"));
    }
}
