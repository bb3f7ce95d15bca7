//! Recovering a lost GCS in place, within the head's reconnect window.

use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use super::{next_stop_signal, GcsProc, Outcome, Supervisor};
use crate::config::RayMode;
use crate::exit::{self, Exit};
use crate::init::proctree;
use crate::init::reaper::ExitStatus;
use crate::ray::daemons::{self, Daemon};
use crate::ray::health::{self, Health, Mode};
use crate::ray::state::{GcsHealth, Phase};

impl Supervisor<'_> {
    /// The GCS is lost: restart it in place before the deadline, or fail.
    pub(super) async fn recover(&mut self, reason: String) -> Result<(), Outcome> {
        let t0 = Instant::now();
        let t0_wall = SystemTime::now();
        let window = self.cfg.ray.reconnect_timeout;
        let deadline = t0 + window.saturating_sub(self.cfg.gcs.deadline_margin);
        let deadline_wall = t0_wall + window.saturating_sub(self.cfg.gcs.deadline_margin);
        self.generation += 1;
        self.mode_tx.send_replace(Mode {
            generation: self.generation,
            interval: health::FAST_INTERVAL,
        });
        tracing::warn!(event = "gcs_lost", reason = %reason, "GCS lost");
        self.state.update(|s| {
            s.gcs.health = GcsHealth::Unreachable;
            s.gcs.last_loss = Some(t0_wall);
            s.gcs.last_loss_reason = Some(reason.clone());
        });
        self.state
            .set_phase(Phase::Recovering, &format!("GCS lost: {reason}"));

        // Never two GCS processes on one Redis namespace: the old one goes first.
        self.kill_gcs().await;

        if self.cfg.ray.mode == RayMode::Block {
            return Err(Outcome::Fail(Exit::new(
                exit::GCS_LOST_BLOCK,
                format!("GCS lost ({reason}); in block mode rayhead does not restart it"),
            )));
        }
        if self.plan.redis.is_none() {
            return Err(Outcome::Fail(Exit::new(
                exit::GCS_LOST_NO_FT,
                format!("GCS lost ({reason}) without fault tolerance (no Redis): its state is gone, so the head exits"),
            )));
        }
        let Some(spec) = self.gcs_spec.clone() else {
            return Err(Outcome::Fail(Exit::new(
                exit::GCS_NOT_RECOVERED,
                format!("GCS lost ({reason}) and its command was never captured"),
            )));
        };
        self.state.update(|s| s.gcs.deadline = Some(deadline_wall));

        let mut attempt: u32 = 0;
        let mut last_error = String::from("no attempt finished");
        loop {
            let now = Instant::now();
            self.state.beat();
            if now >= deadline {
                return Err(self.not_recovered(&reason, &last_error, t0));
            }
            // Crash-loop guard.
            let window_start = now.checked_sub(self.cfg.gcs.restart_window);
            while self
                .restarts
                .front()
                .is_some_and(|t| Some(*t) < window_start)
            {
                self.restarts.pop_front();
            }
            if self.restarts.len() as u32 >= self.cfg.gcs.max_restarts {
                return Err(Outcome::Fail(Exit::new(
                    exit::GCS_CRASH_LOOP,
                    format!(
                        "GCS lost ({reason}) after {} in-place restarts within gcs.restart-window ({}): crash loop",
                        self.restarts.len(),
                        humantime::format_duration(self.cfg.gcs.restart_window)
                    ),
                )));
            }
            // Restart gate: the GCS aborts without Redis.
            if let Some(redis) = self.plan.redis.clone() {
                let gate = tokio::select! {
                    r = super::beating(&self.state, redis.wait_ready(deadline, "restart gate")) => r,
                    sig = next_stop_signal(&mut self.init.signals) => return Err(Outcome::Stop(sig)),
                };
                if let Err(e) = gate {
                    last_error = format!("Redis at {} is not answering: {e}", redis.address);
                    if e.is_permanent() || Instant::now() >= deadline {
                        return Err(self.not_recovered(&reason, &last_error, t0));
                    }
                    continue;
                }
            }
            let spawned = spec
                .command()
                .and_then(|mut cmd| self.init.reaper.spawn(&mut cmd, "gcs_server"));
            let mut spawned = match spawned {
                Ok(s) => s,
                Err(e) => {
                    last_error = format!("cannot start gcs_server: {e}");
                    attempt += 1;
                    self.pause(crate::ray::backoff(attempt), deadline).await?;
                    continue;
                }
            };
            attempt += 1;
            self.restarts.push_back(Instant::now());
            self.state.update(|s| s.gcs.restarts += 1);
            self.state
                .set_daemon("gcs_server", Some(spawned.pid.as_raw()), "restarting", None);
            tracing::info!(
                attempt,
                pid = spawned.pid.as_raw(),
                "restarted gcs_server in place"
            );

            let serving = loop {
                tokio::select! {
                    status = &mut spawned.exit => {
                        let status = status.unwrap_or(ExitStatus::Exited(255));
                        last_error = format!("the restarted gcs_server {status}");
                        break false;
                    }
                    Some(obs) = self.health_rx.recv() => {
                        self.state.beat();
                        if obs.generation == self.generation {
                            self.observe(&obs);
                            if obs.health == Health::Serving {
                                break true;
                            }
                        }
                    }
                    _ = sleep_until(deadline) => {
                        let _ = kill(spawned.pid, Signal::SIGKILL);
                        let _ = (&mut spawned.exit).await;
                        last_error = "the restarted gcs_server did not answer SERVING".into();
                        return Err(self.not_recovered(&reason, &last_error, t0));
                    }
                    sig = next_stop_signal(&mut self.init.signals) => {
                        self.gcs = Some(GcsProc { pid: spawned.pid, exit: spawned.exit });
                        return Err(Outcome::Stop(sig));
                    }
                    Some((daemon, pid, status)) = self.exits_rx.recv() => {
                        if let Some(o) = self.daemon_exited(daemon, pid, status) {
                            self.gcs = Some(GcsProc { pid: spawned.pid, exit: spawned.exit });
                            return Err(o);
                        }
                    }
                }
            };
            if serving {
                let took = t0.elapsed();
                self.gcs = Some(GcsProc {
                    pid: spawned.pid,
                    exit: spawned.exit,
                });
                self.mode_tx.send_replace(Mode {
                    generation: self.generation,
                    interval: self.cfg.gcs.health_interval,
                });
                self.state.update(|s| {
                    s.gcs.health = GcsHealth::Serving;
                    s.gcs.last_recovery = Some(SystemTime::now());
                    s.gcs.last_recovery_seconds = Some(took.as_secs_f64());
                    s.recoveries.push(took.as_secs_f64());
                    s.gcs.deadline = None;
                });
                self.state
                    .set_daemon("gcs_server", Some(spawned.pid.as_raw()), "running", None);
                tracing::info!(
                    event = "gcs_recovered",
                    seconds = took.as_secs_f64(),
                    attempts = attempt,
                    pid = spawned.pid.as_raw(),
                    "GCS recovered in place"
                );
                self.state
                    .set_phase(Phase::Running, "GCS recovered in place");
                return Ok(());
            }
            tracing::warn!(attempt, error = %last_error, "GCS restart attempt failed");
            self.pause(crate::ray::backoff(attempt), deadline).await?;
        }
    }

    fn not_recovered(&self, reason: &str, last_error: &str, t0: Instant) -> Outcome {
        Outcome::Fail(Exit::new(
            exit::GCS_NOT_RECOVERED,
            format!(
                "GCS lost ({reason}) and not SERVING again within {:.1}s, before the head's reconnect timeout ({}) less gcs.deadline-margin ({}); last attempt: {last_error}",
                t0.elapsed().as_secs_f64(),
                humantime::format_duration(self.cfg.ray.reconnect_timeout),
                humantime::format_duration(self.cfg.gcs.deadline_margin),
            ),
        ))
    }

    /// Back-off between attempts, cut short by the deadline; a stop signal
    /// or the raylet's death ends it.
    async fn pause(&mut self, d: Duration, deadline: Instant) -> Result<(), Outcome> {
        let until = (Instant::now() + d).min(deadline);
        loop {
            tokio::select! {
                _ = sleep_until(until) => return Ok(()),
                sig = next_stop_signal(&mut self.init.signals) => return Err(Outcome::Stop(sig)),
                Some((daemon, pid, status)) = self.exits_rx.recv() => {
                    if let Some(o) = self.daemon_exited(daemon, pid, status) {
                        return Err(o);
                    }
                }
            }
        }
    }

    /// SIGKILLs the current gcs_server, if rayhead knows one alive, and waits
    /// until the reaper has it. In block mode `ray start` reaps it instead.
    async fn kill_gcs(&mut self) {
        let Some(mut g) = self.gcs.take() else {
            if self.cfg.ray.mode == RayMode::Block {
                let me = self.ray_start.unwrap_or(nix::unistd::getpid());
                for (d, pid) in daemons::find(&proctree::snapshot(), me) {
                    if d == Daemon::GcsServer {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
            }
            return;
        };
        match g.exit.try_recv() {
            Ok(_) | Err(oneshot::error::TryRecvError::Closed) => {}
            Err(oneshot::error::TryRecvError::Empty) => {
                tracing::warn!(
                    pid = g.pid.as_raw(),
                    "killing the old gcs_server before a new one starts"
                );
                let _ = kill(g.pid, Signal::SIGKILL);
                let _ = (&mut g.exit).await;
            }
        }
        self.state.set_daemon("gcs_server", None, "exited", None);
    }
}
