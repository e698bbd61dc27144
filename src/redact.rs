//! Redaction of credentials in text that goes into a log line: URLs (the
//! original URL a proxy reports, a kubeconfig's server), headers, error
//! messages. Pure; used by the auth routes' debug log and, for every line of
//! every level and every crate, by the log writer ([`crate::telemetry`]).
//!
//! What is replaced by `[REDACTED]` (over-approximating on purpose: a log
//! line loses a little detail rather than carry a secret):
//! - the value of a URL query or form parameter (after `?`, `&` or `;`)
//!   whose name looks like a credential: it contains `key`, `token`,
//!   `secret`, `passw`, `pwd`, `auth`, `sig`, `credential`, `session` or
//!   `jwt`, or is `code` or `pass` (so `api_key`, `access_token`, `token`,
//!   `key`, `client_secret`, `X-Amz-Signature` …);
//! - the user information of a URL (`https://user:password@host` →
//!   `https://[REDACTED]@host`);
//! - the credential after `Bearer ` or `Basic ` (an `Authorization` header);
//! - anything that looks like a latchkey API key (`lk_<key id>_…`: the
//!   public key id is kept, the secret is not; other `lk_…` words go whole);
//! - anything that looks like a JWT (`ey…`.`…`.`…`, three base64url parts):
//!   latchkey's access tokens, a Kubernetes service-account token.

use std::borrow::Cow;

pub const REDACTED: &str = "[REDACTED]";
pub const REDACTED_JWT: &str = "[REDACTED-JWT]";

/// `text` with every credential in it replaced (borrowed when there is none).
pub fn redact(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // `copied`: how much of `text` is already in `out` (or needs no copy).
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some((end, replacement)) = match_at(text, i) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..i]);
            o.push_str(&replacement);
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// A credential starting at byte `i`: where it ends and what replaces
/// `text[i..end]`.
fn match_at(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let prev = i.checked_sub(1).map(|p| b[p]);
    match b[i] {
        b':' => userinfo(text, i),
        b'?' | b'&' | b';' => query_param(text, i),
        b'B' | b'b' if !prev.is_some_and(|p| p.is_ascii_alphanumeric()) => scheme_credential(text, i),
        b'l' if !prev.is_some_and(|p| p.is_ascii_alphanumeric()) => latchkey_key(text, i),
        b'e' if !prev.is_some_and(|p| is_b64url(p) || p == b'.') => jwt(text, i),
        _ => None,
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Characters that end a URL component or a value in a log line.
fn ends_value(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'&' | b'#' | b';' | b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`')
}

fn run(b: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    b[from..]
        .iter()
        .position(|c| !keep(*c))
        .map_or(b.len(), |n| from + n)
}

/// `://user:password@host` → `://[REDACTED]@host`.
fn userinfo(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    if !text[i..].starts_with("://") {
        return None;
    }
    let start = i + 3;
    let end = run(b, start, |c| !ends_value(c) && !matches!(c, b'/' | b'?'));
    let at = text[start..end].rfind('@')? + start;
    Some((at, format!("://{REDACTED}")))
}

/// Whether a parameter name looks like it carries a credential.
pub fn credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const PARTS: [&str; 10] = [
        "key",
        "token",
        "secret",
        "passw",
        "pwd",
        "auth",
        "sig",
        "credential",
        "session",
        "jwt",
    ];
    PARTS.iter().any(|p| name.contains(p)) || name == "code" || name == "pass"
}

/// `?api_key=VALUE` → `?api_key=[REDACTED]` (also after `&` and `;`).
fn query_param(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let name_end = run(b, i + 1, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'%')
    });
    if name_end == i + 1 || b.get(name_end) != Some(&b'=') {
        return None;
    }
    let name = &text[i + 1..name_end];
    if !credential_name(name) {
        return None;
    }
    let value_end = run(b, name_end + 1, |c| !ends_value(c));
    if value_end == name_end + 1 {
        return None;
    }
    Some((value_end, format!("{}{name}={REDACTED}", &text[i..i + 1])))
}

/// `Bearer CREDENTIAL` / `Basic CREDENTIAL` → `Bearer [REDACTED]`.
fn scheme_credential(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let scheme = ["bearer", "basic"].into_iter().find(|s| {
        text.get(i..i + s.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(s))
            && b.get(i + s.len()).is_some_and(|c| *c == b' ' || *c == b'\t')
    })?;
    let start = run(b, i + scheme.len(), |c| c == b' ' || c == b'\t');
    let end = run(b, start, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'.' | b'_' | b'~' | b'-')
    });
    if end == start {
        return None;
    }
    Some((end, format!("{}{REDACTED}", &text[i..start])))
}

/// `lk_<key id>_<secret>` → `lk_<key id>_[REDACTED]`; another `lk_…` word
/// of 8 characters or more → `lk_[REDACTED]`.
fn latchkey_key(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    if !text[i..].starts_with("lk_") {
        return None;
    }
    let start = i + 3;
    let end = run(b, start, |c| c.is_ascii_alphanumeric() || c == b'_');
    if end - start < 8 {
        return None;
    }
    let word = &text[start..end];
    let id_len = crate::key::KEY_ID_LEN;
    let kept = match word.as_bytes().get(id_len) {
        Some(b'_') if word[..id_len].bytes().all(|c| c.is_ascii_alphanumeric()) => &word[..=id_len],
        _ => "",
    };
    Some((end, format!("lk_{kept}{REDACTED}")))
}

/// `eyJ….….…` (three base64url parts, the last may be empty) → `[REDACTED-JWT]`.
fn jwt(text: &str, i: usize) -> Option<(usize, String)> {
    let b = text.as_bytes();
    // A JOSE header is a JSON object: `{"` is `eyJ` in base64url.
    if !text[i..].starts_with("eyJ") {
        return None;
    }
    let header_end = run(b, i, is_b64url);
    if header_end - i < 10 || b.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload_end = run(b, header_end + 1, is_b64url);
    if payload_end - header_end - 1 < 2 || b.get(payload_end) != Some(&b'.') {
        return None;
    }
    let end = run(b, payload_end + 1, is_b64url);
    Some((end, REDACTED_JWT.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ApiKeyValue;

    const JWT: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJl";

    #[test]
    fn query_credentials_are_redacted_and_other_parameters_kept() {
        let key = ApiKeyValue::generate();
        let url = format!(
            "https://app.example/api/orders?page=2&api_key={}&access_token=abc%2Fdef&token=t0k&key=k3y\
             &client_secret=s3cr3t&X-Amz-Signature=f00&sort=asc#frag",
            key.expose()
        );
        let r = redact(&url);
        assert_eq!(
            r,
            "https://app.example/api/orders?page=2&api_key=[REDACTED]&access_token=[REDACTED]\
             &token=[REDACTED]&key=[REDACTED]&client_secret=[REDACTED]&X-Amz-Signature=[REDACTED]\
             &sort=asc#frag"
        );
        assert!(!r.contains(key.expose()));
        // In a JSON log line the value ends at the closing quote.
        assert_eq!(
            redact(r#"{"url":"/a?password=hunter2","n":1}"#),
            r#"{"url":"/a?password=[REDACTED]","n":1}"#
        );
        // Empty values and parameters that are not credentials stay.
        assert_eq!(redact("/a?token=&page=1&monkeys"), "/a?token=&page=1&monkeys");
    }

    #[test]
    fn userinfo_in_urls_is_redacted() {
        assert_eq!(
            redact("GET http://alice:pa55@app.example:8080/x?y=1 and https://bob@h/"),
            "GET http://[REDACTED]@app.example:8080/x?y=1 and https://[REDACTED]@h/"
        );
        // An @ in the path or query is not user information.
        assert_eq!(redact("http://h/a@b?c=d@e"), "http://h/a@b?c=d@e");
    }

    #[test]
    fn latchkey_keys_keep_only_their_public_id() {
        let key = ApiKeyValue::generate();
        let line = format!("x-api-key: {} (and a mistyped lk_abcdefgh1234)", key.expose());
        let r = redact(&line);
        assert_eq!(
            r,
            format!(
                "x-api-key: lk_{}_[REDACTED] (and a mistyped lk_[REDACTED])",
                key.key_id()
            )
        );
        // Words that merely contain lk_ are left alone.
        assert_eq!(
            redact("bulk_write walk_through lk_x"),
            "bulk_write walk_through lk_x"
        );
    }

    #[test]
    fn jwts_and_authorization_credentials_are_redacted() {
        assert_eq!(redact(&format!("token {JWT} done")), "token [REDACTED-JWT] done");
        assert_eq!(redact(&format!("{JWT}.")), "[REDACTED-JWT].");
        // alg=none tokens have an empty signature.
        assert_eq!(redact("eyJhbGciOiJub25lIn0.eyJhIjoxfQ."), "[REDACTED-JWT]");
        assert_eq!(
            redact("authorization: Basic dXNlcjpwYXNz, Bearer opaque-Token_1"),
            "authorization: Basic [REDACTED], Bearer [REDACTED]"
        );
        assert_eq!(
            redact(&format!("Authorization: bearer {JWT}")),
            "Authorization: bearer [REDACTED]"
        );
        // Words that only start like a JWT or a scheme stay.
        assert_eq!(
            redact("eyes.on.it keyboard Basics Bearers"),
            "eyes.on.it keyboard Basics Bearers"
        );
    }

    #[test]
    fn text_without_credentials_is_borrowed_untouched() {
        let line = "ApiKey index loaded keys=12 api_keys=3 route=nginx url=https://app/x?page=2";
        assert!(matches!(redact(line), Cow::Borrowed(_)));
        assert!(matches!(redact(""), Cow::Borrowed(_)));
        // Non-ASCII text survives (slicing only at ASCII positions).
        assert_eq!(redact("é?token=ü&x=€"), "é?token=[REDACTED]&x=€");
    }

    #[test]
    fn credential_like_names() {
        for n in [
            "api_key",
            "apikey",
            "API-KEY",
            "access_token",
            "token",
            "key",
            "client_secret",
            "password",
            "passwd",
            "pwd",
            "auth",
            "sig",
            "jwt",
            "sessionid",
            "code",
            "pass",
        ] {
            assert!(credential_name(n), "{n}");
        }
        for n in ["page", "scope", "audience", "namespace", "user", "q"] {
            assert!(!credential_name(n), "{n}");
        }
    }
}
