//! Pure views of ApiKeys for `kubectl latchkey`: the `status` table rows,
//! the per-key table, and where a presented key stands (current, pending,
//! in grace, grace ended, revoked, expired). No client; `now` is injected.

use super::table::{absolute_and_relative, relative, relative_or_dash};
use crate::conditions;
use crate::crd::{ApiKey, ApiKeyStatus, KeyRecord};
use k8s_openapi::jiff::Timestamp;

/// When one key of an ApiKey was last accepted: the auth server's
/// `status.keyUsage[<key id>].lastUsedAt` (the records themselves are the
/// controller's; README "Usage per key"). `None` when that key has no use
/// recorded (then callers fall back to the ApiKey's `status.lastUsedAt`).
pub fn key_last_used(status: &ApiKeyStatus, record: &KeyRecord) -> Option<Timestamp> {
    status
        .key_usage
        .get(&record.id)?
        .last_used_at
        .as_ref()
        .map(|t| t.0)
}

/// The ApiKey's `Ready` condition as (status, reason), `-` when absent.
pub fn ready(ak: &ApiKey) -> (String, String) {
    let found = ak
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match found {
        Some(c) => (c.status.clone(), c.reason.clone()),
        None => ("-".to_owned(), "-".to_owned()),
    }
}

/// The headers of the `status` table (`NAMESPACE` first with `-A`).
pub fn status_headers(all_namespaces: bool) -> Vec<&'static str> {
    let mut h = vec![
        "NAME",
        "READY",
        "REASON",
        "KEY ID",
        "REV",
        "LAST USED",
        "NEXT ROTATION",
        "PREVIOUS KEYS (GRACE END)",
        "EXPIRES",
    ];
    if all_namespaces {
        h.insert(0, "NAMESPACE");
    }
    h
}

/// One row of the `status` table.
pub fn status_row(ak: &ApiKey, all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let status = ak.status.clone().unwrap_or_default();
    let (ready, reason) = ready(ak);
    let dash = || "-".to_owned();
    let previous = if status.previous_keys.is_empty() {
        dash()
    } else {
        status
            .previous_keys
            .iter()
            .map(|k| {
                let until = relative_or_dash(now, k.valid_until.as_ref().map(|t| t.0));
                match key_last_used(&status, k) {
                    Some(used) => format!("{} ({until}, used {})", k.id, relative(now, used)),
                    None => format!("{} ({until})", k.id),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let last_used = match status
        .current_key
        .as_ref()
        .and_then(|k| key_last_used(&status, k))
    {
        Some(t) => relative(now, t),
        None => relative_or_dash(now, status.last_used_at.as_ref().map(|t| t.0)),
    };
    let expires = if ak.is_revoked() {
        "revoked".to_owned()
    } else {
        relative_or_dash(now, ak.spec.expires_at.as_ref().map(|t| t.0))
    };
    let mut row = vec![
        ak.metadata.name.clone().unwrap_or_default(),
        ready,
        reason,
        status.current_key.as_ref().map_or_else(dash, |k| k.id.clone()),
        status.revision.map_or_else(dash, |r| r.to_string()),
        last_used,
        relative_or_dash(now, status.next_rotation_at.as_ref().map(|t| t.0)),
        previous,
        expires,
    ];
    if all_namespaces {
        row.insert(0, ak.metadata.namespace.clone().unwrap_or_default());
    }
    row
}

/// Headers of the per-key table `status NAME` prints under the summary.
pub const KEY_HEADERS: [&str; 5] = ["STATE", "KEY ID", "ISSUED", "VALID UNTIL", "LAST USED"];

/// The per-key rows of one ApiKey: pending, current, then previous keys.
pub fn key_rows(ak: &ApiKey, now: Timestamp) -> Vec<Vec<String>> {
    let Some(status) = ak.status.as_ref() else {
        return Vec::new();
    };
    let row = |state: &str, k: &KeyRecord| {
        vec![
            state.to_owned(),
            k.id.clone(),
            relative(now, k.issued_at.0),
            k.valid_until
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| absolute_and_relative(now, t.0)),
            relative_or_dash(now, key_last_used(status, k)),
        ]
    };
    let mut rows = Vec::new();
    if let Some(k) = &status.pending_key {
        rows.push(row("pending", k));
    }
    if let Some(k) = &status.current_key {
        rows.push(row("current", k));
    }
    for k in &status.previous_keys {
        rows.push(row("previous", k));
    }
    rows
}

/// Which record of an ApiKey's status lists a key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Current,
    Pending,
    /// A replaced key; `until` is the end of its grace period.
    Previous {
        until: Option<Timestamp>,
    },
}

/// Where a presented key stands in one ApiKey that lists its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub namespace: String,
    pub name: String,
    pub listed: Listed,
    /// The presented key's SHA-256 equals the one status records. When it
    /// does not, the key id is real but the secret part is not this key's.
    pub hash_matches: bool,
    pub revoked: bool,
    /// `spec.expiresAt`, when it has passed.
    pub expired_at: Option<Timestamp>,
    /// The key record's own last use (per-key usage), else the ApiKey's.
    pub last_used: Option<Timestamp>,
    pub per_key_usage: bool,
}

impl Standing {
    /// Whether a latchkey server accepts this key now.
    pub fn valid(&self, now: Timestamp) -> bool {
        let in_time = match &self.listed {
            Listed::Previous { until: Some(until) } => *until > now,
            _ => true,
        };
        self.hash_matches && in_time && !self.revoked && self.expired_at.is_none()
    }

    /// One line for a person: `current key of ApiKey shop/frontend`, …
    pub fn describe(&self, now: Timestamp) -> String {
        let of = format!("ApiKey {}/{}", self.namespace, self.name);
        if !self.hash_matches {
            return format!(
                "key id listed by {of}, but the key's SHA-256 does not match the one latchkey issued: \
                 NOT a valid key (mistyped, altered or forged secret part)"
            );
        }
        let role = match &self.listed {
            Listed::Current => format!("current key of {of}"),
            Listed::Pending => format!("pending key of {of} (recorded, being delivered to its Secret)"),
            Listed::Previous { until: Some(until) } if *until > now => format!(
                "previous key of {of}, in grace until {}",
                absolute_and_relative(now, *until)
            ),
            Listed::Previous { until } => format!(
                "previous key of {of}, grace ended{}: retired",
                until
                    .map(|u| format!(" {}", absolute_and_relative(now, u)))
                    .unwrap_or_default()
            ),
        };
        let mut line = role;
        if self.revoked {
            line.push_str("; REVOKED (spec.revoked): refused");
        }
        if let Some(at) = self.expired_at {
            line.push_str(&format!("; EXPIRED {}: refused", absolute_and_relative(now, at)));
        }
        line
    }
}

/// Where the key with `key_id` and SHA-256 `sha256_hex` stands in `ak`, or
/// `None` when `ak` does not list that id.
pub fn standing(ak: &ApiKey, key_id: &str, sha256_hex: &str, now: Timestamp) -> Option<Standing> {
    let status = ak.status.as_ref()?;
    let (listed, record) = if let Some(k) = status.current_key.as_ref().filter(|k| k.id == key_id) {
        (Listed::Current, k)
    } else if let Some(k) = status.pending_key.as_ref().filter(|k| k.id == key_id) {
        (Listed::Pending, k)
    } else {
        let k = status.previous_keys.iter().find(|k| k.id == key_id)?;
        (
            Listed::Previous {
                until: k.valid_until.as_ref().map(|t| t.0),
            },
            k,
        )
    };
    let per_key = key_last_used(status, record);
    Some(Standing {
        namespace: ak.metadata.namespace.clone().unwrap_or_default(),
        name: ak.metadata.name.clone().unwrap_or_default(),
        listed,
        hash_matches: record.sha256.eq_ignore_ascii_case(sha256_hex),
        revoked: ak.is_revoked(),
        expired_at: ak.spec.expires_at.as_ref().map(|t| t.0).filter(|t| *t <= now),
        last_used: per_key.or_else(|| status.last_used_at.as_ref().map(|t| t.0)),
        per_key_usage: per_key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn record(id: &str, sha: &str, until: Option<&str>) -> KeyRecord {
        KeyRecord {
            id: id.to_owned(),
            sha256: sha.to_owned(),
            issued_at: Time(at("2026-12-01T00:00:00Z")),
            valid_until: until.map(|u| Time(at(u))),
        }
    }

    fn api_key() -> ApiKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "frontend", "namespace": "shop"},
            "spec": {"expiresAt": "2027-01-31T00:00:00Z"},
            "status": {
                "currentKey": {"id": "cur000000000", "sha256": "aa", "issuedAt": "2026-12-05T08:00:00Z"},
                "previousKeys": [
                    {"id": "old000000000", "sha256": "bb", "issuedAt": "2026-12-01T00:00:00Z", "validUntil": "2026-12-05T08:30:00Z"},
                    {"id": "prv000000000", "sha256": "cc", "issuedAt": "2026-12-04T00:00:00Z", "validUntil": "2026-12-05T10:00:00Z"}
                ],
                "revision": 3,
                "lastUsedAt": "2026-12-05T08:58:00Z",
                "nextRotationAt": "2026-12-06T08:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "KeyDelivered", "message": "",
                                "lastTransitionTime": "2026-12-05T08:00:00Z"}]
            }
        }))
        .unwrap()
    }

    const NOW: &str = "2026-12-05T09:00:00Z";

    #[test]
    fn status_row_shows_every_column() {
        let row = status_row(&api_key(), false, at(NOW));
        assert_eq!(
            row,
            vec![
                "frontend",
                "True",
                "KeyDelivered",
                "cur000000000",
                "3",
                "2m ago",
                "in 23h",
                "old000000000 (30m ago), prv000000000 (in 1h)",
                "in 56d15h"
            ]
        );
        let all = status_row(&api_key(), true, at(NOW));
        assert_eq!(all[0], "shop");
        assert_eq!(status_headers(true).len(), all.len());
        assert_eq!(status_headers(false).len(), row.len());
    }

    #[test]
    fn status_row_of_a_new_or_revoked_key() {
        let mut ak = api_key();
        ak.status = None;
        let row = status_row(&ak, false, at(NOW));
        assert_eq!(row[1..8], ["-", "-", "-", "-", "-", "-", "-"]);
        ak.spec.revoked = Some(true);
        assert_eq!(status_row(&ak, false, at(NOW))[8], "revoked");
    }

    #[test]
    fn key_rows_list_current_then_previous() {
        let rows = key_rows(&api_key(), at(NOW));
        let states: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(states, ["current", "previous", "previous"]);
        assert_eq!(rows[2][3], "2026-12-05T10:00:00Z (in 1h)");
        assert_eq!(rows[0][3], "-");
        assert_eq!(rows[0][4], "-", "no per-key usage recorded yet");
    }

    #[test]
    fn per_key_usage_comes_from_status_key_usage() {
        let mut ak = api_key();
        let status = ak.status.as_mut().unwrap();
        status.key_usage.insert(
            "prv000000000".into(),
            crate::crd::KeyUsage {
                last_used_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                    "2026-12-05T08:50:00Z",
                ))),
                ..Default::default()
            },
        );
        let rows = key_rows(&ak, at(NOW));
        assert_eq!(rows[2][4], "10m ago", "the previous key's own use");
        assert_eq!(rows[0][4], "-", "the current key has none");
        let row = status_row(&ak, false, at(NOW));
        assert_eq!(
            row[7],
            "old000000000 (30m ago), prv000000000 (in 1h, used 10m ago)"
        );
        let grace = standing(&ak, "prv000000000", "cc", at(NOW)).unwrap();
        assert!(grace.per_key_usage);
        assert_eq!(grace.last_used, Some(at("2026-12-05T08:50:00Z")));
    }

    #[test]
    fn standing_of_current_previous_and_unknown_keys() {
        let ak = api_key();
        let now = at(NOW);
        let current = standing(&ak, "cur000000000", "AA", now).unwrap();
        assert_eq!(current.listed, Listed::Current);
        assert!(current.valid(now));
        assert_eq!(current.describe(now), "current key of ApiKey shop/frontend");
        assert_eq!(current.last_used, Some(at("2026-12-05T08:58:00Z")));
        assert!(!current.per_key_usage);

        let grace = standing(&ak, "prv000000000", "cc", now).unwrap();
        assert!(grace.valid(now));
        assert_eq!(
            grace.describe(now),
            "previous key of ApiKey shop/frontend, in grace until 2026-12-05T10:00:00Z (in 1h)"
        );

        let ended = standing(&ak, "old000000000", "bb", now).unwrap();
        assert!(!ended.valid(now));
        assert!(
            ended.describe(now).contains("grace ended"),
            "{}",
            ended.describe(now)
        );

        assert_eq!(standing(&ak, "zzz000000000", "aa", now), None);
    }

    #[test]
    fn standing_with_a_wrong_hash_revoked_or_expired() {
        let mut ak = api_key();
        let now = at(NOW);
        let forged = standing(&ak, "cur000000000", "ff", now).unwrap();
        assert!(!forged.valid(now));
        assert!(forged.describe(now).contains("NOT a valid key"));

        ak.spec.revoked = Some(true);
        let revoked = standing(&ak, "cur000000000", "aa", now).unwrap();
        assert!(!revoked.valid(now));
        assert!(revoked.describe(now).ends_with("REVOKED (spec.revoked): refused"));

        ak.spec.revoked = None;
        ak.spec.expires_at = Some(Time(at("2026-12-05T08:00:00Z")));
        let expired = standing(&ak, "cur000000000", "aa", now).unwrap();
        assert!(!expired.valid(now));
        assert!(
            expired
                .describe(now)
                .contains("EXPIRED 2026-12-05T08:00:00Z (1h ago)")
        );
        let _ = record("x", "y", None);
    }

    #[test]
    fn pending_keys_are_found() {
        let mut ak = api_key();
        ak.status.as_mut().unwrap().pending_key = Some(record("pnd000000000", "dd", None));
        let s = standing(&ak, "pnd000000000", "dd", at(NOW)).unwrap();
        assert_eq!(s.listed, Listed::Pending);
        assert_eq!(key_rows(&ak, at(NOW))[0][0], "pending");
    }
}
