//! Schema ids for the Confluent framing: a schema registry behind the process's [`SchemaStore`].
//!
//! A backend whose wire format is Confluent-framed Avro hands its registry client to the core in
//! [`Transport::schema_registry`](crate::Transport::schema_registry). The producer then registers
//! an event type's schema the first time it sends one to a topic (subject by topic-record
//! naming), and the consumer fetches the writer schema of an id it has not seen. Both sides keep
//! what they learnt in the store, so the registry is asked once per schema and process.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::event::{Event, EventSchema};
use crate::serializer::{confluent_subject, confluent_unframe, KeySchema, SchemaStore};

/// A schema registry (the Confluent REST API, or anything that hands out the same ids).
#[async_trait]
pub trait SchemaRegistry: Send + Sync + fmt::Debug {
    /// The id of `schema` under `subject`, registering it when the subject does not have it yet.
    /// A registry that checks compatibility refuses a schema its subject cannot accept.
    async fn register(&self, subject: &str, schema: &EventSchema) -> Result<u32>;

    /// The schema registered with `id`.
    async fn schema(&self, id: u32) -> Result<EventSchema>;
}

/// The store of known ids in front of a registry.
#[derive(Debug, Clone)]
pub struct SchemaIds {
    store: Arc<SchemaStore>,
    registry: Arc<dyn SchemaRegistry>,
}

impl SchemaIds {
    /// Ids from `registry`, remembered in `store`.
    pub fn new(store: Arc<SchemaStore>, registry: Arc<dyn SchemaRegistry>) -> Self {
        Self { store, registry }
    }

    /// Makes sure the schema of `E` has an id for `full_topic`, registering it on first use.
    pub async fn register<E: Event>(&self, full_topic: &str) -> Result<u32> {
        let subject = confluent_subject(full_topic, E::EVENT_TYPE);
        self.register_subject(&subject, E::schema()?).await
    }

    /// Makes sure the key schema of the field at `key_field` of `E` has an id for `full_topic`
    /// (subject `<full_topic>-<type name>`), registering it on first use.
    pub async fn register_key<E: Event>(&self, full_topic: &str, key_field: &str) -> Result<u32> {
        let key: Arc<KeySchema> = self
            .store
            .key_schema(E::EVENT_TYPE, key_field, E::schema()?)?;
        self.register_subject(&key.subject(full_topic), key.schema())
            .await
    }

    /// The id of `schema` under `subject`: from the store, or registered once and remembered.
    /// For schemas known only at run time (a schema file); typed code uses [`SchemaIds::register`].
    pub async fn register_subject(&self, subject: &str, schema: &EventSchema) -> Result<u32> {
        if let Some(id) = self.store.registered_id(subject, schema) {
            return Ok(id);
        }
        let id = self
            .registry
            .register(subject, schema)
            .await
            .map_err(|e| e.with("subject", subject))?;
        self.store.add_registered(subject, id, schema.clone());
        Ok(id)
    }

    /// Makes sure the writer schema of a Confluent-framed `payload` (or key) is known, fetching it by id
    /// when it is not. A payload without the framing is left to the decoder to report.
    pub async fn learn(&self, payload: &[u8]) -> Result<()> {
        let Ok((id, _)) = confluent_unframe(payload) else {
            return Ok(());
        };
        if self.store.schema_by_id(id).is_none() {
            let schema = self
                .registry
                .schema(id)
                .await
                .map_err(|e| e.with("schema_id", id))?;
            self.store.add_schema(id, schema);
        }
        Ok(())
    }
}
