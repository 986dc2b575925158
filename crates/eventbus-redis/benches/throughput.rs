//! Publish and consume+ack throughput through eventbus against the raw `redis` crate issuing
//! the same commands, on the same redis-server, in the same run.
//!
//! ```text
//! cargo bench -p eventbus-redis --bench throughput
//! ```
//!
//! Both sides publish the same entries (an Open edX login event's fields and Avro datum) as
//! pipelined `XADD … MAXLEN ~ N` batches, and consume them with `XREADGROUP … COUNT` and one
//! `XACK` per entry, awaited one at a time and then with a read's worth in flight. Two more rows
//! time the whole bus (typed events, Avro, the consumer runner), which has no raw counterpart. Rounds alternate raw and eventbus so that drift of the shared
//! machine hits both; the best round of each is reported, then the ratio eventbus / raw.
//! `EVENTBUS_BENCH_MESSAGES` (default 50000) and `EVENTBUS_BENCH_ROUNDS` (default 5) scale it.

use std::time::Instant;

use eventbus_core::serializer::SerializerKind;
use eventbus_core::{Bus, BusConfig, Message, Transport};
use eventbus_redis::RedisSettings;
use eventbus_testkit::bench::{
    consume_acking, env_or, print_comparison, print_whole_bus, rate, whole_bus,
};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::openedx::{sample_login_message, SAMPLE_LOGIN_DATUM};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;

const BATCH: usize = 100;
const READ_COUNT: usize = 64;
const MAX_LEN: usize = 1_000_000;

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

/// Reads with `XREADGROUP` and acknowledges each entry; with `in_flight` above 1 the `XACK`s of
/// one read go out together and the multiplexed connection pipelines them.
async fn raw_consume(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    n: usize,
    in_flight: usize,
) {
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
        let entries = reply.keys.into_iter().flat_map(|k| k.ids);
        let mut acks = futures::stream::FuturesUnordered::new();
        for entry in entries {
            std::hint::black_box(entry.map.get("event_data").expect("event_data"));
            let mut conn = conn.clone();
            let ack = async move {
                let acked: i64 = redis::cmd("XACK")
                    .arg(stream)
                    .arg(group)
                    .arg(&entry.id)
                    .query_async(&mut conn)
                    .await
                    .expect("raw XACK");
                acked
            };
            acks.push(ack);
            if acks.len() >= in_flight {
                done += acks.next().await.map_or(0, |_| 1);
            }
        }
        while acks.next().await.is_some() {
            done += 1;
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

    // raw publish, bus publish, then per ack mode raw and bus consume, then bus end to end.
    let mut best = [0f64; 8];
    let mut keep = |i: usize, r: f64| best[i] = best[i].max(r);
    for round in 0..rounds {
        let (raw_stream, bus_stream) = (format!("raw-{round}"), format!("bus-{round}"));
        let (for_raw, for_bus) = (batches(&message, n), batches(&message, n));
        let t = Instant::now();
        raw_publish(&mut raw, &raw_stream, for_raw).await;
        keep(0, rate(n, t.elapsed()));
        let t = Instant::now();
        bus_publish(&transport, &bus_stream, for_bus).await;
        keep(1, rate(n, t.elapsed()));
        for (i, in_flight) in [(2, 1), (4, READ_COUNT)] {
            let group = format!("acks-{in_flight}");
            let t = Instant::now();
            raw_consume(&mut raw, &raw_stream, &group, n, in_flight).await;
            keep(i, rate(n, t.elapsed()));
            let t = Instant::now();
            consume_acking(&transport, &bus_stream, &group, n, in_flight).await;
            keep(i + 1, rate(n, t.elapsed()));
        }
        let (published, consumed) = whole_bus(&bus, &format!("e2e-{round}"), n, BATCH).await;
        keep(6, published);
        keep(7, consumed);
        let _: () = redis::cmd("DEL")
            .arg(&raw_stream)
            .arg(&bus_stream)
            .arg(format!("e2e-{round}"))
            .query_async(&mut raw)
            .await
            .expect("DEL");
    }
    println!(
        "redis-server on loopback, {n} entries of {} bytes of Avro per round, best of {rounds} rounds",
        SAMPLE_LOGIN_DATUM.len()
    );
    print_comparison(
        "raw redis crate",
        &[
            (
                format!("publish, pipelined batches of {BATCH}"),
                best[0],
                best[1],
            ),
            (
                format!("consume + ack, reads of {READ_COUNT}, one awaited XACK at a time"),
                best[2],
                best[3],
            ),
            (
                format!("consume + ack, reads of {READ_COUNT}, up to {READ_COUNT} XACKs in flight"),
                best[4],
                best[5],
            ),
        ],
    );
    print_whole_bus((best[6], best[7]));
}
