//! A real redis-server, on a free port in the test's dir: for the
//! `redis-check` and `redis-cleanup` suite and for the Ray heads' store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{free_port, Dir};
use crate::wait::eventually_or_exit;

/// A real redis-server on a free port, in the test's dir, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub password: String,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// With a password and AOF on, as the KubeRay guide's Redis.
    pub fn start(dir: &Dir) -> RedisServer {
        Self::start_with(dir, "e2e-secret-pw", &[])
    }

    /// With this password ("" for none) and extra `--option value` args,
    /// which come after the defaults and so override them.
    pub fn start_with(dir: &Dir, password: &str, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let rdir = dir.join(&format!("redis-{port}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let mut s = RedisServer {
            port,
            password: password.into(),
            child: None,
            dir: rdir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.restart();
        s
    }

    /// Starts it (again) and waits for its PONG. A bind that failed (the
    /// port briefly held) ends the process: it is started again.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let what = format!("redis-server to answer on {}", self.port);
        let (port, password) = (self.port, self.password.clone());
        loop {
            // Held by self while it starts, so that a failed wait kills it.
            let child = self.child.insert(self.spawn());
            let left = deadline.saturating_duration_since(Instant::now());
            let up = eventually_or_exit(left, &what, child, || {
                (cli(port, &password, &["PING"]).trim() == "PONG").then_some(())
            });
            if up.is_ok() {
                return;
            }
            self.child = None;
        }
    }

    fn spawn(&self) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        if !self.password.is_empty() {
            cmd.args(["--requirepass", &self.password]);
        }
        cmd.args(["--appendonly", "yes", "--save", "", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/setup.sh)")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// redis-cli's answer (the password goes through its env var, not argv).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &self.password, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// redis-cli's answer from the server on `port`.
fn cli(port: u16, password: &str, args: &[&str]) -> String {
    // A hung server (CLIENT PAUSE, a stopped process) must not hang the
    // test: coreutils' timeout bounds every call.
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "redis-cli", "-p", &port.to_string()])
        .args(args);
    if !password.is_empty() {
        cmd.env("REDISCLI_AUTH", password);
    }
    let out = cmd.output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
