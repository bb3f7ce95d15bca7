//! The Redis backend's monitor: the probe that fills `/status`'s Redis
//! section. Its gate is [`crate::redis::Redis::wait_ready`].

use std::time::Duration;

use crate::redis::Redis;
use crate::state::State;

/// Probes Redis every `interval` (PING, role, eviction, persistence, memory,
/// the namespace's tables) into the state. A change between up and down, and
/// each warning as it appears or clears, is logged once, not on every probe.
pub async fn monitor(
    redis: Redis,
    namespace: Option<String>,
    interval: Duration,
    state: State,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last_up: Option<bool> = None;
    let mut last_warnings: Vec<String> = Vec::new();
    let mut last_notes: Vec<String> = Vec::new();
    let look = || redis.findings(namespace.as_deref());
    crate::time::every(interval, &cancel, look, |f| {
        match (f.up, last_up) {
            (true, Some(false)) => tracing::info!(redis = %redis.address, "Redis answers again"),
            (false, Some(true) | None) => {
                tracing::warn!(redis = %redis.address, error = f.error.as_deref().unwrap_or(""), "Redis probe failed")
            }
            _ => {}
        }
        if f.up {
            if let Some(p) = f.problem() {
                if last_up != Some(true) || state.get().redis.and_then(|r| r.role) != f.role {
                    tracing::warn!(redis = %redis.address, problem = %p, "Redis is not usable by the GCS");
                }
            }
            for w in f.warnings.iter().filter(|w| !last_warnings.contains(w)) {
                tracing::warn!(redis = %redis.address, warning = %w, "Redis setting can lose GCS state");
            }
            for w in last_warnings.iter().filter(|w| !f.warnings.contains(w)) {
                tracing::info!(redis = %redis.address, cleared = %w, "Redis warning cleared");
            }
            for n in f.notes.iter().filter(|n| !last_notes.contains(n)) {
                tracing::info!(redis = %redis.address, note = %n, "Redis check skipped");
            }
            last_warnings = f.warnings.clone();
            last_notes = f.notes.clone();
        }
        last_up = Some(f.up);
        state.update(|s| {
            if let Some(r) = &mut s.redis {
                r.up = Some(f.up);
                r.last_probe = Some(std::time::SystemTime::now());
                r.last_error = f.error.clone();
                if f.up {
                    r.ping_seconds = f.ping_seconds;
                    r.role = f.role.clone();
                    r.tables = f.tables.clone();
                    r.warnings = f.warnings.clone();
                    r.notes = f.notes.clone();
                }
            }
        });
        std::ops::ControlFlow::Continue(())
    })
    .await
}
