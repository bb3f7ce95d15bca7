//! Where the GCS keeps its state, the one thing that makes an in-place
//! restart worth doing: an external Redis, or embedded RocksDB on a volume.
//!
//! Each backend is one module with the same four parts: how Ray's settings
//! select it ([`resolve`]), the gate that must pass before a GCS starts
//! ([`Store::wait_ready`]), the monitor that keeps its `/status` section and
//! metrics current ([`Store::monitor`]), and the state section it fills. A
//! third backend is a third module and a variant here.

pub mod redis;
pub mod rocksdb;

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Env};
use crate::exit::Exit;
use crate::state::{Backend, Snapshot, State};
pub use rocksdb::{DiskProblem, Rocksdb};

/// The GCS's fault-tolerant storage. `None` where it has none (memory).
#[derive(Clone)]
pub enum Store {
    Redis(Box<crate::redis::Redis>),
    Rocksdb(Rocksdb),
}

/// Why a gate did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Redis(crate::redis::PingError),
    #[error("{0}")]
    Disk(DiskProblem),
}

impl GateError {
    /// An error that waiting will not fix.
    pub fn is_permanent(&self) -> bool {
        match self {
            GateError::Redis(e) => e.is_permanent(),
            GateError::Disk(p) => p.is_permanent(),
        }
    }
}

impl Store {
    pub fn backend(&self) -> Backend {
        match self {
            Store::Redis(_) => Backend::Redis,
            Store::Rocksdb(_) => Backend::Rocksdb,
        }
    }

    /// The store in words, for logs and exit reasons; never a secret.
    pub fn describe(&self) -> String {
        match self {
            Store::Redis(r) => format!("Redis at {}", r.address),
            Store::Rocksdb(d) => format!("RocksDB at {}", rocksdb::shown(&d.path)),
        }
    }

    /// The state snapshot of a head whose GCS listens on `gcs_address`.
    pub fn snapshot(store: Option<&Store>, gcs_address: String) -> Snapshot {
        match store {
            None => Snapshot::ray_head(gcs_address, None),
            Some(Store::Redis(r)) => Snapshot::ray_head(gcs_address, Some(r.address.to_string())),
            Some(Store::Rocksdb(d)) => {
                Snapshot::ray_head(gcs_address, None).with_rocksdb(rocksdb::shown(&d.path))
            }
        }
    }

    /// Waits until a GCS can start on this store, or `until`: Redis answers
    /// an authenticated PING; the RocksDB path is a writable directory with
    /// room. Returns at once on what waiting cannot fix.
    pub async fn wait_ready(&self, until: Instant, purpose: &str) -> Result<(), GateError> {
        match self {
            Store::Redis(r) => r
                .wait_ready(until, purpose)
                .await
                .map(|_| ())
                .map_err(GateError::Redis),
            Store::Rocksdb(d) => d.wait_ready(until, purpose).await.map_err(GateError::Disk),
        }
    }

    /// Keeps the store's section of the state current until `cancel`.
    pub async fn monitor(self, cfg: Config, state: State, cancel: CancellationToken) {
        match self {
            Store::Redis(r) => {
                redis::monitor(
                    *r,
                    cfg.redis.namespace.clone(),
                    cfg.redis.probe_interval,
                    state,
                    cancel,
                )
                .await
            }
            Store::Rocksdb(d) => {
                d.monitor(cfg.gcs.storage_check_interval, state, cancel)
                    .await
            }
        }
    }

    /// What the supervisor's decisions need to know of this store.
    pub fn info(&self, cfg: &Config) -> StoreInfo {
        StoreInfo {
            backend: self.backend(),
            description: self.describe(),
            startup_timeout: match self {
                Store::Redis(_) => cfg.redis.startup_timeout,
                Store::Rocksdb(_) => cfg.gcs.storage_startup_timeout,
            },
        }
    }
}

/// The store as the state machine knows it: no handle, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    pub backend: Backend,
    /// [`Store::describe`].
    pub description: String,
    /// How long the start gate waits.
    pub startup_timeout: Duration,
}

impl StoreInfo {
    /// A Redis at `address` (without its password), as tests build it.
    #[cfg(test)]
    pub fn redis(address: &str, startup_timeout: Duration) -> StoreInfo {
        StoreInfo {
            backend: Backend::Redis,
            description: format!("Redis at {address}"),
            startup_timeout,
        }
    }

    /// The exit when the start gate fails: the store is unusable, so
    /// `ray start` would only fail later and less clearly.
    pub fn start_gate_exit(&self, e: &GateError) -> Exit {
        let what = &self.description;
        let timeout = humantime::format_duration(self.startup_timeout);
        match e {
            GateError::Redis(p) if p.is_permanent() => Exit::RedisAuth(format!(
                "{what} rejected the credentials ({p}); check REDIS_PASSWORD and REDIS_USERNAME"
            )),
            GateError::Redis(p) => Exit::RedisUnreachable(format!(
                "{what} did not answer within redis.startup-timeout ({timeout}): {p}"
            )),
            GateError::Disk(p) if p.is_permanent() => p.exit(&format!("the GCS cannot start: {p}")),
            GateError::Disk(p) => p.exit(&format!(
                "the GCS cannot start: {p}, for all of gcs.storage-startup-timeout ({timeout})"
            )),
        }
    }
}

/// The store the GCS will use, resolved as Ray resolves it: `gcs_storage`
/// from the start command's `--system-config` over `RAY_gcs_storage` over
/// `memory`; `rocksdb` needs `gcs_storage_path` the same way; otherwise a
/// Redis address (`redis.address`, `RAY_REDIS_ADDRESS`) means Redis.
pub fn resolve(
    cfg: &Config,
    system_config: Option<&str>,
    env: &dyn Env,
) -> Result<Option<Store>, String> {
    let sys: Option<serde_json::Map<String, serde_json::Value>> = match system_config {
        None => None,
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            Ok(_) => {
                return Err("ray.start-command: --system-config is not a JSON object".to_string())
            }
            Err(e) => {
                return Err(format!(
                    "ray.start-command: --system-config is not valid JSON ({e})"
                ))
            }
        },
    };
    let setting = |name: &str| -> Result<Option<(String, String)>, String> {
        if let Some(v) = sys.as_ref().and_then(|m| m.get(name)) {
            return match v.as_str() {
                Some(s) => Ok(Some((s.to_string(), format!("--system-config's {name}")))),
                None => Err(format!(
                    "ray.start-command: --system-config's {name} is not a string"
                )),
            };
        }
        let var = format!("RAY_{name}");
        match env.var(&var) {
            Ok(v) => Ok(v.map(|v| (v, var))),
            Err(e) => Err(e.to_string()),
        }
    };
    let backend = setting("gcs_storage")?;
    match backend.as_ref().map(|(v, from)| (v.as_str(), from)) {
        Some(("rocksdb", from)) => {
            let path = match setting("gcs_storage_path")? {
                Some((p, _)) if !p.trim().is_empty() => p,
                _ => {
                    return Err(format!(
                        "{from} is rocksdb but gcs_storage_path (RAY_gcs_storage_path, or --system-config's) is unset or empty: Ray refuses to start without the database's directory"
                    ))
                }
            };
            if cfg.redis.address.is_some() {
                return Err(format!(
                    "{from} is rocksdb, and redis.address (RAY_REDIS_ADDRESS) is set too: the GCS stores in RocksDB, so the Redis would only mislead the probes; unset one"
                ));
            }
            Ok(Some(Store::Rocksdb(Rocksdb::new(
                path.into(),
                cfg.gcs.storage_min_free,
            )?)))
        }
        Some(("redis", from)) if cfg.redis.address.is_none() => Err(format!(
            "{from} is redis but no Redis address is set (redis.address, RAY_REDIS_ADDRESS): the GCS would keep its state in memory, with no fault tolerance"
        )),
        None | Some(("memory" | "redis", _)) => {
            Ok(crate::redis::Redis::from_config(&cfg.redis)?.map(|r| Store::Redis(Box::new(r))))
        }
        Some((other, from)) => Err(format!(
            "{from} is {:?}: Ray 2.60 knows memory and rocksdb (with Redis chosen by RAY_REDIS_ADDRESS)",
            crate::redact::line(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Inputs};

    fn cfg(env: &[(&str, &str)]) -> Config {
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&Inputs::default(), &env).expect("config")
    }

    fn resolved(sys: Option<&str>, env: &[(&str, &str)]) -> Result<Option<Backend>, String> {
        let map: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(&cfg(env), sys, &map).map(|s| s.map(|s| s.backend()))
    }

    #[test]
    fn ray_resolution_order() {
        assert_eq!(resolved(None, &[]), Ok(None));
        let e = resolved(None, &[("RAY_gcs_storage", "redis")]).unwrap_err();
        assert!(
            e.contains("RAY_gcs_storage is redis") && e.contains("RAY_REDIS_ADDRESS"),
            "{e}"
        );
        assert_eq!(resolved(None, &[("RAY_gcs_storage", "memory")]), Ok(None));
        assert_eq!(
            resolved(None, &[("RAY_REDIS_ADDRESS", "127.0.0.1:1")]),
            Ok(Some(Backend::Redis))
        );
        let rocks = [
            ("RAY_gcs_storage", "rocksdb"),
            ("RAY_gcs_storage_path", "/data/gcs"),
        ];
        assert_eq!(resolved(None, &rocks), Ok(Some(Backend::Rocksdb)));
        // --system-config beats the env, both ways.
        assert_eq!(
            resolved(Some(r#"{"gcs_storage":"memory"}"#), &rocks),
            Ok(None)
        );
        assert_eq!(
            resolved(
                Some(r#"{"gcs_storage":"rocksdb","gcs_storage_path":"/x"}"#),
                &[]
            ),
            Ok(Some(Backend::Rocksdb))
        );
        assert_eq!(
            resolved(
                Some(r#"{"gcs_storage":"rocksdb"}"#),
                &[("RAY_gcs_storage_path", "/x")]
            ),
            Ok(Some(Backend::Rocksdb))
        );
        assert_eq!(
            resolved(Some(r#"{"other_key":1}"#), &rocks),
            Ok(Some(Backend::Rocksdb))
        );
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let err = |sys: Option<&str>, env: &[(&str, &str)]| resolved(sys, env).unwrap_err();
        assert!(err(None, &[("RAY_gcs_storage", "rocksdb")]).contains("RAY_gcs_storage_path"));
        assert!(err(
            None,
            &[
                ("RAY_gcs_storage", "rocksdb"),
                ("RAY_gcs_storage_path", " ")
            ]
        )
        .contains("unset or empty"));
        assert!(err(None, &[("RAY_gcs_storage", "Rocks")]).contains("RAY_gcs_storage is \"Rocks\""));
        assert!(err(
            None,
            &[
                ("RAY_gcs_storage", "rocksdb"),
                ("RAY_gcs_storage_path", "/d"),
                ("RAY_REDIS_ADDRESS", "r:1")
            ]
        )
        .contains("unset one"));
        assert!(err(Some("{"), &[]).contains("not valid JSON"));
        assert!(err(Some("[1]"), &[]).contains("not a JSON object"));
        assert!(err(Some(r#"{"gcs_storage":1}"#), &[]).contains("not a string"));
        assert!(err(
            Some(r#"{"gcs_storage":"rocksdb"}"#),
            &[("RAY_gcs_storage", "memory")]
        )
        .contains("--system-config's gcs_storage is rocksdb"));
    }

    #[test]
    fn a_relative_path_is_refused() {
        let e = resolved(
            None,
            &[
                ("RAY_gcs_storage", "rocksdb"),
                ("RAY_gcs_storage_path", "data/gcs"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }
}
