//! The one exponential back-off: the Redis gates, the cleanup's retries and
//! failed GCS restarts all wait this way, each with its own bounds.

use std::time::Duration;

/// A pause of `initial`, doubling on each further attempt, never above
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The pause after the `attempt`-th failure in a row (1 is the first).
    /// Saturates: no attempt count overflows.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_max() {
        let b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let ms: Vec<u128> = (0..8).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(ms, vec![50, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
    }
}
