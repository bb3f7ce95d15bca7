//! A state dir's embedded Redis outside a run, for `redis-cleanup
//! --dev-state` and `redis-check --dev-state`.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cluster::{self, Cluster, RedisSource};
use super::kubelet::Pod;
use super::state_dir::{OpenError, StateDir};
use crate::config::Secret;

/// A state dir's embedded Redis for a one-off command (`redis-cleanup
/// --dev-state`, `redis-check --dev-state`): the running one when a
/// `rayhead dev` holds the dir, else started from its data and stopped
/// when this is dropped.
pub struct DevRedis {
    child: Option<std::process::Child>,
    /// Held while the Redis it started runs: no runner starts meanwhile.
    _dir: Option<StateDir>,
    pub address: String,
    pub password: Secret,
    pub namespace: String,
}

impl DevRedis {
    pub fn open(root: &std::path::Path) -> Result<DevRedis, String> {
        let saved = StateDir::saved(root)?;
        if saved.storage == Some(super::Storage::Rocksdb) {
            return Err(format!(
                "the dev cluster in {} keeps its GCS in RocksDB, not Redis: see `rayhead storage-check --dev-state {}`",
                root.display(),
                root.display()
            ));
        }
        let (saved, child, dir) = match StateDir::open(root, false) {
            // A runner holds it: its Redis is up.
            Err(OpenError::Locked(_)) => (saved, None, None),
            Err(e) => return Err(e.to_string()),
            Ok(dir) => {
                let server = cluster::which("redis-server").ok_or_else(|| {
                    format!(
                        "`redis-server` was not found on PATH.\n{}",
                        cluster::install_hint("redis-server")
                    )
                })?;
                let saved = dir.cluster(None)?;
                let cluster = Cluster::new(
                    &dir,
                    saved.clone(),
                    PathBuf::new(),
                    Some(RedisSource::Embedded { server }),
                    None,
                    0,
                )?;
                let mut cmd = cluster.command(Pod::Redis)?;
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start redis-server: {e}"))?;
                (saved, Some(child), Some(dir))
            }
        };
        let r = DevRedis {
            child,
            _dir: dir,
            address: format!("127.0.0.1:{}", saved.ports.redis),
            password: Secret::new(saved.redis_password.clone()),
            namespace: saved.namespace,
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&r.address).is_err() {
            if std::time::Instant::now() > until {
                return Err(format!(
                    "the embedded Redis on {} did not open its port within 10s; see {}",
                    r.address,
                    root.join("logs/redis.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}
