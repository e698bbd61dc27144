//! CEL rules that more than one CRD field uses, written once so that the
//! kinds refuse the same input with the same words.

/// Every entry printable ASCII without spaces (audiences of every kind).
pub const PRINTABLE_ENTRIES: &str = "self.all(a, a.matches('^[!-~]+$'))";
/// The message of [`PRINTABLE_ENTRIES`] on `spec.audiences`.
pub const PRINTABLE_AUDIENCES_MESSAGE: &str =
    "every entry of spec.audiences must be printable ASCII without spaces";

/// Every entry a scope: a letter or digit, then letters, digits and
/// `. _ : / * -` (ApiKey `spec.scopes`, TokenPolicy `spec.allowedScopes`).
pub const SCOPE_ENTRIES: &str = "self.all(s, s.matches('^[A-Za-z0-9][A-Za-z0-9._:/*-]*$'))";

/// Every entry a namespace name, a prefix of one followed by `*`, or `*`
/// (CredentialGrant `spec.namespaces` and `spec.introspectNamespaces`).
pub const NAMESPACE_PATTERN_ENTRIES: &str =
    "self.all(p, p.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$|^[-a-z0-9]*[*]$'))";
