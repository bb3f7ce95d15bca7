//! What the runner tells its user: lines for what happened, and, on a
//! terminal, one status line kept at the bottom and redrawn on each change.
//!
//! Everything goes through the lossy stderr of [`crate::logging`]: a
//! closed or stuck terminal (`rayhead dev 2>&1 | tee log`, then the tee
//! dies) never blocks or kills the runner, which must still stop its
//! cluster.

use std::io::IsTerminal;

use serde_json::Value;

/// The head as its `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadView {
    /// `None`: the probe server did not answer.
    pub phase: Option<String>,
    pub gcs: String,
    pub gcs_restarts: u64,
    pub last_recovery_seconds: Option<f64>,
    pub last_loss_reason: Option<String>,
    pub redis_up: Option<bool>,
    /// With RocksDB: `Some(None)` usable, `Some(Some(problem))` not;
    /// `None`: not RocksDB, or not checked yet.
    pub rocksdb_problem: Option<Option<String>>,
    /// Worker nodes ALIVE in the cluster, when the runner asked the
    /// dashboard.
    pub workers_joined: Option<usize>,
}

impl HeadView {
    /// Reads `/status`'s JSON; anything missing stays empty.
    pub fn parse(body: &str) -> HeadView {
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            return HeadView::default();
        };
        let s = |v: &Value| v.as_str().map(str::to_string);
        HeadView {
            phase: s(&v["phase"]),
            gcs: s(&v["gcs"]["health"]).unwrap_or_default(),
            gcs_restarts: v["gcs"]["restarts"].as_u64().unwrap_or(0),
            last_recovery_seconds: v["gcs"]["last_recovery_seconds"].as_f64(),
            last_loss_reason: s(&v["gcs"]["last_loss_reason"]),
            redis_up: v["redis"]["up"].as_bool(),
            rocksdb_problem: v["rocksdb"]["last_check"]
                .is_string()
                .then(|| s(&v["rocksdb"]["problem"])),
            workers_joined: None,
        }
    }

    pub fn running(&self) -> bool {
        self.phase.as_deref() == Some("running")
    }
}

/// The dashboard's node list (Ray's state API), with each node's start.
pub const NODES: &str = "/api/v0/nodes?detail=true&limit=1000";

/// Worker nodes ALIVE and started at `since_ms` or later, from the
/// dashboard's [`NODES`] answer; `None` when it cannot be read.
pub fn workers_joined(body: &str, since_ms: u64) -> Option<usize> {
    let v: Value = serde_json::from_str(body).ok()?;
    let nodes = v["data"]["result"]["result"].as_array()?;
    Some(
        nodes
            .iter()
            .filter(|n| n["state"] == "ALIVE" && n["is_head_node"] == false)
            .filter(|n| n["start_time_ms"].as_u64().is_some_and(|t| t >= since_ms))
            .count(),
    )
}

/// The whole cluster, for the status line.
pub struct Line<'a> {
    pub head: &'a HeadView,
    pub head_up: bool,
    pub workers_up: usize,
    pub workers: u32,
    pub pod_restarts: u32,
}

impl std::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.head;
        let phase = match (&h.phase, self.head_up) {
            (_, false) => "down",
            (Some(p), true) => p.as_str(),
            (None, true) => "starting",
        };
        write!(f, "head {phase} | GCS {}", or_dash(&h.gcs))?;
        write!(f, " | GCS restarts {}", h.gcs_restarts)?;
        if let Some(s) = h.last_recovery_seconds {
            write!(f, " (last recovery {s:.3}s)")?;
        }
        let store = match (&h.rocksdb_problem, h.redis_up) {
            (Some(None), _) => "RocksDB ok",
            (Some(Some(_)), _) => "RocksDB UNUSABLE (see /status)",
            (None, Some(true)) => "Redis up",
            (None, Some(false)) => "Redis DOWN",
            (None, None) => "store -",
        };
        write!(
            f,
            " | {store} | workers {}/{} | pod restarts {}",
            self.workers_up, self.workers, self.pod_restarts
        )
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Prints lines and the status line.
pub struct Printer {
    tty: bool,
    status: Option<String>,
}

impl Printer {
    pub fn new() -> Printer {
        Printer {
            tty: std::io::stderr().is_terminal(),
            status: None,
        }
    }

    /// One line of news, above the status line.
    pub fn say(&mut self, text: &str) {
        let mut out = String::new();
        if self.tty && self.status.is_some() {
            out.push_str("\r\x1b[2K");
        }
        for l in text.lines() {
            out.push_str("rayhead dev: ");
            out.push_str(l);
            out.push('\n');
        }
        if self.tty {
            if let Some(s) = &self.status {
                out.push_str(s);
            }
        }
        crate::logging::to_stderr(out.into_bytes());
    }

    /// The status line: redrawn in place on a terminal, a plain line
    /// otherwise; only when it changed.
    pub fn status(&mut self, line: String) {
        if self.status.as_deref() == Some(line.as_str()) {
            return;
        }
        let out = if self.tty {
            format!("\r\x1b[2K{line}")
        } else {
            format!("rayhead dev: [{line}]\n")
        };
        self.status = Some(line);
        crate::logging::to_stderr(out.into_bytes());
    }

    /// Leaves the status line where it is, ending it.
    pub fn end(&mut self) {
        if self.tty && self.status.take().is_some() {
            crate::logging::to_stderr(b"\n".to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_shows_phase_gcs_restarts_recovery_and_redis() {
        let body = r#"{"phase":"running","gcs":{"health":"serving","restarts":2,
            "last_recovery_seconds":0.1234,"last_loss_reason":"gcs_server exited"},
            "redis":{"up":true}}"#;
        let h = HeadView::parse(body);
        assert!(h.running());
        let line = Line {
            head: &h,
            head_up: true,
            workers_up: 1,
            workers: 2,
            pod_restarts: 3,
        }
        .to_string();
        assert_eq!(
            line,
            "head running | GCS serving | GCS restarts 2 (last recovery 0.123s) | Redis up | workers 1/2 | pod restarts 3"
        );
    }

    #[test]
    fn only_worker_nodes_alive_and_started_since_count_as_joined() {
        let body = r#"{"data":{"result":{"result":[
            {"state":"ALIVE","is_head_node":false,"start_time_ms":2000},
            {"state":"ALIVE","is_head_node":false,"start_time_ms":999},
            {"state":"DEAD","is_head_node":false,"start_time_ms":3000},
            {"state":"ALIVE","is_head_node":true,"start_time_ms":3000}]}}}"#;
        assert_eq!(workers_joined(body, 1000), Some(1));
        assert_eq!(workers_joined("{}", 0), None);
        assert_eq!(workers_joined("nonsense", 0), None);
    }

    #[test]
    fn an_unreadable_status_shows_dashes_not_a_panic() {
        for body in ["", "{", "[]", r#"{"phase":7,"gcs":"x"}"#] {
            let h = HeadView::parse(body);
            let line = Line {
                head: &h,
                head_up: false,
                workers_up: 0,
                workers: 0,
                pod_restarts: 0,
            }
            .to_string();
            assert!(line.starts_with("head down | GCS - |"), "{line}");
        }
    }
}
