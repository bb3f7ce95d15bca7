//! `rayhead storage-check`: the GCS's storage as the head would resolve it,
//! checked as the head's gate checks it; and the Redis report that
//! `redis-check` prints too.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use super::{Cli, ConfigArgs};
use crate::config::{Config, ProcessEnv};
use crate::exit;
use crate::memory::Mark;
use crate::storage::rocksdb::{human, Look, Rocksdb, CHECK_TIMEOUT};
use crate::storage::Store;

#[derive(Debug, Args)]
pub(super) struct StorageCheckArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Check the storage of `rayhead dev --state-dir DIR`: its RocksDB (DIR/gcs) when it holds a database, else its embedded Redis.
    #[arg(long, value_name = "DIR")]
    dev_state: Option<std::path::PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// What the RocksDB check found, for people and for `--json`.
#[derive(Debug, Serialize)]
struct RocksdbReport {
    backend: &'static str,
    path: String,
    usable: bool,
    problem: Option<String>,
    free_bytes: Option<u64>,
    total_bytes: Option<u64>,
    free_inodes: Option<u64>,
    min_free_bytes: Option<u64>,
    used_bytes: Option<u64>,
    /// Ray's `session_name` marker: the session a restarted head resumes.
    session_name: Option<String>,
}

pub(super) fn check(cli: &Cli, args: &StorageCheckArgs) -> u8 {
    // A dev state dir's storage as its cluster keeps it.
    let dev_db = args.dev_state.as_ref().map(|d| d.join("gcs"));
    if let Some(dir) = &args.dev_state {
        // Checked first: a path that is no state dir is named as such.
        if let Err(e) = crate::dev::state_dir::StateDir::saved(dir) {
            crate::logging::err(&format!("rayhead storage-check: --dev-state {e}\n"));
            return exit::CONFIG;
        }
        let kept = crate::dev::state_dir::StateDir::kept_storage(dir);
        let redis = kept != Some(crate::dev::Storage::Rocksdb);
        if redis {
            let dev = super::DevStateArgs {
                dev_state: Some(dir.clone()),
            };
            let json = args.json;
            return super::redis_command(cli, &args.config, &dev, |redis, cfg| {
                redis_report(redis, cfg, json, 0)
            });
        }
    }
    let cfg = match cli.load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::err(&format!("rayhead: {e}"));
            return exit::CONFIG;
        }
    };
    crate::logging::init(&cfg.log.level, cfg.log.format);
    let resolved = match dev_db {
        Some(db) => Rocksdb::new(absolute(&db), cfg.gcs.storage_min_free)
            .map(|d| Some(Store::Rocksdb(d)))
            .map_err(|e| format!("--dev-state: {e}")),
        None => resolve(&cfg),
    };
    let store = match resolved {
        Ok(Some(s)) => s,
        Ok(None) => {
            crate::logging::err("rayhead storage-check: the GCS stores in memory (no RAY_gcs_storage=rocksdb, no RAY_REDIS_ADDRESS): there is no fault tolerance to check\n");
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::err(&format!("rayhead storage-check: {e}\n"));
            return exit::CONFIG;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::logging::err(&format!("rayhead: cannot start a runtime: {e}\n"));
            return exit::INTERNAL;
        }
    };
    let code = match store {
        Store::Rocksdb(db) => rt.block_on(rocksdb_report(&db, args.json)),
        Store::Redis(redis) => rt.block_on(redis_report(*redis, cfg, args.json, 0)),
    };
    // A check stuck on a hung volume is a thread of its own: not waited for.
    rt.shutdown_background();
    code
}

/// `p` from the working directory, as the user typed it relative.
fn absolute(p: &Path) -> std::path::PathBuf {
    std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
}

/// The store as `rayhead run` resolves it: with `ray.start-command`'s
/// `--system-config` when there is a start command.
fn resolve(cfg: &Config) -> Result<Option<Store>, String> {
    match &cfg.ray.start_command {
        Some(text) => crate::ray::Plan::new(cfg, crate::ray::StartFrom::Text(text), &ProcessEnv)
            .map(|p| p.store),
        None => crate::storage::resolve(cfg, None, &ProcessEnv),
    }
}

/// Exit 0: a GCS could start there now; 1: not. Within the gate's time
/// limit: a hung volume is reported, not waited on.
async fn rocksdb_report(db: &Rocksdb, json: bool) -> u8 {
    let reading = db.read(Look::Report, CHECK_TIMEOUT).await;
    let disk = reading.disk;
    let session = session_name(&db.path);
    let r = RocksdbReport {
        backend: "rocksdb",
        path: crate::storage::rocksdb::shown(&db.path),
        usable: reading.problem.is_none(),
        problem: reading.problem.as_ref().map(ToString::to_string),
        free_bytes: disk.map(|d| d.free_bytes),
        total_bytes: disk.map(|d| d.total_bytes),
        free_inodes: disk.and_then(|d| d.free_inodes),
        min_free_bytes: disk.and_then(|d| d.min_free_bytes),
        used_bytes: reading.used_bytes,
        session_name: session.clone().ok().flatten(),
    };
    if json {
        crate::logging::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        ));
    } else {
        crate::logging::out(&rocksdb_table(&r, disk.is_some(), db.min_free, &session));
    }
    u8::from(!r.usable)
}

/// The report for people: one row a line; "unknown" where the volume
/// could not be read, and the mark as configured when its size is unknown.
fn rocksdb_table(
    r: &RocksdbReport,
    read: bool,
    mark: Mark,
    session: &Result<Option<String>, String>,
) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "unknown".into(), human);
    let rows = [
        ("backend", "rocksdb".to_string()),
        ("path", r.path.clone()),
        (
            "usable",
            match &r.problem {
                None => "yes".into(),
                Some(p) => format!("no: {p}"),
            },
        ),
        ("free", opt(r.free_bytes)),
        ("size", opt(r.total_bytes)),
        (
            "inodes",
            match (read, r.free_inodes) {
                (false, _) => "unknown".into(),
                (true, None) => "no fixed count".into(),
                (true, Some(n)) => format!("{n} free"),
            },
        ),
        (
            "min free",
            match (r.min_free_bytes, mark) {
                (Some(b), _) => human(b),
                (None, Mark::Off) => "off".into(),
                (None, Mark::Bytes(b)) => human(b),
                // Without the volume's size, the share as configured.
                (None, Mark::PercentOfLimit(p)) => format!("{p}% of the volume"),
            },
        ),
        ("database", opt(r.used_bytes)),
        (
            "session",
            match session {
                Ok(Some(name)) => name.clone(),
                Ok(None) => "none yet".into(),
                Err(e) => format!("unknown: {e}"),
            },
        ),
    ];
    rows.iter().map(|(k, v)| format!("{k:<10} {v}\n")).collect()
}

/// Ray's `session_name` marker beside the database: `None` when there is
/// none, an error when it is there but cannot be read as one line of text.
fn session_name(dir: &Path) -> Result<Option<String>, String> {
    let bytes = match std::fs::read(dir.join("session_name")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("session_name cannot be read: {e}")),
    };
    let text = String::from_utf8(bytes).map_err(|_| "session_name is not text".to_string())?;
    let line = text.trim();
    match !line.is_empty() && line.len() <= 200 && !line.contains(char::is_control) {
        true => Ok(Some(line.to_string())),
        false => Err("session_name is not one line of text".into()),
    }
}

/// `redis-check`'s report: PING, role, persistence, eviction, memory, the
/// namespace's tables; with `pings`, the round trip's median and p99.
pub(super) async fn redis_report(
    redis: crate::redis::Redis,
    cfg: Config,
    json: bool,
    pings: u32,
) -> u8 {
    let mut f = redis.findings(cfg.redis.namespace.as_deref()).await;
    if f.up && pings > 0 {
        let mut rtts = Vec::new();
        for _ in 0..pings {
            match redis.ping().await {
                Ok(d) => rtts.push(d.as_secs_f64()),
                Err(e) => f.notes.push(format!("a repeated PING failed: {e}")),
            }
        }
        rtts.sort_by(f64::total_cmp);
        if !rtts.is_empty() {
            let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
            f.ping_p50_seconds = Some(at(0.5));
            f.ping_p99_seconds = Some(at(0.99));
        }
    }
    if json {
        crate::logging::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&f).unwrap_or_default()
        ));
    } else {
        crate::logging::out(&f.render());
    }
    f.exit_code()
}
