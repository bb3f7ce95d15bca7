//! Signals that reach only the process meant, never whoever got its pid.
//!
//! A pid is a number the kernel hands out again once the process is reaped,
//! and Ray starts and ends workers all the time: a pid read from `/proc` a
//! moment ago, or a descendant list seconds old, may name an unrelated
//! process by the time rayhead signals it. So every signal rayhead sends
//! by pid goes through a [`Pinned`] process:
//!
//! - a pidfd (`pidfd_open`, Linux 5.3+) refers to one process, not to a
//!   number: once that process is reaped, `pidfd_send_signal` fails with
//!   `ESRCH` whoever holds the number;
//! - a process is pinned only if it is still the one recorded: its start
//!   time (`/proc/<pid>/stat` field 22, in clock ticks since boot) must be
//!   the one read when its pid was; a pid reused since has a later one;
//! - where no pidfd can be had (an older kernel, a seccomp profile that
//!   refuses the call), the start time is read again just before `kill`,
//!   which leaves a window of microseconds instead of seconds.
//!
//! rayhead's own children are pinned by
//! `Reaper::pin` (in `init/`, above this module), which knows whether
//! the pid was reaped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::proctree::{self, Identity};

/// A process held by identity: signals reach it or nobody.
#[derive(Debug)]
pub struct Pinned {
    id: Identity,
    /// `None` where the kernel gives no pidfd.
    fd: Option<OwnedFd>,
}

impl Pinned {
    /// Pins the process that is `id`, if it still is: `None` if it is gone
    /// or its pid now names another process.
    pub fn pin(id: Identity) -> Option<Pinned> {
        let fd = pidfd_open(id.pid);
        // The pidfd came first: if the process it holds is alive after the
        // start time was read, that start time was its own.
        let now = Identity::of(id.pid)?;
        if now != id {
            return None;
        }
        if let Some(fd) = &fd {
            if pidfd_send_signal(fd, None).is_err() {
                return None;
            }
        }
        Some(Pinned { id, fd })
    }

    pub fn identity(&self) -> Identity {
        self.id
    }

    /// Sends `sig`; `Err(ESRCH)` once the process is gone. A pinned process
    /// that exits is never confused with one that took its pid.
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        match &self.fd {
            Some(fd) => pidfd_send_signal(fd, Some(sig)),
            None => {
                // No pidfd: check again that the pid is still this process.
                if Identity::of(self.id.pid) != Some(self.id) {
                    return Err(Errno::ESRCH);
                }
                kill(self.id.pid, sig)
            }
        }
    }
}

/// Sends `sig` to each process in `ids` that still is who it was; returns
/// how many got it. A process gone, or a pid reused, is skipped.
pub fn signal_all<I>(ids: I, sig: Signal) -> usize
where
    I: IntoIterator<Item = Identity>,
{
    ids.into_iter()
        .filter_map(Pinned::pin)
        .filter(|p| p.signal(sig).is_ok())
        .count()
}

/// SIGKILLs `root` (if it is still pinned, with its descendants as they
/// are now) and every process of `family` (an older list of its
/// descendants) that still is who it was. Returns how many were killed.
///
/// The one way rayhead kills a process with its tree: a daemon before its
/// restart (the supervisor), a pod's leftovers and a pod that outlived its
/// grace (the dev runner).
///
/// With `root` gone, only `family` is used: a walk down from a reaped pid
/// would find the children of whoever has that pid now.
pub fn kill_tree(root: Option<&Pinned>, family: Vec<Identity>) -> usize {
    let mut ids = family;
    let mut killed = 0;
    if let Some(root) = root {
        let now = proctree::descendants(&proctree::snapshot(), root.identity().pid);
        // The walk is the root's own only if the root still lived after it.
        if root.signal(Signal::SIGKILL).is_ok() {
            killed += 1;
            ids.extend(now.iter().map(|p| p.identity()));
        }
    }
    ids.sort_by_key(|i| (i.pid.as_raw(), i.start));
    ids.dedup();
    killed + signal_all(ids, Signal::SIGKILL)
}

/// `pidfd_open(2)`: `None` where the kernel has none (before 5.3, or a
/// seccomp filter refuses it) or the process is gone.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: the syscall takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`; `None` checks that the process exists.
fn pidfd_send_signal(fd: &OwnedFd, sig: Option<Signal>) -> nix::Result<()> {
    let sig = sig.map_or(0, |s| s as libc::c_int);
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// Kills and reaps a test's child even if the test fails.
    struct Guard(Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> (Guard, Identity) {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let id = Identity::of(pid).unwrap();
        (Guard(child), id)
    }

    fn alive(g: &mut Guard) -> bool {
        g.0.try_wait().unwrap().is_none()
    }

    #[test]
    fn a_pinned_process_gets_the_signal() {
        let (mut g, id) = sleeper();
        let p = Pinned::pin(id).expect("a live process pins");
        assert!(p.fd.is_some(), "this kernel has pidfd_open");
        p.signal(Signal::SIGKILL).unwrap();
        let status = g.0.wait().unwrap();
        assert!(!status.success());
    }

    /// The pid of a process that exited and was reaped, given to another:
    /// the other has a later start time, and no signal reaches it.
    #[test]
    fn a_reused_pid_is_not_signalled() {
        let (mut unrelated, now) = sleeper();
        let recorded = Identity {
            pid: now.pid,
            start: now.start.saturating_sub(1),
        };
        assert!(Pinned::pin(recorded).is_none());
        assert_eq!(signal_all([recorded], Signal::SIGKILL), 0);
        assert_eq!(kill_tree(None, vec![recorded]), 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(alive(&mut unrelated), "the unrelated process was killed");
    }

    /// Pinned while alive, then it exits and is reaped: the pidfd says it is
    /// gone, whoever takes the pid next.
    #[test]
    fn a_reaped_process_is_not_signalled() {
        let (mut g, id) = sleeper();
        let p = Pinned::pin(id).unwrap();
        let _ = g.0.kill();
        let _ = g.0.wait();
        assert_eq!(p.signal(Signal::SIGKILL), Err(Errno::ESRCH));
        assert!(Pinned::pin(id).is_none());
    }

    /// Without a pidfd the start time is checked again before the kill.
    #[test]
    fn without_a_pidfd_the_start_time_is_checked_at_the_signal() {
        let (mut unrelated, now) = sleeper();
        let stale = Pinned {
            id: Identity {
                pid: now.pid,
                start: now.start + 1,
            },
            fd: None,
        };
        assert_eq!(stale.signal(Signal::SIGKILL), Err(Errno::ESRCH));
        assert!(alive(&mut unrelated));
        let fresh = Pinned { id: now, fd: None };
        fresh.signal(Signal::SIGKILL).unwrap();
        assert!(!unrelated.0.wait().unwrap().success());
    }

    /// A tree: the root pinned and its descendants as they are now, plus
    /// an old family list holding a stale identity that must be skipped.
    #[test]
    fn kill_tree_kills_the_family_and_spares_a_reused_pid() {
        let root = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let mut root = Guard(root);
        let root_pid = Pid::from_raw(root.0.id() as i32);
        let mut kids = Vec::new();
        for _ in 0..500 {
            kids = proctree::descendants_of(root_pid);
            if !kids.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(kids.len(), 1, "{kids:?}");
        let (mut unrelated, u) = sleeper();
        let stale = Identity {
            pid: u.pid,
            start: u.start.saturating_sub(1),
        };
        let pinned = Pinned::pin(Identity::of(root_pid).unwrap()).unwrap();
        let killed = kill_tree(Some(&pinned), vec![stale]);
        assert!(!root.0.wait().unwrap().success());
        assert_eq!(killed, 2, "the root and its sleep");
        // The orphaned sleep dies (a zombie until whoever inherits it reaps).
        let dead = |k: Identity| {
            proctree::stat(k.pid).is_none_or(|p| p.start != k.start || p.state == 'Z')
        };
        for _ in 0..500 {
            if dead(kids[0]) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(dead(kids[0]), "the root's child survived");
        assert!(alive(&mut unrelated));
    }

    /// A real reuse: the recorded process exits and is reaped, and the
    /// kernel is asked (`ns_last_pid`, root only) to give its pid to the
    /// next process. That process must survive a kill of the old identity.
    /// Where the pid cannot be steered (not root, or another process took
    /// it each time) the simulated tests above stand.
    #[test]
    fn a_pid_really_reused_survives() {
        for _ in 0..50 {
            let (mut old, id) = sleeper();
            let _ = old.0.kill();
            let _ = old.0.wait();
            // A later clock tick (10 ms) than the old one's start: the
            // kernel cycles through the whole pid space before it reuses a
            // pid, which takes far longer than a tick unless steered.
            std::thread::sleep(std::time::Duration::from_millis(30));
            let next = (id.pid.as_raw() - 1).to_string();
            if std::fs::write("/proc/sys/kernel/ns_last_pid", next).is_err() {
                eprintln!("cannot steer pids here: the simulated tests stand");
                return;
            }
            let (mut new, now) = sleeper();
            if now.pid != id.pid {
                continue;
            }
            assert_ne!(now.start, id.start, "a reused pid starts later");
            assert_eq!(kill_tree(None, vec![id]), 0);
            assert_eq!(signal_all([id], Signal::SIGKILL), 0);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(alive(&mut new), "the process that took the pid was killed");
            return;
        }
        eprintln!("the pid went to another process each time");
    }
}
