//! What the Redis probe finds: reachable and authenticated, the role, the
//! eviction policy, persistence, memory, and the namespace's GCS tables.
//!
//! A command that a managed Redis forbids (CONFIG, INFO) is a finding ("cannot
//! check ..."), never a failure of the probe.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::Serialize;

use super::Redis;

/// The tables Ray keeps per namespace, as `RAY<ns>@<TABLE>` hashes.
pub const TABLES: &[&str] = &[
    "JOB",
    "ACTOR",
    "ACTOR_TASK_SPEC",
    "NODE",
    "WORKERS",
    "PLACEMENT_GROUP",
    "KV",
];

/// Whether a Redis of this role takes the GCS's writes: a master does, and
/// so does one whose role is not known (INFO forbidden). The one rule, for
/// the probe's findings and for `/readyz`.
pub fn role_takes_writes(role: Option<&str>) -> bool {
    role.is_none_or(|r| r == "master")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    /// Without any password.
    pub address: String,
    pub up: bool,
    pub ping_seconds: Option<f64>,
    /// With `redis-check --pings N`: over the kept connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_p50_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_p99_seconds: Option<f64>,
    pub error: Option<String>,
    /// The master a Sentinel at `address` named, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    /// `master` or `slave` (Redis' word for a replica).
    pub role: Option<String>,
    pub maxmemory_policy: Option<String>,
    pub aof: Option<bool>,
    /// CONFIG GET save: "" means no RDB save points.
    pub save_points: Option<String>,
    pub used_memory: Option<u64>,
    /// 0 means no limit.
    pub maxmemory: Option<u64>,
    /// The namespace's tables and their field counts; `None`: absent.
    pub tables: BTreeMap<String, Option<u64>>,
    /// Settings that can lose GCS state.
    pub warnings: Vec<String>,
    /// What could not be checked, and why.
    pub notes: Vec<String>,
}

impl Findings {
    /// Reachable, authenticated and a master (or a role that could not be
    /// read: that is a note, not a failure).
    pub fn healthy(&self) -> bool {
        self.up && role_takes_writes(self.role.as_deref())
    }

    /// Why it is not healthy, in one line.
    pub fn problem(&self) -> Option<String> {
        if !self.up {
            return Some(format!(
                "Redis at {} is down: {}",
                self.address,
                self.error.as_deref().unwrap_or("no answer")
            ));
        }
        match self.role.as_deref() {
            r if role_takes_writes(r) => None,
            None => None,
            Some(r) => Some(format!(
                "Redis at {} is a {} (role {r}): the GCS needs a master that takes writes",
                self.address,
                if r == "slave" { "replica" } else { r }
            )),
        }
    }

    /// `redis-check`'s exit code: 0 healthy, 1 unhealthy, 2 healthy with warnings.
    pub fn exit_code(&self) -> u8 {
        if !self.healthy() {
            1
        } else if !self.warnings.is_empty() {
            2
        } else {
            0
        }
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("WARNING  {w}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE     {n}\n"));
        }
        let verdict = match self.exit_code() {
            0 => "healthy".to_string(),
            2 => "healthy, with warnings".to_string(),
            _ => format!("UNHEALTHY: {}", self.problem().unwrap_or_default()),
        };
        out.push_str(&format!("verdict  {verdict}\n"));
        out
    }

    /// The table's rows, before they are aligned: the connection first,
    /// then the settings that decide whether GCS state survives.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = vec![
            ("address".into(), self.address.clone()),
            (
                "reachable".into(),
                if self.up {
                    "yes".into()
                } else {
                    format!("no: {}", self.error.as_deref().unwrap_or(""))
                },
            ),
        ];
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        if let Some(m) = &self.sentinel_master {
            rows.push(("sentinel master".into(), m.clone()));
        }
        if let Some(p) = self.ping_seconds {
            rows.push(("ping".into(), format!("{:.2} ms", p * 1e3)));
        }
        if let (Some(a), Some(b)) = (self.ping_p50_seconds, self.ping_p99_seconds) {
            rows.push((
                "ping p50/p99".into(),
                format!("{:.3} / {:.3} ms", a * 1e3, b * 1e3),
            ));
        }
        rows.push(("role".into(), opt(&self.role)));
        rows.push(("maxmemory-policy".into(), opt(&self.maxmemory_policy)));
        rows.push((
            "appendonly".into(),
            self.aof.map_or(
                "unknown".into(),
                |a| if a { "yes".into() } else { "no".into() },
            ),
        ));
        rows.push((
            "save".into(),
            self.save_points.clone().map_or("unknown".into(), |s| {
                if s.is_empty() {
                    "(none)".into()
                } else {
                    s
                }
            }),
        ));
        rows.push(("memory".into(), self.memory_text()));
        for (t, n) in &self.tables {
            rows.push((
                format!("table {t}"),
                n.map_or("absent".into(), |n| format!("{n} fields")),
            ));
        }
        rows
    }

    /// The memory row: how close Redis is to its limit, where eviction or
    /// refused writes begin.
    fn memory_text(&self) -> String {
        match (self.used_memory, self.maxmemory) {
            (Some(u), Some(0)) => format!("{} used, no maxmemory", mib(u)),
            (Some(u), Some(m)) => format!(
                "{} used of {} ({:.0}%)",
                mib(u),
                mib(m),
                u as f64 * 100.0 / m as f64
            ),
            (Some(u), None) => format!("{} used", mib(u)),
            _ => "unknown".into(),
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Parses INFO's `key:value` lines.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The warnings that INFO and CONFIG imply.
pub fn warnings(f: &Findings, info: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = &f.maxmemory_policy {
        if p.starts_with("allkeys-") {
            out.push(format!(
                "maxmemory-policy is {p}: eviction can delete live GCS keys; use noeviction"
            ));
        } else if p.starts_with("volatile-") {
            let expiring: u64 = info
                .iter()
                .filter(|(k, _)| k.starts_with("db"))
                .filter_map(|(_, v)| v.split(',').find_map(|kv| kv.strip_prefix("expires=")))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
            if expiring > 0 {
                out.push(format!(
                    "maxmemory-policy is {p} and {expiring} key(s) have a TTL: eviction can delete them; use noeviction"
                ));
            }
        }
    }
    if f.aof == Some(false) && f.save_points.as_deref() == Some("") {
        out.push(
            "no persistence (AOF off, no RDB save points): a Redis restart loses all GCS state"
                .into(),
        );
    }
    out
}

impl Redis {
    /// Runs every check. It never fails: what cannot be learnt is a note.
    pub async fn findings(&self, namespace: Option<&str>) -> Findings {
        let mut f = Findings {
            address: self.address.to_string(),
            ..Findings::default()
        };
        match self.ping().await {
            Ok(rtt) => {
                f.up = true;
                f.ping_seconds = Some(rtt.as_secs_f64());
            }
            Err(e) => {
                f.error = Some(e.to_string());
                return f;
            }
        }
        f.sentinel_master = self.sentinel_master_address();
        let Some(mut conn) = self.kept() else {
            return f;
        };
        let info = self.read_info(&mut conn, &mut f).await;
        self.read_save_points(&mut conn, &mut f).await;
        if f.maxmemory_policy.is_none() && !info.is_empty() {
            f.notes
                .push("cannot check the eviction policy: INFO has no maxmemory_policy".into());
        }
        if let Some(ns) = namespace.filter(|_| !self.skips("tables")) {
            self.count_tables(&mut conn, ns, &mut f).await;
        }
        f.warnings = warnings(&f, &info);
        f
    }

    /// redis.skip-checks names this check: a managed Redis may forbid its
    /// command, and the user said so.
    fn skips(&self, check: &str) -> bool {
        self.skip.iter().any(|s| s == check)
    }

    /// INFO: the role, memory, eviction policy and AOF. Its fields are
    /// returned too, for the warnings that need the keyspace.
    async fn read_info(
        &self,
        conn: &mut MultiplexedConnection,
        f: &mut Findings,
    ) -> BTreeMap<String, String> {
        let info = if self.skips("info") {
            f.notes.push(
                "not checking the role, memory, eviction policy or AOF: redis.skip-checks has info"
                    .into(),
            );
            BTreeMap::new()
        } else {
            match query::<String>(conn, redis::cmd("INFO"), self.command_timeout()).await {
                Ok(text) => parse_info(&text),
                Err(e) => {
                    f.notes.push(format!(
                        "cannot check the role, memory, eviction policy or AOF: INFO failed ({e})"
                    ));
                    BTreeMap::new()
                }
            }
        };
        f.role = info.get("role").cloned();
        f.maxmemory_policy = info.get("maxmemory_policy").cloned();
        f.aof = info.get("aof_enabled").map(|v| v == "1");
        f.used_memory = info.get("used_memory").and_then(|v| v.parse().ok());
        f.maxmemory = info.get("maxmemory").and_then(|v| v.parse().ok());
        info
    }

    /// CONFIG GET save: INFO does not say whether RDB snapshots are on,
    /// which the no-persistence warning needs.
    async fn read_save_points(&self, conn: &mut MultiplexedConnection, f: &mut Findings) {
        let mut save = redis::cmd("CONFIG");
        save.arg("GET").arg("save");
        let saved = if self.skips("config") {
            Err("redis.skip-checks has config".to_string())
        } else {
            query::<Vec<String>>(conn, save, self.command_timeout()).await
        };
        match saved {
            Ok(v) if v.len() == 2 => f.save_points = Some(v[1].clone()),
            Ok(_) => f
                .notes
                .push("cannot check RDB save points: CONFIG GET save answered nothing".into()),
            Err(e) => f.notes.push(format!(
                "cannot check RDB save points: CONFIG is disabled or skipped ({e})"
            )),
        }
    }

    /// The namespace's GCS tables and their sizes, in one pipeline: whether
    /// a restarted GCS will find the state it needs.
    async fn count_tables(&self, conn: &mut MultiplexedConnection, ns: &str, f: &mut Findings) {
        let mut pipe = redis::pipe();
        for table in TABLES {
            let key = format!("RAY{ns}@{table}");
            pipe.cmd("EXISTS").arg(&key).cmd("HLEN").arg(&key);
        }
        let t = self.command_timeout();
        match tokio::time::timeout(t, pipe.query_async::<Vec<i64>>(conn)).await {
            Ok(Ok(v)) if v.len() == TABLES.len() * 2 => {
                for (i, table) in TABLES.iter().enumerate() {
                    let n = (v[2 * i] > 0).then_some(v[2 * i + 1].max(0) as u64);
                    f.tables.insert(table.to_string(), n);
                }
            }
            Ok(Ok(_)) => f
                .notes
                .push("cannot count the GCS tables: unexpected answer".into()),
            Ok(Err(e)) => f.notes.push(format!("cannot count the GCS tables: {e}")),
            Err(_) => f
                .notes
                .push("cannot count the GCS tables: timed out".into()),
        }
    }
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: redis::Cmd,
    t: Duration,
) -> Result<T, String> {
    match tokio::time::timeout(t, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(crate::redact::url(&e.to_string())),
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_for_eviction_and_persistence() {
        let info = parse_info("# Keyspace\ndb0:keys=10,expires=3,avg_ttl=0\nrole:master\n");
        let f = Findings {
            maxmemory_policy: Some("volatile-lru".into()),
            aof: Some(false),
            save_points: Some(String::new()),
            ..Findings::default()
        };
        let w = warnings(&f, &info);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("3 key(s) have a TTL"));
        let f = Findings {
            maxmemory_policy: Some("allkeys-lru".into()),
            aof: Some(true),
            save_points: Some(String::new()),
            ..Findings::default()
        };
        assert_eq!(warnings(&f, &info).len(), 1);
        let f = Findings {
            maxmemory_policy: Some("noeviction".into()),
            aof: Some(false),
            save_points: None,
            ..Findings::default()
        };
        assert!(
            warnings(&f, &info).is_empty(),
            "unknown save points: a note, not a warning"
        );
    }

    #[test]
    fn verdicts() {
        let mut f = Findings {
            up: true,
            role: Some("master".into()),
            ..Findings::default()
        };
        assert_eq!(f.exit_code(), 0);
        f.warnings.push("x".into());
        assert_eq!(f.exit_code(), 2);
        f.role = Some("slave".into());
        assert_eq!(f.exit_code(), 1);
        assert!(f.problem().unwrap().contains("replica"));
        f.up = false;
        assert_eq!(f.exit_code(), 1);
    }
}
