//! The GCS: its health, its loss, and its recovery in place within the
//! head's reconnect window.

use nix::unistd::Pid;
use tokio::time::Instant;

use super::*;

impl Machine {
    pub(super) fn on_gcs_exited(
        &mut self,
        now: Instant,
        pid: Pid,
        status: ExitStatus,
    ) -> Vec<Action> {
        if self.gcs != Some(pid) {
            return Vec::new();
        }
        self.gcs = None;
        self.set_child(
            Daemon::GcsServer,
            None,
            ChildStatus::Exited,
            Some(status.to_string()),
        );
        match &mut self.stage {
            Stage::Steady(_) => self.on_gcs_lost(now, format!("gcs_server {status}")),
            Stage::Recovering(r) => match r.step {
                RecoveryStep::Reaping(old) if old == pid => self.after_reap(now),
                RecoveryStep::Starting(new) if new == pid => {
                    r.last_error = format!("the restarted gcs_server {status}");
                    self.on_restart_failed(now)
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    pub(super) fn on_gcs_health(&mut self, now: Instant, obs: Observation) -> Vec<Action> {
        if obs.generation != self.generation {
            return Vec::new();
        }
        let h = match obs.health {
            Health::Serving => GcsHealth::Serving,
            Health::NotServing => GcsHealth::NotServing,
            Health::Refused | Health::Failed(_) => GcsHealth::Unreachable,
        };
        self.state.set_gcs_health(h, obs.latency);
        if let Health::Failed(why) = &obs.health {
            tracing::debug!(why = %why, via = obs.via, "GCS health check failed");
        }
        match (&self.stage, &obs.health) {
            (Stage::Recovering(r), Health::Serving)
                if matches!(r.step, RecoveryStep::Starting(_)) =>
            {
                self.on_recovered(now)
            }
            (Stage::Recovering(_), _) => Vec::new(),
            (Stage::Steady(_), Health::Serving) => {
                self.last_serving = Some(obs.at);
                self.start_running()
            }
            (_, Health::Serving) => {
                // Before adoption: remembered, acted on once steady.
                self.last_serving = Some(obs.at);
                Vec::new()
            }
            (Stage::Steady(_), Health::NotServing) => {
                self.on_gcs_lost(now, format!("the GCS reported NOT_SERVING ({})", obs.via))
            }
            (Stage::Steady(_), Health::Refused) if self.last_serving.is_some() => {
                self.on_gcs_lost(now, "the GCS port refuses connections".into())
            }
            _ => Vec::new(),
        }
    }

    /// The GCS is lost: start a recovery, or decide that none can be.
    pub(super) fn on_gcs_lost(&mut self, now: Instant, reason: String) -> Vec<Action> {
        if let Stage::Steady(Steady {
            probation: Some(_), ..
        }) = self.stage
        {
            // Lost again within gcs.stable-after of its restart.
            self.count_failure();
            if let Some(stop) = self.crash_loop(&reason, "lost again soon after its restart") {
                return vec![stop];
            }
        }
        self.generation += 1;
        self.last_serving = None;
        let mut actions = vec![self.point_gcs_health(health::FAST_INTERVAL)];
        tracing::warn!(event = "gcs_lost", reason = %reason, "GCS lost");
        let window = self
            .cfg
            .ray
            .reconnect_timeout
            .saturating_sub(self.cfg.gcs.deadline_margin);
        let deadline = after(now, window);
        let deadline_wall = wall_after(SystemTime::now(), window);
        self.state.update_gcs(|g| {
            g.health = GcsHealth::Unreachable;
            g.last_loss = Some(SystemTime::now());
            g.last_loss_reason = Some(reason.clone());
        });
        self.enter(Phase::Recovering, &format!("GCS lost: {reason}"));
        if let Some(end) = self.unrecoverable(&reason) {
            actions.extend(end);
            return actions;
        }
        self.state.update_gcs(|g| g.deadline = Some(deadline_wall));
        let step = match self.gcs {
            // Never two GCS processes on one Redis namespace: the old one
            // goes first, and is reaped before a new one starts.
            Some(old) => {
                tracing::warn!(
                    pid = old.as_raw(),
                    "killing the old gcs_server before a new one starts"
                );
                actions.push(Action::Kill(old));
                RecoveryStep::Reaping(old)
            }
            None => RecoveryStep::Gate,
        };
        self.stage = Stage::Recovering(Recovery {
            t0: now,
            deadline,
            reason,
            last_error: "no attempt finished".into(),
            storage: None,
            attempts: 0,
            step,
        });
        if step == RecoveryStep::Gate {
            actions.extend(self.after_reap(now));
        }
        actions
    }

    /// The heads whose GCS rayhead cannot restart: under `ray start
    /// --block` the GCS is not rayhead's child, and without fault tolerance
    /// a new GCS would start with none of the old one's state.
    fn unrecoverable(&self, reason: &str) -> Option<Vec<Action>> {
        if self.cfg.ray.mode == RayMode::Block {
            return Some(vec![
                Action::KillBlockGcs,
                Action::Stop(StopReason::Exit(Exit::GcsLostInBlockMode(format!(
                    "GCS lost ({reason}); in block mode rayhead does not restart it"
                )))),
            ]);
        }
        if self.store.is_none() {
            return Some(vec![Action::Stop(StopReason::Exit(
                Exit::GcsLostWithoutFaultTolerance(format!(
                    "GCS lost ({reason}) without fault tolerance (no Redis, no RocksDB): its state is gone, so the head exits"
                )),
            ))]);
        }
        None
    }

    /// An event while recovering: the gate's answer, the new gcs_server's
    /// start, the back-off's end, the deadline.
    pub(super) fn while_recovering(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let Stage::Recovering(r) = &mut self.stage else {
            return Vec::new();
        };
        match (r.step, event) {
            (RecoveryStep::Gate, Event::StoreReady) => {
                r.step = RecoveryStep::Spawning;
                vec![Action::StartDaemon(Daemon::GcsServer)]
            }
            (RecoveryStep::Gate, Event::StoreFailed(e)) => {
                r.last_error = match (&self.store, &e) {
                    (_, GateError::Disk(p)) => p.to_string(),
                    (Some(s), GateError::Redis(p)) => {
                        format!("{} is not answering: {p}", s.description)
                    }
                    (None, GateError::Redis(p)) => format!("Redis is not answering: {p}"),
                };
                // A check the deadline cut short found nothing: the exit
                // is the deadline's, not the storage's.
                r.storage = match e {
                    GateError::Disk(p) if p.is_finding() => Some(p),
                    _ => None,
                };
                vec![self.not_recovered(now)]
            }
            (RecoveryStep::Spawning, Event::Started(Daemon::GcsServer, started)) => {
                self.on_gcs_started(now, started)
            }
            (_, Event::TimerFired(Timer::Backoff)) => {
                r.step = RecoveryStep::Gate;
                vec![restart_gate(r.deadline)]
            }
            (step, Event::TimerFired(Timer::Deadline)) => {
                if let RecoveryStep::Starting(_) = step {
                    r.last_error = "the restarted gcs_server did not answer SERVING".into();
                }
                vec![self.not_recovered(now)]
            }
            (_, other) => log_ignored(other),
        }
    }

    /// A new gcs_server was spawned, or could not be.
    fn on_gcs_started(&mut self, now: Instant, started: Result<Pid, StartError>) -> Vec<Action> {
        let Stage::Recovering(r) = &mut self.stage else {
            return Vec::new();
        };
        match started {
            Ok(pid) => {
                r.attempts += 1;
                r.step = RecoveryStep::Starting(pid);
                let attempt = r.attempts;
                self.gcs = Some(pid);
                self.state.update_gcs(|g| g.restarts += 1);
                self.set_child(Daemon::GcsServer, Some(pid), ChildStatus::Restarting, None);
                tracing::info!(attempt, pid = pid.as_raw(), "restarted gcs_server in place");
                Vec::new()
            }
            Err(e) if !e.retry => {
                r.last_error = e.message;
                vec![self.not_recovered(now)]
            }
            Err(e) => {
                r.last_error = e.message;
                self.on_restart_failed(now)
            }
        }
    }

    /// The old GCS is gone: restart at once, or after a back-off when the
    /// last restart failed.
    pub(super) fn after_reap(&mut self, now: Instant) -> Vec<Action> {
        let failures = self.failures;
        let Stage::Recovering(r) = &mut self.stage else {
            return Vec::new();
        };
        if failures > 0 {
            r.step = RecoveryStep::Backoff(after(now, RESTART_BACKOFF.delay(failures)));
            return Vec::new();
        }
        r.step = RecoveryStep::Gate;
        vec![restart_gate(r.deadline)]
    }

    /// A restart failed: count it, then back off, or give up.
    pub(super) fn on_restart_failed(&mut self, now: Instant) -> Vec<Action> {
        self.count_failure();
        let Stage::Recovering(r) = &mut self.stage else {
            return Vec::new();
        };
        tracing::warn!(attempt = r.attempts, error = %r.last_error, "GCS restart attempt failed");
        let reason = r.reason.clone();
        let last = r.last_error.clone();
        if let Some(stop) = self.crash_loop(&reason, &last) {
            return vec![stop];
        }
        if let Stage::Recovering(r) = &mut self.stage {
            r.step = RecoveryStep::Backoff(after(now, RESTART_BACKOFF.delay(self.failures)));
        }
        Vec::new()
    }

    pub(super) fn count_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let n = self.failures;
        self.state.update_gcs(|g| g.consecutive_failures = n);
    }

    /// Exit 82 once gcs.max-restarts restarts in a row have failed.
    pub(super) fn crash_loop(&self, reason: &str, last: &str) -> Option<Action> {
        (self.failures >= self.cfg.gcs.max_restarts).then(|| {
            Action::Stop(StopReason::Exit(Exit::GcsCrashLoop(format!(
                "GCS lost ({reason}) after {} consecutive failed in-place restarts (gcs.max-restarts): crash loop; last: {last}",
                self.failures
            ))))
        })
    }

    pub(super) fn on_recovered(&mut self, now: Instant) -> Vec<Action> {
        let Stage::Recovering(r) = &self.stage else {
            return Vec::new();
        };
        let took = now.saturating_duration_since(r.t0);
        let attempts = r.attempts;
        let pid = self.gcs;
        self.last_serving = Some(now);
        self.memory_recovered(now);
        self.state.update(|s| {
            if let Some(g) = &mut s.gcs {
                g.health = GcsHealth::Serving;
                g.last_recovery = Some(SystemTime::now());
                g.last_recovery_seconds = Some(took.as_secs_f64());
                g.deadline = None;
            }
            s.recoveries.push(took.as_secs_f64());
        });
        self.set_child(Daemon::GcsServer, pid, ChildStatus::Running, None);
        tracing::info!(
            event = "gcs_recovered",
            seconds = took.as_secs_f64(),
            attempts,
            pid = pid.map(Pid::as_raw),
            "GCS recovered in place"
        );
        self.enter(Phase::Running, "GCS recovered in place");
        self.stage = Stage::Steady(Steady {
            since: now,
            probation: Some(now),
        });
        vec![self.point_gcs_health(self.cfg.gcs.health_interval)]
    }

    pub(super) fn not_recovered(&self, now: Instant) -> Action {
        let (took, reason, last, storage) = match &self.stage {
            Stage::Recovering(r) => (
                now.saturating_duration_since(r.t0),
                r.reason.as_str(),
                r.last_error.as_str(),
                r.storage.as_ref(),
            ),
            _ => (Duration::ZERO, "", "", None),
        };
        if let Some(p) = storage {
            // Its own exit: the storage, not the GCS, needs a person.
            let waited = if p.is_permanent() {
                String::new()
            } else {
                format!(
                    " and stayed so for {:.1}s, until the recovery's deadline",
                    took.as_secs_f64()
                )
            };
            return Action::Stop(StopReason::Exit(p.exit(&format!(
                "GCS lost ({reason}) and not restarted: {p}{waited}"
            ))));
        }
        Action::Stop(StopReason::Exit(Exit::GcsNotRecovered(format!(
            "GCS lost ({reason}) and not SERVING again within {:.1}s, before the head's reconnect timeout ({}) less gcs.deadline-margin ({}); last attempt: {last}",
            took.as_secs_f64(),
            humantime::format_duration(self.cfg.ray.reconnect_timeout),
            humantime::format_duration(self.cfg.gcs.deadline_margin),
        ))))
    }
}

/// The restart gate: the store must be usable before a GCS starts, or it
/// aborts (Redis unreachable) or dies at its first write (a full disk).
pub(super) fn restart_gate(deadline: Instant) -> Action {
    Action::WaitForStore {
        until: deadline,
        purpose: "restart gate",
    }
}
