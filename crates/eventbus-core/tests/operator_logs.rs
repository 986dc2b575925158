//! What the bus tells an operator at start: that nothing is configured (events stay inside the
//! process), and that a consumer without a stable name leaves its pending deliveries waiting
//! where the backend keeps them per member.

use std::io::Write;
use std::sync::{Arc, Mutex};

use eventbus_core::{Bus, BusConfig, Envelope, SerializerKind};
use eventbus_testkit::memory::MemoryBroker;
use eventbus_testkit::openedx::SessionLoginCompleted;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

#[tokio::test]
async fn the_in_memory_default_says_events_stay_inside_this_process() {
    eventbus_testkit::memory::register();
    let logs = Captured::default();
    let _guard = logs.install();
    let bus = Bus::connect(BusConfig::new()).await.unwrap();
    assert_eq!(bus.transport().backend, "memory");
    assert!(
        logs.text().contains("events stay inside this process"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn an_unnamed_consumer_warns_where_pending_deliveries_belong_to_member_names() {
    let mut transport = MemoryBroker::new(1).transport();
    transport.guarantees.pending_per_member = true;
    let bus = Bus::with_transport(transport, SerializerKind::Avro, BusConfig::new());
    let logs = Captured::default();
    let _guard = logs.install();
    let handler = |_: Envelope<SessionLoginCompleted>| async { Ok::<_, std::io::Error>(()) };

    let unnamed = bus
        .consumer("t", "g")
        .handle(handler)
        .start()
        .await
        .unwrap();
    assert!(logs.text().contains("no stable name"), "{}", logs.text());
    unnamed.shutdown().await.unwrap();

    let before = logs.text().matches("no stable name").count();
    let named = bus
        .consumer("t", "g")
        .name("worker-1")
        .handle(handler)
        .start()
        .await
        .unwrap();
    assert_eq!(logs.text().matches("no stable name").count(), before);
    named.shutdown().await.unwrap();
}
