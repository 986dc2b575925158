//! The bus: one connected backend with its producer, and the consumers built on it.

use std::sync::Arc;

use crate::config::BusConfig;
use crate::consumer::Consumer;
use crate::error::Result;
use crate::health::Health;
use crate::metadata::host_name;
use crate::producer::{Producer, ProducerSettings, ProducerStack, PublishLayer};
use crate::registry;
use crate::routing::{self, Outbox};
use crate::schema_registry::SchemaIds;
use crate::serializer::{SchemaStore, Serializer, SerializerKind};
use crate::transport::Transport;

/// A connected event bus.
///
/// ```
/// # async fn demo() -> eventbus_core::Result<()> {
/// // With the `eventbus` facade: `eventbus::connect_from_env().await?`.
/// let bus = eventbus_core::Bus::connect(eventbus_core::BusConfig::new().backend("memory")).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bus {
    transport: Transport,
    producer: Producer,
    serializer: Arc<dyn Serializer>,
    store: Arc<SchemaStore>,
    config: Arc<BusConfig>,
    health: Health,
}

impl Bus {
    /// Connects the backend `config` selects.
    pub async fn connect(config: BusConfig) -> Result<Bus> {
        let (factory, transport) = registry::connect(&config).await?;
        tracing::info!(backend = factory.name, ?config, "event bus connected");
        Ok(Self::with_transport(transport, factory.wire_format, config))
    }

    /// Connects the backend the environment selects.
    pub async fn from_env() -> Result<Bus> {
        Self::connect(BusConfig::from_env()?).await
    }

    /// A bus over an already connected transport; `wire_format` is used unless the
    /// configuration names a serializer.
    pub fn with_transport(
        transport: Transport,
        wire_format: SerializerKind,
        config: BusConfig,
    ) -> Bus {
        let store = Arc::new(SchemaStore::new());
        let serializer = config
            .serializer
            .unwrap_or(wire_format)
            .build(Arc::clone(&store));
        let settings = ProducerSettings::new(config.service(), &host_name())
            .with_topic_prefix(config.topic_prefix.clone());
        let mut producer = Producer::new(
            Arc::clone(&transport.publisher),
            Arc::clone(&serializer),
            settings,
        )
        .with_backend(transport.backend);
        if let Some(registry) = &transport.schema_registry {
            producer =
                producer.with_schema_ids(SchemaIds::new(Arc::clone(&store), Arc::clone(registry)));
        }
        let health = Health::new(transport.backend, Arc::clone(&transport.subscriber));
        Bus {
            transport,
            producer,
            serializer,
            store,
            config: Arc::new(config),
            health,
        }
    }

    /// Adds a producer layer innermost (see [`Producer::layer`]). Consumers built afterwards
    /// publish their dead letters through it too, and so does [`Bus::install_global`].
    #[must_use]
    pub fn producer_layer(mut self, layer: impl PublishLayer + 'static) -> Self {
        self.producer = self.producer.layer(layer);
        self
    }

    /// Edits the producer's layer stack (see [`Producer::layers`]).
    pub fn producer_layers(
        mut self,
        edit: impl FnOnce(&mut ProducerStack) -> Result<()>,
    ) -> Result<Self> {
        self.producer = self.producer.layers(edit)?;
        Ok(self)
    }

    /// Liveness and readiness of the broker and of the consumers started on this bus.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The backend's publisher, subscriber and guarantees.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Writer schemas and registry ids known to this bus's serializer.
    pub fn schema_store(&self) -> &Arc<SchemaStore> {
        &self.store
    }

    /// The configuration the bus was built from.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// A consumer of `topic` (without prefix) in `group`, with the configured policy.
    pub fn consumer(&self, topic: &str, group: &str) -> Consumer {
        Consumer::new(
            &self.transport,
            self.health.clone(),
            self.producer.clone(),
            Arc::clone(&self.serializer),
            topic,
            group,
            self.config.consumer.clone(),
        )
    }

    /// Makes `signal.send(event)` publish through this bus according to the configured routing
    /// table. One bus per process can be installed; installing another replaces it.
    pub fn install_global(&self) {
        routing::install(Some(Outbox {
            producer: self.producer.clone(),
            table: self.config.routing.clone(),
        }));
    }

    /// Removes the globally installed bus, if any.
    pub fn uninstall_global() {
        routing::install(None);
    }

    /// Flushes and closes the producer, then closes the subscriptions.
    pub async fn close(&self) -> Result<()> {
        let published = self.producer.close().await;
        let subscribed = self.transport.subscriber.close().await;
        published.and(subscribed)
    }
}
