//! Recovery as applications see it: a long-lived driver, a Ray Serve app and
//! the Jobs API, each across GCS kills that rayhead recovers in place, with
//! every process's env taken from the shipped manifest (`manifest_env`).
//!
//! They assert outcomes, never timings: `make bench` measures how long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ray_drivers::*;
use crate::ray_util::*;
use crate::redis_util::RedisServer;
use crate::util::{count_lines, Dir};
use crate::wait::eventually;

const CHECK_VAR: &str = "RAY_grpc_client_check_connection_status_interval_milliseconds";

/// The value of `name` in the environment `pid` started with.
fn environ_var(pid: Pid, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(|v| v.to_string())
    })
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Kills the GCS with `sig` without waiting; returns the old pid and when.
fn kill_gcs(head: &Head, sig: Signal) -> (Pid, f64) {
    let pid = gcs_pid(head);
    let t = now();
    kill(pid, sig).unwrap();
    (pid, t)
}

/// Waits for rayhead to log recovery number `n`; returns when it saw it.
fn wait_recovered(dir: &Dir, n: usize) -> f64 {
    eventually(Duration::from_secs(60), &format!("recovery #{n}"), || {
        (count_lines(&dir.read("stderr"), "gcs_recovered") >= n).then_some(())
    });
    now()
}

/// The guide's cluster (the counter at 1) and a driver that stays
/// connected: after each of three SIGKILLs it looks up the counter, calls
/// it and reads internal KV, asked at once after the kill, so the call
/// spans the outage. Then `ray job submit` through the dashboard runs a
/// job that SUCCEEDS and sees the same counter. Ray's client check
/// interval reached the head's, the restarted GCS's and the worker's
/// processes.
#[test]
fn e2e_driver_and_job_ride_through_gcs_kills() {
    let dir = RayTest::new("e2e-driver");
    let (redis, head, worker) = start_guide(&dir, &[]);
    let want = humantime::parse_duration(
        rayhead::config::keys::find("ray.client-check-interval")
            .and_then(|k| k.default)
            .unwrap(),
    )
    .unwrap()
    .as_millis()
    .to_string();
    let worker_raylet = find_comm(worker.outer_pid(), "raylet");
    assert_eq!(worker_raylet.len(), 1, "{worker_raylet:?}");
    for (what, pid) in [
        ("the head raylet", raylet_pid(&head)),
        ("gcs_server", gcs_pid(&head)),
        ("the worker raylet", worker_raylet[0]),
    ] {
        assert_eq!(
            environ_var(pid, CHECK_VAR).as_deref(),
            Some(want.as_str()),
            "{what}"
        );
    }

    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    let marker = dir.path().display().to_string();
    let mut driver = Script::spawn("tests/py/driver.py", &[&addr, &marker]);
    let warm: u64 = driver
        .expect("CALL ", ACTOR)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(warm, 2, "the warm-up round");
    driver.expect("READY", ACTOR);
    let mut took = Vec::new();
    for n in 1..=3 {
        let (old, _) = kill_gcs(&head, Signal::SIGKILL);
        driver.send("go");
        let call = driver.expect("CALL ", Duration::from_secs(90));
        let mut fields = call.split_whitespace();
        let (value, secs) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(value, (n + 2).to_string(), "the counter after kill #{n}");
        took.push(secs.to_string());
        wait_recovered(&dir, n);
        let gcs = gcs_pid(&head);
        assert_ne!(gcs, old);
        assert_eq!(
            environ_var(gcs, CHECK_VAR).as_deref(),
            Some(want.as_str()),
            "the GCS restarted in place lost the variable"
        );
    }
    eprintln!("kill -> driver round (s): {}", took.join(", "));
    drop(driver);

    let job = "import ray; ray.init(); c = ray.get_actor('counter_actor', namespace='default_namespace'); print('job counter', ray.get(c.increment.remote()))";
    let out = submit_job(&dir, &head, "job", job);
    out.assert_code(0);
    assert!(out.stdout.contains("job counter 6"), "{}", out.dump());
    assert!(out.stdout.contains("succeeded"), "{}", out.dump());
    let log = dir.read("stderr");
    assert_eq!(count_lines(&log, "gcs_recovered"), 3, "{log}");
    assert!(!log.contains(&redis.password));
}

/// A Serve app behind the head node's proxy takes a steady stream of
/// requests across a SIGKILL and a SIGTERM of gcs_server, each recovered
/// in place: not one request fails, and requests were in flight across
/// each outage.
#[test]
fn e2e_serve_loses_no_request_across_gcs_kills() {
    let dir = RayTest::new("e2e-serve");
    let redis = RedisServer::start(&dir);
    let head = start_head(&dir, Some(&redis), &[], "direct");
    let _worker = start_worker(&dir, &head);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    let (load, csv) = serve_under_load(&dir, &addr);
    let requests = || std::fs::read_to_string(&csv).unwrap_or_default();
    eventually(
        Duration::from_secs(30),
        "50 requests before the kills",
        || (requests().lines().count() > 50).then_some(()),
    );
    let mut outages = Vec::new();
    for (n, sig) in [(1, Signal::SIGKILL), (2, Signal::SIGTERM)] {
        let (_, killed) = kill_gcs(&head, sig);
        let back = wait_recovered(&dir, n);
        outages.push((sig, killed, back));
        // Requests go on after the recovery too.
        let after = requests().lines().count() + 50;
        eventually(Duration::from_secs(30), "50 more requests", || {
            (requests().lines().count() > after).then_some(())
        });
    }
    let summary: serde_json::Value =
        serde_json::from_str(&load.finish(Duration::from_secs(30))).unwrap();
    let rows: Vec<(f64, f64, bool)> = requests()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2] == "1")
        })
        .collect();
    assert_eq!(summary["failed"], 0, "{summary}\n{}", requests());
    assert!(rows.iter().all(|r| r.2), "{}", requests());
    assert_eq!(summary["sent"], rows.len(), "{summary}");
    for (sig, killed, back) in outages {
        assert!(
            rows.iter()
                .any(|&(start, took, _)| start <= back && start + took >= killed),
            "no request in flight during the {sig} outage ({killed}..{back})"
        );
    }
    eprintln!("serve across the kills: {summary}");
    assert!(!dir.read("stderr").contains(&redis.password));
}
