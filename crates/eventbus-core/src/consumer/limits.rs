//! The consecutive-error limit and the handler timeout, as layers.

use std::time::Duration;

use async_trait::async_trait;

use super::layer::{Inner, Layer, Next, Outcome, Wrap};
use super::Context;
use crate::error::{Error, ErrorKind};

/// Feeds outcomes to the consumer's consecutive-error count (`error-limit`): a receiver that
/// kept failing or a delivery that could not be settled counts one, a handled or skipped event
/// ends the run, bad messages (unknown type, undecodable) count neither way. At
/// [`ConsumerSettings::consecutive_error_limit`](super::ConsumerSettings) failures in a row the
/// consumer stops with an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorLimitLayer;

impl ErrorLimitLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Layer for ErrorLimitLayer {
    fn name(&self) -> &str {
        "error-limit"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.wrap(ctx, next).await
    }
}

impl Wrap for ErrorLimitLayer {
    async fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> Outcome {
        let outcome = inner.run(ctx).await;
        if matches!(outcome, Outcome::Handled | Outcome::Skipped { .. }) {
            ctx.consumer().record_success();
        } else if let Some(error) = outcome.error().filter(|_| outcome.is_failure()) {
            ctx.consumer().record_failure(error);
        }
        outcome
    }
}

/// A per-attempt handler timeout (`timeout`): an attempt still running after the timeout is
/// stopped and counts as a failure that may be retried. Without a timeout it passes through.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer {
    timeout: Option<Duration>,
}

impl TimeoutLayer {
    /// A timeout of `timeout` per attempt; `None` for none.
    pub const fn new(timeout: Option<Duration>) -> Self {
        Self { timeout }
    }
}

#[async_trait]
impl Layer for TimeoutLayer {
    fn name(&self) -> &str {
        "timeout"
    }

    fn passes_through(&self) -> bool {
        self.timeout.is_none()
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let Some(limit) = self.timeout else {
            return next.run(ctx).await;
        };
        // Awaited before matching, so `ctx` is free again to name the topic in the error: no
        // copy of it on attempts that finish in time.
        let finished = tokio::time::timeout(limit, next.run(ctx)).await;
        match finished {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                error: Error::new(
                    ErrorKind::Timeout,
                    "the handler did not finish within the consumer's handler timeout (EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS)",
                )
                .with("timeout_ms", limit.as_millis())
                .with("topic", ctx.topic()),
                delay: None,
            },
        }
    }
}
