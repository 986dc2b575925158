//! Acks the broker does not take: the event comes again, and the consumer keeps running.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{
    async_trait, Acknowledge, Bus, BusConfig, Delivery, DeliveryStream, Envelope, Error, ErrorKind,
    Event, Result, SerializerKind, Subscriber, Subscription, Transport,
};
use eventbus_testkit::memory::MemoryBroker;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.settle.tick.v1")]
struct Tick {
    n: i64,
}

/// Passes every ack on to the broker, then reports it failed, as when a connection breaks
/// before the broker's answer arrives.
#[derive(Debug)]
struct LostAnswer(Delivery);

#[async_trait]
impl Acknowledge for LostAnswer {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.0.ack().await?;
        Err(Error::new(ErrorKind::Connection, "broken pipe while acknowledging").temporary())
    }
    async fn nack(self: Box<Self>, delay: Duration) -> Result<()> {
        self.0.nack(delay).await
    }
}

#[derive(Debug)]
struct Flaky(Arc<dyn Subscriber>);

#[async_trait]
impl Subscriber for Flaky {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let inner = self.0.subscribe(subscription).await?;
        Ok(inner
            .map(|d| {
                d.map(|d| {
                    let (topic, message, position, attempt) = (
                        d.topic.clone(),
                        d.message.clone(),
                        d.position.clone(),
                        d.attempt,
                    );
                    Delivery::new(&topic, message, position, attempt, Box::new(LostAnswer(d)))
                })
            })
            .boxed())
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
    async fn check(&self) -> Result<()> {
        self.0.check().await
    }
}

#[tokio::test]
async fn settle_failures_do_not_count_towards_the_error_limit() {
    let memory = MemoryBroker::new(2).transport();
    let transport = Transport {
        subscriber: Arc::new(Flaky(memory.subscriber.clone())),
        ..memory
    };
    let config = BusConfig::new().consumer(|c| c.consecutive_error_limit = 5);
    let bus = Bus::with_transport(transport, SerializerKind::Avro, config);
    let handled = Arc::new(AtomicU32::new(0));
    let seen = handled.clone();
    let consumer = bus
        .consumer("ticks", "g")
        .handle(move |_: Envelope<Tick>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.producer().send("ticks", &Tick { n }).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::Relaxed) < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handled.load(Ordering::Relaxed), 20);
    // Twenty failed acks in a row, four times the limit: the consumer still runs.
    assert!(
        !consumer.is_finished(),
        "the consumer stopped on failed acks"
    );
    assert_eq!(consumer.state().consecutive_errors(), 0);
    consumer.shutdown().await.unwrap();
}
