//! Stopping the dev cluster: Ray first, Redis last, then whatever of the
//! tree is left; a second stop signal hurries it to SIGKILL.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{sleep_until, Instant};

use super::kubelet::Pod;
use super::{is_stop, Event, Runner};
use crate::exit::Exit;
use crate::exit::StopReason;
use crate::init::stop::{self, StopPlan};
use crate::sys::pin;

/// How long the head and the workers get to stop before SIGKILL: more
/// than the head's own grace (5 s), so that its tree goes its own way.
const RAY_GRACE: Duration = Duration::from_secs(10);
const REDIS_GRACE: Duration = Duration::from_secs(10);

impl Runner<'_> {
    /// Stops every pod: Ray first, Redis last (the GCS writes to it until
    /// it stops), then whatever else of the tree is left. A second stop
    /// signal SIGKILLs at once.
    pub(super) async fn stop(mut self, end: StopReason) -> Exit {
        let began = Instant::now();
        match &end {
            StopReason::Signal(sig) => self
                .printer
                .say(&format!("received {}: stopping the cluster", sig.as_str())),
            StopReason::Exit(e) => self.printer.say(&format!("stopping the cluster: {e}")),
        }
        let ray: Vec<Pod> = self
            .running
            .keys()
            .copied()
            .filter(|p| *p != Pod::Redis)
            .collect();
        let mut hurry = self.stop_pods(&ray, RAY_GRACE, false).await;
        if self.running.contains_key(&Pod::Redis) {
            hurry = self.stop_pods(&[Pod::Redis], REDIS_GRACE, hurry).await;
        }
        // Anything left of the tree (orphans of a killed head): the init's
        // own stop, which returns only when nothing is left to reap.
        let plan = StopPlan {
            stop_command: None,
            stop_command_timeout: Duration::ZERO,
            grace: if hurry {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            },
            group: None,
            forward: Vec::new(),
        };
        stop::stop_tree(
            &self.init.reaper,
            &plan,
            &mut self.init.signals,
            &self.init.tracker,
            &self.init.cancel,
        )
        .await;
        let took = began.elapsed().as_secs_f64();
        let exit = match end {
            StopReason::Signal(sig) => Exit::Status {
                code: 0,
                reason: format!(
                    "stopped on {}: the cluster was shut down in {took:.1}s",
                    sig.as_str()
                ),
            },
            StopReason::Exit(e) => e,
        };
        self.printer.say(&format!("stopped in {took:.1}s"));
        self.printer.end();
        exit
    }

    /// SIGTERMs `pods`' process groups and waits for them for `grace`, or
    /// not at all when `hurry`; then SIGKILLs what is left of their trees.
    /// Returns whether a second stop signal asked to hurry.
    async fn stop_pods(&mut self, pods: &[Pod], grace: Duration, mut hurry: bool) -> bool {
        for pod in pods {
            if let Some(pid) = self.running.get(pod) {
                let _ = self.init.reaper.signal_group(*pid, Signal::SIGTERM);
            }
        }
        let deadline = crate::time::after(Instant::now(), grace);
        while !hurry && pods.iter().any(|p| self.running.contains_key(p)) {
            tokio::select! {
                Some(event) = self.rx.recv() => {
                    if let Event::Exited(pod, pid, status) = event {
                        if self.running.get(&pod) == Some(&pid) {
                            self.running.remove(&pod);
                            tracing::debug!(pod = %pod, status = %status, "stopped");
                        }
                    }
                }
                Some(sig) = self.init.signals.recv() => {
                    if is_stop(sig) {
                        self.printer.say(&format!("received {} again: SIGKILL", sig.as_str()));
                        hurry = true;
                    }
                }
                _ = sleep_until(deadline) => break,
            }
        }
        for pod in pods {
            if let Some(pid) = self.running.remove(pod) {
                if !hurry {
                    self.printer.say(&format!(
                        "{pod} did not stop within {}s: SIGKILL",
                        grace.as_secs()
                    ));
                }
                // Only while unreaped: an exit not yet handled left the pid
                // free for another (its orphans are the init's stop's).
                let root = self.init.reaper.pin(pid);
                pin::kill_tree(root.as_ref(), Vec::new());
            }
        }
        hurry
    }
}
