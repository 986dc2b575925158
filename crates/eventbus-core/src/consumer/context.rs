//! What a layer or a receiver can know about one delivery, and about the consumer handling it.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::state::ConsumerState;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::EventMetadata;
use crate::serializer::Serializer;
use crate::transport::{
    self, Acknowledge, Delivery, DeliveryParts, Headers, Message, Position, Settlement,
};

/// One delivery as layers and receivers see it: topic, key, headers, payload, position, attempt
/// and publish time. Typed receivers reach it through [`Envelope::delivery`](crate::Envelope::delivery),
/// raw receivers get it as their argument.
pub struct DeliveryInfo {
    topic: Arc<str>,
    message: Message,
    position: Position,
    attempt: AtomicU32,
    published_at: Option<DateTime<Utc>>,
    group: Arc<str>,
    serializer: Arc<dyn Serializer>,
    // Parsed on first use, once, whoever asks first (a layer or the dispatcher).
    /// Shared with the envelopes made from this delivery, not copied into each.
    metadata: OnceLock<Result<Arc<EventMetadata>>>,
    key_text: OnceLock<Option<String>>,
}

impl DeliveryInfo {
    /// The information of a delivery taken apart ([`Delivery::into_parts`]), moved in whole.
    #[inline]
    fn new(parts: DeliveryParts, group: Arc<str>, serializer: Arc<dyn Serializer>) -> Self {
        Self {
            topic: parts.topic,
            message: parts.message,
            position: parts.position,
            attempt: AtomicU32::new(parts.attempt.max(1)),
            published_at: parts.published_at,
            group,
            serializer,
            metadata: OnceLock::new(),
            key_text: OnceLock::new(),
        }
    }

    /// The full topic it was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's name as the backend shares it among the topic's deliveries.
    pub(crate) fn topic_shared(&self) -> &Arc<str> {
        &self.topic
    }

    /// The message as it arrived (as layers left it).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The payload decoded as JSON (for raw consumers of JSON messages).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.message.payload).map_err(|e| {
            Error::new(
                ErrorKind::Deserialize,
                "the payload is not the JSON expected",
            )
            .with("topic", &self.topic)
            .with("position", &self.position)
            .with_source(e)
        })
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// The key as its bytes arrived.
    pub fn key_bytes(&self) -> Option<&Bytes> {
        self.message.key.as_ref()
    }

    /// The key as text: decoded by the wire format (Confluent-framed Avro on Kafka) or read as
    /// UTF-8; `None` without a key or when it cannot be read as text.
    pub fn key(&self) -> Option<&str> {
        self.key_text
            .get_or_init(|| {
                let key = self.message.key.as_ref()?;
                self.serializer.decode_key(key).ok()
            })
            .as_deref()
    }

    /// Its place in the topic.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The attempt being made: 1 on first delivery, higher on broker redelivery and on each
    /// in-process retry.
    pub fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    /// When the broker stored the message, where the backend knows.
    pub fn published_at(&self) -> Option<DateTime<Utc>> {
        self.published_at
    }

    /// The consumer group handling it.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The CloudEvents metadata from the headers, parsed once.
    pub fn metadata(&self) -> std::result::Result<&EventMetadata, &Error> {
        self.shared_metadata().map(|m| &**m)
    }

    /// When the event was sent (its `ce_time`): from the metadata when it has been parsed, else
    /// from that one header, without parsing the rest. `None` without a readable time.
    pub(crate) fn sent_at(&self) -> Option<DateTime<Utc>> {
        match self.metadata.get() {
            Some(parsed) => parsed.as_ref().ok().map(|m| m.time),
            None => {
                let text = self
                    .message
                    .headers
                    .get_bytes(crate::metadata::header::TIME)?;
                crate::metadata::time_text::parse(text)?.ok()
            }
        }
    }

    /// [`DeliveryInfo::metadata`], as the handle an envelope keeps.
    pub(crate) fn shared_metadata(&self) -> std::result::Result<&Arc<EventMetadata>, &Error> {
        self.metadata
            .get_or_init(|| EventMetadata::from_headers(&self.message.headers).map(Arc::new))
            .as_ref()
    }

    /// The serializer of the consumer's bus.
    pub(crate) fn serializer(&self) -> &dyn Serializer {
        self.serializer.as_ref()
    }
}

impl Clone for DeliveryInfo {
    fn clone(&self) -> Self {
        Self {
            topic: Arc::clone(&self.topic),
            message: self.message.clone(),
            position: self.position.clone(),
            attempt: AtomicU32::new(self.attempt()),
            published_at: self.published_at,
            group: Arc::clone(&self.group),
            serializer: Arc::clone(&self.serializer),
            metadata: OnceLock::new(),
            key_text: OnceLock::new(),
        }
    }
}

impl fmt::Debug for DeliveryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryInfo")
            .field("topic", &self.topic)
            .field("position", &self.position)
            .field("attempt", &self.attempt())
            .field("group", &self.group)
            .field("key", &self.message.key)
            .field("headers", &self.message.headers)
            .field("payload_len", &self.message.payload.len())
            .finish()
    }
}

/// The argument of every consumer [`Layer`](super::Layer): the delivery being handled and the
/// consumer handling it. Reads through to [`DeliveryInfo`].
///
/// It also holds the delivery's acknowledger, out of the layers' reach: the runner settles the
/// delivery through it, and a context dropped unsettled (the consumer stopped, a layer
/// panicked) hands the delivery back to the broker, as a dropped [`Delivery`] does.
#[derive(Debug)]
pub struct Context {
    info: Arc<DeliveryInfo>,
    consumer: Arc<ConsumerState>,
    acker: Option<Box<dyn Acknowledge>>,
}

impl Context {
    /// Takes `delivery` apart: the runner then keeps this context alone, where it kept the
    /// delivery too. Inlined, so that the delivery's information is moved once, into its
    /// shared allocation.
    #[inline]
    pub(crate) fn new(
        delivery: Delivery,
        group: Arc<str>,
        serializer: Arc<dyn Serializer>,
        consumer: Arc<ConsumerState>,
    ) -> Self {
        let (parts, acker) = delivery.into_parts();
        Self {
            info: Arc::new(DeliveryInfo::new(parts, group, serializer)),
            consumer,
            acker,
        }
    }

    /// Acks the delivery (`None`) or nacks it with a delay; handed to the backend now, like
    /// [`Delivery::ack`]. Only the runner settles, once per context.
    pub(crate) fn settle(&mut self, nack: Option<Duration>) -> Settlement {
        transport::settle(self.acker.take(), nack, &self.info.position)
    }

    /// The delivery, shareable (what a typed receiver's envelope and a raw receiver get).
    pub fn delivery(&self) -> &Arc<DeliveryInfo> {
        &self.info
    }

    /// The consumer handling it: group, name, topics, producer.
    pub fn consumer(&self) -> &ConsumerState {
        &self.consumer
    }

    /// The headers, to change before inner layers and the receiver see them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        let info = Arc::make_mut(&mut self.info);
        // Headers may change what the metadata says; parse again when asked.
        info.metadata = OnceLock::new();
        &mut info.message.headers
    }

    /// Sets the attempt number (the retry layer counts attempts with it).
    pub fn set_attempt(&mut self, attempt: u32) {
        self.info.attempt.store(attempt, Ordering::Relaxed);
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            transport::hand_back(acker, &self.info.topic, &self.info.position);
        }
    }
}

impl std::ops::Deref for Context {
    type Target = DeliveryInfo;
    fn deref(&self) -> &DeliveryInfo {
        &self.info
    }
}
