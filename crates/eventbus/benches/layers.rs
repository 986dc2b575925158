//! What the layer stack costs on the consume path, in memory: the same 20,000 pre-published
//! events consumed by a consumer with no layers and by one with the default stack (tracing,
//! metrics, error limit, dead letters, retry, timeout), in interleaved rounds; first with nothing
//! listening, then with the Prometheus recorder installed and a tracing subscriber recording
//! every span. Run with
//! `cargo bench -p eventbus --features telemetry --bench layers`.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::{AvroRecord, Bus, BusConfig, Envelope, Event, SerializerKind, StartPosition};
use eventbus_testkit::bench::Countdown;
use eventbus_testkit::memory::MemoryBroker;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

const EVENTS: usize = 20_000;
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Source {
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.bench.layered.v1", key = "source.name")]
struct Tick {
    source: Source,
    seq: i64,
}

async fn consume_once(bus: &Bus, group: &str, layers: bool) -> Duration {
    let countdown = Countdown::new(EVENTS);
    let seen = Arc::clone(&countdown);
    let mut consumer = bus
        .consumer("ticks", group)
        .start_at(StartPosition::Earliest)
        .handle(move |_: Envelope<Tick>| {
            seen.count();
            async { Ok::<_, std::convert::Infallible>(()) }
        });
    if !layers {
        consumer = consumer.layers(|stack| {
            stack.clear();
            Ok(())
        });
    }
    let started = Instant::now();
    let handle = consumer.start().await.expect("starts");
    countdown.finished().await;
    let elapsed = started.elapsed();
    handle.shutdown().await.expect("shuts down");
    elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn phase(bus: &Bus, name: &str, phase_no: usize) -> (f64, f64) {
    let (mut bare, mut layered) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // A fresh group per run reads the same history from the start.
        let d = consume_once(bus, &format!("bare-{phase_no}-{round}"), false).await;
        bare.push(EVENTS as f64 / d.as_secs_f64());
        let d = consume_once(bus, &format!("layered-{phase_no}-{round}"), true).await;
        layered.push(EVENTS as f64 / d.as_secs_f64());
    }
    let (b, l) = (median(bare), median(layered));
    println!(
        "| {name} | {:.0} k/s | {:.0} k/s | {:.2} |",
        b / 1000.0,
        l / 1000.0,
        l / b
    );
    (b, l)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let bus = Bus::with_transport(
            MemoryBroker::new(8).transport(),
            SerializerKind::Avro,
            BusConfig::new(),
        )
        .producer_layers(|stack| {
            stack.clear();
            Ok(())
        })
        .expect("a producer without layers");
        let ticks: Vec<Tick> = (0..EVENTS)
            .map(|i| Tick {
                source: Source {
                    name: format!("s{}", i % 64),
                },
                seq: i as i64,
            })
            .collect();
        for batch in ticks.chunks(500) {
            bus.producer()
                .send_batch("ticks", batch)
                .await
                .expect("publishes");
        }
        println!("{EVENTS} events, medians of {ROUNDS} interleaved rounds, concurrency 8");
        println!("| listening | no layers | default stack | ratio |");
        println!("|---|---|---|---|");
        phase(&bus, "nothing (no recorder, no subscriber)", 0).await;
        eventbus::telemetry::prometheus().expect("the recorder installs");
        phase(&bus, "Prometheus recorder", 1).await;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        phase(
            &bus,
            "Prometheus recorder + tracing fmt subscriber at INFO (spans recorded)",
            2,
        )
        .await;
    });
}
