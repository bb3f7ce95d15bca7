//! End-to-end: rayhead supervising a real Ray 2.60.0 head against a real
//! redis-server. The KubeRay guide's quickstart, automated: a detached
//! counter actor on a worker node survives GCS kills.
//!
//! Serial (one cluster at a time), free ports, per-node temp dirs.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use crate::ray_drivers::*;
use crate::ray_util::*;
use crate::redis_util::RedisServer;
use crate::util::count_lines;
use crate::wait::eventually;

#[test]
fn e2e_kuberay_guide_counter_survives_gcs_kills_then_clean_stop() {
    let dir = RayTest::new("e2e-guide");
    guide_scenario_with(&dir, |head| head.run.signal(Signal::SIGTERM));
}

#[test]
fn e2e_gcs_that_cannot_come_back_exits_80_before_the_head_timeout() {
    let dir = RayTest::new("e2e-noredis");
    let mut redis = RedisServer::start(&dir);
    let head = start_head(
        &dir,
        Some(&redis),
        &[("RAY_gcs_rpc_server_reconnect_timeout_s", "20")],
        "direct",
    );
    redis.stop();
    let daemons = head_processes(&head);
    let t = Instant::now();
    kill(gcs_pid(&head), Signal::SIGKILL).unwrap();
    let out = head.run.wait(Duration::from_secs(90));
    // The head raylet exits on its own 20 s after the loss: rayhead, its
    // teardown included, must be gone before.
    let gone = t.elapsed();
    assert_head_ended(
        &out,
        80,
        Some((gone, Duration::from_secs(20))),
        &["not SERVING again", "Redis"],
        &daemons,
        &dir.cleanup,
        Some(&redis.password),
    );
}

#[test]
fn e2e_head_raylet_death_exits_83() {
    let dir = RayTest::new("e2e-raylet");
    let redis = RedisServer::start(&dir);
    let head = start_head(&dir, Some(&redis), &[], "direct");
    let daemons = head_processes(&head);
    let bound = Duration::from_secs(5);
    kill_the_raylet_and_expect_83(&dir, head, bound, &daemons, &redis.password);
}

#[test]
fn e2e_without_fault_tolerance_the_head_shares_the_gcs_fate() {
    let dir = RayTest::new("e2e-noft");
    let head = start_head(&dir, None, &[], "direct");
    let daemons = head_processes(&head);
    kill(gcs_pid(&head), Signal::SIGKILL).unwrap();
    let out = head.run.wait(Duration::from_secs(60));
    assert_head_ended(
        &out,
        81,
        None,
        &["without fault tolerance"],
        &daemons,
        &dir.cleanup,
        None,
    );
}

#[test]
fn e2e_block_mode_sigterm_to_gcs_ends_rayhead_quickly() {
    let dir = RayTest::new("e2e-block");
    let redis = RedisServer::start(&dir);
    let head = start_head(&dir, Some(&redis), &[], "block");
    let daemons = head_processes(&head);
    let t = Instant::now();
    kill(gcs_pid(&head), Signal::SIGTERM).unwrap();
    let decided = decision_after(&dir, t);
    let out = head.run.wait(Duration::from_secs(60));
    assert_head_ended(
        &out,
        88,
        Some((decided, Duration::from_secs(5))),
        &["block mode"],
        &daemons,
        &dir.cleanup,
        Some(&redis.password),
    );
}

/// Redis is down, so rayhead waits at the restart gate after a GCS kill;
/// the head raylet dies there. Every wait hears every event: exit 83 at
/// once, not 80 when the window runs out.
#[test]
fn e2e_raylet_killed_at_the_restart_gate_exits_83_at_once() {
    let dir = RayTest::new("e2e-gate-raylet");
    let mut redis = RedisServer::start(&dir);
    let head = start_head(
        &dir,
        Some(&redis),
        &[("RAY_gcs_rpc_server_reconnect_timeout_s", "30")],
        "direct",
    );
    let daemons = head_processes(&head);
    redis.stop();
    kill(gcs_pid(&head), Signal::SIGKILL).unwrap();
    eventually(
        Duration::from_secs(30),
        "rayhead at the restart gate",
        || {
            let log = dir.read("stderr");
            (log.contains("Redis is not answering yet") && log.contains("restart gate"))
                .then_some(())
        },
    );
    let bound = Duration::from_secs(3);
    kill_the_raylet_and_expect_83(&dir, head, bound, &daemons, &redis.password);
}

/// Ten SIGKILLs of gcs_server, 3 s apart: each is recovered in place, the
/// crash-loop guard (which counts failed restarts, not recoveries) never
/// fires, and the detached counter on the worker keeps counting.
#[test]
fn e2e_ten_gcs_kills_three_seconds_apart_all_recover() {
    let dir = RayTest::new("e2e-ten-kills");
    let (redis, head, _worker) = start_guide(&dir, &[]);
    let nodes = increment(&head).1;
    let raylet = raylet_pid(&head);
    for n in 1..=10 {
        let started = Instant::now();
        kill_gcs_and_wait(&dir, &head, Signal::SIGKILL, n, Duration::from_secs(30));
        if n == 5 {
            assert_eq!(increment(&head).0, 3, "after 5 kills");
        }
        // Pacing, not a wait for anything: the kills come 3 s apart.
        std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    }
    let (v, after) = increment(&head);
    assert_eq!(v, 4, "after 10 kills");
    assert_eq!(after, nodes, "a node was lost or replaced");
    assert_eq!(raylet_pid(&head), raylet, "the head raylet was restarted");
    let (ok, status) = head.probe("/status");
    assert!(ok, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["phase"], "running", "{v:#}");
    assert_eq!(v["gcs"]["restarts"], 10, "{v:#}");
    assert_eq!(v["gcs"]["consecutive_failures"], 0, "{v:#}");
    let log = dir.read("stderr");
    assert_eq!(count_lines(&log, "gcs_recovered"), 10, "{log}");
    assert!(!log.contains("crash loop"), "{log}");
    assert!(!log.contains(&redis.password), "the password leaked");
    head.run.signal(Signal::SIGTERM);
    head.run
        .wait(Duration::from_secs(60))
        .assert_code(0)
        .assert_no_secret(&redis.password);
}

/// SIGKILLs the head raylet: rayhead decides within `bound` (the raylet's
/// death is one event, whatever it was waiting for) and exits 83, leaving
/// nothing behind.
fn kill_the_raylet_and_expect_83(
    dir: &RayTest,
    head: Head,
    bound: Duration,
    daemons: &[nix::unistd::Pid],
    secret: &str,
) {
    let t = Instant::now();
    kill(raylet_pid(&head), Signal::SIGKILL).unwrap();
    let decided = decision_after(dir, t);
    let out = head.run.wait(Duration::from_secs(60));
    assert_head_ended(
        &out,
        83,
        Some((decided, bound)),
        &["raylet"],
        daemons,
        &dir.cleanup,
        Some(secret),
    );
}
