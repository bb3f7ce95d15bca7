//! The supervisor's state machine against a fake Ray: shell scripts named
//! `ray`, `gcs_server` and `raylet` (the kernel names a script's process
//! after the script, so rayhead finds them as it finds the real daemons).
//! The fake GCS serves no health service, so it is never SERVING: these
//! tests drive the loss, restart, deadline and crash-loop paths in seconds.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use crate::dev_util::fake_ray;
use crate::ray_util::{assert_all_dead, find_comm, RayTest};
use crate::redis_util::RedisServer;
use crate::util::{cannot_run, free_port, Dir, TestCommand};
use crate::wait::eventually;

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until rayhead has adopted the fake daemons (ray start has exited).
fn wait_adopted(dir: &Dir) {
    eventually(LIMIT, "the daemons to be adopted", || {
        dir.read("stderr")
            .contains("daemon=\"raylet\"")
            .then_some(())
    });
}

fn rayhead(dir: &Dir, redis: Option<&RedisServer>, sets: &[&str]) -> TestCommand {
    fake_ray(dir);
    let mut cmd = dir
        .rayhead()
        .env(
            "KUBERAY_GEN_RAY_START_CMD",
            format!(
                "{}/bin/ray start --head --block --port=1 --redis-password=$REDIS_PASSWORD",
                dir.path().display()
            ),
        )
        .env("RAYHEAD_GCS_UNHEALTHY_AFTER", "1s");
    if let Some(r) = redis {
        cmd = cmd
            .env("RAY_REDIS_ADDRESS", r.address())
            .env("REDIS_PASSWORD", &r.password);
    }
    let mut args = vec!["run"];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    cmd.args(args)
}

#[test]
fn ray_start_failure_exits_85_with_its_message() {
    let dir = RayTest::unlocked("fake-start-fails");
    dir.write("ray-start-fails", "");
    let out = rayhead(&dir, None, &[]).run(LIMIT);
    out.assert_code(85)
        .assert_termination_log("ValueError: the fake port is taken");
}

#[test]
fn ray_start_without_daemons_exits_85() {
    let dir = RayTest::unlocked("fake-no-daemons");
    dir.write("no-daemons", "");
    let out = rayhead(&dir, None, &[]).run(LIMIT);
    out.assert_code(85).assert_termination_log("no gcs_server");
}

#[test]
fn a_start_command_without_head_is_a_config_error() {
    let dir = Dir::new("fake-nohead");
    let out = dir
        .rayhead()
        .env("KUBERAY_GEN_RAY_START_CMD", "ray start --address=x:1")
        .args(["run"])
        .run(LIMIT);
    out.assert_code(64);
    assert!(out.stderr.contains("--head"), "{}", out.dump());
}

#[test]
fn a_hung_gcs_without_fault_tolerance_exits_81() {
    let dir = RayTest::unlocked("fake-noft");
    let out = rayhead(&dir, None, &[]).run(LIMIT);
    out.assert_code(81)
        .assert_termination_log("no SERVING answer");
    assert!(
        out.stdout.contains("fake ray start"),
        "ray start's output is passed on"
    );
}

#[test]
fn raylet_death_exits_83() {
    let dir = RayTest::new("fake-raylet");
    dir.write("gcs-lives", "");
    let redis = RedisServer::start(&dir);
    let run = rayhead(&dir, Some(&redis), &["gcs.unhealthy-after=60s"]).spawn();
    wait_adopted(&dir);
    let root = run.rayhead_pid();
    let raylet = eventually(LIMIT, "the fake raylet", || {
        find_comm(root, "raylet").first().copied()
    });
    let gcs = find_comm(root, "gcs_server");
    assert_eq!(gcs.len(), 1, "one fake gcs_server");
    kill(raylet, Signal::SIGKILL).unwrap();
    let out = run.wait(LIMIT);
    out.assert_code(83).assert_no_secret(&redis.password);
    assert_all_dead("the GCS after the raylet's death", &gcs);
}

#[test]
fn crash_loop_guard_exits_82() {
    let dir = RayTest::new("fake-crashloop");
    let redis = RedisServer::start(&dir);
    let out = rayhead(&dir, Some(&redis), &["gcs.max-restarts=2"]).run(LIMIT);
    out.assert_code(82);
    assert_eq!(dir.read("gcs-crashes").lines().count(), 2, "{}", out.dump());
    out.assert_termination_log("crash loop");
    out.assert_no_secret(&redis.password);
}

#[test]
fn recovery_that_misses_the_deadline_exits_80_with_the_last_error() {
    let dir = RayTest::new("fake-deadline");
    let redis = RedisServer::start(&dir);
    let out = rayhead(
        &dir,
        Some(&redis),
        &[
            "ray.reconnect-timeout=4s",
            "gcs.deadline-margin=1s",
            "gcs.max-restarts=100",
        ],
    )
    .run(LIMIT);
    out.assert_code(80)
        .assert_termination_log("exited with code 3");
    assert!(
        dir.read("gcs-crashes").lines().count() >= 2,
        "{}",
        out.dump()
    );
    out.assert_no_secret(&redis.password);
}

#[test]
fn redis_start_gate_waits_for_redis_then_starts_ray() {
    let dir = RayTest::new("fake-gate");
    dir.write("gcs-lives", "");
    let mut redis = RedisServer::start(&dir);
    redis.stop();
    let mut run = rayhead(&dir, Some(&redis), &["gcs.unhealthy-after=60s"]).spawn();
    // rayhead is at the gate, and has tried at least once.
    eventually(LIMIT, "rayhead to wait at the gate", || {
        dir.read("stderr")
            .contains("Redis is not answering yet")
            .then_some(())
    });
    assert!(
        !dir.join("ray-start-ran").exists(),
        "ray start ran before Redis answered"
    );
    let redis_up = Instant::now();
    redis.restart();
    run.wait_for_file("ray-start-ran", LIMIT);
    assert!(redis_up.elapsed() < Duration::from_secs(10));
    run.signal(Signal::SIGTERM);
    let out = run.wait(LIMIT);
    out.assert_code(0).assert_no_secret(&redis.password);
}

#[test]
fn redis_gate_failures_exit_86_and_87() {
    let dir = RayTest::new("fake-gate-fail");
    let redis = RedisServer::start(&dir);
    let t = Instant::now();
    let out = rayhead(&dir, Some(&redis), &[])
        .env("REDIS_PASSWORD", "wrong-password")
        .run(LIMIT);
    out.assert_code(87).assert_no_secret("wrong-password");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "a wrong password must fail fast, not wait for redis.startup-timeout\n{}",
        out.dump()
    );
    assert!(!dir.join("ray-start-ran").exists(), "ray start ran");
    let port = free_port();
    let out = rayhead(&dir, None, &["redis.startup-timeout=1s"])
        .env("RAY_REDIS_ADDRESS", format!("127.0.0.1:{port}"))
        .run(LIMIT);
    out.assert_code(86).assert_termination_log("did not answer");
}

#[test]
fn sigterm_during_recovery_stops_cleanly() {
    let dir = RayTest::new("fake-term-recovering");
    let redis = RedisServer::start(&dir);
    let mut run = rayhead(&dir, Some(&redis), &["gcs.max-restarts=1000"]).spawn();
    wait_adopted(&dir);
    let root = run.rayhead_pid();
    let raylet = find_comm(root, "raylet");
    assert_eq!(raylet.len(), 1, "one fake raylet");
    // The GCS is never SERVING, so after 1 s rayhead restarts it, and the
    // restarts crash: it is recovering.
    run.wait_for_file("gcs-crashes", LIMIT);
    let gcs = find_comm(root, "gcs_server");
    run.signal(Signal::SIGTERM);
    let out = run.wait(LIMIT);
    out.assert_code(0).assert_no_secret(&redis.password);
    out.assert_termination_log("stopped on SIGTERM");
    assert!(out.stderr.contains("to=\"recovering\""), "{}", out.dump());
    assert_all_dead("the raylet", &raylet);
    assert_all_dead("a gcs_server", &gcs);
}

/// `ray start` gets rayhead's reconnect timeout and Ray's client check
/// interval (rayhead's default, or the value inherited, which wins), so
/// every daemon and driver it spawns inherits them.
#[test]
fn ray_start_gets_the_reconnect_timeout_and_client_check_interval() {
    const VAR: &str = "RAY_grpc_client_check_connection_status_interval_milliseconds";
    for (inherited, want) in [(None, "100"), (Some("250"), "250")] {
        let dir = RayTest::unlocked("fake-env");
        dir.write("gcs-lives", "");
        let mut cmd = rayhead(&dir, None, &["ray.reconnect-timeout=45s"]);
        if let Some(v) = inherited {
            cmd = cmd.env(VAR, v);
        }
        let run = cmd.spawn();
        wait_adopted(&dir);
        let env = dir.read("ray-start-env");
        assert!(env.contains(&format!("{VAR}={want}\n")), "{env}");
        assert!(
            env.contains("RAY_gcs_rpc_server_reconnect_timeout_s=45\n"),
            "{env}"
        );
        drop(run);
    }
}

/// `rayhead probe` against a running rayhead whose (fake) GCS never serves:
/// not ready, but live; and a clear failure when nothing listens.
#[test]
fn probe_cli_matches_the_state() {
    let dir = RayTest::unlocked("fake-probe");
    dir.write("gcs-lives", "");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let run = rayhead(&dir, None, &["gcs.unhealthy-after=60s"])
        .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
        .spawn();
    wait_adopted(&dir);
    let probe = |what: &str| {
        dir.rayhead()
            .args(["probe", what, "--url", &url])
            .spawn_named(&format!("probe-{what}-"))
            .wait(LIMIT)
    };
    let out = probe("live");
    out.assert_code(0);
    assert_eq!(out.stdout, "ok\n");
    let out = probe("ready");
    out.assert_code(1);
    assert!(
        out.stderr.contains("503") && out.stderr.contains("phase is starting"),
        "{}",
        out.dump()
    );
    let out = probe("status");
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["daemons"]["raylet"]["state"], "running");
    // From the config: RAYHEAD_PROBE_LISTEN names the port.
    let out = dir
        .rayhead()
        .env("RAYHEAD_PROBE_LISTEN", format!("0.0.0.0:{port}"))
        .args(["probe", "live"])
        .spawn_named("probe-cfg-")
        .wait(LIMIT);
    out.assert_code(0);
    drop(run);
    let out = probe("ready");
    out.assert_code(1);
    assert!(
        out.stderr.contains("cannot query rayhead") && out.stderr.contains("refused"),
        "{}",
        out.dump()
    );
}

/// Redis killed mid-run and started again: the probe reports it down, then
/// up, in /status and /readyz, and rayhead keeps running throughout.
#[test]
fn redis_probe_sees_redis_go_and_come_back() {
    let dir = RayTest::new("fake-redis-blip");
    dir.write("gcs-lives", "");
    let mut redis = RedisServer::start(&dir);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _run = rayhead(
        &dir,
        Some(&redis),
        &["gcs.unhealthy-after=60s", "redis.probe-interval=200ms"],
    )
    .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
    .spawn();
    let redis_up = |want: bool| {
        eventually(LIMIT, &format!("redis.up == {want}"), || {
            let (ok, text) = rayhead::probe::client::query(&url, "/status");
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            (ok && v["redis"]["up"] == want).then_some(v)
        })
    };
    redis_up(true);
    redis.stop();
    let v = redis_up(false);
    assert!(
        v["redis"]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{v:#}"
    );
    let (_, why) = rayhead::probe::client::query(&url, "/readyz");
    assert!(why.contains("Redis at redis://127.0.0.1"), "{why}");
    redis.restart();
    let v = redis_up(true);
    assert!(v["redis"]["ping_seconds"].as_f64().unwrap() < 1.0, "{v:#}");
    assert!(!v.to_string().contains(&redis.password));
    let log = dir.read("stderr");
    assert_eq!(
        log.matches("Redis probe failed").count(),
        1,
        "logged once per change:\n{log}"
    );
    assert!(log.contains("Redis answers again"), "{log}");
}

/// While supervising, the probe's warnings land in /status and are logged
/// once each, not on every probe; a replica makes the head unready.
#[test]
fn redis_warnings_are_logged_once_and_a_replica_is_not_ready() {
    let dir = RayTest::new("fake-redis-warn");
    dir.write("gcs-lives", "");
    let redis = RedisServer::start_with(
        &dir,
        "pw",
        &["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"],
    );
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _run = rayhead(
        &dir,
        Some(&redis),
        &["gcs.unhealthy-after=60s", "redis.probe-interval=100ms"],
    )
    .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"))
    .env("RAY_external_storage_namespace", "ns")
    .spawn();
    let v = eventually(LIMIT, "the warnings in /status", || {
        let (_, text) = rayhead::probe::client::query(&url, "/status");
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["redis"]["warnings"].as_array()?.len() == 2).then_some(v)
    });
    assert_eq!(v["redis"]["role"], "master");
    assert!(v["redis"]["tables"]["NODE"].is_null(), "{v:#}");
    // Ten more probes, each seen by its own last_probe time.
    let mut seen = std::collections::BTreeSet::new();
    eventually(LIMIT, "ten more Redis probes", || {
        let (_, text) = rayhead::probe::client::query(&url, "/status");
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        seen.insert(v["redis"]["last_probe"].as_str()?.to_string());
        (seen.len() > 10).then_some(())
    });
    let log = dir.read("stderr");
    assert_eq!(
        log.matches("Redis setting can lose GCS state").count(),
        2,
        "{log}"
    );

    redis.cli(&["REPLICAOF", "127.0.0.1", &free_port().to_string()]);
    eventually(LIMIT, "a replica to be unready", || {
        let (_, why) = rayhead::probe::client::query(&url, "/readyz?verbose");
        why.contains("is a replica").then_some(())
    });
}

/// A test's own process, killed and reaped even if the test fails.
struct Guarded(std::process::Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 18's reused pid, end to end: the log monitor's family (a child
/// of its own) is recorded; the child exits and the kernel is steered
/// (`ns_last_pid`, root only) to give its pid to an unrelated process;
/// then the log monitor dies, and its restart SIGKILLs its family as last
/// seen. The unrelated process must live: the family is kept by identity.
#[test]
fn a_restart_never_kills_a_process_that_took_a_family_members_pid() {
    const WHAT: &str = "the reused-pid test";
    if !nix::unistd::geteuid().is_root() {
        return cannot_run(WHAT, "it needs root to steer pids");
    }
    let dir = RayTest::new("fake-pid-reuse");
    let (run, url) = start_with_a_log_monitor(&dir);
    let kid: i32 = eventually(LIMIT, "the log monitor's child", || {
        dir.read("kid").trim().parse().ok()
    });
    // The family is recorded on the first check and then every fifth (at
    // 2 s and 12 s after adoption): once /status shows the first check's
    // verdict, the family with the child in it is recorded.
    eventually(LIMIT, "the log monitor's first health check", || {
        let (_, text) = rayhead::probe::client::query(&url, "/status");
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["daemons"]["log_monitor"]["healthy"].as_bool()
    });
    kill(nix::unistd::Pid::from_raw(kid), Signal::SIGKILL).unwrap();
    eventually(LIMIT, "the child reaped", || {
        (!std::path::Path::new(&format!("/proc/{kid}")).exists()).then_some(())
    });
    let mut unrelated = match take_the_pid(kid) {
        Ok(p) => p,
        Err(why) => return cannot_run(WHAT, &why),
    };
    let lm = find_comm(run.rayhead_pid(), "log_monitor.py");
    assert_eq!(lm.len(), 1, "{lm:?}");
    kill(lm[0], Signal::SIGKILL).unwrap();
    eventually(LIMIT, "the log monitor restarted", || {
        dir.read("stderr")
            .contains("restarted log_monitor in place")
            .then_some(())
    });
    assert!(
        unrelated.0.try_wait().unwrap().is_none(),
        "the process that took the family member's pid was killed"
    );
}

/// rayhead on the fake Ray, whose `ray start` also starts a log monitor
/// with a child of its own (its pid in `$D/kid`), checked every 2 s; the
/// run, adopted with its log monitor, and its probe's URL.
fn start_with_a_log_monitor(dir: &Dir) -> (crate::util::Running, String) {
    dir.write("gcs-lives", "");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cmd = rayhead(
        dir,
        None,
        &["gcs.unhealthy-after=60s", "ray.health-interval=2s"],
    )
    .env("RAYHEAD_PROBE_LISTEN", format!("127.0.0.1:{port}"));
    let ray = dir.join("bin/ray");
    let text = std::fs::read_to_string(&ray).unwrap().replace(
        "\"$D/bin/raylet\" &\n",
        "\"$D/bin/raylet\" &\n    \"$D/bin/log_monitor.py\" &\n",
    );
    std::fs::write(&ray, text).unwrap();
    let monitor = dir.write(
        "bin/log_monitor.py",
        "#!/bin/sh\n[ -e \"$D/kid\" ] || { sleep 1000 & echo $! > \"$D/kid\"; }\nwhile :; do sleep 0.1; done\n",
    );
    std::fs::set_permissions(&monitor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = cmd.spawn();
    wait_adopted(dir);
    eventually(LIMIT, "the log monitor adopted", || {
        dir.read("stderr")
            .contains("daemon=\"log_monitor\"")
            .then_some(())
    });
    (run, url)
}

/// An unrelated process given `pid` by the kernel (steered through
/// `ns_last_pid`), or why it could not be.
fn take_the_pid(pid: i32) -> Result<Guarded, String> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .map_err(|e| format!("cannot steer pids here: {e}"))?;
        let p = Guarded(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        );
        if p.0.id() as i32 == pid {
            return Ok(p);
        }
    }
    Err("the pid went to another process each of 50 times".into())
}
