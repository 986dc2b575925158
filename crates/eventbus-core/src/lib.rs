//! The eventbus contract: events and signals, CloudEvents metadata, serializers, the transport
//! traits, the producer, the consumer runner, configuration and the backend registry.
//!
//! No broker code lives here. Applications depend on the `eventbus` facade, which re-exports this
//! crate and compiles backends in by Cargo features; backend crates depend on this crate only.
#![forbid(unsafe_code)]

// Lets the derive macros name this crate as `::eventbus_core` from inside it too.
extern crate self as eventbus_core;

pub mod bus;
pub mod catalog;
pub mod config;
pub mod consumer;
pub mod error;
pub mod event;
pub mod health;
pub mod metadata;
pub mod producer;
pub mod redact;
pub mod registry;
pub mod routing;
pub mod schema;
pub mod schema_registry;
pub mod serializer;
pub mod signal;
pub mod telemetry;
pub mod transport;

/// A map on a per-event path: foldhash, seeded at random per process, instead of SipHash, which
/// spends several hundred instructions per lookup of a long key. Its keys come from messages at
/// most (event types, key hashes) and the maps stay small (the routes, the events held), so keys
/// crafted to collide cost little.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Re-exported for implementing [`consumer::Layer`] and [`producer::PublishLayer`].
pub use async_trait::async_trait;

pub use bus::Bus;
pub use config::BusConfig;
pub use consumer::{
    Consumer, ConsumerHandle, ConsumerSettings, Context, DeliveryInfo, Layer, Next, Outcome,
    RetryPolicy, Verdict,
};
pub use error::{Error, ErrorKind, Result};
pub use event::{Envelope, Event, EventKey, EventSchema};
pub use eventbus_derive::{AvroRecord, Event};
pub use health::Health;
pub use metadata::EventMetadata;
pub use producer::{Outgoing, Producer, ProducerSettings, PublishLayer, PublishNext, SendOptions};
pub use registry::{BackendConfig, BackendFactory};
pub use routing::{RoutingTable, TopicRoute};
pub use schema_registry::{SchemaIds, SchemaRegistry};
pub use serializer::{SchemaStore, Serializer, SerializerKind};
pub use signal::{BoxError, Receiver, ReceiverId, SendReport, Signal};
pub use telemetry::TraceContext;
pub use transport::ack_batch::AckBatching;
pub use transport::{
    Acknowledge, Delivery, DeliveryStream, Guarantees, Headers, Message, Position, Publisher,
    Settlement, StartPosition, Subscriber, Subscription, Transport,
};

/// Re-exports used by the derive macros and by backend registration; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use futures;
    pub use inventory;
    pub use serde_json;
}
