//! The init: PID 1 (or a subreaper) that starts one command, reaps every
//! process of its tree, forwards signals, and stops the whole tree within the
//! grace period before it exits with the command's own code.

pub mod output;
pub mod reaper;
pub mod signals;
pub mod spawn;
pub mod stop;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::InitConfig;
use crate::exit::Exit;
use crate::state::{ChildStatus, Phase, State};
use reaper::{ExitStatus, Reaper, Spawned};
use stop::{StopPlan, StopReport};

/// The process-wide parts of the init, set up once: the reaper and the
/// signal handlers. Their tasks stop when `cancel` fires.
pub struct Init {
    pub reaper: Arc<Reaper>,
    pub signals: mpsc::UnboundedReceiver<Signal>,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Init {
    /// Installs the SIGCHLD and stop/forward signal handlers and starts the
    /// reaper. Call it inside the runtime, before anything is spawned.
    pub fn start(cfg: &InitConfig) -> std::io::Result<Init> {
        match spawn::become_subreaper() {
            Ok(true) => tracing::debug!("running as a child subreaper"),
            Ok(false) => tracing::debug!("running as PID 1"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot become a child subreaper; orphans will escape")
            }
        }
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let reaper = Reaper::start(&tracker, cancel.child_token())?;
        let mut handled = signals::ALWAYS_HANDLED.to_vec();
        for s in &cfg.forward_signals {
            if !handled.contains(s) {
                handled.push(*s);
            }
        }
        let signals = signals::listen(&handled, &tracker, cancel.child_token())?;
        Ok(Init {
            reaper,
            signals,
            tracker,
            cancel,
        })
    }

    /// Stops the background tasks and waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How often the loop proves it is alive, for `/livez`.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the init stops the tree around a plain command: the command's end,
/// or a stop signal for rayhead. (A Ray head's supervision ends with an
/// [`crate::exit::StopReason`] instead: a signal, or rayhead's own exit.)
enum CommandEnd {
    /// The command exited: its status is rayhead's exit code.
    CommandExited(ExitStatus),
    /// A SIGTERM or SIGINT: the command is stopped, and its status, once
    /// reaped, is rayhead's exit code.
    Signal(Signal),
}

/// The command's name in the state snapshot.
const COMMAND: &str = "command";

/// Runs `argv` under the init until the whole tree is gone, keeping `state`
/// (which the probe server reads) up to date: ready while the command runs
/// and no stop is under way.
pub async fn run(cfg: &InitConfig, argv: &[String], state: &State) -> Exit {
    let mut init = match Init::start(cfg) {
        Ok(i) => i,
        Err(e) => return Exit::Internal(format!("cannot set up the init: {e}")),
    };
    let exit = supervise(cfg, argv, &mut init, state).await;
    state.set_phase(Phase::Exiting, &exit.reason());
    init.shutdown().await;
    exit
}

async fn supervise(cfg: &InitConfig, argv: &[String], init: &mut Init, state: &State) -> Exit {
    let mut child = match start_command(argv, init, state) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let pgid = child.pid;
    let reason = match run_until_stop(cfg, init, &mut child, state).await {
        Ok(e) => e,
        Err(exit) => return exit,
    };
    announce_stop(&reason, state);
    let plan = stop_plan(cfg, pgid, &reason);
    let stop = stop::stop_tree(
        &init.reaper,
        &plan,
        &mut init.signals,
        &init.tracker,
        &init.cancel,
    );
    let report = state.beating(stop).await;
    let status = match reason {
        CommandEnd::CommandExited(s) => s,
        // The tree is gone, so the command has been reaped.
        CommandEnd::Signal(_) => match child.exit.await {
            Ok(s) => s,
            Err(_) => return Exit::Internal("the command's status was lost".into()),
        },
    };
    state.set_child(
        COMMAND,
        None,
        ChildStatus::Exited,
        Some(status.to_string()),
        true,
    );
    Exit::Status {
        code: status.code(),
        reason: exit_reason(&reason, status, &report),
    }
}

/// Spawns the command under the reaper and shows it running: the probe
/// server reports ready from this moment on.
fn start_command(argv: &[String], init: &Init, state: &State) -> Result<Spawned, Exit> {
    let line = crate::redact::command_line(argv);
    let child = match init.reaper.spawn(&mut spawn::command(argv), "command") {
        Ok(c) => c,
        Err(e) => {
            return Err(spawn::spawn_error(
                &e,
                format!("cannot start {:?}: {e}", argv[0]),
            ));
        }
    };
    let pgid = child.pid;
    tracing::info!(pid = pgid.as_raw(), command = %line, "started the command");
    state.set_child(
        COMMAND,
        Some(pgid.as_raw()),
        ChildStatus::Running,
        None,
        true,
    );
    state.set_phase(Phase::Running, "the command runs");
    Ok(child)
}

/// The init's steady state, while the command runs: it forwards signals
/// and beats the heartbeat until the command exits or a stop signal comes.
async fn run_until_stop(
    cfg: &InitConfig,
    init: &mut Init,
    child: &mut Spawned,
    state: &State,
) -> Result<CommandEnd, Exit> {
    let pgid = child.pid;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            status = &mut child.exit => match status {
                Ok(s) => return Ok(CommandEnd::CommandExited(s)),
                Err(_) => return Err(Exit::Internal("the reaper stopped before the command exited".into())),
            },
            _ = heartbeat.tick() => state.beat(crate::logging::dropped_lines()),
            Some(sig) = init.signals.recv() => {
                if stop::is_stop_signal(sig) {
                    return Ok(CommandEnd::Signal(sig));
                }
                if cfg.forward_signals.contains(&sig) {
                    stop::forward_to_group(pgid, sig);
                } else {
                    tracing::info!(signal = sig.as_str(), "signal is not forwarded; ignored");
                }
            }
        }
    }
}

/// Shows why the stop begins, in the log and the snapshot, before the
/// stop itself (which may take the whole grace period).
fn announce_stop(reason: &CommandEnd, state: &State) {
    match reason {
        CommandEnd::CommandExited(s) => {
            tracing::info!(status = %s, "the command ended");
            state.set_child(
                COMMAND,
                None,
                ChildStatus::Exited,
                Some(s.to_string()),
                true,
            );
            state.set_phase(Phase::Stopping, &format!("the command {s}"));
        }
        CommandEnd::Signal(sig) => {
            tracing::info!(signal = sig.as_str(), "stopping the process tree");
            state.set_phase(Phase::Stopping, &format!("received {}", sig.as_str()));
        }
    }
}

/// The stop for the command's tree: its group gets the stop signal rayhead
/// received when that one is forwarded, so the command sees what the
/// kubelet sent.
fn stop_plan(cfg: &InitConfig, pgid: nix::unistd::Pid, reason: &CommandEnd) -> StopPlan {
    let group_signal = match reason {
        CommandEnd::Signal(sig) if cfg.forward_signals.contains(sig) => *sig,
        _ => Signal::SIGTERM,
    };
    StopPlan {
        stop_command: cfg.stop_command.clone(),
        stop_command_timeout: cfg.stop_command_timeout,
        grace: cfg.stop_grace,
        group: Some((pgid, group_signal)),
        forward: cfg.forward_signals.clone(),
    }
}

fn exit_reason(stop: &CommandEnd, status: ExitStatus, report: &StopReport) -> String {
    let mut out = match stop {
        CommandEnd::CommandExited(_) => format!("the command {status}"),
        CommandEnd::Signal(sig) => format!(
            "rayhead received {}; the command then {status}",
            sig.as_str()
        ),
    };
    if report.terminated > 0 || report.killed > 0 {
        out.push_str(&format!(
            "; stopped the process tree in {:.1}s",
            report.elapsed.as_secs_f64()
        ));
        if report.killed > 0 {
            let why = if report.escalated {
                "after a second stop signal"
            } else {
                "after the grace period"
            };
            out.push_str(&format!(", {} process(es) SIGKILLed {why}", report.killed));
        }
    }
    out
}
