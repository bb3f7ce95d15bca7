//! What `rayhead dev` settles before any process starts: the tools, the
//! GCS's store, the state dir and the cluster's commands. Everything that
//! can be refused is refused here, with the way out.

use super::cluster::{self, Cluster, RedisSource};
use super::state_dir::StateDir;
use super::{Options, Storage};
use crate::config::Config;
use crate::exit::Exit;

/// Everything that can be refused before a process starts.
pub(super) fn prepare(opts: &Options) -> Result<(StateDir, Cluster), Exit> {
    let missing = |tool: &str| {
        Exit::ToolMissing(format!(
            "`{tool}` was not found on PATH.\n{}",
            cluster::install_hint(tool)
        ))
    };
    let ray = cluster::which("ray").ok_or_else(|| missing("ray"))?;
    let storage = choose_storage(opts)?;
    let redis = match &opts.redis_url {
        _ if storage == Storage::Rocksdb => None,
        Some(url) => {
            let mut a = crate::redis::address::parse(url)
                .map_err(|e| Exit::Config(format!("--redis-url {e}")))?;
            // A password kept off the command line (and out of `ps`).
            if a.password.is_none() {
                a.password = std::env::var("REDIS_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(crate::config::Secret::new);
            }
            Some(RedisSource::External(a))
        }
        None => Some(RedisSource::Embedded {
            server: cluster::which("redis-server").ok_or_else(|| missing("redis-server"))?,
        }),
    };
    // --clean forgets the namespace; in a Redis of the user's, its keys
    // stay, and the user should know which.
    let forgotten = match (&redis, opts.clean) {
        (Some(RedisSource::External(_)), true) => StateDir::saved(&opts.state_dir).ok(),
        _ => None,
    };
    let dir =
        StateDir::open(&opts.state_dir, opts.clean).map_err(|e| Exit::Config(e.to_string()))?;
    if let Some(old) = forgotten {
        tracing::warn!(
            namespace = %old.namespace,
            "--clean: the old namespace's keys stay in --redis-url's Redis; remove them with `RAY_external_storage_namespace={} rayhead redis-cleanup`",
            old.namespace
        );
    }
    let saved = dir.cluster(Some(storage)).map_err(Exit::Config)?;
    let cluster = Cluster::new(&dir, saved, ray, redis, opts.head_timeout, opts.workers)
        .map_err(Exit::Config)?;
    cluster
        .head_spec()
        .check()
        .map_err(|e| Exit::Config(format!("the head would refuse its configuration: {e}")))?;
    Ok((dir, cluster))
}

/// The GCS's storage: `--storage`, else what the state dir's cluster
/// used (a switch would start an empty GCS beside the kept one), else
/// Redis when there is one to use, else RocksDB.
fn choose_storage(opts: &Options) -> Result<Storage, Exit> {
    let kept = match opts.clean {
        true => None,
        false => StateDir::kept_storage(&opts.state_dir),
    };
    let name = |s: Storage| match s {
        Storage::Redis => "redis",
        Storage::Rocksdb => "rocksdb",
    };
    match (opts.storage, kept, &opts.redis_url) {
        (Some(Storage::Rocksdb), _, Some(_)) => Err(Exit::Config(
            "--redis-url with --storage rocksdb: the GCS would not use that Redis; drop one".into(),
        )),
        (Some(s), Some(k), _) if s != k => Err(Exit::Config(format!(
            "--storage {}: the cluster in --state-dir {} keeps its GCS state in {} (as its cluster.json or its data says); a switch would start an empty GCS. Pass --storage {}, or --clean to start afresh",
            name(s),
            opts.state_dir.display(),
            name(k),
            name(k)
        ))),
        (Some(s), _, _) => Ok(s),
        (None, Some(Storage::Rocksdb), Some(_)) => Err(Exit::Config(format!(
            "--redis-url: the cluster in --state-dir {} keeps its GCS state in rocksdb (as its cluster.json or its data says); drop --redis-url, or pass --clean to start afresh on Redis",
            opts.state_dir.display()
        ))),
        (None, Some(k), _) => Ok(k),
        (None, None, Some(_)) => Ok(Storage::Redis),
        (None, None, None) if cluster::which("redis-server").is_some() => Ok(Storage::Redis),
        (None, None, None) => {
            tracing::info!("redis-server is not installed: the GCS stores in RocksDB in the state dir (--storage rocksdb); install redis-server or pass --storage redis for Redis");
            Ok(Storage::Rocksdb)
        }
    }
}

/// The runner's own client of the cluster's Redis, to know it answers
/// before the head starts.
pub(super) fn redis_client(cfg: &Config, cluster: &Cluster) -> Result<crate::redis::Redis, String> {
    let Some((address, password, username)) = cluster.redis_address() else {
        return Err("no Redis: the GCS stores in RocksDB".into());
    };
    let mut rc = cfg.redis.clone();
    rc.address = Some(address);
    rc.password = password;
    rc.username = username;
    rc.namespace = Some(cluster.saved.namespace.clone());
    match crate::redis::Redis::from_config(&rc) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("no Redis address".into()),
        Err(e) => Err(format!("--redis-url: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::kubelet::RestartPolicy;

    fn opts(dir: &std::path::Path, storage: Option<Storage>, url: Option<&str>) -> Options {
        Options {
            workers: 0,
            storage,
            redis_url: url.map(str::to_string),
            state_dir: dir.to_path_buf(),
            restart_policy: RestartPolicy::Never,
            head_timeout: None,
            clean: false,
        }
    }

    /// A kept cluster keeps its store: no silent switch to an empty GCS.
    #[test]
    fn the_kept_storage_wins_and_a_switch_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path(), false).unwrap();
        dir.cluster(Some(Storage::Rocksdb)).unwrap();
        drop(dir);
        let o = opts(tmp.path(), None, None);
        assert_eq!(choose_storage(&o).ok(), Some(Storage::Rocksdb));
        let e = choose_storage(&opts(tmp.path(), Some(Storage::Redis), None)).unwrap_err();
        assert!(e.reason().contains("--clean") && e.code() == 64, "{e}");
        let e = choose_storage(&opts(tmp.path(), None, Some("redis://127.0.0.1:1"))).unwrap_err();
        assert!(e.reason().contains("keeps its GCS state in rocksdb"), "{e}");
        let clean = Options {
            clean: true,
            ..opts(tmp.path(), Some(Storage::Redis), None)
        };
        assert_eq!(choose_storage(&clean).ok(), Some(Storage::Redis));
    }

    /// A cluster.json from before the store was recorded: its data says.
    #[test]
    fn an_older_state_dir_is_read_by_its_data() {
        for (data, kept) in [
            ("gcs/kv", Storage::Rocksdb),
            ("redis/appendonlydir", Storage::Redis),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = StateDir::open(tmp.path(), false).unwrap();
            dir.cluster(None).unwrap();
            drop(dir);
            std::fs::create_dir_all(tmp.path().join(data)).unwrap();
            assert_eq!(
                choose_storage(&opts(tmp.path(), None, None)).ok(),
                Some(kept)
            );
            let other = match kept {
                Storage::Redis => Storage::Rocksdb,
                Storage::Rocksdb => Storage::Redis,
            };
            assert!(
                choose_storage(&opts(tmp.path(), Some(other), None)).is_err(),
                "{data}"
            );
        }
    }
}
