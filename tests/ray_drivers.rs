//! What runs on a real cluster: python drivers (one-shot, or driven line
//! by line), `ray job submit`, the Serve app under load, and the guide's
//! scenario, which ray_e2e runs with rayhead on the host and container.rs
//! with rayhead as PID 1 of a container.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::ray_util::*;
use crate::redis_util::RedisServer;
use crate::util::{count_lines, free_port, Dir, Output};
use crate::wait::{eventually, poll_until};

/// `<script>` (a path from the repo's root: `examples/...`, `tests/py/...`)
/// under the venv's python, with the head container's env from the
/// manifest (drivers run on the head pod), in a process group of its own.
pub fn driver_command(script: &str) -> Command {
    let mut cmd = Command::new(venv_bin().join("python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .envs(manifest_env().head.iter().map(|(k, v)| (k, v)))
        .env("RAY_DISABLE_USAGE_STATS", "1")
        .process_group(0);
    cmd
}

/// `ray job submit` of `python -c code` through the head's dashboard; the
/// output is in `<name>stdout`, the job's own success in the exit code.
pub fn submit_job(dir: &Dir, head: &Head, name: &str, code: &str) -> Output {
    ray_env(dir.command(venv_bin().join("ray")))
        .args([
            "job",
            "submit",
            "--address",
            &format!("http://127.0.0.1:{}", head.ports.dashboard),
            "--",
            "python",
            "-c",
            code,
        ])
        .spawn_named(name)
        .wait(Duration::from_secs(180))
}

/// Runs `script` (see [`driver_command`]) with the venv's python against
/// `address`, given as RAY_ADDRESS (the guide's scripts read it) and as the
/// first argument, with the head container's env from the manifest.
/// Both pipes are drained while it runs, so a chatty driver never blocks on
/// a full pipe.
pub fn python(script: &str, address: &str, timeout: Duration) -> Result<String, String> {
    let mut child = driver_command(script)
        .arg(address)
        .env("RAY_ADDRESS", address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python");
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|o| Box::new(o) as _));
    let err = drain(child.stderr.take().map(|e| Box::new(e) as _));
    let Ok(status) = poll_until(timeout, None, || child.try_wait().ok().flatten()) else {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        let (o, e) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        return Err(format!("{script} timed out after {timeout:?}:\n{o}\n{e}"));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("{script} failed ({status}):\n{stdout}\n{stderr}"))
    }
}

/// A Python process of the test's, driven by lines: stdin lines in, stdout
/// lines out, read with a time limit. Its process group dies with it.
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Script {
    /// `<script> args...` (a path from the repo root), with the head container's env.
    pub fn spawn(script: &str, args: &[&str]) -> Script {
        let mut child = driver_command(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .expect("the script died");
    }

    /// The rest of the next line that starts with `prefix`; a "FAILED" line
    /// fails at once.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                    if line.starts_with("FAILED") {
                        self.fail(&format!("the script failed before {prefix:?}"));
                    }
                }
                Err(e) => self.fail(&format!("no {prefix:?} line ({e:?})")),
            }
        }
    }

    /// Closes stdin (the script's stop) and returns its last line.
    pub fn finish(mut self, limit: Duration) -> String {
        self.stdin = None;
        let line = self.expect("{", limit);
        format!("{{{line}")
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        panic!(
            "{why}\nstdout:\n{}\nstderr:\n{}",
            self.seen.join("\n"),
            stderr.join().unwrap_or_default()
        );
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The Serve app deployed on the cluster at `addr`, and a steady load on
/// it (serve_load.py), whose rows go to the CSV returned.
pub fn serve_under_load(dir: &Dir, addr: &str) -> (Script, std::path::PathBuf) {
    let port = free_port().to_string();
    let mut app = Script::spawn("tests/py/serve_app.py", &[addr, &port]);
    app.expect("DEPLOYED", Duration::from_secs(240));
    drop(app);
    let csv = dir.join("serve.csv");
    let url = format!("http://127.0.0.1:{port}/hello");
    let load = Script::spawn("tests/py/serve_load.py", &[&url, csv.to_str().unwrap()]);
    (load, csv)
}

/// The guide's scenario, stopped at its end by `stop` (a SIGTERM to rayhead,
/// or `podman stop` of its container), which must end everything cleanly
/// with exit 0.
pub fn guide_scenario_with(dir: &Dir, stop: impl FnOnce(&Head)) {
    let redis = RedisServer::start(dir);
    let head = start_head(dir, Some(&redis), &[], "direct");
    let _worker = start_worker(dir, &head);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    python("examples/detached_actor.py", &addr, ACTOR).unwrap_or_else(|e| panic!("{e}"));
    let (v, nodes) = increment(&head);
    assert_eq!(v, 1);
    eventually(Duration::from_secs(30), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });
    assert!(head.probe("/livez").0);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let raylet = raylet_pid(&head);

    let sigkill = kill_gcs_and_wait(dir, &head, Signal::SIGKILL, 1, Duration::from_secs(60));
    let (v, after) = increment(&head);
    assert_eq!(v, 2);
    assert_eq!(after, nodes, "a node was lost or replaced");
    assert_eq!(raylet_pid(&head), raylet, "the head raylet was restarted");

    let sigterm = kill_gcs_and_wait(dir, &head, Signal::SIGTERM, 2, Duration::from_secs(60));
    assert_eq!(increment(&head).0, 3);

    // SIGSTOP: the hung GCS fails its checks, so /readyz turns 503 long
    // before the GCS is declared lost; /livez stays 200 all along.
    let stopped = gcs_pid(&head);
    let t = Instant::now();
    kill(stopped, Signal::SIGSTOP).unwrap();
    let mut saw_unready = false;
    eventually(Duration::from_secs(60), "recovery after SIGSTOP", || {
        let (ready, why) = head.probe("/readyz");
        if !ready {
            saw_unready = true;
            assert!(why.contains("503"), "{why}");
        }
        let (live, why) = head.probe("/livez");
        assert!(live, "/livez failed during the GCS outage: {why}");
        (count_lines(&dir.read("stderr"), "gcs_recovered") >= 3).then_some(())
    });
    let sigstop = t.elapsed();
    let _ = kill(stopped, Signal::SIGKILL);
    assert!(
        saw_unready,
        "/readyz never turned 503 while the GCS was stopped"
    );
    eventually(Duration::from_secs(10), "/readyz 200 again", || {
        head.probe("/readyz").0.then_some(())
    });
    let (ok, status) = head.probe("/status");
    assert!(ok, "{status}");
    assert!(status.contains("\"restarts\": 3"), "{status}");
    assert!(!status.contains(&redis.password), "{status}");
    let (v, after) = increment(&head);
    assert_eq!(v, 4);
    assert_eq!(after, nodes);
    assert_eq!(raylet_pid(&head), raylet);

    let log = dir.read("stderr");
    let recoveries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gcs_recovered"))
        .collect();
    eprintln!(
        "kill -> recovered: SIGKILL {sigkill:?}, SIGTERM {sigterm:?}, SIGSTOP {sigstop:?}\n{}",
        recoveries.join("\n")
    );
    // The SIGTERM case is seen by the watch stream, not after unhealthy-after.
    assert!(
        sigterm < Duration::from_secs(5),
        "SIGTERM recovery took {sigterm:?}"
    );
    assert!(
        sigstop >= Duration::from_secs(9),
        "SIGSTOP was not given unhealthy-after"
    );

    // Scenario 5: SIGTERM to rayhead stops everything cleanly, keys intact.
    let daemons = head_processes(&head);
    let sent = Instant::now();
    stop(&head);
    let out = head.run.wait(Duration::from_secs(60));
    out.assert_code(0).assert_no_secret(&redis.password);
    assert!(sent.elapsed() < Duration::from_secs(25), "{}", out.dump());
    assert_all_dead("the head's Ray processes", &daemons);
    let keys = redis.cli(&["--scan", "--pattern", &format!("RAY{}@*", head.namespace)]);
    for table in ["NODE", "ACTOR", "JOB"] {
        assert!(
            keys.contains(&format!("RAY{}@{table}", head.namespace)),
            "RAY<ns>@{table} missing after the stop: {keys}"
        );
    }
}
