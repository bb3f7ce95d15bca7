//! Ray's daemons on a head: one table says how to recognise each in `/proc`
//! (as `ray stop` does), what its exit means, and whether the head needs it.
//! Adding a daemon is one row; the supervisor, `/status` and `/readyz` read
//! the table.

use std::fmt;

use nix::unistd::Pid;

use crate::config::{Config, ConfigError, Problem};
use crate::sys::proctree::{self, ProcInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Daemon {
    GcsServer,
    Raylet,
    Dashboard,
    LogMonitor,
    /// Ray's autoscaler monitor (`monitor.py`; "monitor" in /status).
    AutoscalerMonitor,
    ClientServer,
}

/// How a daemon is recognised in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognise {
    /// By the kernel's command name (a native binary).
    Comm(&'static str),
    /// By a word in its command line (a Python module or script).
    Cmdline(&'static str),
}

/// What a daemon's exit means for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The head cannot go on without it, and it cannot be replaced in place
    /// (a new raylet would be a new node): rayhead exits 83.
    Critical,
    /// Restarted in place within the reconnect window: the GCS.
    RestartInPlace,
    /// Follows `ray.on-daemon-exit`.
    OnDaemonExit,
}

/// How a daemon's health is checked, beside its `/proc` state (a stopped
/// process is hung, whatever else answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Its own monitor: the GCS's grpc.health.v1 Watch and Check
    /// (`health.rs`).
    Gcs,
    /// grpc.health.v1 Check on its listening ports, found from its sockets.
    Grpc,
    /// An HTTP GET that does not need the GCS (so a GCS recovery is not a
    /// dashboard failure), on the `--host` and `--port` of its argv.
    Http { path: &'static str },
    /// The `/proc` state alone.
    Process,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub daemon: Daemon,
    pub name: &'static str,
    pub recognise: Recognise,
    pub policy: Policy,
    pub check: Check,
}

impl Spec {
    /// `ray start` must leave it running: the daemons whose loss ends or
    /// restarts something (the GCS in place, the raylet with the head).
    pub fn needed_at_start(&self) -> bool {
        self.policy != Policy::OnDaemonExit
    }
}

/// Every daemon. A command-line word matches a whole argument or its last
/// path components (`.../monitor.py`, not `.../log_monitor.py`), so the
/// order of the rows does not matter.
pub static TABLE: &[Spec] = &[
    Spec {
        daemon: Daemon::GcsServer,
        name: "gcs_server",
        recognise: Recognise::Comm("gcs_server"),
        policy: Policy::RestartInPlace,
        check: Check::Gcs,
    },
    Spec {
        daemon: Daemon::Raylet,
        name: "raylet",
        recognise: Recognise::Comm("raylet"),
        policy: Policy::Critical,
        check: Check::Grpc,
    },
    Spec {
        daemon: Daemon::Dashboard,
        name: "dashboard",
        recognise: Recognise::Cmdline("dashboard/dashboard.py"),
        policy: Policy::OnDaemonExit,
        check: Check::Http {
            path: "/api/version",
        },
    },
    Spec {
        daemon: Daemon::LogMonitor,
        name: "log_monitor",
        recognise: Recognise::Cmdline("log_monitor.py"),
        policy: Policy::OnDaemonExit,
        check: Check::Process,
    },
    Spec {
        daemon: Daemon::AutoscalerMonitor,
        name: "monitor",
        recognise: Recognise::Cmdline("monitor.py"),
        policy: Policy::OnDaemonExit,
        check: Check::Process,
    },
    Spec {
        daemon: Daemon::ClientServer,
        name: "client_server",
        recognise: Recognise::Cmdline("ray.util.client.server"),
        policy: Policy::OnDaemonExit,
        check: Check::Process,
    },
];

impl Daemon {
    /// Its row of the table. An exhaustive match: a new daemon does not
    /// compile until it has a row (a test checks that each points to its own).
    pub fn spec(self) -> &'static Spec {
        let row = match self {
            Daemon::GcsServer => 0,
            Daemon::Raylet => 1,
            Daemon::Dashboard => 2,
            Daemon::LogMonitor => 3,
            Daemon::AutoscalerMonitor => 4,
            Daemon::ClientServer => 5,
        };
        &TABLE[row]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Identifies a daemon from its kernel name and command line.
    fn identify(comm: &str, cmdline: &[String]) -> Option<Daemon> {
        TABLE
            .iter()
            .find(|s| match s.recognise {
                Recognise::Comm(c) => comm == c,
                Recognise::Cmdline(word) => cmdline.iter().any(|a| is_word(a, word)),
            })
            .map(|s| s.daemon)
    }
}

/// `arg` is `word`, or a path that ends in it at a component boundary.
fn is_word(arg: &str, word: &str) -> bool {
    arg == word
        || arg
            .strip_suffix(word)
            .is_some_and(|head| head.ends_with('/'))
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The daemons among `procs` whose parent is `parent` (rayhead, once
/// `ray start` has exited and they were re-parented to it; or `ray start
/// --block`).
pub fn find(procs: &[ProcInfo], parent: Pid) -> Vec<(Daemon, Pid)> {
    let mut out: Vec<(Daemon, Pid)> = procs
        .iter()
        .filter(|p| p.ppid == parent && p.state != 'Z')
        .filter_map(|p| {
            let argv: Vec<String> = proctree::cmdline(p.pid)
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            Daemon::identify(&p.comm, &argv).map(|d| (d, p.pid))
        })
        .collect();
    out.sort();
    out
}

/// `ray.ready-requires` names daemons of [`TABLE`]: checked here, where
/// the table is, for every loaded configuration (`Cli::load`, the dev
/// runner's check of the head's), since `config` knows no daemons.
pub fn check_ready_requires(cfg: &Config) -> Result<(), ConfigError> {
    let key = &crate::config::keys::RAY_READY_REQUIRES;
    let source = cfg
        .resolved
        .iter()
        .find(|r| std::ptr::eq(r.key, key))
        .map(|r| r.source.clone());
    let names: Vec<&str> = TABLE.iter().map(|d| d.name).collect();
    let problems: Vec<Problem> = cfg
        .ray
        .ready_requires
        .iter()
        .filter(|name| !names.contains(&name.as_str()))
        .map(|name| Problem {
            key: key.name.to_string(),
            source: source.clone(),
            message: format!(
                "{name:?}: not a daemon; expected any of {}",
                names.join(", ")
            ),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(problems))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{FlagValue, Inputs};

    #[test]
    fn ready_requires_names_daemons_of_the_table() {
        let load = |v: &str| {
            let flags = vec![FlagValue::parse_set(&format!("ray.ready-requires={v}")).unwrap()];
            Config::load(&Inputs { file: None, flags }, &[("HOME", "/")]).unwrap()
        };
        assert!(check_ready_requires(&load("raylet monitor")).is_ok());
        let e = check_ready_requires(&load("raylet nosuch")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "ray.ready-requires");
        assert!(
            e.0[0]
                .message
                .starts_with("\"nosuch\": not a daemon; expected any of gcs_server, raylet"),
            "{e}"
        );
        assert!(e.to_string().contains("(from flag"), "{e}");
    }

    use super::*;

    #[test]
    fn identifies_each_daemon() {
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
            Some(Daemon::AutoscalerMonitor)
        );
        assert_eq!(
            Daemon::identify("python3", &v("python3 -m ray.util.client.server --port=1")),
            Some(Daemon::ClientServer)
        );
        assert_eq!(Daemon::identify("ray::IDLE", &[]), None);
        // A comm is not matched as a command-line word, nor the reverse.
        assert_eq!(Daemon::identify("python3", &v("/x/raylet")), None);
    }

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn every_daemon_has_one_row() {
        for s in TABLE {
            assert_eq!(
                TABLE.iter().filter(|r| r.daemon == s.daemon).count(),
                1,
                "{}",
                s.name
            );
            assert!(
                std::ptr::eq(s.daemon.spec(), s),
                "{}: spec() points to another row",
                s.name
            );
        }
        let names: std::collections::BTreeSet<&str> = TABLE.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), TABLE.len());
        // Only the GCS has a check of its own.
        for s in TABLE {
            assert_eq!(
                s.check == Check::Gcs,
                s.daemon == Daemon::GcsServer,
                "{}",
                s.name
            );
        }
    }

    /// No row's word hides another's: each daemon's own command line is
    /// recognised as that daemon, whatever the rows' order.
    #[test]
    fn a_word_is_matched_whole() {
        for s in TABLE {
            if let Recognise::Cmdline(word) = s.recognise {
                let argv = v(&format!("/usr/bin/python3 /venv/lib/ray/x/{word} --flag"));
                assert_eq!(Daemon::identify("python3", &argv), Some(s.daemon), "{word}");
                let argv = v(&format!("/usr/bin/python3 /venv/lib/ray/x/example_{word}"));
                assert_eq!(Daemon::identify("python3", &argv), None, "example_{word}");
            }
        }
    }
}
