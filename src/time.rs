//! Time, once: deadlines that never overflow, and the monitors' rhythm.
//!
//! A configured duration can be as large as humantime parses
//! ("584542046090years"), and `Instant + Duration` panics past the clock's
//! range: every deadline goes through [`after`].

use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// About 30 years: later than any deadline means "never", and far inside
/// the range of every clock.
pub const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + d`, capped at `now + NEVER`.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(NEVER))
        .unwrap_or_else(|| now.checked_add(Duration::from_secs(3600)).unwrap_or(now))
}

/// The wall-clock form of [`after`], for `/status`.
pub fn wall_after(now: SystemTime, d: Duration) -> SystemTime {
    now.checked_add(d.min(NEVER)).unwrap_or(now)
}

/// A monitor's rhythm: `look` every `interval`, each finding handed to
/// `then`, until `cancel` (which also drops a look in flight) or until
/// `then` breaks. A late tick delays the next rather than bursting: a slow
/// look must not be followed by a volley of them.
pub async fn every<T, F: Future<Output = T>>(
    interval: Duration,
    cancel: &CancellationToken,
    look: impl Fn() -> F,
    mut then: impl FnMut(T) -> ControlFlow<()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let found = tokio::select! {
            found = look() => found,
            _ = cancel.cancelled() => return,
        };
        if then(found).is_break() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(after(now, Duration::MAX), now + NEVER);
        let wall = SystemTime::now();
        assert_eq!(wall_after(wall, Duration::MAX), wall + NEVER);
    }
}
