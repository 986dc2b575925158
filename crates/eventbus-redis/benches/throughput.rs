//! Publish and consume+ack throughput through eventbus against the raw `redis` crate issuing
//! the same commands, on the same redis-server, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-redis --bench throughput
//! ```
//!
//! Both sides publish the same entries (an Open edX login event's fields and Avro datum) as
//! pipelined `XADD … MAXLEN ~ N` batches, and consume them with `XREADGROUP … COUNT` followed by
//! one awaited `XACK` per entry. Rounds alternate raw and eventbus so that drift of the shared
//! machine hits both; the best round of each is reported, then the ratio eventbus / raw.
//! `EVENTBUS_BENCH_MESSAGES` (default 50000) and `EVENTBUS_BENCH_ROUNDS` (default 5) scale it.

use std::time::{Duration, Instant};

use eventbus_core::{Event, EventMetadata, Headers, Message, Subscription, Transport};
use eventbus_redis::RedisSettings;
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{SessionLoginCompleted, SAMPLE_LOGIN_DATUM};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;

const BATCH: usize = 100;
const READ_COUNT: usize = 64;
const MAX_LEN: usize = 1_000_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One event as the producer builds it: CloudEvents headers and the Avro datum.
fn sample_message() -> Message {
    let mut metadata = EventMetadata::new(
        SessionLoginCompleted::EVENT_TYPE,
        0,
        "openedx/lms/web",
        "bench-host",
    );
    metadata.content_type = "application/avro".into();
    let mut headers = Headers::new();
    metadata.write_headers(&mut headers);
    Message {
        key: None,
        payload: SAMPLE_LOGIN_DATUM.to_vec().into(),
        headers,
    }
}

/// The batches one round publishes, built before the clock starts, for either side.
fn batches(message: &Message, n: usize) -> Vec<Vec<Message>> {
    (0..n / BATCH)
        .map(|_| vec![message.clone(); BATCH])
        .collect()
}

/// What a hand-written client sends: each message's attributes under Open edX's field names.
async fn raw_publish(conn: &mut MultiplexedConnection, stream: &str, batches: Vec<Vec<Message>>) {
    const FIELDS: [(&str, &str); 7] = [
        ("type", "ce_type"),
        ("id", "ce_id"),
        ("source", "ce_source"),
        ("time", "ce_time"),
        ("minorversion", "ce_minorversion"),
        ("sourcehost", "sourcehost"),
        ("sourcelib", "sourcelib"),
    ];
    for batch in batches {
        let mut pipe = redis::pipe();
        for message in &batch {
            let cmd = pipe
                .cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_LEN)
                .arg("*");
            for (field, header) in FIELDS {
                cmd.arg(field)
                    .arg(message.headers.get(header).unwrap_or_default());
            }
            cmd.arg("event_data").arg(&message.payload[..]);
        }
        let ids: Vec<String> = pipe.query_async(conn).await.expect("raw XADD");
        assert_eq!(ids.len(), BATCH);
    }
}

async fn raw_consume(conn: &mut MultiplexedConnection, stream: &str, n: usize) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("raw")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("raw XGROUP");
    let mut done = 0;
    while done < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(2000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(conn)
            .await
            .expect("raw XREADGROUP");
        for key in reply.keys {
            for entry in key.ids {
                let payload = entry.map.get("event_data").expect("event_data");
                std::hint::black_box(payload);
                let _: i64 = redis::cmd("XACK")
                    .arg(stream)
                    .arg("raw")
                    .arg(&entry.id)
                    .query_async(conn)
                    .await
                    .expect("raw XACK");
                done += 1;
            }
        }
    }
}

async fn bus_publish(transport: &Transport, stream: &str, batches: Vec<Vec<Message>>) {
    for batch in batches {
        let ids = transport
            .publisher
            .publish(stream, batch)
            .await
            .expect("eventbus publish");
        assert_eq!(ids.len(), BATCH);
    }
}

async fn bus_consume(transport: &Transport, stream: &str, n: usize) {
    let mut deliveries = transport
        .subscriber
        .subscribe(Subscription::new(stream, "bus", "c"))
        .await
        .expect("eventbus subscribe");
    for _ in 0..n {
        let d = deliveries.next().await.expect("open").expect("delivery");
        std::hint::black_box(&d.message.payload);
        d.ack().await.expect("eventbus ack");
    }
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("EVENTBUS_BENCH_MESSAGES", 50_000) / BATCH * BATCH;
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 5);
    // No persistence: the figures are about the client, not the disk.
    let spec = BrokerSpec {
        args: |ctx| {
            [
                "--port",
                &ctx.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &ctx.data_dir.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec()
        },
        ..BrokerSpec::redis()
    };
    let server = BrokerProcess::start(spec)
        .await
        .expect("start redis-server");
    let url = format!("redis://{}", server.addr());
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut settings = RedisSettings::new(url);
    settings.stream_max_len = MAX_LEN;
    settings.read_count = READ_COUNT;
    let transport = eventbus_redis::connect(settings).await.expect("connect");
    let message = sample_message();

    let mut best = [0f64; 4]; // raw publish, bus publish, raw consume, bus consume
    for round in 0..rounds {
        let (raw_stream, bus_stream) = (format!("raw-{round}"), format!("bus-{round}"));
        let (for_raw, for_bus) = (batches(&message, n), batches(&message, n));
        let t = Instant::now();
        raw_publish(&mut raw, &raw_stream, for_raw).await;
        best[0] = best[0].max(rate(n, t.elapsed()));
        let t = Instant::now();
        bus_publish(&transport, &bus_stream, for_bus).await;
        best[1] = best[1].max(rate(n, t.elapsed()));
        let t = Instant::now();
        raw_consume(&mut raw, &raw_stream, n).await;
        best[2] = best[2].max(rate(n, t.elapsed()));
        let t = Instant::now();
        bus_consume(&transport, &bus_stream, n).await;
        best[3] = best[3].max(rate(n, t.elapsed()));
        let _: () = redis::cmd("DEL")
            .arg(&raw_stream)
            .arg(&bus_stream)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    println!("redis-server 7 on loopback, {n} entries of {} bytes of Avro per round, best of {rounds} rounds", SAMPLE_LOGIN_DATUM.len());
    println!("| path | raw redis crate | eventbus | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| publish, pipelined batches of {BATCH} | {:.0} msg/s | {:.0} msg/s | {:.2} |",
        best[0],
        best[1],
        best[1] / best[0]
    );
    println!("| consume + ack, reads of {READ_COUNT}, one XACK each | {:.0} msg/s | {:.0} msg/s | {:.2} |", best[2], best[3], best[3] / best[2]);
}
