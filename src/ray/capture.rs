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

use crate::init::spawn;
use crate::sys::proctree;

#[derive(Debug, Clone)]
pub struct CapturedCommand {
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

impl CapturedCommand {
    /// Reads a running daemon's argv, environment, cwd and log files from
    /// `/proc`.
    pub fn capture(pid: Pid) -> io::Result<CapturedCommand> {
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
        Ok(CapturedCommand {
            argv,
            env,
            cwd,
            stdout: file_of(pid, 1),
            stderr: file_of(pid, 2),
        })
    }

    /// The command that starts it again. Its output is appended to the same
    /// log files; when it had none (a pipe, as from `ray start`'s own
    /// output), it is a pipe again, for the caller to pass through the
    /// redactor: never rayhead's own stdout/stderr raw.
    pub fn command(&self) -> io::Result<Command> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        let open = |p: &PathBuf| OpenOptions::new().append(true).create(true).open(p);
        match &self.stdout {
            Some(p) => cmd.stdout(open(p)?),
            None => cmd.stdout(Stdio::piped()),
        };
        match &self.stderr {
            Some(p) => cmd.stderr(open(p)?),
            None => cmd.stderr(Stdio::piped()),
        };
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
        let spec = CapturedCommand::capture(me).unwrap();
        assert!(!spec.argv.is_empty());
        assert_eq!(spec.cwd, std::env::current_dir().unwrap());
        assert!(spec.env.iter().any(|(k, _)| k == "PATH"));
    }

    /// A daemon whose output was a pipe gets a pipe again, which the
    /// supervisor forwards through the redactor.
    #[test]
    fn a_piped_daemon_is_piped_again() {
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let daemon = Kill(
            Command::new("sleep")
                .arg("60")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = Pid::from_raw(daemon.0.id() as i32);
        // Until it has exec'd (its cmdline is empty before).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let spec = loop {
            match CapturedCommand::capture(pid) {
                Ok(s) if s.argv.last().is_some_and(|a| a == "60") => break s,
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => panic!("never captured: {r:?}"),
            }
        };
        assert_eq!((&spec.stdout, &spec.stderr), (&None, &None));
        let again = Kill(spec.command().unwrap().spawn().unwrap());
        assert!(again.0.stdout.is_some() && again.0.stderr.is_some());
    }
}
