//! The request path a `resource=path` route judges, pure: the original
//! request's target as the proxy reports it, cut to its path, and refused
//! unless it is in the one canonical form every upstream reads the same way.
//!
//! Decision: **refuse, never normalise.** Upstreams disagree on what a path
//! means (nginx resolves `..` and `%2e%2e`, Tomcat strips `;params` before
//! resolving `..;`, IIS and some Node servers take `\` for `/`, some
//! frameworks decode `%2F` into a separator, some decode twice, some apply
//! Unicode compatibility normalisation), so a path latchkey normalised one
//! way could reach data another way. A canonical path has one reading, so
//! latchkey refuses (`400 invalid_request`) a path that:
//! - does not start with `/` (after an `http(s)://authority` prefix, which
//!   nginx's `X-Original-URL` carries), or whose authority holds anything
//!   but host characters;
//! - holds a `.` or `..` segment (also before a `;`, Tomcat's `..;`), raw
//!   (an encoded dot is refused below);
//! - holds an empty segment (`//`), but for a trailing `/`;
//! - holds a backslash, a `#`, a space, a control or a non-ASCII byte;
//! - percent-encodes an unreserved character (`%2e`, `%41`: not
//!   normalised), a separator (`%2F`, `%5C`), a `%` (double encoding,
//!   `%252e`), a control (`%00`) or a non-ASCII byte (`%C0%AE`, `%EF%BC%8E`:
//!   overlong and full-width dots), or is not `%` + two hex digits.
//!
//! The query is cut off and never judged (resources are paths); the
//! fragment never reaches a server, so a `#` is refused.
//!
//! Coverage ([`covers`]): a resource ending in `/` covers itself and every
//! path under it; any other resource `R` covers `R` and `R/…`, never `R`
//! followed by another character (`/topics/acme-events` does not cover
//! `/topics/acme-eventsX`). Exact, case-sensitive byte comparison of
//! canonical paths: no wildcard.

use thiserror::Error;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}", self.description())]
pub enum PathRefused {
    Missing,
    NotAbsolute,
    Authority,
    DotSegment,
    EmptySegment,
    Backslash,
    Character,
    EncodedSeparator,
    EncodedUnreserved,
    DoubleEncoding,
    EncodedByte,
    BadEncoding,
}

impl PathRefused {
    /// What is wrong, for `error_description` (never the path itself).
    pub fn description(self) -> &'static str {
        match self {
            PathRefused::Missing => "the proxy sent no original request path",
            PathRefused::NotAbsolute => "the request path does not start with '/'",
            PathRefused::Authority => {
                "the original URL's host holds characters a host cannot have, or no path follows it"
            }
            PathRefused::DotSegment => "the request path holds a '.' or '..' segment",
            PathRefused::EmptySegment => "the request path holds an empty segment ('//')",
            PathRefused::Backslash => "the request path holds a backslash",
            PathRefused::Character => {
                "the request path holds a '#', a space, a control or a non-ASCII character"
            }
            PathRefused::EncodedSeparator => "the request path percent-encodes a '/' or a backslash",
            PathRefused::EncodedUnreserved => {
                "the request path percent-encodes an unreserved character (not normalised)"
            }
            PathRefused::DoubleEncoding => "the request path percent-encodes a '%' (double encoding)",
            PathRefused::EncodedByte => "the request path percent-encodes a control or a non-ASCII byte",
            PathRefused::BadEncoding => "the request path has a '%' not followed by two hex digits",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The path of `target` (origin-form `/a/b?q`, or absolute-form
/// `http://host/a/b?q` as nginx's `X-Original-URL`), when canonical.
pub fn request_path(target: &str) -> Result<&str, PathRefused> {
    let mut rest = target;
    for scheme in ["http://", "https://"] {
        if rest.len() >= scheme.len() && rest[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let after = &rest[scheme.len()..];
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            let authority = &after[..end];
            let host_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~:[]@!$&'()*+,;=%".contains(&b);
            if !authority.bytes().all(host_char) {
                return Err(PathRefused::Authority);
            }
            rest = &after[end..];
            // nginx's `$request_uri` always starts with `/`: anything else
            // after the authority came from the client's `Host` (`h?x`).
            if !rest.starts_with('/') {
                return Err(PathRefused::Authority);
            }
            break;
        }
    }
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(PathRefused::NotAbsolute);
    }
    check_bytes(path)?;
    // No allocation on this path: it runs on every `resource=path` request.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathRefused::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(PathRefused::DotSegment);
        }
    }
    Ok(path)
}

/// Whether `segment` reads as a dot segment somewhere. Tomcat drops
/// `;params` before resolving dot segments (`..;`), a server that decodes
/// first sees `..%3B` or `..%3F` the same way, and Windows trims trailing
/// dots and spaces (`...`, `..%20`): a segment of dots and (encoded)
/// spaces only, up to its first `;` or other `%`, with at least one dot.
fn is_dot_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            // An encoded space counts as a space, which some servers trim.
            b'%' if bytes[i..].starts_with(b"%20") => i += 3,
            b';' | b'%' => break,
            b'.' => {
                dots += 1;
                i += 1;
            }
            b' ' => i += 1,
            _ => return false,
        }
    }
    dots > 0
}

fn check_bytes(path: &str) -> Result<(), PathRefused> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathRefused::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathRefused::BadEncoding);
                };
                let decoded = h * 16 + l;
                match decoded {
                    b'/' | b'\\' => return Err(PathRefused::EncodedSeparator),
                    b'%' => return Err(PathRefused::DoubleEncoding),
                    d if is_unreserved(d) => return Err(PathRefused::EncodedUnreserved),
                    d if !(0x20..0x7f).contains(&d) => return Err(PathRefused::EncodedByte),
                    _ => {}
                }
                i += 3;
                continue;
            }
            b if b <= 0x20 || b >= 0x7f || b == b'#' => return Err(PathRefused::Character),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Whether `resource` covers the canonical `path` (see the module's
/// documentation).
pub fn covers(resource: &str, path: &str) -> bool {
    if resource.ends_with('/') {
        path.starts_with(resource)
    } else {
        path.strip_prefix(resource)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths_pass_and_the_query_is_cut() {
        for (target, path) in [
            ("/calendar-events/acme/x", "/calendar-events/acme/x"),
            ("/calendar-events/acme/", "/calendar-events/acme/"),
            (
                "/calendar-events/acme/x?tenant=globex&p=../x",
                "/calendar-events/acme/x",
            ),
            (
                "http://app.example/calendar-events/acme/x?y=%2F",
                "/calendar-events/acme/x",
            ),
            (
                "HTTPS://app.example:8443/topics/acme-events",
                "/topics/acme-events",
            ),
            ("/", "/"),
            ("/a%20b/c%3Bd", "/a%20b/c%3Bd"),
            ("/a/.x/x../x.y", "/a/.x/x../x.y"),
        ] {
            assert_eq!(request_path(target), Ok(path), "{target}");
        }
    }

    #[test]
    fn every_escape_spelling_is_refused() {
        use PathRefused::*;
        for (target, why) in [
            ("/calendar-events/acme/../globex/x", DotSegment),
            ("/calendar-events/acme/./x", DotSegment),
            ("/calendar-events/acme/..", DotSegment),
            ("/calendar-events/acme/..;/globex/x", DotSegment),
            ("/calendar-events/acme/.;x/y", DotSegment),
            ("/calendar-events/acme/..%3B/globex/x", DotSegment),
            ("/calendar-events/acme/..%3F/x", DotSegment),
            ("/calendar-events/acme/..%20/globex/x", DotSegment),
            ("/calendar-events/acme/.../globex/x", DotSegment),
            ("/calendar-events/acme/%20../globex/x", DotSegment),
            ("/calendar-events/acme/.%20./globex/x", DotSegment),
            ("/calendar-events/acme/%2e%2e/globex/x", EncodedUnreserved),
            ("/calendar-events/acme/%2E%2E/globex/x", EncodedUnreserved),
            ("/calendar-events/acme/.%2e/globex/x", EncodedUnreserved),
            ("/calendar-events/acme%2F..%2Fglobex/x", EncodedSeparator),
            ("/calendar-events/acme%2f..%2fglobex/x", EncodedSeparator),
            ("/calendar-events/acme/..%5Cglobex/x", EncodedSeparator),
            ("/calendar-events/acme/..\\globex/x", Backslash),
            ("/calendar-events/acme//../globex/x", EmptySegment),
            ("//calendar-events/globex/x", EmptySegment),
            ("/calendar-events/acme/%252e%252e/globex/x", DoubleEncoding),
            ("/calendar-events/%61cme/x", EncodedUnreserved),
            ("/calendar-events/acme/%C0%AE%C0%AE/globex", EncodedByte),
            ("/calendar-events/acme/%EF%BC%8E%EF%BC%8E/globex", EncodedByte),
            ("/calendar-events/acme/%00/x", EncodedByte),
            ("/calendar-events/acme/%zz", BadEncoding),
            ("/calendar-events/acme/%2", BadEncoding),
            ("/calendar-events/acme/x#/../../globex", Character),
            ("/calendar-events/acme/a b", Character),
            ("/calendar-events/acme/é", Character),
            ("calendar-events/acme/x", NotAbsolute),
            ("*", NotAbsolute),
            ("", NotAbsolute),
            ("http://a\\b/calendar-events/acme/x", Authority),
            ("http://a b/calendar-events/acme/x", Authority),
            ("http://h?x/calendar-events/globex/x", Authority),
            ("http://h#x/calendar-events/globex/x", Authority),
            ("http://app.example", Authority),
        ] {
            assert_eq!(request_path(target), Err(why), "{target}");
        }
    }

    #[test]
    fn a_resource_covers_itself_and_what_is_under_it_never_a_longer_name() {
        assert!(covers("/calendar-events/acme/", "/calendar-events/acme/"));
        assert!(covers("/calendar-events/acme/", "/calendar-events/acme/x/y"));
        assert!(!covers("/calendar-events/acme/", "/calendar-events/acme"));
        assert!(!covers("/calendar-events/acme/", "/calendar-events/acmecorp/x"));
        assert!(covers("/topics/acme-events", "/topics/acme-events"));
        assert!(covers("/topics/acme-events", "/topics/acme-events/"));
        assert!(covers("/topics/acme-events", "/topics/acme-events/sub"));
        assert!(!covers("/topics/acme-events", "/topics/acme-eventsX"));
        assert!(!covers("/topics/acme-events", "/topics/acme-events;x"));
        assert!(!covers("/topics/acme-events", "/topics/globex-events"));
        assert!(covers("/", "/anything/at/all"));
    }

    /// Bytes a generated path is made of: every character class that has
    /// ever made a path mean two things.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_owned()),
            Just("//".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("/../".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            Just("acme".to_owned()),
            Just("globex".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%3B".to_owned()),
            Just("%3F".to_owned()),
            Just("%20".to_owned()),
            Just("%5C".to_owned()),
            Just("calendar-events".to_owned()),
            Just("/calendar-events/acme/".to_owned()),
            "%[0-9a-fA-F]{2}",
            "%25[0-9a-fA-F]{2}",
            "[a-zA-Z0-9._~-]{1,3}",
            "[ -~]",
        ]
    }

    /// What an upstream might make of a canonical-looking path at worst: every
    /// `%XX` decoded (repeatedly), `\` as `/`, `;params` dropped, dot segments
    /// resolved, empty segments merged.
    fn worst_reading(path: &str) -> String {
        let mut s = path.to_owned();
        for _ in 0..3 {
            s = percent_decode(&s);
        }
        let s = s.replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for seg in s.split('/') {
            let seg = seg.split([';', '?', '#']).next().unwrap_or_default();
            let only_dots = seg.bytes().all(|b| b == b'.' || b == b' ');
            let dots = seg.bytes().filter(|b| *b == b'.').count();
            if seg.trim().is_empty() || (only_dots && dots <= 1) {
                continue;
            }
            if only_dots {
                out.pop();
            } else {
                out.push(seg);
            }
        }
        format!("/{}", out.join("/"))
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                )
            {
                out.push(h * 16 + l);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// No generated path outside `/calendar-events/acme/` is ever allowed
        /// for an acme permission: whatever passes the canonical check and is
        /// covered by the resource stays under the prefix however an
        /// upstream reads it.
        #[test]
        fn nothing_outside_the_tenant_prefix_is_ever_allowed(
            pieces in proptest::collection::vec(piece(), 0..12),
            absolute in any::<bool>(),
        ) {
            let raw: String = pieces.concat();
            let target = if absolute { format!("http://app.example{raw}") } else { raw.clone() };
            let resource = "/calendar-events/acme/";
            if let Ok(path) = request_path(&target)
                && covers(resource, path)
            {
                let reading = worst_reading(path);
                prop_assert!(
                    reading.starts_with("/calendar-events/acme/") || reading == "/calendar-events/acme",
                    "{target:?} allowed, an upstream may read it as {reading:?}"
                );
            }
        }

        /// The allocation-free dot-segment reading is the one it replaced
        /// (`%20` → space, cut at the first `;` or `%`, dots and spaces
        /// only, at least one dot), on arbitrary segments.
        #[test]
        fn the_dot_segment_reading_is_unchanged(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("."), Just(".."), Just("%20"), Just("%2"), Just("%"), Just(";"),
                    Just(" "), Just("a"), Just("%2e"), Just("%3B"), Just("0"),
                ],
                0..8,
            ),
        ) {
            let segment: String = pieces.concat();
            let spaced = segment.replace("%20", " ");
            let bare = spaced.split([';', '%']).next().unwrap_or_default();
            let dots = bare.bytes().filter(|b| *b == b'.').count();
            let before = dots > 0 && bare.bytes().all(|b| b == b'.' || b == b' ');
            prop_assert_eq!(is_dot_segment(&segment), before, "{:?}", segment);
        }

        /// The same for a resource without a trailing slash.
        #[test]
        fn nothing_beside_a_topic_is_ever_allowed(
            pieces in proptest::collection::vec(piece(), 0..10),
            tail in "[ -~]{0,4}",
        ) {
            let target = format!("/topics/acme-events{tail}{}", pieces.concat());
            if let Ok(path) = request_path(&target)
                && covers("/topics/acme-events", path)
            {
                let reading = worst_reading(path);
                prop_assert!(
                    reading == "/topics/acme-events" || reading.starts_with("/topics/acme-events/"),
                    "{target:?} allowed, an upstream may read it as {reading:?}"
                );
            }
        }
    }
}
