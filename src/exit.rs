//! Exit codes, and the exit reason that goes to the termination message.
//!
//! rayhead passes its command's own exit code on (0-255, or 128+N for a death
//! by signal N). The codes below are rayhead's own decisions; the README has
//! the table. They sit in the range that sysexits(3) and shells leave to
//! programs, away from 1 and 2 (a Ray daemon's own failures) and from 126+.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// The configuration, the command line or the environment is invalid
/// (sysexits' EX_USAGE).
pub const CONFIG: u8 = 64;
/// rayhead itself failed: it could not set up its runtime or signals
/// (sysexits' EX_SOFTWARE).
pub const INTERNAL: u8 = 70;
/// The GCS was lost and did not answer SERVING again before the head's
/// reconnect window (less the margin) ran out.
pub const GCS_NOT_RECOVERED: u8 = 80;
/// The GCS was lost without fault tolerance (no external Redis): its state
/// died with it, so the head shares its fate, as KubeRay describes.
pub const GCS_LOST_NO_FT: u8 = 81;
/// The crash-loop guard: more in-place GCS restarts than gcs.max-restarts
/// within gcs.restart-window.
pub const GCS_CRASH_LOOP: u8 = 82;
/// The head raylet exited.
pub const RAYLET_DIED: u8 = 83;
/// Another Ray daemon (dashboard, log monitor, monitor, client server)
/// exited and ray.on-daemon-exit is "exit".
pub const DAEMON_DIED: u8 = 84;
/// `ray start` failed, or left no gcs_server or raylet running.
pub const RAY_START_FAILED: u8 = 85;
/// Redis never answered within redis.startup-timeout.
pub const REDIS_UNREACHABLE: u8 = 86;
/// Redis rejected the credentials.
pub const REDIS_AUTH: u8 = 87;
/// The GCS was lost in block mode, where rayhead does not restart it.
pub const GCS_LOST_BLOCK: u8 = 88;
/// The command exists but cannot be executed (as a shell reports it).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as a shell reports it).
pub const NOT_FOUND: u8 = 127;

/// Kubernetes reads at most this much of the termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Why rayhead exits, and with what code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    /// One or two sentences for a human: it lands in `kubectl describe pod`.
    /// Never contains a secret.
    pub reason: String,
}

impl Exit {
    pub fn new(code: u8, reason: impl Into<String>) -> Self {
        Exit {
            code,
            reason: reason.into(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
