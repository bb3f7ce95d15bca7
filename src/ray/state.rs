//! The shared state snapshot: what the supervisor knows, for `/status`,
//! `/readyz` and the metrics. The supervisor is its only writer; readers
//! borrow the latest snapshot without any I/O.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcsHealth {
    Unknown,
    Serving,
    NotServing,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonState {
    pub pid: Option<i32>,
    /// `running`, `exited`, `restarting`.
    pub state: &'static str,
    /// How it last ended, if it did.
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcsState {
    pub health: GcsHealth,
    pub address: String,
    pub restarts: u64,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    pub version: &'static str,
    #[serde(serialize_with = "time")]
    pub started_at: SystemTime,
    pub daemons: BTreeMap<&'static str, DaemonState>,
    pub gcs: GcsState,
    pub fault_tolerant: bool,
    pub redis: Option<RedisState>,
    /// Every in-place recovery's duration, for the metrics' histogram.
    #[serde(skip)]
    pub recoveries: Vec<f64>,
    pub last_reason: Option<String>,
    /// Bumped by the supervisor loop; `/livez` fails when it is stale.
    #[serde(skip)]
    pub heartbeat: Instant,
}

impl Snapshot {
    pub fn new(gcs_address: String, redis_address: Option<String>) -> Snapshot {
        Snapshot {
            phase: Phase::Starting,
            version: env!("CARGO_PKG_VERSION"),
            started_at: SystemTime::now(),
            daemons: BTreeMap::new(),
            gcs: GcsState {
                health: GcsHealth::Unknown,
                address: gcs_address,
                restarts: 0,
                last_loss: None,
                last_loss_reason: None,
                last_recovery: None,
                last_recovery_seconds: None,
                deadline: None,
                last_check_seconds: None,
            },
            fault_tolerant: redis_address.is_some(),
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
            recoveries: Vec::new(),
            last_reason: None,
            heartbeat: Instant::now(),
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

    pub fn beat(&self) {
        self.tx.send_modify(|s| s.heartbeat = Instant::now());
    }

    pub fn set_daemon(
        &self,
        name: &'static str,
        pid: Option<i32>,
        state: &'static str,
        last_exit: Option<String>,
    ) {
        self.tx.send_modify(|s| {
            let e = s.daemons.entry(name).or_insert(DaemonState {
                pid,
                state,
                last_exit: None,
            });
            e.pid = pid;
            e.state = state;
            if last_exit.is_some() {
                e.last_exit = last_exit;
            }
        });
    }

    pub fn set_gcs_health(&self, h: GcsHealth, check: Option<Duration>) {
        self.tx.send_if_modified(|s| {
            let changed = s.gcs.health != h || check.is_some();
            s.gcs.health = h;
            if let Some(c) = check {
                s.gcs.last_check_seconds = Some(c.as_secs_f64());
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
