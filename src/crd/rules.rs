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

/// Every scope of every role's permissions is in `spec.allowedScopes`
/// (TokenPolicy).
pub const ROLE_SCOPES_ALLOWED: &str = "!has(self.roles) || self.roles.all(r, self.roles[r].all(p, \
     p.scopes.all(s, has(self.allowedScopes) && s in self.allowedScopes)))";
/// The message of [`ROLE_SCOPES_ALLOWED`].
pub const ROLE_SCOPES_ALLOWED_MESSAGE: &str = "every scope of spec.roles must also be listed in \
     spec.allowedScopes: add it there, or remove it from the role's permission";

/// Every custom claim a trusted issuer fills (`spec.trustedIssuers[].claims`
/// keys) is a `spec.customClaims` entry (TokenPolicy).
pub const TRUSTED_CLAIMS_DECLARED: &str = "!has(self.trustedIssuers) || self.trustedIssuers.all(t, \
     !has(t.claims) || t.claims.all(k, has(self.customClaims) && self.customClaims.exists(c, c.name == k)))";
/// The message of [`TRUSTED_CLAIMS_DECLARED`].
pub const TRUSTED_CLAIMS_DECLARED_MESSAGE: &str = "every key of spec.trustedIssuers[].claims must be a \
     custom claim of spec.customClaims: add it there (for example {name: tenant}), or remove it from the claims map";

// That every `{name}` of a role's resources is a `spec.customClaims`
// entry is the webhook's (`admission`): every CEL form of it (findAll, or a
// regex joined from the claim names) is estimated 25-100x over the API
// server's cost budget at these bounds.

/// A resource template: a URL path of unreserved and a few sub-delimiter
/// characters with `{claim}` templates (every brace closed), no `//`, no
/// `.` or `..` segment (the same rule as `token::permissions::check_template`).
pub const RESOURCE_SYNTAX: &str = "self.all(r, r.matches('^/([A-Za-z0-9._~!$&()+,;=:@/-]|[{][A-Za-z][A-Za-z0-9_-]*[}])*$') \
     && !r.contains('//') && !r.matches('(^|/)[.][.]?(/|$)'))";
/// The message of [`RESOURCE_SYNTAX`].
pub const RESOURCE_SYNTAX_MESSAGE: &str = "every resource of spec.roles must be a URL path that starts with \
     '/' and holds only letters, digits, - . _ ~ ! $ & ( ) + , ; = : @ / and {claim} templates with every \
     '{' closed by '}' (no %, ?, #, *, backslash or space; no '//', no '.' or '..' segment), for example \
     /calendar-events/{tenant}/";

/// The schema of one role's permissions (`spec.roles.<role>` of a
/// TokenPolicy): at most 8 permissions, each 1-16 scopes on at most 4
/// resources of at most 128 characters (bounds that keep the CEL rules
/// within the API server's cost budget).
pub fn permissions_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "maxItems": 8,
        "items": {
            "type": "object",
            "required": ["scopes"],
            "properties": {
                "scopes": {
                    "description": "The scopes this permission grants (each in spec.allowedScopes).",
                    "type": "array", "minItems": 1, "maxItems": 16, "x-kubernetes-list-type": "set",
                    "items": {"type": "string", "minLength": 1, "maxLength": 128}
                },
                "resources": {
                    "description": "URL path templates the scopes apply to, such as /calendar-events/{tenant}/ \
                        (a trailing /: everything under it) or /topics/{tenant}-events (that path and the paths \
                        under it); {name} is the token's custom claim name. Empty: everywhere.",
                    "type": "array", "maxItems": 4, "x-kubernetes-list-type": "set",
                    "items": {"type": "string", "minLength": 1, "maxLength": 128},
                    "x-kubernetes-validations": [{"rule": RESOURCE_SYNTAX, "message": RESOURCE_SYNTAX_MESSAGE}]
                }
            }
        }
    })
}
