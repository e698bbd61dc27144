//! The AdmissionReview v1 wire format: only the fields latchkey reads, parsed
//! without trusting anything, and the response it sends back.

use serde::Deserialize;
use serde_json::{Value, json};

/// The `request` of an AdmissionReview, as far as latchkey needs it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    /// The kind of the object (`group` is empty for core objects).
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub old_object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// Who is asking (the authenticated user, after impersonation).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest>,
}

/// A body that is not an AdmissionReview v1 with a request: answered with
/// 400 and this message (no verdict can be given without a request uid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed AdmissionReview: {0}")]
pub struct Malformed(pub String);

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Parses a request body. Never panics.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, Malformed> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        // serde's message names the position and the expected type, never
        // more than a short excerpt of the input.
        Malformed(format!("not an AdmissionReview JSON object ({e})"))
    })?;
    if envelope.api_version != API_VERSION || envelope.kind != "AdmissionReview" {
        return Err(Malformed(format!(
            "expected apiVersion {API_VERSION} and kind AdmissionReview, got {:?} and {:?}",
            truncate(&envelope.api_version, 64),
            truncate(&envelope.kind, 64)
        )));
    }
    let request = envelope
        .request
        .ok_or_else(|| Malformed("the AdmissionReview has no request".into()))?;
    if request.uid.is_empty() {
        return Err(Malformed("request.uid is empty".into()));
    }
    Ok(request)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// What the webhook answers: allowed or not, why, and warnings that kubectl
/// shows the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub message: String,
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn allow(message: impl Into<String>) -> Self {
        Self {
            allowed: true,
            message: message.into(),
            warnings: Vec::new(),
        }
    }

    pub fn deny(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            message: message.into(),
            warnings: Vec::new(),
        }
    }

    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }
}

/// The AdmissionReview that answers request `uid` with `verdict`.
pub fn render(uid: &str, verdict: &Verdict) -> Value {
    let status = if verdict.allowed {
        json!({"code": 200, "message": verdict.message})
    } else {
        json!({"code": 403, "reason": "Forbidden", "message": verdict.message})
    };
    let mut response = json!({
        "uid": uid,
        "allowed": verdict.allowed,
        "status": status,
    });
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_parses_and_garbage_is_malformed() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"latchkey.dev","version":"v1alpha1","kind":"ApiKey"},"operation":"CREATE","userInfo":{"username":"alice"},"namespace":"ns","object":{}}}"#;
        let r = parse(body).unwrap();
        assert_eq!(r.uid, "u1");
        assert_eq!(r.kind.kind, "ApiKey");
        assert_eq!(r.user_info.username, "alice");
        for bad in [
            &b"not json"[..],
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{},"operation":"CREATE"}}"#,
            br#"[]"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_denial_renders_uid_allowed_and_message() {
        let v = render("u1", &Verdict::deny("no").with_warning("careful"));
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["response"]["uid"], "u1");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["message"], "no");
        assert_eq!(v["response"]["warnings"][0], "careful");
    }
}
