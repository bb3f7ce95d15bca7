//! The shared harness for the integration tests (ripgrep's layout).
//!
//! Each test gets its own temp dir, runs the real `rayhead` binary from
//! `CARGO_BIN_EXE_rayhead` with a scrubbed environment, and captures stdout
//! and stderr to files. A run that outlives its bound is killed by the
//! watchdog, and a run dropped by a failing test is killed with its whole
//! tree, so nothing leaks into the next test. Failures print everything the
//! run wrote.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rayhead::sys::proctree;

use crate::wait::{eventually, poll_until, NotYet};

/// The PATH every run gets: nothing from the caller's environment.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The repository's root: where the Makefile, the Dockerfile, the
/// manifests and the docs the tests read are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The path of the binary under test.
pub fn rayhead_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rayhead"))
}

/// How a test finds rayhead's pid when rayhead is not the process it spawned
/// nor that one's child (in a container, it is conmon's); `None` while there
/// is none yet.
pub type Locate = Arc<dyn Fn() -> Option<Pid> + Send + Sync>;

/// A per-test temp dir, removed when dropped.
pub struct Dir {
    tmp: tempfile::TempDir,
    /// The rayhead binary its commands run: the one under test, unless
    /// [`Dir::running`] says otherwise.
    bin: PathBuf,
    /// Set by [`Dir::located_by`].
    locate: Option<Locate>,
}

impl Dir {
    pub fn new(name: &str) -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rayhead-{name}-"))
            .tempdir()
            .expect("temp dir");
        Dir {
            tmp,
            bin: rayhead_bin(),
            locate: None,
        }
    }

    /// Its rayhead runs are found by `f`, not by their process tree (a
    /// `bin` that starts rayhead in a container).
    pub fn located_by(mut self, f: impl Fn() -> Option<Pid> + Send + Sync + 'static) -> Dir {
        self.locate = Some(Arc::new(f));
        self
    }

    /// Runs `bin` as rayhead (a static build of `make dist`, or a wrapper
    /// that runs one in a container).
    pub fn running(mut self, bin: PathBuf) -> Dir {
        assert!(bin.exists(), "{} does not exist", bin.display());
        self.bin = bin;
        self
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        fs::write(&p, text).expect("write file");
        p
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.join(name)).unwrap_or_default()
    }

    /// A rayhead command in this dir: scrubbed env, the termination message
    /// sent to `termination-log` here, debug logs.
    pub fn rayhead(&self) -> TestCommand {
        let mut cmd = self.command(&self.bin);
        cmd.locate = self.locate.clone();
        cmd
    }

    /// Another program, with the same scrubbed environment and guards.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> TestCommand {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path())
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", self.path())
            .env("D", self.path())
            .env("RAYHEAD_LOG", "debug")
            // Never the default 8099: tests run side by side.
            .env("RAYHEAD_PROBE_LISTEN", "127.0.0.1:0")
            // Never the default /tmp/rayhead-probe-<port>.sock: port 0 is shared.
            .env("RAYHEAD_PROBE_SOCKET", self.join("probe.sock"))
            .env("RAYHEAD_INIT_TERMINATION_LOG", self.join("termination-log"));
        TestCommand {
            cmd,
            pid1: false,
            dir: self.path().to_path_buf(),
            stdin: None,
            stdout: None,
            stderr: None,
            hooks: Vec::new(),
            locate: None,
        }
    }
}

type Hook = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// A command to run, optionally as PID 1 of a new PID namespace.
pub struct TestCommand {
    cmd: Command,
    pid1: bool,
    dir: PathBuf,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    hooks: Vec<Hook>,
    locate: Option<Locate>,
}

impl TestCommand {
    /// rayhead's stdout, instead of the `stdout` file (a pipe to close or
    /// to leave unread).
    pub fn stdout(mut self, s: Stdio) -> Self {
        self.stdout = Some(s);
        self
    }

    /// rayhead's stderr, instead of the `stderr` file.
    pub fn stderr(mut self, s: Stdio) -> Self {
        self.stderr = Some(s);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn arg_path(mut self, p: &Path) -> Self {
        self.cmd.arg(p);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Runs rayhead as PID 1 of its own PID namespace, through
    /// `unshare --pid --kill-child --mount-proc` (needs root, as CI has).
    pub fn pid1(mut self) -> Self {
        self.pid1 = true;
        self
    }

    pub fn stdin(mut self, s: Stdio) -> Self {
        self.stdin = Some(s);
        self
    }

    /// Runs `f` in the forked process before exec, to set up what rayhead
    /// inherits (fds, signal state).
    ///
    /// # Safety
    /// As for `CommandExt::pre_exec`.
    pub unsafe fn pre_exec<F>(mut self, f: F) -> Self
    where
        F: FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    {
        self.hooks.push(Box::new(f));
        self
    }

    /// Starts it.
    pub fn spawn(self) -> Running {
        self.spawn_named("")
    }

    /// Starts it with its output in `<name>stdout` and `<name>stderr` (for a
    /// second process in the same test dir).
    pub fn spawn_named(self, name: &str) -> Running {
        let TestCommand {
            cmd,
            pid1,
            dir,
            stdin,
            stdout,
            stderr,
            hooks,
            locate,
        } = self;
        let mut cmd = if pid1 {
            let mut u = Command::new("unshare");
            // --fork, and the namespace dies with unshare: a SIGKILL of
            // its PID 1 takes every process in it.
            u.args(["--pid", "--kill-child", "--mount-proc", "--"]);
            u.arg(cmd.get_program());
            u.args(cmd.get_args());
            u.env_clear();
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    u.env(k, v);
                }
            }
            u.current_dir(&dir);
            u
        } else {
            cmd
        };
        let file = |n: &str| -> Stdio {
            fs::File::create(dir.join(format!("{name}{n}")))
                .expect("output file")
                .into()
        };
        cmd.stdout(stdout.unwrap_or_else(|| file("stdout")))
            .stderr(stderr.unwrap_or_else(|| file("stderr")))
            .stdin(stdin.unwrap_or(Stdio::null()))
            // Its own process group, so the guard can kill the whole run.
            .process_group(0);
        for h in hooks {
            // SAFETY: the caller of `pre_exec` vouched for the hook.
            unsafe {
                cmd.pre_exec(h);
            }
        }
        // A test binary that dies (a ^C of `cargo test`, which the runs'
        // own process groups do not hear) takes its runs with it; the test's
        // thread outlives its runs. After the hooks: a change of user clears
        // it. unshare blocks SIGTERM while it waits; rayhead stops its tree
        // on it.
        let unshare = cmd.get_program() == "unshare";
        rayhead::sys::death::die_with_parent(
            &mut cmd,
            if unshare {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            },
        );
        let child = cmd.spawn().expect("spawn rayhead");
        Running {
            child: Some(child),
            pid1,
            locate,
            dir,
            name: name.to_string(),
            started: Instant::now(),
        }
    }

    /// Runs it to completion within `limit`.
    pub fn run(self, limit: Duration) -> Output {
        self.spawn().wait(limit)
    }
}

/// What a finished run left.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub termination_log: String,
    pub elapsed: Duration,
}

impl Output {
    /// Everything, for a failure message.
    pub fn dump(&self) -> String {
        format!(
            "code: {:?} signal: {:?} elapsed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- termination-log ---\n{}",
            self.code, self.signal, self.elapsed, self.stdout, self.stderr, self.termination_log
        )
    }

    /// Asserts that `secret` appears in none of what the run wrote: stdout,
    /// stderr and the termination message. Every test with a secret calls
    /// it, with rayhead at `debug` (the harness's default), where the most
    /// is logged.
    pub fn assert_no_secret(&self, secret: &str) -> &Self {
        assert!(!secret.is_empty(), "an empty secret matches everything");
        for (name, text) in [
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
            ("the termination log", &self.termination_log),
        ] {
            let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
            assert!(
                leaks.is_empty(),
                "the secret leaked to {name}:\n{}",
                leaks.join("\n")
            );
        }
        self
    }

    /// Asserts that the termination message (what the kubelet shows as the
    /// container's last state) says `want`, printing everything if not.
    #[track_caller]
    pub fn assert_termination_log(&self, want: &str) -> &Self {
        assert!(
            self.termination_log.contains(want),
            "the termination log does not say {want:?}\n{}",
            self.dump()
        );
        self
    }

    /// Asserts the exit code, printing everything if it differs.
    pub fn assert_code(&self, want: i32) -> &Self {
        assert_eq!(self.code, Some(want), "unexpected exit\n{}", self.dump());
        self
    }
}

/// A running rayhead. Dropping it kills the whole run.
pub struct Running {
    child: Option<Child>,
    pid1: bool,
    locate: Option<Locate>,
    dir: PathBuf,
    name: String,
    pub started: Instant,
}

impl Running {
    /// The pid of the process we spawned (`unshare` in PID 1 mode).
    pub fn outer_pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// rayhead's pid as this test sees it. In PID 1 mode it is the child of
    /// `unshare`, once `unshare` has exec'd it.
    pub fn rayhead_pid(&self) -> Pid {
        if let Some(locate) = &self.locate {
            return eventually(Duration::from_secs(60), "rayhead to be found", || locate());
        }
        let outer = self.outer_pid();
        if !self.pid1 {
            return outer;
        }
        eventually(
            Duration::from_secs(10),
            "rayhead to start under unshare",
            || {
                proctree::snapshot()
                    .into_iter()
                    .find(|p| p.ppid == outer && p.comm == "rayhead")
                    .map(|p| p.pid)
            },
        )
    }

    /// rayhead's stderr pipe, when the command was given `Stdio::piped()`.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Sends a signal to rayhead.
    pub fn signal(&self, sig: Signal) {
        kill(self.rayhead_pid(), sig).expect("signal rayhead");
    }

    /// Waits for a file in the test dir to exist (the child's "ready" mark).
    pub fn wait_for_file(&mut self, name: &str, limit: Duration) {
        let path = self.dir.join(name);
        let child = self.child.as_mut().expect("running");
        match poll_until(limit, Some(child), || path.exists().then_some(())) {
            Ok(()) => {}
            Err(NotYet::Exited(st)) => panic!(
                "rayhead exited ({st}) before {name} appeared\n{}",
                self.collect(None).dump()
            ),
            Err(NotYet::TimedOut(_)) => {
                let out = self.kill_and_collect();
                panic!("{name} did not appear within {limit:?}\n{}", out.dump());
            }
        }
    }

    /// Waits for the run to end within `limit` from now (not from the
    /// spawn: a long test's last wait gets its whole limit); past it, the
    /// watchdog kills the run and the test fails with its output.
    pub fn wait(mut self, limit: Duration) -> Output {
        let child = self.child.as_mut().expect("running");
        match poll_until(limit, None, || child.try_wait().expect("wait")) {
            Ok(st) => self.collect(Some(st)),
            Err(_) => {
                let out = self.kill_and_collect();
                panic!(
                    "watchdog: rayhead still running after {limit:?}\n{}",
                    out.dump()
                );
            }
        }
    }

    fn collect(&mut self, st: Option<std::process::ExitStatus>) -> Output {
        use std::os::unix::process::ExitStatusExt;
        let elapsed = self.started.elapsed();
        if st.is_some() {
            self.child = None;
        }
        let read = |n: &str| fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        Output {
            code: st.and_then(|s| s.code()),
            signal: st.and_then(|s| s.signal()),
            stdout: read(&format!("{}stdout", self.name)),
            stderr: read(&format!("{}stderr", self.name)),
            termination_log: read("termination-log"),
            elapsed,
        }
    }

    fn kill_and_collect(&mut self) -> Output {
        self.kill_tree();
        let st = self.child.as_mut().and_then(|c| c.wait().ok());
        self.collect(st)
    }

    /// Kills rayhead's descendants (those that left its group too), then
    /// its process group.
    fn kill_tree(&mut self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let outer = Pid::from_raw(child.id() as i32);
        for p in proctree::descendants(&proctree::snapshot(), outer) {
            let _ = kill(p.pid, Signal::SIGKILL);
        }
        let _ = killpg(outer, Signal::SIGKILL);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_tree();
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
    }
}

/// A test that cannot run on this machine (no podman, no cgroup v1): it
/// says so on its output and passes, except under `CI=true`, where the
/// set-up provides what it needs and a skip would hide a broken one.
pub fn cannot_run(what: &str, why: &str) {
    let msg = format!("{what} cannot run here: {why}");
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("{msg} (CI=true: make setup provides it)");
    }
    eprintln!("NOT RUN: {msg}");
}

/// Whether a pid names a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => proctree::parse_stat(&t).is_some_and(|p| p.state != 'Z'),
        Err(_) => false,
    }
}

/// Counts lines of `log` that contain `needle`.
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// `rayhead run [extra...] -- sh -c script` in `dir` (the script finds
/// the test's dir in `$D`).
pub fn run_sh(dir: &Dir, extra: &[&str], script: &str) -> TestCommand {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    dir.rayhead().args(args)
}

/// A port nobody listens on now, from 20000-32767: above Ray's worker range
/// (10002-19999), below the kernel's ephemeral range (32768+), so that no
/// client socket of another test can be sitting on it when a server (re)binds
/// it, and never 6379.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(7919, Ordering::Relaxed).wrapping_add(seed);
        let port = 20000 + (n % 12768) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32767")
}

/// The Makefile's value of `NAME = value`.
pub fn make_var(name: &str) -> String {
    let text = fs::read_to_string(root().join("Makefile")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("no {name} in the Makefile"))
        .trim()
        .to_string()
}

/// A binary `make dist` builds (`make test` runs it first): never a silent
/// skip when it is missing.
pub fn dist_bin(var: &str) -> PathBuf {
    let p = root().join(make_var(var));
    assert!(
        p.exists(),
        "{} is missing: run `make dist` (make test does)",
        p.display()
    );
    p
}

/// The Dockerfile's carrier stage, line by line: from `FROM scratch AS
/// carrier` to the blank line that ends it. The test image is built from
/// these very lines, so the two cannot drift apart.
pub fn carrier_stage() -> Vec<&'static str> {
    static DOCKERFILE: OnceLock<String> = OnceLock::new();
    let text = DOCKERFILE.get_or_init(|| fs::read_to_string(root().join("Dockerfile")).unwrap());
    let stage: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "FROM scratch AS carrier")
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!stage.is_empty(), "the Dockerfile has no carrier stage");
    stage
}
