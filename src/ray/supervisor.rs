//! The supervisor's event loop: start, run, stop. The in-place recovery of
//! a lost GCS is in `recover`.

mod recover;

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use super::daemons::{self, Daemon};
use super::gcs::GcsSpec;
use super::health::{self, Health, Mode, Observation};
use super::state::{GcsHealth, Phase, State};
use super::Plan;
use crate::config::{Config, DaemonExitPolicy, RayMode};
use crate::exit::{self, Exit};
use crate::init::output::{self, Tail};
use crate::init::reaper::ExitStatus;
use crate::init::stop::{self, StopPlan};
use crate::init::{proctree, spawn, Init};

/// How often the loop proves it is alive, for `/livez`.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A daemon's exit, from the reaper.
type DaemonExit = (Daemon, Pid, ExitStatus);

/// The running gcs_server that rayhead reaps (direct mode).
struct GcsProc {
    pid: Pid,
    exit: oneshot::Receiver<ExitStatus>,
}

/// What ends a phase of the loop.
enum Outcome {
    /// A SIGTERM or SIGINT asked for a stop.
    Stop(Signal),
    /// rayhead decided to exit: tear down, then exit with this.
    Fail(Exit),
}

pub(super) struct Supervisor<'a> {
    cfg: &'a Config,
    plan: Plan,
    state: State,
    init: &'a mut Init,
    mode_tx: watch::Sender<Mode>,
    health_rx: mpsc::UnboundedReceiver<Observation>,
    health_tx: mpsc::UnboundedSender<Observation>,
    exits_tx: mpsc::UnboundedSender<DaemonExit>,
    exits_rx: mpsc::UnboundedReceiver<DaemonExit>,
    gcs: Option<GcsProc>,
    gcs_spec: Option<GcsSpec>,
    /// When each in-place restart happened, for the crash-loop guard.
    restarts: VecDeque<Instant>,
    generation: u64,
    tail: Tail,
    /// `ray start`'s pid, and its exit while it runs (block mode).
    ray_start: Option<Pid>,
    ray_start_exit: Option<oneshot::Receiver<ExitStatus>>,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(cfg: &'a Config, plan: Plan, state: State, init: &'a mut Init) -> Self {
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let mode_tx = watch::Sender::new(Mode {
            generation: 0,
            interval: health::FAST_INTERVAL,
        });
        Supervisor {
            cfg,
            plan,
            state,
            init,
            mode_tx,
            health_rx,
            health_tx,
            exits_tx,
            exits_rx,
            gcs: None,
            gcs_spec: None,
            restarts: VecDeque::new(),
            generation: 0,
            tail: Tail::default(),
            ray_start: None,
            ray_start_exit: None,
        }
    }

    pub(super) async fn run(mut self) -> Exit {
        let outcome = match self.start().await {
            Ok(()) => self.supervise().await,
            Err(o) => o,
        };
        match outcome {
            Outcome::Stop(sig) => {
                let report = self.teardown(false).await;
                Exit::new(
                    0,
                    format!(
                        "stopped on {}: the Ray head was shut down in {:.1}s{}",
                        sig.as_str(),
                        report.elapsed.as_secs_f64(),
                        if report.killed > 0 {
                            format!(", {} process(es) SIGKILLed", report.killed)
                        } else {
                            String::new()
                        }
                    ),
                )
            }
            Outcome::Fail(exit) => {
                tracing::error!(code = exit.code, reason = %exit.reason, "giving up: tearing the Ray head down");
                self.state
                    .update(|s| s.last_reason = Some(exit.reason.clone()));
                self.teardown(true).await;
                exit
            }
        }
    }

    /// Redis gate, `ray start`, daemon discovery, the health monitor.
    async fn start(&mut self) -> Result<(), Outcome> {
        self.state
            .set_phase(Phase::Starting, "starting the Ray head");
        if let Some(redis) = self.plan.redis.clone() {
            let until = Instant::now() + self.cfg.redis.startup_timeout;
            tracing::info!(redis = %redis.address, "waiting for Redis before ray start");
            let result = tokio::select! {
                r = beating(&self.state, redis.wait_ready(until, "start gate")) => r,
                sig = next_stop_signal(&mut self.init.signals) => return Err(Outcome::Stop(sig)),
            };
            match result {
                Ok(rtt) => tracing::info!(redis = %redis.address, rtt_ms = rtt.as_secs_f64() * 1e3, "Redis answers"),
                Err(e) if e.is_permanent() => {
                    return Err(Outcome::Fail(Exit::new(
                        exit::REDIS_AUTH,
                        format!("Redis at {} rejected the credentials ({e}); check REDIS_PASSWORD and REDIS_USERNAME", redis.address),
                    )))
                }
                Err(e) => {
                    return Err(Outcome::Fail(Exit::new(
                        exit::REDIS_UNREACHABLE,
                        format!(
                            "Redis at {} did not answer within redis.startup-timeout ({}): {e}",
                            redis.address,
                            humantime::format_duration(self.cfg.redis.startup_timeout)
                        ),
                    )))
                }
            }
        }

        let argv = &self.plan.start.argv;
        let mut cmd = spawn::command(argv);
        // Ray must use the reconnect timeout that rayhead's deadline assumes.
        cmd.env(
            "RAY_gcs_rpc_server_reconnect_timeout_s",
            self.cfg.ray.reconnect_timeout.as_secs().max(1).to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let spawned = match self.init.reaper.spawn(&mut cmd, "ray start") {
            Ok(s) => s,
            Err(e) => {
                return Err(Outcome::Fail(Exit::new(
                    spawn::spawn_error_code(&e),
                    format!("cannot run {:?}: {e}", argv[0]),
                )))
            }
        };
        tracing::info!(pid = spawned.pid.as_raw(), command = %crate::redact::command_line(argv), mode = ?self.cfg.ray.mode, "started ray start");
        self.ray_start = Some(spawned.pid);
        let mut spawned = spawned;
        output::forward_spawned(
            &mut spawned,
            &self.tail,
            &self.init.tracker,
            &self.init.cancel.child_token(),
        );
        self.start_monitor();

        match self.cfg.ray.mode {
            RayMode::Direct => {
                let mut exit_rx = spawned.exit;
                let status = tokio::select! {
                    s = beating(&self.state, &mut exit_rx) => s.unwrap_or(ExitStatus::Exited(255)),
                    sig = next_stop_signal(&mut self.init.signals) => return Err(Outcome::Stop(sig)),
                };
                if !status.success() {
                    // Let the output tasks catch up with the last lines.
                    sleep(Duration::from_millis(100)).await;
                    return Err(Outcome::Fail(Exit::new(
                        exit::RAY_START_FAILED,
                        format!("ray start {status}: {}", self.tail.summary()),
                    )));
                }
                self.adopt_daemons().await?;
            }
            RayMode::Block => {
                self.ray_start_exit = Some(spawned.exit);
            }
        }
        Ok(())
    }

    fn start_monitor(&self) {
        let port = self.plan.start.gcs_port;
        let timeout = self.cfg.gcs.health_timeout;
        let mode = self.mode_tx.subscribe();
        let tx = self.health_tx.clone();
        let cancel = self.init.cancel.child_token();
        self.init
            .tracker
            .spawn(health::monitor(port, timeout, mode, tx, cancel));
    }

    /// Finds the daemons that `ray start` left, now children of rayhead, and
    /// claims their exits from the reaper. A daemon still between fork and
    /// exec is not named yet, so a missing one is looked for again briefly.
    async fn adopt_daemons(&mut self) -> Result<(), Outcome> {
        let mark = self.init.reaper.mark();
        let me = nix::unistd::getpid();
        let give_up = Instant::now() + Duration::from_secs(2);
        let found = loop {
            let found = daemons::find(&proctree::snapshot(), me);
            let missing = [Daemon::GcsServer, Daemon::Raylet]
                .into_iter()
                .find(|need| !found.iter().any(|(d, _)| d == need));
            match missing {
                None => break found,
                Some(need) if Instant::now() >= give_up => {
                    return Err(Outcome::Fail(Exit::new(
                        exit::RAY_START_FAILED,
                        format!(
                            "ray start exited 0 but no {need} is running: {}",
                            self.tail.summary()
                        ),
                    )));
                }
                Some(_) => sleep(Duration::from_millis(50)).await,
            }
        };
        for (daemon, pid) in found {
            tracing::info!(
                daemon = daemon.name(),
                pid = pid.as_raw(),
                "found Ray daemon"
            );
            self.state
                .set_daemon(daemon.name(), Some(pid.as_raw()), "running", None);
            let rx = self.init.reaper.watch(pid, daemon.name(), mark);
            if daemon == Daemon::GcsServer {
                match GcsSpec::capture(pid) {
                    Ok(spec) => {
                        tracing::info!(command = %spec.redacted(), "captured gcs_server's command");
                        self.gcs_spec = Some(spec);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot capture gcs_server's command; it cannot be restarted in place")
                    }
                }
                self.gcs = Some(GcsProc { pid, exit: rx });
            } else {
                let tx = self.exits_tx.clone();
                self.init.tracker.spawn(async move {
                    if let Ok(status) = rx.await {
                        let _ = tx.send((daemon, pid, status));
                    }
                });
            }
        }
        Ok(())
    }

    /// The steady state: watch for a lost GCS and dead daemons.
    async fn supervise(&mut self) -> Outcome {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_serving: Option<Instant> = None;
        let mut first_seen = Instant::now();
        loop {
            let unhealthy_at = last_serving.unwrap_or(first_seen) + self.cfg.gcs.unhealthy_after;
            let loss: Option<String> = tokio::select! {
                _ = heartbeat.tick() => { self.state.beat(); None }
                sig = next_stop_signal(&mut self.init.signals) => return Outcome::Stop(sig),
                status = gcs_exit(&mut self.gcs) => Some(format!("gcs_server {status}")),
                Some(obs) = self.health_rx.recv() => {
                    if obs.generation != self.generation {
                        continue;
                    }
                    self.observe(&obs);
                    match obs.health {
                        Health::Serving => {
                            if last_serving.is_none() {
                                self.state.set_phase(Phase::Running, "the GCS answers SERVING");
                                self.mode_tx.send_replace(Mode { generation: self.generation, interval: self.cfg.gcs.health_interval });
                            }
                            last_serving = Some(obs.at);
                            None
                        }
                        Health::NotServing => Some(format!("the GCS reported NOT_SERVING ({})", obs.via)),
                        Health::Refused if last_serving.is_some() => {
                            Some("the GCS port refuses connections".to_string())
                        }
                        _ => None,
                    }
                }
                _ = sleep_until(unhealthy_at) => Some(format!(
                    "no SERVING answer from the GCS for {}",
                    humantime::format_duration(self.cfg.gcs.unhealthy_after)
                )),
                Some((daemon, pid, status)) = self.exits_rx.recv() => {
                    if let Some(o) = self.daemon_exited(daemon, pid, status) {
                        return o;
                    }
                    None
                }
                status = ray_start_exit(&mut self.ray_start_exit) => {
                    return Outcome::Fail(Exit::new(status.code(), format!("ray start --block {status}")));
                }
            };
            let Some(reason) = loss else { continue };
            if let Err(o) = self.recover(reason).await {
                return o;
            }
            last_serving = Some(Instant::now());
            first_seen = Instant::now();
        }
    }

    fn observe(&self, obs: &Observation) {
        let h = match obs.health {
            Health::Serving => GcsHealth::Serving,
            Health::NotServing => GcsHealth::NotServing,
            Health::Refused | Health::Failed(_) => GcsHealth::Unreachable,
        };
        self.state.set_gcs_health(h, obs.latency);
        if let Health::Failed(why) = &obs.health {
            tracing::debug!(why = %why, via = obs.via, "GCS health check failed");
        }
    }

    /// A daemon other than the GCS exited: the raylet ends the head, others
    /// follow ray.on-daemon-exit.
    fn daemon_exited(&mut self, daemon: Daemon, pid: Pid, status: ExitStatus) -> Option<Outcome> {
        tracing::warn!(daemon = daemon.name(), pid = pid.as_raw(), %status, "Ray daemon exited");
        self.state
            .set_daemon(daemon.name(), None, "exited", Some(status.to_string()));
        if daemon == Daemon::Raylet {
            return Some(Outcome::Fail(Exit::new(
                exit::RAYLET_DIED,
                format!("the head raylet (pid {pid}) {status}"),
            )));
        }
        match self.cfg.ray.on_daemon_exit {
            DaemonExitPolicy::Exit => Some(Outcome::Fail(Exit::new(
                exit::DAEMON_DIED,
                format!("Ray's {daemon} (pid {pid}) {status}, and ray.on-daemon-exit is \"exit\""),
            ))),
            DaemonExitPolicy::Ignore => None,
        }
    }

    /// Stops every Ray process. A requested stop runs `ray stop`, then TERM,
    /// grace, KILL. A failure (`fast`) skips `ray stop` and gives TERM only
    /// half of gcs.deadline-margin: the head is broken already, and rayhead
    /// must be gone before the head's reconnect window ends.
    async fn teardown(&mut self, fast: bool) -> stop::StopReport {
        self.state
            .set_phase(Phase::Stopping, "stopping the Ray head");
        let (stop_command, grace) = if fast {
            let g = (self.cfg.gcs.deadline_margin / 2)
                .max(Duration::from_secs(1))
                .min(self.cfg.init.stop_grace);
            (None, g)
        } else {
            (
                Some(self.plan.stop_command.clone()),
                self.cfg.init.stop_grace,
            )
        };
        let plan = StopPlan {
            stop_command,
            stop_command_timeout: self.cfg.init.stop_command_timeout,
            grace,
            group: self.ray_start.map(|p| (p, Signal::SIGTERM)),
            forward: self.cfg.init.forward_signals.clone(),
        };
        let stop = stop::stop_tree(
            &self.init.reaper,
            &plan,
            &mut self.init.signals,
            &self.init.tracker,
            &self.init.cancel,
        );
        beating(&self.state, stop).await
    }
}

/// Runs `fut`, beating the heartbeat meanwhile: a long wait (the Redis gate,
/// `ray start`, a stop) is progress, not a wedged supervisor.
pub(super) async fn beating<F: std::future::Future>(state: &State, fut: F) -> F::Output {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => state.beat(),
        }
    }
}

/// The next SIGTERM or SIGINT; other signals are forwarded to... nothing in
/// direct mode (the daemons are not one job), so they are logged.
async fn next_stop_signal(signals: &mut mpsc::UnboundedReceiver<Signal>) -> Signal {
    loop {
        match signals.recv().await {
            Some(sig) if stop::is_stop_signal(sig) => return sig,
            Some(sig) => tracing::info!(
                signal = sig.as_str(),
                "signal ignored while supervising Ray"
            ),
            None => std::future::pending::<()>().await,
        }
    }
}

/// The GCS's exit, or never when rayhead does not reap it.
async fn gcs_exit(gcs: &mut Option<GcsProc>) -> ExitStatus {
    match gcs {
        Some(g) => {
            let status = (&mut g.exit).await.unwrap_or(ExitStatus::Exited(255));
            *gcs = None;
            status
        }
        None => std::future::pending().await,
    }
}

async fn ray_start_exit(rx: &mut Option<oneshot::Receiver<ExitStatus>>) -> ExitStatus {
    match rx {
        Some(r) => {
            let status = r.await.unwrap_or(ExitStatus::Exited(255));
            *rx = None;
            status
        }
        None => std::future::pending().await,
    }
}
