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

use super::pin::{Identity, Pinned};

/// How a process ended.
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

/// How many recent exits are kept for [`Reaper::watch`] callers that arrive
/// after the fact.
const RECENT: usize = 4096;

struct Inner {
    owners: HashMap<Pid, Owner>,
    /// Recent exits, each with its sequence number.
    recent: VecDeque<(u64, Reaped)>,
    /// How many processes have been reaped so far.
    seq: u64,
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
    pub fn reap_all(&self) {
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
        inner.owners.insert(
            pid,
            Owner {
                name: name.to_string(),
                tx,
                id: Identity::of(pid),
            },
        );
        self.idle.send_if_modified(|v| std::mem::replace(v, false));
        Ok(Spawned {
            pid,
            exit: rx,
            stdout,
            stderr,
        })
    }

    /// Now, in the reaper's history. Take a mark before looking a process up
    /// in `/proc`, and pass it to [`Reaper::watch`].
    pub fn mark(&self) -> Mark {
        Mark(self.lock().seq)
    }

    /// Claims a process that rayhead did not spawn but will reap (a daemon
    /// re-parented to it), seen alive after `since`. If it has been reaped
    /// since then, the receiver resolves at once with its status; an older
    /// exit of the same pid number is not mistaken for it.
    pub fn watch(&self, pid: Pid, name: &str, since: Mark) -> oneshot::Receiver<ExitStatus> {
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
            inner.owners.insert(
                pid,
                Owner {
                    name: name.to_string(),
                    tx,
                    id: Identity::of(pid),
                },
            );
        }
        rx
    }

    /// Pins a process rayhead spawned or watches, for a signal: `None` once
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
