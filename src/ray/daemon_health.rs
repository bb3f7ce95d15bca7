//! The health of every head daemon but the GCS (which has its own monitor in
//! `health.rs`), checked on an interval with a timeout, as events for the
//! supervisor.
//!
//! Existence alone says nothing of a hung process: a SIGSTOPped raylet is
//! alive and answers nothing. So each check reads the `/proc` state first (a
//! stopped or traced process is hung, whatever else would answer), then asks
//! the daemon itself where it can: the raylet's grpc.health.v1 Check on its
//! listening ports (found from its socket inodes: its argv says
//! `--node_manager_port=0`), the dashboard's `GET /api/version`, which needs
//! no GCS. For a daemon that is restarted in place (`Policy::OnDaemonExit`),
//! every fifth check also records its descendants (the dashboard's
//! forkserver modules), so that a restart can kill them first.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::Pid;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::daemons::{Check, Daemon, Policy};
use super::report::Report;
use crate::http_client;
use crate::sys::proctree::{self, Identity};

/// Each checked daemon's descendants, as last seen: by identity, since
/// any of them may have exited and its pid gone to another by the time a
/// restart kills them.
#[derive(Clone, Default)]
pub struct Families(Arc<Mutex<HashMap<Pid, Vec<Identity>>>>);

impl Families {
    fn record(&self, pid: Pid, kids: Vec<Identity>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, kids);
    }

    /// The descendants last seen of `pid`, forgotten.
    pub fn take(&self, pid: Pid) -> Vec<Identity> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid)
            .unwrap_or_default()
    }
}

/// Where to ask: what the table says, with what the argv tells.
#[derive(Debug, Clone)]
pub struct Target {
    pub daemon: Daemon,
    pub pid: Pid,
    /// Its start time, read while the reaper held it unreaped: once the
    /// pid names a process that started at another time, the daemon is
    /// gone, and neither its health nor its family is that process's.
    pub start: u64,
    pub check: Check,
    /// For HTTP: the `--host` and `--port` of its argv.
    pub http: Option<(String, u16)>,
}

/// One health check of a daemon (every daemon but the GCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonCheck {
    pub daemon: Daemon,
    pub pid: Pid,
    pub healthy: bool,
    /// What answered, or why it failed.
    pub detail: String,
}

/// Checks `target` every `interval` until it is gone or `cancel`. Each
/// check is cheap enough to run every second or two for the life of the
/// head: one `stat` read, a walk down its own children, and one request:
/// over a gRPC channel kept to ports found once (the raylet), or over a new
/// HTTP connection each time (the dashboard).
pub async fn check_every(
    target: Target,
    interval: Duration,
    check_timeout: Duration,
    report: Report<DaemonCheck>,
    families: Families,
    cancel: CancellationToken,
) {
    let mut grpc = GrpcPorts::default();
    // Only a daemon restarted in place needs its family (to kill it first),
    // and it changes rarely: every fifth check, from the first.
    let needs_family = target.daemon.spec().policy == Policy::OnDaemonExit;
    let mut checks: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
        let Some(me) = proctree::stat(target.pid).filter(|p| p.start == target.start) else {
            return;
        };
        if matches!(me.state, 'Z' | 'X') {
            return;
        }
        if needs_family && checks.is_multiple_of(5) {
            let kids = proctree::descendants_of(target.pid);
            // Kept only if the walk was the daemon's own: it still lived
            // after it.
            if proctree::stat(target.pid).is_some_and(|p| p.start == target.start) {
                families.record(target.pid, kids);
            }
        }
        checks += 1;
        let verdict = if matches!(me.state, 'T' | 't') {
            Err("stopped (SIGSTOP, or a debugger)".to_string())
        } else {
            let ask = ask(&target, check_timeout, &mut grpc);
            match timeout(check_timeout, ask).await {
                Ok(v) => v,
                Err(_) => Err(format!("no answer within {check_timeout:?}")),
            }
        };
        let check = DaemonCheck {
            daemon: target.daemon,
            pid: target.pid,
            healthy: verdict.is_ok(),
            detail: verdict.unwrap_or_else(|e| e),
        };
        if !report.send(check) {
            return;
        }
    }
}

/// Asks the daemon itself, by its kind; `Ok` with a word on what answered.
async fn ask(
    target: &Target,
    check_timeout: Duration,
    grpc: &mut GrpcPorts,
) -> Result<String, String> {
    match target.check {
        Check::Gcs | Check::Process => Ok("running".into()),
        Check::Grpc => grpc.check(target.pid, check_timeout).await,
        Check::Http { path } => match &target.http {
            Some((host, port)) => http(host, *port, path).await,
            None => Ok("running (no --port to ask)".into()),
        },
    }
}

/// The raylet's gRPC ports and a kept connection to each: found from its
/// sockets once, and found again only when none of them answers.
#[derive(Default)]
struct GrpcPorts {
    clients: Vec<(u16, HealthClient<Channel>)>,
}

impl GrpcPorts {
    /// grpc.health.v1 Check on each port: SERVING on any is healthy.
    async fn check(&mut self, pid: Pid, check_timeout: Duration) -> Result<String, String> {
        if self.clients.is_empty() {
            for port in listening_ports(pid) {
                let Ok(e) = Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
                    continue;
                };
                let channel = e.connect_timeout(check_timeout).connect_lazy();
                self.clients.push((port, HealthClient::new(channel)));
            }
        }
        if self.clients.is_empty() {
            return Err("no listening port found".into());
        }
        let mut last = String::new();
        for (port, client) in &mut self.clients {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            match timeout(check_timeout, client.check(request)).await {
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    return Ok(format!("SERVING on port {port}"))
                }
                Ok(Ok(r)) => last = format!("port {port} answered status {}", r.get_ref().status),
                Ok(Err(s)) => last = format!("port {port}: {}", s.message()),
                Err(_) => last = format!("port {port}: no answer within {check_timeout:?}"),
            }
        }
        // None answered: look for the ports again next time.
        self.clients.clear();
        Err(last)
    }
}

/// `GET path` over HTTP/1.0: 200 is healthy.
async fn http(host: &str, port: u16, path: &str) -> Result<String, String> {
    match http_client::status_async(host, port, path, "rayhead").await? {
        Some(200) => Ok(format!("{path} answered 200")),
        Some(code) => Err(format!("{path} answered {code}")),
        None => Err(format!("{path}: no HTTP answer")),
    }
}

/// Where the dashboard serves, from its argv: `--host` (a wildcard is asked
/// through loopback) and `--port`.
pub fn http_target(host: Option<String>, port: Option<String>) -> Option<(String, u16)> {
    let port = port?.parse().ok()?;
    let host = match host.as_deref() {
        None | Some("") | Some("0.0.0.0") | Some("::") | Some("localhost") => "127.0.0.1".into(),
        Some(h) => h.to_string(),
    };
    Some((host, port))
}

/// The TCP ports `pid` listens on: its socket inodes (`/proc/<pid>/fd`)
/// matched against the LISTEN rows of its namespace's `/proc/net/tcp{,6}`.
fn listening_ports(pid: Pid) -> Vec<u16> {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        ports.extend(listening_in(&text, &inodes));
    }
    ports.into_iter().collect()
}

/// The local ports of the LISTEN (`0A`) rows of a `/proc/net/tcp` table
/// whose inode is in `inodes`.
fn listening_in(table: &str, inodes: &BTreeSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_ports_by_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:1F94 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 0100007F:1F95 0100007F:D0A4 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0
   3: garbage";
        let mine: BTreeSet<u64> = [111, 333].into();
        assert_eq!(listening_in(table, &mine), vec![0x1F93]);
        assert!(listening_in("", &mine).is_empty());
    }

    #[tokio::test]
    async fn finds_this_process_listening() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(nix::unistd::getpid()).contains(&port));
    }

    #[test]
    fn the_dashboard_is_asked_through_loopback() {
        let t = |h: Option<&str>, p: Option<&str>| {
            http_target(h.map(String::from), p.map(String::from))
        };
        assert_eq!(
            t(Some("0.0.0.0"), Some("8265")),
            Some(("127.0.0.1".into(), 8265))
        );
        assert_eq!(
            t(Some("127.0.0.1"), Some("1")),
            Some(("127.0.0.1".into(), 1))
        );
        assert_eq!(t(Some("10.1.2.3"), Some("1")), Some(("10.1.2.3".into(), 1)));
        assert_eq!(t(None, Some("x")), None);
        assert_eq!(t(None, None), None);
    }

    /// The checked pid now names a process that started at another time
    /// (the daemon exited, was reaped, and the pid was reused): the checks
    /// end without a health event, and record no family for a later
    /// kill, while the same process under its own identity is checked.
    #[tokio::test]
    async fn a_reused_pid_is_neither_checked_nor_its_family_kept() {
        let mut other = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(other.id() as i32);
        let id = crate::sys::proctree::Identity::of(pid).unwrap();
        let run = |start| {
            let (tx, mut rx) = Report::channel();
            let families = Families::default();
            let target = Target {
                daemon: Daemon::LogMonitor,
                pid,
                start,
                check: Check::Process,
                http: None,
            };
            let cancel = CancellationToken::new();
            let f = families.clone();
            async move {
                let task = tokio::spawn(check_every(
                    target,
                    Duration::from_millis(10),
                    Duration::from_secs(1),
                    tx,
                    f,
                    cancel.clone(),
                ));
                let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
                cancel.cancel();
                let _ = task.await;
                (first.ok().flatten().is_some(), families.take(pid))
            }
        };
        let (heard, family) = run(id.start + 1).await;
        // Its own identity: the same process is checked (the control).
        let (heard_own, _) = run(id.start).await;
        crate::sys::pin::signal_all(
            proctree::descendants_of(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = other.kill();
        let _ = other.wait();
        assert!(
            !heard,
            "a health event for a process that is not the daemon"
        );
        assert!(
            family.is_empty(),
            "a family kept for another process: {family:?}"
        );
        assert!(heard_own);
    }
}
