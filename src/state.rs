//! The shared state snapshot: what the supervisor knows, for `/status`,
//! `/readyz` and the metrics.
//!
//! It sits below both the supervisors (`init`, `ray`) and the probe server,
//! so that the probe serves any supervisor and imports none. The supervisor
//! writes it, and each storage monitor its own section (`redis`, `rocksdb`);
//! readers borrow the latest snapshot without any I/O.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Running,
    Recovering,
    Stopping,
    Exiting,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Running,
        Phase::Recovering,
        Phase::Stopping,
        Phase::Exiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Recovering => "recovering",
            Phase::Stopping => "stopping",
            Phase::Exiting => "exiting",
        }
    }
}

/// What rayhead supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Supervising {
    /// A plain command under the init.
    Command,
    /// A Ray head.
    RayHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcsHealth {
    Unknown,
    Serving,
    NotServing,
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    Running,
    Exited,
    /// Started again in place, not yet healthy.
    Restarting,
}

impl ChildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildStatus::Running => "running",
            ChildStatus::Exited => "exited",
            ChildStatus::Restarting => "restarting",
        }
    }
}

/// One supervised process: the command, or a Ray daemon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChildState {
    pub pid: Option<i32>,
    pub state: ChildStatus,
    /// How it last ended, if it did.
    pub last_exit: Option<String>,
    /// Whether `/readyz` requires it running and healthy.
    pub required: bool,
    /// The last health check's verdict (`None`: not checked).
    pub healthy: Option<bool>,
    /// What answered the last check, or why it failed.
    pub health: Option<String>,
    /// Since when its checks fail.
    #[serde(serialize_with = "opt_time")]
    pub unhealthy_since: Option<SystemTime>,
    /// In-place restarts.
    pub restarts: u64,
    /// Its resident set at the last memory sample.
    pub rss_bytes: Option<u64>,
    /// Since when its checks fail, on the monotonic clock.
    #[serde(skip)]
    pub unhealthy_at: Option<Instant>,
    /// How long it may fail its checks before `/readyz` fails.
    #[serde(skip)]
    pub unready_after: Duration,
}

impl ChildState {
    /// Whether, at `now`, it counts as unhealthy for readiness: failing for
    /// longer than its threshold.
    pub fn unhealthy_at(&self, now: Instant) -> Option<Duration> {
        let since = self.unhealthy_at?;
        let failing = now.saturating_duration_since(since);
        (failing >= self.unready_after).then_some(failing)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcsState {
    pub health: GcsHealth,
    pub address: String,
    pub restarts: u64,
    /// Restarts in a row that failed (never SERVING, or lost again within
    /// gcs.stable-after); the crash-loop guard's count.
    pub consecutive_failures: u32,
    #[serde(serialize_with = "opt_time")]
    pub last_loss: Option<SystemTime>,
    pub last_loss_reason: Option<String>,
    #[serde(serialize_with = "opt_time")]
    pub last_recovery: Option<SystemTime>,
    pub last_recovery_seconds: Option<f64>,
    /// While recovering: when rayhead gives up.
    #[serde(serialize_with = "opt_time")]
    pub deadline: Option<SystemTime>,
    pub last_check_seconds: Option<f64>,
}

/// What the Redis probe last found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisState {
    /// Without any password.
    pub address: String,
    /// `None` until the first probe.
    pub up: Option<bool>,
    pub ping_seconds: Option<f64>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "opt_time")]
    pub last_probe: Option<SystemTime>,
    /// `master`, or `slave` for a replica; `None` until known.
    pub role: Option<String>,
    /// The namespace's GCS tables and their field counts (`None`: absent).
    pub tables: BTreeMap<String, Option<u64>>,
    pub warnings: Vec<String>,
    /// What the probe could not check (a forbidden command), and why.
    pub notes: Vec<String>,
}

/// Where the GCS keeps its state, as Ray resolves it (`RAY_gcs_storage`,
/// `--system-config`, `RAY_REDIS_ADDRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In gcs_server's memory: lost with it, so no fault tolerance.
    Memory,
    /// An external Redis.
    Redis,
    /// Embedded RocksDB on a volume (`RAY_gcs_storage_path`).
    Rocksdb,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Rocksdb => "rocksdb",
        }
    }
}

/// What the RocksDB storage check last found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocksdbState {
    /// `RAY_gcs_storage_path`.
    pub path: String,
    /// Bytes the database directory takes on disk.
    pub used_bytes: Option<u64>,
    /// Bytes an unprivileged writer can still use on its file system.
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Files that can still be made; `None`: no fixed count, or not read.
    pub free_inodes: Option<u64>,
    /// `gcs.storage-min-free` in bytes now; `None`: off.
    pub min_free_bytes: Option<u64>,
    /// What stops the GCS from writing, when something does: readiness
    /// fails with it.
    pub problem: Option<String>,
    /// Space below `gcs.storage-min-free` but not gone: the GCS that runs
    /// still writes, but one lost now would wait at the gate for space.
    pub warning: Option<String>,
    #[serde(serialize_with = "opt_time")]
    pub last_check: Option<SystemTime>,
}

/// The head's memory as rayhead last sampled it, and what it did about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryState {
    /// `v1` or `v2`; `None`: no memory cgroup was found.
    pub cgroup: Option<&'static str>,
    /// Bytes charged to the container's cgroup: what the OOM killer weighs.
    pub container_bytes: Option<u64>,
    /// The container's effective limit; `None`: no limit.
    pub container_limit_bytes: Option<u64>,
    /// OOM kills in the container's cgroup, where the kernel counts them.
    pub oom_kills: Option<u64>,
    /// `memory.gcs-high-water` as configured.
    pub gcs_high_water: String,
    /// That mark in bytes now; `None`: no mark applies.
    pub gcs_high_water_bytes: Option<u64>,
    /// Since when gcs_server's RSS has been over the mark.
    #[serde(serialize_with = "opt_time")]
    pub gcs_over_since: Option<SystemTime>,
    /// gcs_server restarts in place for its memory (not failures).
    pub gcs_restarts: u64,
    pub last_restart_reason: Option<String>,
    /// Set when a restart did not bring the GCS under the mark: rayhead
    /// restarts it for memory no more, and says why.
    pub gave_up: Option<String>,
    /// Why the last sample could not read the cgroup.
    pub error: Option<String>,
}

impl MemoryState {
    pub fn new(gcs_high_water: String) -> MemoryState {
        MemoryState {
            cgroup: None,
            container_bytes: None,
            container_limit_bytes: None,
            oom_kills: None,
            gcs_high_water,
            gcs_high_water_bytes: None,
            gcs_over_since: None,
            gcs_restarts: 0,
            last_restart_reason: None,
            gave_up: None,
            error: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    pub version: &'static str,
    #[serde(serialize_with = "time")]
    pub started_at: SystemTime,
    pub supervising: Supervising,
    /// The supervised processes, by name.
    pub daemons: BTreeMap<&'static str, ChildState>,
    /// The GCS, when a Ray head is supervised.
    pub gcs: Option<GcsState>,
    pub fault_tolerant: bool,
    /// The GCS's storage backend, when a Ray head is supervised.
    pub gcs_storage: Option<Backend>,
    pub redis: Option<RedisState>,
    pub rocksdb: Option<RocksdbState>,
    /// The head's memory, when a Ray head is supervised.
    pub memory: Option<MemoryState>,
    /// Every in-place recovery's duration, for the metrics' histogram.
    #[serde(skip)]
    pub recoveries: Vec<f64>,
    pub last_reason: Option<String>,
    /// Bumped by the supervisor loop; `/livez` fails when it is stale.
    #[serde(skip)]
    pub heartbeat: Instant,
    /// Log and output lines lost to a blocked or closed stdout or stderr,
    /// as of the last heartbeat: the probe reads no global.
    #[serde(skip)]
    pub log_lines_dropped: u64,
}

impl Snapshot {
    /// For a plain command.
    pub fn command() -> Snapshot {
        Snapshot {
            phase: Phase::Starting,
            version: env!("CARGO_PKG_VERSION"),
            started_at: SystemTime::now(),
            supervising: Supervising::Command,
            daemons: BTreeMap::new(),
            gcs: None,
            fault_tolerant: false,
            gcs_storage: None,
            redis: None,
            rocksdb: None,
            memory: None,
            recoveries: Vec::new(),
            last_reason: None,
            heartbeat: Instant::now(),
            log_lines_dropped: 0,
        }
    }

    /// For a Ray head whose GCS is at `gcs_address`, with fault tolerance
    /// when a Redis address (without its password) is given.
    pub fn ray_head(gcs_address: String, redis_address: Option<String>) -> Snapshot {
        Snapshot {
            supervising: Supervising::RayHead,
            gcs: Some(GcsState {
                health: GcsHealth::Unknown,
                address: gcs_address,
                restarts: 0,
                consecutive_failures: 0,
                last_loss: None,
                last_loss_reason: None,
                last_recovery: None,
                last_recovery_seconds: None,
                deadline: None,
                last_check_seconds: None,
            }),
            fault_tolerant: redis_address.is_some(),
            gcs_storage: Some(if redis_address.is_some() {
                Backend::Redis
            } else {
                Backend::Memory
            }),
            redis: redis_address.map(|address| RedisState {
                address,
                up: None,
                ping_seconds: None,
                last_error: None,
                last_probe: None,
                role: None,
                tables: BTreeMap::new(),
                warnings: Vec::new(),
                notes: Vec::new(),
            }),
            ..Snapshot::command()
        }
    }

    /// The same head with its GCS on RocksDB at `path`: fault tolerant
    /// without Redis.
    pub fn with_rocksdb(self, path: String) -> Snapshot {
        Snapshot {
            fault_tolerant: true,
            gcs_storage: Some(Backend::Rocksdb),
            redis: None,
            rocksdb: Some(RocksdbState {
                path,
                used_bytes: None,
                free_bytes: None,
                total_bytes: None,
                free_inodes: None,
                min_free_bytes: None,
                problem: None,
                warning: None,
                last_check: None,
            }),
            ..self
        }
    }
}

/// The writer's handle.
#[derive(Clone)]
pub struct State {
    tx: watch::Sender<Snapshot>,
}

impl State {
    pub fn new(initial: Snapshot) -> State {
        State {
            tx: watch::Sender::new(initial),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    pub fn get(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(f);
    }

    /// Changes the GCS's part of the snapshot, when there is one.
    pub fn update_gcs(&self, f: impl FnOnce(&mut GcsState)) {
        self.tx.send_modify(|s| {
            if let Some(g) = &mut s.gcs {
                f(g)
            }
        });
    }

    /// Moves to `phase`, logging the transition as one structured event.
    pub fn set_phase(&self, phase: Phase, reason: &str) {
        let mut from = phase;
        self.tx.send_modify(|s| {
            from = s.phase;
            s.phase = phase;
            s.last_reason = Some(reason.to_string());
        });
        if from != phase {
            tracing::info!(
                event = "phase",
                from = from.as_str(),
                to = phase.as_str(),
                reason,
                "phase change"
            );
        }
    }

    /// The loop is alive; `log_lines_dropped` is the logger's count now.
    pub fn beat(&self, log_lines_dropped: u64) {
        self.tx.send_modify(|s| {
            s.heartbeat = Instant::now();
            s.log_lines_dropped = log_lines_dropped;
        });
    }

    fn touch(&self) {
        self.tx.send_modify(|s| s.heartbeat = Instant::now());
    }

    /// Runs `fut`, beating the heartbeat every second meanwhile: a long
    /// wait (a stop within its grace) is progress, not a wedged supervisor.
    pub async fn beating<F: std::future::Future>(&self, fut: F) -> F::Output {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = tick.tick() => self.touch(),
            }
        }
    }

    /// Records a supervised process's pid and status. `required` says
    /// whether readiness needs it running.
    pub fn set_child(
        &self,
        name: &'static str,
        pid: Option<i32>,
        state: ChildStatus,
        last_exit: Option<String>,
        required: bool,
    ) {
        self.tx.send_modify(|s| {
            let e = s.daemons.entry(name).or_insert(ChildState {
                pid,
                state,
                last_exit: None,
                required,
                healthy: None,
                health: None,
                unhealthy_since: None,
                restarts: 0,
                rss_bytes: None,
                unhealthy_at: None,
                unready_after: Duration::ZERO,
            });
            if e.pid != pid {
                // Another process, or none: the old one's size is not its.
                e.rss_bytes = None;
            }
            e.pid = pid;
            e.state = state;
            e.required = required;
            if last_exit.is_some() {
                e.last_exit = last_exit;
            }
        });
    }

    pub fn set_gcs_health(&self, h: GcsHealth, check: Option<Duration>) {
        self.tx.send_if_modified(|s| {
            let Some(g) = &mut s.gcs else { return false };
            let changed = g.health != h || check.is_some();
            g.health = h;
            if let Some(c) = check {
                g.last_check_seconds = Some(c.as_secs_f64());
            }
            changed
        });
    }
}

/// Times as RFC 3339, as people and `jq` read them.
fn time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}
