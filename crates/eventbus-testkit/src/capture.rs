//! Capture helpers for application tests: run code against an in-memory bus, then assert what
//! was published, or that a receiver ran.
//!
//! ```
//! use eventbus_core::{Event, RoutingTable};
//! use eventbus_testkit::capture::CaptureBus;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize, eventbus_core::Event)]
//! # #[event(type = "org.example.doc.capture.v1", key = "id")]
//! # struct Thing { id: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let capture = CaptureBus::new();
//! capture.bus().producer().send("things", &Thing { id: 7 }).await.unwrap();
//! let sent = capture.assert_published::<Thing>("things", |t| t.id == 7);
//! assert_eq!(sent.metadata().event_type, "org.example.doc.capture.v1");
//! # }
//! ```

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::serializer::decode_event;
use eventbus_core::{
    Bus, BusConfig, Envelope, Event, EventMetadata, Message, ReceiverId, SerializerKind,
};

use crate::memory::MemoryBroker;

/// A bus on a private in-memory broker whose topics can be inspected.
#[derive(Debug, Clone)]
pub struct CaptureBus {
    bus: Bus,
    broker: MemoryBroker,
}

impl Default for CaptureBus {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureBus {
    /// A capture bus with default configuration (Avro payloads, no prefix).
    pub fn new() -> Self {
        Self::with_config(BusConfig::new())
    }

    /// A capture bus with `config` (prefix, serializer, routing, consumer settings).
    pub fn with_config(config: BusConfig) -> Self {
        let broker = MemoryBroker::new(4);
        let bus = Bus::with_transport(broker.transport(), SerializerKind::Avro, config);
        Self { bus, broker }
    }

    /// The bus to hand to the code under test.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Makes signals publish through this bus (see [`Bus::install_global`]).
    pub fn install_global(&self) {
        self.bus.install_global();
    }

    /// Every message on `topic` (the prefix is added).
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        self.broker
            .messages(&self.bus.producer().settings().full_topic(topic))
    }

    /// Every event of type `E` published to `topic`, decoded, with its metadata.
    pub fn published<E: Event>(&self, topic: &str) -> Vec<Envelope<E>> {
        let full = self.bus.producer().settings().full_topic(topic);
        let serializer = self.bus.producer().serializer();
        self.messages(topic)
            .into_iter()
            .filter_map(|m| {
                let metadata = EventMetadata::from_headers(&m.headers).ok()?;
                if metadata.event_type != E::EVENT_TYPE {
                    return None;
                }
                let event = decode_event::<E>(
                    serializer.as_ref(),
                    &full,
                    &m.payload,
                    Some(metadata.minor_version),
                )
                .ok()?;
                Some(Envelope::new(event, metadata))
            })
            .collect()
    }

    /// The first event of type `E` on `topic` matching `matches`; panics listing what was
    /// published otherwise.
    pub fn assert_published<E: Event + Debug>(
        &self,
        topic: &str,
        matches: impl Fn(&E) -> bool,
    ) -> Envelope<E> {
        let all = self.published::<E>(topic);
        match all.iter().find(|e| matches(e.event())) {
            Some(found) => found.clone(),
            None => panic!(
                "no matching {} was published to `{topic}`; published were: {:#?}",
                E::EVENT_TYPE,
                all.iter().map(Envelope::event).collect::<Vec<_>>()
            ),
        }
    }

    /// Panics if any event of type `E` was published to `topic`.
    pub fn assert_not_published<E: Event + Debug>(&self, topic: &str) {
        let all = self.published::<E>(topic);
        assert!(
            all.is_empty(),
            "expected no {} on `{topic}`, found {all:#?}",
            E::EVENT_TYPE
        );
    }
}

/// Records every event `E::signal()` delivers to receivers while it lives.
#[derive(Debug)]
pub struct SignalProbe<E: Event> {
    id: ReceiverId,
    seen: Arc<Mutex<Vec<Envelope<E>>>>,
}

impl<E: Event + Debug> SignalProbe<E> {
    /// Connects a recording receiver to `E::signal()`.
    pub fn connect() -> Self {
        let seen: Arc<Mutex<Vec<Envelope<E>>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let id = E::signal().connect(move |e: Envelope<E>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().map_err(|_| "probe lock poisoned")?.push(e);
                Ok::<_, &'static str>(())
            }
        });
        Self { id, seen }
    }

    /// What the receiver got so far.
    pub fn received(&self) -> Vec<Envelope<E>> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for a matching event; panics listing what arrived otherwise.
    pub async fn assert_received(
        &self,
        timeout: Duration,
        matches: impl Fn(&E) -> bool,
    ) -> Envelope<E> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.received().into_iter().find(|e| matches(e.event())) {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the receiver of {} saw no matching event within {timeout:?}; it saw: {:#?}",
                    E::EVENT_TYPE,
                    self.received()
                        .iter()
                        .map(Envelope::event)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl<E: Event> Drop for SignalProbe<E> {
    fn drop(&mut self) {
        E::signal().disconnect(self.id);
    }
}
