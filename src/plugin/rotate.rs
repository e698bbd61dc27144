//! `kubectl latchkey rotate NAME [--no-wait] [--timeout 60s]`: the README's
//! `kubectl annotate apikey NAME latchkey.dev/rotate=<now>` recipe, then
//! waiting until status says that request was honoured.

use super::cluster::{Cluster, KubeFlags, Target};
use super::error::PluginError;
use super::table;
use crate::crd::ApiKey;
use crate::meta::ROTATE_ANNOTATION;
use k8s_openapi::jiff::Timestamp;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    /// The ApiKey.
    pub name: String,
    /// Return once the rotation is requested, without waiting for the new key.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the new key (a duration: 60s, 2m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::time::parse_duration("--timeout", text)
        .map_err(|e| e.to_string())
        .and_then(|d| Duration::try_from(d).map_err(|e| e.to_string()))
}

/// The request is honoured when status names it and the current key is new.
pub fn rotated(ak: &ApiKey, request: &str, old_key_id: Option<&str>) -> Option<String> {
    let status = ak.status.as_ref()?;
    let current = status.current_key.as_ref()?;
    (status.last_rotate_request.as_deref() == Some(request) && Some(current.id.as_str()) != old_key_id)
        .then(|| current.id.clone())
}

pub async fn run(flags: &KubeFlags, args: RotateArgs) -> Result<(), PluginError> {
    let cluster = Cluster::connect(flags).await?;
    let ns = cluster.namespace.clone();
    let target = Target::api_keys(Some(&ns)).named(&args.name);
    let (api, before) = cluster.api_key(&args.name).await?;
    if before.is_revoked() {
        return Err(PluginError::Refused(format!(
            "ApiKey {ns}/{} is revoked: it is never rotated again; create a new ApiKey for a new key",
            args.name
        )));
    }
    let old = before
        .status
        .as_ref()
        .and_then(|s| s.current_key.as_ref())
        .map(|k| k.id.clone());
    // Nanoseconds make two requests within a second distinct values.
    let request = Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: request}}});
    cluster.patch_api_key(&api, &args.name, patch).await?;
    if args.no_wait {
        println!(
            "rotation of ApiKey {ns}/{} requested ({ROTATE_ANNOTATION}={request})",
            args.name
        );
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let ak = api
            .get(&args.name)
            .await
            .map_err(|e| cluster.error(e, "get", target))?;
        if let Some(new) = rotated(&ak, &request, old.as_deref()) {
            let status = ak.status.unwrap_or_default();
            let now = Timestamp::now();
            println!(
                "ApiKey {ns}/{} rotated: key id {} -> {new} (revision {})",
                args.name,
                old.as_deref().unwrap_or("-"),
                status.revision.unwrap_or_default()
            );
            if let Some(prev) = status.previous_keys.iter().find(|k| Some(&k.id) == old.as_ref()) {
                let until = prev
                    .valid_until
                    .as_ref()
                    .map(|t| table::absolute_and_relative(now, t.0));
                println!(
                    "previous key {} stays valid until {}",
                    prev.id,
                    until.unwrap_or_else(|| "-".to_owned())
                );
            }
            return Ok(());
        }
        if start.elapsed() >= args.timeout {
            return Err(PluginError::RotateTimeout {
                namespace: ns,
                name: args.name,
                request,
                after: format!("{:?}", args.timeout),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ak(request: Option<&str>, current: &str) -> ApiKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": "a", "namespace": "n"}, "spec": {},
            "status": {"lastRotateRequest": request,
                       "currentKey": {"id": current, "sha256": "00", "issuedAt": "2026-12-05T09:00:00Z"}}
        }))
        .unwrap()
    }

    #[test]
    fn rotated_needs_the_request_and_a_new_key() {
        assert_eq!(
            rotated(&ak(Some("r1"), "new"), "r1", Some("old")),
            Some("new".to_owned())
        );
        assert_eq!(rotated(&ak(Some("r0"), "new"), "r1", Some("old")), None);
        assert_eq!(rotated(&ak(Some("r1"), "old"), "r1", Some("old")), None);
        assert_eq!(rotated(&ak(None, "old"), "r1", None), None);
    }

    #[test]
    fn timeouts_are_durations() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("soon").is_err());
    }
}
