//! Publish and consume+ack throughput through eventbus against the raw `pulsar` crate doing the
//! same work, on the same broker, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-pulsar --bench throughput
//! ```
//!
//! The bench starts its own `pulsar-lite` (`pip install pulsar-lite`) and the testkit's frame
//! proxy in front of it, which the `pulsar` crate needs to talk to pulsar-lite. Both sides go
//! through the same proxy, so it costs both the same.
//!
//! Both sides publish an Open edX login event (the CloudEvents attributes as properties, the
//! bare Avro datum as payload) in batches of 100 through a producer with the options eventbus
//! uses ([`eventbus_pulsar::producer_options`]): every message of a batch is handed to the
//! producer, then every receipt is awaited. The raw messages are built before the clock starts;
//! eventbus converts its messages inside it. Each side's clock includes opening its producer (and
//! subscribing, for the reads) but not closing it.
//! Both then read their topic back in a new `Key_Shared` subscription from the earliest
//! message with a receiver queue of 1000 and acknowledge each message: one awaited ack at a
//! time, then (eventbus only; the raw client's ack only enqueues and has nothing to wait for)
//! with up to 64 acks in flight, the raw side repeating its loop in another new subscription.
//! Two more rows time the whole bus (typed events, Avro, the consumer runner), which has no raw
//! counterpart. Every round uses fresh topics and runs raw and eventbus in turn, raw first in
//! even rounds and eventbus first in odd ones, so that drift of the shared machine hits both;
//! the best round of each counts, then the ratio eventbus / raw. `EVENTBUS_BENCH_MESSAGES`
//! (default 20000) and `EVENTBUS_BENCH_ROUNDS` (default 5) scale it.

use std::future::Future;
use std::time::Instant;

use eventbus_core::serializer::SerializerKind;
use eventbus_core::{Bus, BusConfig, Message, Transport};
use eventbus_pulsar::{producer_options, to_pulsar, PulsarSettings};
use eventbus_testkit::bench::{
    consume_acking, env_or, latency, print_comparison, print_latency, print_whole_bus, rate,
    whole_bus,
};
use eventbus_testkit::openedx::{sample_login_message, SAMPLE_LOGIN_DATUM};
use eventbus_testkit::pulsar_proxy::PulsarLite;
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};

const BATCH: usize = 100;
const IN_FLIGHT: usize = 64;
const RECEIVER_QUEUE: u32 = 1000;

/// The full name eventbus gives a bare topic in the default namespace.
fn full(topic: &str) -> String {
    format!("persistent://public/default/{topic}")
}

/// The batches one round publishes, built before the clock starts.
fn batches(message: &Message, n: usize) -> Vec<Vec<Message>> {
    (0..n / BATCH)
        .map(|_| vec![message.clone(); BATCH])
        .collect()
}

/// Opens a producer with eventbus's options, hands it each batch and awaits its receipts.
async fn raw_publish(
    client: &Pulsar<TokioExecutor>,
    settings: &PulsarSettings,
    topic: &str,
    batches: Vec<Vec<pulsar::producer::Message>>,
) -> pulsar::Producer<TokioExecutor> {
    let mut producer = client
        .producer()
        .with_topic(full(topic))
        .with_options(producer_options(settings))
        .build()
        .await
        .expect("raw producer");
    for batch in batches {
        let mut receipts = Vec::with_capacity(batch.len());
        for message in batch {
            receipts.push(producer.send_non_blocking(message).await.expect("enqueue"));
        }
        for receipt in receipts {
            receipt.await.expect("receipt");
        }
    }
    producer
}

async fn bus_publish(transport: &Transport, topic: &str, batches: Vec<Vec<Message>>) {
    for batch in batches {
        let ids = transport
            .publisher
            .publish(topic, batch)
            .await
            .expect("eventbus publish");
        assert_eq!(ids.len(), BATCH);
    }
}

/// Subscribes a new group as eventbus does and acknowledges each message.
async fn raw_consume(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    group: &str,
    n: usize,
) -> Consumer<Vec<u8>, TokioExecutor> {
    let options = ConsumerOptions::default()
        .with_initial_position(InitialPosition::Earliest)
        .with_receiver_queue_size(RECEIVER_QUEUE);
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = client
        .consumer()
        .with_topic(full(topic))
        .with_subscription(group)
        .with_subscription_type(SubType::KeyShared)
        .with_consumer_name("c")
        .with_options(options)
        .build()
        .await
        .expect("raw subscribe");
    for _ in 0..n {
        let message = consumer.next().await.expect("open").expect("message");
        std::hint::black_box(&message.payload.data);
        consumer.ack(&message).await.expect("raw ack");
    }
    consumer
}

/// Runs both sides, the raw one first or second; returns their rates as (raw, eventbus).
async fn in_turn(
    raw_first: bool,
    raw: impl Future<Output = f64>,
    bus: impl Future<Output = f64>,
) -> (f64, f64) {
    if raw_first {
        let raw = raw.await;
        (raw, bus.await)
    } else {
        let bus = bus.await;
        (raw.await, bus)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("EVENTBUS_BENCH_MESSAGES", 20_000) / BATCH * BATCH;
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 5);
    let lite = PulsarLite::start()
        .await
        .expect("start pulsar-lite (pip install pulsar-lite) and the frame proxy");
    let url = lite.url();
    let settings = PulsarSettings::new(&url);
    let raw = Pulsar::builder(url.as_str(), TokioExecutor)
        .build()
        .await
        .expect("raw client");
    let transport = eventbus_pulsar::connect(settings.clone())
        .await
        .expect("connect");
    let bus = Bus::with_transport(transport.clone(), SerializerKind::Avro, BusConfig::new());
    let message = sample_login_message(SAMPLE_LOGIN_DATUM.to_vec());
    let to_raw = |batches: Vec<Vec<Message>>| -> Vec<Vec<pulsar::producer::Message>> {
        batches
            .into_iter()
            .map(|b| {
                b.into_iter()
                    .map(|m| to_pulsar(m).expect("to_pulsar"))
                    .collect()
            })
            .collect()
    };

    // publish, then per ack mode consume, raw and eventbus in turn, then bus end to end.
    let mut best = [0f64; 8];
    let mut keep = |i: usize, (raw, bus): (f64, f64)| {
        best[i] = best[i].max(raw);
        best[i + 1] = best[i + 1].max(bus);
    };
    for round in 0..rounds {
        // Every other round eventbus goes first, so that neither side always meets a broker
        // that just did the other's work.
        let raw_first = round % 2 == 0;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (raw_topic, bus_topic) = (format!("raw-{id}"), format!("bus-{id}"));
        let (for_raw, for_bus) = (to_raw(batches(&message, n)), batches(&message, n));
        let raw_side = async {
            let t = Instant::now();
            let mut producer = raw_publish(&raw, &settings, &raw_topic, for_raw).await;
            let took = t.elapsed();
            producer.close().await.expect("close producer");
            rate(n, took)
        };
        let bus_side = async {
            let t = Instant::now();
            bus_publish(&transport, &bus_topic, for_bus).await;
            rate(n, t.elapsed())
        };
        keep(0, in_turn(raw_first, raw_side, bus_side).await);
        for (i, in_flight) in [(2, 1), (4, IN_FLIGHT)] {
            let group = format!("acks-{in_flight}");
            let raw_side = async {
                let t = Instant::now();
                let mut consumer = raw_consume(&raw, &raw_topic, &group, n).await;
                let took = t.elapsed();
                consumer.close().await.expect("close consumer");
                rate(n, took)
            };
            let bus_side = async {
                let t = Instant::now();
                consume_acking(&transport, &bus_topic, &group, n, in_flight).await;
                rate(n, t.elapsed())
            };
            keep(i, in_turn(raw_first, raw_side, bus_side).await);
        }
        keep(6, whole_bus(&bus, &format!("e2e-{id}"), n, BATCH).await);
        eprintln!("round {round} done");
    }
    println!(
        "pulsar-lite through the frame proxy on loopback, {n} messages of {} bytes of Avro per round, best of {rounds} rounds",
        SAMPLE_LOGIN_DATUM.len()
    );
    print_comparison(
        "raw pulsar crate",
        &[
            (
                format!("publish, batches of {BATCH}, all receipts awaited"),
                best[0],
                best[1],
            ),
            (
                "consume + ack, one awaited ack at a time".to_owned(),
                best[2],
                best[3],
            ),
            (
                format!("consume + ack, up to {IN_FLIGHT} eventbus acks in flight"),
                best[4],
                best[5],
            ),
        ],
    );
    print_whole_bus((best[6], best[7]));
    let (rate_per_s, events) = (1_000, 2_000);
    let percentiles = latency(&bus, "latency", rate_per_s, events).await;
    print_latency(
        "pulsar-lite (through the frame proxy)",
        rate_per_s,
        events,
        percentiles,
    );
    println!("proxy: {:?}", lite.proxy.stats());
}
