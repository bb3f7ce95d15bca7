//! What each endpoint answers, computed from one state snapshot: no I/O per
//! request, so an answer reflects the state as of the last change.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::redis::findings::role_takes_writes;
use crate::state::{ChildStatus, GcsHealth, Phase, Snapshot};

/// An answer, before HTTP framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// For 405: the methods that are allowed.
    pub allow: Option<&'static str>,
}

impl Reply {
    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            allow: None,
        }
    }
}

/// The endpoints: one list, for the server, its 404 and `rayhead probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// GET /readyz
    Ready,
    /// GET /livez
    Live,
    /// GET /status
    Status,
    /// GET /metrics
    Metrics,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Ready,
        Endpoint::Live,
        Endpoint::Status,
        Endpoint::Metrics,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ready => "/readyz",
            Endpoint::Live => "/livez",
            Endpoint::Status => "/status",
            Endpoint::Metrics => "/metrics",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// Routes a request. HEAD is answered as GET; the server drops the body.
pub fn route(
    method: &str,
    target: &str,
    snap: &Snapshot,
    now: Instant,
    stall_after: Duration,
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(endpoint) = Endpoint::from_path(path) else {
        let paths: Vec<&str> = Endpoint::ALL.iter().map(|e| e.path()).collect();
        return Reply::text(
            404,
            format!("not found: {path}; try {}\n", paths.join(", ")),
        );
    };
    if method != "GET" && method != "HEAD" {
        let mut r = Reply::text(
            405,
            format!("method {method} not allowed; use GET or HEAD\n"),
        );
        r.allow = Some("GET, HEAD");
        return r;
    }
    let verbose = query
        .split('&')
        .any(|q| q == "verbose" || q.starts_with("verbose="));
    match endpoint {
        Endpoint::Ready => readyz(snap, now, verbose),
        Endpoint::Live => livez(snap, now, stall_after),
        Endpoint::Status => status(snap, now),
        Endpoint::Metrics => metrics(snap),
    }
}

/// Every readiness check: its name, whether it passes, and why not. The
/// phase; the GCS, when a Ray head is supervised; every process the
/// supervisor marked required; and the GCS's storage (Redis or RocksDB).
pub fn ready_checks(snap: &Snapshot, now: Instant) -> Vec<(&'static str, bool, String)> {
    let mut checks = vec![(
        "phase",
        snap.phase == Phase::Running,
        format!("phase is {}", snap.phase.as_str()),
    )];
    if let Some(gcs) = &snap.gcs {
        checks.push((
            "gcs",
            gcs.health == GcsHealth::Serving,
            format!("GCS at {} is {:?}", gcs.address, gcs.health).to_lowercase(),
        ));
    }
    for (name, d) in snap.daemons.iter().filter(|(_, d)| d.required) {
        let (pass, why) = match (d.state, d.unhealthy_at(now)) {
            (ChildStatus::Running, None) => (true, String::new()),
            (ChildStatus::Running, Some(failing)) => (
                false,
                format!(
                    "{name} has failed its health checks for {:.1}s: {}",
                    failing.as_secs_f64(),
                    d.health.as_deref().unwrap_or("no answer")
                ),
            ),
            (state, _) => (false, format!("{name} is {}", state.as_str())),
        };
        checks.push((name, pass, why));
    }
    if let Some(r) = &snap.redis {
        checks.push((
            "redis",
            r.up == Some(true) && role_takes_writes(r.role.as_deref()),
            match (&r.up, &r.last_error) {
                (None, _) => format!("Redis at {} not probed yet", r.address),
                (Some(true), _) => format!(
                    "Redis at {} is a replica (role {}): the GCS needs a master",
                    r.address,
                    r.role.as_deref().unwrap_or("?")
                ),
                (_, Some(e)) => format!("Redis at {} is down: {e}", r.address),
                _ => format!("Redis at {} is down", r.address),
            },
        ));
    }
    if let Some(r) = &snap.rocksdb {
        checks.push((
            "rocksdb",
            r.last_check.is_some() && r.problem.is_none(),
            match (&r.last_check, &r.problem) {
                (None, _) => format!("the GCS storage at {} is not checked yet", r.path),
                (_, Some(p)) => p.clone(),
                _ => String::new(),
            },
        ));
    }
    checks
}

fn readyz(snap: &Snapshot, now: Instant, verbose: bool) -> Reply {
    let checks = ready_checks(snap, now);
    let ok = checks.iter().all(|(_, pass, _)| *pass);
    let mut body = String::new();
    if verbose {
        for (name, pass, why) in &checks {
            if *pass {
                let _ = writeln!(body, "[+] {name} ok");
            } else {
                let _ = writeln!(body, "[-] {name} failed: {why}");
            }
        }
    } else if !ok {
        for (_, pass, why) in &checks {
            if !pass {
                let _ = writeln!(body, "{why}");
            }
        }
    }
    if ok {
        body.push_str("ok\n");
        Reply::text(200, body)
    } else {
        Reply::text(503, body)
    }
}

/// Liveness fails only when rayhead itself is wedged (a stale heartbeat) or
/// has decided to exit: never because the GCS is down, which rayhead repairs
/// on its own within the reconnect window.
fn livez(snap: &Snapshot, now: Instant, stall_after: Duration) -> Reply {
    if snap.phase == Phase::Exiting {
        return Reply::text(
            503,
            format!(
                "rayhead is exiting: {}\n",
                snap.last_reason.as_deref().unwrap_or("no reason recorded")
            ),
        );
    }
    let age = now.saturating_duration_since(snap.heartbeat);
    if age > stall_after {
        return Reply::text(
            503,
            format!(
                "the supervisor's heartbeat is {:.1}s old (probe.stall-after is {})\n",
                age.as_secs_f64(),
                humantime::format_duration(stall_after)
            ),
        );
    }
    Reply::text(200, "ok\n".into())
}

fn status(snap: &Snapshot, now: Instant) -> Reply {
    let mut v = match serde_json::to_value(snap) {
        Ok(v) => v,
        Err(e) => return Reply::text(500, format!("cannot encode the status: {e}\n")),
    };
    let uptime = SystemTime::now()
        .duration_since(snap.started_at)
        .unwrap_or_default()
        .as_secs_f64();
    v["uptime_seconds"] = serde_json::json!((uptime * 1000.0).round() / 1000.0);
    v["ready"] = serde_json::json!(ready_checks(snap, now).iter().all(|c| c.1));
    Reply {
        status: 200,
        content_type: "application/json",
        body: format!("{v:#}\n"),
        allow: None,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DaemonLabel {
    daemon: String,
}

/// Recovery buckets: around the 0.1 s rayhead takes, up to the 60 s window.
const RECOVERY_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

fn gauge(v: i64) -> Gauge {
    let g: Gauge = Gauge::default();
    g.set(v);
    g
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

/// The GCS's storage backend, and RocksDB's disk: what fills it, and what
/// is left before the gate holds restarts back.
fn storage_metrics(reg: &mut Registry, snap: &Snapshot) {
    if let Some(b) = snap.gcs_storage {
        let info: Family<BackendLabel, Gauge> = Family::default();
        info.get_or_create(&BackendLabel {
            backend: b.as_str().into(),
        })
        .set(1);
        reg.register(
            "gcs_storage_info",
            "The GCS's storage backend (memory, redis, rocksdb), as the label",
            info,
        );
    }
    let Some(r) = &snap.rocksdb else { return };
    let bytes = [
        (
            "gcs_storage_used_bytes",
            "Bytes the RocksDB directory (RAY_gcs_storage_path) takes on disk",
            r.used_bytes,
        ),
        (
            "gcs_storage_free_bytes",
            "Bytes still free for the GCS on the storage's file system",
            r.free_bytes,
        ),
        (
            "gcs_storage_size_bytes",
            "The storage file system's size",
            r.total_bytes,
        ),
        (
            "gcs_storage_min_free_bytes",
            "gcs.storage-min-free in bytes: below it, no GCS is started",
            r.min_free_bytes,
        ),
    ];
    for (name, help, value) in bytes {
        if let Some(v) = value {
            reg.register(name, help, gauge(i64::try_from(v).unwrap_or(i64::MAX)));
        }
    }
    reg.register(
        "gcs_storage_usable",
        "1 when the last check found the RocksDB storage usable",
        gauge((r.last_check.is_some() && r.problem.is_none()) as i64),
    );
}

/// Each daemon's RSS, the container's memory and limit, and what rayhead did
/// about the GCS's memory.
fn memory_metrics(reg: &mut Registry, snap: &Snapshot) {
    let rss: Family<DaemonLabel, Gauge> = Family::default();
    for (name, d) in &snap.daemons {
        if let Some(b) = d.rss_bytes {
            rss.get_or_create(&DaemonLabel {
                daemon: (*name).into(),
            })
            .set(i64::try_from(b).unwrap_or(i64::MAX));
        }
    }
    reg.register(
        "daemon_rss_bytes",
        "Resident set of the supervised process at the last memory sample",
        rss,
    );
    let Some(m) = &snap.memory else { return };
    let bytes = |v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    if let Some(b) = m.container_bytes {
        reg.register(
            "container_memory_bytes",
            "Memory charged to the container's cgroup, which the OOM killer weighs",
            bytes(b),
        );
    }
    if let Some(b) = m.container_limit_bytes {
        reg.register(
            "container_memory_limit_bytes",
            "The container's memory limit (absent: no limit)",
            bytes(b),
        );
    }
    if let Some(n) = m.oom_kills {
        let c: Counter = Counter::default();
        c.inc_by(n);
        reg.register(
            "container_oom_kills",
            "OOM kills in the container's cgroup, as the kernel counts them",
            c,
        );
    }
    if let Some(b) = m.gcs_high_water_bytes {
        reg.register(
            "gcs_memory_high_water_bytes",
            "memory.gcs-high-water in bytes: gcs_server is restarted in place above it",
            bytes(b),
        );
    }
    let restarts: Counter = Counter::default();
    restarts.inc_by(m.gcs_restarts);
    reg.register(
        "gcs_memory_restarts",
        "In-place GCS restarts for its memory (also counted in rayhead_gcs_restarts)",
        restarts,
    );
}

fn metrics(snap: &Snapshot) -> Reply {
    let mut reg = Registry::with_prefix("rayhead");
    let fgauge = |v: f64| {
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(v);
        g
    };
    if let Some(gcs) = &snap.gcs {
        reg.register(
            "gcs_up",
            "1 when the GCS answers SERVING",
            gauge((gcs.health == GcsHealth::Serving) as i64),
        );
        let restarts: Counter = Counter::default();
        restarts.inc_by(gcs.restarts);
        reg.register("gcs_restarts", "In-place GCS restarts", restarts);
        reg.register(
            "gcs_restart_failures",
            "Failed in-place GCS restarts in a row (the crash-loop guard's count)",
            gauge(i64::from(gcs.consecutive_failures)),
        );
        let hist = Histogram::new(RECOVERY_BUCKETS.iter().copied());
        for r in &snap.recoveries {
            hist.observe(*r);
        }
        reg.register(
            "gcs_recovery_seconds",
            "Time from a GCS loss to SERVING again",
            hist,
        );
        if let Some(c) = gcs.last_check_seconds {
            reg.register(
                "gcs_health_check_seconds",
                "Round trip of the last grpc.health.v1 Check",
                fgauge(c),
            );
        }
    }
    storage_metrics(&mut reg, snap);
    if let Some(r) = &snap.redis {
        reg.register(
            "redis_up",
            "1 when Redis answered the last authenticated PING",
            gauge((r.up == Some(true)) as i64),
        );
        if let Some(p) = r.ping_seconds {
            reg.register(
                "redis_ping_seconds",
                "Round trip of the last Redis PING",
                fgauge(p),
            );
        }
    }
    let phases: Family<PhaseLabel, Gauge> = Family::default();
    for p in Phase::ALL {
        phases
            .get_or_create(&PhaseLabel {
                phase: p.as_str().into(),
            })
            .set((snap.phase == p) as i64);
    }
    reg.register("phase", "1 for the supervisor's current phase", phases);
    let daemons: Family<DaemonLabel, Gauge> = Family::default();
    for (name, d) in &snap.daemons {
        daemons
            .get_or_create(&DaemonLabel {
                daemon: (*name).into(),
            })
            .set((d.state == ChildStatus::Running) as i64);
    }
    reg.register(
        "daemon_up",
        "1 while the supervised process (command or Ray daemon) runs",
        daemons,
    );
    let healthy: Family<DaemonLabel, Gauge> = Family::default();
    for (name, d) in &snap.daemons {
        if let Some(h) = d.healthy {
            healthy
                .get_or_create(&DaemonLabel {
                    daemon: (*name).into(),
                })
                .set(h as i64);
        }
    }
    reg.register(
        "daemon_healthy",
        "1 when the Ray daemon passed its last health check",
        healthy,
    );
    let restarts: Family<DaemonLabel, Counter> = Family::default();
    for (name, d) in snap.daemons.iter().filter(|(_, d)| d.restarts > 0) {
        restarts
            .get_or_create(&DaemonLabel {
                daemon: (*name).into(),
            })
            .inc_by(d.restarts);
    }
    reg.register(
        "daemon_restarts",
        "In-place restarts of a Ray daemon other than the GCS",
        restarts,
    );
    memory_metrics(&mut reg, snap);
    let dropped: Counter = Counter::default();
    dropped.inc_by(snap.log_lines_dropped);
    reg.register(
        "log_lines_dropped",
        "Log and output lines lost to a blocked or closed stdout or stderr",
        dropped,
    );
    reg.register(
        "build",
        "rayhead's version",
        Info::new(vec![("version".to_string(), snap.version.to_string())]),
    );
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &reg) {
        return Reply::text(500, format!("cannot encode the metrics: {e}\n"));
    }
    Reply {
        status: 200,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
        allow: None,
    }
}
