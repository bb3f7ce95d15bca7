//! Memory restarts of the GCS: sustained, not a spike; at most once per
//! interval; never counted as failures; and given up on a leak.

use super::*;
use crate::memory::{CgroupVersion, ContainerMemory};
use crate::ray::supervisor::machine::MemorySample;

const MIB: u64 = 1 << 20;

fn sample(gcs: i32, rss_mib: u64, limit_mib: Option<u64>) -> Event {
    Event::Memory(MemorySample {
        container: Ok(Some(ContainerMemory {
            version: CgroupVersion::V2,
            usage: (rss_mib + 300) * MIB,
            limit: limit_mib.map(|l| l * MIB),
            oom_kills: Some(0),
        })),
        rss: vec![
            ("gcs_server", pid(gcs), rss_mib * MIB),
            ("raylet", pid(RAYLET), 80 * MIB),
        ],
    })
}

/// The default sustain and interval, a 100 MiB mark.
const MARK: &[&str] = &["memory.gcs-high-water=100MiB"];

/// Samples every second for `secs` seconds at `rss_mib`; the actions.
fn hold(h: &mut H, gcs: i32, rss_mib: u64, secs: u64) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..secs {
        all.extend(h.ev(sample(gcs, rss_mib, None)));
        h.advance(Duration::from_secs(1));
    }
    all
}

/// The memory restart that `actions` began: the old GCS killed, reaped,
/// the gate, a new one SERVING. The new pid.
fn finish_restart(h: &mut H, old: i32, actions: &[Action]) -> i32 {
    assert!(actions.contains(&Action::Kill(pid(old))), "{actions:?}");
    assert_eq!(h.phase(), Phase::Recovering);
    let a = h.exited(Daemon::GcsServer, old, ExitStatus::Signaled(9));
    assert!(matches!(a[..], [Action::WaitForStore { .. }]), "{a:?}");
    let new = h.restart();
    h.advance(Duration::from_millis(100));
    let a = h.health(Health::Serving);
    assert!(stop_reason(&a).is_none(), "{a:?}");
    assert_eq!(h.phase(), Phase::Running);
    new
}

fn memory(h: &H) -> crate::state::MemoryState {
    h.state.get().memory.expect("a memory section")
}

#[test]
fn a_gcs_over_the_mark_for_the_sustain_is_restarted_in_place() {
    let mut h = H::at(At::Running, MARK);
    // A spike, then under: nothing.
    assert!(hold(&mut h, GCS, 150, 5).is_empty());
    assert!(hold(&mut h, GCS, 90, 1).is_empty());
    assert!(memory(&h).gcs_over_since.is_none());
    // Over for 10 s: the restart, at the sample that completes it.
    let a = hold(&mut h, GCS, 150, 10);
    assert!(a.is_empty(), "{a:?}");
    assert!(memory(&h).gcs_over_since.is_some());
    let a = h.ev(sample(GCS, 150, None));
    let new = finish_restart(&mut h, GCS, &a);
    let m = memory(&h);
    assert_eq!(m.gcs_restarts, 1);
    assert!(m.last_restart_reason.unwrap().contains("150.0 MiB"));
    assert_eq!(m.gcs_high_water_bytes, Some(100 * MIB));
    assert_eq!(m.container_bytes, Some(450 * MIB));
    let snap = h.state.get();
    assert_eq!(snap.gcs.as_ref().unwrap().restarts, 1);
    assert_eq!(snap.gcs.unwrap().consecutive_failures, 0);
    assert_eq!(snap.daemons["raylet"].rss_bytes, Some(80 * MIB));
    // The fresh GCS is small: nothing more happens.
    assert!(hold(&mut h, new, 45, 60).is_empty());
}

#[test]
fn at_most_one_memory_restart_per_min_interval() {
    let mut h = H::at(
        At::Running,
        &[
            "memory.gcs-high-water=100MiB",
            "memory.sustain=2s",
            "memory.min-interval=5m",
        ],
    );
    let a = hold(&mut h, GCS, 150, 3);
    let gcs = finish_restart(&mut h, GCS, &a);
    // Grows back slowly: past the sustain, then over for minutes.
    assert!(hold(&mut h, gcs, 50, 10).is_empty());
    let a = hold(&mut h, gcs, 150, 280);
    assert!(a.is_empty(), "restarted within memory.min-interval: {a:?}");
    assert!(memory(&h).gave_up.is_none());
    let a = hold(&mut h, gcs, 150, 20);
    finish_restart(&mut h, gcs, &a);
    assert_eq!(memory(&h).gcs_restarts, 2);
}

#[test]
fn over_the_mark_right_after_a_restart_is_a_leak_and_never_loops() {
    // A mark below a fresh GCS's size.
    let mut h = H::at(
        At::Running,
        &["memory.gcs-high-water=10MiB", "memory.min-interval=1s"],
    );
    let a = hold(&mut h, GCS, 45, 11);
    let gcs = finish_restart(&mut h, GCS, &a);
    let a = hold(&mut h, gcs, 45, 3600);
    assert!(a.is_empty(), "{a:?}");
    let m = memory(&h);
    assert_eq!(m.gcs_restarts, 1);
    assert!(m.gave_up.unwrap().contains("no longer restarts"));
    // Readiness is kept.
    assert_eq!(h.phase(), Phase::Running);
}

#[test]
fn memory_restarts_are_not_failures_but_a_failed_one_counts() {
    let mut h = H::at(
        At::Running,
        &[
            "memory.gcs-high-water=100MiB",
            "memory.sustain=1s",
            "memory.min-interval=1s",
            "gcs.max-restarts=1",
            "ray.health-interval=1s",
        ],
    );
    let mut gcs = GCS;
    for n in 1..=5 {
        assert!(hold(&mut h, gcs, 50, 3).is_empty());
        let a = hold(&mut h, gcs, 150, 2);
        gcs = finish_restart(&mut h, gcs, &a);
        assert_eq!(memory(&h).gcs_restarts, n);
        assert_eq!(h.state.get().gcs.unwrap().consecutive_failures, 0);
    }
    // One that fails is counted: with gcs.max-restarts=1, it ends the head.
    assert!(hold(&mut h, gcs, 50, 3).is_empty());
    let a = hold(&mut h, gcs, 150, 2);
    h.exited(Daemon::GcsServer, gcs, ExitStatus::Signaled(9));
    let _ = a;
    let p = h.restart();
    let a = h.exited(Daemon::GcsServer, p, ExitStatus::Exited(1));
    assert_eq!(code(&a), Some(82), "{a:?}");
}

#[test]
fn a_share_of_no_limit_is_no_mark_and_a_limit_makes_one() {
    let mut h = H::at(
        At::Running,
        &["memory.gcs-high-water=50%", "memory.sustain=1s"],
    );
    for _ in 0..30 {
        assert!(h.ev(sample(GCS, 4000, None)).is_empty());
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(memory(&h).gcs_high_water_bytes, None);
    // 50% of 1 GiB.
    let mut a = Vec::new();
    for _ in 0..3 {
        a.extend(h.ev(sample(GCS, 600, Some(1024))));
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(memory(&h).gcs_high_water_bytes, Some(512 * MIB));
    finish_restart(&mut h, GCS, &a);
}

#[test]
fn without_fault_tolerance_or_while_recovering_there_is_no_memory_restart() {
    let mut h = H::new(false, &["memory.gcs-high-water=1MiB", "memory.sustain=1s"]);
    h.m.start(h.now);
    h.ev(Event::RayStartExited(ExitStatus::Exited(0), String::new()));
    h.ev(Event::Found(vec![
        (Daemon::GcsServer, pid(GCS)),
        (Daemon::Raylet, pid(RAYLET)),
    ]));
    h.health(Health::Serving);
    assert!(hold(&mut h, GCS, 500, 30).is_empty());
    assert_eq!(memory(&h).gcs_high_water_bytes, None);

    let mut h = H::at(
        At::Restarting,
        &["memory.gcs-high-water=1MiB", "memory.sustain=1s"],
    );
    let p = h.next_pid - 1;
    assert!(hold(&mut h, p, 500, 30).is_empty());
}

#[test]
fn an_unreadable_cgroup_is_shown_and_changes_nothing() {
    let mut h = H::at(At::Running, MARK);
    let a = h.ev(Event::Memory(MemorySample {
        container: Err("/sys/fs/cgroup/memory.current: not a number: \"x\"".into()),
        rss: vec![("gcs_server", pid(GCS), 50 * MIB)],
    }));
    assert!(a.is_empty());
    let m = memory(&h);
    assert!(m.error.unwrap().contains("not a number"));
    assert_eq!(
        h.state.get().daemons["gcs_server"].rss_bytes,
        Some(50 * MIB)
    );
}

#[test]
fn a_sustain_shorter_than_the_sampling_still_sees_a_leak() {
    // Samples every 12 s, sustain 0: the leak window is three samples.
    let mut h = H::at(
        At::Running,
        &[
            "memory.gcs-high-water=10MiB",
            "memory.sustain=0s",
            "memory.min-interval=0s",
            "ray.health-interval=12s",
        ],
    );
    let over = |h: &mut H, gcs: i32| {
        let a = h.ev(sample(gcs, 45, None));
        h.advance(Duration::from_secs(12));
        a
    };
    let a = over(&mut h, GCS);
    let gcs = finish_restart(&mut h, GCS, &a);
    for _ in 0..100 {
        assert!(over(&mut h, gcs).is_empty());
    }
    assert_eq!(memory(&h).gcs_restarts, 1);
    assert!(memory(&h).gave_up.is_some());
}

#[test]
fn a_gone_daemons_size_is_not_kept() {
    let mut h = H::at(At::Running, MARK);
    h.ev(sample(GCS, 50, None));
    assert_eq!(
        h.state.get().daemons["gcs_server"].rss_bytes,
        Some(50 * MIB)
    );
    h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    assert_eq!(h.state.get().daemons["gcs_server"].rss_bytes, None);
}
