//! Leader election on a `coordination.k8s.io/v1` Lease (crate
//! `kube-lease-manager`): of several `latchkey controller` / `latchkey run`
//! processes only the holder of the Lease runs the reconcilers, and with them
//! every write latchkey makes to ApiKeys, TokenPolicies, Secrets and
//! ConfigMaps. The others are standbys; the auth server of `latchkey run`
//! serves on every replica regardless (its only write, `lastUsedAt`, is a
//! merge patch that any replica may make).
//!
//! # Timing
//!
//! The holder renews the Lease `grace` seconds before it would expire (that
//! is, every `duration - grace` seconds). A standby takes the Lease over only
//! once `renewTime + duration` has passed without a renewal, plus a random
//! 0.1–1 s, so a SIGKILLed leader is replaced after between `grace` and
//! `duration` seconds (plus that jitter). On SIGTERM the leader stops its
//! reconcilers gracefully and then releases the Lease; standbys read the
//! Lease every `grace / 4` (the Lease manager of a standby itself looks only
//! when the old hold would expire), start their manager over when they see
//! it released, and one takes over within about a second.
//!
//! # Why the leader steps down *before* the Lease expires
//!
//! Two reconcilers at once could both act on one rotate request (two keys
//! delivered, `status.revision` jumping by two) or overwrite each other's
//! status. The Lease prevents that only if a leader that can no longer prove
//! it holds the Lease has stopped writing by the time a standby may take it.
//! `kube-lease-manager` reports a loss it *sees* (someone else holds the
//! Lease), but when renewals fail (the API server is unreachable, or slow,
//! from this process only) it keeps retrying with a backoff and goes on
//! saying "leader" past the expiry. So this module keeps its own fence: while
//! leading it reads the Lease every `grace / 4` and computes the moment its
//! hold ends, `renewTime + duration - grace / 2` (measured from when that
//! read was sent). When that moment comes without a newer renewal, or a read
//! shows another holder, the reconcilers are dropped at once (a dropped
//! reconcile is cancelled at its next `.await`; its three-write key delivery
//! is built to survive exactly that, like a crash), well before a standby
//! may act at `renewTime + duration`. The `grace / 2` left over covers a
//! write already on the wire and clock skew between nodes up to that much.
//! A process that stepped down stays a standby until the Lease is confirmed
//! to be its own again.

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where and how to elect a leader.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process' identity in `spec.holderIdentity` (unique per process).
    pub identity: String,
    /// `spec.leaseDurationSeconds`: how long a hold lasts without renewal.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews (must be less than the duration).
    pub grace_seconds: u64,
}

impl LeaseConfig {
    /// Checks the timing: `0 < grace < duration`.
    pub fn validate(&self) -> Result<()> {
        if self.grace_seconds == 0 || self.grace_seconds >= self.duration_seconds {
            return Err(Error::LeaderElection(format!(
                "--lease-grace-seconds ({}) must be at least 1 and less than --lease-duration-seconds ({})",
                self.grace_seconds, self.duration_seconds
            )));
        }
        Ok(())
    }

    /// How long before the Lease's expiry the leader stops reconciling
    /// unless it has seen a newer renewal.
    pub fn margin(&self) -> Duration {
        Duration::from_millis(self.grace_seconds * 500)
    }

    /// How often the leader reads the Lease to confirm its hold.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.grace_seconds * 250).max(Duration::from_millis(250))
    }
}

/// A default identity: `<instance>-<8 random characters>`, so that a
/// restarted process never mistakes the Lease of its predecessor for its own.
pub fn default_identity(instance: Option<&str>) -> String {
    use rand::RngExt;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    format!("{}-{suffix}", instance.unwrap_or("latchkey"))
}

/// A future that completes once `rx` says `true` (or its sender is gone).
pub fn shutdown_future(mut rx: watch::Receiver<bool>) -> super::Shutdown {
    use futures::FutureExt;
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
    .boxed()
    .shared()
}

/// Runs `work` while this process holds the Lease, until `shutdown` says
/// `true`. `work` gets a future that completes on shutdown (it should then
/// finish gracefully); it is dropped, mid-flight, when the hold is lost, and
/// started again on the next win. On the way out the Lease is released, so a
/// standby takes over at once.
pub async fn run<W, Fut>(
    client: Client,
    lease: LeaseConfig,
    shutdown: watch::Receiver<bool>,
    mut work: W,
) -> Result<()>
where
    W: FnMut(super::Shutdown) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    lease.validate()?;
    let fence = Fence {
        api: Api::namespaced(client.clone(), &lease.namespace),
        config: lease.clone(),
    };
    let (mut held, mut task) = start_manager(&client, &lease).await?;
    tracing::info!(
        lease = %format!("{}/{}", lease.namespace, lease.name),
        identity = %lease.identity,
        duration_s = lease.duration_seconds,
        grace_s = lease.grace_seconds,
        "leader election: standing by for the Lease"
    );
    let mut stop = shutdown_future(shutdown.clone());
    let mut restarted = Instant::now();
    let result = loop {
        // Standby: until the Lease manager says we hold it and a read
        // confirms it. Every poll a read also looks for a released Lease.
        let event = tokio::select! {
            biased;
            _ = &mut stop => Standby::Stop,
            // The Lease manager never ends while we listen; if it does, nothing is held.
            ended = &mut task => return Err(lease_task_ended(ended)),
            _ = held.changed() => Standby::Changed,
            _ = tokio::time::sleep(fence.config.poll()) => Standby::Tick,
        };
        if event == Standby::Stop {
            break Ok(());
        }
        let deadline = match fence.check().await {
            Hold::Until(deadline) if *held.borrow_and_update() => deadline,
            Hold::Free if event == Standby::Tick && restarted.elapsed() > 2 * fence.config.poll() => {
                // Released (a leader shutting down): the Lease manager of a
                // standby only looks again when the old hold would have
                // expired, so start a fresh one, which takes a free Lease at
                // once (Server-Side Apply: of two standbys one wins).
                task.abort();
                let _ = (&mut task).await;
                (held, task) = start_manager(&client, &lease).await?;
                restarted = Instant::now();
                continue;
            }
            _ => continue,
        };
        tracing::info!(identity = %lease.identity, "became the leader: starting the reconcilers");
        let lost = {
            let running = work(shutdown_future(shutdown.clone()));
            let mut running = std::pin::pin!(running);
            tokio::select! {
                biased;
                done = &mut running => Some(done),
                () = fence.until_lost(deadline) => None,
                _ = wait_false(&mut held) => None,
            }
        };
        match lost {
            // The reconcilers finished: shutdown (or a failure of theirs).
            Some(done) => break done,
            None => {
                tracing::warn!(
                    identity = %lease.identity,
                    "lost the Lease: reconcilers stopped; standing by"
                );
                if *shutdown.borrow() {
                    break Ok(());
                }
            }
        }
    };
    // Dropping the receiver makes the Lease manager release the Lease (if
    // held) and end.
    drop(held);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!(identity = %lease.identity, "released the Lease"),
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "could not release the Lease"),
        Ok(Err(err)) => tracing::warn!(error = %err, "the Lease manager task failed"),
        Err(_) => tracing::warn!("the Lease was not released within 5 s"),
    }
    result
}

/// What woke a standby.
#[derive(Debug, PartialEq, Eq)]
enum Standby {
    Stop,
    Changed,
    Tick,
}

type LeaseTask = tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// A Lease manager in its automatic mode: the flag says whether we hold
/// the Lease; the task renews it, or tries to take it.
async fn start_manager(client: &Client, lease: &LeaseConfig) -> Result<(watch::Receiver<bool>, LeaseTask)> {
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .with_field_manager(format!("latchkey-lease-{}", lease.identity))
        .build()
        .await
        .map_err(|e| Error::LeaderElection(format!("Lease {}/{}: {e}", lease.namespace, lease.name)))?;
    Ok(manager.watch().await)
}

fn lease_task_ended(
    ended: std::result::Result<
        kube_lease_manager::Result<kube_lease_manager::LeaseManager>,
        tokio::task::JoinError,
    >,
) -> Error {
    match ended {
        Ok(Ok(_)) => Error::LeaderElection("the Lease manager stopped".into()),
        Ok(Err(err)) => Error::LeaderElection(format!("the Lease manager failed: {err}")),
        Err(err) => Error::LeaderElection(format!("the Lease manager task failed: {err}")),
    }
}

/// Completes when the Lease manager reports that we no longer hold the Lease.
async fn wait_false(held: &mut watch::Receiver<bool>) {
    if held.wait_for(|h| !*h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What one read of the Lease says about our hold.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
    /// We hold it; stop reconciling at this instant unless renewed.
    Until(Instant),
    /// Someone else holds it, or our hold is about to end.
    Other,
    /// No one holds it (released).
    Free,
    /// The read failed.
    Unknown,
}

struct Fence {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Fence {
    async fn check(&self) -> Hold {
        let sent = Instant::now();
        let sent_wall = Timestamp::now();
        let read = tokio::time::timeout(self.config.poll(), self.api.get(&self.config.name)).await;
        match read {
            Ok(Ok(lease)) => hold_of(&lease, &self.config, sent, sent_wall),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not read the Lease to confirm leadership");
                Hold::Unknown
            }
            Err(_) => {
                tracing::warn!("reading the Lease to confirm leadership timed out");
                Hold::Unknown
            }
        }
    }

    /// Completes when the hold can no longer be confirmed: `deadline` passed
    /// without a read showing a newer renewal, or a read showed another holder.
    async fn until_lost(&self, mut deadline: Instant) {
        loop {
            let next = (Instant::now() + self.config.poll()).min(deadline);
            tokio::time::sleep_until(next).await;
            if Instant::now() >= deadline {
                tracing::warn!("the Lease was not renewed in time");
                return;
            }
            match self.check().await {
                Hold::Until(d) => deadline = d,
                Hold::Other | Hold::Free => {
                    tracing::warn!("the Lease is no longer ours");
                    return;
                }
                Hold::Unknown => {}
            }
        }
    }
}

/// Our hold according to `lease`, read with a request sent at `sent`
/// (monotonic) = `sent_wall` (wall clock).
fn hold_of(lease: &Lease, config: &LeaseConfig, sent: Instant, sent_wall: Timestamp) -> Hold {
    let Some(spec) = &lease.spec else {
        return Hold::Free;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => return Hold::Free,
        Some(holder) if holder != config.identity => return Hold::Other,
        Some(_) => {}
    }
    let (Some(renewed), Some(duration)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return Hold::Other;
    };
    let held_for = Duration::from_secs(u64::try_from(duration).unwrap_or(0)).saturating_sub(config.margin());
    let Some(ends) = k8s_openapi::jiff::SignedDuration::try_from(held_for)
        .ok()
        .and_then(|d| renewed.0.checked_add(d).ok())
    else {
        return Hold::Other;
    };
    let left = sent_wall.duration_until(ends);
    match Duration::try_from(left) {
        Ok(left) if !left.is_zero() => Hold::Until(sent + left),
        _ => Hold::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::SignedDuration;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".into(),
            name: "latchkey".into(),
            identity: "me".into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }

    fn lease(holder: &str, renewed: Timestamp, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_hold_ends_half_the_grace_before_the_lease_expires() {
        let now = Timestamp::now();
        let sent = Instant::now();
        let renewed = now - SignedDuration::from_secs(4);
        // Expires 11 s after `now`; we stop 2.5 s earlier.
        let Hold::Until(until) = hold_of(&lease("me", renewed, 15), &config(), sent, now) else {
            panic!("held");
        };
        assert_eq!(until - sent, Duration::from_millis(8_500));
    }

    #[test]
    fn another_holder_an_empty_lease_or_an_expiring_hold_is_not_ours() {
        let now = Timestamp::now();
        let sent = Instant::now();
        assert_eq!(hold_of(&lease("you", now, 15), &config(), sent, now), Hold::Other);
        assert_eq!(hold_of(&Lease::default(), &config(), sent, now), Hold::Free);
        // Renewed 13 s ago: 2 s left, inside the 2.5 s margin.
        let old = now - SignedDuration::from_secs(13);
        assert_eq!(hold_of(&lease("me", old, 15), &config(), sent, now), Hold::Other);
    }

    #[test]
    fn the_timing_is_checked_and_polls_fit_the_margin() {
        let mut c = config();
        assert!(c.validate().is_ok());
        assert_eq!(c.margin(), Duration::from_millis(2_500));
        assert_eq!(c.poll(), Duration::from_millis(1_250));
        c.grace_seconds = 15;
        assert!(c.validate().is_err());
        c.grace_seconds = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn default_identities_differ_per_process_start() {
        let a = default_identity(Some("latchkey-7d9f"));
        let b = default_identity(Some("latchkey-7d9f"));
        assert!(a.starts_with("latchkey-7d9f-") && a.len() == "latchkey-7d9f-".len() + 8);
        assert_ne!(a, b);
    }
}
