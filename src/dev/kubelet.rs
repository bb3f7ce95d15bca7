//! The kubelet's part, emulated: a container that exits is started again
//! per the pod's `restartPolicy`, after the CrashLoopBackOff delay.
//!
//! The kubelet waits 10 s after the first exit, doubling on each exit in a
//! row up to 5 min, and forgets the count once a container has run for
//! 10 min. It never gives up. `rayhead dev` runs every pod (Redis, the head,
//! each worker) through one [`Kubelet`], so that a user sees on a laptop
//! what an exit 80, 82 or 83 does to a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// A pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Start it again after any exit (the default of a RayCluster's pods).
    Always,
    /// Start it again after an exit other than 0.
    OnFailure,
    /// Never start it again (KubeRay's head with autoscaler v2).
    Never,
}

/// The kubelet's CrashLoopBackOff: 10 s, doubling, at most 5 min.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
/// A container that ran this long starts its back-off afresh.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// One of the dev cluster's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pod {
    /// The embedded `redis-server`.
    Redis,
    /// `rayhead run`: the head container's PID 1.
    Head,
    /// A worker node, `ray start --address ... --block`, numbered from 1.
    Worker(u32),
}

impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pod::Redis => f.write_str("redis"),
            Pod::Head => f.write_str("head"),
            Pod::Worker(n) => write!(f, "worker-{n}"),
        }
    }
}

/// What the kubelet does about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again at `at`; `restarts` counts every restart so far.
    Restart {
        at: Instant,
        after: Duration,
        restarts: u32,
    },
    /// The policy says no: it stays down.
    StaysDown,
}

#[derive(Debug, Default)]
struct Record {
    started: Option<Instant>,
    /// Exits in a row, each after less than [`RESET_AFTER`] of running.
    crashes: u32,
    restarts: u32,
    due: Option<Instant>,
}

/// The restart bookkeeping of every pod.
#[derive(Debug)]
pub struct Kubelet {
    policy: RestartPolicy,
    pods: BTreeMap<Pod, Record>,
}

impl Kubelet {
    pub fn new(policy: RestartPolicy) -> Kubelet {
        Kubelet {
            policy,
            pods: BTreeMap::new(),
        }
    }

    /// `pod` was started at `now`.
    pub fn started(&mut self, pod: Pod, now: Instant) {
        let r = self.pods.entry(pod).or_default();
        r.started = Some(now);
        r.due = None;
    }

    /// `pod` exited at `now`, successfully (code 0) or not.
    pub fn exited(&mut self, pod: Pod, now: Instant, success: bool) -> Decision {
        let policy = self.policy;
        let r = self.pods.entry(pod).or_default();
        let ran = r
            .started
            .take()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        if ran >= RESET_AFTER {
            r.crashes = 0;
        }
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Decision::StaysDown;
        }
        r.crashes = r.crashes.saturating_add(1);
        r.restarts = r.restarts.saturating_add(1);
        let after = BACKOFF.delay(r.crashes);
        let at = crate::time::after(now, after);
        r.due = Some(at);
        Decision::Restart {
            at,
            after,
            restarts: r.restarts,
        }
    }

    /// The earliest restart that is waiting, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.pods.values().filter_map(|r| r.due).min()
    }

    /// The pods whose restart is due at `now`; each is taken off the list.
    pub fn take_due(&mut self, now: Instant) -> Vec<Pod> {
        let mut due = Vec::new();
        for (pod, r) in &mut self.pods {
            if r.due.is_some_and(|d| d <= now) {
                r.due = None;
                due.push(*pod);
            }
        }
        due
    }

    /// Restarts of `pod` so far.
    pub fn restarts(&self, pod: Pod) -> u32 {
        self.pods.get(&pod).map_or(0, |r| r.restarts)
    }

    /// Whether `pod` waits for its restart.
    pub fn waiting(&self, pod: Pod) -> bool {
        self.pods.get(&pod).is_some_and(|r| r.due.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs a head that exits `exits` times, each after `runs_for`, with
    /// the clock paused; returns the delay before each restart.
    async fn crash_loop(policy: RestartPolicy, runs_for: Duration, exits: usize) -> Vec<u64> {
        let mut k = Kubelet::new(policy);
        let mut delays = Vec::new();
        k.started(Pod::Head, Instant::now());
        for _ in 0..exits {
            tokio::time::advance(runs_for).await;
            match k.exited(Pod::Head, Instant::now(), false) {
                Decision::Restart { at, after, .. } => {
                    assert_eq!(k.next_due(), Some(at));
                    tokio::time::advance(after - Duration::from_millis(1)).await;
                    assert!(k.take_due(Instant::now()).is_empty(), "restarted early");
                    tokio::time::advance(Duration::from_millis(1)).await;
                    assert_eq!(k.take_due(Instant::now()), vec![Pod::Head]);
                    k.started(Pod::Head, Instant::now());
                    delays.push(after.as_secs());
                }
                Decision::StaysDown => break,
            }
        }
        delays
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashing_head_backs_off_10s_doubling_to_300s() {
        let d = crash_loop(RestartPolicy::Always, secs(1), 8).await;
        assert_eq!(d, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_minutes_of_running_resets_the_back_off() {
        let d = crash_loop(RestartPolicy::Always, RESET_AFTER, 4).await;
        assert_eq!(d, vec![10, 10, 10, 10]);
        let d = crash_loop(RestartPolicy::Always, RESET_AFTER - secs(1), 3).await;
        assert_eq!(d, vec![10, 20, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn never_means_no_restart_and_on_failure_spares_a_clean_exit() {
        assert!(crash_loop(RestartPolicy::Never, secs(1), 3)
            .await
            .is_empty());
        let mut k = Kubelet::new(RestartPolicy::OnFailure);
        k.started(Pod::Head, Instant::now());
        assert_eq!(
            k.exited(Pod::Head, Instant::now(), true),
            Decision::StaysDown
        );
        assert_eq!(k.next_due(), None);
        k.started(Pod::Head, Instant::now());
        assert!(matches!(
            k.exited(Pod::Head, Instant::now(), false),
            Decision::Restart { restarts: 1, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn pods_back_off_each_on_its_own() {
        let mut k = Kubelet::new(RestartPolicy::Always);
        let t0 = Instant::now();
        for p in [Pod::Head, Pod::Worker(1)] {
            k.started(p, t0);
        }
        k.exited(Pod::Head, t0, false);
        k.started(Pod::Head, t0 + secs(10));
        k.exited(Pod::Head, t0 + secs(11), false);
        let w = k.exited(Pod::Worker(1), t0 + secs(11), false);
        assert!(matches!(w, Decision::Restart { after, .. } if after == secs(10)));
        assert_eq!(k.next_due(), Some(t0 + secs(21)));
        assert_eq!(k.take_due(t0 + secs(21)), vec![Pod::Worker(1)]);
        assert!(k.waiting(Pod::Head));
        assert_eq!(k.take_due(t0 + secs(31)), vec![Pod::Head]);
        assert_eq!((k.restarts(Pod::Head), k.restarts(Pod::Worker(1))), (2, 1));
    }
}
