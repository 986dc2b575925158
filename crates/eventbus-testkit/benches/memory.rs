//! In-memory throughput: the transport alone (publish, deliver, ack) and end to end through
//! producer, Avro, consumer runner and a no-op receiver, with one consumer and with two in the
//! group. Run with
//! `cargo bench -p eventbus-testkit --features conformance --bench memory`.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use eventbus_core::{Bus, BusConfig, Envelope, Event, Message, SerializerKind, Subscription};
use eventbus_testkit::bench::Countdown;
use eventbus_testkit::memory::MemoryBroker;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

const EVENTS: usize = 20_000;
const BATCH: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.bench.tick.v1", key = "source")]
struct Tick {
    source: String,
    seq: i64,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn transport_once() -> Duration {
    let transport = MemoryBroker::new(8).transport();
    let batches: Vec<Vec<Message>> = (0..EVENTS / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| Message {
                    key: Some(format!("k{}", (b * BATCH + i) % 64).into()),
                    payload: vec![0u8; 64].into(),
                    headers: Default::default(),
                })
                .collect()
        })
        .collect();
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("ticks", "bench", "c1"))
        .await
        .expect("subscribes");
    let started = Instant::now();
    let publisher = Arc::clone(&transport.publisher);
    let producing = tokio::spawn(async move {
        for batch in batches {
            publisher.publish("ticks", batch).await.expect("publishes");
        }
    });
    for _ in 0..EVENTS {
        let delivery = stream.next().await.expect("open").expect("delivery");
        delivery.ack().await.expect("acks");
    }
    let elapsed = started.elapsed();
    producing.await.expect("producer task");
    elapsed
}

/// Publishes `EVENTS` typed events and waits until `consumers` consumers of one group, each a
/// task of its own, have handled them all.
async fn end_to_end(consumers: usize) -> Duration {
    let bus = Bus::with_transport(
        MemoryBroker::new(8).transport(),
        SerializerKind::Avro,
        BusConfig::new(),
    );
    let countdown = Countdown::new(EVENTS);
    let mut handles = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        let seen = Arc::clone(&countdown);
        let handle = bus
            .consumer("ticks", "bench")
            .configure(|s| s.concurrency = 8)
            .handle(move |_: Envelope<Tick>| {
                seen.count();
                async { Ok::<_, std::convert::Infallible>(()) }
            })
            .start()
            .await
            .expect("starts");
        handles.push(handle);
    }
    let events: Vec<Vec<Tick>> = (0..EVENTS / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| Tick {
                    source: format!("s{}", i % 64),
                    seq: (b * BATCH + i) as i64,
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in &events {
        bus.producer()
            .send_batch("ticks", batch)
            .await
            .expect("publishes");
    }
    countdown.finished().await;
    let elapsed = started.elapsed();
    for handle in handles {
        handle.shutdown().await.expect("shuts down");
    }
    elapsed
}

/// The time `iters` runs of `once` measured, one after the other.
fn total<F: Future<Output = Duration>>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    once: impl Fn() -> F,
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += once().await;
        }
        total
    })
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.bench_function("transport_publish_deliver_ack", |b| {
        b.iter_custom(|iters| total(&rt, iters, transport_once))
    });
    group.bench_function("end_to_end_avro_noop_receiver", |b| {
        b.iter_custom(|iters| total(&rt, iters, || end_to_end(1)))
    });
    // The same with two consumers in the group, as an application with CPU to spare runs them:
    // the memory broker splits the eight partitions between them.
    group.bench_function("end_to_end_two_consumers", |b| {
        b.iter_custom(|iters| total(&rt, iters, || end_to_end(2)))
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
