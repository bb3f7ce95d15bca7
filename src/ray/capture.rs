//! A daemon as it ran, captured from `/proc` so that it can be started again
//! exactly: the same argv, environment, working directory and log files.
//! This is what Ray's own fault-tolerance tests do for the GCS
//! (`kill_gcs_server()` then `start_gcs_server()`), and it works as well for
//! the dashboard, the monitors and the client server.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::init::{proctree, spawn};

#[derive(Debug, Clone)]
pub struct DaemonSpec {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

/// Where an fd of a process points, when it is a file that can be reopened.
fn file_of(pid: Pid, fd: i32) -> Option<PathBuf> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    (target.is_absolute() && target.is_file()).then_some(target)
}

impl DaemonSpec {
    /// Reads a running daemon's argv, environment, cwd and log files from
    /// `/proc`.
    pub fn capture(pid: Pid) -> io::Result<DaemonSpec> {
        let argv = proctree::cmdline(pid)?;
        if argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "empty cmdline (the process exited)",
            ));
        }
        let env = proctree::split_nul(&fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_vec();
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                ))
            })
            .collect();
        let cwd = fs::read_link(format!("/proc/{pid}/cwd"))?;
        Ok(DaemonSpec {
            argv,
            env,
            cwd,
            stdout: file_of(pid, 1),
            stderr: file_of(pid, 2),
        })
    }

    /// The command that starts it again. Its output is appended to the same
    /// log files (or goes to rayhead's own stdout/stderr when it had none).
    pub fn command(&self) -> io::Result<Command> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        let open = |p: &PathBuf| OpenOptions::new().append(true).create(true).open(p);
        if let Some(p) = &self.stdout {
            cmd.stdout(open(p)?);
        }
        if let Some(p) = &self.stderr {
            cmd.stderr(open(p)?);
        }
        spawn::prepare(&mut cmd);
        Ok(cmd)
    }

    /// The value of `--name=value` in the argv, if given that way.
    pub fn arg(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.argv
            .iter()
            .find_map(|a| a.to_str()?.strip_prefix(&prefix).map(String::from))
    }

    /// The argv for a log line, with the Redis password redacted.
    pub fn redacted(&self) -> String {
        let args: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        crate::redact::command_line(&args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_this_process() {
        let me = nix::unistd::getpid();
        let spec = DaemonSpec::capture(me).unwrap();
        assert!(!spec.argv.is_empty());
        assert_eq!(spec.cwd, std::env::current_dir().unwrap());
        assert!(spec.env.iter().any(|(k, _)| k == "PATH"));
    }
}
