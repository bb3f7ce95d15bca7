//! Ray's daemons on a head, and how to tell them apart in `/proc`, as
//! `ray stop` does.

use std::fmt;

use nix::unistd::Pid;

use crate::init::proctree::ProcInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Daemon {
    GcsServer,
    Raylet,
    Dashboard,
    LogMonitor,
    Monitor,
    ClientServer,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::GcsServer => "gcs_server",
            Daemon::Raylet => "raylet",
            Daemon::Dashboard => "dashboard",
            Daemon::LogMonitor => "log_monitor",
            Daemon::Monitor => "monitor",
            Daemon::ClientServer => "client_server",
        }
    }

    /// Identifies a daemon from its kernel name and command line.
    pub fn identify(comm: &str, cmdline: &[String]) -> Option<Daemon> {
        match comm {
            "gcs_server" => return Some(Daemon::GcsServer),
            "raylet" => return Some(Daemon::Raylet),
            _ => {}
        }
        let has = |needle: &str| cmdline.iter().any(|a| a.contains(needle));
        if has("dashboard/dashboard.py") {
            Some(Daemon::Dashboard)
        } else if has("log_monitor.py") {
            // Before monitor.py, which it contains.
            Some(Daemon::LogMonitor)
        } else if has("monitor.py") {
            Some(Daemon::Monitor)
        } else if has("ray.util.client.server") {
            Some(Daemon::ClientServer)
        } else {
            None
        }
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A process's argv from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: Pid) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The daemons among `procs` whose parent is `parent` (rayhead, once
/// `ray start` has exited and they were re-parented to it; or `ray start
/// --block`).
pub fn find(procs: &[ProcInfo], parent: Pid) -> Vec<(Daemon, Pid)> {
    let mut out: Vec<(Daemon, Pid)> = procs
        .iter()
        .filter(|p| p.ppid == parent && p.state != 'Z')
        .filter_map(|p| Daemon::identify(&p.comm, &cmdline(p.pid)).map(|d| (d, p.pid)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_each_daemon() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(Daemon::identify("gcs_server", &[]), Some(Daemon::GcsServer));
        assert_eq!(Daemon::identify("raylet", &[]), Some(Daemon::Raylet));
        assert_eq!(
            Daemon::identify(
                "python3",
                &v("python3 /x/ray/dashboard/dashboard.py --host=0")
            ),
            Some(Daemon::Dashboard)
        );
        assert_eq!(
            Daemon::identify("python3", &v("python3 -u /x/ray/_private/log_monitor.py")),
            Some(Daemon::LogMonitor)
        );
        assert_eq!(
            Daemon::identify(
                "python3",
                &v("python3 -u /x/autoscaler/_private/monitor.py")
            ),
            Some(Daemon::Monitor)
        );
        assert_eq!(
            Daemon::identify("python3", &v("python3 -m ray.util.client.server --port=1")),
            Some(Daemon::ClientServer)
        );
        assert_eq!(Daemon::identify("ray::IDLE", &[]), None);
    }
}
