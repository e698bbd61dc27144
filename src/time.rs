//! Time helpers shared by every layer: Go-style durations as the CRDs
//! write them, and RFC 3339 with the second precision Kubernetes uses.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A duration string that is not of the form `720h`, `1h30m`, `90s`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {value:?}, not a duration such as 720h, 1h30m or 90s")]
pub struct DurationError {
    pub field: &'static str,
    pub value: String,
}

/// Parses a Go-style duration: one or more `<digits><h|m|s>`, largest unit
/// first, nothing else (no sign, no fraction, no spaces, no ISO 8601).
pub fn parse_duration(field: &'static str, value: &str) -> Result<SignedDuration, DurationError> {
    let err = || DurationError {
        field,
        value: value.to_owned(),
    };
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'h' | b'm' | b's'))
    {
        return Err(err());
    }
    let parsed: SignedDuration = value.parse().map_err(|_| err())?;
    if parsed.is_negative() {
        return Err(err());
    }
    Ok(parsed)
}

/// `now` truncated to the second: status times are serialized with
/// second precision, so everything derived from them is too (a resync then
/// recomputes exactly what the API server returned).
pub fn whole_second(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// RFC 3339 with second precision, as Kubernetes writes times.
pub fn rfc3339(t: Timestamp) -> String {
    whole_second(t).to_string()
}
