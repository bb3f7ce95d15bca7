//! The dev cluster's state directory: what must outlive one `rayhead dev` so
//! that the next one finds the same cluster, as a restarted head pod finds
//! its RayCluster's namespace in Redis.
//!
//! ```text
//! <state-dir>/
//!   lock              flock: one runner per state dir
//!   cluster.json      namespace, Redis password, ports (mode 0600)
//!   redis/            the embedded Redis: redis.conf (0600), its AOF
//!   gcs/              the GCS's RocksDB with --storage rocksdb (a PVC's /data/gcs)
//!   logs/             head.log, worker-N.log, redis.log
//!   head-termination.log
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Storage;
use crate::private_dir;

/// What `cluster.json` keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Saved {
    /// `RAY_external_storage_namespace`: stable, so that a second run finds
    /// the first one's detached actors.
    pub namespace: String,
    /// The embedded Redis's password, generated once.
    pub redis_password: String,
    pub ports: Ports,
    /// Where the GCS keeps its state. Kept so that a later run without
    /// `--storage` resumes the same cluster instead of starting an empty
    /// GCS beside it (`None`: a file from before it was kept).
    #[serde(default)]
    pub storage: Option<Storage>,
}

/// Loopback ports, kept from run to run while they stay free, so that an
/// exported `RAY_ADDRESS` stays right.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ports {
    pub redis: u16,
    pub gcs: u16,
    pub dashboard: u16,
    pub probe: u16,
    pub client: u16,
    pub agent: u16,
    pub metrics: u16,
}

/// Why a state directory could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Another `rayhead dev` holds it: its cluster (and Redis) is up.
    #[error("--state-dir {}: another rayhead dev runs on it; stop that one, or give another --state-dir", .0.display())]
    Locked(PathBuf),
    #[error("{0}")]
    Other(String),
}

impl From<String> for OpenError {
    fn from(e: String) -> OpenError {
        OpenError::Other(e)
    }
}

/// An open, locked state directory.
pub struct StateDir {
    pub root: PathBuf,
    /// Held for the run: the flock ends with the process.
    _lock: File,
}

impl StateDir {
    /// Creates (or, with `clean`, empties) and locks `root`.
    pub fn open(root: &Path, clean: bool) -> Result<StateDir, OpenError> {
        let root = std::path::absolute(root)
            .map_err(|e| format!("--state-dir {}: {e}", root.display()))?;
        let uid = private_dir::my_uid();
        // The state dir holds the Redis password, the AOF (job data) and
        // the logs: 0700, whatever the umask. Its parents are the user's.
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("--state-dir {}: {e}", parent.display()))?;
        }
        private_dir::make_or_close(&root, uid).map_err(|e| format!("--state-dir {e}"))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("--state-dir {}: {e}", lock_path.display()))?;
        // SAFETY: flock on an fd we own; non-blocking.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OpenError::Locked(root));
        }
        if clean {
            for entry in fs::read_dir(&root).map_err(|e| format!("--state-dir: {e}"))? {
                let entry = entry.map_err(|e| format!("--state-dir: {e}"))?;
                if entry.file_name() == "lock" {
                    continue;
                }
                let p = entry.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|e| format!("--clean: cannot remove {}: {e}", p.display()))?;
            }
        }
        for sub in ["redis", "logs", "gcs"] {
            private_dir::make_or_close(&root.join(sub), uid)
                .map_err(|e| format!("--state-dir {e}"))?;
        }
        Ok(StateDir { root, _lock: lock })
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    /// The saved cluster, or a new one; ports that are taken now are
    /// replaced by free ones, and `storage`, when given, is recorded. Saved
    /// again either way.
    pub fn cluster(&self, storage: Option<Storage>) -> Result<Saved, String> {
        let path = self.join("cluster.json");
        let old = match read(&path) {
            Ok(Some(text)) => Some(serde_json::from_str::<Saved>(&text).map_err(|e| {
                format!(
                    "{}: {e}; remove it, or start afresh with --clean",
                    path.display()
                )
            })?),
            Ok(None) => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut taken = Vec::new();
        let mut port = |kept: Option<u16>| -> Result<u16, String> {
            let p = pick_port(kept, &taken)?;
            taken.push(p);
            Ok(p)
        };
        let o = old.as_ref().map(|s| &s.ports);
        let ports = Ports {
            redis: port(o.map(|p| p.redis))?,
            gcs: port(o.map(|p| p.gcs))?,
            dashboard: port(o.map(|p| p.dashboard))?,
            probe: port(o.map(|p| p.probe))?,
            client: port(o.map(|p| p.client))?,
            agent: port(o.map(|p| p.agent))?,
            metrics: port(o.map(|p| p.metrics))?,
        };
        let saved = match old {
            Some(s) => Saved {
                ports,
                storage: storage.or(s.storage),
                ..s
            },
            None => Saved {
                namespace: format!("rayhead-dev-{}", random_hex(4)?),
                redis_password: random_hex(16)?,
                ports,
                storage,
            },
        };
        let text = serde_json::to_string_pretty(&saved).map_err(|e| e.to_string())?;
        write_private(&path, text.as_bytes())?;
        Ok(saved)
    }

    /// The store the cluster in `root` keeps its GCS in: as recorded, or,
    /// for a `cluster.json` from before it was recorded, as its data shows
    /// (a RocksDB in `gcs/kv`, a Redis's files in `redis/`). `None`: a new
    /// state dir, or one with no GCS data yet.
    pub fn kept_storage(root: &Path) -> Option<Storage> {
        let saved = Self::saved(root).ok()?;
        let has_entries = |d: PathBuf| fs::read_dir(d).is_ok_and(|mut e| e.next().is_some());
        saved.storage.or_else(|| {
            if root.join("gcs").join("kv").is_dir() {
                Some(Storage::Rocksdb)
            } else if has_entries(root.join("redis")) {
                Some(Storage::Redis)
            } else {
                None
            }
        })
    }

    /// The saved cluster as it is, for `redis-cleanup --dev-state`.
    pub fn saved(root: &Path) -> Result<Saved, String> {
        let path = root.join("cluster.json");
        match read(&path) {
            Ok(Some(text)) => {
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            Ok(None) => Err(format!(
                "{}: no such file: is {} a rayhead dev state dir?",
                path.display(),
                root.display()
            )),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

fn read(path: &Path) -> std::io::Result<Option<String>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a file only its owner can read: it holds the Redis password.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `kept` if it is free now, else a free loopback port the kernel picks.
fn pick_port(kept: Option<u16>, taken: &[u16]) -> Result<u16, String> {
    if let Some(p) = kept.filter(|p| *p != 0 && !taken.contains(p)) {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    for _ in 0..32 {
        let l = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
        let p = l.local_addr().map_err(|e| e.to_string())?.port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err("cannot find a free loopback port".into())
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_kept_and_its_secret_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open(tmp.path(), false)
            .unwrap()
            .cluster(None)
            .unwrap();
        let mode = fs::metadata(tmp.path().join("cluster.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = StateDir::open(tmp.path(), false)
            .unwrap()
            .cluster(None)
            .unwrap();
        assert_eq!(first, second, "namespace, password and free ports are kept");
        let dir = StateDir::open(tmp.path(), false).unwrap();
        assert_eq!(
            dir.cluster(Some(Storage::Rocksdb)).unwrap().storage,
            Some(Storage::Rocksdb)
        );
        assert_eq!(
            dir.cluster(None).unwrap().storage,
            Some(Storage::Rocksdb),
            "kept"
        );
        drop(dir);
        let third = StateDir::open(tmp.path(), true)
            .unwrap()
            .cluster(None)
            .unwrap();
        assert_ne!(first.namespace, third.namespace, "--clean starts afresh");
    }

    #[test]
    fn a_second_runner_on_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = StateDir::open(tmp.path(), false).unwrap();
        let e = StateDir::open(tmp.path(), false).err().unwrap();
        assert!(matches!(e, OpenError::Locked(_)), "{e}");
        assert!(
            e.to_string().contains("another rayhead dev runs on it"),
            "{e}"
        );
    }

    #[test]
    fn a_corrupt_cluster_file_names_itself_and_the_way_out() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cluster.json"), "{").unwrap();
        let e = StateDir::open(tmp.path(), false)
            .unwrap()
            .cluster(None)
            .unwrap_err();
        assert!(e.contains("cluster.json") && e.contains("--clean"), "{e}");
    }

    #[test]
    fn a_taken_port_is_replaced() {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let p = l.local_addr().unwrap().port();
        assert_ne!(pick_port(Some(p), &[]).unwrap(), p);
        drop(l);
        assert_eq!(pick_port(Some(p), &[]).unwrap(), p);
        assert_ne!(pick_port(Some(p), &[p]).unwrap(), p);
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The state dir, logs/ and redis/ (the AOF holds job data) are 0700
    /// whatever the umask; one of an earlier run with 0755 is closed.
    #[test]
    fn the_state_dir_and_its_dirs_are_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        drop(StateDir::open(&root, false).unwrap());
        for d in ["", "logs", "redis"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        for d in ["", "logs", "redis"] {
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        drop(StateDir::open(&root, false).unwrap());
        for d in ["", "logs", "redis"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
    }

    /// A state dir, or a dir in it, that others could write, or that is
    /// another user's, is refused with the path and the reason.
    #[test]
    fn a_state_dir_others_could_fill_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&root, false).err().unwrap().to_string();
        assert!(e.contains("mode 0777") && e.contains("--state-dir"), "{e}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(root.join("logs")).unwrap();
        fs::set_permissions(root.join("logs"), fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&root, false).err().unwrap().to_string();
        assert!(e.contains("logs") && e.contains("mode 0777"), "{e}");
        if nix::unistd::geteuid().is_root() {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
            let e = StateDir::open(&theirs, false).err().unwrap().to_string();
            assert!(e.contains("owned by uid 1000"), "{e}");
        }
    }
}
