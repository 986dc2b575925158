//! Publish and consume+ack throughput through eventbus against the raw `redis` crate written as
//! a careful engineer would (pipelined `XADD`s, reads of 100 acknowledged by one `XACK`), on the
//! same redis-server, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-redis --bench throughput
//! ```
//!
//! Both sides publish the same entries (an Open edX login event's fields and Avro datum) as
//! pipelined `XADD … MAXLEN ~ N` batches. The raw consumer reads `XREADGROUP … COUNT 100` and
//! acknowledges each read with one `XACK`; eventbus's transport acknowledges each delivery and
//! batches the acks below (core's `AckBatcher`), and the whole bus (typed events, Avro, the
//! consumer runner) is set against the same raw figures. Rounds alternate raw and eventbus so
//! that drift of the shared machine hits both; the median of each is reported with the ratio
//! eventbus / raw.
//! `EVENTBUS_BENCH_MESSAGES` (default 50000) and `EVENTBUS_BENCH_ROUNDS` (default 5) scale it.

use std::time::Instant;

use eventbus_core::serializer::SerializerKind;
use eventbus_core::{Bus, BusConfig, Message, Transport};
use eventbus_redis::RedisSettings;
use eventbus_testkit::bench::{
    consume_acking, env_or, latency, print_comparison, print_latency, rate, whole_bus,
};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{sample_login_message, SAMPLE_LOGIN_DATUM};
use redis::aio::MultiplexedConnection;

const BATCH: usize = 100;
const READ_COUNT: usize = 100;
const MAX_LEN: usize = 1_000_000;

/// The batches one round publishes, built before the clock starts, for either side.
fn batches(message: &Message, n: usize) -> Vec<Vec<Message>> {
    (0..n / BATCH)
        .map(|_| vec![message.clone(); BATCH])
        .collect()
}

/// What a hand-written client sends: each message's attributes under Open edX's field names.
/// With `sized`, each command's buffers are sized before it is written (as eventbus does);
/// without, it is built the usual way, `redis::pipe().cmd(…).arg(…)`, whose buffers grow.
async fn raw_publish(
    conn: &mut MultiplexedConnection,
    stream: &str,
    batches: Vec<Vec<Message>>,
    sized: bool,
) {
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
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        for message in &batch {
            let mut cmd = if sized {
                let bytes = stream.len()
                    + 40
                    + FIELDS
                        .iter()
                        .map(|(f, h)| f.len() + message.headers.get(h).map_or(0, str::len))
                        .sum::<usize>()
                    + message.payload.len();
                redis::Cmd::with_capacity(6 + 2 * (FIELDS.len() + 1), bytes)
            } else {
                redis::Cmd::new()
            };
            cmd.arg("XADD")
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
            pipe.add_command(cmd);
        }
        let ids: Vec<String> = pipe.query_async(conn).await.expect("raw XADD");
        assert_eq!(ids.len(), BATCH);
    }
}

/// What a careful engineer writes by hand: read `READ_COUNT` entries, handle them, then one
/// `XACK` with all their ids.
async fn raw_consume(conn: &mut MultiplexedConnection, stream: &str, group: &str, n: usize) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("raw XGROUP");
    let mut done = 0;
    while done < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
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
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|entry| {
                std::hint::black_box(entry.map.get("event_data").expect("event_data"));
                entry.id
            })
            .collect();
        let acked: usize = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(&ids)
            .query_async(conn)
            .await
            .expect("raw XACK");
        done += acked;
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
    let message = sample_login_message(SAMPLE_LOGIN_DATUM.to_vec());

    let bus = Bus::with_transport(transport.clone(), SerializerKind::Avro, BusConfig::new());

    // Per round: raw publish, bus publish, raw consume, bus consume, bus end to end (publish
    // and consume), raw publish with sized commands.
    let mut figures: [Vec<f64>; 7] = Default::default();
    for round in 0..rounds {
        let (raw_stream, bus_stream) = (format!("raw-{round}"), format!("bus-{round}"));
        let (for_raw, for_bus) = (batches(&message, n), batches(&message, n));
        let sized_stream = format!("raw-sized-{round}");
        let t = Instant::now();
        raw_publish(&mut raw, &sized_stream, batches(&message, n), true).await;
        figures[6].push(rate(n, t.elapsed()));
        let t = Instant::now();
        raw_publish(&mut raw, &raw_stream, for_raw, false).await;
        figures[0].push(rate(n, t.elapsed()));
        let t = Instant::now();
        bus_publish(&transport, &bus_stream, for_bus).await;
        figures[1].push(rate(n, t.elapsed()));
        let t = Instant::now();
        raw_consume(&mut raw, &raw_stream, "readers", n).await;
        figures[2].push(rate(n, t.elapsed()));
        // Acks awaited with as many in flight as the runner's default lanes, batched below.
        let t = Instant::now();
        consume_acking(&transport, &bus_stream, "readers", n, 8).await;
        figures[3].push(rate(n, t.elapsed()));
        let (published, consumed) = whole_bus(&bus, &format!("e2e-{round}"), n, BATCH).await;
        figures[4].push(published);
        figures[5].push(consumed);
        let _: () = redis::cmd("DEL")
            .arg(&raw_stream)
            .arg(&sized_stream)
            .arg(&bus_stream)
            .arg(format!("e2e-{round}"))
            .query_async(&mut raw)
            .await
            .expect("DEL");
    }
    let m = figures.map(median);
    println!(
        "redis-server on loopback, {n} entries of {} bytes of Avro per round, median of {rounds} interleaved rounds",
        SAMPLE_LOGIN_DATUM.len()
    );
    print_comparison(
        "raw redis crate",
        &[
            (format!("publish, pipelined batches of {BATCH}"), m[0], m[1]),
            (
                format!("consume + ack: raw reads {READ_COUNT} then one XACK; eventbus transport, 8 acks in flight, batched"),
                m[2],
                m[3],
            ),
            (
                "whole bus publish: send_batch of typed events (metadata, Avro encode) vs raw publish".to_owned(),
                m[0],
                m[4],
            ),
            (
                "whole bus publish vs a raw publish whose commands are sized too".to_owned(),
                m[6],
                m[4],
            ),
            (
                "whole bus consume: consumer runner (decode, dispatch, ack; concurrency 8) vs raw consume".to_owned(),
                m[2],
                m[5],
            ),
        ],
    );
    let (rate_per_s, events) = (1_000, 2_000);
    let percentiles = latency(&bus, "latency", rate_per_s, events).await;
    print_latency("redis-server", rate_per_s, events, percentiles);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
