//! The process tree, read from `/proc`.
//!
//! A graceful stop must reach descendants that left the child's process group
//! (`setsid`, as Ray's actors may do), so it walks parent links from `/proc`
//! instead of trusting process groups.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use nix::unistd::Pid;

/// Who a process is: its pid and when it started. Two processes that share
/// a pid have different start times (a reused pid cannot start before the
/// process it replaces was reaped; within one clock tick is out of reach of
/// a pid space that must wrap around first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pid: Pid,
    /// `/proc/<pid>/stat` field 22.
    pub start: u64,
}

impl Identity {
    /// The identity of the process now at `pid`; `None` once it is gone.
    pub fn of(pid: Pid) -> Option<Identity> {
        stat(pid).map(|p| p.identity())
    }
}

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    /// `R`, `S`, `Z` (zombie), ...
    pub state: char,
    /// The kernel's 15-character command name.
    pub comm: String,
    /// When it started, in clock ticks since boot (field 22): with the pid,
    /// who it is (a reused pid starts later).
    pub start: u64,
}

impl ProcInfo {
    pub fn identity(&self) -> Identity {
        Identity {
            pid: self.pid,
            start: self.start,
        }
    }
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may
/// itself hold spaces, parentheses and bytes that are not UTF-8 (a process
/// names itself), so the fields are read after the *last* `)`, from bytes:
/// a name that is not UTF-8 must not hide its process from a stop's walk.
/// A pid that is not positive is refused (as a signal target it would mean
/// a process group, or every process).
pub fn parse_stat(raw: impl AsRef<[u8]>) -> Option<ProcInfo> {
    let raw = raw.as_ref();
    let open = raw.iter().position(|b| *b == b'(')?;
    let close = raw.iter().rposition(|b| *b == b')')?;
    let pid: i32 = std::str::from_utf8(&raw[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(raw.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
    let mut rest = rest.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid: i32 = rest.next()?.parse().ok()?;
    let pgid: i32 = rest.next()?.parse().ok()?;
    if pid <= 0 || ppid < 0 || pgid < 0 {
        return None;
    }
    // Fields 6 to 21, then the start time.
    let start: u64 = rest.nth(16)?.parse().ok()?;
    Some(ProcInfo {
        pid: Pid::from_raw(pid),
        ppid: Pid::from_raw(ppid),
        pgid: Pid::from_raw(pgid),
        state,
        comm,
        start,
    })
}

/// A process's argv from `/proc/<pid>/cmdline`: the NUL-separated words,
/// empty ones dropped. Empty for a zombie or a kernel thread.
pub fn cmdline(pid: Pid) -> io::Result<Vec<OsString>> {
    Ok(split_nul(&fs::read(format!("/proc/{pid}/cmdline"))?))
}

/// NUL-separated words (`cmdline`, `environ`), empty ones dropped.
pub fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// Every process visible in `proc` (normally `/proc`). Processes that vanish
/// while it reads are skipped.
fn snapshot_at(proc: &Path) -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir(proc) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read(e.path().join("stat")).ok())
        .filter_map(parse_stat)
        .collect()
}

/// One process, from `/proc/<pid>/stat`; `None` once it is gone.
pub fn stat(pid: Pid) -> Option<ProcInfo> {
    parse_stat(fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The descendants of `pid`, walked down through each thread's
/// `/proc/<pid>/task/<tid>/children`: a few small reads, where a whole
/// `/proc` snapshot reads every process on the machine. Each comes with its
/// identity, read with its parent checked, so that a list kept for later
/// signals no process that took one of these pids since.
pub fn descendants_of(pid: Pid) -> Vec<Identity> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.filter_map(|t| t.ok()) {
            let Ok(text) = fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            let kids = text.split_whitespace().filter_map(|k| k.parse().ok());
            for kid in kids.filter(|k: &i32| *k > 0) {
                let kid = Pid::from_raw(kid);
                // Gone, or its pid reused by another's child, since the read.
                let Some(info) = stat(kid).filter(|k| k.ppid == p) else {
                    continue;
                };
                if !out.iter().any(|i: &Identity| i.pid == kid) && out.len() < 10_000 {
                    out.push(info.identity());
                    queue.push(kid);
                }
            }
        }
    }
    out
}

/// Every process visible in `/proc`.
pub fn snapshot() -> Vec<ProcInfo> {
    snapshot_at(Path::new("/proc"))
}

/// The descendants of `root` in `procs`, parents before children.
pub fn descendants(procs: &[ProcInfo], root: Pid) -> Vec<ProcInfo> {
    let mut children: HashMap<Pid, Vec<&ProcInfo>> = HashMap::new();
    for p in procs {
        if p.pid != root {
            children.entry(p.ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        if let Some(kids) = children.get(&parent) {
            for k in kids {
                out.push((*k).clone());
                queue.push(k.pid);
            }
        }
    }
    out
}

/// The live (not zombie) descendants of this process.
pub fn live_descendants_of_self() -> Vec<ProcInfo> {
    let me = nix::unistd::getpid();
    descendants(&snapshot(), me)
        .into_iter()
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let p =
            parse_stat("42 (a (b) c) S 1 42 42 0 -1 4194560 97 0 0 0 1 2 0 0 20 0 1 0 123456 7 8")
                .unwrap();
        assert_eq!(p.start, 123456);
        assert_eq!(p.pid, Pid::from_raw(42));
        assert_eq!(p.comm, "a (b) c");
        assert_eq!(p.state, 'S');
        assert_eq!(p.ppid, Pid::from_raw(1));
        assert_eq!(p.pgid, Pid::from_raw(42));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
        assert!(parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0").is_none());
        assert!(parse_stat(")1 (x S 1 1").is_none());
        assert!(parse_stat("-1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5").is_none());
        let p = parse_stat(b"7 (\xff\xfe) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5").unwrap();
        assert_eq!(
            (p.pid, p.comm.as_str(), p.start),
            (Pid::from_raw(7), "\u{fffd}\u{fffd}", 5)
        );
    }

    #[test]
    fn descendants_follow_parent_links() {
        let mk = |pid, ppid| ProcInfo {
            pid: Pid::from_raw(pid),
            ppid: Pid::from_raw(ppid),
            pgid: Pid::from_raw(pid),
            state: 'S',
            comm: String::new(),
            start: 1,
        };
        let procs = vec![
            mk(1, 0),
            mk(10, 1),
            mk(11, 10),
            mk(12, 11),
            mk(20, 2),
            mk(13, 1),
        ];
        let mut got: Vec<i32> = descendants(&procs, Pid::from_raw(1))
            .iter()
            .map(|p| p.pid.as_raw())
            .collect();
        got.sort();
        assert_eq!(got, vec![10, 11, 12, 13]);
        assert!(descendants(&procs, Pid::from_raw(12)).is_empty());
    }

    #[test]
    fn splits_nul_separated_words() {
        let words = split_nul(b"python3\0-u\0\0/x/monitor.py\0");
        assert_eq!(words, vec!["python3", "-u", "/x/monitor.py"]);
        assert!(split_nul(b"").is_empty());
        let me = cmdline(nix::unistd::getpid()).unwrap();
        assert!(!me.is_empty());
    }

    #[test]
    fn walks_down_through_children() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let mut under: Vec<Identity> = Vec::new();
        for _ in 0..500 {
            under = descendants_of(pid);
            if !under.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = descendants_of(nix::unistd::getpid());
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        super::super::pin::signal_all(under.clone(), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        assert!(found.iter().any(|i| i.pid == pid), "{found:?}");
        assert_eq!(under.len(), 1, "the sleep under sh: {under:?}");
        assert!(stat(nix::unistd::getpid()).is_some());
    }

    /// A live child is a live descendant; an exited, unreaped one (a
    /// zombie) is not.
    #[test]
    fn live_descendants_leave_out_zombies() {
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let (live_pid, dead_pid) = (
            Pid::from_raw(live.id() as i32),
            Pid::from_raw(dead.id() as i32),
        );
        // Until `true` has exited and is a zombie.
        for _ in 0..500 {
            if stat(dead_pid).is_some_and(|p| p.state == 'Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let got: Vec<Pid> = live_descendants_of_self().iter().map(|p| p.pid).collect();
        let _ = live.kill();
        let _ = live.wait();
        let _ = dead.wait();
        assert!(got.contains(&live_pid), "{got:?}");
        assert!(
            !got.contains(&dead_pid),
            "a zombie counted as live: {got:?}"
        );
    }

    #[test]
    fn reads_this_process() {
        let me = nix::unistd::getpid();
        assert!(snapshot().iter().any(|p| p.pid == me));
    }
}
