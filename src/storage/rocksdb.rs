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

use crate::exit::Exit;
use crate::memory::Mark;
use crate::state::{RocksdbState, State};

/// How often the gate looks again at a full disk.
const POLL: Duration = Duration::from_millis(250);
/// Longest one check may take: a hung network volume must not hang the gate.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The size walk stops here: the figure is for a dashboard, not a bill.
const MAX_ENTRIES: usize = 100_000;
/// ... and here: a slow volume must not hold the monitor's thread.
const WALK_BUDGET: Duration = Duration::from_secs(2);
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

/// Why a GCS cannot start on the storage path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskProblem {
    Missing(PathBuf),
    NotADirectory(PathBuf),
    /// The path cannot be resolved: a link loop, a part of it that is a
    /// file, a name too long. Waiting will not fix it.
    BadPath {
        path: PathBuf,
        error: String,
    },
    ReadOnly(PathBuf),
    NotWritable {
        path: PathBuf,
        error: String,
    },
    /// Less free than `gcs.storage-min-free`, or, with it off, nothing.
    Full {
        path: PathBuf,
        free: u64,
        min: u64,
    },
    /// No file can be made (RocksDB's next table or log), whatever the bytes.
    NoInodes(PathBuf),
    /// The test write was refused for space although the numbers show
    /// room: a quota, or blocks kept for root.
    WriteRefused {
        path: PathBuf,
        error: String,
    },
    /// The check itself failed or hung (an I/O error, a stale mount).
    Unreadable {
        path: PathBuf,
        error: String,
    },
    /// The check did not finish before the gate's deadline: this says
    /// nothing of the volume, only that the time was up.
    CutShort {
        path: PathBuf,
        after: Duration,
    },
}

impl std::error::Error for DiskProblem {}

impl fmt::Display for DiskProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskProblem::Missing(p) => write!(
                f,
                "the GCS storage path {} (gcs_storage_path) does not exist: is its volume mounted? (Ray would create it in the container's own file system, and the state would die with the container)",
                shown(p)
            ),
            DiskProblem::NotADirectory(p) => write!(
                f,
                "the GCS storage path {} (gcs_storage_path) is not a directory",
                shown(p)
            ),
            DiskProblem::BadPath { path, error } => write!(
                f,
                "the GCS storage path {} (gcs_storage_path) cannot be resolved: {error}",
                shown(path)
            ),
            DiskProblem::ReadOnly(p) => write!(
                f,
                "the GCS storage path {} is on a read-only file system (a read-only mount, or a remount after disk errors)",
                shown(p)
            ),
            DiskProblem::NotWritable { path, error } => write!(
                f,
                "the GCS storage path {} is not writable by rayhead's user: {error}",
                shown(path)
            ),
            DiskProblem::Full { path, min: 0, .. } => write!(
                f,
                "the GCS storage at {} is full: nothing is left to write on (gcs.storage-min-free is off)",
                shown(path)
            ),
            DiskProblem::Full { path, free, min } => write!(
                f,
                "the GCS storage at {} is full: {} free, below gcs.storage-min-free ({})",
                shown(path),
                human(*free),
                human(*min)
            ),
            DiskProblem::NoInodes(p) => write!(
                f,
                "the GCS storage at {} has no inodes left: no new file can be made there, whatever the free bytes",
                shown(p)
            ),
            DiskProblem::WriteRefused { path, error } => write!(
                f,
                "the GCS storage at {} refused a test write for lack of space ({error}) although its file system shows room: a quota?",
                shown(path)
            ),
            DiskProblem::Unreadable { path, error } => write!(
                f,
                "the GCS storage path {} cannot be checked: {error}",
                shown(path)
            ),
            DiskProblem::CutShort { path, after } => write!(
                f,
                "the check of the GCS storage at {} was cut short by the deadline ({:.1}s were left)",
                shown(path),
                after.as_secs_f64()
            ),
        }
    }
}

impl DiskProblem {
    /// What waiting will not fix: a missing or read-only volume stays so
    /// until someone acts, and the pod is better restarted with a reason.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DiskProblem::Missing(_)
                | DiskProblem::NotADirectory(_)
                | DiskProblem::BadPath { .. }
                | DiskProblem::ReadOnly(_)
                | DiskProblem::NotWritable { .. }
        )
    }

    /// Space below `gcs.storage-min-free` but not gone: a GCS that runs
    /// still serves and writes, so readiness holds; a GCS that is lost now
    /// waits at the gate for space. The margin is for starting a GCS.
    pub fn is_margin_only(&self) -> bool {
        matches!(self, DiskProblem::Full { free, .. } if *free > 0)
    }

    /// Whether this is a finding about the volume (not a check that the
    /// deadline cut short).
    pub fn is_finding(&self) -> bool {
        !matches!(self, DiskProblem::CutShort { .. })
    }

    /// The exit for this problem, with `reason`.
    pub fn exit(&self, reason: &str) -> Exit {
        match self {
            DiskProblem::Full { .. }
            | DiskProblem::NoInodes(_)
            | DiskProblem::WriteRefused { .. } => Exit::StorageFull(reason.to_string()),
            _ => Exit::StorageUnusable(reason.to_string()),
        }
    }
}

/// A path for a message: secrets hidden, and no control character (a
/// newline in a directory's name would forge a log line).
pub fn shown(p: &Path) -> String {
    crate::redact::line(&p.display().to_string())
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Bytes as a person reads them: `12.5 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
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
        let refused = if write {
            self.write_probe(&disk).err()
        } else {
            None
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
            Some(libc::ENOENT) => DiskProblem::Missing(path),
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
        super::every(interval, &cancel, look, |reading| {
            let problem = reading.problem.as_ref().map(ToString::to_string);
            match (&last, &problem) {
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
    let top = std::fs::symlink_metadata(dir).ok()?;
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
mod tests {
    use super::*;

    fn db(path: &Path, min: &str) -> Rocksdb {
        Rocksdb::new(path.to_path_buf(), Mark::parse(min).unwrap()).unwrap()
    }

    impl Rocksdb {
        /// The gate's look, on this thread, as a result.
        fn check(&self) -> Result<Disk, DiskProblem> {
            match self.look(true) {
                (Some(d), None) => Ok(d),
                (_, Some(p)) => Err(p),
                (None, None) => unreachable!("a look without numbers has a problem"),
            }
        }

        /// The monitor's look, on this thread.
        fn check_space(&self) -> Result<Disk, DiskProblem> {
            match self.look(false) {
                (Some(d), None) => Ok(d),
                (_, Some(p)) => Err(p),
                (None, None) => unreachable!("a look without numbers has a problem"),
            }
        }
    }

    #[test]
    fn a_writable_directory_passes_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = db(t.path(), "1MiB").check().expect("usable");
        assert!(d.total_bytes >= d.free_bytes && d.free_bytes > 0);
        assert_eq!(d.min_free_bytes, Some(1 << 20));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_and_not_a_directory_are_permanent() {
        let t = tempfile::tempdir().unwrap();
        let p = db(&t.path().join("nope"), "off").check().unwrap_err();
        assert!(matches!(p, DiskProblem::Missing(_)) && p.is_permanent());
        assert!(p.to_string().contains("is its volume mounted"), "{p}");
        let f = t.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let p = db(&f, "off").check().unwrap_err();
        assert!(matches!(p, DiskProblem::NotADirectory(_)) && p.is_permanent());
        assert!(matches!(p.exit("r"), Exit::StorageUnusable(_)));
    }

    #[test]
    fn a_mark_above_the_free_space_is_full_and_waits() {
        let t = tempfile::tempdir().unwrap();
        let p = db(t.path(), "100%").check();
        // 100% of the volume is never free (metadata takes some).
        let p = p.unwrap_err();
        assert!(matches!(p, DiskProblem::Full { .. }) && !p.is_permanent());
        assert!(p.to_string().contains("gcs.storage-min-free"), "{p}");
        assert!(matches!(p.exit("r"), Exit::StorageFull(_)));
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        if nix::unistd::geteuid().is_root() {
            // root writes through mode bits; the read-only mount and the
            // full disk are the e2e tests' (a real tmpfs).
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let p = db(t.path(), "off").check().unwrap_err();
        assert!(matches!(p, DiskProblem::NotWritable { .. }), "{p}");
    }

    #[test]
    fn a_killed_checks_leftover_is_removed_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(".rayhead-write-check.1.0"), b"x").unwrap();
        std::fs::write(t.path().join("session_name"), b"s").unwrap();
        std::fs::create_dir(t.path().join(".rayhead-write-check.dir")).unwrap();
        db(t.path(), "off").check().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".rayhead-write-check.dir", "session_name"]);
        // The monitor's check writes nothing.
        let before = std::fs::metadata(t.path()).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        db(t.path(), "off").check_space().unwrap();
        assert_eq!(
            std::fs::metadata(t.path()).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn unresolvable_paths_are_permanent_and_named() {
        let t = tempfile::tempdir().unwrap();
        let looped = t.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let file = t.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        for path in [looped, file.join("gcs")] {
            let p = db(&path, "off").check().unwrap_err();
            assert!(matches!(p, DiskProblem::BadPath { .. }), "{p}");
            assert!(
                p.is_permanent() && p.to_string().contains("cannot be resolved"),
                "{p}"
            );
        }
    }

    #[test]
    fn the_numbers_forbid_no_inodes_and_a_disk_with_nothing_left() {
        let at = Path::new("/data/gcs");
        let disk = |free_bytes, free_inodes, min_free_bytes| Disk {
            total_bytes: 100 << 20,
            free_bytes,
            free_inodes,
            min_free_bytes,
        };
        assert_eq!(disk(50 << 20, Some(10), Some(1 << 20)).problem(at), None);
        assert_eq!(disk(50 << 20, None, None).problem(at), None);
        let p = disk(50 << 20, Some(0), None).problem(at).unwrap();
        assert!(
            matches!(p, DiskProblem::NoInodes(_)) && !p.is_permanent(),
            "{p}"
        );
        assert!(matches!(p.exit("r"), Exit::StorageFull(_)));
        // gcs.storage-min-free off still means something must be left.
        let p = disk(0, None, None).problem(at).unwrap();
        assert!(p.to_string().contains("nothing is left"), "{p}");
        assert!(
            !p.is_margin_only(),
            "a disk with nothing left fails readiness"
        );
        let p = disk(1 << 20, None, Some(64 << 20)).problem(at).unwrap();
        assert!(p.is_margin_only(), "{p}");
        assert!(p.to_string().contains("1.0 MiB free"), "{p}");
    }

    #[test]
    fn a_margin_is_a_warning_and_a_full_disk_a_problem() {
        let mut r = crate::state::Snapshot::ray_head("gcs".into(), None)
            .with_rocksdb("/data/gcs".into())
            .rocksdb
            .unwrap();
        let reading = |free| Reading {
            disk: Some(Disk {
                total_bytes: 100,
                free_bytes: free,
                free_inodes: Some(7),
                min_free_bytes: Some(10),
            }),
            used_bytes: Some(3),
            problem: Disk {
                total_bytes: 100,
                free_bytes: free,
                free_inodes: Some(7),
                min_free_bytes: Some(10),
            }
            .problem(Path::new("/data/gcs")),
        };
        record(&mut r, &reading(5));
        assert!(r.problem.is_none() && r.warning.is_some(), "{r:?}");
        assert_eq!(
            (r.free_bytes, r.free_inodes, r.used_bytes),
            (Some(5), Some(7), Some(3))
        );
        record(&mut r, &reading(0));
        assert!(r.problem.is_some() && r.warning.is_none(), "{r:?}");
        // A look without numbers keeps the last ones.
        record(
            &mut r,
            &Reading {
                disk: None,
                used_bytes: None,
                problem: Some(DiskProblem::Missing("/data/gcs".into())),
            },
        );
        assert_eq!((r.free_bytes, r.used_bytes), (Some(0), Some(3)));
    }

    #[test]
    fn paths_in_messages_are_one_line_and_hide_secrets() {
        let p = DiskProblem::Missing("/data/gcs\n2026-01-01 INFO forged".into());
        let text = p.to_string();
        assert!(!text.contains('\n') && text.contains("\\n"), "{text}");
        let p = DiskProblem::Missing("/data/--redis-password=hunter2".into());
        assert!(!p.to_string().contains("hunter2"), "{p}");
    }

    #[tokio::test]
    async fn checks_stuck_on_a_hung_volume_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let d = db(t.path(), "off");
        // As if MAX_CHECKS threads were stuck in the kernel.
        d.running.store(MAX_CHECKS, Ordering::SeqCst);
        let start = Instant::now();
        let r = d.read(Look::Gate, CHECK_TIMEOUT).await;
        assert!(start.elapsed() < Duration::from_secs(1), "answered at once");
        let p = r.problem.unwrap();
        assert!(
            p.to_string().contains("hung volume") && !p.is_permanent(),
            "{p}"
        );
        d.running.store(0, Ordering::SeqCst);
        let r = d.read(Look::Report, CHECK_TIMEOUT).await;
        assert_eq!(r.problem, None);
        assert!(r.used_bytes.is_some() && r.disk.is_some());
        assert_eq!(
            d.running.load(Ordering::SeqCst),
            0,
            "the slot is given back"
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(Rocksdb::new("data/gcs".into(), Mark::Off).is_err());
    }

    #[test]
    fn used_bytes_counts_what_is_under_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let empty = used_bytes(t.path()).unwrap();
        std::fs::create_dir(t.path().join("kv")).unwrap();
        std::fs::write(t.path().join("kv/000004.log"), vec![7u8; 1 << 20]).unwrap();
        let full = used_bytes(t.path()).unwrap();
        assert!(full >= empty + (1 << 20), "{empty} -> {full}");
        assert_eq!(used_bytes(&t.path().join("gone")), None);
        // A file (or a FIFO) is no database.
        assert_eq!(used_bytes(&t.path().join("kv/000004.log")), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
    }

    #[tokio::test]
    async fn the_gate_returns_at_once_on_a_missing_path_and_waits_out_a_full_one() {
        let t = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let e = db(&t.path().join("nope"), "off")
            .wait_ready(start + Duration::from_secs(30), "test")
            .await
            .unwrap_err();
        assert!(matches!(e, DiskProblem::Missing(_)));
        assert!(start.elapsed() < Duration::from_secs(10));
        let start = Instant::now();
        let e = db(t.path(), "100%")
            .wait_ready(start + Duration::from_secs(3), "test")
            .await
            .unwrap_err();
        assert!(matches!(e, DiskProblem::Full { .. }));
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}
