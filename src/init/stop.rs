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
use tokio::sync::{mpsc, watch};
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
        match wait_out_grace(plan, kill_at, &mut idle, signals).await {
            None => return done(&mut report),
            Some(escalated) => escalate = escalated,
        }
    }
    report.escalated = escalate;
    report.killed = kill_until_gone(&mut idle).await;
    done(&mut report)
}

/// The grace period after SIGTERM, which the tree may use to exit by
/// itself. Returns `None` once the tree is gone, else whether a second stop
/// signal cut it short (`Some(false)`: it ran out).
async fn wait_out_grace(
    plan: &StopPlan,
    kill_at: Instant,
    idle: &mut watch::Receiver<bool>,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
) -> Option<bool> {
    loop {
        tokio::select! {
            changed = idle.changed() => {
                if changed.is_err() || *idle.borrow_and_update() {
                    return None;
                }
            }
            _ = sleep_until(kill_at) => {
                tracing::warn!("grace period over: SIGKILL to what remains");
                return Some(false);
            }
            Some(sig) = signals.recv() => {
                if is_stop_signal(sig) {
                    tracing::warn!(signal = sig.as_str(), "second stop signal: SIGKILL now");
                    return Some(true);
                }
                forward(plan, sig);
            }
        }
    }
}

/// SIGKILL, again and again until the reaper has nothing left: a dying
/// parent may fork at the last moment. Returns the most processes one
/// round found.
async fn kill_until_gone(idle: &mut watch::Receiver<bool>) -> usize {
    let mut killed = 0;
    loop {
        let n = kill_all();
        killed = killed.max(n);
        tokio::select! {
            changed = idle.changed() => {
                if changed.is_err() || *idle.borrow_and_update() {
                    return killed;
                }
            }
            _ = sleep(KILL_RESCAN) => {}
        }
        if *idle.borrow_and_update() {
            return killed;
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

#[cfg(test)]
mod tests {
    //! Real short-lived processes, in a process of the test's own (see
    //! [`isolated`](crate::init::test_support::isolated)): a stop signals
    //! every descendant.

    use std::os::unix::process::CommandExt;
    use std::path::Path;

    use super::*;
    use crate::init::reaper::ExitStatus;
    use crate::init::test_support::{isolated, reaper, sh, status_of};

    fn plan(grace: Duration, group: Option<(Pid, Signal)>) -> StopPlan {
        StopPlan {
            stop_command: None,
            stop_command_timeout: Duration::from_secs(5),
            grace,
            group,
            forward: Vec::new(),
        }
    }

    /// A child that ignores SIGTERM, spawned and seen to have set its trap.
    async fn stubborn(r: &Reaper, dir: &Path) -> crate::init::reaper::Spawned {
        let child = r
            .spawn(
                sh("trap '' TERM; touch \"$D/ready\"; while :; do sleep 0.05; done").env("D", dir),
                "stubborn",
            )
            .unwrap();
        ready(&dir.join("ready")).await;
        child
    }

    /// Waits for `file` to exist (a child's "ready" mark).
    async fn ready(file: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not appear",
                file.display()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// One child dies of SIGTERM; another ignores it and is SIGKILLed once
    /// the grace is over, not before; the stop returns when both are reaped.
    #[test]
    fn sigterm_then_sigkill_after_the_grace() {
        isolated(
            module_path!(),
            "sigterm_then_sigkill_after_the_grace",
            || async {
                let dir = tempfile::tempdir().unwrap();
                let (r, tracker, cancel) = reaper();
                let polite = r.spawn(&mut sh("exec sleep 1000"), "polite").unwrap();
                let stubborn = stubborn(&r, dir.path()).await;
                let grace = Duration::from_secs(1);
                let (_tx, mut signals) = mpsc::unbounded_channel();
                let report =
                    stop_tree(&r, &plan(grace, None), &mut signals, &tracker, &cancel).await;
                assert_eq!(status_of(polite.exit).await, ExitStatus::Signaled(15));
                assert_eq!(status_of(stubborn.exit).await, ExitStatus::Signaled(9));
                assert!(report.terminated >= 2, "{report:?}");
                assert!(report.killed >= 1, "{report:?}");
                assert!(!report.escalated, "{report:?}");
                assert!(
                    report.elapsed >= grace,
                    "SIGKILL before the grace: {report:?}"
                );
                assert!(
                    report.elapsed < grace + Duration::from_secs(5),
                    "{report:?}"
                );
                assert!(proctree::live_descendants_of_self().is_empty());
                assert!(*r.idle().borrow());
                cancel.cancel();
            },
        );
    }

    /// A grandchild that ignores SIGTERM, orphaned when its parent dies of
    /// it: it is still stopped (SIGKILL at the grace), and reaped here.
    #[test]
    fn a_sigterm_ignoring_grandchild_is_killed_and_reaped() {
        isolated(
            module_path!(),
            "a_sigterm_ignoring_grandchild_is_killed_and_reaped",
            || async {
                let dir = tempfile::tempdir().unwrap();
                let (r, tracker, cancel) = reaper();
                let since = r.mark();
                let mut cmd = sh(
                    "sh -c 'trap \"\" TERM; echo $$ > \"$D/gc\"; exec sleep 1000' & \
                     while [ ! -s \"$D/gc\" ]; do sleep 0.01; done; \
                     touch \"$D/ready\"; wait",
                );
                cmd.env("D", dir.path()).process_group(0);
                let child = r.spawn(&mut cmd, "parent").unwrap();
                ready(&dir.path().join("ready")).await;
                let gc: i32 = std::fs::read_to_string(dir.path().join("gc"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let gc = Pid::from_raw(gc);
                let grace = Duration::from_secs(1);
                let (_tx, mut signals) = mpsc::unbounded_channel();
                let p = plan(grace, Some((child.pid, Signal::SIGTERM)));
                let report = stop_tree(&r, &p, &mut signals, &tracker, &cancel).await;
                assert_eq!(status_of(child.exit).await, ExitStatus::Signaled(15));
                // Orphaned to this subreaper, killed, and reaped by it.
                assert_eq!(
                    status_of(r.claim(gc, "grandchild", since)).await,
                    ExitStatus::Signaled(9)
                );
                assert_eq!(report.terminated, 2, "{report:?}");
                assert_eq!(report.killed, 1, "{report:?}");
                assert!(report.elapsed >= grace, "{report:?}");
                assert!(proctree::stat(gc).is_none_or(|p| p.ppid != nix::unistd::getpid()));
                assert!(proctree::live_descendants_of_self().is_empty());
                cancel.cancel();
            },
        );
    }

    /// The child's own exit code passes through the stop: one that traps
    /// SIGTERM and exits 42 ends with 42, within the grace, and nothing is
    /// SIGKILLed.
    #[test]
    fn the_childs_exit_code_passes_through_the_stop() {
        isolated(
            module_path!(),
            "the_childs_exit_code_passes_through_the_stop",
            || async {
                let dir = tempfile::tempdir().unwrap();
                let (r, tracker, cancel) = reaper();
                let mut cmd =
                    sh("trap 'exit 42' TERM; touch \"$D/ready\"; while :; do sleep 0.05; done");
                cmd.env("D", dir.path()).process_group(0);
                let child = r.spawn(&mut cmd, "child").unwrap();
                ready(&dir.path().join("ready")).await;
                let grace = Duration::from_secs(10);
                let (_tx, mut signals) = mpsc::unbounded_channel();
                let p = plan(grace, Some((child.pid, Signal::SIGTERM)));
                let report = stop_tree(&r, &p, &mut signals, &tracker, &cancel).await;
                let status = status_of(child.exit).await;
                assert_eq!(status, ExitStatus::Exited(42));
                assert_eq!(status.code(), 42);
                assert_eq!(report.killed, 0, "{report:?}");
                assert!(report.elapsed < grace, "waited for the grace: {report:?}");
                cancel.cancel();
            },
        );
    }

    /// A second SIGTERM during the grace: SIGKILL at once.
    #[test]
    fn a_second_stop_signal_kills_at_once() {
        isolated(
            module_path!(),
            "a_second_stop_signal_kills_at_once",
            || async {
                let dir = tempfile::tempdir().unwrap();
                let (r, tracker, cancel) = reaper();
                let child = stubborn(&r, dir.path()).await;
                let grace = Duration::from_secs(30);
                let (tx, mut signals) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    sleep(Duration::from_millis(300)).await;
                    let _ = tx.send(Signal::SIGTERM);
                    // Kept open: a closed channel is no signal.
                    sleep(Duration::from_secs(60)).await;
                });
                let report =
                    stop_tree(&r, &plan(grace, None), &mut signals, &tracker, &cancel).await;
                assert_eq!(status_of(child.exit).await, ExitStatus::Signaled(9));
                assert!(report.escalated, "{report:?}");
                assert!(report.killed >= 1, "{report:?}");
                assert!(report.elapsed < Duration::from_secs(10), "{report:?}");
                cancel.cancel();
            },
        );
    }

    /// Nothing to stop: the stop returns at once, signalling nobody.
    #[test]
    fn an_empty_tree_stops_at_once() {
        isolated(module_path!(), "an_empty_tree_stops_at_once", || async {
            let (r, tracker, cancel) = reaper();
            // The reaper's first pass finds no child and says it is idle.
            let mut idle = r.idle();
            tokio::time::timeout(Duration::from_secs(10), idle.wait_for(|v| *v))
                .await
                .unwrap()
                .unwrap();
            let (_tx, mut signals) = mpsc::unbounded_channel();
            let p = plan(Duration::from_secs(30), None);
            let report = stop_tree(&r, &p, &mut signals, &tracker, &cancel).await;
            assert_eq!(report.terminated, 0);
            assert_eq!(report.killed, 0);
            assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
            cancel.cancel();
        });
    }
}
