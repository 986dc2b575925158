//! How often and how patiently a failing receiver is tried again.

use std::time::Duration;

/// Exponential backoff: attempt `n` failing waits `base × 2^(n-1)`, at most `cap`, before
/// attempt `n + 1`; after `max_attempts` the event goes to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Whether another attempt follows failed attempt `attempt`.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(350),
        };
        let delays: Vec<_> = (1..=4).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert!(p.retries_after(4));
        assert!(!p.retries_after(5));
        assert_eq!(p.delay(200), Duration::from_millis(350));
    }
}
