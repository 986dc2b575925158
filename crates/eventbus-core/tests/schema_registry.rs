//! The Confluent framing with a schema registry: ids registered once per subject on first send,
//! writer schemas fetched once per id on first receipt, an unreachable registry retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventbus_core::serializer::confluent_unframe;
use eventbus_core::{
    Bus, BusConfig, Envelope, Error, ErrorKind, EventSchema, Result, SchemaRegistry, SerializerKind,
};
use eventbus_testkit::memory::MemoryBroker;
use eventbus_testkit::openedx::{sample_login, SessionLoginCompleted};
use tokio::sync::mpsc;

/// A registry in memory that counts its calls and can be made to fail.
#[derive(Debug, Default)]
struct CountingRegistry {
    subjects: Mutex<HashMap<String, u32>>,
    schemas: Mutex<HashMap<u32, EventSchema>>,
    registrations: AtomicUsize,
    lookups: AtomicUsize,
    failures_left: AtomicUsize,
}

#[async_trait]
impl SchemaRegistry for CountingRegistry {
    async fn register(&self, subject: &str, schema: &EventSchema) -> Result<u32> {
        self.registrations.fetch_add(1, Ordering::SeqCst);
        let mut schemas = self.schemas.lock().unwrap();
        let id = 100 + schemas.len() as u32;
        schemas.insert(id, schema.clone());
        self.subjects.lock().unwrap().insert(subject.to_owned(), id);
        Ok(id)
    }

    async fn schema(&self, id: u32) -> Result<EventSchema> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Error::new(ErrorKind::Connection, "registry down").temporary());
        }
        self.schemas
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Deserialize, "no such schema id").with("id", id))
    }
}

fn bus(broker: &MemoryBroker, registry: &Arc<CountingRegistry>) -> Bus {
    let mut transport = broker.transport();
    transport.schema_registry = Some(registry.clone() as Arc<dyn SchemaRegistry>);
    let config = BusConfig::new().topic_prefix("dev").consumer(|c| {
        c.retry.base = Duration::from_millis(5);
        c.retry.max_attempts = 3;
    });
    Bus::with_transport(transport, SerializerKind::ConfluentAvro, config)
}

#[tokio::test]
async fn ids_are_registered_once_and_fetched_once() {
    let broker = MemoryBroker::new(2);
    let registry = Arc::new(CountingRegistry {
        failures_left: AtomicUsize::new(2),
        ..Default::default()
    });
    let producer_side = bus(&broker, &registry);
    for _ in 0..3 {
        producer_side
            .producer()
            .send("user-login", &sample_login())
            .await
            .unwrap();
    }
    assert_eq!(registry.registrations.load(Ordering::SeqCst), 1);
    let subjects = registry.subjects.lock().unwrap().clone();
    let id =
        subjects["dev-user-login-org.openedx.learning.auth.session.login.completed.v1.CloudEvent"];

    // Another process: its own store, so it must ask the registry, which fails twice first.
    let consumer_side = bus(&broker, &registry);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = consumer_side
        .consumer("user-login", "audit")
        .handle(move |e: Envelope<SessionLoginCompleted>| {
            let tx = tx.clone();
            async move {
                tx.send(e.event().clone())
                    .map_err(|_| Error::new(ErrorKind::Closed, "test over"))
            }
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sample_login());
    }
    consumer.shutdown().await.unwrap();
    // Two failed lookups, then one that worked; the later messages used the store.
    assert_eq!(registry.lookups.load(Ordering::SeqCst), 3);

    // What went over the wire is framed with the registered id.
    let store = consumer_side.schema_store();
    assert!(store.schema_by_id(id).is_some());
    let framed = producer_side
        .producer()
        .encode(
            "dev-user-login",
            &sample_login(),
            &producer_side.producer().metadata::<SessionLoginCompleted>(),
            None,
        )
        .unwrap();
    assert_eq!(confluent_unframe(&framed.payload).unwrap().0, id);
}
