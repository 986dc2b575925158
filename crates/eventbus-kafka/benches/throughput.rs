//! Publish and consume+commit throughput through eventbus against raw `rdkafka` doing the same
//! work, on the same broker, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-kafka --bench throughput                          # tansu
//! EVENTBUS_BENCH_BROKER=mock cargo bench -p eventbus-kafka --bench throughput  # MockCluster
//! ```
//!
//! The broker is tansu 0.6 (a separate process, in-memory storage) or librdkafka's in-process
//! `MockCluster`, which answers faster than a client can ask and so shows the client's own cost.
//! Both producers are idempotent with `linger.ms=5` and enqueue batches of 100 messages (the
//! Open edX login's ten CloudEvents headers, 64 keys, a payload of `EVENTBUS_BENCH_BYTES`,
//! default 512 on the mock and the 40-byte Confluent-framed login on tansu), then await every
//! acknowledgement. Both consumers join a new group on a 4-partition topic, read from the
//! beginning, read each message's payload and `ce_type` header (what a consumer of these events
//! dispatches on), store its offset after handling it and let auto-commit send them. A second
//! raw consumer does the same but reads every header, as Open edX's own Kafka consumer does to
//! build each event's metadata (eventbus's deliveries carry every header too).
//! Rounds rotate which side goes first; the best round of each counts.
//! `EVENTBUS_BENCH_MESSAGES` (default 20000) and `EVENTBUS_BENCH_ROUNDS` (default 3) scale it;
//! `EVENTBUS_BENCH_FETCH_WAIT_MS` sets `fetch.wait.max.ms` on both consumers.

use std::time::{Duration, Instant};

use eventbus_core::serializer::confluent_frame;
use eventbus_core::{Message, Transport};
use eventbus_kafka::KafkaSettings;
use eventbus_testkit::bench::{
    consume_acking, env_or, latency, print_comparison, print_latency, print_whole_bus, rate,
    whole_bus,
};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{sample_login_message, SAMPLE_LOGIN_DATUM};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
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

/// Consumes `n` messages; returns the time from the first message to the last stored offset,
/// so that joining the group (seconds on the mock, whose initial rebalance waits) is left out.
async fn raw_consume(bootstrap: &str, topic: &str, n: usize, reading: Reading) -> Duration {
    let mut config = ClientConfig::new();
    if let Some(ms) = fetch_wait() {
        config.set("fetch.wait.max.ms", ms);
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{reading:?}-{topic}"))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first = None;
    for _ in 0..n {
        let m = consumer.recv().await.expect("message");
        first.get_or_insert_with(Instant::now);
        // What any consumer of these events reads: the payload, and the type to dispatch on.
        std::hint::black_box(rdkafka::Message::payload(&m));
        let headers = rdkafka::Message::headers(&m);
        match reading {
            Reading::Type => {
                let kind = headers
                    .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
                    .and_then(|h| h.value);
                std::hint::black_box(kind);
            }
            Reading::EveryHeader => {
                for header in headers.iter().flat_map(|h| h.iter()) {
                    std::hint::black_box((header.key, header.value));
                }
            }
        }
        consumer.store_offset_from_message(&m).expect("store");
    }
    let took = first.map(|t| t.elapsed()).unwrap_or_default();
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    took
}

/// What the raw consumer reads of each message besides its payload.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// The `ce_type` header alone: enough to dispatch.
    Type,
    /// Every header, as Open edX's Kafka consumer does to build each event's metadata
    /// (`message.headers()` in `edx_event_bus_kafka`); eventbus's deliveries carry them all.
    EveryHeader,
}

/// `EVENTBUS_BENCH_FETCH_WAIT_MS`: librdkafka's `fetch.wait.max.ms` for the consumers.
fn fetch_wait() -> Option<String> {
    std::env::var("EVENTBUS_BENCH_FETCH_WAIT_MS").ok()
}

/// The broker of this run.
enum Broker {
    Tansu(Box<BrokerProcess>),
    Mock(MockCluster<'static, DefaultProducerContext>),
}

impl Broker {
    async fn start() -> Self {
        match std::env::var("EVENTBUS_BENCH_BROKER").as_deref() {
            Ok("mock") => Broker::Mock(MockCluster::new(1).expect("mock cluster")),
            Ok("tansu") | Err(_) => Broker::Tansu(Box::new(
                BrokerProcess::start(BrokerSpec::tansu())
                    .await
                    .expect("start tansu"),
            )),
            Ok(other) => panic!("EVENTBUS_BENCH_BROKER is tansu or mock, not {other}"),
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Tansu(process) => process.addr(),
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Broker::Tansu(_) => "tansu 0.6.0 on loopback",
            Broker::Mock(_) => "librdkafka MockCluster (in process)",
        }
    }

    /// Creates `topic` before the clock starts (the mock has no CreateTopics).
    async fn create(&self, transport: &Transport, topic: &str) {
        match self {
            Broker::Tansu(_) => {
                transport
                    .publisher
                    .publish(topic, vec![])
                    .await
                    .expect("create");
            }
            Broker::Mock(cluster) => cluster.create_topic(topic, PARTITIONS, 1).expect("create"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("EVENTBUS_BENCH_MESSAGES", 20_000) / BATCH * BATCH;
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 3);
    let broker = Broker::start().await;
    let mock = matches!(broker, Broker::Mock(_));
    let bootstrap = broker.bootstrap();
    let mut settings = KafkaSettings::new(&bootstrap);
    settings.topic_partitions = PARTITIONS;
    settings.create_topics = !mock;
    if !mock {
        // tansu 0.6 cannot fetch from inside a record batch, which is where a paused partition
        // resumes; with a buffer as large as the run, no partition is ever paused (neither is
        // the raw consumer's). Against Apache Kafka and the mock the default buffer is fine.
        settings.partition_buffer = 1_000_000;
    }
    if let Some(ms) = fetch_wait() {
        settings
            .consumer_properties
            .insert("fetch.wait.max.ms".into(), ms);
    }
    let transport = eventbus_kafka::connect(settings).await.expect("connect");
    let raw_producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("raw producer");
    let mut payload = confluent_frame(1, SAMPLE_LOGIN_DATUM);
    payload.resize(
        env_or("EVENTBUS_BENCH_BYTES", if mock { 512 } else { 0 }).max(payload.len()),
        0,
    );
    let message = sample_login_message(payload);
    let batches = || -> Vec<Vec<Message>> {
        (0..n / BATCH)
            .map(|b| {
                (0..BATCH)
                    .map(|i| Message {
                        key: Some(((b * BATCH + i) % 64).to_string().into()),
                        ..message.clone()
                    })
                    .collect()
            })
            .collect()
    };

    let mut best = [0f64; 5];
    for round in 0..rounds {
        let (raw_topic, bus_topic) = (format!("raw-{round}"), format!("bus-{round}"));
        for topic in [&raw_topic, &bus_topic] {
            broker.create(&transport, topic).await;
        }
        let (for_raw, for_bus) = (batches(), batches());
        let raw_first = round % 2 == 0;
        for side in [raw_first, !raw_first] {
            let t = Instant::now();
            if side {
                raw_publish(&raw_producer, &raw_topic, for_raw.clone()).await;
                best[0] = best[0].max(rate(n, t.elapsed()));
            } else {
                bus_publish(&transport, &bus_topic, for_bus.clone()).await;
                best[1] = best[1].max(rate(n, t.elapsed()));
            }
        }
        eprintln!("round {round}: published");
        // Each consumer reads the whole topic in a group of its own; who goes first rotates.
        for side in (0..3).map(|i| (i + round) % 3) {
            let (slot, took) = match side {
                0 => (
                    2,
                    raw_consume(&bootstrap, &raw_topic, n, Reading::Type).await,
                ),
                1 => {
                    let reading = Reading::EveryHeader;
                    (4, raw_consume(&bootstrap, &raw_topic, n, reading).await)
                }
                _ => {
                    let group = format!("bus-{bus_topic}");
                    (
                        3,
                        consume_acking(&transport, &bus_topic, &group, n, 8).await,
                    )
                }
            };
            best[slot] = best[slot].max(rate(n - 1, took));
        }
        eprintln!("round {round}: consumed");
    }
    println!(
        "{}, {n} messages of {} bytes per round, {PARTITIONS} partitions, best of {rounds} rounds",
        broker.name(),
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
                "consume + store offset + auto-commit (from the first message)".to_owned(),
                best[2],
                best[3],
            ),
            (
                "the same, the raw consumer reading every header".to_owned(),
                best[4],
                best[3],
            ),
        ],
    );
    // The whole bus, with plain Avro: the runner over this broker, not the schema registry.
    let bus = eventbus_core::Bus::with_transport(
        transport.clone(),
        eventbus_core::SerializerKind::Avro,
        eventbus_core::BusConfig::new(),
    );
    broker.create(&transport, "whole-bus").await;
    print_whole_bus(whole_bus(&bus, "whole-bus", n, BATCH).await);
    broker.create(&transport, "latency").await;
    let (rate_per_s, events) = (1_000, 2_000);
    let percentiles = latency(&bus, "latency", rate_per_s, events).await;
    print_latency(broker.name(), rate_per_s, events, percentiles);
}
