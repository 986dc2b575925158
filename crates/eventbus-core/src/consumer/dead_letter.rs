//! The dead-letter topic: where events go that cannot be processed, with the reason attached.

use chrono::{SecondsFormat, Utc};

use crate::transport::{Delivery, Message};

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
    delivery: &Delivery,
    group: &str,
    reason: Reason,
    error: &str,
    attempts: u32,
) -> Message {
    let mut message = delivery.message.clone();
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
    h.insert(header::ORIGINAL_TOPIC, delivery.topic.clone());
    h.insert(header::ORIGINAL_POSITION, delivery.position.to_string());
    h.insert(header::GROUP, group);
    h.insert(
        header::TIME,
        Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false),
    );
    message
}
