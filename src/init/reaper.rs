//! The one reaper: the only code that calls `waitpid` in a process that runs
//! one (`rayhead run`, `rayhead dev`). The one other wait in rayhead's code,
//! in `src/dev/one_off.rs`, is `Child::wait` on the embedded Redis that a
//! one-off command (`redis-check --dev-state`, `redis-cleanup --dev-state`)
//! started, in a process that runs no reaper.
//!
//! As PID 1 (or a subreaper) rayhead inherits every orphan of its tree, so it
//! must reap processes it never started. A second waiter (such as
//! `tokio::process::Child::wait`) would race this one for the same pids and
//! lose statuses, so every spawn goes through [`Reaper::spawn`], which
//! registers the pid's owner under the same lock that guards `waitpid`. A
//! child therefore cannot be reaped before its owner is known.
//!
//! SIGCHLDs coalesce, so each wake-up reaps in a loop until `waitpid` says
//! nothing is left: no exit is lost however many arrive at once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sys::pin::Pinned;
use crate::sys::proctree::Identity;

/// How a child ended, as the reaper's wait saw it: a child's termination,
/// never rayhead's own exit (that is [`crate::exit::Exit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128+N for signal N.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Exited(c) => (c & 0xff) as u8,
            ExitStatus::Signaled(n) => (128 + n).clamp(0, 255) as u8,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signaled(n) => match Signal::try_from(n) {
                Ok(s) => write!(f, "was killed by {}", s.as_str()),
                Err(_) => write!(f, "was killed by signal {n}"),
            },
        }
    }
}

/// One reaped process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: Pid,
    pub status: ExitStatus,
}

/// A process started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Resolves when the reaper reaps it.
    pub exit: oneshot::Receiver<ExitStatus>,
    /// The pipes, when the command asked for `Stdio::piped()`.
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

/// How many recent exits are kept for [`Reaper::claim`] callers that arrive
/// after the fact.
const RECENT: usize = 4096;

struct Inner {
    owners: HashMap<Pid, Owner>,
    /// Recent exits, each with its sequence number.
    recent: VecDeque<(u64, Reaped)>,
    /// How many processes have been reaped so far.
    seq: u64,
}

impl Inner {
    /// Takes `pid` as ours until it is reaped. Called under the lock, while
    /// the pid cannot have been reaped (and reused), so its identity read
    /// now is its own.
    fn own(&mut self, pid: Pid, name: &str, tx: oneshot::Sender<ExitStatus>) {
        let id = Identity::of(pid);
        let owner = Owner {
            name: name.to_string(),
            tx,
            id,
        };
        self.owners.insert(pid, owner);
    }
}

/// A point in the reaper's history, from [`Reaper::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

struct Owner {
    name: String,
    tx: oneshot::Sender<ExitStatus>,
    /// Read under the lock while the pid was unreaped, so it is this
    /// process's; `None` if `/proc` could not be read.
    id: Option<Identity>,
}

pub struct Reaper {
    inner: Mutex<Inner>,
    idle: watch::Sender<bool>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task. The handler is
    /// in place when this returns, before anything is spawned.
    pub fn start(tracker: &TaskTracker, cancel: CancellationToken) -> io::Result<Arc<Reaper>> {
        let mut sigchld = signal(SignalKind::child())?;
        let (idle, _) = watch::channel(false);
        let reaper = Arc::new(Reaper {
            inner: Mutex::new(Inner {
                owners: HashMap::new(),
                recent: VecDeque::new(),
                seq: 0,
            }),
            idle,
        });
        let r = reaper.clone();
        tracker.spawn(async move {
            loop {
                r.reap_all();
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = cancel.cancelled() => break,
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters more than losing the init, so take it anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps until nothing is left to reap.
    fn reap_all(&self) {
        let mut inner = self.lock();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.dispatch(&mut inner, pid, ExitStatus::Exited(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.dispatch(&mut inner, pid, ExitStatus::Signaled(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => {
                    self.idle.send_if_modified(|v| std::mem::replace(v, false));
                    break;
                }
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => {
                    self.idle.send_if_modified(|v| !std::mem::replace(v, true));
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
    }

    fn dispatch(&self, inner: &mut Inner, pid: Pid, status: ExitStatus) {
        let reaped = Reaped { pid, status };
        match inner.owners.remove(&pid) {
            Some(owner) => {
                tracing::debug!(pid = pid.as_raw(), owner = %owner.name, %status, "reaped");
                let _ = owner.tx.send(status);
            }
            None => tracing::debug!(pid = pid.as_raw(), owner = "orphan", %status, "reaped"),
        }
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.recent.push_back((seq, reaped));
    }

    /// Spawns `cmd` and registers `name` as the owner of its pid, under the
    /// reaper's lock. The `std::process::Child` is dropped: dropping it
    /// neither waits nor kills, and the reaper owns the wait.
    pub fn spawn(&self, cmd: &mut Command, name: &str) -> io::Result<Spawned> {
        let mut inner = self.lock();
        let mut child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        drop(child);
        let (tx, rx) = oneshot::channel();
        inner.own(pid, name, tx);
        self.idle.send_if_modified(|v| std::mem::replace(v, false));
        Ok(Spawned {
            pid,
            exit: rx,
            stdout,
            stderr,
        })
    }

    /// Now, in the reaper's history. Take a mark before looking a process up
    /// in `/proc`, and pass it to [`Reaper::claim`].
    pub fn mark(&self) -> Mark {
        Mark(self.lock().seq)
    }

    /// Claims a process that rayhead did not spawn but will reap (a daemon
    /// re-parented to it), seen alive after `since`. If it has been reaped
    /// since then, the receiver resolves at once with its status; an older
    /// exit of the same pid number is not mistaken for it.
    pub fn claim(&self, pid: Pid, name: &str, since: Mark) -> oneshot::Receiver<ExitStatus> {
        let mut inner = self.lock();
        let (tx, rx) = oneshot::channel();
        let found = inner
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > since.0)
            .find(|(_, r)| r.pid == pid)
            .map(|(_, r)| r.status);
        if let Some(status) = found {
            let _ = tx.send(status);
        } else {
            inner.own(pid, name, tx);
        }
        rx
    }

    /// Pins a process rayhead spawned or claimed, for a signal: `None` once
    /// it has been reaped (its pid may be anyone's now) or was never ours.
    /// The lock keeps it from being reaped while it is pinned; the pidfd
    /// keeps a signal from reaching another after that.
    pub fn pin(&self, pid: Pid) -> Option<Pinned> {
        let inner = self.lock();
        Pinned::pin(inner.owners.get(&pid)?.id?)
    }

    /// Signals the process group that `leader` (a process rayhead spawned)
    /// leads, only while the leader is unreaped: its pid, and so the
    /// group's id, cannot be anyone else's then. `Err(ESRCH)` after.
    pub fn signal_group(&self, leader: Pid, sig: Signal) -> nix::Result<()> {
        let inner = self.lock();
        if !inner.owners.contains_key(&leader) {
            return Err(Errno::ESRCH);
        }
        nix::sys::signal::killpg(leader, sig)
    }

    /// `true` while rayhead has no child left to reap (its whole tree is gone).
    pub fn idle(&self) -> watch::Receiver<bool> {
        self.idle.subscribe()
    }
}

#[cfg(test)]
mod tests {
    //! Each test runs in a process of its own
    //! ([`isolated`](crate::init::test_support::isolated)): a reaper waits
    //! for any child, which in the shared test process would take the
    //! children of tests running beside it.

    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::init::test_support::{isolated, reaper, sh, status_of};
    use crate::sys::proctree;

    /// Children that exit at once, while another thread reaps in a tight
    /// loop: each may be waited for the moment it exits, before `spawn` has
    /// returned. None is reaped before its owner is known, so every owner
    /// gets its own child's status.
    #[test]
    fn a_child_that_exits_before_it_is_registered_is_not_lost() {
        isolated(
            module_path!(),
            "a_child_that_exits_before_it_is_registered_is_not_lost",
            || async {
                let (r, _tracker, cancel) = reaper();
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let hammer = {
                    let (r, stop) = (r.clone(), stop.clone());
                    std::thread::spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            r.reap_all();
                        }
                    })
                };
                let mut spawned = Vec::new();
                for i in 0..100 {
                    let s = r.spawn(&mut sh(&format!("exit {i}")), "quick").unwrap();
                    spawned.push((i, s));
                }
                for (i, s) in spawned {
                    assert_eq!(status_of(s.exit).await, ExitStatus::Exited(i), "child {i}");
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                hammer.join().unwrap();
                cancel.cancel();
            },
        );
    }

    /// 64 children end at the same instant (their shared stdin closes) with
    /// 64 codes, and 64 more die of one SIGKILL to their group: the
    /// SIGCHLDs coalesce, and still every status reaches its owner, and the
    /// reaper says it is idle once all are gone.
    #[test]
    fn many_children_exiting_at_once_are_all_reaped() {
        isolated(
            module_path!(),
            "many_children_exiting_at_once_are_all_reaped",
            || async {
                let (r, _tracker, cancel) = reaper();
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
                let mut by_eof = Vec::new();
                for i in 0..64 {
                    let mut cmd = sh(&format!("read _ ; exit {}", i + 1));
                    cmd.stdin(Stdio::from(read.try_clone().unwrap()));
                    by_eof.push((i + 1, r.spawn(&mut cmd, "eof").unwrap()));
                }
                drop(read);
                let mut by_kill = Vec::new();
                let mut group = None;
                for _ in 0..64 {
                    let mut cmd = sh("exec sleep 1000");
                    cmd.process_group(group.map_or(0, |g: Pid| g.as_raw()));
                    let s = r.spawn(&mut cmd, "group").unwrap();
                    group.get_or_insert(s.pid);
                    by_kill.push(s);
                }
                let mut idle = r.idle();
                assert!(!*idle.borrow_and_update(), "idle with 128 children");
                // Every sleep has exec'd (a signal before the exec would kill
                // the shell instead; the status is the same, but be exact).
                let deadline = Instant::now() + Duration::from_secs(20);
                while !by_kill
                    .iter()
                    .all(|s| proctree::stat(s.pid).is_some_and(|p| p.comm == "sleep"))
                {
                    assert!(Instant::now() < deadline, "the sleeps did not start");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                drop(write);
                nix::sys::signal::killpg(group.unwrap(), Signal::SIGKILL).unwrap();
                for (code, s) in by_eof {
                    assert_eq!(status_of(s.exit).await, ExitStatus::Exited(code));
                }
                for s in by_kill {
                    assert_eq!(status_of(s.exit).await, ExitStatus::Signaled(9));
                }
                tokio::time::timeout(Duration::from_secs(10), idle.wait_for(|v| *v))
                    .await
                    .expect("not idle with every child reaped")
                    .unwrap();
                cancel.cancel();
            },
        );
    }

    /// A child pins while it is unreaped; once reaped, its pid (anyone's
    /// now) neither pins nor takes a group signal. A pid that was never
    /// the reaper's does not pin either.
    #[test]
    fn a_reaped_pid_is_no_longer_pinnable() {
        isolated(
            module_path!(),
            "a_reaped_pid_is_no_longer_pinnable",
            || async {
                let (r, _tracker, cancel) = reaper();
                let mut cmd = sh("exec sleep 1000");
                cmd.process_group(0);
                let s = r.spawn(&mut cmd, "sleeper").unwrap();
                let pinned = r.pin(s.pid).expect("an unreaped child pins");
                assert_eq!(r.signal_group(s.pid, Signal::SIGCONT), Ok(()));
                pinned.signal(Signal::SIGKILL).unwrap();
                assert_eq!(status_of(s.exit).await, ExitStatus::Signaled(9));
                assert!(r.pin(s.pid).is_none(), "a reaped pid pinned");
                assert_eq!(r.signal_group(s.pid, Signal::SIGKILL), Err(Errno::ESRCH));
                assert_eq!(pinned.signal(Signal::SIGKILL), Err(Errno::ESRCH));
                assert!(r.pin(nix::unistd::getpid()).is_none(), "not the reaper's");
                cancel.cancel();
            },
        );
    }

    /// A process the reaper did not spawn (a daemon re-parented to rayhead)
    /// that exits before it is claimed: a claim with a mark from before the
    /// exit gets the status at once; one with a later mark does not take
    /// that old exit for a new one.
    #[test]
    fn a_claimed_process_that_exited_first_is_not_lost() {
        isolated(
            module_path!(),
            "a_claimed_process_that_exited_first_is_not_lost",
            || async {
                let (r, _tracker, cancel) = reaper();
                let before = r.mark();
                let child = sh("exit 5").spawn().unwrap();
                let pid = Pid::from_raw(child.id() as i32);
                drop(child);
                let deadline = Instant::now() + Duration::from_secs(20);
                while r.mark() == before {
                    assert!(Instant::now() < deadline, "the orphan was not reaped");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let after = r.mark();
                assert_eq!(
                    status_of(r.claim(pid, "early", before)).await,
                    ExitStatus::Exited(5)
                );
                let mut late = r.claim(pid, "late", after);
                assert!(
                    matches!(late.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
                    "an old exit was taken for a new one"
                );
                cancel.cancel();
            },
        );
    }

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        assert_eq!(ExitStatus::Exited(0).code(), 0);
        assert!(ExitStatus::Exited(0).success());
        assert_eq!(ExitStatus::Exited(42).code(), 42);
        assert_eq!(ExitStatus::Exited(256 + 3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert!(!ExitStatus::Signaled(15).success());
        assert_eq!(ExitStatus::Signaled(9).to_string(), "was killed by SIGKILL");
        assert_eq!(ExitStatus::Exited(3).to_string(), "exited with code 3");
    }
}
