//! End-to-end: every head daemon watched for health, and restarted in place
//! where Ray allows it, with real Ray 2.60.0 and redis-server. The detached
//! counter on the worker keeps counting through all of it.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ray_drivers::*;
use crate::ray_util::*;
use crate::redis_util::RedisServer;
use crate::util::{count_lines, Dir};
use crate::wait::eventually;

/// The pid of the head's daemon whose command line names `word`.
fn daemon_pid(head: &Head, word: &str) -> Pid {
    let root = head.run.rayhead_pid();
    eventually(Duration::from_secs(60), word, || {
        rayhead::sys::proctree::descendants(&rayhead::sys::proctree::snapshot(), root)
            .into_iter()
            .filter(|p| p.ppid == root && p.state != 'Z')
            .find(|p| {
                rayhead::sys::proctree::cmdline(p.pid)
                    .map(|a| a.iter().any(|w| w.to_string_lossy().contains(word)))
                    .unwrap_or(false)
            })
            .map(|p| p.pid)
    })
}

/// Waits until rayhead logged the `n`th in-place restart of `daemon`.
fn restarted(dir: &Dir, daemon: &str, n: usize) {
    let needle = format!("restarted {daemon} in place");
    eventually(Duration::from_secs(90), &needle, || {
        (count_lines(&dir.read("stderr"), &needle) >= n).then_some(())
    });
}

fn dashboard_answers(head: &Head) -> bool {
    rayhead::probe::client::query(
        &format!("http://127.0.0.1:{}", head.ports.dashboard),
        "/api/version",
    )
    .0
}

/// The dashboard SIGKILLed: restarted in place, the head stays, a job
/// submitted afterwards SUCCEEDS. The autoscaler monitor SIGKILLed:
/// restarted, `ray status` works. The dashboard SIGSTOPped: `/readyz` turns
/// 503, the hung dashboard is replaced, `/readyz` is 200 again.
#[test]
fn e2e_daemons_are_restarted_in_place_and_the_counter_keeps_counting() {
    let dir = RayTest::new("e2e-daemons");
    let (redis, head, _worker) = start_guide(&dir, &[]);
    let addr = format!("127.0.0.1:{}", head.ports.gcs);
    eventually(Duration::from_secs(60), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });

    // The dashboard, SIGKILLed.
    let dashboard = daemon_pid(&head, "dashboard/dashboard.py");
    let t = Instant::now();
    kill(dashboard, Signal::SIGKILL).unwrap();
    restarted(&dir, "dashboard", 1);
    eventually(Duration::from_secs(60), "the dashboard answering", || {
        dashboard_answers(&head).then_some(())
    });
    let answering = t.elapsed();
    let out = submit_job(&dir, &head, "job1-", "print('job ran')");
    out.assert_code(0);
    assert!(out.stdout.contains("succeeded"), "{}", out.dump());
    let job = t.elapsed();
    assert_eq!(increment(&head).0, 2);

    // The autoscaler monitor, SIGKILLed.
    let monitor = daemon_pid(&head, "autoscaler/_private/monitor.py");
    kill(monitor, Signal::SIGKILL).unwrap();
    restarted(&dir, "monitor", 1);
    let status = dir
        .command(venv_bin().join("ray"))
        .env("PATH", path_with_venv())
        .args(["status", "--address", &addr])
        .spawn_named("status-")
        .wait(Duration::from_secs(120));
    status.assert_code(0);
    assert!(status.stdout.contains("Node status"), "{}", status.dump());

    // The dashboard, SIGSTOPped: unready, then replaced.
    let hung = daemon_pid(&head, "dashboard/dashboard.py");
    let t = Instant::now();
    kill(hung, Signal::SIGSTOP).unwrap();
    let (_, why) = eventually(Duration::from_secs(60), "/readyz 503", || {
        let (ok, why) = head.probe("/readyz");
        (!ok).then_some((ok, why))
    });
    let unready = t.elapsed();
    assert!(
        why.contains("dashboard has failed its health checks"),
        "{why}"
    );
    assert!(head.probe("/livez").0, "/livez failed for a hung dashboard");
    restarted(&dir, "dashboard", 2);
    eventually(Duration::from_secs(90), "/readyz 200 again", || {
        head.probe("/readyz").0.then_some(())
    });
    assert!(
        !crate::util::alive(hung.as_raw()),
        "the hung dashboard lives on"
    );
    assert_eq!(increment(&head).0, 3);

    let (_, status) = head.probe("/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["daemons"]["dashboard"]["restarts"], 2, "{v:#}");
    assert_eq!(v["daemons"]["monitor"]["restarts"], 1, "{v:#}");
    eprintln!(
        "dashboard SIGKILL -> answering {answering:?}, -> a job SUCCEEDED {job:?}; \
         dashboard SIGSTOP -> /readyz 503 {unready:?}"
    );
    head.run.signal(Signal::SIGTERM);
    head.run
        .wait(Duration::from_secs(60))
        .assert_code(0)
        .assert_no_secret(&redis.password);
}

/// The head raylet SIGSTOPped: `/readyz` 503 within its threshold, 200
/// again after SIGCONT before the bound, and nothing exits; kept stopped
/// past the bound, it is SIGKILLed and rayhead exits 83.
#[test]
fn e2e_a_hung_raylet_costs_readiness_then_ends_the_head() {
    let dir = RayTest::new("e2e-raylet-hang");
    let redis = RedisServer::start(&dir);
    let head = start_head(
        &dir,
        Some(&redis),
        &[
            ("RAYHEAD_RAY_RAYLET_UNHEALTHY_AFTER", "5s"),
            ("RAYHEAD_RAY_RAYLET_HUNG_AFTER", "30s"),
        ],
        "direct",
    );
    eventually(Duration::from_secs(60), "/readyz 200", || {
        head.probe("/readyz").0.then_some(())
    });
    let raylet = raylet_pid(&head);
    let t = Instant::now();
    kill(raylet, Signal::SIGSTOP).unwrap();
    let why = eventually(Duration::from_secs(30), "/readyz 503", || {
        let (ok, why) = head.probe("/readyz");
        (!ok).then_some(why)
    });
    let unready = t.elapsed();
    assert!(why.contains("raylet has failed its health checks"), "{why}");
    assert!(head.probe("/livez").0);
    kill(raylet, Signal::SIGCONT).unwrap();
    eventually(Duration::from_secs(30), "/readyz 200 after SIGCONT", || {
        head.probe("/readyz").0.then_some(())
    });
    assert!(!dir.read("stderr").contains("rayhead exiting"));
    assert_eq!(raylet_pid(&head), raylet, "the raylet was replaced");

    let daemons = head_processes(&head);
    let t = Instant::now();
    kill(raylet, Signal::SIGSTOP).unwrap();
    let decided = decision_after(&dir, t);
    let out = head.run.wait(Duration::from_secs(120));
    assert!(
        decided >= Duration::from_secs(30),
        "before the bound: {decided:?}"
    );
    let bound = Duration::from_secs(60);
    let why = "ray.raylet-hung-after";
    assert_head_ended(
        &out,
        83,
        Some((decided, bound)),
        &[why],
        &daemons,
        &dir.cleanup,
        Some(&redis.password),
    );
    eprintln!("raylet SIGSTOP -> /readyz 503 {unready:?}; kept stopped -> exit 83 {decided:?}");
}
