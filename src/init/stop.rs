//! Stopping the whole process tree: the stop command, then SIGTERM, then
//! SIGKILL after the grace period.
//!
//! The tree is every descendant in `/proc`, not only the child's process
//! group: a process that called `setsid` has left the group but not the
//! container. The stop ends when the reaper has nothing left to reap, so
//! rayhead never exits while a descendant lives.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reaper::Reaper;
use super::{output, spawn};
use crate::sys::pin::{self, Pinned};
use crate::sys::proctree;

/// What a stop does.
#[derive(Debug, Clone)]
pub struct StopPlan {
    /// Run first, bounded by `stop_command_timeout` (and the grace).
    pub stop_command: Option<Vec<String>>,
    pub stop_command_timeout: Duration,
    /// From the start of the stop until SIGKILL.
    pub grace: Duration,
    /// The child's process group and the signal it gets (the one rayhead
    /// received, when it is forwarded; SIGTERM otherwise). Every other
    /// descendant gets SIGTERM.
    pub group: Option<(Pid, Signal)>,
    /// Signals forwarded to the group while the stop runs.
    pub forward: Vec<Signal>,
}

/// What a stop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Processes sent SIGTERM (or the group's signal).
    pub terminated: usize,
    /// Processes that were still alive for SIGKILL.
    pub killed: usize,
    /// A second SIGTERM or SIGINT cut the grace short.
    pub escalated: bool,
    pub elapsed: Duration,
}

/// How often the kill phase looks again for processes that a dying parent
/// forked at the last moment.
const KILL_RESCAN: Duration = Duration::from_millis(100);

/// Stops every descendant of this process and returns when none is left.
/// Signals that arrive meanwhile are handled: SIGTERM or SIGINT escalates to
/// SIGKILL at once, forwarded ones go to the group.
pub async fn stop_tree(
    reaper: &Reaper,
    plan: &StopPlan,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> StopReport {
    let start = Instant::now();
    let kill_at = crate::time::after(start, plan.grace);
    let mut report = StopReport::default();
    let mut idle = reaper.idle();
    let done = |r: &mut StopReport| {
        r.elapsed = start.elapsed();
        r.clone()
    };
    if *idle.borrow_and_update() {
        return done(&mut report);
    }

    let mut escalate = false;
    if let Some(argv) = &plan.stop_command {
        escalate = run_stop_command(reaper, argv, plan, kill_at, signals, tracker, cancel).await;
    }

    if !escalate {
        report.terminated = terminate(plan.group);
        tracing::info!(
            processes = report.terminated,
            grace = %humantime::format_duration(plan.grace),
            "sent SIGTERM to the process tree"
        );
        loop {
            tokio::select! {
                changed = idle.changed() => {
                    if changed.is_err() || *idle.borrow_and_update() {
                        return done(&mut report);
                    }
                }
                _ = sleep_until(kill_at) => {
                    tracing::warn!("grace period over: SIGKILL to what remains");
                    break;
                }
                Some(sig) = signals.recv() => {
                    if is_stop_signal(sig) {
                        tracing::warn!(signal = sig.as_str(), "second stop signal: SIGKILL now");
                        escalate = true;
                        break;
                    }
                    forward(plan, sig);
                }
            }
        }
    }
    report.escalated = escalate;

    // Kill phase: repeat until the reaper has nothing left.
    loop {
        let n = kill_all();
        report.killed = report.killed.max(n);
        tokio::select! {
            changed = idle.changed() => {
                if changed.is_err() || *idle.borrow_and_update() {
                    return done(&mut report);
                }
            }
            _ = sleep(KILL_RESCAN) => {}
        }
        if *idle.borrow_and_update() {
            return done(&mut report);
        }
    }
}

/// Runs the stop command; returns `true` when a stop signal asked for
/// SIGKILL meanwhile.
async fn run_stop_command(
    reaper: &Reaper,
    argv: &[String],
    plan: &StopPlan,
    kill_at: Instant,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> bool {
    let line = crate::redact::command_line(argv);
    let mut cmd = spawn::command(argv);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut spawned = match reaper.spawn(&mut cmd, "stop-command") {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(command = %line, error = %e, "stop command could not start");
            return false;
        }
    };
    tracing::info!(command = %line, pid = spawned.pid.as_raw(), "running the stop command");
    // The forwarders end at EOF, or when rayhead shuts down.
    let _ = output::forward_spawned(&mut spawned, &output::Tail::default(), tracker, cancel);
    let until = crate::time::after(Instant::now(), plan.stop_command_timeout).min(kill_at);
    loop {
        tokio::select! {
            status = &mut spawned.exit => {
                match status {
                    Ok(s) => tracing::info!(status = %s, "stop command finished"),
                    Err(_) => tracing::warn!("stop command's status was lost"),
                }
                return false;
            }
            _ = sleep_until(until) => {
                tracing::warn!(command = %line, "stop command timed out: killing it");
                let _ = reaper.signal_group(spawned.pid, Signal::SIGKILL);
                return false;
            }
            Some(sig) = signals.recv() => {
                if is_stop_signal(sig) {
                    tracing::warn!(signal = sig.as_str(), "second stop signal: SIGKILL now");
                    return true;
                }
                forward(plan, sig);
            }
        }
    }
}

pub fn is_stop_signal(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT)
}

fn forward(plan: &StopPlan, sig: Signal) {
    if let Some((pgid, _)) = plan.group {
        if plan.forward.contains(&sig) {
            forward_to_group(pgid, sig);
        }
    }
}

/// Sends `sig` to a process group; a group that is already gone is fine.
/// Only while one of rayhead's own live descendants is in it: a group id
/// is a pid, free again once the group is empty, and a stranger that
/// takes it and leads a group of its own must not get the signal.
pub fn forward_to_group(pgid: Pid, sig: Signal) {
    let ours = proctree::live_descendants_of_self()
        .iter()
        .any(|p| p.pgid == pgid);
    let sent = if ours {
        killpg(pgid, sig)
    } else {
        Err(nix::errno::Errno::ESRCH)
    };
    match sent {
        Ok(()) => tracing::info!(
            signal = sig.as_str(),
            pgid = pgid.as_raw(),
            "forwarded signal to the process group"
        ),
        Err(nix::errno::Errno::ESRCH) => {
            tracing::debug!(
                signal = sig.as_str(),
                pgid = pgid.as_raw(),
                "process group is gone"
            )
        }
        Err(e) => {
            tracing::warn!(signal = sig.as_str(), pgid = pgid.as_raw(), error = %e, "cannot forward signal")
        }
    }
}

/// The group gets its signal; every other live descendant gets SIGTERM, then
/// SIGCONT so that a stopped process can act on it. Returns how many
/// processes were signalled.
fn terminate(group: Option<(Pid, Signal)>) -> usize {
    let procs = proctree::live_descendants_of_self();
    if let Some((pgid, sig)) = group {
        if procs.iter().any(|p| p.pgid == pgid) {
            let _ = killpg(pgid, sig);
            let _ = killpg(pgid, Signal::SIGCONT);
        }
    }
    let rest: Vec<_> = procs
        .iter()
        .filter(|p| group.is_none_or(|(pgid, _)| p.pgid != pgid))
        .filter_map(|p| Pinned::pin(p.identity()))
        .collect();
    for p in &rest {
        let _ = p.signal(Signal::SIGTERM);
        let _ = p.signal(Signal::SIGCONT);
    }
    procs.len()
}

/// SIGKILL to every live descendant; returns how many there were.
fn kill_all() -> usize {
    let procs = proctree::live_descendants_of_self();
    pin::signal_all(procs.iter().map(|p| p.identity()), Signal::SIGKILL);
    procs.len()
}
