//! The embedded RocksDB backend (Ray 2.60's `RAY_gcs_storage=rocksdb`,
//! KubeRay 1.7's `gcsFaultToleranceOptions.backend: rocksdb`): the GCS's
//! state in a directory on a volume, `RAY_gcs_storage_path`.
//!
//! What can go wrong is the disk: a volume that is not mounted (Ray would
//! create the directory in the container's own file system and lose the
//! state with the container), a read-only remount, a full file system. The
//! gate checks each before a GCS starts; a GCS started on a full disk dies
//! again at its first write, so the gate waits for space instead of
//! restarting it into a loop. That the old gcs_server is dead and reaped
//! before a new one opens the database (RocksDB's `LOCK`) is the
//! supervisor's rule for every backend.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::memory::Mark;
use crate::state::{RocksdbState, State};

mod problem;
pub use problem::{human, shown, DiskProblem};

/// How often the gate looks again at a full disk.
const POLL: Duration = Duration::from_millis(250);
/// Longest one check may take: a hung network volume must not hang the gate.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The size walk stops here: the figure is for a dashboard, not a bill.
const MAX_ENTRIES: usize = 100_000;
/// ... and here: a slow volume must not hold the monitor's thread.
const WALK_BUDGET: Duration = Duration::from_secs(2);
/// Entries of the storage path looked at for Ray's database (it makes
/// two directories and a few files): a bound, not a limit in practice.
const MAX_DATABASE_ENTRIES: usize = 64;
/// Checks that may run at once: the gate's beside the monitor's. On a hung
/// volume each is a thread stuck in the kernel for as long as it is hung,
/// so the count is bounded, not one more per poll.
const MAX_CHECKS: usize = 2;

/// A RocksDB storage path and the free space it must keep.
#[derive(Debug, Clone)]
pub struct Rocksdb {
    pub path: PathBuf,
    pub min_free: Mark,
    /// Checks running now, shared by every clone (the gate and the monitor
    /// look at the same volume): see [`MAX_CHECKS`].
    running: Arc<AtomicUsize>,
}

/// The storage's numbers, as `statvfs` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub total_bytes: u64,
    /// What an unprivileged writer may still use (`f_bavail`).
    pub free_bytes: u64,
    /// Files that can still be made (`f_favail`); `None` where the file
    /// system has no fixed count (it reports none at all).
    pub free_inodes: Option<u64>,
    /// `gcs.storage-min-free` in bytes against this volume; `None`: off.
    pub min_free_bytes: Option<u64>,
}

/// What one look at the storage found: the numbers whenever they could be
/// read, so that a full disk still shows how full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub disk: Option<Disk>,
    /// What the database directory takes on disk, when it was walked.
    pub used_bytes: Option<u64>,
    pub problem: Option<DiskProblem>,
}

/// Who looks, which decides what the look does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Before a GCS starts: a test write, no size walk (it is on the
    /// recovery's clock).
    Gate,
    /// Every few seconds: the numbers and the size, no write.
    Monitor,
    /// `rayhead storage-check`: all of it.
    Report,
}

impl Disk {
    fn of(vfs: &nix::sys::statvfs::Statvfs, min_free: Mark) -> Disk {
        let frag = vfs.fragment_size();
        let total_bytes = vfs.blocks().saturating_mul(frag);
        Disk {
            total_bytes,
            free_bytes: vfs.blocks_available().saturating_mul(frag),
            free_inodes: (vfs.files() > 0).then_some(vfs.files_available()),
            min_free_bytes: min_free.bytes(Some(total_bytes)),
        }
    }

    /// What these numbers forbid: no inode, or less space than the mark
    /// (with the mark off, none at all).
    fn problem(&self, path: &Path) -> Option<DiskProblem> {
        if self.free_inodes == Some(0) {
            return Some(DiskProblem::NoInodes(path.to_path_buf()));
        }
        let min = self.min_free_bytes.unwrap_or(0);
        if min > 0 && self.total_bytes > 0 && min >= self.total_bytes {
            return Some(DiskProblem::MarkUnreachable {
                path: path.to_path_buf(),
                min,
                total: self.total_bytes,
            });
        }
        (self.free_bytes < min || self.free_bytes == 0).then(|| DiskProblem::Full {
            path: path.to_path_buf(),
            free: self.free_bytes,
            min,
        })
    }
}

/// Gives a check slot back when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Rocksdb {
    /// From `gcs_storage_path`. The path must be absolute: rayhead checks
    /// it from its own working directory, the GCS opens it from its own,
    /// and the two must be the same directory.
    pub fn new(path: PathBuf, min_free: Mark) -> Result<Rocksdb, String> {
        if !path.is_absolute() {
            return Err(format!(
                "gcs_storage_path {:?} is relative; give an absolute path, as KubeRay's /data/gcs",
                shown(&path)
            ));
        }
        Ok(Rocksdb {
            path,
            min_free,
            running: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn unreadable(&self, error: impl fmt::Display) -> DiskProblem {
        DiskProblem::Unreadable {
            path: self.path.clone(),
            error: error.to_string(),
        }
    }

    /// The numbers, and what stops a GCS: the path, then the mount's
    /// flags, then (with `write`) a test write, then the numbers' limits.
    /// The monitor looks without writing: it reads every few seconds and
    /// need not fsync to do it (a read-only remount shows in the flags).
    fn look(&self, write: bool) -> (Option<Disk>, Option<DiskProblem>) {
        match std::fs::metadata(&self.path) {
            Ok(m) if !m.is_dir() => {
                return (None, Some(DiskProblem::NotADirectory(self.path.clone())))
            }
            Ok(_) => {}
            Err(e) => return (None, Some(self.path_problem(&e))),
        }
        let vfs = match nix::sys::statvfs::statvfs(self.path.as_path()) {
            Ok(v) => v,
            Err(e) => return (None, Some(self.unreadable(e))),
        };
        let disk = Disk::of(&vfs, self.min_free);
        if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return (Some(disk), Some(DiskProblem::ReadOnly(self.path.clone())));
        }
        let refused = match write {
            true => self
                .write_probe(&disk)
                .and_then(|()| self.database_writable())
                .err(),
            false => None,
        };
        (Some(disk), refused.or_else(|| disk.problem(&self.path)))
    }

    /// The problem a failed `stat` of the path names.
    fn path_problem(&self, e: &std::io::Error) -> DiskProblem {
        let path = self.path.clone();
        match e.raw_os_error() {
            Some(libc::ENOENT) => DiskProblem::Missing(path),
            Some(libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => DiskProblem::BadPath {
                path,
                error: e.to_string(),
            },
            Some(libc::EACCES | libc::EPERM) => DiskProblem::NotWritable {
                path,
                error: format!("it cannot be reached: {e}"),
            },
            _ => self.unreadable(e),
        }
    }

    /// Writes, fsyncs and removes a file of our own in the directory: the
    /// only sure test that the GCS can write there (permissions, ACLs,
    /// quotas, a file system that says rw but fails writes).
    fn write_probe(&self, disk: &Disk) -> Result<(), DiskProblem> {
        static N: AtomicU64 = AtomicU64::new(0);
        remove_leftovers(&self.path);
        let name = format!(
            "{PROBE_PREFIX}{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let file = self.path.join(name);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)
            .and_then(|mut f| {
                let r = f.write_all(b"rayhead\n").and_then(|_| f.sync_all());
                let _ = std::fs::remove_file(&file);
                r
            });
        let Err(e) = result else { return Ok(()) };
        let path = self.path.clone();
        Err(match e.raw_os_error() {
            Some(libc::EROFS) => DiskProblem::ReadOnly(path),
            // Gone since the stat, or a file system that makes no files
            // (/proc): only the first is a missing volume.
            Some(libc::ENOENT) if !self.path.is_dir() => DiskProblem::Missing(path),
            Some(libc::ENOENT) => DiskProblem::NotWritable {
                path,
                error: format!("no file can be made there: {e}"),
            },
            // The numbers say why, when they can; else a quota.
            Some(libc::ENOSPC | libc::EDQUOT) => {
                disk.problem(&self.path)
                    .unwrap_or(DiskProblem::WriteRefused {
                        path,
                        error: e.to_string(),
                    })
            }
            Some(libc::EACCES | libc::EPERM) => DiskProblem::NotWritable {
                path,
                error: e.to_string(),
            },
            _ => self.unreadable(format!("a test write failed: {e}")),
        })
    }

    /// What Ray must write in a database that is already there: its
    /// directories (`kv/`, `tables/`: new tables, logs, the renamed
    /// `CURRENT`), their `LOCK` files, opened for writing, and the files
    /// beside them (`session_name`). A directory
    /// left root-owned by an earlier run as root, or an immutable one,
    /// passes the test write above and fails the GCS at open; found here,
    /// it is exit 89 with its name, not a crash loop. Asked of the kernel
    /// (`access`), never by writing among Ray's files.
    fn database_writable(&self) -> Result<(), DiskProblem> {
        let refused = |p: &Path, e: nix::Error| DiskProblem::NotWritable {
            path: self.path.clone(),
            error: format!(
                "{} (Ray's database) is not writable: {e}",
                shown(p.strip_prefix(&self.path).unwrap_or(p))
            ),
        };
        let writable = |p: &Path| {
            nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).map_err(|e| refused(p, e))
        };
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Ok(());
        };
        for e in entries.flatten().take(MAX_DATABASE_ENTRIES) {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_symlink() {
                continue;
            }
            // Everything Ray keeps beside the database (session_name) and
            // each database directory; inside one, its LOCK.
            let p = e.path();
            writable(&p)?;
            if kind.is_dir() && p.join("LOCK").exists() {
                writable(&p.join("LOCK"))?;
            }
        }
        Ok(())
    }

    /// One look on a thread of its own, within `limit`. A thread, not the
    /// runtime's blocking pool: a check stuck on a hung volume must not
    /// hold the runtime's shutdown, and rayhead must still exit with its
    /// reason.
    pub async fn read(&self, look: Look, limit: Duration) -> Reading {
        let write = matches!(look, Look::Gate | Look::Report);
        let walk = matches!(look, Look::Monitor | Look::Report);
        let failed = |problem| Reading {
            disk: None,
            used_bytes: None,
            problem: Some(problem),
        };
        let taken = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CHECKS).then_some(n + 1)
            });
        if taken.is_err() {
            return failed(self.unreadable(format!(
                "{MAX_CHECKS} earlier checks have not returned (a hung volume?)"
            )));
        }
        let slot = Slot(self.running.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rayhead-disk".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let _slot = slot;
                let (disk, problem) = me.look(write);
                let used_bytes = if walk { used_bytes(&me.path) } else { None };
                let _ = tx.send(Reading {
                    disk,
                    used_bytes,
                    problem,
                });
            });
        if let Err(e) = spawned {
            return failed(self.unreadable(format!("cannot start a check: {e}")));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => failed(self.unreadable("the check ended without an answer")),
            Err(_) if limit < CHECK_TIMEOUT => failed(DiskProblem::CutShort {
                path: self.path.clone(),
                after: limit,
            }),
            Err(_) => failed(self.unreadable(format!(
                "the check did not finish within {:.1}s (a hung volume?)",
                limit.as_secs_f64()
            ))),
        }
    }

    /// Waits until the gate's check passes, or `until`. Returns at once on
    /// a problem that waiting will not fix; logs a full disk every few
    /// seconds while it waits.
    pub async fn wait_ready(&self, until: Instant, purpose: &str) -> Result<(), DiskProblem> {
        let mut last_log: Option<Instant> = None;
        let mut seen: Option<DiskProblem> = None;
        loop {
            let limit = CHECK_TIMEOUT.min(until.saturating_duration_since(Instant::now()));
            let Some(problem) = self.read(Look::Gate, limit).await.problem else {
                return Ok(());
            };
            if problem.is_permanent() {
                return Err(problem);
            }
            // A check cut short by the deadline says less than the one
            // before it (a full disk, say): that one is the reason.
            let problem = match (problem, seen.take()) {
                (p, Some(before)) if !p.is_finding() => before,
                (p, _) => p,
            };
            seen = Some(problem.clone());
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
                tracing::warn!(problem = %problem, purpose, "the GCS storage is not usable yet: waiting before a GCS starts");
                last_log = Some(Instant::now());
            }
            if until.saturating_duration_since(Instant::now()) <= POLL {
                return Err(problem);
            }
            sleep(POLL).await;
        }
    }

    /// Reads the numbers and the database's size into the state every
    /// `interval`; a problem is logged when it appears and when it clears.
    pub async fn monitor(self, interval: Duration, state: State, cancel: CancellationToken) {
        let mut last: Option<String> = None;
        let look = || self.read(Look::Monitor, CHECK_TIMEOUT);
        crate::time::every(interval, &cancel, look, |reading| {
            let problem = reading.problem.as_ref().map(ToString::to_string);
            let margin_only = reading
                .problem
                .as_ref()
                .is_some_and(DiskProblem::is_margin_only);
            match (&last, &problem) {
                (_, Some(p)) if last.as_ref() != Some(p) && margin_only => {
                    tracing::warn!(warning = %p, "the GCS storage is below its margin: the GCS runs on, but one lost now would wait for space")
                }
                (_, Some(p)) if last.as_ref() != Some(p) => {
                    tracing::warn!(problem = %p, "the GCS storage is not usable")
                }
                (Some(_), None) => {
                    tracing::info!(path = %shown(&self.path), "the GCS storage is usable again")
                }
                _ => {}
            }
            last = problem;
            state.update(|s| {
                if let Some(r) = &mut s.rocksdb {
                    record(r, &reading);
                }
            });
            std::ops::ControlFlow::Continue(())
        })
        .await
    }
}

/// A reading into the state: the numbers when there are any (the last
/// ones otherwise), and the problem as readiness's (it breaks a serving
/// GCS) or as a warning (below the margin, which only a new GCS needs).
fn record(r: &mut RocksdbState, reading: &Reading) {
    r.last_check = Some(SystemTime::now());
    r.used_bytes = reading.used_bytes.or(r.used_bytes);
    if let Some(d) = reading.disk {
        r.free_bytes = Some(d.free_bytes);
        r.total_bytes = Some(d.total_bytes);
        r.free_inodes = d.free_inodes;
        r.min_free_bytes = d.min_free_bytes;
    }
    let text = reading.problem.as_ref().map(ToString::to_string);
    (r.problem, r.warning) = match &reading.problem {
        Some(p) if p.is_margin_only() => (None, text),
        _ => (text, None),
    };
}

/// The test file's name before its pid and counter.
const PROBE_PREFIX: &str = ".rayhead-write-check.";

/// Removes test files that a killed rayhead left (regular files of our
/// prefix only; never a link, never anything of Ray's).
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let ours = e.file_name().to_string_lossy().starts_with(PROBE_PREFIX);
        if ours && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The bytes `dir` and everything under it take on disk (allocated
/// blocks: RocksDB preallocates its logs), without following links; `None`
/// when it is not a directory that can be read, or when the walk takes
/// longer than [`WALK_BUDGET`] (a slow volume: the last figure stands).
pub fn used_bytes(dir: &Path) -> Option<u64> {
    // The path itself may be a link (to the volume); nothing under it is
    // followed.
    let top = std::fs::metadata(dir).ok()?;
    if !top.is_dir() {
        return None;
    }
    let started = std::time::Instant::now();
    let mut total = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Some(total);
            }
            if started.elapsed() > WALK_BUDGET {
                return None;
            }
            let Ok(m) = e.metadata() else { continue };
            total = total.saturating_add(m.blocks() * 512);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests;
