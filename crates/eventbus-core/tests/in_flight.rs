//! How many events a consumer handles at once: an event whose receiver waits does not hold up
//! the events after it, and no more than `concurrency` are ever being handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{Bus, BusConfig, ConsumerHandle, Envelope, Event, SerializerKind};
use eventbus_testkit::memory::MemoryBroker;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// An event without a key: the runner may handle any two of them at once.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.in_flight.job.v1")]
struct Job {
    n: i64,
}

/// What the receiver saw: events being handled now, the most at once, and the events finished.
#[derive(Default)]
struct Seen {
    now: AtomicUsize,
    most: AtomicUsize,
    finished: AtomicUsize,
}

/// A consumer of jobs whose receiver waits for a permit of `gate` before it finishes the jobs
/// `waits` picks; the others finish at once.
async fn consumer(
    bus: &Bus,
    concurrency: usize,
    gate: &Arc<Semaphore>,
    waits: fn(i64) -> bool,
) -> (ConsumerHandle, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (sink, gate) = (Arc::clone(&seen), Arc::clone(gate));
    let handle = bus
        .consumer("jobs", "g")
        .configure(|s| s.concurrency = concurrency)
        .handle(move |job: Envelope<Job>| {
            let (seen, gate) = (Arc::clone(&sink), Arc::clone(&gate));
            async move {
                let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most.fetch_max(now, Ordering::SeqCst);
                if waits(job.n) {
                    gate.acquire().await.map(|p| p.forget()).ok();
                }
                seen.now.fetch_sub(1, Ordering::SeqCst);
                seen.finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .expect("the consumer starts");
    (handle, seen)
}

async fn published(bus: &Bus, n: i64) {
    let jobs: Vec<Job> = (0..n).map(|n| Job { n }).collect();
    bus.producer()
        .send_batch("jobs", &jobs)
        .await
        .expect("published");
}

/// Waits up to ten seconds until `what` holds.
async fn until(what: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !what() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn bus() -> Bus {
    let config = BusConfig::new().consumer(|c| c.lag_interval = None);
    Bus::with_transport(
        MemoryBroker::new(1).transport(),
        SerializerKind::Avro,
        config,
    )
}

#[tokio::test]
async fn an_event_that_waits_does_not_hold_up_the_events_after_it() {
    let bus = bus();
    published(&bus, 200).await;
    let gate = Arc::new(Semaphore::new(0));
    // The first job waits, and so does the 101st while the first still does.
    let (handle, seen) = consumer(&bus, 3, &gate, |n| n == 0 || n == 100).await;
    until(|| seen.finished.load(Ordering::SeqCst) >= 198).await;
    assert_eq!(seen.finished.load(Ordering::SeqCst), 198);
    assert_eq!(seen.now.load(Ordering::SeqCst), 2, "the two that wait");
    gate.add_permits(2);
    until(|| seen.finished.load(Ordering::SeqCst) == 200).await;
    assert_eq!(seen.finished.load(Ordering::SeqCst), 200);
    assert!(seen.most.load(Ordering::SeqCst) <= 3);
    handle.shutdown().await.expect("shuts down");
}

#[tokio::test]
async fn no_more_than_concurrency_events_are_handled_at_once() {
    for concurrency in [1, 2, 5] {
        let bus = bus();
        published(&bus, 20).await;
        let gate = Arc::new(Semaphore::new(0));
        let (handle, seen) = consumer(&bus, concurrency, &gate, |_| true).await;
        until(|| seen.now.load(Ordering::SeqCst) >= concurrency).await;
        // Time for a wrong runner to start one more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.now.load(Ordering::SeqCst), concurrency);
        assert_eq!(seen.finished.load(Ordering::SeqCst), 0);
        gate.add_permits(20);
        until(|| seen.finished.load(Ordering::SeqCst) == 20).await;
        assert_eq!(seen.finished.load(Ordering::SeqCst), 20);
        assert_eq!(seen.most.load(Ordering::SeqCst), concurrency);
        handle.shutdown().await.expect("shuts down");
    }
}
