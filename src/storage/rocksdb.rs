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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::memory::Mark;
use crate::state::State;

/// How often the gate looks again at a full disk.
const POLL: Duration = Duration::from_millis(250);
/// Longest one check may take: a hung network volume must not hang the gate.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The size walk stops here: the figure is for a dashboard, not a bill.
const MAX_ENTRIES: usize = 100_000;

/// A RocksDB storage path and the free space it must keep.
#[derive(Debug, Clone)]
pub struct Rocksdb {
    pub path: PathBuf,
    pub min_free: Mark,
}

/// The storage's numbers when it is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub total_bytes: u64,
    /// What an unprivileged writer may still use (`f_bavail`).
    pub free_bytes: u64,
    /// `gcs.storage-min-free` in bytes against this volume; `None`: off.
    pub min_free_bytes: Option<u64>,
}

/// Why a GCS cannot start on the storage path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskProblem {
    Missing(PathBuf),
    NotADirectory(PathBuf),
    ReadOnly(PathBuf),
    NotWritable {
        path: PathBuf,
        error: String,
    },
    Full {
        path: PathBuf,
        free: u64,
        min: u64,
    },
    /// The check itself failed or hung (an I/O error, a stale mount).
    Unreadable {
        path: PathBuf,
        error: String,
    },
}

impl std::error::Error for DiskProblem {}

impl fmt::Display for DiskProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskProblem::Missing(p) => write!(
                f,
                "the GCS storage path {} (RAY_gcs_storage_path) does not exist: is its volume mounted? (Ray would create it in the container's own file system, and the state would die with the container)",
                p.display()
            ),
            DiskProblem::NotADirectory(p) => write!(
                f,
                "the GCS storage path {} (RAY_gcs_storage_path) is not a directory",
                p.display()
            ),
            DiskProblem::ReadOnly(p) => write!(
                f,
                "the GCS storage path {} is on a read-only file system (a read-only mount, or a remount after disk errors)",
                p.display()
            ),
            DiskProblem::NotWritable { path, error } => write!(
                f,
                "the GCS storage path {} is not writable by rayhead's user: {error}",
                path.display()
            ),
            DiskProblem::Full { path, free, min } => write!(
                f,
                "the GCS storage at {} is full: {} free, below gcs.storage-min-free ({})",
                path.display(),
                human(*free),
                human(*min)
            ),
            DiskProblem::Unreadable { path, error } => write!(
                f,
                "the GCS storage path {} cannot be checked: {error}",
                path.display()
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
                | DiskProblem::ReadOnly(_)
                | DiskProblem::NotWritable { .. }
        )
    }

    /// The exit for this problem, with `reason`.
    pub fn exit(&self, reason: &str) -> Exit {
        match self {
            DiskProblem::Full { .. } => Exit::StorageFull(reason.to_string()),
            _ => Exit::StorageUnusable(reason.to_string()),
        }
    }
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

impl Rocksdb {
    /// From `RAY_gcs_storage_path`. The path must be absolute: rayhead
    /// checks it from its own working directory, the GCS opens it from
    /// its own, and the two must be the same directory.
    pub fn new(path: PathBuf, min_free: Mark) -> Result<Rocksdb, String> {
        if !path.is_absolute() {
            return Err(format!(
                "RAY_gcs_storage_path {:?} is relative; give an absolute path, as KubeRay's /data/gcs",
                crate::redact::line(&path.display().to_string())
            ));
        }
        Ok(Rocksdb { path, min_free })
    }

    /// Whether a GCS can start on the path now: it exists, is a directory
    /// on a writable file system, takes a file (written, fsynced, removed),
    /// and has `min_free` left. Blocking: call it off the runtime.
    pub fn check(&self) -> Result<Disk, DiskProblem> {
        self.check_with(true)
    }

    /// [`Self::check`] without the test write: for the monitor, which
    /// reads the numbers every few seconds and need not fsync to do it (a
    /// read-only remount still shows, in the mount's flags).
    pub fn check_space(&self) -> Result<Disk, DiskProblem> {
        self.check_with(false)
    }

    fn check_with(&self, write: bool) -> Result<Disk, DiskProblem> {
        let path = &self.path;
        let unreadable = |e: &dyn fmt::Display| DiskProblem::Unreadable {
            path: path.clone(),
            error: e.to_string(),
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DiskProblem::Missing(path.clone()))
            }
            Err(e) => return Err(unreadable(&e)),
            Ok(m) if !m.is_dir() => return Err(DiskProblem::NotADirectory(path.clone())),
            Ok(_) => {}
        }
        let vfs = nix::sys::statvfs::statvfs(path.as_path()).map_err(|e| unreadable(&e))?;
        if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Err(DiskProblem::ReadOnly(path.clone()));
        }
        let frag = vfs.fragment_size();
        let disk = Disk {
            total_bytes: (vfs.blocks() as u64).saturating_mul(frag),
            free_bytes: (vfs.blocks_available() as u64).saturating_mul(frag),
            min_free_bytes: None,
        };
        let disk = Disk {
            min_free_bytes: self.min_free.bytes(Some(disk.total_bytes)),
            ..disk
        };
        let min = disk.min_free_bytes.unwrap_or(0);
        if write {
            self.write_probe(disk.free_bytes, min)?;
        }
        if disk.free_bytes < min {
            return Err(DiskProblem::Full {
                path: path.clone(),
                free: disk.free_bytes,
                min,
            });
        }
        Ok(disk)
    }

    /// Writes, fsyncs and removes a file of our own in the directory: the
    /// only sure test that the GCS can write there (permissions, ACLs,
    /// quotas, a file system that says rw but fails writes).
    fn write_probe(&self, free: u64, min: u64) -> Result<(), DiskProblem> {
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
            Some(libc::ENOSPC | libc::EDQUOT) => DiskProblem::Full {
                path,
                free,
                min: min.max(1),
            },
            Some(libc::EACCES | libc::EPERM) => DiskProblem::NotWritable {
                path,
                error: e.to_string(),
            },
            _ => DiskProblem::Unreadable {
                path,
                error: format!("a test write failed: {e}"),
            },
        })
    }

    /// [`Self::check`] (or, without `write`, [`Self::check_space`]) on a
    /// blocking thread, within [`CHECK_TIMEOUT`] and `until`.
    async fn check_async(&self, until: Instant, write: bool) -> Result<Disk, DiskProblem> {
        let me = self.clone();
        let limit = CHECK_TIMEOUT.min(until.saturating_duration_since(Instant::now()));
        let check = move || me.check_with(write);
        match tokio::time::timeout(limit, tokio::task::spawn_blocking(check)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(DiskProblem::Unreadable {
                path: self.path.clone(),
                error: e.to_string(),
            }),
            Err(_) => Err(DiskProblem::Unreadable {
                path: self.path.clone(),
                error: format!(
                    "the check did not finish within {:.1}s (a hung volume?)",
                    limit.as_secs_f64()
                ),
            }),
        }
    }

    /// Waits until [`Self::check`] passes, or `until`. Returns at once on
    /// a problem that waiting will not fix; logs a full disk every few
    /// seconds while it waits.
    pub async fn wait_ready(&self, until: Instant, purpose: &str) -> Result<(), DiskProblem> {
        let mut last_log: Option<Instant> = None;
        let mut seen: Option<DiskProblem> = None;
        loop {
            let problem = match self.check_async(until, true).await {
                Ok(_) => return Ok(()),
                Err(p) => p,
            };
            if problem.is_permanent() {
                return Err(problem);
            }
            // A check cut short by the deadline says less than the one
            // before it (a full disk, say): that one is the reason.
            let problem = match (problem, seen.take()) {
                (DiskProblem::Unreadable { .. }, Some(before))
                    if until.saturating_duration_since(Instant::now()) <= POLL =>
                {
                    before
                }
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

    /// Reads the free space and the database's size into the state every
    /// `interval`; a problem is logged when it appears and when it clears.
    pub async fn monitor(self, interval: Duration, state: State, cancel: CancellationToken) {
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let until = Instant::now() + CHECK_TIMEOUT;
            let checked = tokio::select! {
                r = self.check_async(until, false) => r,
                _ = cancel.cancelled() => return,
            };
            let dir = self.path.clone();
            let used = tokio::task::spawn_blocking(move || used_bytes(&dir))
                .await
                .ok()
                .flatten();
            let problem = checked.as_ref().err().map(|p| p.to_string());
            match (&last, &problem) {
                (_, Some(p)) if last.as_ref() != Some(p) => {
                    tracing::warn!(problem = %p, "the GCS storage is not usable")
                }
                (Some(_), None) => {
                    tracing::info!(path = %self.path.display(), "the GCS storage is usable again")
                }
                _ => {}
            }
            last = problem.clone();
            state.update(|s| {
                if let Some(r) = &mut s.rocksdb {
                    r.last_check = Some(SystemTime::now());
                    r.problem = problem;
                    r.used_bytes = used.or(r.used_bytes);
                    if let Ok(d) = checked {
                        r.free_bytes = Some(d.free_bytes);
                        r.total_bytes = Some(d.total_bytes);
                        r.min_free_bytes = d.min_free_bytes;
                    } else if let Err(DiskProblem::Full { free, min, .. }) = checked {
                        r.free_bytes = Some(free);
                        r.min_free_bytes = Some(min);
                    }
                }
            });
        }
    }
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
/// when the directory cannot be read.
pub fn used_bytes(dir: &Path) -> Option<u64> {
    let mut total = std::fs::symlink_metadata(dir).ok()?.blocks() * 512;
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
