//! Pure rendering helpers of `kubectl latchkey`: a kubectl-style table and
//! relative times ("in 29d", "3m ago") against an injected `now`.

use k8s_openapi::jiff::Timestamp;

/// A table like kubectl prints: upper-case headers, columns separated by
/// three spaces, no trailing whitespace.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration in whole seconds as at most two units: `29d4h`, `3m12s`, `45s`.
pub fn short_duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(i) = UNITS.iter().position(|(size, _)| seconds >= *size) else {
        return "0s".to_owned();
    };
    let (size, unit) = UNITS[i];
    let mut text = format!("{}{unit}", seconds / size);
    if let Some((next, next_unit)) = UNITS.get(i + 1) {
        let rest = (seconds % size) / next;
        if rest > 0 {
            text.push_str(&format!("{rest}{next_unit}"));
        }
    }
    text
}

/// `t` relative to `now`: `in 29d4h`, `3m12s ago`, `now`.
pub fn relative(now: Timestamp, t: Timestamp) -> String {
    let diff = t.as_second() - now.as_second();
    match diff {
        0 => "now".to_owned(),
        d if d > 0 => format!("in {}", short_duration(d.unsigned_abs())),
        d => format!("{} ago", short_duration(d.unsigned_abs())),
    }
}

/// `t` as RFC 3339 with its relative time: `2027-01-31T00:00:00Z (in 57d)`.
pub fn absolute_and_relative(now: Timestamp, t: Timestamp) -> String {
    format!("{} ({})", crate::time::rfc3339(t), relative(now, t))
}

/// A relative time, or `-` when there is none.
pub fn relative_or_dash(now: Timestamp, t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| relative(now, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn table_pads_columns_and_trims_the_last() {
        let rows = vec![
            vec!["a".to_owned(), "True".to_owned(), "".to_owned()],
            vec!["longer-name".to_owned(), "False".to_owned(), "x".to_owned()],
        ];
        let out = render(&["NAME", "READY", "NOTE"], &rows);
        assert_eq!(
            out,
            "NAME          READY   NOTE\na             True\nlonger-name   False   x\n"
        );
    }

    #[test]
    fn table_without_rows_is_the_header() {
        assert_eq!(render(&["NAME", "READY"], &[]), "NAME   READY\n");
    }

    #[test]
    fn durations_use_two_units_at_most() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(192), "3m12s");
        assert_eq!(short_duration(3_600), "1h");
        assert_eq!(short_duration(29 * 86_400 + 4 * 3_600 + 59), "29d4h");
    }

    #[test]
    fn relative_times_past_and_future() {
        let now = at("2026-12-05T09:00:00Z");
        assert_eq!(relative(now, at("2026-12-05T09:00:00Z")), "now");
        assert_eq!(relative(now, at("2027-01-03T13:00:00Z")), "in 29d4h");
        assert_eq!(relative(now, at("2026-12-05T08:56:48Z")), "3m12s ago");
        assert_eq!(
            absolute_and_relative(now, at("2026-12-05T10:00:00.9Z")),
            "2026-12-05T10:00:00Z (in 1h)"
        );
        assert_eq!(relative_or_dash(now, None), "-");
    }
}
