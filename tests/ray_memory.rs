//! Memory, on real Ray: the head in a memory cgroup with a limit, tasks
//! growing gcs_server (the task events it keeps), the guide's counter and a
//! Serve app. Without the memory restart the OOM killer acts; with it,
//! rayhead restarts the GCS in place first and nothing is OOM-killed.

use std::time::{Duration, Instant};

use crate::ray_drivers::*;
use crate::ray_util::*;
use crate::redis_util::RedisServer;
use crate::util::{count_lines, Dir};
use crate::wait::{eventually, holds_for, poll_until};

/// A v1 memory cgroup of the test's own, below this process's, so that the
/// head can be given a container's memory limit. Removed on drop, its
/// processes killed first.
struct MemCgroup {
    dir: std::path::PathBuf,
}

impl MemCgroup {
    /// `None` (said on the output) where no v1 memory cgroup can be made
    /// here; under `CI=true` that fails, never a silent skip.
    fn new(name: &str) -> Option<MemCgroup> {
        let made = rayhead::memory::Cgroup::discover()
            .filter(|c| c.version == rayhead::memory::CgroupVersion::V1)
            .ok_or_else(|| "no cgroup v1 memory controller".to_string())
            .and_then(|c| {
                let dir = c
                    .dir
                    .join(format!("rayhead-test-{name}-{}", std::process::id()));
                std::fs::create_dir(&dir)
                    .map(|_| dir.clone())
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            });
        match made {
            Ok(dir) => Some(MemCgroup { dir }),
            Err(why) => {
                crate::util::cannot_run("the OOM test", &why);
                None
            }
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    fn usage(&self) -> u64 {
        self.read("memory.usage_in_bytes").trim().parse().unwrap()
    }

    /// The usage once it has settled: two samples a second apart within
    /// 2 MiB of each other.
    fn settled_usage(&self) -> u64 {
        let mut last: Option<(Instant, u64)> = None;
        eventually(
            Duration::from_secs(60),
            "the head's memory to settle",
            || {
                let now = self.usage();
                match last {
                    Some((t, _)) if t.elapsed() < Duration::from_secs(1) => {}
                    Some((_, before)) if before.abs_diff(now) < 2 << 20 => return Ok(now),
                    _ => last = Some((Instant::now(), now)),
                }
                Err(format!("{now} bytes, {last:?} a second before"))
            },
        )
    }

    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// The processes the OOM killer took in this cgroup, from the kernel's
    /// log (`task=NAME,pid=N` on its `oom-kill:` lines).
    fn oom_victims(&self) -> Vec<String> {
        let name = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        let out = std::process::Command::new("dmesg").output().ok();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        text.unwrap_or_default()
            .lines()
            .filter(|l| l.contains("oom-kill:") && l.contains(&format!("{name},")))
            .filter_map(|l| l.split("task=").nth(1))
            .map(|t| t.split(",uid").next().unwrap_or(t).to_string())
            .collect()
    }

    fn set_limit(&self, bytes: u64) {
        std::fs::write(self.dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
    }

    /// A script that joins the cgroup, then runs rayhead with its arguments.
    fn wrapper(&self, dir: &Dir) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.write(
            "rayhead-in-cgroup",
            &format!(
                "#!/bin/sh\necho $$ > '{}/cgroup.procs' || exit 70\nexec '{}' \"$@\"\n",
                self.dir.display(),
                crate::util::rayhead_bin().display()
            ),
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Until the cgroup is empty and goes; silently, as this is `Drop`.
        let _ = poll_until(Duration::from_secs(5), None, || {
            let procs = self.read("cgroup.procs");
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::fs::remove_dir(&self.dir).ok()
        });
    }
}

/// Waits for rayhead to have seen whatever the OOM killer took in the
/// cgroup (its `/status` counts the same kills) and to be out of any
/// recovery it started, or to have ended the head.
fn seen_and_recovered(dir: &Dir, head: &Head, cgroup: &MemCgroup) {
    eventually(
        Duration::from_secs(120),
        "the OOM kills seen and recovered from",
        || {
            if dir.read("stderr").contains("rayhead exiting") {
                return Ok(());
            }
            let (_, text) = head.probe("/status");
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| text.clone())?;
            let seen = v["memory"]["oom_kills"].as_u64() == Some(cgroup.oom_kills());
            if seen && v["phase"] == "running" {
                Ok(())
            } else {
                Err(format!("{v:#}"))
            }
        },
    )
}

/// What one run under a memory limit came to.
#[derive(Debug)]
struct UnderLimit {
    tasks: u64,
    oom_kills: u64,
    memory_restarts: usize,
    /// What the kernel's log says the OOM killer took in the cgroup.
    oom_victims: Vec<String>,
    /// The counter after the load, or why it could not be read.
    counter: Result<u64, String>,
    serve: serde_json::Value,
    /// `/status` and `/metrics` at the end.
    status: serde_json::Value,
    metrics: String,
    /// The GCS's RSS at the end.
    gcs_rss: Option<u64>,
}

/// The guide's cluster and a Serve app, the head in a memory cgroup whose
/// limit is its usage once settled plus `headroom`; then tasks, 2,000 at a
/// time, until `tasks` ran or the OOM killer acted.
fn under_limit(name: &str, mark: &str, headroom: u64, tasks: u64) -> Option<UnderLimit> {
    let dir = RayTest::unlocked(name);
    let cgroup = MemCgroup::new(name)?;
    let wrapper = cgroup.wrapper(&dir);
    let dir = dir.running(wrapper);
    let (_redis, head, _worker) = start_guide(
        &dir,
        &[
            ("RAYHEAD_MEMORY_GCS_HIGH_WATER", mark),
            ("RAYHEAD_MEMORY_SUSTAIN", "2s"),
            ("RAYHEAD_MEMORY_MIN_INTERVAL", "1s"),
        ],
    );
    let _tasks_node = start_worker(&dir, &head);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    let (load, _csv) = serve_under_load(&dir, &addr);
    cgroup.set_limit(cgroup.settled_usage() + headroom);

    let marker = dir.path().display().to_string();
    let mut driver = Script::spawn("tests/py/many_tasks.py", &[&addr, "2000", &marker]);
    driver.expect("READY", Duration::from_secs(60));
    let mut ran = 0;
    while ran < tasks && cgroup.oom_kills() == 0 {
        driver.send("more");
        ran = driver
            .expect("DONE", Duration::from_secs(300))
            .parse()
            .unwrap();
    }
    drop(driver);
    seen_and_recovered(&dir, &head, &cgroup);
    let counter = python(
        "tests/py/increment_and_nodes.py",
        &addr,
        Duration::from_secs(120),
    )
    .map(|out| {
        out.lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_default()
    });
    let serve = serde_json::from_str(&load.finish(Duration::from_secs(30))).unwrap();
    let log = dir.read("stderr");
    let (_, status) = head.probe("/status");
    let (_, metrics) = head.probe("/metrics");
    Some(UnderLimit {
        tasks: ran,
        oom_kills: cgroup.oom_kills(),
        memory_restarts: count_lines(&log, "gcs_memory_restart"),
        oom_victims: cgroup.oom_victims(),
        counter,
        serve,
        status: serde_json::from_str(&status).unwrap_or_default(),
        metrics,
        gcs_rss: rayhead::memory::rss(gcs_pid(&head).as_raw()),
    })
}

/// A mark about twice a fresh GCS (about 50 MiB): some 10,000 tasks' events
/// pass it, well before the limit's headroom is used.
const MARK_MIB: u64 = 90;

/// The same load under the same limit, without and with the memory
/// restart: without, the OOM killer acts; with, rayhead restarts the GCS in
/// place first, and nothing is OOM-killed.
#[test]
fn e2e_under_a_memory_limit_the_gcs_is_restarted_before_the_oom_killer() {
    let _lock = ray_lock();
    const HEADROOM: u64 = 100 << 20;
    const TASKS: u64 = 60_000;
    let Some(without) = under_limit("oom-off", "off", HEADROOM, TASKS) else {
        return;
    };
    eprintln!(
        "without the memory restart: tasks {}, OOM kills {} ({:?}), counter {:?}, serve {}",
        without.tasks, without.oom_kills, without.oom_victims, without.counter, without.serve
    );
    assert!(
        without.oom_kills > 0,
        "the load never reached the limit: the comparison proves nothing\n{without:#?}"
    );
    assert_eq!(without.memory_restarts, 0);
    assert!(!without.oom_victims.is_empty(), "{without:#?}");

    let with = under_limit("oom-on", &format!("{MARK_MIB}MiB"), HEADROOM, without.tasks)
        .expect("the cgroup worked a moment ago");
    eprintln!(
        "with the memory restart: tasks {}, OOM kills {}, memory restarts {}, counter {:?}, serve {}",
        with.tasks, with.oom_kills, with.memory_restarts, with.counter, with.serve
    );
    assert_eq!(with.oom_kills, 0, "{with:#?}");
    assert!(with.oom_victims.is_empty(), "{with:#?}");
    assert!(with.memory_restarts >= 1, "{with:#?}");
    assert_eq!(with.tasks, without.tasks, "{with:#?}");
    assert_eq!(with.counter, Ok(2), "{with:#?}");
    assert_eq!(with.serve["failed"], 0, "{with:#?}");
    // The GCS is small again, and /status and /metrics say what happened.
    assert!(with.gcs_rss.unwrap() < MARK_MIB << 20, "{with:#?}");
    let m = &with.status["memory"];
    assert_eq!(m["cgroup"], "v1", "{m:#}");
    assert_eq!(m["gcs_restarts"], with.memory_restarts, "{m:#}");
    assert_eq!(m["gcs_high_water_bytes"], MARK_MIB << 20, "{m:#}");
    assert!(m["gave_up"].is_null(), "{m:#}");
    assert_eq!(m["oom_kills"], 0, "{m:#}");
    assert!(m["container_limit_bytes"].as_u64().is_some(), "{m:#}");
    assert!(
        m["last_restart_reason"]
            .as_str()
            .unwrap()
            .contains("memory.gcs-high-water"),
        "{m:#}"
    );
    assert_eq!(with.status["gcs"]["consecutive_failures"], 0);
    for want in [
        "rayhead_daemon_rss_bytes{daemon=\"gcs_server\"}",
        "rayhead_daemon_rss_bytes{daemon=\"raylet\"}",
        "rayhead_container_memory_bytes ",
        "rayhead_container_memory_limit_bytes ",
        "rayhead_container_oom_kills_total 0",
        &format!("rayhead_gcs_memory_restarts_total {}", with.memory_restarts),
        &format!("rayhead_gcs_memory_high_water_bytes {}", MARK_MIB << 20),
    ] {
        assert!(
            with.metrics.contains(want),
            "no {want:?} in:\n{}",
            with.metrics
        );
    }
}

/// A mark below a fresh GCS's size: one memory restart, then rayhead sees
/// the new GCS over the mark at once, gives up on memory restarts, says so,
/// and stays ready: never a restart loop.
#[test]
fn e2e_a_mark_below_a_fresh_gcs_restarts_once_and_never_loops() {
    let dir = RayTest::new("e2e-memory-leak");
    let redis = RedisServer::start(&dir);
    let head = start_head(
        &dir,
        Some(&redis),
        &[
            ("RAYHEAD_MEMORY_GCS_HIGH_WATER", "10MiB"),
            ("RAYHEAD_MEMORY_SUSTAIN", "2s"),
            ("RAYHEAD_MEMORY_MIN_INTERVAL", "1s"),
        ],
        "direct",
    );
    eventually(Duration::from_secs(120), "rayhead to give up", || {
        dir.read("stderr")
            .contains("gcs_memory_gave_up")
            .then_some(())
    });
    // Many more samples and sustains go by: no second restart.
    holds_for(Duration::from_secs(10), "one memory restart only", || {
        count_lines(&dir.read("stderr"), "gcs_memory_restart") == 1
    });
    eventually(Duration::from_secs(30), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });
    let (_, status) = head.probe("/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["memory"]["gcs_restarts"], 1, "{v:#}");
    assert!(
        v["memory"]["gave_up"]
            .as_str()
            .is_some_and(|s| s.contains("no longer restarts")),
        "{v:#}"
    );
    assert_eq!(v["gcs"]["consecutive_failures"], 0, "{v:#}");
}
