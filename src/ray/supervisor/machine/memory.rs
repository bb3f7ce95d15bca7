//! Memory: gcs_server restarted in place before the OOM killer takes the
//! head.
//!
//! With cgroup v2 every process of a container is one OOM group: a GCS that
//! grows the container over its limit costs the whole head (the raylet, the
//! dashboard, Serve, drivers), and the pod restarts with the kubelet's
//! back-off. An in-place GCS restart costs clients about 0.15 s and sheds the
//! task events the GCS keeps in memory. So when gcs_server's RSS stays over
//! `memory.gcs-high-water` for `memory.sustain`, the machine takes the same
//! recovery path as a crash, at most once per `memory.min-interval`. These
//! restarts are decisions, not failures: the crash-loop guard does not count
//! them (a restart that fails is counted as any other). A GCS back over the
//! mark within `memory.sustain` of such a restart has a leak that a restart
//! cannot fix: the machine stops restarting it for memory, keeps readiness,
//! says so in `/status`, and lets the kernel and the kubelet do what they
//! would have done.

use std::time::SystemTime;

use tokio::time::Instant;

use super::*;
pub use crate::ray::memory::MemorySample;

/// What the machine remembers between samples.
#[derive(Debug, Default)]
pub(super) struct MemoryRestarts {
    /// Since when the current gcs_server has been over the mark.
    over_since: Option<Instant>,
    /// When the last memory restart began.
    last_restart: Option<Instant>,
    /// A memory restart is under way (until SERVING or given up).
    in_flight: bool,
    /// When the GCS that a memory restart started first served.
    restarted_at: Option<Instant>,
    /// A restart did not help: no more memory restarts.
    gave_up: bool,
}

impl Machine {
    pub(super) fn on_memory_sample(&mut self, now: Instant, sample: MemorySample) -> Vec<Action> {
        let limit = sample
            .container
            .as_ref()
            .ok()
            .and_then(|c| c.map(|c| c.limit))
            .flatten();
        // Only a GCS that rayhead can restart in place with its state (fault
        // tolerance, direct mode) has a mark: elsewhere a restart is a loss.
        let restartable = self.store.is_some() && self.cfg.ray.mode == RayMode::Direct;
        let mark = restartable
            .then(|| self.cfg.memory.gcs_high_water.bytes(limit))
            .flatten();
        self.record(&sample, mark);
        let gcs_rss = self.gcs.and_then(|gcs| {
            sample
                .rss
                .iter()
                .find(|(_, pid, _)| *pid == gcs)
                .map(|(_, _, rss)| *rss)
        });
        let (Stage::Steady(_), Some(mark), Some(rss)) = (&self.stage, mark, gcs_rss) else {
            self.clear_over_mark();
            return Vec::new();
        };
        if rss <= mark {
            self.clear_over_mark();
            return Vec::new();
        }
        if self.memory.gave_up {
            return Vec::new();
        }
        if let Some(t) = self.memory.restarted_at {
            if now.saturating_duration_since(t) < self.leak_window() {
                return self.give_up_memory(rss, mark);
            }
        }
        let since = *self.memory.over_since.get_or_insert(now);
        if self.memory.over_since == Some(now) {
            let wall = SystemTime::now();
            self.state.update(|s| {
                if let Some(m) = &mut s.memory {
                    m.gcs_over_since = Some(wall);
                }
            });
        }
        let over_for = now.saturating_duration_since(since);
        let recent = self
            .memory
            .last_restart
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.memory.min_interval);
        if over_for < self.cfg.memory.sustain || recent {
            return Vec::new();
        }
        self.shed(now, rss, mark, over_for)
    }

    /// Restarts the GCS in place for its memory, through the crash path.
    fn shed(&mut self, now: Instant, rss: u64, mark: u64, over_for: Duration) -> Vec<Action> {
        let reason = format!(
            "memory: gcs_server's RSS {} has been over memory.gcs-high-water ({}, {}) for {}; restarting it in place before the container reaches its limit",
            mib(rss),
            self.cfg.memory.gcs_high_water.render(),
            mib(mark),
            humantime::format_duration(Duration::from_secs(over_for.as_secs())),
        );
        tracing::warn!(event = "gcs_memory_restart", rss, mark, "{reason}");
        self.memory.last_restart = Some(now);
        self.memory.over_since = None;
        self.memory.in_flight = true;
        self.memory.restarted_at = None;
        let why = reason.clone();
        self.state.update(|s| {
            if let Some(m) = &mut s.memory {
                m.gcs_restarts += 1;
                m.last_restart_reason = Some(why);
                m.gcs_over_since = None;
            }
        });
        // A planned restart is no failure, whatever probation the GCS is on.
        if let Stage::Steady(w) = &mut self.stage {
            w.probation = None;
        }
        self.on_gcs_lost(now, reason)
    }

    /// How soon after a memory restart a GCS over the mark is a leak:
    /// memory.sustain, but never less than three samples, or a sustain
    /// shorter than the sampling would never see one and restarts would
    /// repeat forever.
    fn leak_window(&self) -> Duration {
        self.cfg
            .memory
            .sustain
            .max(self.cfg.ray.health_interval.saturating_mul(3))
    }

    fn give_up_memory(&mut self, rss: u64, mark: u64) -> Vec<Action> {
        let why = format!(
            "gcs_server's RSS {} was over memory.gcs-high-water ({}) again within memory.sustain of its memory restart: a leak or a load that a restart cannot fix; rayhead no longer restarts it for memory",
            mib(rss),
            mib(mark)
        );
        tracing::warn!(event = "gcs_memory_gave_up", rss, mark, "{why}");
        self.memory.gave_up = true;
        self.state.update(|s| {
            if let Some(m) = &mut s.memory {
                m.gave_up = Some(why);
            }
        });
        Vec::new()
    }

    /// The GCS is under its mark (or has none): a later excursion must be
    /// sustained for memory.sustain again, from its own start.
    fn clear_over_mark(&mut self) {
        if self.memory.over_since.take().is_some() {
            self.state.update(|s| {
                if let Some(m) = &mut s.memory {
                    m.gcs_over_since = None;
                }
            });
        }
    }

    /// The GCS serves again: if a memory restart started it, the leak check
    /// begins now.
    pub(super) fn memory_recovered(&mut self, now: Instant) {
        if std::mem::take(&mut self.memory.in_flight) {
            self.memory.restarted_at = Some(now);
        }
        self.memory.over_since = None;
    }

    /// The sample into the snapshot: the container, the mark, each RSS.
    fn record(&self, sample: &MemorySample, mark: Option<u64>) {
        self.state.update(|s| {
            for (name, pid, rss) in &sample.rss {
                if let Some(d) = s.daemons.get_mut(name) {
                    if d.pid == Some(pid.as_raw()) {
                        d.rss_bytes = Some(*rss);
                    }
                }
            }
            let Some(m) = &mut s.memory else { return };
            m.gcs_high_water_bytes = mark;
            match &sample.container {
                Ok(Some(c)) => {
                    m.cgroup = Some(c.version.as_str());
                    m.container_bytes = Some(c.usage);
                    m.container_limit_bytes = c.limit;
                    m.oom_kills = c.oom_kills;
                    m.error = None;
                }
                Ok(None) => m.error = None,
                Err(e) => m.error = Some(e.clone()),
            }
        });
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
