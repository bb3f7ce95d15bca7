//! Real Redis and real Ray for the end-to-end tests.
//!
//! The Ray tests share one lock: Ray's processes, `ray stop` and the CPU of
//! a 2-core machine do not take two clusters at once. Every process a test
//! starts is killed by a guard, even when the test fails: the guard kills
//! every process whose command line names the test's temp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rayhead::sys::proctree;

use crate::ray_drivers::python;
use crate::redis_util::RedisServer;
use crate::util::{count_lines, free_port, Dir, Running, TestCommand};
use crate::wait::{eventually, poll_until};

static RAY_LOCK: Mutex<()> = Mutex::new(());

/// Serialises the Ray tests; a failed test's poison is ignored.
pub fn ray_lock() -> MutexGuard<'static, ()> {
    RAY_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The project's virtualenv, made by scripts/setup.sh.
pub fn venv_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    assert!(
        p.join("ray").exists(),
        "{} has no ray: run scripts/setup.sh (make test does)",
        p.display()
    );
    p
}

pub fn path_with_venv() -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        venv_bin().display()
    )
}

/// The opening every Ray suite's test shares: the Ray lock, held for the
/// whole test (unless [`RayTest::unlocked`]), the test's temp dir, and the
/// guard that kills every process naming that dir, so that nothing the test
/// started outlives it, passed or failed. It derefs to the [`Dir`].
/// Dropped in this order: the guard kills, the dir goes, the lock is freed.
pub struct RayTest {
    pub cleanup: KillByMarker,
    dir: Dir,
    _lock: Option<MutexGuard<'static, ()>>,
}

impl RayTest {
    /// Holds the Ray lock: for a test that runs Ray (or `ray stop`), or
    /// that must not share the machine's CPU with one.
    pub fn new(name: &str) -> RayTest {
        let lock = ray_lock();
        RayTest::with(name, Some(lock))
    }

    /// Without the lock: a fake Ray's test that may run beside others.
    pub fn unlocked(name: &str) -> RayTest {
        RayTest::with(name, None)
    }

    fn with(name: &str, lock: Option<MutexGuard<'static, ()>>) -> RayTest {
        let dir = Dir::new(name);
        RayTest {
            cleanup: KillByMarker(dir.path().display().to_string()),
            dir,
            _lock: lock,
        }
    }

    /// Its rayhead runs are `bin` (see [`Dir::running`]).
    pub fn running(self, bin: PathBuf) -> RayTest {
        self.map_dir(|d| d.running(bin))
    }

    /// Its rayhead runs are found by `f` (see [`Dir::located_by`]).
    pub fn located_by(self, f: impl Fn() -> Option<Pid> + Send + Sync + 'static) -> RayTest {
        self.map_dir(|d| d.located_by(f))
    }

    fn map_dir(self, f: impl FnOnce(Dir) -> Dir) -> RayTest {
        let RayTest {
            cleanup,
            dir,
            _lock,
        } = self;
        RayTest {
            cleanup,
            dir: f(dir),
            _lock,
        }
    }
}

impl std::ops::Deref for RayTest {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        &self.dir
    }
}

/// The environment every Ray program of these tests gets: the venv's
/// `ray` and `python` first on the PATH, and no usage reporting.
pub fn ray_env(cmd: TestCommand) -> TestCommand {
    cmd.env("PATH", path_with_venv())
        .env("RAY_DISABLE_USAGE_STATS", "1")
}

/// Kills, on drop, every process whose command line mentions `marker`.
pub struct KillByMarker(pub String);

impl KillByMarker {
    pub fn pids(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        proctree::snapshot()
            .into_iter()
            .filter(|p| p.pid.as_raw() != me && p.state != 'Z')
            .filter(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .map(|b| String::from_utf8_lossy(&b).contains(&self.0))
                    .unwrap_or(false)
            })
            .map(|p| p.pid.as_raw())
            .collect()
    }

    /// SIGKILLs them until none is left (a dying process may fork once
    /// more); gives up silently after a few seconds: it runs in `Drop`.
    pub fn kill_all(&self) {
        let _ = poll_until(Duration::from_secs(5), None, || {
            let pids = self.pids();
            for p in &pids {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
            pids.is_empty().then_some(())
        });
    }
}

impl Drop for KillByMarker {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Ports for one Ray node, all free and distinct.
pub struct NodePorts {
    pub gcs: u16,
    pub dashboard: u16,
    pub agent: u16,
    pub client: u16,
    pub metrics: u16,
}

impl NodePorts {
    pub fn new() -> NodePorts {
        let mut seen = Vec::new();
        let mut next = || loop {
            let p = free_port();
            if !seen.contains(&p) {
                seen.push(p);
                return p;
            }
        };
        NodePorts {
            gcs: next(),
            dashboard: next(),
            agent: next(),
            client: next(),
            metrics: next(),
        }
    }
}

/// A KubeRay-style head start command, with the literal `$REDIS_PASSWORD`.
pub fn head_start_command(ports: &NodePorts, temp_dir: &Path, with_redis: bool) -> String {
    let mut s = format!(
        "ray start --head --block --port={} --num-cpus=0 --node-ip-address=127.0.0.1 \
         --temp-dir={} --dashboard-host=127.0.0.1 --dashboard-port={} \
         --dashboard-agent-listen-port={} --ray-client-server-port={} \
         --metrics-export-port={} --disable-usage-stats",
        ports.gcs,
        temp_dir.display(),
        ports.dashboard,
        ports.agent,
        ports.client,
        ports.metrics,
    );
    if with_redis {
        s.push_str(" --redis-password=$REDIS_PASSWORD");
    }
    s
}

/// Asserts that every pid in `pids` is gone (or a zombie awaiting a
/// reaper that is itself gone). Record a run's daemons before it exits:
/// after it, they are no longer its descendants, so looking them up under
/// it would always find nothing.
pub fn assert_all_dead(what: &str, pids: &[Pid]) {
    let alive: Vec<i32> = pids
        .iter()
        .map(|p| p.as_raw())
        .filter(|p| crate::util::alive(*p))
        .collect();
    assert!(alive.is_empty(), "{what} left running: {alive:?}");
}

/// Live processes named `comm` among the descendants of `root`.
pub fn find_comm(root: Pid, comm: &str) -> Vec<Pid> {
    proctree::descendants(&proctree::snapshot(), root)
        .into_iter()
        .filter(|p| p.comm == comm && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

// --- A head under rayhead, and a worker node: shared by the Ray suites. ---

/// The literal `env` entries of the shipped RayCluster's head and worker
/// containers: what the kubelet would give those processes. The heads,
/// drivers (run on the head pod) and workers of these tests take them.
pub struct ManifestEnv {
    pub head: Vec<(String, String)>,
    pub worker: Vec<(String, String)>,
}

pub fn manifest_env() -> &'static ManifestEnv {
    static ENV: OnceLock<ManifestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(venv_bin().join("python"))
            .arg(root.join("tests/py/validate_manifests.py"))
            .arg("--env")
            .arg(root.join("config/ray-cluster.rayhead.yaml"))
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "no env from the manifest ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let pairs = |o: &serde_json::Value| -> Vec<(String, String)> {
            o.as_object()
                .expect("an env object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a string value").to_string()))
                .collect()
        };
        ManifestEnv {
            head: pairs(&v["head"]),
            worker: pairs(&v["workers"][0]),
        }
    })
}

pub const START: Duration = Duration::from_secs(180);
pub const ACTOR: Duration = Duration::from_secs(120);

pub struct Head {
    pub run: Running,
    pub ports: NodePorts,
    pub namespace: String,
    pub probe: String,
}

impl Head {
    /// `rayhead probe`'s client: (answered 200, text).
    pub fn probe(&self, path: &str) -> (bool, String) {
        rayhead::probe::client::query(&self.probe, path)
    }
}

pub fn start_head(
    dir: &Dir,
    redis: Option<&RedisServer>,
    extra: &[(&str, &str)],
    mode: &str,
) -> Head {
    let ports = NodePorts::new();
    let namespace = "e2e-ns".to_string();
    let probe_port = free_port();
    let mut cmd = ray_env(dir.rayhead())
        .env(
            "KUBERAY_GEN_RAY_START_CMD",
            head_start_command(&ports, &dir.join("head"), redis.is_some()),
        )
        .env("RAYHEAD_RAY_MODE", mode)
        .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{probe_port}"));
    if let Some(r) = redis {
        cmd = cmd
            .env("RAY_REDIS_ADDRESS", r.address())
            .env("REDIS_PASSWORD", &r.password)
            .env("RAY_external_storage_namespace", &namespace);
    }
    for (k, v) in &manifest_env().head {
        cmd = cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd = cmd.env(k, v);
    }
    let run = cmd.args(["run"]).spawn();
    eventually(START, "the head to run", || {
        let err = dir.read("stderr");
        assert!(!err.contains("rayhead exiting"), "rayhead exited:\n{err}");
        err.contains("to=\"running\"").then_some(())
    });
    Head {
        run,
        ports,
        namespace,
        probe: format!("http://127.0.0.1:{probe_port}"),
    }
}

/// A worker node with the reconnect timeout KubeRay gives workers and the
/// worker container's env from the manifest.
pub fn start_worker(dir: &Dir, head: &Head) -> Running {
    let p = NodePorts::new();
    let mut cmd = dir.command(venv_bin().join("ray"));
    for (k, v) in &manifest_env().worker {
        cmd = cmd.env(k, v);
    }
    ray_env(cmd)
        .env("RAY_gcs_rpc_server_reconnect_timeout_s", "600")
        .args([
            "start",
            "--block",
            &format!("--address=127.0.0.1:{}", head.ports.gcs),
            "--num-cpus=1",
            "--node-ip-address=127.0.0.1",
            &format!("--temp-dir={}", dir.join("worker").display()),
            &format!("--dashboard-agent-listen-port={}", p.agent),
            &format!("--metrics-export-port={}", p.metrics),
            "--disable-usage-stats",
        ])
        .spawn_named("worker")
}

pub fn gcs_pid(head: &Head) -> Pid {
    let root = head.run.rayhead_pid();
    eventually(Duration::from_secs(30), "a gcs_server", || {
        find_comm(root, "gcs_server").first().copied()
    })
}

/// Every process of the head's tree now (rayhead's descendants): recorded
/// before rayhead exits, checked dead after.
pub fn head_processes(head: &Head) -> Vec<Pid> {
    let root = head.run.rayhead_pid();
    let procs = rayhead::sys::proctree::descendants(&rayhead::sys::proctree::snapshot(), root);
    assert!(!procs.is_empty(), "the head has no processes");
    procs.into_iter().map(|p| p.pid).collect()
}

/// How long after `t` rayhead logged its decision to give up.
pub fn decision_after(dir: &Dir, t: Instant) -> Duration {
    eventually(Duration::from_secs(60), "rayhead to give up", || {
        dir.read("stderr").contains("giving up").then_some(())
    });
    t.elapsed()
}

pub fn raylet_pid(head: &Head) -> Pid {
    find_comm(head.run.rayhead_pid(), "raylet")[0]
}

/// Increments the counter; returns its value and the alive nodes' ids.
pub fn increment(head: &Head) -> (u64, Vec<String>) {
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    let out =
        python("tests/py/increment_and_nodes.py", &addr, ACTOR).unwrap_or_else(|e| panic!("{e}"));
    let value = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{out}"));
    let mut nodes: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("node "))
        .map(String::from)
        .collect();
    nodes.sort();
    (value, nodes)
}

/// Kills the GCS with `sig` and waits for the recovery count to reach
/// `n`; returns the time from the kill until rayhead logged the recovery.
pub fn kill_gcs_and_wait(
    dir: &Dir,
    head: &Head,
    sig: Signal,
    n: usize,
    limit: Duration,
) -> Duration {
    let pid = gcs_pid(head);
    let t = Instant::now();
    kill(pid, sig).unwrap();
    eventually(limit, &format!("recovery #{n} after {sig}"), || {
        (count_lines(&dir.read("stderr"), "gcs_recovered") >= n).then_some(())
    });
    let took = t.elapsed();
    if sig == Signal::SIGSTOP {
        let _ = kill(pid, Signal::SIGKILL);
    }
    took
}

/// The KubeRay guide's cluster: Redis, a head under rayhead, a worker, and
/// the detached counter at 1.
pub fn start_guide(dir: &Dir, extra: &[(&str, &str)]) -> (RedisServer, Head, Running) {
    let redis = RedisServer::start(dir);
    let head = start_head(dir, Some(&redis), extra, "direct");
    let worker = start_worker(dir, &head);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    python("examples/detached_actor.py", &addr, ACTOR).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(increment(&head).0, 1);
    (redis, head, worker)
}

/// rayhead ended the head with `code`, within `bound` of the event when
/// one is given (`(took, bound)`), with every word of `why` in the
/// termination message and, when there is one, the secret nowhere; every
/// process of the head (recorded before) and of the test is gone.
pub fn assert_head_ended(
    out: &crate::util::Output,
    code: i32,
    within: Option<(Duration, Duration)>,
    why: &[&str],
    daemons: &[Pid],
    cleanup: &KillByMarker,
    secret: Option<&str>,
) {
    out.assert_code(code);
    if let Some(secret) = secret {
        out.assert_no_secret(secret);
    }
    if let Some((took, bound)) = within {
        assert!(
            took < bound,
            "took {took:?}, more than {bound:?}\n{}",
            out.dump()
        );
    }
    for w in why {
        out.assert_termination_log(w);
    }
    assert_all_dead("the head's Ray processes", daemons);
    assert!(
        cleanup.pids().is_empty(),
        "Ray processes left: {:?}",
        cleanup.pids()
    );
}
