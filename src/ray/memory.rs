//! The memory sampler: every interval, the container's cgroup and each
//! supervised daemon's RSS, as one [`MemorySample`] for the machine, which
//! decides (and writes the snapshot). A few small files a sample: no cost
//! worth measuring, at the daemons' health interval.

use std::time::Duration;

use nix::unistd::Pid;
use std::ops::ControlFlow;
use tokio_util::sync::CancellationToken;

use super::report::Report;
use crate::memory::{self, Cgroup, ContainerMemory};
use crate::state::State;

/// Samples until `cancel` fires or the machine is gone. The daemons are
/// those the snapshot names with a pid at each sample: the sampler follows
/// restarts without being told.
pub(super) async fn sample_every(
    interval: Duration,
    state: State,
    report: Report<MemorySample>,
    cancel: CancellationToken,
) {
    let cgroup = Cgroup::discover();
    match &cgroup {
        Some(c) => {
            tracing::debug!(cgroup = c.version.as_str(), dir = %c.dir.display(), "memory cgroup")
        }
        None => tracing::info!("no memory cgroup found: the container's memory is not shown"),
    }
    let look = || {
        let pids: Vec<(&'static str, i32)> = state
            .get()
            .daemons
            .iter()
            .filter_map(|(name, d)| Some((*name, d.pid?)))
            .collect();
        std::future::ready(sample(cgroup.as_ref(), &pids))
    };
    crate::time::every(interval, &cancel, look, |s| match report.send(s) {
        true => ControlFlow::Continue(()),
        false => ControlFlow::Break(()),
    })
    .await
}

/// One memory sample, taken every ray.health-interval.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySample {
    /// The container's cgroup: `Ok(None)` where there is no memory cgroup,
    /// `Err` when it could not be read.
    pub container: Result<Option<ContainerMemory>, String>,
    /// Each supervised daemon's RSS, by name and pid, as the snapshot named
    /// them when the sample was taken.
    pub rss: Vec<(&'static str, Pid, u64)>,
}

fn sample(cgroup: Option<&Cgroup>, pids: &[(&'static str, i32)]) -> MemorySample {
    MemorySample {
        container: cgroup.map(Cgroup::read).transpose(),
        rss: pids
            .iter()
            .filter_map(|(name, pid)| Some((*name, Pid::from_raw(*pid), memory::rss(*pid)?)))
            .collect(),
    }
}
