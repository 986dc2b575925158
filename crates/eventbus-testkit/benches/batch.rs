//! Batch receivers against one-event receivers on the in-memory bus: what gathering costs when
//! the receiver does nothing, and what it gains when each call has a fixed cost (a round trip
//! to a database that takes many rows in one statement, modelled as a 1 ms sleep per call).
//!
//! ```text
//! cargo bench -p eventbus-testkit --features conformance --bench batch
//! ```
//!
//! `EVENTBUS_BENCH_MESSAGES` (default 20000) and `EVENTBUS_BENCH_ROUNDS` (default 3) scale it;
//! rounds alternate which receiver goes first, the best round of each counts.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_core::consumer::BatchError;
use eventbus_core::{Bus, BusConfig, Envelope, SerializerKind};
use eventbus_testkit::bench::{env_or, rate};
use eventbus_testkit::memory::MemoryBroker;
use eventbus_testkit::openedx::{sample_login, SessionLoginCompleted};

const BATCH: usize = 100;
const WAIT: Duration = Duration::from_millis(5);

/// Publishes `n` logins with 256 user ids as keys.
async fn publish(bus: &Bus, topic: &str, n: usize) {
    let events: Vec<_> = (0..n)
        .map(|i| {
            let mut e = sample_login();
            e.user.id = (i % 256) as i64;
            e
        })
        .collect();
    for chunk in events.chunks(500) {
        bus.producer()
            .send_batch(topic, chunk)
            .await
            .expect("send_batch");
    }
}

/// Consumes `n` events one at a time (concurrency 8) or in batches; `call` is each receiver
/// call's fixed cost. Returns events per second.
async fn consume(bus: &Bus, topic: &str, n: usize, batched: bool, call: Duration) -> f64 {
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let count = move |k: usize, seen: &AtomicUsize, done: &tokio::sync::Notify| {
        if seen.fetch_add(k, Ordering::Relaxed) + k >= n {
            done.notify_one();
        }
    };
    let consumer = bus.consumer(topic, "bench");
    let (s, d) = (seen.clone(), done.clone());
    let consumer = if batched {
        consumer.handle_batch(
            BATCH,
            WAIT,
            move |batch: Vec<Envelope<SessionLoginCompleted>>| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    if !call.is_zero() {
                        tokio::time::sleep(call).await;
                    }
                    count(batch.len(), &s, &d);
                    Ok::<_, BatchError>(())
                }
            },
        )
    } else {
        consumer.handle(move |e: Envelope<SessionLoginCompleted>| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                std::hint::black_box(e.event());
                if !call.is_zero() {
                    tokio::time::sleep(call).await;
                }
                count(1, &s, &d);
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let t = Instant::now();
    let handle = consumer.start().await.expect("start");
    done.notified().await;
    let took = rate(n, t.elapsed());
    handle.shutdown().await.expect("shutdown");
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("EVENTBUS_BENCH_MESSAGES", 20_000);
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 3);
    let bus = Bus::with_transport(
        MemoryBroker::new(8).transport(),
        SerializerKind::Avro,
        BusConfig::new(),
    );
    let cases = [
        ("no-op receiver", Duration::ZERO),
        ("1 ms per receiver call", Duration::from_millis(1)),
    ];
    println!("memory, {n} events per round (256 keys), best of {rounds} rounds");
    println!(
        "| receiver | `handle` (concurrency 8) | `handle_batch({BATCH}, 5 ms)` | batch / one |"
    );
    println!("|---|---|---|---|");
    for (case, (name, call)) in cases.into_iter().enumerate() {
        // A fixed-cost call makes one-at-a-time slow: fewer events keep the round short.
        let n = if call.is_zero() { n } else { n / 10 };
        let mut best = [0f64; 2];
        for round in 0..rounds {
            let first_batched = round % 2 == 1;
            for batched in [first_batched, !first_batched] {
                let topic = format!("batch-{case}-{round}-{batched}");
                publish(&bus, &topic, n).await;
                let r = consume(&bus, &topic, n, batched, call).await;
                let slot = &mut best[usize::from(batched)];
                *slot = slot.max(r);
            }
        }
        println!(
            "| {name} | {:.0} events/s | {:.0} events/s | {:.2} |",
            best[0],
            best[1],
            best[1] / best[0]
        );
    }
}
