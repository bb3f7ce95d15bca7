//! Deadlines that never overflow. A configured duration can be as large as
//! humantime parses ("584542046090years"), and `Instant + Duration` panics
//! past the clock's range: every deadline goes through [`after`].

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

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
