//! The Kafka backend of eventbus (`kafka://host:port[,host:port…]`, name `kafka`).
//!
//! Messages are what Open edX's `edx-event-bus-kafka` writes: the CloudEvents attributes as
//! UTF-8 headers (`ce_id`, `ce_type`, `ce_source`, `ce_specversion`, `ce_time`,
//! `ce_minorversion`, `sourcehost`, `sourcelib`, `content-type`, `ce_datacontenttype`), the value
//! in Avro with Confluent framing, its schema registered under the subject
//! `<topic>-<event type>.CloudEvent` in a schema registry, and the key Confluent-framed too: the
//! key field's definition from the event schema (`{"name": "id", "type": "long"}` for `user.id`)
//! is the key schema, registered under `<topic>-<type name>` (`dev-user-login-long`), and the key
//! bytes are the frame around its Avro datum (`00 00 00 00 01 54` for user 42 when the key schema
//! has id 1). A Python and a Rust producer thus put one key on one partition. Keys of other
//! producers (UTF-8 text) are read as well (`Serializer::decode_key`). Keys and header values
//! travel as bytes, unchanged.
//!
//! ```no_run
//! # async fn demo() -> eventbus_core::Result<()> {
//! use eventbus_core::{Bus, BusConfig};
//!
//! eventbus_kafka::register();
//! let config = BusConfig::new()
//!     .url("kafka://127.0.0.1:9092")
//!     .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081");
//! let bus = Bus::connect(config).await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! - **Producing.** One idempotent librdkafka producer per bus (`enable.idempotence=true`,
//!   hence `acks=all`). A batch is enqueued at once; `publish` returns when the brokers
//!   acknowledged every message, with its partition and offset, or fails with the broker's
//!   error. `close` flushes within `EVENT_BUS_KAFKA_FLUSH_TIMEOUT_MS` and reports what was left
//!   undelivered. Topics are created before first use (CreateTopics) unless
//!   `EVENT_BUS_KAFKA_CREATE_TOPICS=false`.
//! - **Consuming.** A group consumer per subscription. Offsets are stored only after a message
//!   was acknowledged (`enable.auto.offset.store=false`) and committed every second, before
//!   partitions are revoked, and on close, so a rebalance never skips an unacknowledged message
//!   (it may repeat one). Many messages of a partition are out at once, but a key's next one
//!   only after the previous one's ack: order per key with concurrency across keys, and the
//!   offset stored is always the end of the acknowledged prefix. An ack that comes after its partition was
//!   revoked fails with `ErrorKind::Reassigned`: the next owner reads the message again from the
//!   last commit (at-least-once). A nack hands the same message out again
//!   after its delay, its key still held. Each assigned partition has a queue of its own;
//!   one whose window fills (`EVENT_BUS_KAFKA_PARTITION_BUFFER`, counted from the stored
//!   offset) is read no further until it drains, and librdkafka stops fetching ahead for it.
//!   Nothing is paused (a pause would drop what was fetched ahead), and the main queue is
//!   polled all along, so the group session does not starve.
//! - **Leaving and joining.** Dropping a stream returns at once; its consumer commits, leaves
//!   the group and closes in the background. A `subscribe` to the same group in the same
//!   process waits until that is done (up to 20 s), so the join causes one rebalance instead of
//!   overlapping the departure (tansu 0.6 never finishes a rebalance that a departing leader
//!   overlapped).
//! - **Start positions** apply to the partitions a subscription sees first: earliest, latest, a
//!   time (offsets for times; consumption goes on after the replay), or offsets as
//!   `"partition@offset,…"`. Without one, a group resumes from its commits, and a new group
//!   reads from the earliest message kept.
//!
//! # Settings
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `EVENT_BUS_URL` | | `kafka://host:port[,host:port…]` |
//! | `EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS` | | the brokers, when no URL is set (Open edX's name) |
//! | `EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL` | | the Confluent schema registry; needed to write or read the Confluent framing |
//! | `EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_KEY`, `…_API_SECRET` | | basic auth for the registry |
//! | `EVENT_BUS_KAFKA_API_KEY`, `EVENT_BUS_KAFKA_API_SECRET` | | SASL PLAIN over TLS (Confluent Cloud), as Open edX does |
//! | `EVENT_BUS_KAFKA_CREATE_TOPICS` | true | create missing topics before first use |
//! | `EVENT_BUS_KAFKA_TOPIC_PARTITIONS`, `…_TOPIC_REPLICATION` | 8, 1 | for topics eventbus creates |
//! | `EVENT_BUS_KAFKA_FLUSH_TIMEOUT_MS` | 10000 | how long close waits for undelivered messages |
//! | `EVENT_BUS_KAFKA_PARTITION_BUFFER` | 500 | messages held per partition (from the stored offset) before it is read no further |
//! | `EVENT_BUS_KAFKA_CONSUMERS_ENABLED` | true | Open edX's kill switch: `false` makes `subscribe` fail with an error naming it |
//! | `EVENT_BUS_KAFKA_CONSUMER_POLL_TIMEOUT`, `…_POLL_FAILURE_SLEEP` | | Open edX's; recognised, no effect (librdkafka wakes the consumer) |
//! | `EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT` | | Open edX's; read as the core's `EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT` when that is not set |
//! | `EVENT_BUS_KAFKA_PRODUCER_<NAME>`, `EVENT_BUS_KAFKA_CONSUMER_<NAME>` | | a librdkafka property for the producer or the consumers only |
//! | any other `EVENT_BUS_KAFKA_<NAME>` | | the librdkafka property `<name>`, lower case, `_` → `.` |
//!
//! # Security
//!
//! TLS and SASL are librdkafka properties, set as options or with [`KafkaSettings::property`]:
//!
//! ```text
//! EVENT_BUS_KAFKA_SECURITY_PROTOCOL=SASL_SSL          # or SSL, SASL_PLAINTEXT
//! EVENT_BUS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512        # or PLAIN, SCRAM-SHA-256
//! EVENT_BUS_KAFKA_SASL_USERNAME=events
//! EVENT_BUS_KAFKA_SASL_PASSWORD=…
//! EVENT_BUS_KAFKA_SSL_CA_LOCATION=/etc/ssl/kafka-ca.pem
//! EVENT_BUS_KAFKA_SSL_CERTIFICATE_LOCATION=…          # client certificates for mutual TLS
//! EVENT_BUS_KAFKA_SSL_KEY_LOCATION=…
//! ```
//!
//! Passwords are never logged: property names containing `password` or `secret` are masked.
#![forbid(unsafe_code)]

mod client;
mod consumer;
#[cfg(feature = "mock")]
pub mod mock;
mod probe;
mod producer;
mod registry;
mod settings;

use std::sync::Arc;

use eventbus_core::registry::BackendConfig;
use eventbus_core::serializer::SerializerKind;
use eventbus_core::{BackendFactory, Guarantees, Result, SchemaRegistry, Transport};

pub use registry::RegistryClient;
pub use settings::{KafkaSettings, RegistrySettings};

/// The backend name.
pub const NAME: &str = "kafka";
/// The URL schemes.
pub const SCHEMES: &[&str] = &["kafka"];

/// What the Kafka backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    order_per_key: true,
    ack_gates_next: true,
    redelivery_after_nack: true,
    shared_groups: true,
    history_for_new_groups: true,
    replay_from_time: true,
    survives_restart: true,
    pending_per_member: false,
};

inventory::submit! {
    BackendFactory {
        name: NAME,
        qualified_name: "eventbus_kafka",
        schemes: SCHEMES,
        wire_format: SerializerKind::ConfluentAvro,
        connect: |config| Box::pin(async move { connect_config(&config).await }),
    }
}

/// Makes sure this crate, and with it the registration above, is linked. The `eventbus` facade
/// calls it; a binary that names the Kafka backend only through configuration must too.
pub fn register() {}

/// Connects with the URL and `EVENT_BUS_KAFKA_*` options of a backend configuration.
pub async fn connect_config(config: &BackendConfig) -> Result<Transport> {
    connect(KafkaSettings::from_config(config)?).await
}

/// A transport on the cluster the settings name. Clients connect lazily; an unreachable
/// cluster shows in the first publish or subscription, with librdkafka's error.
pub async fn connect(settings: KafkaSettings) -> Result<Transport> {
    settings.check()?;
    let topics = Arc::new(client::Topics::new(&settings)?);
    let publisher = producer::KafkaPublisher::new(&settings, topics.clone())?;
    let schema_registry = match &settings.schema_registry {
        Some(registry) => {
            Some(Arc::new(RegistryClient::new(registry.clone())?) as Arc<dyn SchemaRegistry>)
        }
        None => None,
    };
    let settings = Arc::new(settings);
    Ok(Transport {
        backend: NAME,
        publisher: Arc::new(publisher),
        subscriber: Arc::new(consumer::KafkaSubscriber::new(settings, topics)),
        guarantees: GUARANTEES,
        schema_registry,
    })
}
