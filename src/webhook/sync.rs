//! Keeping the CA Secret and the ValidatingWebhookConfiguration in line,
//! every sync interval and at once when this replica takes the Lease: the Secret is the truth (a replaced CA is adopted, a
//! deleted one re-created), and the leader writes the configuration (the
//! whole object out of cluster, only `caBundle` in cluster).

use super::{FIELD_MANAGER, Options, WebhookError, configuration, kube_err};
use crate::tls::signed::Signed;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::sync::Arc;
use tokio::sync::watch;

/// Brings the configuration in line with `ca_pem`: the whole object out of
/// cluster, only `caBundle` in cluster.
pub async fn sync_configuration(
    client: &Client,
    options: &Options,
    ca_pem: &str,
) -> Result<(), WebhookError> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration as Vwc;
    let api: Api<Vwc> = Api::all(client.clone());
    let name = &options.configuration_name;
    if let Some(url) = &options.url {
        let spec = configuration::ConfigurationSpec {
            name: name.clone(),
            url: url.clone(),
            namespaces: options.namespaces.clone(),
            failure_policy: options.failure_policy.clone(),
            timeout_seconds: options.timeout_seconds,
            secret_operations: options.secret_operations.clone(),
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(configuration::desired(&spec, ca_pem)),
        )
        .await
        .map_err(kube_err("applying the ValidatingWebhookConfiguration"))?;
        return Ok(());
    }
    let current = api
        .get(name)
        .await
        .map_err(kube_err("reading the ValidatingWebhookConfiguration"))?;
    let current = serde_json::to_value(&current).unwrap_or_default();
    if let Some(patch) = configuration::ca_bundle_patch(&current, ca_pem) {
        api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_err("patching the caBundle"))?;
        tracing::info!(configuration = %name, "wrote the CA into caBundle");
    }
    Ok(())
}

/// A sync round now, then one every `options.sync_interval`, and one at
/// once whenever this replica takes the Lease, forever (abort the task when
/// serving ends).
pub(super) async fn keep_in_sync(client: Client, options: Options, serving: Arc<Signed>) {
    let leading = options.leading.clone();
    schedule(options.sync_interval, leading, |leads| {
        sync_round(&client, &options, &serving, leads)
    })
    .await;
}

/// What woke the sync loop between two rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// The sync interval has passed since the last round.
    Interval,
    /// This replica's leadership changed; `true`: it leads now.
    Leadership(bool),
}

/// Whether a round runs now: every interval, and the moment this replica
/// becomes the leader. A fresh install's first round runs before any
/// replica holds the Lease (so it writes no `caBundle`); waiting for the
/// next interval left the webhook unusable for up to a minute after `helm
/// install --wait` (issue 17). Losing the lead needs no round (the new
/// leader writes; this replica keeps serving with the same CA).
pub(super) fn round_now(wake: Wake) -> bool {
    matches!(wake, Wake::Interval | Wake::Leadership(true))
}

/// Runs `round(leads)` now, then as [`round_now`] says. Without a
/// leadership flag (`None`) this process always leads; once the flag's
/// sender is gone, its last value stands and only the interval wakes.
async fn schedule<F, Fut>(
    interval: std::time::Duration,
    mut leading: Option<watch::Receiver<bool>>,
    mut round: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let leads = |l: &Option<watch::Receiver<bool>>| l.as_ref().is_none_or(|l| *l.borrow());
    loop {
        if let Some(l) = leading.as_mut() {
            l.borrow_and_update();
        }
        round(leads(&leading)).await;
        let next = tokio::time::Instant::now() + interval;
        loop {
            let wake = tokio::select! {
                () = tokio::time::sleep_until(next) => Wake::Interval,
                changed = changed(&mut leading) => match changed {
                    Some(now) => Wake::Leadership(now),
                    // The controllers ended: their last word stands.
                    None => continue,
                },
            };
            if round_now(wake) {
                break;
            }
        }
    }
}

/// The next value of the leadership flag; `None` once its sender is gone;
/// pending forever without a flag (or a closed one).
async fn changed(leading: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match leading {
        Some(l) if l.has_changed().is_ok() => match l.changed().await {
            Ok(()) => Some(*l.borrow_and_update()),
            Err(_) => None,
        },
        _ => std::future::pending().await,
    }
}

/// One round of keeping the CA Secret and the configuration in line.
async fn sync_round(client: &Client, options: &Options, serving: &Signed, leads: bool) {
    // The Secret is the truth: adopt a replaced CA, re-create a deleted one.
    crate::tls::signed::sync_ca_secret(client, &options.ca_secret, serving).await;
    if options.inject_ca
        && leads
        && let Err(e) = sync_configuration(client, options, &serving.ca_pem()).await
    {
        tracing::warn!(error = %e, "could not update the ValidatingWebhookConfiguration; retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_round_runs_on_the_interval_and_when_this_replica_takes_the_lease() {
        assert!(round_now(Wake::Interval));
        assert!(
            round_now(Wake::Leadership(true)),
            "the new leader writes caBundle at once"
        );
        assert!(
            !round_now(Wake::Leadership(false)),
            "losing the lead writes nothing"
        );
    }

    /// The loop with an hour's interval: the round after taking the Lease
    /// can only come from the leadership change. (The bound on the wait is
    /// there so that a broken loop fails instead of hanging for an hour.)
    #[tokio::test]
    async fn taking_the_lease_runs_a_round_at_once() {
        let (flag, leading) = watch::channel(false);
        let (rounds, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(schedule(Duration::from_secs(3600), Some(leading), move |leads| {
            let _ = rounds.send(leads);
            std::future::ready(())
        }));
        let next = async |seen: &mut tokio::sync::mpsc::UnboundedReceiver<bool>| {
            tokio::time::timeout(Duration::from_secs(120), seen.recv())
                .await
                .expect("no sync round (the interval is an hour)")
        };
        assert_eq!(
            next(&mut seen).await,
            Some(false),
            "the first round, before the Lease"
        );
        flag.send_replace(true);
        assert_eq!(
            next(&mut seen).await,
            Some(true),
            "a round at once on taking the Lease"
        );
        // Losing the lead and taking it again: one more round, leading.
        flag.send_replace(false);
        flag.send_replace(true);
        assert_eq!(next(&mut seen).await, Some(true));
        task.abort();
    }

    #[tokio::test]
    async fn without_leader_election_every_round_writes() {
        let (rounds, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(schedule(Duration::from_millis(1), None, move |leads| {
            let _ = rounds.send(leads);
            std::future::ready(())
        }));
        assert_eq!(seen.recv().await, Some(true));
        assert_eq!(seen.recv().await, Some(true));
        task.abort();
    }
}
