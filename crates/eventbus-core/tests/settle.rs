//! Acks and fetches the broker does not serve: the event comes again, what is in flight goes on,
//! and the consumer keeps running.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{
    async_trait, Acknowledge, Bus, BusConfig, ConsumerHandle, Delivery, DeliveryStream, Envelope,
    Error, ErrorKind, Event, Result, SerializerKind, Settlement, Subscriber, Subscription,
    Transport,
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

impl Acknowledge for LostAnswer {
    fn ack(self: Box<Self>) -> Settlement {
        Settlement::waiting(async move {
            self.0.ack().await?;
            Err(Error::new(ErrorKind::Connection, "broken pipe while acknowledging").temporary())
        })
    }
    fn nack(self: Box<Self>, delay: Duration) -> Settlement {
        Settlement::waiting(async move { self.0.nack(delay).await })
    }
}

/// A subscriber whose streams are those of another, reshaped: how each test's broker misbehaves.
struct Reshaped {
    inner: Arc<dyn Subscriber>,
    reshape: fn(DeliveryStream) -> DeliveryStream,
}

impl std::fmt::Debug for Reshaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reshaped")
    }
}

#[async_trait]
impl Subscriber for Reshaped {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        Ok((self.reshape)(self.inner.subscribe(subscription).await?))
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

/// A bus on the memory broker whose deliveries pass through `reshape`.
fn bus_over(
    partitions: usize,
    reshape: fn(DeliveryStream) -> DeliveryStream,
    config: BusConfig,
) -> Bus {
    let memory = MemoryBroker::new(partitions).transport();
    let transport = Transport {
        subscriber: Arc::new(Reshaped {
            inner: memory.subscriber.clone(),
            reshape,
        }),
        ..memory
    };
    Bus::with_transport(transport, SerializerKind::Avro, config)
}

/// Every ack is passed on to the broker, then reported failed.
fn losing_answers(stream: DeliveryStream) -> DeliveryStream {
    stream
        .map(|d| {
            d.map(|d| {
                let (topic, message, position, attempt) = (
                    d.topic.clone(),
                    d.message.clone(),
                    d.position.clone(),
                    d.attempt,
                );
                Delivery::new(topic, message, position, attempt, Box::new(LostAnswer(d)))
            })
        })
        .boxed()
}

/// What the broker has is handed out once, then every fetch fails, as a broker that went away.
fn gone_after_one(stream: DeliveryStream) -> DeliveryStream {
    let gone = futures::stream::repeat_with(|| {
        Err(Error::new(ErrorKind::Connection, "connection refused").temporary())
    });
    stream.take(1).chain(gone).boxed()
}

/// A consumer of ticks that counts what its receiver finished, each after `pause` if given.
async fn counting(bus: &Bus, pause: Option<Duration>) -> (ConsumerHandle, Arc<AtomicU32>) {
    let handled = Arc::new(AtomicU32::new(0));
    let seen = handled.clone();
    let consumer = bus
        .consumer("ticks", "g")
        .handle(move |_: Envelope<Tick>| {
            let seen = seen.clone();
            async move {
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .unwrap();
    (consumer, handled)
}

/// Waits up to `within` until `count` reaches `n`.
async fn until(count: &AtomicU32, n: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while count.load(Ordering::Relaxed) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn settle_failures_do_not_count_towards_the_error_limit() {
    let config = BusConfig::new().consumer(|c| c.consecutive_error_limit = 5);
    let bus = bus_over(2, losing_answers, config);
    let (consumer, handled) = counting(&bus, None).await;
    for n in 0..20 {
        bus.producer().send("ticks", &Tick { n }).await.unwrap();
    }
    until(&handled, 20, Duration::from_secs(10)).await;
    assert_eq!(handled.load(Ordering::Relaxed), 20);
    // Twenty failed acks in a row, four times the limit: the consumer still runs.
    assert!(
        !consumer.is_finished(),
        "the consumer stopped on failed acks"
    );
    assert_eq!(consumer.state().consecutive_errors(), 0);
    consumer.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_in_flight_is_handled_while_fetching_waits_to_retry() {
    // Fetching waits 30 s after each failure; the receiver needs 50 ms.
    let config = BusConfig::new().consumer(|c| c.retry.base = Duration::from_secs(30));
    let bus = bus_over(1, gone_after_one, config);
    bus.producer().send("ticks", &Tick { n: 1 }).await.unwrap();
    let (consumer, handled) = counting(&bus, Some(Duration::from_millis(50))).await;
    until(&handled, 1, Duration::from_secs(5)).await;
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
