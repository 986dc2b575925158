//! Publish and consume+commit throughput through eventbus against raw `rdkafka` doing the same
//! work, on the same tansu broker, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-kafka --bench throughput
//! ```
//!
//! Both producers are idempotent with `linger.ms=5` and enqueue batches of 100 messages (an
//! Open edX login event: ten CloudEvents headers and a Confluent-framed Avro value), then await
//! every acknowledgement. Both consumers join a new group on a 4-partition topic, read from the
//! beginning, store each message's offset after handling it and let auto-commit send them.
//! Rounds alternate raw and eventbus; the best round of each counts.
//! `EVENTBUS_BENCH_MESSAGES` (default 20000) and `EVENTBUS_BENCH_ROUNDS` (default 3) scale it.

use std::time::Instant;

use eventbus_core::serializer::confluent_frame;
use eventbus_core::{Message, Subscription, Transport};
use eventbus_kafka::KafkaSettings;
use eventbus_testkit::bench::{env_or, latency, print_comparison, print_latency, rate};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{sample_login_message, SAMPLE_LOGIN_DATUM};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const BATCH: usize = 100;
const PARTITIONS: i32 = 4;

async fn raw_publish(producer: &FutureProducer, topic: &str, batches: Vec<Vec<Message>>) {
    for batch in batches {
        let mut deliveries = Vec::with_capacity(batch.len());
        for message in &batch {
            let headers = message
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v),
                    })
                });
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(&message.payload[..])
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(&key[..]);
            }
            deliveries.push(producer.send_result(record).expect("enqueue"));
        }
        for d in deliveries {
            d.await.expect("delivered").expect("acknowledged");
        }
    }
}

async fn bus_publish(transport: &Transport, topic: &str, batches: Vec<Vec<Message>>) {
    for batch in batches {
        transport
            .publisher
            .publish(topic, batch)
            .await
            .expect("eventbus publish");
    }
}

async fn raw_consume(bootstrap: &str, topic: &str, n: usize) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{topic}"))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    for _ in 0..n {
        let m = consumer.recv().await.expect("message");
        std::hint::black_box(rdkafka::Message::payload(&m));
        consumer.store_offset_from_message(&m).expect("store");
    }
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
}

async fn bus_consume(transport: &Transport, topic: &str, n: usize) {
    let mut deliveries = transport
        .subscriber
        .subscribe(Subscription::new(topic, format!("bus-{topic}"), "c"))
        .await
        .expect("subscribe");
    for _ in 0..n {
        let d = deliveries.next().await.expect("open").expect("delivery");
        std::hint::black_box(&d.message.payload);
        d.ack().await.expect("ack");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("EVENTBUS_BENCH_MESSAGES", 20_000) / BATCH * BATCH;
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 3);
    let broker = BrokerProcess::start(BrokerSpec::tansu())
        .await
        .expect("start tansu");
    let bootstrap = broker.addr();
    let mut settings = KafkaSettings::new(&bootstrap);
    settings.topic_partitions = PARTITIONS;
    // tansu 0.6 cannot fetch from inside a record batch, which is where a paused partition
    // resumes; with a buffer as large as the run, no partition is ever paused (neither is the
    // raw consumer's). Against Apache Kafka the default buffer is fine.
    settings.partition_buffer = 1_000_000;
    let transport = eventbus_kafka::connect(settings).await.expect("connect");
    let raw_producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("raw producer");
    let message = Message {
        key: Some("7".into()),
        ..sample_login_message(confluent_frame(1, SAMPLE_LOGIN_DATUM))
    };
    let batches = || -> Vec<Vec<Message>> {
        (0..n / BATCH)
            .map(|_| vec![message.clone(); BATCH])
            .collect()
    };

    let mut best = [0f64; 4];
    for round in 0..rounds {
        let (raw_topic, bus_topic) = (format!("raw-{round}"), format!("bus-{round}"));
        // Both topics exist before the clock starts; only eventbus creates topics itself.
        for topic in [&raw_topic, &bus_topic] {
            transport
                .publisher
                .publish(topic, vec![])
                .await
                .expect("create");
        }
        let (for_raw, for_bus) = (batches(), batches());
        let t = Instant::now();
        raw_publish(&raw_producer, &raw_topic, for_raw).await;
        eprintln!("round {round}: raw publish done");
        best[0] = best[0].max(rate(n, t.elapsed()));
        let t = Instant::now();
        bus_publish(&transport, &bus_topic, for_bus).await;
        eprintln!("round {round}: eventbus publish done");
        best[1] = best[1].max(rate(n, t.elapsed()));
        let t = Instant::now();
        raw_consume(&bootstrap, &raw_topic, n).await;
        eprintln!("round {round}: raw consume done");
        best[2] = best[2].max(rate(n, t.elapsed()));
        let t = Instant::now();
        bus_consume(&transport, &bus_topic, n).await;
        best[3] = best[3].max(rate(n, t.elapsed()));
    }
    println!(
        "tansu 0.6.0 on loopback, {n} messages of {} bytes per round, {PARTITIONS} partitions, best of {rounds} rounds",
        message.payload.len()
    );
    print_comparison(
        "raw rdkafka",
        &[
            (
                format!("publish, batches of {BATCH}, idempotent"),
                best[0],
                best[1],
            ),
            (
                "consume + store offset + auto-commit".to_owned(),
                best[2],
                best[3],
            ),
        ],
    );
    // The whole bus, with plain Avro: the latency of the runner over this broker, not of the
    // schema registry.
    let bus = eventbus_core::Bus::with_transport(
        transport.clone(),
        eventbus_core::SerializerKind::Avro,
        eventbus_core::BusConfig::new(),
    );
    let (rate_per_s, events) = (1_000, 2_000);
    let percentiles = latency(&bus, "latency", rate_per_s, events).await;
    print_latency("tansu", rate_per_s, events, percentiles);
}
