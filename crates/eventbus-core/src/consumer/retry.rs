//! How often and how patiently a failing receiver is tried again.

use std::time::Duration;

use async_trait::async_trait;

use super::dead_letter::Reason;
use super::layer::{Inner, Layer, Next, Outcome, Wrap};
use super::Context;
use crate::error::{Error, ErrorKind};

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

/// The retry policy as a layer (`retry`): runs the inner stack again while it asks for a retry
/// and attempts remain, waiting the asked-for delay or the backoff; after the last attempt the
/// delivery is given up (dead-lettered by the layer outside). Attempts count from the broker's
/// own delivery count, so an event redelivered after its consumer died has used some already.
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A retry layer with `policy`.
    pub const fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

#[async_trait]
impl Layer for RetryLayer {
    fn name(&self) -> &str {
        "retry"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.wrap(ctx, next).await
    }
}

impl Wrap for RetryLayer {
    async fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> Outcome {
        if ctx.attempt() > self.policy.max_attempts.max(1) {
            // Delivered more often than allowed without an ack: do not run it again.
            let error = Error::new(
                ErrorKind::Receiver,
                "the event was delivered more often than the retry policy allows without being acknowledged; a consumer may have died while handling it",
            )
            .with("deliveries", ctx.attempt())
            .with("topic", ctx.topic());
            return Outcome::GiveUp {
                reason: Reason::ReceiverFailed,
                error,
            };
        }
        loop {
            match inner.run(ctx).await {
                Outcome::Retry { error, delay } if self.policy.retries_after(ctx.attempt()) => {
                    let wait = delay.unwrap_or_else(|| self.policy.delay(ctx.attempt()));
                    let (id, event_type) = match ctx.metadata() {
                        Ok(m) => (m.id.to_string(), m.event_type.as_str()),
                        Err(_) => (String::new(), ""),
                    };
                    tracing::warn!(
                        event_id = %id,
                        event_type,
                        topic = ctx.topic(),
                        attempt = ctx.attempt(),
                        retry_in_ms = wait.as_millis() as u64,
                        %error,
                        "handling failed; retrying"
                    );
                    // Boxed: only a retry needs the timer, and inline its state made every
                    // event's future dearer to run, about 100 instructions (scripts/cost.sh).
                    Box::pin(tokio::time::sleep(wait)).await;
                    ctx.set_attempt(ctx.attempt() + 1);
                }
                Outcome::Retry { error, .. } => {
                    return Outcome::GiveUp {
                        reason: Reason::ReceiverFailed,
                        error,
                    }
                }
                other => return other,
            }
        }
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
