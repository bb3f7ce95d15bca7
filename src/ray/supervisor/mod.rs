//! The supervisor's event loop: every source (signals, the reaper's exits,
//! GCS health, the other daemons' health, memory samples, `ray start`, the
//! store gate, the heartbeat, the machine's own timer) feeds one
//! [`Supervisor::next_event`]; the [`Machine`] decides; this driver carries
//! out its actions and, at the end, tears the head down.
//!
//! ```text
//! signals ────────┐
//! reaper ─────────┤
//! GCS health ─────┤
//! daemon health ──┤
//! memory ─────────┼─► next_event ─► Machine::handle ─► actions ─► (spawn, kill, ...)
//! store gate ─────┤                       │
//! heartbeat ──────┤                       └─► State snapshot ─► probe server
//! timers ─────────┘
//! ```

pub(crate) mod machine;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::capture::CapturedCommand;
use super::daemon_health::{self, http_target, Families, Target};
use super::daemons::{self, Daemon};
use super::health::{self, Mode};
use super::report::Report;
use super::Plan;
use crate::config::Config;
use crate::exit::Exit;
use crate::init::output;
use crate::init::reaper::{ExitStatus, Mark};
use crate::init::stop::{self, StopPlan};
use crate::init::{spawn, Init};
use crate::state::{Phase, State};
use crate::sys::{pin, proctree};
use machine::{Action, Event, Machine, StartError, StopReason};

use crate::init::HEARTBEAT;

/// How long `ray start`'s exit waits for its last output lines: a daemon
/// that inherited its pipe keeps it open for ever.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

pub(super) struct Supervisor<'a> {
    cfg: &'a Config,
    plan: Plan,
    state: State,
    init: &'a mut Init,
    machine: Machine,
    /// Every source but the signals, the heartbeat and the machine's timer
    /// (which `next_event` selects on directly) sends here.
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Results of actions, handled before anything else.
    pending: VecDeque<Event>,
    mode_tx: watch::Sender<Mode>,
    /// Each adopted daemon's command, captured so that it can be started
    /// again in place.
    commands: HashMap<Daemon, CapturedCommand>,
    /// Each health-checked daemon's descendants, as its checks last saw.
    families: Families,
    /// `ray start`'s pid: its process group is the head's (block mode).
    ray_start: Option<Pid>,
    /// The store gate under way, cancelled when another replaces it.
    gate: Option<CancellationToken>,
    /// The reaper's mark taken before the last `/proc` scan.
    scan_mark: Option<Mark>,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(cfg: &'a Config, plan: Plan, state: State, init: &'a mut Init) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let store = plan.store.as_ref().map(|s| s.info(cfg));
        Supervisor {
            cfg,
            machine: Machine::new(cfg, store, state.clone()),
            plan,
            state,
            init,
            events_tx,
            events_rx,
            pending: VecDeque::new(),
            mode_tx: watch::Sender::new(Mode {
                generation: 0,
                interval: health::FAST_INTERVAL,
            }),
            commands: HashMap::new(),
            families: Families::default(),
            ray_start: None,
            gate: None,
            scan_mark: None,
        }
    }

    /// A monitor's sink: its observations, wrapped by `wrap`, into the one
    /// event stream.
    fn report<T: 'static>(&self, wrap: fn(T) -> Event) -> Report<T> {
        let tx = self.events_tx.clone();
        Report::new(move |t| tx.send(wrap(t)).is_ok())
    }

    pub(super) async fn run(mut self) -> Exit {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.init.tracker.spawn(super::memory::sample_every(
            self.cfg.ray.health_interval,
            self.state.clone(),
            self.report(Event::Memory),
            self.init.cancel.child_token(),
        ));
        let mut actions = self.machine.start(Instant::now());
        let stop = 'run: loop {
            for action in actions {
                if let Some(stop) = self.execute(action) {
                    break 'run stop;
                }
            }
            let event = self.next_event(&mut heartbeat).await;
            actions = self.machine.handle(Instant::now(), event);
        };
        if let Some(g) = self.gate.take() {
            g.cancel();
        }
        match stop {
            StopReason::Signal(sig) => {
                let report = self.tear_down(false).await;
                let killed = if report.killed > 0 {
                    format!(", {} process(es) SIGKILLed", report.killed)
                } else {
                    String::new()
                };
                Exit::Status {
                    code: 0,
                    reason: format!(
                        "stopped on {}: the Ray head was shut down in {:.1}s{killed}",
                        sig.as_str(),
                        report.elapsed.as_secs_f64(),
                    ),
                }
            }
            StopReason::Exit(exit) => {
                tracing::error!(code = exit.code(), reason = %exit, "giving up: tearing the Ray head down");
                self.state.update(|s| s.last_reason = Some(exit.reason()));
                self.tear_down(true).await;
                exit
            }
        }
    }

    /// The next event from any source: results of actions first, then
    /// whichever source is ready.
    async fn next_event(&mut self, heartbeat: &mut tokio::time::Interval) -> Event {
        if let Some(e) = self.pending.pop_front() {
            return e;
        }
        let timer = self.machine.timer();
        let wake = async {
            match timer {
                Some((at, t)) => {
                    sleep_until(at).await;
                    t
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(sig) = self.init.signals.recv() => Event::Signal(sig),
            Some(event) = self.events_rx.recv() => event,
            t = wake => Event::TimerFired(t),
            _ = heartbeat.tick() => Event::Tick(crate::logging::dropped_lines()),
        }
    }

    /// Carries out one action; `Some` ends the loop.
    fn execute(&mut self, action: Action) -> Option<StopReason> {
        match action {
            Action::WaitForStore { until, purpose } => self.wait_for_store(until, purpose),
            Action::LaunchRay => self.launch_ray(),
            Action::Scan => {
                let mark = self.init.reaper.mark();
                self.scan_mark = Some(mark);
                let found = daemons::find(&proctree::snapshot(), nix::unistd::getpid());
                self.pending.push_back(Event::Found(found));
            }
            Action::Adopt(found) => self.adopt(found),
            Action::StartHealthChecks(daemon, pid) => self.start_health_checks(daemon, pid),
            // Each by identity: the daemon may be reaped already, and the
            // family list is seconds old; a pid reused since is spared.
            Action::KillTree(pid) => {
                let root = self.init.reaper.pin(pid);
                pin::kill_tree(root.as_ref(), self.families.take(pid));
            }
            Action::PointGcsHealth(mode) => {
                self.mode_tx.send_replace(mode);
            }
            Action::Kill(pid) => {
                if let Some(p) = self.init.reaper.pin(pid) {
                    let _ = p.signal(Signal::SIGKILL);
                }
            }
            Action::KillBlockGcs => {
                // `ray start --block` reaps it, not rayhead: it is held by
                // the identity the scan saw.
                let parent = self.ray_start.unwrap_or_else(nix::unistd::getpid);
                let snap = proctree::snapshot();
                let gcs = daemons::find(&snap, parent)
                    .into_iter()
                    .filter(|(d, _)| *d == Daemon::GcsServer)
                    .filter_map(|(_, pid)| snap.iter().find(|p| p.pid == pid))
                    .map(|p| p.identity());
                pin::signal_all(gcs, Signal::SIGKILL);
            }
            Action::StartDaemon(daemon) => {
                let started = self.start_daemon(daemon);
                self.pending.push_back(Event::Started(daemon, started));
            }
            Action::Stop(reason) => return Some(reason),
        }
        None
    }

    /// Waits for the store in a task of its own, so the loop hears
    /// everything else meanwhile; a newer gate cancels an older one.
    fn wait_for_store(&mut self, until: Instant, purpose: &'static str) {
        let Some(store) = self.plan.store.clone() else {
            self.pending.push_back(Event::StoreReady);
            return;
        };
        if let Some(old) = self.gate.take() {
            old.cancel();
        }
        let cancel = self.init.cancel.child_token();
        self.gate = Some(cancel.clone());
        let tx = self.events_tx.clone();
        self.init.tracker.spawn(async move {
            tokio::select! {
                r = store.wait_ready(until, purpose) => {
                    let _ = tx.send(match r {
                        Ok(()) => Event::StoreReady,
                        Err(e) => Event::StoreFailed(e),
                    });
                }
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Starts `ray start` (its output forwarded, its exit an event) and the
    /// GCS health monitor.
    fn launch_ray(&mut self) {
        let argv = &self.plan.start.argv;
        let mut cmd = spawn::command(argv);
        // Ray must use the reconnect timeout that rayhead's deadline assumes.
        cmd.env(
            "RAY_gcs_rpc_server_reconnect_timeout_s",
            self.cfg.ray.reconnect_timeout.as_secs().max(1).to_string(),
        )
        // Every daemon and driver `ray start` spawns inherits it, and with it
        // sees a recovered GCS within this interval instead of Ray's 1 s.
        // An inherited value already is this key's value (its env alias).
        .env(
            "RAY_grpc_client_check_connection_status_interval_milliseconds",
            self.cfg.ray.client_check_interval.as_millis().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut spawned = match self.init.reaper.spawn(&mut cmd, "ray start") {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot run {:?}: {e}", argv[0]);
                self.pending
                    .push_back(Event::LaunchFailed(spawn::spawn_error(&e, reason)));
                return;
            }
        };
        tracing::info!(pid = spawned.pid.as_raw(), command = %crate::redact::command_line(argv), mode = ?self.cfg.ray.mode, "started ray start");
        self.ray_start = Some(spawned.pid);
        let tail = output::Tail::default();
        let forwarding = output::forward_spawned(
            &mut spawned,
            &tail,
            &self.init.tracker,
            &self.init.cancel.child_token(),
        );
        let tx = self.events_tx.clone();
        let exit = spawned.exit;
        let cancel = self.init.cancel.child_token();
        self.init.tracker.spawn(async move {
            let status = tokio::select! {
                s = exit => s.unwrap_or(ExitStatus::Exited(255)),
                _ = cancel.cancelled() => return,
            };
            // Its last lines explain a failure: the event carries them once
            // its pipes are drained (a daemon that kept them open costs at
            // most OUTPUT_DRAIN). A success needs no wait.
            if !status.success() {
                forwarding.drained(OUTPUT_DRAIN).await;
            }
            let _ = tx.send(Event::RayStartExited(status, tail.summary()));
        });
        self.init.tracker.spawn(health::monitor(
            self.plan.start.gcs_port,
            self.cfg.gcs.health_timeout,
            self.mode_tx.subscribe(),
            self.report(Event::Health),
            self.init.cancel.child_token(),
        ));
    }

    /// Claims the daemons' exits from the reaper, captures their commands
    /// so that they can be started again exactly, and checks the health of
    /// each but the GCS (which has its own monitor).
    fn adopt(&mut self, found: Vec<(Daemon, Pid)>) {
        let mark = self.scan_mark.unwrap_or_else(|| self.init.reaper.mark());
        for (daemon, pid) in found {
            let rx = self.init.reaper.claim(pid, daemon.name(), mark);
            self.forward_exit(daemon, pid, rx);
            match CapturedCommand::capture(pid) {
                Ok(spec) => {
                    tracing::info!(daemon = daemon.name(), command = %spec.redacted(), "captured the daemon's command");
                    self.commands.insert(daemon, spec);
                }
                Err(e) => {
                    tracing::warn!(daemon = daemon.name(), error = %e, "cannot capture the daemon's command; it cannot be restarted in place")
                }
            }
            if daemon != Daemon::GcsServer {
                self.start_health_checks(daemon, pid);
            }
        }
    }

    /// Checks a daemon's health every ray.health-interval, until it is gone.
    fn start_health_checks(&self, daemon: Daemon, pid: Pid) {
        let spec = self.commands.get(&daemon);
        // Only a daemon still unreaped: its pid may be anyone's after.
        let Some(pinned) = self.init.reaper.pin(pid) else {
            return;
        };
        let target = Target {
            daemon,
            pid,
            start: pinned.identity().start,
            check: daemon.spec().check,
            http: spec.and_then(|s| http_target(s.arg("--host"), s.arg("--port"))),
        };
        self.init.tracker.spawn(daemon_health::check_every(
            target,
            self.cfg.ray.health_interval,
            self.cfg.ray.health_timeout,
            self.report(Event::DaemonHealth),
            self.families.clone(),
            self.init.cancel.child_token(),
        ));
    }

    /// Turns a daemon's exit, from the reaper, into an event.
    fn forward_exit(
        &self,
        daemon: Daemon,
        pid: Pid,
        rx: tokio::sync::oneshot::Receiver<ExitStatus>,
    ) {
        let tx = self.events_tx.clone();
        // Shutdown ends the wait: rayhead's exit must never hang on a
        // process that survived the stop.
        let cancel = self.init.cancel.child_token();
        self.init.tracker.spawn(async move {
            tokio::select! {
                r = rx => if let Ok(status) = r {
                    let _ = tx.send(Event::DaemonExited {
                        daemon,
                        pid,
                        status,
                    });
                },
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Starts a daemon again from its captured command; its exit becomes an
    /// event.
    fn start_daemon(&mut self, daemon: Daemon) -> Result<Pid, StartError> {
        let Some(spec) = self.commands.get(&daemon) else {
            return Err(StartError {
                message: format!("{daemon}'s command was never captured"),
                retry: false,
            });
        };
        let mut spawned = spec
            .command()
            .and_then(|mut cmd| self.init.reaper.spawn(&mut cmd, daemon.name()))
            .map_err(|e| StartError {
                message: format!("cannot start {daemon}: {e}"),
                retry: true,
            })?;
        let pid = spawned.pid;
        // A daemon whose output was a pipe writes through the same
        // redacting forwarder as `ray start` (its own tail: the start
        // command's tail explains the start command's failure).
        let _ = output::forward_spawned(
            &mut spawned,
            &output::Tail::default(),
            &self.init.tracker,
            &self.init.cancel.child_token(),
        );
        // The moment of the restart, for timelines (`make bench`).
        tracing::info!(
            event = "daemon_started",
            daemon = daemon.name(),
            pid = pid.as_raw(),
            "started the daemon again"
        );
        self.forward_exit(daemon, pid, spawned.exit);
        Ok(pid)
    }

    /// Stops every Ray process. A requested stop runs `ray stop`, then TERM,
    /// grace, KILL. A failure (`fast`) skips `ray stop` and gives TERM only
    /// half of gcs.deadline-margin: the head is broken already, and rayhead
    /// must be gone before the head's reconnect window ends.
    async fn tear_down(&mut self, fast: bool) -> stop::StopReport {
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
        self.state.beating(stop).await
    }
}
