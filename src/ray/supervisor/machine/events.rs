//! What goes into the machine and what comes out: the events every source
//! is turned into, the timers it asks for, and the actions it returns. In a
//! module of their own, so that the driver, the tests and the machine's
//! stages share one vocabulary and the stages' logic stays apart from it.

use tokio::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::exit::Exit;
pub use crate::exit::StopReason;
use crate::init::reaper::ExitStatus;
use crate::ray::daemon_health::DaemonCheck;
use crate::ray::daemons::Daemon;
use crate::ray::health::{Mode, Observation};
use crate::storage::GateError;

use super::MemorySample;

/// Every input to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// A signal for rayhead.
    Signal(Signal),
    /// A daemon that rayhead reaps exited: the GCS, the raylet, any other.
    DaemonExited {
        daemon: Daemon,
        pid: Pid,
        status: ExitStatus,
    },
    /// What the GCS health monitor saw.
    Health(Observation),
    /// `ray start` exited: done starting (direct mode), or the head is gone
    /// (block mode).
    /// With the last lines of its output, summarised: what explains a
    /// failure.
    RayStartExited(ExitStatus, String),
    /// `ray start` could not be run at all.
    LaunchFailed(Exit),
    /// A scan of `/proc` for the daemons that `ray start` left.
    Found(Vec<(Daemon, Pid)>),
    /// A daemon was started again in place, or could not be.
    Started(Daemon, Result<Pid, StartError>),
    /// A daemon's health check (every daemon but the GCS).
    DaemonHealth(DaemonCheck),
    /// The store passed the gate: Redis answered an authenticated PING, or
    /// the RocksDB path is writable with room.
    StoreReady,
    /// The store did not pass the gate before its time ran out, or failed
    /// in a way waiting will not fix.
    StoreFailed(GateError),
    /// The head's memory, sampled every ray.health-interval.
    Memory(MemorySample),
    /// The heartbeat: the loop is alive. With the logger's count of lost
    /// lines, for the metrics.
    Tick(u64),
    /// The machine's own timer, from [`Machine::timer`].
    TimerFired(Timer),
}

/// Why a daemon (gcs_server or another) could not be started again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub message: String,
    /// Trying again may help (a transient spawn failure), or never will.
    pub retry: bool,
}

/// What the machine waits for by the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Look in `/proc` again for the daemons `ray start` left.
    Rescan,
    /// The GCS has given no SERVING answer for gcs.unhealthy-after.
    Unhealthy,
    /// A restarted GCS has served for gcs.stable-after: its restart worked.
    Stable,
    /// The back-off after a failed restart is over.
    Backoff,
    /// The recovery's deadline: the reconnect window less the margin.
    Deadline,
    /// A daemon's back-off after a failed restart is over.
    DaemonBackoff(Daemon),
}

/// What the driver must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Wait for the store to be usable by a GCS until `until`; report
    /// [`Event::StoreReady`] or [`Event::StoreFailed`].
    WaitForStore {
        until: Instant,
        purpose: &'static str,
    },
    /// Run `ray start` and the GCS health monitor; report
    /// [`Event::RayStartExited`] or [`Event::LaunchFailed`].
    LaunchRay,
    /// Look in `/proc` for the daemons; report [`Event::Found`].
    Scan,
    /// Reap these daemons (report each exit), capture their commands, and
    /// check the health of each but the GCS.
    Adopt(Vec<(Daemon, Pid)>),
    /// Check the health of a daemon started again.
    StartHealthChecks(Daemon, Pid),
    /// Point the GCS health monitor at a generation and an interval.
    PointGcsHealth(Mode),
    /// SIGKILL this process; its exit comes back as an event.
    Kill(Pid),
    /// SIGKILL this process and its descendants (the dashboard's
    /// forkserver modules), as last seen; its exit comes back as an event.
    KillTree(Pid),
    /// SIGKILL the gcs_server under `ray start --block` (which reaps it).
    KillBlockGcs,
    /// Start a daemon again from its captured command; report
    /// [`Event::Started`].
    StartDaemon(Daemon),
    /// Stop supervising: tear the head down and exit.
    Stop(StopReason),
}
