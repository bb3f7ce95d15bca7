//! The supervisor's decisions: one state machine that hears every event.
//!
//! It does no I/O. The driver (`super`) merges every source into one
//! [`Event`] stream and carries out the [`Action`]s that [`Machine::handle`]
//! returns; the machine only decides, and writes the state snapshot. So
//! whatever stage it is in (at the Redis gate, backing off, waiting for a
//! restarted GCS to answer), a raylet's death or a SIGTERM is heard at once,
//! and the unit tests drive every path with a made-up clock in
//! microseconds.
//!
//! Stages: StartGate → Launching → Adopting → Steady ⇄ Recovering, and
//! Done once an [`Action::Stop`] has been returned.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use nix::unistd::Pid;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{Config, DaemonExitPolicy, RayMode};
use crate::exit::Exit;
use crate::init::reaper::ExitStatus;
use crate::init::stop;
use crate::ray::daemons::{Daemon, Policy, TABLE};
use crate::ray::health::{self, Health, Mode, Observation};
use crate::state::{ChildStatus, GcsHealth, Phase, State};
use crate::storage::{GateError, StoreInfo};
use crate::time::{after, wall_after};

mod daemons;
mod events;
mod memory;
mod recovery;

pub use events::{Action, Event, StartError, StopReason, Timer};
pub use memory::MemorySample;

/// How long after `ray start` exits its daemons may still be between fork
/// and exec, unnamed in `/proc`.
const ADOPT_WITHIN: Duration = Duration::from_secs(2);
const RESCAN: Duration = Duration::from_millis(50);
/// Failed GCS restarts back off from here, always within the deadline.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

enum Stage {
    /// Waiting for the store before `ray start`.
    StartGate,
    /// `ray start` runs (direct mode).
    Launching,
    /// `ray start` is done; finding its daemons.
    Adopting {
        give_up: Instant,
        next_scan: Instant,
    },
    /// The head runs, between start-up and a loss: the GCS's health
    /// decides when it is lost, and the other daemons are health-checked.
    Steady(Steady),
    /// The GCS was lost and is being restarted in place.
    Recovering(Recovery),
    /// An [`Action::Stop`] was returned.
    Done,
}

/// What the steady stage keeps for its timers: the unhealthy timer's
/// start, and a restarted GCS's probation.
struct Steady {
    /// When this stage began: the unhealthy timer's start until a SERVING.
    since: Instant,
    /// When a restarted GCS first answered SERVING, until gcs.stable-after
    /// has passed: a loss before then is a failed restart.
    probation: Option<Instant>,
}

/// A GCS recovery under way, and what its failure message will need.
struct Recovery {
    t0: Instant,
    deadline: Instant,
    reason: String,
    last_error: String,
    /// Why the storage gate did not pass, when that ended the recovery.
    storage: Option<crate::storage::DiskProblem>,
    attempts: u32,
    step: RecoveryStep,
}

/// Where a GCS recovery is; a daemon's restart has its [`DaemonStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecoveryStep {
    /// The old gcs_server was SIGKILLed; waiting until it is reaped. Two
    /// GCS processes must never share a Redis namespace, and a second one
    /// on RocksDB exits at once (the database's `LOCK`).
    Reaping(Pid),
    /// Waiting for the store: the GCS aborts without it.
    Gate,
    /// After a failed restart.
    Backoff(Instant),
    /// gcs_server is being spawned.
    Spawning,
    /// The new gcs_server runs; waiting for SERVING.
    Starting(Pid),
}

pub struct Machine {
    cfg: Config,
    /// The GCS's storage, when there is fault tolerance.
    store: Option<StoreInfo>,
    state: State,
    /// What `ray start` printed last (summarised), once it exited.
    start_output: String,
    stage: Stage,
    /// The phase the snapshot shows, as the machine set it last: kept
    /// here, never read back from the snapshot.
    phase: Phase,
    /// Bumped at every loss: observations of a lost GCS must not count for
    /// its replacement.
    generation: u64,
    /// When the current generation last answered SERVING.
    last_serving: Option<Instant>,
    /// The gcs_server that rayhead reaps (direct mode), while it lives.
    gcs: Option<Pid>,
    /// Failed restarts in a row: the crash-loop guard's count.
    failures: u32,
    /// Every adopted daemon but the GCS: its health, and its restarts.
    daemons: BTreeMap<Daemon, TrackedDaemon>,
    memory: memory::MemoryRestarts,
}

/// A daemon other than the GCS, as the machine follows it.
struct TrackedDaemon {
    /// The live process, while there is one.
    pid: Option<Pid>,
    /// Since when its checks fail.
    unhealthy_since: Option<Instant>,
    /// Failed in-place restarts in a row.
    failures: u32,
    step: DaemonStep,
}

/// Where a daemon other than the GCS is in its life and its in-place
/// restarts; the GCS's recovery has its [`RecoveryStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonStep {
    /// Running; `restarted` while a restart is on probation
    /// (gcs.stable-after).
    Running { restarted: Option<Instant> },
    /// SIGKILLed (hung), or exited: waiting for its reap to start it again.
    Reaping(Pid),
    /// After a failed restart, until then.
    Backoff(Instant),
    /// Being started again from its captured command.
    Spawning,
    /// Exited and not restarted (ray.on-daemon-exit "ignore").
    Gone,
}

impl Machine {
    pub fn new(cfg: &Config, store: Option<StoreInfo>, state: State) -> Machine {
        let mark = cfg.memory.gcs_high_water.render();
        state.update(|s| s.memory = Some(crate::state::MemoryState::new(mark)));
        Machine {
            cfg: cfg.clone(),
            store,
            state,
            start_output: String::new(),
            stage: Stage::StartGate,
            phase: Phase::Starting,
            generation: 0,
            last_serving: None,
            gcs: None,
            failures: 0,
            daemons: BTreeMap::new(),
            memory: memory::MemoryRestarts::default(),
        }
    }

    /// The first actions: the store's start gate, or `ray start` at once.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.enter(Phase::Starting, "starting the Ray head");
        if let Some(store) = &self.store {
            self.stage = Stage::StartGate;
            tracing::info!(store = %store.description, "waiting for the GCS storage before ray start");
            vec![Action::WaitForStore {
                until: after(now, store.startup_timeout),
                purpose: "start gate",
            }]
        } else {
            self.launch(now)
        }
    }

    /// When the machine next wants [`Event::TimerFired`], and which.
    pub fn timer(&self) -> Option<(Instant, Timer)> {
        let daemons = self.daemons.iter().filter_map(|(d, w)| match w.step {
            DaemonStep::Backoff(until) => Some((until, Timer::DaemonBackoff(*d))),
            _ => None,
        });
        self.stage_timer()
            .into_iter()
            .chain(daemons)
            .min_by_key(|(at, _)| *at)
    }

    fn stage_timer(&self) -> Option<(Instant, Timer)> {
        match &self.stage {
            Stage::Adopting { next_scan, .. } => Some((*next_scan, Timer::Rescan)),
            Stage::Steady(w) => {
                let unhealthy = after(
                    self.last_serving.unwrap_or(w.since),
                    self.cfg.gcs.unhealthy_after,
                );
                let stable = w.probation.map(|p| after(p, self.cfg.gcs.stable_after));
                match stable {
                    Some(s) if s < unhealthy => Some((s, Timer::Stable)),
                    _ => Some((unhealthy, Timer::Unhealthy)),
                }
            }
            Stage::Recovering(r) => match r.step {
                RecoveryStep::Backoff(until) if until < r.deadline => Some((until, Timer::Backoff)),
                _ => Some((r.deadline, Timer::Deadline)),
            },
            Stage::StartGate | Stage::Launching | Stage::Done => None,
        }
    }

    /// Whether rayhead knows a gcs_server alive (tests check that none is
    /// ever started beside it).
    #[cfg(test)]
    pub fn gcs_alive(&self) -> bool {
        self.gcs.is_some()
    }

    /// Whether an [`Action::Stop`] was returned.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Decides what `event`, at `now`, means.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if self.is_done() {
            return Vec::new();
        }
        let actions = match event {
            Event::Tick(log_lines_dropped) => {
                self.state.beat(log_lines_dropped);
                Vec::new()
            }
            Event::Signal(sig) if stop::is_stop_signal(sig) => {
                tracing::info!(signal = sig.as_str(), "stop requested");
                vec![Action::Stop(StopReason::Signal(sig))]
            }
            Event::Signal(sig) => {
                tracing::info!(
                    signal = sig.as_str(),
                    "signal ignored while supervising Ray"
                );
                Vec::new()
            }
            Event::LaunchFailed(exit) => vec![Action::Stop(StopReason::Exit(exit))],
            Event::DaemonExited {
                daemon,
                pid,
                status,
            } => self.on_daemon_exited(now, daemon, pid, status),
            Event::Health(obs) => self.on_gcs_health(now, obs),
            Event::DaemonHealth(c) => {
                self.on_daemon_health(now, c.daemon, c.pid, c.healthy, c.detail)
            }
            Event::Started(daemon, started) if daemon != Daemon::GcsServer => {
                self.on_daemon_started(now, daemon, started)
            }
            Event::TimerFired(Timer::DaemonBackoff(daemon)) => self.start_daemon(now, daemon),
            Event::Memory(sample) => self.on_memory_sample(now, sample),
            other => self.on_stage_event(now, other),
        };
        if actions.iter().any(|a| matches!(a, Action::Stop(_))) {
            self.stage = Stage::Done;
        }
        actions
    }

    /// Events whose meaning depends on the stage alone: each stage has its
    /// handler, and what a stage does not expect is ignored.
    fn on_stage_event(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match self.stage {
            Stage::StartGate => self.at_start_gate(now, event),
            Stage::Launching => self.while_launching(now, event),
            Stage::Adopting { .. } => self.while_adopting(now, event),
            Stage::Steady(_) => self.while_steady(now, event),
            Stage::Recovering(_) => self.while_recovering(now, event),
            Stage::Done => log_ignored(event),
        }
    }

    fn at_start_gate(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::StoreReady => {
                if let Some(store) = &self.store {
                    tracing::info!(store = %store.description, "the GCS storage is ready");
                }
                self.launch(now)
            }
            Event::StoreFailed(e) => {
                let exit = match &self.store {
                    Some(store) => store.start_gate_exit(&e),
                    None => Exit::Internal(format!("a store gate failed without a store: {e}")),
                };
                vec![Action::Stop(StopReason::Exit(exit))]
            }
            other => log_ignored(other),
        }
    }

    fn while_launching(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let Event::RayStartExited(status, output) = event else {
            return log_ignored(event);
        };
        self.start_output = output;
        if !status.success() {
            return vec![Action::Stop(StopReason::Exit(Exit::RayStartFailed(
                format!("ray start {status}: {}", self.start_output),
            )))];
        }
        self.stage = Stage::Adopting {
            give_up: after(now, ADOPT_WITHIN),
            next_scan: after(now, RESCAN),
        };
        vec![Action::Scan]
    }

    fn while_adopting(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let found = match event {
            Event::TimerFired(Timer::Rescan) => return vec![Action::Scan],
            Event::Found(found) => found,
            other => return log_ignored(other),
        };
        let missing = TABLE
            .iter()
            .filter(|s| s.needed_at_start())
            .find(|s| !found.iter().any(|(d, _)| *d == s.daemon));
        let Stage::Adopting { give_up, next_scan } = &mut self.stage else {
            return Vec::new();
        };
        match missing {
            None => self.adopt(now, found),
            Some(spec) if now >= *give_up => {
                vec![Action::Stop(StopReason::Exit(Exit::RayStartFailed(
                    format!(
                        "ray start exited 0 but no {} is running: {}",
                        spec.name, self.start_output
                    ),
                )))]
            }
            Some(_) => {
                *next_scan = after(now, RESCAN);
                Vec::new()
            }
        }
    }

    fn while_steady(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::RayStartExited(status, _) => {
                // Block mode: `ray start --block` is the head.
                vec![Action::Stop(StopReason::Exit(Exit::Status {
                    code: status.code(),
                    reason: format!("ray start --block {status}"),
                }))]
            }
            Event::TimerFired(Timer::Unhealthy) => {
                let reason = format!(
                    "no SERVING answer from the GCS for {}",
                    humantime::format_duration(self.cfg.gcs.unhealthy_after)
                );
                self.on_gcs_lost(now, reason)
            }
            Event::TimerFired(Timer::Stable) => {
                if let Stage::Steady(w) = &mut self.stage {
                    w.probation = None;
                }
                if self.failures > 0 {
                    tracing::info!(
                        failures = self.failures,
                        "the restarted GCS is stable: the crash-loop count is reset"
                    );
                }
                self.failures = 0;
                self.state.update_gcs(|g| g.consecutive_failures = 0);
                Vec::new()
            }
            other => log_ignored(other),
        }
    }

    /// Runs `ray start`. In block mode it is the head: the steady stage
    /// begins now.
    fn launch(&mut self, now: Instant) -> Vec<Action> {
        self.stage = match self.cfg.ray.mode {
            RayMode::Direct => Stage::Launching,
            RayMode::Block => Stage::Steady(Steady {
                since: now,
                probation: None,
            }),
        };
        vec![
            Action::LaunchRay,
            Action::PointGcsHealth(Mode {
                generation: self.generation,
                interval: health::FAST_INTERVAL,
            }),
        ]
    }

    fn adopt(&mut self, now: Instant, found: Vec<(Daemon, Pid)>) -> Vec<Action> {
        for (daemon, pid) in &found {
            tracing::info!(
                daemon = daemon.name(),
                pid = pid.as_raw(),
                "found Ray daemon"
            );
            self.set_child(*daemon, Some(*pid), ChildStatus::Running, None);
            if *daemon == Daemon::GcsServer {
                self.gcs = Some(*pid);
            } else {
                self.daemons.insert(
                    *daemon,
                    TrackedDaemon {
                        pid: Some(*pid),
                        unhealthy_since: None,
                        failures: 0,
                        step: DaemonStep::Running { restarted: None },
                    },
                );
            }
        }
        self.stage = Stage::Steady(Steady {
            since: now,
            probation: None,
        });
        let mut actions = vec![Action::Adopt(found)];
        if self.last_serving.is_some() {
            actions.extend(self.start_running());
        }
        actions
    }

    /// The first SERVING in the steady stage: the head runs, and the monitor
    /// slows to gcs.health-interval.
    fn start_running(&mut self) -> Vec<Action> {
        if self.phase != Phase::Starting {
            return Vec::new();
        }
        self.enter(Phase::Running, "the GCS answers SERVING");
        vec![self.point_gcs_health(self.cfg.gcs.health_interval)]
    }

    /// Moves to `phase`, in the machine and in the snapshot.
    fn enter(&mut self, phase: Phase, reason: &str) {
        self.phase = phase;
        self.state.set_phase(phase, reason);
    }

    /// The GCS health monitor, at this GCS's generation and `interval`
    /// (fast while recovering, the configured one when steady).
    fn point_gcs_health(&self, interval: Duration) -> Action {
        Action::PointGcsHealth(Mode {
            generation: self.generation,
            interval,
        })
    }

    /// Records a daemon in the snapshot; `/readyz` needs the GCS and those
    /// named in ray.ready-requires.
    fn set_child(
        &self,
        daemon: Daemon,
        pid: Option<Pid>,
        status: ChildStatus,
        last_exit: Option<String>,
    ) {
        let name = daemon.name();
        let required =
            daemon == Daemon::GcsServer || self.cfg.ray.ready_requires.iter().any(|r| r == name);
        self.state
            .set_child(name, pid.map(Pid::as_raw), status, last_exit, required);
    }
}

/// An event the current stage does not act on.
fn log_ignored(event: Event) -> Vec<Action> {
    tracing::debug!(event = ?event, "event not relevant now");
    Vec::new()
}
