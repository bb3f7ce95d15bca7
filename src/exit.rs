//! Exit codes, and the exit reason that goes to the termination message.
//!
//! rayhead passes its command's own exit code on (0-255, or 128+N for a death
//! by signal N). The codes below are rayhead's own decisions; the README has
//! the table. They sit in the range that sysexits(3) and shells leave to
//! programs, away from 1 and 2 (a Ray daemon's own failures) and from 126+.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use nix::sys::signal::Signal;

/// The configuration, the command line or the environment is invalid
/// (sysexits' EX_USAGE). Also [`Exit::Config`]'s code.
pub const CONFIG: u8 = 64;
/// rayhead itself failed (sysexits' EX_SOFTWARE). Also [`Exit::Internal`]'s
/// code.
pub const INTERNAL: u8 = 70;
/// A tool that `rayhead dev` needs is missing (sysexits' EX_UNAVAILABLE).
/// Also [`Exit::ToolMissing`]'s code.
pub const TOOL_MISSING: u8 = 69;

/// Kubernetes reads at most this much of the termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Why rayhead exits: each decision is a variant with its code, and its
/// text (one or two sentences for a human; it lands in `kubectl describe
/// pod`, and never contains a secret). rayhead's own exit, the last of the
/// ending types: a child's end is an `ExitStatus`, and a supervisor's
/// reason to stop (a `StopReason`) becomes one of these after the teardown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exit {
    /// The supervised command's own status passed on (0-255, 128+N for a
    /// death by signal N), or 0 for a requested stop of a Ray head.
    #[error("{reason}")]
    Status { code: u8, reason: String },
    /// Invalid configuration, environment or command line.
    #[error("{0}")]
    Config(String),
    /// rayhead itself failed: its runtime or signal handlers.
    #[error("{0}")]
    Internal(String),
    /// The GCS was lost and not SERVING again before the head's reconnect
    /// timeout less the margin.
    #[error("{0}")]
    GcsNotRecovered(String),
    /// The GCS was lost without fault tolerance: the head shares its fate.
    #[error("{0}")]
    GcsLostWithoutFaultTolerance(String),
    /// gcs.max-restarts consecutive in-place restarts failed.
    #[error("{0}")]
    GcsCrashLoop(String),
    /// The head raylet exited.
    #[error("{0}")]
    RayletDied(String),
    /// Another Ray daemon exited and ray.on-daemon-exit is "exit".
    #[error("{0}")]
    DaemonDied(String),
    /// `ray start` failed, or left no gcs_server or raylet running.
    #[error("{0}")]
    RayStartFailed(String),
    /// Redis did not answer within redis.startup-timeout.
    #[error("{0}")]
    RedisUnreachable(String),
    /// Redis rejected the credentials.
    #[error("{0}")]
    RedisAuth(String),
    /// The GCS was lost in block mode, where rayhead does not restart it.
    #[error("{0}")]
    GcsLostInBlockMode(String),
    /// The GCS's RocksDB storage path is missing, not a directory,
    /// read-only or not writable: no GCS can start on it.
    #[error("{0}")]
    StorageUnusable(String),
    /// The GCS's RocksDB storage stayed full (below gcs.storage-min-free)
    /// until the gate's time ran out.
    #[error("{0}")]
    StorageFull(String),
    /// The command exists but cannot be executed (as a shell reports it).
    #[error("{0}")]
    CannotExecute(String),
    /// The command was not found (as a shell reports it).
    #[error("{0}")]
    NotFound(String),
    /// `rayhead dev` needs a tool (`ray`, `redis-server`) that is not
    /// installed (sysexits' EX_UNAVAILABLE).
    #[error("{0}")]
    ToolMissing(String),
}

impl Exit {
    /// The process exit code. rayhead's own decisions sit in the range that
    /// sysexits(3) and shells leave to programs, away from 1 and 2 (a Ray
    /// daemon's own failures) and from 126+; the README has the table.
    pub fn code(&self) -> u8 {
        match self {
            Exit::Status { code, .. } => *code,
            Exit::Config(_) => CONFIG,
            Exit::Internal(_) => INTERNAL,
            Exit::GcsNotRecovered(_) => 80,
            Exit::GcsLostWithoutFaultTolerance(_) => 81,
            Exit::GcsCrashLoop(_) => 82,
            Exit::RayletDied(_) => 83,
            Exit::DaemonDied(_) => 84,
            Exit::RayStartFailed(_) => 85,
            Exit::RedisUnreachable(_) => 86,
            Exit::RedisAuth(_) => 87,
            Exit::GcsLostInBlockMode(_) => 88,
            Exit::StorageUnusable(_) => 89,
            Exit::StorageFull(_) => 90,
            Exit::CannotExecute(_) => 126,
            Exit::NotFound(_) => 127,
            Exit::ToolMissing(_) => TOOL_MISSING,
        }
    }

    /// The reason, for the log and the termination message.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Kubernetes' default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// Writes the reason to the termination message file. The default path is
/// only written when it exists (Kubernetes creates it): rayhead must not
/// litter `/dev` on a laptop. A path the user chose is created.
pub fn write_termination_message(path: &Path, reason: &str) -> std::io::Result<()> {
    let create = path.as_os_str() != DEFAULT_TERMINATION_LOG;
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(path)?;
    let mut text = reason.as_bytes();
    if text.len() > TERMINATION_MESSAGE_MAX {
        let mut end = TERMINATION_MESSAGE_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
    }
    f.write_all(text)?;
    f.write_all(b"\n")
}

/// Why a supervisor stops: a stop signal, or rayhead's own decision. The
/// Ray supervisor's machine ends with it, and so does the dev runner; each
/// turns it into rayhead's [`Exit`] after its teardown.
#[derive(Debug, PartialEq)]
pub enum StopReason {
    /// A SIGTERM or SIGINT asked for a stop: exit 0 once the tree is down.
    Signal(Signal),
    /// rayhead decided to exit: tear down, then exit with this.
    Exit(Exit),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant; the match makes a new variant a compile error
    /// here until it is listed.
    fn every_variant() -> Vec<Exit> {
        let s = String::new;
        let all = vec![
            Exit::Status {
                code: 0,
                reason: s(),
            },
            Exit::Config(s()),
            Exit::Internal(s()),
            Exit::GcsNotRecovered(s()),
            Exit::GcsLostWithoutFaultTolerance(s()),
            Exit::GcsCrashLoop(s()),
            Exit::RayletDied(s()),
            Exit::DaemonDied(s()),
            Exit::RayStartFailed(s()),
            Exit::RedisUnreachable(s()),
            Exit::RedisAuth(s()),
            Exit::GcsLostInBlockMode(s()),
            Exit::StorageUnusable(s()),
            Exit::StorageFull(s()),
            Exit::CannotExecute(s()),
            Exit::NotFound(s()),
            Exit::ToolMissing(s()),
        ];
        for e in &all {
            match e {
                Exit::Status { .. }
                | Exit::Config(_)
                | Exit::Internal(_)
                | Exit::GcsNotRecovered(_)
                | Exit::GcsLostWithoutFaultTolerance(_)
                | Exit::GcsCrashLoop(_)
                | Exit::RayletDied(_)
                | Exit::DaemonDied(_)
                | Exit::RayStartFailed(_)
                | Exit::RedisUnreachable(_)
                | Exit::RedisAuth(_)
                | Exit::GcsLostInBlockMode(_)
                | Exit::StorageUnusable(_)
                | Exit::StorageFull(_)
                | Exit::CannotExecute(_)
                | Exit::NotFound(_)
                | Exit::ToolMissing(_) => {}
            }
        }
        all
    }

    /// The README's exit-code table lists exactly rayhead's own codes, each
    /// once, beside the passed-on ranges.
    #[test]
    fn readme_exit_code_table_matches_the_enum() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Exit codes")
            .nth(1)
            .expect("README has an Exit codes section");
        let mut documented: Vec<u8> = table
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        documented.sort();
        let mut ours: Vec<u8> = every_variant()
            .iter()
            .filter(|e| !matches!(e, Exit::Status { .. }))
            .map(Exit::code)
            .collect();
        ours.sort();
        assert_eq!(documented, ours, "README's exit-code table vs exit::Exit");
        assert!(table.contains("| 0-255 |") && table.contains("| 128+N |"));
    }

    #[test]
    fn the_reason_is_the_text() {
        let e = Exit::RayletDied("the head raylet (pid 7) was killed by SIGKILL".into());
        assert_eq!(e.code(), 83);
        assert_eq!(e.reason(), "the head raylet (pid 7) was killed by SIGKILL");
        let s = Exit::Status {
            code: 143,
            reason: "stopped".into(),
        };
        assert_eq!((s.code(), s.reason().as_str()), (143, "stopped"));
    }

    #[test]
    fn termination_message_is_truncated_on_a_char_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("msg");
        // 2-byte characters, 4096 a boundary: exactly 2048 of them are kept.
        let long = "é".repeat(5000);
        write_termination_message(&p, &long).unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert_eq!(got, format!("{}\n", "é".repeat(2048)));
        // One byte off: byte 4096 falls inside a character, so the cut moves
        // back to 4095, never forward and never further.
        let odd = format!("a{}", "é".repeat(5000));
        write_termination_message(&p, &odd).unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert_eq!(got, format!("a{}\n", "é".repeat(2047)));
        // Exactly the limit is kept whole; one more byte is cut.
        let exact = "x".repeat(TERMINATION_MESSAGE_MAX);
        write_termination_message(&p, &exact).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{exact}\n"));
        write_termination_message(&p, &format!("{exact}y")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{exact}\n"));
        write_termination_message(&p, "short").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "short\n");
    }
}
