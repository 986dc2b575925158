//! The dead-letter topic: where events go that cannot be processed, with the reason attached.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};

use super::context::{Context, DeliveryInfo};
use super::layer::{Inner, Layer, Next, Outcome, Wrap};
use crate::error::Error;
use crate::transport::Message;

/// Header names added to a dead-lettered message; the original headers stay as they were.
pub mod header {
    /// Why: one of the [`super::Reason`] names.
    pub const REASON: &str = "dlq_reason";
    /// The last error, one line.
    pub const ERROR: &str = "dlq_error";
    /// How many times the receivers were run (0 when the message never reached them).
    pub const ATTEMPTS: &str = "dlq_attempts";
    /// The full topic the message came from.
    pub const ORIGINAL_TOPIC: &str = "dlq_original_topic";
    /// Its position there.
    pub const ORIGINAL_POSITION: &str = "dlq_original_position";
    /// The consumer group that gave up.
    pub const GROUP: &str = "dlq_group";
    /// When it was dead-lettered.
    pub const TIME: &str = "dlq_time";
    /// Every header above: what a redrive takes off to give back the original.
    pub const ALL: [&str; 7] = [
        REASON,
        ERROR,
        ATTEMPTS,
        ORIGINAL_TOPIC,
        ORIGINAL_POSITION,
        GROUP,
        TIME,
    ];
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// `ce_id` or `ce_type` missing, duplicated or malformed.
    InvalidHeaders,
    /// No route for the event type.
    UnknownEventType,
    /// The payload does not decode as the event type.
    Undecodable,
    /// The receivers failed on every attempt.
    ReceiverFailed,
}

impl Reason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidHeaders => "invalid-headers",
            Reason::UnknownEventType => "unknown-event-type",
            Reason::Undecodable => "undecodable",
            Reason::ReceiverFailed => "receiver-failed",
        }
    }
}

/// The dead-letter topic of a full topic name, from a template such as `{topic}.dlq`.
pub fn topic_for(template: &str, full_topic: &str) -> String {
    template.replace("{topic}", full_topic)
}

/// The message that goes to the dead-letter topic: the original plus reason headers.
pub(crate) fn message(
    delivery: &DeliveryInfo,
    reason: Reason,
    error: &str,
    attempts: u32,
) -> Message {
    let mut message = delivery.message().clone();
    // Headers are one line and bounded: some brokers cap header sizes.
    let error: String = error
        .replace(['\n', '\r'], " ")
        .chars()
        .take(1000)
        .collect();
    let h = &mut message.headers;
    h.insert(header::REASON, reason.as_str());
    h.insert(header::ERROR, error);
    h.insert(header::ATTEMPTS, attempts.to_string());
    h.insert(header::ORIGINAL_TOPIC, delivery.topic());
    h.insert(header::ORIGINAL_POSITION, delivery.position().to_string());
    h.insert(header::GROUP, delivery.group());
    h.insert(
        header::TIME,
        Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false),
    );
    message
}

/// Dead letters as a layer (`dead-letter`): a delivery given up by the inner stack is copied to
/// the dead-letter topic with the reason headers, then acknowledged. When that topic cannot be
/// written, nothing is lost: the delivery goes back to the broker after `release_delay`.
#[derive(Debug, Clone)]
pub struct DeadLetterLayer {
    template: String,
    release_delay: Duration,
}

impl DeadLetterLayer {
    /// Dead letters to the topic `template` names (`{topic}` stands for the full source topic).
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            release_delay: Duration::from_secs(10),
        }
    }

    /// How long the broker waits before delivering again an event whose dead-letter copy could
    /// not be written (default 10 s).
    #[must_use]
    pub fn release_after(mut self, delay: Duration) -> Self {
        self.release_delay = delay;
        self
    }
}

#[async_trait]
impl Layer for DeadLetterLayer {
    fn name(&self) -> &str {
        "dead-letter"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.wrap(ctx, next).await
    }
}

impl Wrap for DeadLetterLayer {
    async fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> Outcome {
        let (reason, error) = match inner.run(ctx).await {
            Outcome::GiveUp { reason, error } => (reason, error),
            other => return other,
        };
        // Boxed: dead-lettering is rare, and inline the publish's state made every event's
        // future dearer to run, about 50 instructions (scripts/cost.sh).
        Box::pin(self.dead_letter(ctx, reason, error)).await
    }
}

impl DeadLetterLayer {
    async fn dead_letter(&self, ctx: &Context, reason: Reason, error: Error) -> Outcome {
        let topic = topic_for(&self.template, ctx.topic());
        let error_text = error.to_string();
        tracing::warn!(reason = reason.as_str(), error = %error_text, topic = ctx.topic(), position = %ctx.position(), dead_letter_topic = %topic, "dead-lettering event");
        // The receivers ran only for receiver failures; other reasons never reached them.
        let attempts = if reason == Reason::ReceiverFailed {
            ctx.attempt()
        } else {
            0
        };
        let message = message(ctx.delivery(), reason, &error_text, attempts);
        match ctx
            .consumer()
            .producer()
            .publish(&topic, vec![message])
            .await
        {
            Ok(_) => Outcome::DeadLettered {
                topic,
                reason,
                error,
            },
            Err(e) => {
                tracing::error!(error = %e, dead_letter_topic = %topic, "cannot publish to the dead-letter topic; handing the event back to the broker");
                Outcome::Release {
                    error: e,
                    delay: self.release_delay,
                }
            }
        }
    }
}
