//! The README's walkthrough, "GCS fault tolerance in five minutes", read
//! from the README and run on real Ray and Redis with `rayhead dev`: what
//! a user reads is what works.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rayhead::sys::proctree;

use crate::dev_util::{alive_redis, saved, shape, stop, tree, DevRun, RedisGuard, LIMIT, STATE};
use crate::ray_drivers::python;
use crate::ray_util::{path_with_venv, RayTest, ACTOR};
use crate::util::Dir;
use crate::wait::eventually;

/// The README's walkthrough under `heading`: each `$ ` line (or `^C`)
/// with the lines under it.
fn walkthrough(heading: &str) -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split(heading)
        .nth(1)
        .expect("README has the walkthrough")
        .split("\n## ")
        .next()
        .unwrap();
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    for line in section.lines().map(str::trim) {
        if line.starts_with("```") {
            in_block = line == "```console";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push((cmd.to_string(), Vec::new()));
        } else if line == "^C" {
            steps.push(("^C".into(), Vec::new()));
        } else if !line.is_empty() {
            steps
                .last_mut()
                .expect("output before any command")
                .1
                .push(line.to_string());
        }
    }
    steps
}

/// The gcs_server of the runner's tree.
fn gcs_of(dev: &DevRun) -> Pid {
    eventually(LIMIT, "a gcs_server", || {
        crate::ray_util::find_comm(dev.pid(), "gcs_server")
            .first()
            .copied()
    })
}

#[test]
fn e2e_dev_runs_the_readme_walkthrough() {
    let dir = RayTest::new("dv");
    let _redis = RedisGuard(&dir);
    run_walkthrough(
        "## GCS fault tolerance in five minutes",
        &dir,
        &path_with_venv(),
    );
}

/// The RocksDB variant, on a PATH with every program of this machine but
/// `redis-server`: what a machine without Redis has.
#[test]
fn e2e_dev_runs_the_rocksdb_walkthrough() {
    let dir = RayTest::new("dvr");
    let path = path_without_redis(&dir);
    run_walkthrough(
        "## The same walkthrough on RocksDB, without Redis",
        &dir,
        &path,
    );
    assert!(
        !dir.join(&format!("{STATE}/redis/appendonlydir")).exists(),
        "a Redis ran"
    );
}

/// The venv, then a directory of links to every program on the usual
/// PATH except Redis's.
fn path_without_redis(dir: &Dir) -> String {
    let bin = dir.join("bin-without-redis");
    std::fs::create_dir(&bin).unwrap();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("redis-") || bin.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
        }
    }
    let path = format!(
        "{}:{}",
        crate::ray_util::venv_bin().display(),
        bin.display()
    );
    let which = std::process::Command::new("/bin/sh")
        .args(["-c", "command -v redis-server"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!which.status.success(), "redis-server is still on {path}");
    path
}

/// Runs the README's walkthrough under `heading` on `rayhead dev`, step by
/// step, checking what the README says each step prints.
fn run_walkthrough(heading: &str, dir: &Dir, path: &str) {
    let mut walk = Walk {
        dir,
        path: path.to_string(),
        dev: None,
        address: String::new(),
        expected_so_far: Vec::new(),
        counter_seen: 0,
    };
    for (cmd, expect) in walkthrough(heading) {
        walk.step(&cmd, &expect);
    }
    assert_eq!(walk.counter_seen, 4, "the walkthrough counts to 4");
    assert!(walk.dev.is_none(), "the walkthrough stops the cluster");
}

/// Where the walkthrough is: the runner, the address it printed, the
/// runner's lines seen so far (by shape), and the counter's last value.
struct Walk<'a> {
    dir: &'a Dir,
    path: String,
    dev: Option<DevRun>,
    address: String,
    expected_so_far: Vec<String>,
    counter_seen: u64,
}

impl Walk<'_> {
    /// One `$ ` line of the README, with the lines the README shows under it.
    fn step(&mut self, cmd: &str, expect: &[String]) {
        match cmd {
            "make dev" => self.start(&[], expect),
            c if c.starts_with("rayhead dev ") => {
                let args: Vec<&str> = c.split(' ').skip(2).collect();
                self.start(&args, expect);
            }
            c if c.starts_with("rayhead storage-check --dev-state ") => self.storage_check(expect),
            ". .venv/bin/activate" => {}
            c if c.starts_with("export RAY_ADDRESS=") => self.export(c),
            c if c.starts_with("python examples/") => self.python(c, expect),
            "pkill -9 gcs_server" | "pkill gcs_server" => {
                let sig = if cmd.contains("-9") {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                };
                kill(gcs_of(self.running()), sig).unwrap();
                self.wait_lines(expect, LIMIT);
            }
            r#"pkill -9 -x raylet -P "$(pgrep -d, -f 'rayhead run')""# => {
                self.kill_the_heads_raylet(expect)
            }
            "^C" => self.interrupt(expect),
            c if c.starts_with("rayhead redis-cleanup --dev-state .rayhead-dev") => {
                self.redis_cleanup(c, expect)
            }
            other => panic!("the walkthrough has a step this test does not know: {other:?}"),
        }
    }

    fn running(&self) -> &DevRun {
        self.dev.as_ref().expect("running")
    }

    /// Waits for the runner's lines among `expect`, each as many times as
    /// the walkthrough has shown it so far.
    fn wait_lines(&mut self, expect: &[String], limit: Duration) {
        let dev = self.dev.as_ref().expect("running");
        for e in expect.iter().filter(|e| e.starts_with("rayhead dev:")) {
            self.expected_so_far.push(shape(e));
            let n = self
                .expected_so_far
                .iter()
                .filter(|s| **s == shape(e))
                .count();
            dev.wait_for(e, n, limit);
        }
    }

    fn start(&mut self, args: &[&str], expect: &[String]) {
        self.dev = Some(DevRun::start(self.dir, &self.path, args));
        self.wait_lines(expect, Duration::from_secs(120));
    }

    fn storage_check(&self, expect: &[String]) {
        let out = self
            .dir
            .rayhead()
            .env("PATH", &self.path)
            .args(["storage-check", "--dev-state", STATE])
            .run(LIMIT);
        out.assert_code(0);
        for e in expect {
            assert!(
                out.stdout.lines().any(|l| l.trim() == e),
                "{e:?} in:\n{}",
                out.dump()
            );
        }
    }

    /// The README's `export` is the one the runner printed.
    fn export(&mut self, cmd: &str) {
        let printed = self
            .running()
            .text()
            .lines()
            .find_map(|l| l.split_once("export ").map(|(_, a)| format!("export {a}")))
            .expect("the runner printed the export");
        assert_eq!(shape(&printed), shape(cmd));
        self.address = printed
            .trim_start_matches("export RAY_ADDRESS=")
            .trim()
            .to_string();
    }

    fn python(&mut self, cmd: &str, expect: &[String]) {
        let out = python(cmd.trim_start_matches("python "), &self.address, ACTOR)
            .unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines, expect, "{cmd}");
        if let Some(n) = expect.first().and_then(|v| v.parse::<u64>().ok()) {
            assert_eq!(n, self.counter_seen + 1);
            self.counter_seen = n;
        }
    }

    /// The README's pkill of the head's raylet: the same process, found in
    /// this test's tree only. The kubelet's back-off, then a head that is
    /// ready again.
    fn kill_the_heads_raylet(&mut self, expect: &[String]) {
        let d = self.running();
        let snap = proctree::snapshot();
        let heads: Vec<Pid> = snap
            .iter()
            .filter(|p| p.ppid == d.pid() && p.comm == "rayhead")
            .map(|p| p.pid)
            .collect();
        let raylets: Vec<Pid> = snap
            .iter()
            .filter(|p| p.comm == "raylet" && heads.contains(&p.ppid))
            .map(|p| p.pid)
            .collect();
        assert_eq!(
            raylets.len(),
            1,
            "the head's raylet: {raylets:?} in {:?}",
            tree(d)
        );
        kill(raylets[0], Signal::SIGKILL).unwrap();
        let t = Instant::now();
        self.wait_lines(expect, LIMIT);
        let d = self.running();
        let ready = "rayhead dev: [head running | GCS serving";
        eventually(Duration::from_secs(120), "the head back", || {
            let text = d.text();
            let after = text.rsplit("restarting head in").next().unwrap_or("");
            if after.contains(ready) {
                return Ok(());
            }
            let log = self.dir.read(&format!("{STATE}/logs/head.log"));
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            Err(format!(
                "{text}\n--- head.log, last lines ---\n{}",
                tail.join("\n")
            ))
        });
        assert!(
            t.elapsed() >= Duration::from_secs(9),
            "no back-off: {:?}",
            t.elapsed()
        );
    }

    /// ^C: the runner stops, saying what the README says, without the
    /// password anywhere; then a second run.
    fn interrupt(&mut self, expect: &[String]) {
        let d = self.dev.take().expect("running");
        let password = saved(self.dir).unwrap().redis_password;
        let text = stop(d, Signal::SIGINT);
        for e in expect.iter().filter(|e| e.starts_with("rayhead dev:")) {
            assert!(
                text.lines().any(|l| shape(l) == shape(e)),
                "{e:?} in:\n{text}"
            );
        }
        let head_log = self.dir.read(&format!("{STATE}/logs/head.log"));
        assert!(
            !text.contains(&password) && !head_log.contains(&password),
            "the Redis password leaked"
        );
        second_run_finds_the_actor_then_stops_with_stderr_closed(self.dir, &self.path);
    }

    fn redis_cleanup(&self, cmd: &str, expect: &[String]) {
        let args: Vec<String> = cmd
            .split(' ')
            .skip(1)
            .map(|a| a.replace(".rayhead-dev", STATE))
            .collect();
        let out = self
            .dir
            .rayhead()
            .env("PATH", &self.path)
            .args(&args)
            .run(LIMIT);
        out.assert_code(0);
        for e in expect {
            assert!(
                out.stderr.lines().any(|l| shape(l) == shape(e)),
                "{e:?} in:\n{}",
                out.dump()
            );
        }
        if !cmd.contains("--dry-run") {
            assert!(!out.stderr.contains("deleted 0 key"), "{}", out.dump());
        }
        assert!(
            !alive_redis(self.dir),
            "redis-cleanup left its Redis running"
        );
    }
}

/// A second run without --clean: the GCS loads the namespace from its
/// store, so the guide's actor is still registered, and the GCS knows
/// that its node is gone (the worker stopped with the first run). Then
/// SIGTERM, with the runner's stderr closed first.
fn second_run_finds_the_actor_then_stops_with_stderr_closed(dir: &Dir, path: &str) {
    let dev = DevRun::start(dir, path, &[]);
    dev.wait_for(
        "rayhead dev: the cluster is ready: 1 worker node(s) joined; drivers can connect",
        1,
        Duration::from_secs(120),
    );
    let address = format!("127.0.0.1:{}", saved(dir).unwrap().ports.gcs);
    // Registered from the first call on. Its old node is DEAD from the
    // first call (its raylet told the GCS as it stopped) or soon after
    // (its missed health checks). The record itself is Ray's: usually
    // DEAD with its node, but seen ALIVE on the dead node for minutes
    // (Ray 2.60, on RocksDB, after a head restart in the first run).
    let mut seen = Vec::new();
    eventually(Duration::from_secs(180), "the actor's node DEAD", || {
        let out =
            python("tests/py/actor_state.py", &address, ACTOR).unwrap_or_else(|e| panic!("{e}"));
        let record = ActorRecord::parse(&out);
        assert!(record.registered, "the actor is not registered: {out}");
        seen.push(record.records.join("; "));
        if record.dead || record.node_dead {
            return Ok(());
        }
        Err(format!(
            "the actor's record, run after run: {seen:?}\nlast:\n{out}"
        ))
    });
    eprintln!("the actor's record, run after run: {seen:?}");
    // Wait for a ray:: process to be in the tree (the worker's idle workers
    // or the dashboard's), so that the check after the stop means something.
    eventually(LIMIT, "a ray:: process", || {
        tree(&dev)
            .iter()
            .any(|(_, c)| c.starts_with("ray::"))
            .then_some(())
    });
    dev.close_stderr();
    stop(dev, Signal::SIGTERM);
}

/// What `tests/py/actor_state.py` printed of the guide's actor.
struct ActorRecord {
    records: Vec<String>,
    registered: bool,
    /// Every record of it is DEAD.
    dead: bool,
    /// The node it was on is DEAD in the GCS's node table.
    node_dead: bool,
}

impl ActorRecord {
    fn parse(out: &str) -> ActorRecord {
        // A record is "<STATE> <cause>"; Ray's own stdout lines are not.
        const STATES: [&str; 6] = [
            "DEPENDENCIES_UNREADY",
            "PENDING_CREATION",
            "ALIVE",
            "RESTARTING",
            "DEAD",
            "none",
        ];
        let records: Vec<&str> = out
            .lines()
            .filter(|l| STATES.contains(&l.split(' ').next().unwrap_or("")))
            .collect();
        let on: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("on node "))
            .collect();
        // "node <id> <ALIVE|DEAD> <address>"
        let dead_nodes: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("node "))
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [id, "DEAD", ..] => Some(id),
                _ => None,
            })
            .collect();
        ActorRecord {
            records: records.iter().map(|r| r.to_string()).collect(),
            registered: !records.is_empty() && !records.contains(&"none"),
            dead: !records.is_empty() && records.iter().all(|r| r.starts_with("DEAD ")),
            node_dead: !on.is_empty() && on.iter().all(|n| dead_nodes.contains(n)),
        }
    }
}

/// The three shapes the second run has shown: DEAD with its node; ALIVE
/// on a node the GCS lists as DEAD (what a CI run met); ALIVE on a live
/// node, which is not yet the end.
#[test]
fn actor_record_reads_the_shapes_ray_prints() {
    let dead = "DEAD The actor died because its node has died. Node Id: 0f13\n  on node 0f13\n  node 0f13 DEAD 10.0.0.1:1\n";
    let r = ActorRecord::parse(dead);
    assert!(r.registered && r.dead && r.node_dead);
    let stale =
        "ALIVE \n  on node 703a\n  node 2d19 ALIVE 10.0.0.1:2\n  node 703a DEAD 10.0.0.1:3\n";
    let r = ActorRecord::parse(stale);
    assert!(r.registered && !r.dead && r.node_dead);
    let alive =
        "ALIVE \n  on node 703a\n  node 703a ALIVE 10.0.0.1:3\n  node 2d19 DEAD 10.0.0.1:2\n";
    let r = ActorRecord::parse(alive);
    assert!(r.registered && !r.dead && !r.node_dead);
    assert!(!ActorRecord::parse("none\n").registered);
    let noisy = "(raylet) a line of Ray's\n\nDEAD \n  on node 0f13\n  node 0f13 DEAD 10.0.0.1:1\n";
    let r = ActorRecord::parse(noisy);
    assert!(r.registered && r.dead && r.records == ["DEAD "]);
    assert!(!ActorRecord::parse("").registered);
}
