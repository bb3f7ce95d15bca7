//! `/metrics`, in the OpenMetrics text format, from one state snapshot:
//! one function per family.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::state::{ChildStatus, GcsHealth, Phase, Snapshot};

/// The OpenMetrics text format's content type.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`' body: one function per family of metrics, all from the
/// snapshot. The route turns it into a reply; this module knows no HTTP.
pub(super) fn metrics(snap: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("rayhead");
    gcs_metrics(&mut reg, snap);
    storage_metrics(&mut reg, snap);
    redis_metrics(&mut reg, snap);
    phase_metrics(&mut reg, snap);
    daemon_metrics(&mut reg, snap);
    memory_metrics(&mut reg, snap);
    rayhead_metrics(&mut reg, snap);
    let mut body = String::new();
    encode(&mut body, &reg)?;
    Ok(body)
}

fn fgauge(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(v);
    g
}

/// The GCS: up, restarts, failures in a row, recovery times, check latency.
fn gcs_metrics(reg: &mut Registry, snap: &Snapshot) {
    let Some(gcs) = &snap.gcs else { return };
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

/// Redis, when the GCS stores there.
fn redis_metrics(reg: &mut Registry, snap: &Snapshot) {
    let Some(r) = &snap.redis else { return };
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

fn phase_metrics(reg: &mut Registry, snap: &Snapshot) {
    let phases: Family<PhaseLabel, Gauge> = Family::default();
    for p in Phase::ALL {
        phases
            .get_or_create(&PhaseLabel {
                phase: p.as_str().into(),
            })
            .set((snap.phase == p) as i64);
    }
    reg.register("phase", "1 for the supervisor's current phase", phases);
}

/// Each supervised process: running, healthy, restarted.
fn daemon_metrics(reg: &mut Registry, snap: &Snapshot) {
    let label = |name: &str| DaemonLabel {
        daemon: name.into(),
    };
    let daemons: Family<DaemonLabel, Gauge> = Family::default();
    for (name, d) in &snap.daemons {
        daemons
            .get_or_create(&label(name))
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
            healthy.get_or_create(&label(name)).set(h as i64);
        }
    }
    reg.register(
        "daemon_healthy",
        "1 when the Ray daemon passed its last health check",
        healthy,
    );
    let restarts: Family<DaemonLabel, Counter> = Family::default();
    for (name, d) in snap.daemons.iter().filter(|(_, d)| d.restarts > 0) {
        restarts.get_or_create(&label(name)).inc_by(d.restarts);
    }
    reg.register(
        "daemon_restarts",
        "In-place restarts of a Ray daemon other than the GCS",
        restarts,
    );
}

/// rayhead itself: lost log lines, its version.
fn rayhead_metrics(reg: &mut Registry, snap: &Snapshot) {
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
    let numbers = [
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
        (
            "gcs_storage_free_inodes",
            "Files that can still be made on the storage's file system",
            r.free_inodes,
        ),
    ];
    for (name, help, value) in numbers {
        if let Some(v) = value {
            reg.register(name, help, gauge(i64::try_from(v).unwrap_or(i64::MAX)));
        }
    }
    reg.register(
        "gcs_storage_usable",
        "1 when the last check found that a GCS could start on the RocksDB storage (0 also below gcs.storage-min-free, where a running GCS still serves)",
        gauge((r.last_check.is_some() && r.problem.is_none() && r.warning.is_none()) as i64),
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
