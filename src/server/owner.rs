//! What the index keeps about an ApiKey ([`IndexedApiKey`]) and about the
//! end of a key ([`ValidUntil`]), compactly: the index's budget is 1 KiB
//! per key (issue 18), so strings share one allocation and nothing is
//! stored twice.

use super::counters::{StoredUsage, Usage};
use super::grants::Claimed;
use super::index::KeyId;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;

/// The second from which a key is no longer valid, or never: 8 bytes, not
/// an `Option<Timestamp>`'s 24 (one index entry per key). An instant
/// within a second is rounded down, so a key never outlives its end;
/// Kubernetes' times are whole seconds anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidUntil(i64);

impl ValidUntil {
    pub const NEVER: Self = Self(i64::MAX);

    pub fn new(until: Option<Timestamp>) -> Self {
        until.map_or(Self::NEVER, |t| Self(t.as_second()))
    }

    /// Whether the key is no longer valid at `now`.
    pub fn passed(self, now: Timestamp) -> bool {
        self.0 <= now.as_second()
    }

    /// The end, in Unix seconds (`None`: never).
    pub fn second(self) -> Option<i64> {
        (self != Self::NEVER).then_some(self.0)
    }
}

/// What a decision needs to know about the ApiKey a key belongs to. Kept
/// small (the index's budget is 1 KiB per key): namespace, name, subject
/// and scopes share one allocation ([`IdentityText`]), and the claims are
/// kept apart only when the grants changed them.
#[derive(Debug)]
pub struct IndexedApiKey {
    /// Namespace, name, the subject and the scopes the grants let it have.
    pub identity: IdentityText,
    pub audiences: Box<[Box<str>]>,
    /// What survives a new version of the same ApiKey: the rate limiter's
    /// bucket and the last use.
    pub usage: Arc<Usage>,
    /// `status.lastUsedAt` as the watch saw it (with the resourceVersion
    /// in [`Self::identity`]), for the lastUsedAt writer's optimistic lock;
    /// Unix seconds.
    pub status_last_used: Option<i64>,
    /// `status.keyUsage` as the watch saw it, for the keys status lists.
    pub stored_usage: Box<[(KeyId, StoredUsage)]>,
    /// Ids in `status.keyUsage` whose key status no longer lists (to prune).
    pub stale_usage: Box<[Box<str>]>,
    /// `status.retiredKeyPresented` as the watch saw it: count, last time.
    pub stored_retired: (i64, i64),
    /// `spec.tokenPolicyRef.name`.
    pub token_policy: Option<Box<str>>,
    /// The ApiKey's labels (for TokenPolicy `apiKeySelector`s).
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// What the spec claims ([`Self::claimed`]); subject, scopes and
    /// audiences above are what the CredentialGrants let it have
    /// ([`super::grants`]).
    pub claimed: ClaimedAs,
}

/// Where an [`IndexedApiKey`]'s claims are: in its granted identity (the
/// grants changed nothing: nothing more stored), or apart.
#[derive(Debug, Clone)]
pub enum ClaimedAs {
    /// The claims are the granted subject (claimed in `spec.subject`, or
    /// not: the default), scopes and audiences.
    Granted {
        subject_claimed: bool,
    },
    Apart(Box<Claimed>),
}

impl IndexedApiKey {
    pub fn subject(&self) -> &str {
        self.identity.subject()
    }

    pub fn namespace(&self) -> &str {
        self.identity.namespace()
    }

    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// The scopes, space-separated.
    pub fn scopes_text(&self) -> &str {
        self.identity.scopes()
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes_text().split(' ').filter(|s| !s.is_empty())
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// What the spec claims.
    pub fn claimed(&self) -> std::borrow::Cow<'_, Claimed> {
        match &self.claimed {
            ClaimedAs::Granted { subject_claimed } => std::borrow::Cow::Owned(claimed_as_granted(
                &self.identity,
                &self.audiences,
                *subject_claimed,
            )),
            ClaimedAs::Apart(c) => std::borrow::Cow::Borrowed(c),
        }
    }
}

/// The claims that an identity granted unchanged would have come from.
fn claimed_as_granted(identity: &IdentityText, audiences: &[Box<str>], subject_claimed: bool) -> Claimed {
    Claimed {
        subject: subject_claimed.then(|| identity.subject().into()),
        scopes: identity
            .scopes()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(Into::into)
            .collect(),
        audiences: audiences.into(),
    }
}

/// How to keep `claimed` next to `identity` and `audiences` granted from
/// it: nothing more when they give it back exactly.
pub(super) fn claimed_as(claimed: Claimed, identity: &IdentityText, audiences: &[Box<str>]) -> ClaimedAs {
    let subject_claimed = claimed.subject.is_some();
    if claimed_as_granted(identity, audiences, subject_claimed) == claimed {
        ClaimedAs::Granted { subject_claimed }
    } else {
        ClaimedAs::Apart(Box::new(claimed))
    }
}

/// An ApiKey's namespace, name, subject, scopes and resourceVersion in one
/// allocation: `<namespace>/<name>` (the index's key for the ApiKey), then
/// the subject unless it is that default, then the space-separated scopes,
/// then the resourceVersion. A subject or scopes a header cannot carry (not
/// visible ASCII; the CRD refuses such values) are kept empty, as their
/// headers would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityText {
    text: Box<str>,
    /// Namespaces (63) and names (253) are short: 2 bytes each.
    namespace_end: u16,
    name_end: u16,
    /// The scopes start where the subject ends (default or not).
    subject: (u32, u32),
    scopes_end: u32,
}

impl IdentityText {
    pub fn new(namespace: &str, name: &str, subject: &str, scopes: &str, resource_version: &str) -> Self {
        // What `HeaderValue::to_str` accepts: tab and visible ASCII.
        let carried = |v: &str| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        let subject = if carried(subject) { subject } else { "" };
        let scopes = if carried(scopes) { scopes } else { "" };
        let default_len = namespace.len() + 1 + name.len();
        let is_default = subject.len() == default_len
            && subject.starts_with(namespace)
            && subject[namespace.len()..].starts_with('/')
            && &subject[namespace.len() + 1..] == name;
        let own_subject = if is_default { "" } else { subject };
        let mut text =
            String::with_capacity(default_len + own_subject.len() + scopes.len() + resource_version.len());
        for part in [namespace, "/", name, own_subject, scopes, resource_version] {
            text.push_str(part);
        }
        let subject_range = match is_default {
            true => (0, default_len),
            false => (default_len, default_len + subject.len()),
        };
        // Longer names than Kubernetes allows, or specs over 4 GiB (etcd
        // takes 1.5 MiB), are kept empty.
        let short = |n: usize| u16::try_from(n).ok();
        let at = |n: usize| u32::try_from(n).ok();
        match (
            short(namespace.len()),
            short(default_len),
            at(subject_range.0),
            at(subject_range.1),
            at(subject_range.1 + scopes.len()),
            at(text.len()),
        ) {
            (Some(namespace_end), Some(name_end), Some(s0), Some(s1), Some(scopes_end), Some(_)) => Self {
                text: text.into(),
                namespace_end,
                name_end,
                subject: (s0, s1),
                scopes_end,
            },
            _ => Self::new("", "", "", "", ""),
        }
    }

    fn part(&self, from: u32, to: u32) -> &str {
        self.text.get(from as usize..to as usize).unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.part(0, self.namespace_end.into())
    }

    pub fn name(&self) -> &str {
        self.part(u32::from(self.namespace_end) + 1, self.name_end.into())
    }

    /// `<namespace>/<name>`.
    pub fn namespaced_name(&self) -> &str {
        self.part(0, self.name_end.into())
    }

    pub fn subject(&self) -> &str {
        self.part(self.subject.0, self.subject.1)
    }

    /// Space-separated.
    pub fn scopes(&self) -> &str {
        self.part(self.subject.1, self.scopes_end)
    }

    /// `metadata.resourceVersion` as the watch saw it.
    pub fn resource_version(&self) -> &str {
        self.text.get(self.scopes_end as usize..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_text_gives_back_each_value_and_stores_the_default_subject_once() {
        let t = IdentityText::new(
            "shop",
            "billing",
            "shop/billing",
            "orders:read orders:write",
            "17",
        );
        assert_eq!(
            (t.namespace(), t.name(), t.subject(), t.scopes()),
            ("shop", "billing", "shop/billing", "orders:read orders:write")
        );
        assert_eq!(
            (t.namespaced_name(), t.resource_version()),
            ("shop/billing", "17")
        );
        assert_eq!(&*t.text, "shop/billingorders:read orders:write17");
        let t = IdentityText::new("shop", "billing", "orders-svc", "", "");
        assert_eq!(
            (t.namespace(), t.name(), t.subject(), t.scopes()),
            ("shop", "billing", "orders-svc", "")
        );
        assert_eq!(t.resource_version(), "");
        // Lookalikes of the default are subjects of their own.
        for subject in [
            "shop/billin",
            "shop/billingx",
            "shopx/billing",
            "shop:billing",
            "",
        ] {
            let t = IdentityText::new("shop", "billing", subject, "a", "9");
            assert_eq!(
                (t.subject(), t.scopes(), t.name(), t.resource_version()),
                (subject, "a", "billing", "9")
            );
        }
        // What a header cannot carry is kept empty (as its header was).
        let t = IdentityText::new("shop", "billing", "a\nb", "x\u{7f} y", "3");
        assert_eq!((t.subject(), t.scopes(), t.resource_version()), ("", "", "3"));
    }

    #[test]
    fn claims_that_the_grants_left_unchanged_are_not_stored_twice() {
        let identity = IdentityText::new("shop", "billing", "shop/billing", "a b", "1");
        let claimed = |subject: Option<&str>, scopes: &[&str], audiences: &[&str]| Claimed {
            subject: subject.map(Into::into),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            audiences: audiences.iter().map(|s| (*s).into()).collect(),
        };
        let aud: Box<[Box<str>]> = ["x".into()].into();
        for (c, granted) in [
            (claimed(None, &["a", "b"], &["x"]), true),
            (claimed(Some("shop/billing"), &["a", "b"], &["x"]), true),
            (claimed(None, &["a"], &["x"]), false),
            (claimed(None, &["a", "b", "c"], &["x"]), false),
            (claimed(None, &["b", "a"], &["x"]), false),
            (claimed(None, &["a", "b"], &[]), false),
            (claimed(None, &["a b"], &["x"]), false),
            (claimed(None, &["a", "", "b"], &["x"]), false),
        ] {
            let kept = claimed_as(c.clone(), &identity, &aud);
            assert_eq!(matches!(kept, ClaimedAs::Granted { .. }), granted, "{c:?}");
            let owner_claims = match &kept {
                ClaimedAs::Granted { subject_claimed } => {
                    claimed_as_granted(&identity, &aud, *subject_claimed)
                }
                ClaimedAs::Apart(c) => (**c).clone(),
            };
            assert_eq!(owner_claims, c, "the claims come back as they were");
        }
    }

    #[test]
    fn a_key_is_valid_until_the_second_its_end_falls_in_and_never_after() {
        let at = |s: i64, ns: i32| Timestamp::new(s, ns).unwrap();
        let until = ValidUntil::new(Some(at(100, 0)));
        assert!(!until.passed(at(99, 999_999_999)));
        assert!(until.passed(at(100, 0)) && until.passed(at(101, 0)));
        // Within a second: rounded down, never later than the end.
        let until = ValidUntil::new(Some(at(100, 500_000_000)));
        assert!(until.passed(at(100, 0)) && !until.passed(at(99, 999_999_999)));
        assert_eq!(until.second(), Some(100));
        let never = ValidUntil::new(None);
        assert!(!never.passed(Timestamp::MAX) && never.second().is_none());
    }
}
