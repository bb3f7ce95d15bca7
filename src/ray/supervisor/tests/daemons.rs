//! The daemons other than the GCS: health, readiness, and restarts in place.

use std::time::Duration;

use super::*;

impl H {
    fn daemon_health(&mut self, daemon: Daemon, p: i32, healthy: bool) -> Vec<Action> {
        self.ev(Event::DaemonHealth(DaemonCheck {
            daemon,
            pid: pid(p),
            healthy,
            detail: if healthy {
                "ok".into()
            } else {
                "stopped".into()
            },
        }))
    }
}

#[test]
fn a_dashboard_that_exits_is_restarted_in_place() {
    let mut h = H::at(At::Running, &[]);
    let a = h.exited(Daemon::Dashboard, DASHBOARD, ExitStatus::Signaled(9));
    // Its own children first, then it starts again at once.
    assert_eq!(
        a,
        vec![
            Action::KillTree(pid(DASHBOARD)),
            Action::StartDaemon(Daemon::Dashboard)
        ]
    );
    let a = h.ev(Event::Started(Daemon::Dashboard, Ok(pid(50))));
    assert_eq!(
        a,
        vec![Action::StartHealthChecks(Daemon::Dashboard, pid(50))]
    );
    let snap = h.state.get();
    let d = &snap.daemons["dashboard"];
    assert_eq!(
        (d.pid, d.state, d.restarts),
        (Some(50), ChildStatus::Running, 1)
    );
    assert_eq!(h.phase(), Phase::Running, "the head does not notice");
    // The old pid's news is stale.
    assert!(h
        .daemon_health(Daemon::Dashboard, DASHBOARD, false)
        .is_empty());
}

#[test]
fn a_daemon_that_keeps_dying_is_a_crash_loop_84() {
    let mut h = H::at(At::Running, &[]);
    // The original's exit, then five restarts that each die within
    // gcs.stable-after: the fifth failed restart in a row is the crash loop.
    let mut p = DASHBOARD;
    for n in 1..=6 {
        h.advance(Duration::from_millis(500));
        let a = h.exited(Daemon::Dashboard, p, ExitStatus::Exited(1));
        if n == 6 {
            assert_eq!(code(&a), Some(84), "{a:?}");
            let Some(StopReason::Exit(e)) = stop_reason(&a) else {
                panic!()
            };
            assert!(e.reason().contains("crash loop"), "{e}");
            return;
        }
        if n > 1 {
            // Died within gcs.stable-after of its restart: backs off first.
            assert_eq!(a, vec![Action::KillTree(pid(p))], "exit {n}");
            let (t, a) = h.fire();
            assert_eq!(t, Timer::DaemonBackoff(Daemon::Dashboard));
            assert_eq!(a, vec![Action::StartDaemon(Daemon::Dashboard)]);
        }
        p = 60 + n;
        h.ev(Event::Started(Daemon::Dashboard, Ok(pid(p))));
    }
}

#[test]
fn a_hung_dashboard_costs_readiness_then_is_replaced() {
    let mut h = H::at(At::Running, &["ray.daemon-unhealthy-after=10s"]);
    assert!(h
        .daemon_health(Daemon::Dashboard, DASHBOARD, false)
        .is_empty());
    let snap = h.state.get();
    let d = &snap.daemons["dashboard"];
    assert_eq!(d.healthy, Some(false));
    assert!(
        d.required,
        "ray.ready-requires names the dashboard by default"
    );
    assert!(
        d.unhealthy_at(h.now).is_none(),
        "not yet past its threshold"
    );
    assert!(d.unhealthy_at(h.now + Duration::from_secs(10)).is_some());
    h.advance(Duration::from_secs(10));
    let a = h.daemon_health(Daemon::Dashboard, DASHBOARD, false);
    assert_eq!(a, vec![Action::KillTree(pid(DASHBOARD))]);
    let a = h.exited(Daemon::Dashboard, DASHBOARD, ExitStatus::Signaled(9));
    assert_eq!(a, vec![Action::StartDaemon(Daemon::Dashboard)]);
    h.ev(Event::Started(Daemon::Dashboard, Ok(pid(70))));
    h.daemon_health(Daemon::Dashboard, 70, true);
    let snap = h.state.get();
    assert_eq!(snap.daemons["dashboard"].healthy, Some(true));
    assert!(snap.daemons["dashboard"].unhealthy_at.is_none());
}

#[test]
fn a_hung_raylet_costs_readiness_then_ends_the_head_past_its_bound() {
    let sets = ["ray.raylet-unhealthy-after=10s", "ray.raylet-hung-after=2m"];
    let mut h = H::at(At::Running, &sets);
    h.daemon_health(Daemon::Raylet, RAYLET, false);
    // A short hang: readiness only.
    h.advance(Duration::from_secs(30));
    assert!(h.daemon_health(Daemon::Raylet, RAYLET, false).is_empty());
    let snap = h.state.get();
    assert!(snap.daemons["raylet"].unhealthy_at(h.now).is_some());
    h.advance(Duration::from_secs(2));
    assert!(h.daemon_health(Daemon::Raylet, RAYLET, true).is_empty());
    assert!(h.state.get().daemons["raylet"]
        .unhealthy_at(h.now)
        .is_none());
    // A long one: SIGKILL and 83, within one check of the bound.
    h.daemon_health(Daemon::Raylet, RAYLET, false);
    h.advance(Duration::from_secs(119));
    assert!(h.daemon_health(Daemon::Raylet, RAYLET, false).is_empty());
    h.advance(Duration::from_secs(1));
    let a = h.daemon_health(Daemon::Raylet, RAYLET, false);
    assert!(a.contains(&Action::Kill(pid(RAYLET))), "{a:?}");
    assert_eq!(code(&a), Some(83));
    let Some(StopReason::Exit(e)) = stop_reason(&a) else {
        panic!()
    };
    assert!(e.reason().contains("ray.raylet-hung-after"), "{e}");
}
