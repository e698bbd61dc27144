//! High availability against the real local control plane: two `latchkey
//! controller` processes elect a leader on one Lease (4 s duration, 2 s
//! grace here; the chart uses 15 s / 5 s).
//!
//! - Only the leader reconciles; on SIGTERM it releases the Lease and the
//!   standby takes over within about a second.
//! - The crash test of tests/cluster_lifecycle.rs with two replicas: during
//!   forced rotations whichever process leads is SIGKILLed and restarted as
//!   a standby, the other takes over; a poller checks all along that the
//!   Secret's key is valid per status, and after every step that
//!   status.revision grew by exactly one (each rotate request honoured once,
//!   no status write lost). It prints the takeover times.

mod common;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const LEASE_DURATION: &str = "4";
const LEASE_GRACE: &str = "2";

/// One replica: a `latchkey controller` on the shared Lease.
struct Replica {
    process: LatchkeyProcess,
    identity: String,
}

struct Pair {
    s: Scenario,
    lease: String,
    leases: Api<Lease>,
    replicas: Vec<Replica>,
    starts: usize,
}

impl Pair {
    /// A namespace with its own (unelected) controller stopped, and two
    /// elected replicas on one Lease; waits until one leads.
    async fn new(prefix: &str) -> Self {
        let mut s = Scenario::new(prefix).await;
        // The Scenario's own controller has a Lease of its own: stop it, the
        // pair below is the one under test.
        s.controller.kill();
        let lease = format!("{LEASE_PREFIX}ha-{}", s.ns.name);
        let leases = Api::namespaced(s.client.clone(), LATCHKEY_NS);
        let mut pair = Self {
            s,
            lease,
            leases,
            replicas: Vec::new(),
            starts: 0,
        };
        pair.start_replica();
        pair.leader().await;
        pair.start_replica();
        pair
    }

    fn start_replica(&mut self) {
        self.starts += 1;
        let identity = format!("replica-{}", self.starts);
        let process = LatchkeyProcess::start_elected(
            &self.s.ns.name,
            &["controller"],
            &self.lease,
            &[
                "--lease-identity",
                &identity,
                "--lease-duration-seconds",
                LEASE_DURATION,
                "--lease-grace-seconds",
                LEASE_GRACE,
            ],
        );
        self.replicas.push(Replica { process, identity });
    }

    async fn holder(&self) -> Option<String> {
        let lease = self.leases.get_opt(&self.lease).await.ok()??;
        lease.spec?.holder_identity
    }

    /// Index of the replica holding the Lease (waits for one).
    async fn leader(&self) -> usize {
        eventually(WAIT, "a replica holds the Lease", || async {
            let holder = self.holder().await?;
            self.replicas.iter().position(|r| r.identity == holder)
        })
        .await
    }

    /// Waits until the Lease holder is a replica other than `gone`; returns
    /// the time since `since`.
    async fn takeover(&self, gone: &str, since: Instant) -> Duration {
        let deadline = since + WAIT;
        loop {
            if let Some(holder) = self.holder().await
                && holder != gone
                && self.replicas.iter().any(|r| r.identity == holder)
            {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "no replica took the Lease over from {gone}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn apply_api_key(ns: &str, name: &str) {
    apply(&api_key_manifest(
        ns,
        name,
        "  scopes: [\"orders:read\"]\n  rotation: {interval: 720h, gracePeriod: 30s}\n",
    ));
}

#[tokio::test]
async fn only_the_leader_reconciles_and_sigterm_hands_over_at_once() {
    let mut p = Pair::new("ha-term").await;
    let first = p.leader().await;
    let standby = 1 - first;
    apply_api_key(&p.s.ns.name, "svc");
    let (ak, _) = p.s.settled("svc", "first key", |_| true).await;
    assert_eq!(ak.status.as_ref().unwrap().revision, Some(1));
    let standby_log = p.replicas[standby].process.log_text();
    assert!(standby_log.contains("standing by for the Lease"), "{standby_log}");
    assert!(
        !standby_log.contains("ApiKey controller starting") && !standby_log.contains("delivered a new key"),
        "the standby reconciled:\n{standby_log}"
    );

    // SIGTERM: the leader stops its reconcilers, releases the Lease, and the
    // standby takes it at once (no waiting for expiry).
    let gone = p.replicas[first].identity.clone();
    let since = Instant::now();
    let status = p.replicas[first].process.terminate();
    assert!(status.success(), "the leader exited with {status}");
    let handover = p.takeover(&gone, since).await;
    assert!(
        p.replicas[first]
            .process
            .log_text()
            .contains("released the Lease"),
        "{}",
        p.replicas[first].process.log_text()
    );
    println!(
        "SIGTERM handover: the standby held the Lease {:.2} s after SIGTERM (lease duration {LEASE_DURATION} s)",
        handover.as_secs_f64()
    );
    assert!(
        handover < Duration::from_secs(3),
        "after a release the standby should not wait for expiry: {handover:?}"
    );
    // The new leader honours a rotate request, once.
    p.s.request_rotation("svc", "after-handover").await;
    let (ak, _) =
        p.s.settled("svc", "the rotation by the new leader", |ak| {
            ak.status.as_ref().unwrap().last_rotate_request.as_deref() == Some("after-handover")
        })
        .await;
    assert_eq!(ak.status.as_ref().unwrap().revision, Some(2));
    assert!(
        p.replicas[standby]
            .process
            .log_text()
            .contains("became the leader")
    );
}

/// The invariant of `rotations_survive_sigkill_at_random_moments`
/// (tests/cluster_lifecycle.rs) with two replicas and leader election: the
/// leader is SIGKILLed during each forced rotation (half at a random moment
/// 0–300 ms after the request, half 0–10 ms after the pending key shows up
/// in status), restarted as a standby, and the other replica takes over.
#[tokio::test]
async fn sigkill_the_leader_during_rotations_the_standby_takes_over_and_each_request_is_honoured_once() {
    const ITERATIONS: usize = 12;
    let started = Instant::now();
    let mut p = Pair::new("ha-crash").await;
    apply_api_key(&p.s.ns.name, "svc");
    let (ak, _) = p.s.settled("svc", "first key", |_| true).await;
    let first_revision = ak.status.as_ref().unwrap().revision.unwrap();

    let poller = InvariantPoller::start(p.s.api_keys.clone(), p.s.secrets.clone(), "svc");

    let mut takeovers = Vec::new();
    let mut settle_after_kill = Vec::new();
    let mut kill_points = [0usize; 4];
    let mut settled_violations = 0;
    let mut revision = first_revision;
    for i in 0..ITERATIONS {
        let request = format!("ha-crash-{i}");
        // The leader, known before the request (it cannot change until we
        // kill it), so the kill follows the chosen moment without a read.
        let leader = p.leader().await;
        // A random phase against the Lease's renewals (every 2 s), so the
        // takeover times spread over what a real crash would see.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..2000u64))).await;
        p.s.request_rotation_for_a_kill("svc", &request, i % 2 == 1).await;
        // SIGKILL the leader.
        let gone = p.replicas[leader].identity.clone();
        p.replicas[leader].process.kill();
        let killed = Instant::now();
        // Where did the kill land? (nothing writes until the takeover)
        kill_points[kill_point(&p.s, "svc", &request).await] += 1;
        // Restart the killed replica (a new process, a new identity): it
        // stands by, the survivor takes over.
        p.replicas.remove(leader);
        p.start_replica();
        takeovers.push(p.takeover(&gone, killed).await);
        let what = format!("rotation {i} settled after the takeover");
        revision = (p.s)
            .settled_once("svc", &request, &what, revision, &mut settled_violations)
            .await;
        settle_after_kill.push(killed.elapsed());
    }
    // Give a stray second writer (there must be none) a moment to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = poller.stop().await;
    let ak = p.s.api_keys.get("svc").await.unwrap();
    assert_eq!(
        ak.status.as_ref().unwrap().revision,
        Some(revision),
        "no late write"
    );

    takeovers.sort();
    settle_after_kill.sort();
    let (checks, violations, drops) = (
        counts.checks.load(Ordering::Relaxed),
        counts.violations.load(Ordering::Relaxed),
        counts.revision_drops.load(Ordering::Relaxed),
    );
    println!(
        "HA crash test: {ITERATIONS} iterations, the leader SIGKILLed in each (lease {LEASE_DURATION} s, grace \
         {LEASE_GRACE} s); takeover (SIGKILL → the other replica holds the Lease) p50 {:.2} s, max {:.2} s, min \
         {:.2} s; rotation settled after the SIGKILL p50 {:.2} s, max {:.2} s; {checks} invariant checks, \
         {violations} violations, {drops} revision decreases, {settled_violations} settled-state violations; \
         revision {first_revision} → {revision}; kills landed: {} before the rotation, {} after the pending \
         status, {} after the Secret write, {} after the rotation; {:.1} s",
        percentile(&takeovers, 0.5).as_secs_f64(),
        percentile(&takeovers, 1.0).as_secs_f64(),
        percentile(&takeovers, 0.0).as_secs_f64(),
        percentile(&settle_after_kill, 0.5).as_secs_f64(),
        percentile(&settle_after_kill, 1.0).as_secs_f64(),
        kill_points[0],
        kill_points[1],
        kill_points[2],
        kill_points[3],
        started.elapsed().as_secs_f64(),
    );
    assert!(checks > 0, "the poller made no check");
    assert_eq!(
        violations, 0,
        "the Secret held a key status did not list as valid"
    );
    assert_eq!(drops, 0, "status.revision decreased");
    assert_eq!(settled_violations, 0);
    assert_eq!(revision, first_revision + ITERATIONS as i64);
    // A takeover never comes before the dead leader's hold could have
    // expired: at least the grace (the earliest it renews before expiry).
    assert!(
        percentile(&takeovers, 0.0) >= Duration::from_secs(1),
        "a takeover came sooner than the Lease allows: {takeovers:?}"
    );
}
