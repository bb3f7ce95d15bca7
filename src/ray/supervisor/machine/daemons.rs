//! The daemons other than the GCS: their exits, their health, and their
//! restarts in place.

use nix::unistd::Pid;
use tokio::time::Instant;

use super::*;

impl Machine {
    pub(super) fn on_daemon_exited(
        &mut self,
        now: Instant,
        daemon: Daemon,
        pid: Pid,
        status: ExitStatus,
    ) -> Vec<Action> {
        tracing::warn!(daemon = daemon.name(), pid = pid.as_raw(), %status, "Ray daemon exited");
        if daemon == Daemon::GcsServer {
            return self.on_gcs_exited(now, pid, status);
        }
        let step = match self.daemons.get_mut(&daemon) {
            Some(w) if w.pid == Some(pid) => {
                w.pid = None;
                w.unhealthy_since = None;
                w.step
            }
            _ => return Vec::new(),
        };
        self.set_child(daemon, None, ChildStatus::Exited, Some(status.to_string()));
        let stable_after = self.cfg.gcs.stable_after;
        let Some(w) = self.daemons.get_mut(&daemon) else {
            return Vec::new();
        };
        match (daemon.spec().policy, self.cfg.ray.on_daemon_exit, step) {
            (Policy::Critical, _, _) => vec![Action::Stop(StopReason::Exit(Exit::RayletDied(
                format!("the head {daemon} (pid {pid}) {status}"),
            )))],
            // rayhead killed it (hung): start it again.
            (_, _, DaemonStep::Reaping(old)) if old == pid => self.start_daemon(now, daemon),
            (_, DaemonExitPolicy::Exit, _) => {
                vec![Action::Stop(StopReason::Exit(Exit::DaemonDied(format!(
                    "Ray's {daemon} (pid {pid}) {status}, and ray.on-daemon-exit is \"exit\""
                ))))]
            }
            (_, DaemonExitPolicy::Ignore, _) => {
                w.step = DaemonStep::Gone;
                Vec::new()
            }
            (_, DaemonExitPolicy::Restart, step) => {
                if let DaemonStep::Running {
                    restarted: Some(at),
                } = step
                {
                    if now.saturating_duration_since(at) < stable_after {
                        w.failures = w.failures.saturating_add(1);
                    }
                }
                if let Some(stop) = self.daemon_crash_loop(daemon, &format!("it {status}")) {
                    return vec![stop];
                }
                tracing::warn!(daemon = daemon.name(), "restarting it in place");
                // Its own children (the dashboard's forkserver modules) go
                // first, then it starts again.
                let mut actions = vec![Action::KillTree(pid)];
                actions.extend(self.start_daemon(now, daemon));
                actions
            }
        }
    }

    /// Starts a daemon again, at once or after its back-off.
    pub(super) fn start_daemon(&mut self, now: Instant, daemon: Daemon) -> Vec<Action> {
        let Some(w) = self.daemons.get_mut(&daemon) else {
            return Vec::new();
        };
        match w.step {
            // The back-off is over.
            DaemonStep::Backoff(_) => {}
            _ if w.failures > 0 => {
                w.step = DaemonStep::Backoff(after(now, RESTART_BACKOFF.delay(w.failures)));
                return Vec::new();
            }
            _ => {}
        }
        w.step = DaemonStep::Spawning;
        vec![Action::StartDaemon(daemon)]
    }

    pub(super) fn on_daemon_started(
        &mut self,
        now: Instant,
        daemon: Daemon,
        started: Result<Pid, StartError>,
    ) -> Vec<Action> {
        let Some(w) = self.daemons.get_mut(&daemon) else {
            return Vec::new();
        };
        match started {
            Ok(pid) => {
                w.pid = Some(pid);
                w.unhealthy_since = None;
                w.step = DaemonStep::Running {
                    restarted: Some(now),
                };
                self.set_child(daemon, Some(pid), ChildStatus::Running, None);
                self.state.update(|s| {
                    if let Some(c) = s.daemons.get_mut(daemon.name()) {
                        c.restarts += 1;
                        c.healthy = None;
                        c.unhealthy_at = None;
                        c.unhealthy_since = None;
                    }
                });
                tracing::info!(
                    event = "daemon_restarted",
                    daemon = daemon.name(),
                    pid = pid.as_raw(),
                    "restarted {daemon} in place"
                );
                vec![Action::StartHealthChecks(daemon, pid)]
            }
            Err(e) if !e.retry => vec![Action::Stop(StopReason::Exit(Exit::DaemonDied(format!(
                "Ray's {daemon} is gone and cannot be started again: {}",
                e.message
            ))))],
            Err(e) => {
                w.failures = w.failures.saturating_add(1);
                w.step = DaemonStep::Gone;
                if let Some(stop) = self.daemon_crash_loop(daemon, &e.message) {
                    return vec![stop];
                }
                self.start_daemon(now, daemon)
            }
        }
    }

    /// Exit 84 once gcs.max-restarts restarts of one daemon in a row failed.
    pub(super) fn daemon_crash_loop(&self, daemon: Daemon, last: &str) -> Option<Action> {
        let failures = self.daemons.get(&daemon).map_or(0, |w| w.failures);
        (failures >= self.cfg.gcs.max_restarts).then(|| {
            Action::Stop(StopReason::Exit(Exit::DaemonDied(format!(
                "Ray's {daemon}: {failures} consecutive failed in-place restarts (gcs.max-restarts): crash loop; last: {last}"
            ))))
        })
    }

    /// A daemon's health check: readiness follows it, and past its bound a
    /// hung raylet ends the head, a hung restartable daemon is replaced.
    pub(super) fn on_daemon_health(
        &mut self,
        now: Instant,
        daemon: Daemon,
        pid: Pid,
        healthy: bool,
        detail: String,
    ) -> Vec<Action> {
        let (unready_after, hung_after) = self.health_bounds(daemon);
        let stable_after = self.cfg.gcs.stable_after;
        let Some(w) = self.daemons.get_mut(&daemon) else {
            return Vec::new();
        };
        if w.pid != Some(pid) {
            return Vec::new();
        }
        w.record_check(now, daemon, pid, healthy, &detail, stable_after);
        let since = w.unhealthy_since;
        let running = matches!(w.step, DaemonStep::Running { .. });
        let on_probation = matches!(w.step, DaemonStep::Running { restarted: Some(_) });
        self.state.update(|s| {
            if let Some(c) = s.daemons.get_mut(daemon.name()) {
                c.healthy = Some(healthy);
                c.health = Some(detail.clone());
                c.unhealthy_at = since;
                c.unhealthy_since =
                    since.map(|t| SystemTime::now() - now.saturating_duration_since(t));
                c.unready_after = unready_after;
            }
        });
        let Some(since) = since else {
            return Vec::new();
        };
        let hung_for = now.saturating_duration_since(since);
        if hung_for < hung_after || !running {
            return Vec::new();
        }
        let hung = format!(
            "failed its health checks for {:.1}s ({detail})",
            hung_for.as_secs_f64()
        );
        self.daemon_hung(daemon, pid, &hung, hung_after, on_probation)
    }

    /// How long a daemon may fail its checks before it costs readiness, and
    /// before it counts as hung: the raylet has bounds of its own, since a
    /// hung raylet ends the head while any other daemon is only replaced.
    fn health_bounds(&self, daemon: Daemon) -> (Duration, Duration) {
        match daemon.spec().policy {
            Policy::Critical => (
                self.cfg.ray.raylet_unhealthy_after,
                self.cfg.ray.raylet_hung_after,
            ),
            _ => (
                self.cfg.ray.daemon_unhealthy_after,
                self.cfg.ray.daemon_unhealthy_after,
            ),
        }
    }

    /// A daemon failed its checks past its hung bound: what ray.on-daemon-exit
    /// says for an exit holds for a hang too, except for the raylet, which
    /// cannot be replaced (a new raylet would be a new node).
    fn daemon_hung(
        &mut self,
        daemon: Daemon,
        pid: Pid,
        hung: &str,
        hung_after: Duration,
        on_probation: bool,
    ) -> Vec<Action> {
        match (daemon.spec().policy, self.cfg.ray.on_daemon_exit) {
            (Policy::Critical, _) => {
                tracing::error!(
                    daemon = daemon.name(),
                    pid = pid.as_raw(),
                    "the head raylet is hung: SIGKILL"
                );
                vec![
                    Action::Kill(pid),
                    Action::Stop(StopReason::Exit(Exit::RayletDied(format!(
                        "the head {daemon} (pid {pid}) {hung}, past ray.raylet-hung-after ({}); it was SIGKILLed: a new raylet would be a new node",
                        humantime::format_duration(hung_after)
                    )))),
                ]
            }
            (_, DaemonExitPolicy::Ignore) => Vec::new(),
            (_, DaemonExitPolicy::Exit) => vec![
                Action::KillTree(pid),
                Action::Stop(StopReason::Exit(Exit::DaemonDied(format!(
                    "Ray's {daemon} (pid {pid}) {hung}, and ray.on-daemon-exit is \"exit\""
                )))),
            ],
            (_, DaemonExitPolicy::Restart) => {
                if let Some(w) = self.daemons.get_mut(&daemon) {
                    if on_probation {
                        w.failures = w.failures.saturating_add(1);
                    }
                    w.step = DaemonStep::Reaping(pid);
                }
                if let Some(stop) = self.daemon_crash_loop(daemon, hung) {
                    return vec![stop];
                }
                tracing::warn!(
                    daemon = daemon.name(),
                    pid = pid.as_raw(),
                    "the {daemon} is hung: killing it to start it again"
                );
                vec![Action::KillTree(pid)]
            }
        }
    }
}

impl TrackedDaemon {
    /// Keeps when the checks began to fail (the hung bound counts from
    /// there), and ends a restart's probation once it has been healthy
    /// for gcs.stable-after.
    fn record_check(
        &mut self,
        now: Instant,
        daemon: Daemon,
        pid: Pid,
        healthy: bool,
        detail: &str,
        stable_after: Duration,
    ) {
        if healthy {
            if self.unhealthy_since.take().is_some() {
                tracing::info!(daemon = daemon.name(), pid = pid.as_raw(), detail = %detail, "Ray daemon healthy again");
            }
            if let DaemonStep::Running {
                restarted: Some(at),
            } = self.step
            {
                if now.saturating_duration_since(at) >= stable_after {
                    self.step = DaemonStep::Running { restarted: None };
                    self.failures = 0;
                }
            }
        } else if self.unhealthy_since.is_none() {
            self.unhealthy_since = Some(now);
            tracing::warn!(daemon = daemon.name(), pid = pid.as_raw(), detail = %detail, "Ray daemon failed its health check");
        }
    }
}
