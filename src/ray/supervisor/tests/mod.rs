//! The state machine, driven by hand: made-up pids, made-up health
//! observations and a clock that only moves when a test moves it. No
//! process, socket or timer is involved, so every path runs in microseconds.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::time::Instant;

use super::machine::{Action, Event, Machine, StartError, StopReason, Timer};
use crate::config::{Config, FlagValue, Inputs};
use crate::init::reaper::ExitStatus;
use crate::ray::daemon_health::DaemonCheck;
use crate::ray::daemons::Daemon;
use crate::ray::health::{Health, Observation};
use crate::redis::PingError;
use crate::state::{ChildStatus, Phase, Snapshot, State};
use crate::storage::{GateError, StoreInfo};

const GCS: i32 = 10;
const RAYLET: i32 = 11;
const DASHBOARD: i32 = 12;

fn pid(n: i32) -> Pid {
    Pid::from_raw(n)
}

struct H {
    m: Machine,
    state: State,
    now: Instant,
    /// The health monitor's generation, from the last Monitor action.
    generation: u64,
    /// The pid the next restarted gcs_server gets.
    next_pid: i32,
}

/// Where to put the machine before the event under test.
#[derive(Debug, Clone, Copy)]
enum At {
    StartGate,
    Launching,
    Adopting,
    /// Adopted, no SERVING yet.
    Steady,
    Running,
    /// A hung GCS was SIGKILLed and is not reaped yet.
    Reaping,
    /// At the restart gate.
    Gate,
    /// After a failed restart.
    Backoff,
    /// A restarted gcs_server runs, not SERVING yet.
    Restarting,
}

const EVERY_STAGE: [At; 9] = [
    At::StartGate,
    At::Launching,
    At::Adopting,
    At::Steady,
    At::Running,
    At::Reaping,
    At::Gate,
    At::Backoff,
    At::Restarting,
];

fn config(sets: &[&str]) -> Config {
    let flags = sets
        .iter()
        .map(|s| FlagValue::parse_set(s).unwrap())
        .collect();
    Config::load(
        &Inputs { file: None, flags },
        &[("RAY_REDIS_ADDRESS", "127.0.0.1:1")],
    )
    .unwrap()
}

impl H {
    fn new(fault_tolerant: bool, sets: &[&str]) -> H {
        let cfg = config(sets);
        let redis = fault_tolerant.then(|| "127.0.0.1:1".to_string());
        let state = State::new(Snapshot::ray_head("127.0.0.1:6379".into(), redis.clone()));
        let store = redis
            .as_deref()
            .map(|a| StoreInfo::redis(a, cfg.redis.startup_timeout));
        let m = Machine::new(&cfg, store, state.clone());
        H {
            m,
            state,
            now: Instant::now(),
            generation: 0,
            next_pid: 100,
        }
    }

    fn ev(&mut self, e: Event) -> Vec<Action> {
        let actions = self.m.handle(self.now, e);
        self.note(&actions);
        actions
    }

    fn note(&mut self, actions: &[Action]) {
        for a in actions {
            if let Action::PointGcsHealth(m) = a {
                self.generation = m.generation;
            }
        }
    }

    /// Moves the clock to the machine's timer and fires it.
    fn fire(&mut self) -> (Timer, Vec<Action>) {
        let (at, t) = self.m.timer().expect("a timer");
        self.now = self.now.max(at);
        (t, self.ev(Event::TimerFired(t)))
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn health(&mut self, h: Health) -> Vec<Action> {
        let obs = Observation {
            generation: self.generation,
            health: h,
            via: "watch",
            at: self.now,
            latency: None,
        };
        self.ev(Event::Health(obs))
    }

    fn exited(&mut self, daemon: Daemon, p: i32, status: ExitStatus) -> Vec<Action> {
        self.ev(Event::DaemonExited {
            daemon,
            pid: pid(p),
            status,
        })
    }

    fn phase(&self) -> Phase {
        self.state.get().phase
    }

    /// Drives a fault-tolerant head to `at`.
    fn at(at: At, sets: &[&str]) -> H {
        let mut h = H::new(true, sets);
        let a = h.m.start(h.now);
        assert!(matches!(a[..], [Action::WaitForStore { .. }]), "{a:?}");
        if let At::StartGate = at {
            return h;
        }
        let a = h.ev(Event::StoreReady);
        assert!(a.contains(&Action::LaunchRay), "{a:?}");
        if let At::Launching = at {
            return h;
        }
        let a = h.ev(Event::RayStartExited(ExitStatus::Exited(0), String::new()));
        assert_eq!(a, vec![Action::Scan]);
        if let At::Adopting = at {
            return h;
        }
        let a = h.ev(Event::Found(vec![
            (Daemon::GcsServer, pid(GCS)),
            (Daemon::Raylet, pid(RAYLET)),
            (Daemon::Dashboard, pid(DASHBOARD)),
        ]));
        assert!(matches!(a[..], [Action::Adopt(_)]), "{a:?}");
        if let At::Steady = at {
            return h;
        }
        h.health(Health::Serving);
        assert_eq!(h.phase(), Phase::Running);
        if let At::Running = at {
            return h;
        }
        // A hung GCS: NOT_SERVING while it lives.
        let a = h.health(Health::NotServing);
        assert!(a.contains(&Action::Kill(pid(GCS))), "{a:?}");
        assert!(
            !a.iter().any(|a| matches!(a, Action::WaitForStore { .. })),
            "gate before the reap: {a:?}"
        );
        if let At::Reaping = at {
            return h;
        }
        let a = h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
        assert!(matches!(a[..], [Action::WaitForStore { .. }]), "{a:?}");
        if let At::Gate = at {
            return h;
        }
        h.restart();
        if let At::Restarting = at {
            return h;
        }
        // At::Backoff: the restarted one crashes.
        let p = h.next_pid - 1;
        let a = h.exited(Daemon::GcsServer, p, ExitStatus::Exited(1));
        assert!(a.is_empty(), "{a:?}");
        h
    }

    /// Through the gate to a new gcs_server, running but not SERVING.
    fn restart(&mut self) -> i32 {
        let a = self.ev(Event::StoreReady);
        assert_eq!(a, vec![Action::StartDaemon(Daemon::GcsServer)]);
        let p = self.next_pid;
        self.next_pid += 1;
        let a = self.ev(Event::Started(Daemon::GcsServer, Ok(pid(p))));
        assert!(a.is_empty(), "{a:?}");
        p
    }

    /// SIGKILL of the running GCS `p`: the loss, the gate, a restart and
    /// SERVING. Returns the new pid.
    fn kill_and_recover(&mut self, p: i32) -> i32 {
        let a = self.exited(Daemon::GcsServer, p, ExitStatus::Signaled(9));
        assert!(
            a.iter().any(|a| matches!(a, Action::WaitForStore { .. })),
            "{a:?}"
        );
        assert_eq!(self.phase(), Phase::Recovering);
        self.advance(Duration::from_millis(5));
        let new = self.restart();
        self.advance(Duration::from_millis(50));
        let a = self.health(Health::Serving);
        assert!(stop_reason(&a).is_none(), "{a:?}");
        assert_eq!(self.phase(), Phase::Running);
        new
    }
}

fn stop_reason(actions: &[Action]) -> Option<&StopReason> {
    actions.iter().find_map(|a| match a {
        Action::Stop(o) => Some(o),
        _ => None,
    })
}

/// The exit code a stop ends with (a requested stop exits 0).
fn code(actions: &[Action]) -> Option<u8> {
    stop_reason(actions).map(|o| match o {
        StopReason::Signal(_) => 0,
        StopReason::Exit(e) => e.code(),
    })
}

#[test]
fn recovery_succeeds_on_the_third_attempt() {
    let mut h = H::at(At::Running, &[]);
    h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    for attempt in 1..=2 {
        let p = h.restart();
        let a = h.exited(Daemon::GcsServer, p, ExitStatus::Exited(1));
        assert!(a.is_empty(), "attempt {attempt}: {a:?}");
        let (t, a) = h.fire();
        assert_eq!(t, Timer::Backoff);
        assert!(matches!(a[..], [Action::WaitForStore { .. }]), "{a:?}");
    }
    let third = h.restart();
    let a = h.health(Health::Serving);
    assert!(stop_reason(&a).is_none());
    assert_eq!(h.phase(), Phase::Running);
    let snap = h.state.get();
    let gcs = snap.gcs.unwrap();
    assert_eq!(gcs.restarts, 3);
    assert_eq!(gcs.consecutive_failures, 2);
    assert_eq!(snap.daemons["gcs_server"].pid, Some(third));
    assert_eq!(snap.daemons["gcs_server"].state, ChildStatus::Running);
    // Once it has served for gcs.stable-after, the count is reset.
    let (t, a) = h.fire();
    assert_eq!(t, Timer::Stable);
    assert!(a.is_empty());
    assert_eq!(h.state.get().gcs.unwrap().consecutive_failures, 0);
}

#[test]
fn the_deadline_ends_a_recovery_with_80() {
    let mut h = H::at(
        At::Gate,
        &["ray.reconnect-timeout=30s", "gcs.deadline-margin=5s"],
    );
    let (at, t) = h.m.timer().unwrap();
    assert_eq!(t, Timer::Deadline);
    let lost = h.now;
    assert_eq!(at - lost, Duration::from_secs(25));
    let (_, a) = h.fire();
    assert_eq!(code(&a), Some(80), "{a:?}");
    let Some(StopReason::Exit(e)) = stop_reason(&a) else {
        panic!()
    };
    assert!(e.reason().contains("not SERVING again"), "{e}");
    // Done: nothing more is decided.
    assert!(h.health(Health::Serving).is_empty());
    assert!(h.m.is_done());
}

#[test]
fn a_restarted_gcs_that_never_serves_is_killed_by_the_deadline() {
    let mut h = H::at(At::Restarting, &[]);
    let (t, a) = h.fire();
    assert_eq!(t, Timer::Deadline);
    let Some(StopReason::Exit(e)) = stop_reason(&a) else {
        panic!("{a:?}")
    };
    assert_eq!(e.code(), 80);
    assert!(e.reason().contains("did not answer SERVING"), "{e}");
}

#[test]
fn five_consecutive_failed_restarts_exit_82() {
    let mut h = H::at(At::Running, &["ray.reconnect-timeout=10m"]);
    h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    let mut pauses = Vec::new();
    for n in 1..=5 {
        let p = h.restart();
        let a = h.exited(Daemon::GcsServer, p, ExitStatus::Exited(3));
        if n < 5 {
            assert!(a.is_empty(), "failure {n}: {a:?}");
            let before = h.now;
            let (t, _) = h.fire();
            assert_eq!(t, Timer::Backoff);
            pauses.push(h.now - before);
        } else {
            assert_eq!(code(&a), Some(82), "{a:?}");
            let Some(StopReason::Exit(e)) = stop_reason(&a) else {
                panic!()
            };
            assert!(e.reason().contains("5 consecutive failed"), "{e}");
            assert!(e.reason().contains("exited with code 3"), "{e}");
        }
    }
    // Doubling from a small start.
    assert_eq!(
        pauses,
        [50, 100, 200, 400].map(Duration::from_millis).to_vec()
    );
}

#[test]
fn back_off_never_passes_the_deadline() {
    let mut h = H::at(
        At::Running,
        &[
            "ray.reconnect-timeout=2s",
            "gcs.deadline-margin=1s",
            "gcs.max-restarts=100",
        ],
    );
    h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    let deadline = h.now + Duration::from_secs(1);
    loop {
        let p = h.restart();
        h.exited(Daemon::GcsServer, p, ExitStatus::Exited(3));
        let (t, a) = h.fire();
        assert!(h.now <= deadline, "a timer past the deadline");
        if t == Timer::Deadline {
            assert_eq!(code(&a), Some(80));
            break;
        }
    }
}

#[test]
fn fifty_successful_recoveries_never_end_the_head() {
    let mut h = H::at(At::Running, &[]);
    let mut gcs = GCS;
    for _ in 0..50 {
        gcs = h.kill_and_recover(gcs);
        // Serves past gcs.stable-after, then is killed again.
        let (t, _) = h.fire();
        assert_eq!(t, Timer::Stable);
        h.advance(Duration::from_millis(500));
    }
    let snap = h.state.get();
    assert_eq!(snap.gcs.as_ref().unwrap().restarts, 50);
    assert_eq!(snap.gcs.as_ref().unwrap().consecutive_failures, 0);
    assert_eq!(snap.recoveries.len(), 50);
    assert!(!h.m.is_done());
}

#[test]
fn losses_soon_after_a_restart_are_failures() {
    let mut h = H::at(At::Running, &["gcs.stable-after=2s"]);
    let mut gcs = GCS;
    gcs = h.kill_and_recover(gcs);
    for n in 1..=4 {
        // Lost again 1 s after SERVING: a failed restart, counted.
        h.advance(Duration::from_secs(1));
        let a = h.exited(Daemon::GcsServer, gcs, ExitStatus::Signaled(6));
        assert!(stop_reason(&a).is_none(), "{a:?}");
        assert_eq!(h.state.get().gcs.unwrap().consecutive_failures, n);
        // It backs off first.
        let (t, _) = h.fire();
        assert_eq!(t, Timer::Backoff);
        gcs = h.restart();
        h.health(Health::Serving);
    }
    h.advance(Duration::from_secs(1));
    let a = h.exited(Daemon::GcsServer, gcs, ExitStatus::Signaled(6));
    assert_eq!(code(&a), Some(82), "{a:?}");
}

#[test]
fn a_raylet_death_ends_the_head_in_every_stage_within_one_event() {
    for at in EVERY_STAGE {
        let mut h = H::at(at, &[]);
        let a = h.exited(Daemon::Raylet, RAYLET, ExitStatus::Signaled(9));
        match at {
            // Nothing adopted yet: rayhead does not reap a raylet there.
            At::StartGate | At::Launching | At::Adopting => {}
            _ => {
                assert_eq!(code(&a), Some(83), "{at:?}: {a:?}");
                let Some(StopReason::Exit(e)) = stop_reason(&a) else {
                    panic!()
                };
                assert!(
                    e.reason().contains("raylet (pid 11) was killed by SIGKILL"),
                    "{e}"
                );
                assert!(h.m.is_done());
            }
        }
    }
}

#[test]
fn sigterm_stops_in_every_stage() {
    for at in EVERY_STAGE {
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            let mut h = H::at(at, &[]);
            let a = h.ev(Event::Signal(sig));
            assert_eq!(stop_reason(&a), Some(&StopReason::Signal(sig)), "{at:?}");
            assert_eq!(code(&a), Some(0));
        }
        // Other signals are not a stop.
        let mut h = H::at(at, &[]);
        assert!(h.ev(Event::Signal(Signal::SIGHUP)).is_empty());
    }
}

#[test]
fn other_daemons_follow_on_daemon_exit() {
    let mut h = H::at(At::Running, &["ray.on-daemon-exit=exit"]);
    let a = h.exited(Daemon::Dashboard, DASHBOARD, ExitStatus::Exited(1));
    assert_eq!(code(&a), Some(84), "{a:?}");
    // At the restart gate, too, "ignore" ignores it.
    let mut h = H::at(At::Gate, &["ray.on-daemon-exit=ignore"]);
    let a = h.exited(Daemon::Dashboard, DASHBOARD, ExitStatus::Exited(1));
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(
        h.state.get().daemons["dashboard"].state,
        ChildStatus::Exited
    );
}

#[test]
fn the_old_gcs_is_reaped_before_a_new_one_starts() {
    let mut h = H::at(At::Reaping, &[]);
    // Nothing starts until the old one is reaped, whatever else happens.
    assert!(h.ev(Event::StoreReady).is_empty());
    assert!(h.ev(Event::Tick(0)).is_empty());
    // A stale exit of another pid is not it.
    assert!(h
        .exited(Daemon::GcsServer, 999, ExitStatus::Exited(0))
        .is_empty());
    let a = h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    assert!(matches!(a[..], [Action::WaitForStore { .. }]), "{a:?}");
}

#[test]
fn observations_of_a_lost_generation_do_not_count() {
    let mut h = H::at(At::Restarting, &[]);
    let stale = Observation {
        generation: h.generation - 1,
        health: Health::Serving,
        via: "watch",
        at: h.now,
        latency: None,
    };
    assert!(h.ev(Event::Health(stale)).is_empty());
    assert_eq!(h.phase(), Phase::Recovering);
}

#[test]
fn unhealthy_after_declares_a_silent_gcs_lost() {
    let mut h = H::at(At::Running, &["gcs.unhealthy-after=10s"]);
    h.health(Health::Failed("check timed out".into()));
    let (t, a) = h.fire();
    assert_eq!(t, Timer::Unhealthy);
    assert!(a.contains(&Action::Kill(pid(GCS))), "{a:?}");
    assert!(h
        .state
        .get()
        .gcs
        .unwrap()
        .last_loss_reason
        .unwrap()
        .contains("no SERVING answer"));
    // A refused port counts only once the GCS has served.
    let mut h = H::at(At::Steady, &[]);
    assert!(h.health(Health::Refused).is_empty());
    let mut h = H::at(At::Running, &[]);
    assert!(h.health(Health::Refused).contains(&Action::Kill(pid(GCS))));
}

#[test]
fn without_fault_tolerance_or_in_block_mode_a_loss_ends_the_head() {
    let mut h = H::new(false, &[]);
    h.m.start(h.now);
    h.ev(Event::RayStartExited(ExitStatus::Exited(0), String::new()));
    h.ev(Event::Found(vec![
        (Daemon::GcsServer, pid(GCS)),
        (Daemon::Raylet, pid(RAYLET)),
    ]));
    let a = h.exited(Daemon::GcsServer, GCS, ExitStatus::Signaled(9));
    assert_eq!(code(&a), Some(81), "{a:?}");

    let mut h = H::new(true, &["ray.mode=block"]);
    h.m.start(h.now);
    h.ev(Event::StoreReady);
    h.health(Health::Serving);
    assert_eq!(h.phase(), Phase::Running);
    let a = h.health(Health::NotServing);
    assert!(a.contains(&Action::KillBlockGcs), "{a:?}");
    assert_eq!(code(&a), Some(88));
    // ray start --block's own exit passes its code on.
    let mut h = H::new(true, &["ray.mode=block"]);
    h.m.start(h.now);
    h.ev(Event::StoreReady);
    let a = h.ev(Event::RayStartExited(ExitStatus::Exited(1), String::new()));
    assert_eq!(code(&a), Some(1));
}

#[test]
fn start_failures_have_their_codes() {
    let mut h = H::at(At::StartGate, &[]);
    let a = h.ev(Event::StoreFailed(GateError::Redis(PingError::Auth(
        "WRONGPASS".into(),
    ))));
    assert_eq!(code(&a), Some(87));
    let mut h = H::at(At::StartGate, &[]);
    let a = h.ev(Event::StoreFailed(GateError::Redis(PingError::Refused)));
    assert_eq!(code(&a), Some(86));
    let mut h = H::at(At::Launching, &[]);
    let a = h.ev(Event::RayStartExited(ExitStatus::Exited(1), String::new()));
    assert_eq!(code(&a), Some(85));
    // ray start exits 0 but leaves no raylet: looked for again, then 85.
    let mut h = H::at(At::Adopting, &[]);
    let only_gcs = || Event::Found(vec![(Daemon::GcsServer, pid(GCS))]);
    assert!(h.ev(only_gcs()).is_empty());
    let mut scans = 1;
    loop {
        let (t, a) = h.fire();
        assert_eq!(t, Timer::Rescan);
        assert_eq!(a, vec![Action::Scan]);
        scans += 1;
        let a = h.ev(only_gcs());
        if let Some(c) = code(&a) {
            assert_eq!(c, 85);
            let Some(StopReason::Exit(e)) = stop_reason(&a) else {
                panic!()
            };
            assert!(e.reason().contains("no raylet"), "{e}");
            break;
        }
    }
    assert!(scans > 10, "only {scans} scans in 2 s");
    // A gcs_server whose command was never captured cannot be restarted.
    let mut h = H::at(At::Gate, &[]);
    h.ev(Event::StoreReady);
    let a = h.ev(Event::Started(
        Daemon::GcsServer,
        Err(StartError {
            message: "gcs_server's command was never captured".into(),
            retry: false,
        }),
    ));
    assert_eq!(code(&a), Some(80));
}

/// The longest durations the config takes (7 days; longer is a config
/// error) make deadlines, not panics.
#[test]
fn the_longest_durations_do_not_panic() {
    let mut h = H::at(
        At::Running,
        &[
            "ray.reconnect-timeout=7days",
            "gcs.unhealthy-after=7days",
            "gcs.stable-after=7days",
            "redis.startup-timeout=7days",
        ],
    );
    assert!(h.m.timer().is_some());
    h.kill_and_recover(GCS);
    assert!(h.m.timer().is_some());
}

mod daemons;
mod memory;

/// Random event sequences, from every stage: the machine never panics,
/// never starts a gcs_server while it knows one alive (two GCS processes
/// must never share a Redis namespace), and decides nothing after it has
/// decided to stop.
mod random {
    use proptest::prelude::*;

    use super::*;

    fn event(kind: u8, p: i32, gen_back: bool, h: &H) -> Event {
        let daemon = [
            Daemon::GcsServer,
            Daemon::Raylet,
            Daemon::Dashboard,
            Daemon::AutoscalerMonitor,
        ][(p % 4) as usize];
        let pid = pid([GCS, RAYLET, DASHBOARD, 100, 101, 102, 50][(p % 7) as usize]);
        let generation = if gen_back {
            h.generation.saturating_sub(1)
        } else {
            h.generation
        };
        let obs = |health| {
            Event::Health(Observation {
                generation,
                health,
                via: "watch",
                at: h.now,
                latency: None,
            })
        };
        match kind % 16 {
            0 => Event::Tick(0),
            1 => Event::Signal(Signal::SIGHUP),
            2 => Event::DaemonExited {
                daemon,
                pid,
                status: ExitStatus::Signaled(9),
            },
            3 => obs(Health::Serving),
            4 => obs(Health::NotServing),
            5 => obs(Health::Refused),
            6 => obs(Health::Failed("timeout".into())),
            7 => Event::StoreReady,
            8 => Event::StoreFailed(GateError::Redis(PingError::Refused)),
            9 => Event::Started(daemon, Ok(pid)),
            10 => Event::Started(
                daemon,
                Err(StartError {
                    message: "no".into(),
                    retry: p % 2 == 0,
                }),
            ),
            11 => Event::DaemonHealth(DaemonCheck {
                daemon,
                pid,
                healthy: p % 2 == 0,
                detail: "x".into(),
            }),
            12 => Event::RayStartExited(ExitStatus::Exited(p % 2), String::new()),
            13 => Event::Found(vec![
                (Daemon::GcsServer, pid),
                (Daemon::Raylet, super::pid(RAYLET)),
            ]),
            14 => match h.m.timer() {
                Some((_, t)) => Event::TimerFired(t),
                None => Event::Tick(0),
            },
            _ => Event::DaemonExited {
                daemon: Daemon::GcsServer,
                pid,
                status: ExitStatus::Exited(1),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_events_keep_the_invariants(
            start in 0..EVERY_STAGE.len(),
            steps in prop::collection::vec((0u8..16, 0i32..1000, any::<bool>(), 0u64..20_000), 1..60),
        ) {
            let mut h = H::at(EVERY_STAGE[start], &[]);
            let mut finished = false;
            for (kind, p, back, ms) in steps {
                h.advance(Duration::from_millis(ms));
                if kind % 16 == 14 {
                    if let Some((at, _)) = h.m.timer() {
                        h.now = h.now.max(at);
                    }
                }
                let alive_before = h.m.gcs_alive();
                let e = event(kind, p, back, &h);
                let a = h.ev(e);
                if finished {
                    prop_assert!(a.is_empty(), "decided after finishing: {a:?}");
                }
                if a.contains(&Action::StartDaemon(Daemon::GcsServer)) {
                    prop_assert!(!alive_before, "a gcs_server started beside a live one: {a:?}");
                }
                finished |= stop_reason(&a).is_some();
                prop_assert_eq!(finished, h.m.is_done());
            }
        }
    }
}

/// The RocksDB gate's failures: a missing or read-only volume exits 89, a
/// full one 90, at the start gate and at a restart gate alike; at a
/// restart gate the reason says the GCS was lost and why it was not
/// started again.
#[test]
fn storage_gate_failures_have_their_own_codes() {
    use crate::storage::DiskProblem;
    let full = || {
        GateError::Disk(DiskProblem::Full {
            path: "/data/gcs".into(),
            free: 1 << 20,
            min: 64 << 20,
        })
    };
    let read_only = || GateError::Disk(DiskProblem::ReadOnly("/data/gcs".into()));
    let reason = |a: &[Action]| match stop_reason(a) {
        Some(StopReason::Exit(e)) => e.reason(),
        other => panic!("{other:?}"),
    };

    let mut h = H::at(At::StartGate, &[]);
    let a = h.ev(Event::StoreFailed(read_only()));
    assert_eq!(code(&a), Some(89));
    assert!(reason(&a).contains("read-only"), "{}", reason(&a));
    let mut h = H::at(At::StartGate, &[]);
    let a = h.ev(Event::StoreFailed(full()));
    assert_eq!(code(&a), Some(90));
    assert!(
        reason(&a).contains("for all of gcs.storage-startup-timeout"),
        "{}",
        reason(&a)
    );

    let mut h = H::at(At::Gate, &[]);
    assert!(!h.m.gcs_alive(), "the old GCS is reaped before the gate");
    let a = h.ev(Event::StoreFailed(full()));
    assert_eq!(code(&a), Some(90));
    let why = reason(&a);
    assert!(
        why.starts_with("GCS lost (") && why.contains("is full") && why.contains("deadline"),
        "{why}"
    );
    let mut h = H::at(At::Gate, &[]);
    let a = h.ev(Event::StoreFailed(read_only()));
    assert_eq!(code(&a), Some(89));
    assert!(!reason(&a).contains("deadline"), "{}", reason(&a));
    // A Redis that stops answering at the gate is still exit 80.
    let mut h = H::at(At::Gate, &[]);
    let a = h.ev(Event::StoreFailed(GateError::Redis(PingError::Refused)));
    assert_eq!(code(&a), Some(80));
    // So is a disk check that the deadline cut short: it found nothing.
    let mut h = H::at(At::Gate, &[]);
    let a = h.ev(Event::StoreFailed(GateError::Disk(DiskProblem::CutShort {
        path: "/data/gcs".into(),
        after: std::time::Duration::from_millis(3),
    })));
    assert_eq!(code(&a), Some(80));
    assert!(reason(&a).contains("cut short"), "{}", reason(&a));
}
