//! What can be wrong with the storage, in words a person acts on: each
//! problem's message, whether waiting can fix it, and its exit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exit::Exit;

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
    /// `gcs.storage-min-free` as large as the volume: no disk could ever
    /// have it free. A configuration error, not a wait.
    MarkUnreachable {
        path: PathBuf,
        min: u64,
        total: u64,
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
            DiskProblem::MarkUnreachable { path, min, total } => write!(
                f,
                "gcs.storage-min-free ({}) is as large as the volume of the GCS storage at {} ({}): it can never be free; lower it",
                human(*min),
                shown(path),
                human(*total)
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
                | DiskProblem::MarkUnreachable { .. }
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
            DiskProblem::MarkUnreachable { .. } => Exit::Config(reason.to_string()),
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
