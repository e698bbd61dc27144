//! The TokenPolicy custom resource (`latchkey.dev/v1alpha1`, short name `tp`):
//! an issuer of short-lived JWTs (RFC 9068 access tokens) that API keys are
//! exchanged for at `POST /token`, with signing keys latchkey rotates.
//!
//! Spec is the user's; status (written only by the controller, with
//! Server-Side Apply) lists the signing keys' public halves and schedule. The
//! private keys live only in the Secret `<name>-signing-keys`, owned by the
//! policy.

// Several `printcolumn(...)` entries look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use super::rules;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Go-style duration syntax accepted by the API server's CEL `duration()`.
const DURATION_PATTERN: &str = "^([0-9]{1,5}h)?([0-9]{1,5}m)?([0-9]{1,5}s)?$";

/// Spec of a TokenPolicy: who issues, for whom, with which keys, and what a
/// token may carry.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "TokenPolicy",
    plural = "tokenpolicies",
    namespaced,
    shortname = "tp",
    category = "latchkey",
    status = "TokenPolicyStatus",
    derive = "PartialEq",
    doc = "A TokenPolicy makes latchkey an issuer of short-lived, scoped JWT access tokens \
           (RFC 9068). ApiKeys that reference it (spec.tokenPolicyRef) or that its \
           apiKeySelector matches exchange their key for a token at POST /token. Signing keys \
           are generated and rotated by latchkey; each new key is published in the JWKS before \
           it signs, and a retired key stays published until every token it signed has expired.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".status.algorithm"),
    printcolumn(name = "Active Kid", type_ = "string", json_path = ".status.activeKeyId"),
    // A future time as a `string` column: a `date` column prints `<invalid>`
    // for it (see the ApiKey's columns); the past one stays `date`.
    printcolumn(name = "Next Rotation", type_ = "string", json_path = ".status.nextRotationAt"),
    printcolumn(
        name = "Last Rotated",
        type_ = "date",
        json_path = ".status.lastRotatedAt",
        priority = 1
    ),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".status.issuer", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(
    "!has(self.tokenTTL) || !has(self.maxTTL) || duration(self.tokenTTL) <= duration(self.maxTTL)"
).message("spec.tokenTTL must not be longer than spec.maxTTL").field_path(".tokenTTL"))]
#[x_kube(validation = Rule::new(rules::ROLE_SCOPES_ALLOWED)
    .message(rules::ROLE_SCOPES_ALLOWED_MESSAGE).field_path(".roles"))]
#[x_kube(validation = Rule::new(rules::TRUSTED_CLAIMS_DECLARED)
    .message(rules::TRUSTED_CLAIMS_DECLARED_MESSAGE).field_path(".trustedIssuers"))]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicySpec {
    /// The `iss` of every token, an `https://` or `http://` URL without query
    /// or fragment. Defaults to `<server URL>/issuers/<namespace>/<name>`
    /// (the server's `--issuer-base-url`), which latchkey serves discovery and
    /// JWKS for; a custom issuer is served by latchkey when a proxy routes its
    /// path to the latchkey server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new(
        "self.matches('^https?://[^/?#\\\\s]+(/[^?#\\\\s]*)?$') && !self.endsWith('/')"
    ).message("spec.issuer must be an http(s) URL without query, fragment or trailing slash, for example https://auth.example.com/tenants/a"))]
    pub issuer: Option<String>,

    /// The audiences (`aud`) tokens may be issued for; a token request picks
    /// some of them (default: all). 1–16 entries, no duplicates.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::PRINTABLE_ENTRIES).message(rules::PRINTABLE_AUDIENCES_MESSAGE))]
    pub audiences: Vec<String>,

    /// Signature algorithm of the signing keys: `ES256` (default), `EdDSA`
    /// (Ed25519) or `RS256` (2048-bit RSA). Changing it rotates to a key of
    /// the new algorithm (published before it signs, as any rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,

    /// How signing keys rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<SigningKeys>,

    /// Lifetime of a token when the request does not ask for one, as a
    /// duration such as `15m`. Default `15m`; between `10s` and `24h`; not
    /// longer than `maxTTL`.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('10s') && duration(self) <= duration('24h')"
    ).message("spec.tokenTTL must be a duration between 10s and 24h, for example 15m"))]
    pub token_ttl: Option<String>,

    /// The longest lifetime a token may be issued with. Default `1h`; between
    /// `10s` and `24h`. A retired signing key stays published for this long
    /// (plus one minute of leeway) after it stopped signing.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('10s') && duration(self) <= duration('24h')"
    ).message("spec.maxTTL must be a duration between 10s and 24h, for example 1h"))]
    pub max_ttl: Option<String>,

    /// Scopes a token of this policy may carry. A token's scopes are also
    /// limited to the scopes of the ApiKey that asked for it. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::SCOPE_ENTRIES)
        .message("every entry of spec.allowedScopes must start with a letter or digit and contain only letters, digits and . _ : / * - (no spaces)"))]
    pub allowed_scopes: Vec<String>,

    /// Roles a token request may name (`role=`): role name → its
    /// permissions, each a set of scopes on a set of resources (URL path
    /// templates over the token's custom claims, `{tenant}`; a permission
    /// without resources applies everywhere). The token carries them with
    /// the templates filled in (`authorization_details`) and their scopes'
    /// union in `scope`. Every scope must be in `allowedScopes`, every
    /// `{name}` a `customClaims` entry. At most 16 roles of 8 permissions.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "roles_of_either_shape"
    )]
    #[schemars(extend("maxProperties" = 16))]
    #[schemars(extend("additionalProperties" = rules::permissions_schema()))]
    #[x_kube(validation = Rule::new("self.all(r, r.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'))")
        .message("every role name in spec.roles must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"))]
    pub roles: BTreeMap<String, Vec<Permission>>,

    /// Custom claims a token request may set (`claim.<name>=<value>`, a
    /// string), for example a tenant id the upstream uses to restrict data.
    /// A name may not be (in any case) a registered JWT claim, an RFC 7662
    /// introspection member or one of latchkey's own claims: active, scope,
    /// client_id, username, token_type, exp, iat, nbf, sub, aud, iss, jti,
    /// role, act, may_act, sid, typ, cnf, azp, auth_time, acr, amr, nonce,
    /// authorization_details. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, !(c.name.lowerAscii() in ['active','scope','client_id','username','token_type','exp','iat','nbf','sub','aud','iss','jti','role','act','may_act','sid','typ','cnf','azp','auth_time','acr','amr','nonce','authorization_details','idp']))")
        .message("spec.customClaims[].name must not be a reserved claim name (in any case: active, scope, client_id, username, token_type, exp, iat, nbf, sub, aud, iss, jti, role, act, may_act, sid, typ, cnf, azp, auth_time, acr, amr, nonce, authorization_details, idp): they are RFC 7662 introspection members or claims latchkey sets itself; rename the claim, for example tenant or x_active"))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))")
        .message("spec.customClaims must not name a claim twice"))]
    pub custom_claims: Vec<CustomClaim>,

    /// ApiKeys in this namespace whose labels match may exchange their key
    /// for a token of this policy, besides those naming it in
    /// `spec.tokenPolicyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_selector: Option<LabelSelector>,

    /// Lets the ApiKeys this policy admits mint tokens for end users
    /// (`requested_subject=<user>` at `POST /token`): the token's `sub` is
    /// the user, its `act.sub` the ApiKey's subject. Without it,
    /// `requested_subject` is refused (`unauthorized_client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,

    /// The longest a session lasts through refreshes (RFC 8693 token
    /// exchange at `POST /token`): no token of a session expires after its
    /// `auth_time` plus this. Default: `maxTTL` (no refresh past the first
    /// token's longest lifetime); between `10s` and `8760h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('10s') && duration(self) <= duration('8760h')"
    ).message("spec.sessionMaxAge must be a duration between 10s and 8760h, for example 8h"))]
    pub session_max_age: Option<String>,

    /// Revokes every token of this policy whose session began (`auth_time`)
    /// before this instant (RFC 3339), refreshes included: "log everybody
    /// out". Tokens minted afterwards are unaffected. Enforced by every
    /// server replica through its TokenPolicy watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_tokens_issued_before: Option<Time>,

    /// Revokes the tokens of one subject (`sub`: the user of a delegated
    /// token, else the ApiKey's subject) whose session began before
    /// `issuedBefore`. At most 256 entries, one per subject; an entry older
    /// than `sessionMaxAge` revokes nothing more and may be removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(o, o.subject == r.subject))")
        .message("spec.revokedSubjects must not name a subject twice; keep one entry with the latest issuedBefore"))]
    pub revoked_subjects: Vec<RevokedSubject>,

    /// External identity providers (OpenID providers) whose JWTs may be
    /// exchanged for a token of this policy (RFC 8693 token exchange at
    /// `POST /token` with `subject_token_type=urn:ietf:params:oauth:token-type:jwt`
    /// or `...:id_token`): the new token names the external subject, the
    /// role its role claim names, and custom claims copied from its claims.
    /// At most 8, one per issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(o, o.issuer == t.issuer))")
        .message("spec.trustedIssuers must not name an issuer twice"))]
    pub trusted_issuers: Vec<TrustedIssuer>,
}

/// The rule shared by `issuer` and `jwksURL` of a trusted issuer: `https://`,
/// or `http://` on a loopback host only (a provider on the same machine, as
/// in tests); no query, fragment, user info or whitespace.
pub const TRUSTED_URL_RULE: &str = "self.matches('^https://[^/?#@\\\\s]+(/[^?#\\\\s]*)?$') \
     || self.matches('^http://(127[.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}|localhost|\\\\[::1\\\\])(:[0-9]{1,5})?(/[^?#\\\\s]*)?$')";

/// An external OpenID provider a TokenPolicy trusts (`spec.trustedIssuers[]`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.claims) || self.claims.all(c, c.matches('^[A-Za-z][A-Za-z0-9_-]{0,63}$'))")
    .message("every key of spec.trustedIssuers[].claims must be a custom claim name (letters, digits, '_' or '-', starting with a letter, at most 64)").field_path(".claims"))]
pub struct TrustedIssuer {
    /// The external token's `iss`, exactly (an `https://` URL; `http://`
    /// only on a loopback host such as 127.0.0.1, for tests). Without
    /// `jwksURL`, its keys are found by OpenID discovery at
    /// `<issuer>/.well-known/openid-configuration`.
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new(TRUSTED_URL_RULE)
        .message("spec.trustedIssuers[].issuer must be an https:// URL (http:// only on a loopback host such as 127.0.0.1) without query, fragment or user info, for example https://idp.example.com"))]
    pub issuer: String,

    /// Where the provider publishes its JWK Set; same rule as `issuer`.
    /// Default: the `jwks_uri` of the issuer's OpenID discovery document.
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new(TRUSTED_URL_RULE)
        .message("spec.trustedIssuers[].jwksURL must be an https:// URL (http:// only on a loopback host such as 127.0.0.1) without query, fragment or user info, for example https://idp.example.com/.well-known/jwks.json"))]
    pub jwks_url: Option<String>,

    /// The external token's `aud` must contain one of these (the audience
    /// the provider gives tokens meant for latchkey). 1–8 entries.
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(rules::PRINTABLE_ENTRIES)
        .message("every entry of spec.trustedIssuers[].audiences must be printable ASCII without spaces"))]
    pub audiences: Vec<String>,

    /// The external claim that becomes the new token's `sub` (a string).
    /// Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z_][A-Za-z0-9_.:-]*$"))]
    pub subject_claim: Option<String>,

    /// The external claim (a string or a list of strings, such as `groups`)
    /// whose first value naming one of `spec.roles` becomes the new token's
    /// role. An external token naming none is refused. Without it, the
    /// token has no role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z_][A-Za-z0-9_.:-]*$"))]
    pub role_claim: Option<String>,

    /// Custom claim of the new token (a `spec.customClaims` name) → the
    /// external claim (a string) it is copied from, for example
    /// `{tenant: org}`. A required custom claim missing from the external
    /// token refuses the exchange. At most 16.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[schemars(extend("additionalProperties" = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z_][A-Za-z0-9_.:-]*$"}))]
    pub claims: BTreeMap<String, String>,
}

/// The tokens of one subject revoked by an operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSubject {
    /// The token's `sub`, exactly.
    #[schemars(length(min = 1, max = 256))]
    pub subject: String,
    /// Tokens whose session began (`auth_time`) before this instant are
    /// refused; usually the moment the entry is written.
    pub issued_before: Time,
}

/// Delegation: whom the admitted ApiKeys may mint tokens for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// An RE2 regular expression (Rust's `regex` syntax: no look-around, no
    /// back-references) that a requested subject must match as a whole
    /// (it is anchored at both ends), for example `^user-[0-9]+$`. At most
    /// 256 characters; the admission webhook refuses one that does not
    /// compile or compiles to more than 64 KiB.
    #[schemars(length(min = 1, max = 256))]
    pub subject_pattern: String,
}

/// Signature algorithm of a policy's signing keys.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256.
    #[default]
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256, 2048-bit keys.
    RS256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::RS256 => "RS256",
        }
    }
}

/// Rotation of the signing keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeys {
    /// How long a key signs before the next one takes over, as a duration
    /// such as `720h`. Default `720h` (30 days); between `1m` and `8760h`.
    /// The annotation `latchkey.dev/rotate` (any new value) asks for one
    /// rotation now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) >= duration('1m') && duration(self) <= duration('8760h')"
    ).message("spec.signingKeys.rotationInterval must be a duration between 1m and 8760h, for example 720h"))]
    pub rotation_interval: Option<String>,

    /// How long a new key is published in the JWKS before it signs, so that
    /// verifiers' JWKS caches hold it first. Default `10m`; between `0s` and
    /// `24h`. The JWKS's `Cache-Control: max-age` is half of this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 24), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "self != '' && duration(self) <= duration('24h')"
    ).message("spec.signingKeys.prePublish must be a duration of at most 24h, for example 10m"))]
    pub pre_publish: Option<String>,
}

/// One permission of a role: `scopes` on `resources`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    /// The scopes this permission grants (each in `spec.allowedScopes`).
    pub scopes: Vec<String>,
    /// URL path templates the scopes apply to, such as
    /// `/calendar-events/{tenant}/` (a trailing `/`: everything under it) or
    /// `/topics/{tenant}-events` (that path and the paths under it). `{name}`
    /// is the token's custom claim `name`. Empty: everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

/// `spec.roles` as written now (role → permissions), or as v1alpha1 first
/// had it (role → scopes, stored before the change): a list entry that is
/// a string is a scope of one permission without resources (everywhere),
/// so a policy stored in the old shape still reads, with its old meaning,
/// instead of failing the whole watch of TokenPolicies. The CRD's schema
/// admits only the new shape for new writes.
fn roles_of_either_shape<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<Permission>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Scope(String),
        Permission(Permission),
    }
    let raw: BTreeMap<String, Vec<Entry>> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(role, entries)| {
            let mut old = Vec::new();
            let mut permissions = Vec::new();
            for entry in entries {
                match entry {
                    Entry::Scope(scope) => old.push(scope),
                    Entry::Permission(p) => permissions.push(p),
                }
            }
            if !old.is_empty() {
                permissions.insert(
                    0,
                    Permission {
                        scopes: old,
                        resources: Vec::new(),
                    },
                );
            }
            (role, permissions)
        })
        .collect())
}

/// A custom claim a token request may set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomClaim {
    /// Claim name, 1–64 letters, digits, `_` or `-`, starting with a letter.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_-]*$')")
        .message("spec.customClaims[].name must be letters, digits, '_' or '-', starting with a letter"))]
    pub name: String,
    /// Whether every token request must set it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// One signing key, as status records it: the public half and its schedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRecord {
    /// The key id (`kid` of the JWK and of every token it signs).
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// The public key as a JWK (JSON); the private key is only in the Secret.
    pub public_jwk: String,
    /// When it was first listed (published in the JWKS).
    pub published_at: Time,
    /// From when it signs (the newest key whose `activeFrom` has passed signs).
    pub active_from: Time,
    /// When it stopped (or stops) signing: the next key's `activeFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Time>,
    /// When it leaves the JWKS: `retiresAt` + the longest `maxTTL` seen while
    /// it signed + one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<Time>,
    /// The longest `maxTTL` (seconds) in force while this key signed.
    pub max_ttl_seconds: i64,
}

/// Observed state of a TokenPolicy, written by latchkey.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The issuer in force (`spec.issuer` or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The algorithm of the key that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,
    /// The `kid` that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// Every published key, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SigningKeyRecord>,
    /// The Secret holding the private keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_name: Option<String>,
    /// The ConfigMap holding the JWKS (data key `jwks.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_config_map_name: Option<String>,
    /// When the newest key was generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<Time>,
    /// When the next key will be published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// The last value of the `latchkey.dev/rotate` annotation honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// `Ready`, `Reconciling` and `Stalled` (kstatus conventions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Sessions revoked at `POST /revoke`: session id (`sid`) → until when
    /// (Unix seconds: no token of the session is valid after it; the entry
    /// is pruned then). Written only by the auth server (a JSON merge patch
    /// guarded by `metadata.resourceVersion`); the controller never writes
    /// it. At most 10000 entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 10000))]
    pub revoked_sessions: BTreeMap<String, i64>,
}

impl TokenPolicyStatus {
    /// The status without the fields the auth server owns (the
    /// controller's Server-Side Apply must neither own nor remove them).
    pub fn without_server_fields(mut self) -> Self {
        self.revoked_sessions.clear();
        self
    }
}

impl TokenPolicy {
    /// The Secret holding the private signing keys.
    pub fn signing_secret_name(&self) -> String {
        format!(
            "{}-signing-keys",
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The ConfigMap holding the public JWKS.
    pub fn jwks_config_map_name(&self) -> String {
        format!("{}-jwks", self.metadata.name.as_deref().unwrap_or_default())
    }

    /// `spec.issuer`, or `<base>/issuers/<namespace>/<name>`.
    pub fn issuer(&self, base_url: &str) -> String {
        self.spec.issuer.clone().unwrap_or_else(|| {
            format!(
                "{}/issuers/{}/{}",
                base_url.trim_end_matches('/'),
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }

    /// The `(namespace, name)` whose default issuer path an explicit
    /// `spec.issuer` has the shape of (`…/issuers/<namespace>/<name>`), when
    /// that is not this policy's own: a squat of someone else's default.
    pub fn squatted_default(&self) -> Option<(String, String)> {
        let path = issuer_path(self.spec.issuer.as_deref()?);
        let (ns, name) = default_path_owner(&path)?;
        let own = (
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
        );
        (own != (ns.as_str(), name.as_str())).then_some((ns, name))
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.spec.algorithm.unwrap_or_default()
    }
}

/// The path of an issuer URL as the server routes it: `/issuers/a/b`, or
/// `""` for an issuer without a path (the trailing slash trimmed).
pub fn issuer_path(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, r)| r);
    rest.find('/')
        .map_or(String::new(), |i| rest[i..].trim_end_matches('/').to_owned())
}

/// The `(namespace, name)` whose default issuer path `path` is, when it ends
/// with `/issuers/<namespace>/<name>` (after percent-decoding, so that an
/// encoded spelling is recognised too).
pub fn default_path_owner(path: &str) -> Option<(String, String)> {
    let decoded: String =
        form_urlencoded::parse(format!("p={}", path.replace('+', "%2B").replace('&', "%26")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    let mut segments = decoded.rsplit('/');
    let name = segments.next()?;
    let ns = segments.next()?;
    (segments.next()? == "issuers" && !ns.is_empty() && !name.is_empty())
        .then(|| (ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_in_the_new_shape_and_in_the_first_v1alpha1_one() {
        let spec: TokenPolicySpec = serde_json::from_value(serde_json::json!({
            "audiences": ["a"],
            "roles": {
                "old": ["calendar-events:read", "calendar-events:write"],
                "new": [{"scopes": ["calendar-events:read"], "resources": ["/calendar-events/{tenant}/"]}]
            }
        }))
        .unwrap();
        assert_eq!(
            spec.roles["old"],
            [Permission {
                scopes: vec!["calendar-events:read".into(), "calendar-events:write".into()],
                resources: vec![],
            }]
        );
        assert_eq!(spec.roles["new"][0].resources, ["/calendar-events/{tenant}/"]);
        // Written back, always in the new shape.
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["roles"]["old"][0]["scopes"][1], "calendar-events:write");
    }
}
