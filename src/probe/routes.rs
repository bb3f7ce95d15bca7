//! What each endpoint answers, computed from one state snapshot: no I/O per
//! request, so an answer reflects the state as of the last change.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

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
    pub(super) fn text(status: u16, body: String) -> Reply {
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

    fn from_path(path: &str) -> Option<Endpoint> {
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
        Endpoint::Metrics => match super::metrics::metrics(snap) {
            Ok(body) => Reply {
                status: 200,
                content_type: super::metrics::CONTENT_TYPE,
                body,
                allow: None,
            },
            Err(e) => Reply::text(500, format!("cannot encode the metrics: {e}\n")),
        },
    }
}

/// One readiness check.
struct Check {
    name: &'static str,
    pass: bool,
    /// Why it fails (empty when it passes).
    why: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, why: String) -> Check {
        Check { name, pass, why }
    }
}

/// Every readiness check: the phase; the GCS, when a Ray head is
/// supervised; every process the supervisor marked required; and the GCS's
/// storage (Redis or RocksDB).
fn ready_checks(snap: &Snapshot, now: Instant) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "phase",
        snap.phase == Phase::Running,
        format!("phase is {}", snap.phase.as_str()),
    )];
    if let Some(gcs) = &snap.gcs {
        checks.push(Check::new(
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
        checks.push(Check::new(name, pass, why));
    }
    if let Some(r) = &snap.redis {
        checks.push(Check::new(
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
        checks.push(Check::new(
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
    let ok = checks.iter().all(|c| c.pass);
    let mut body = String::new();
    if verbose {
        for c in &checks {
            if c.pass {
                let _ = writeln!(body, "[+] {} ok", c.name);
            } else {
                let _ = writeln!(body, "[-] {} failed: {}", c.name, c.why);
            }
        }
    } else if !ok {
        for c in checks.iter().filter(|c| !c.pass) {
            let _ = writeln!(body, "{}", c.why);
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
    v["ready"] = serde_json::json!(ready_checks(snap, now).iter().all(|c| c.pass));
    Reply {
        status: 200,
        content_type: "application/json",
        body: format!("{v:#}\n"),
        allow: None,
    }
}
