//! Acks and fetches the broker does not serve: the event comes again, what is in flight goes on,
//! and the consumer keeps running.

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

/// Hands out what the broker has once, then fails every fetch, as a broker that went away.
#[derive(Debug)]
struct GoneAfterOne(Arc<dyn Subscriber>);

#[async_trait]
impl Subscriber for GoneAfterOne {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let inner = self.0.subscribe(subscription).await?;
        let gone = futures::stream::repeat_with(|| {
            Err(Error::new(ErrorKind::Connection, "connection refused").temporary())
        });
        Ok(inner.take(1).chain(gone).boxed())
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
    async fn check(&self) -> Result<()> {
        self.0.check().await
    }
}

#[tokio::test]
async fn an_event_in_flight_is_handled_while_fetching_waits_to_retry() {
    let memory = MemoryBroker::new(1).transport();
    let transport = Transport {
        subscriber: Arc::new(GoneAfterOne(memory.subscriber.clone())),
        ..memory
    };
    // Fetching waits 30 s after each failure; the receiver needs 50 ms.
    let config = BusConfig::new().consumer(|c| c.retry.base = Duration::from_secs(30));
    let bus = Bus::with_transport(transport, SerializerKind::Avro, config);
    bus.producer().send("ticks", &Tick { n: 1 }).await.unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let seen = handled.clone();
    let consumer = bus
        .consumer("ticks", "g")
        .handle(move |_: Envelope<Tick>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handled.load(Ordering::Relaxed) < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        handled.load(Ordering::Relaxed),
        1,
        "the receiver did not finish while fetching waited to retry"
    );
    assert!(
        !consumer.is_finished(),
        "a failed fetch stopped the consumer"
    );
    consumer.shutdown().await.unwrap();
}
