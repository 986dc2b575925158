//! Batch receivers on the memory backend: batches fill up to their size, close after their
//! wait, hold one event per key and keep each key's order; partial and whole failures retry or
//! dead-letter exactly the events they name.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::consumer::{BatchError, DeliveryInfo};
use eventbus_core::{AvroRecord, Bus, BusConfig, Envelope, Event, SerializerKind, Verdict};
use eventbus_testkit::memory::MemoryBroker;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Account {
    id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.batch.entry.v1", key = "account.id")]
struct Entry {
    account: Account,
    seq: i64,
    action: String,
}

fn bus() -> Bus {
    Bus::with_transport(
        MemoryBroker::new(4).transport(),
        SerializerKind::Avro,
        BusConfig::new(),
    )
}

fn entry(account: i64, seq: i64, action: &str) -> Entry {
    Entry {
        account: Account { id: account },
        seq,
        action: action.to_owned(),
    }
}

/// Every batch the receiver got, as (account, seq) pairs.
type Batches = Arc<Mutex<Vec<Vec<(i64, i64)>>>>;

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fill_up_hold_one_event_per_key_and_keep_each_keys_order() {
    let bus = bus();
    let events: Vec<Entry> = (0..2_000).map(|i| entry(i % 200, i / 200, "ok")).collect();
    // Published before the consumer starts, so batches can fill.
    for chunk in events.chunks(500) {
        bus.producer().send_batch("ledger", chunk).await.unwrap();
    }
    let batches: Batches = Arc::default();
    let seen = Arc::clone(&batches);
    let consumer = bus
        .consumer("ledger", "booking")
        // A wait long enough that a loaded machine's pause does not close batches early.
        .handle_batch(
            64,
            Duration::from_millis(500),
            move |batch: Vec<Envelope<Entry>>| {
                let seen = Arc::clone(&seen);
                async move {
                    let rows = batch.iter().map(|e| (e.account.id, e.seq)).collect();
                    seen.lock().unwrap().push(rows);
                    Ok::<_, BatchError>(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    wait_until("2,000 events", || {
        batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 2_000
    })
    .await;
    consumer.shutdown().await.unwrap();

    let batches = batches.lock().unwrap().clone();
    let mut last: HashMap<i64, i64> = HashMap::new();
    let mut handled = HashSet::new();
    for batch in &batches {
        assert!(batch.len() <= 64, "a batch of {}", batch.len());
        let keys: HashSet<i64> = batch.iter().map(|(account, _)| *account).collect();
        assert_eq!(
            keys.len(),
            batch.len(),
            "two events of one key in {batch:?}"
        );
        for &(account, seq) in batch {
            if let Some(before) = last.insert(account, seq) {
                assert!(seq > before, "account {account}: {seq} after {before}");
            }
            assert!(handled.insert((account, seq)), "({account}, {seq}) twice");
        }
    }
    assert_eq!(handled.len(), 2_000);
    let full = batches.iter().filter(|b| b.len() == 64).count();
    assert!(
        full * 2 >= batches.len(),
        "most batches should be full with 2,000 events waiting: sizes {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_batch_that_does_not_fill_goes_after_its_wait() {
    let bus = bus();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    let consumer = bus
        .consumer("ledger", "slow-trickle")
        .handle_batch(
            100,
            Duration::from_millis(200),
            move |batch: Vec<Envelope<Entry>>| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push((Instant::now(), batch.len()));
                    Ok::<_, BatchError>(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    let sent = Instant::now();
    bus.producer()
        .send_batch(
            "ledger",
            &[entry(1, 0, "ok"), entry(2, 0, "ok"), entry(3, 0, "ok")],
        )
        .await
        .unwrap();
    wait_until("the batch", || !got.lock().unwrap().is_empty()).await;
    let (at, size) = got.lock().unwrap()[0];
    assert_eq!(size, 3);
    let waited = at - sent;
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "the batch went after {waited:?}"
    );
    consumer.shutdown().await.unwrap();
}

/// Counts the dead letters of `topic` by their `dlq_reason`.
async fn dead_letters(
    bus: &Bus,
    topic: &str,
) -> (eventbus_core::ConsumerHandle, Arc<Mutex<Vec<String>>>) {
    let letters = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&letters);
    let handle = bus
        .consumer(topic, "dlq-reader")
        .handle_raw(move |d: Arc<DeliveryInfo>| {
            let seen = Arc::clone(&seen);
            async move {
                let reason = d.headers().get("dlq_reason").unwrap_or("none").to_owned();
                let error = d.headers().get("dlq_error").unwrap_or("").to_owned();
                seen.lock().unwrap().push(format!("{reason}: {error}"));
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    (handle, letters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_retry_or_dead_letter_only_the_named_events() {
    let bus = bus();
    let (dlq, letters) = dead_letters(&bus, "ledger.dlq").await;
    let attempts: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (tries, done) = (Arc::clone(&attempts), Arc::clone(&handled));
    let consumer = bus
        .consumer("ledger", "booking")
        .configure(|s| {
            s.retry.max_attempts = 3;
            s.retry.base = Duration::from_millis(20);
        })
        .handle_batch(
            10,
            Duration::from_millis(30),
            move |batch: Vec<Envelope<Entry>>| {
                let (tries, done) = (Arc::clone(&tries), Arc::clone(&done));
                async move {
                    let mut failed = BatchError::partial();
                    for (i, e) in batch.iter().enumerate() {
                        let attempt = {
                            let mut tries = tries.lock().unwrap();
                            let n = tries.entry(e.account.id).or_default();
                            *n += 1;
                            *n
                        };
                        match e.action.as_str() {
                            "flaky" if attempt == 1 => {
                                failed = failed.fail(i, "flaky the first time")
                            }
                            "poison" => {
                                failed = failed.fail(i, Verdict::give_up("cannot book this"))
                            }
                            "broken" => failed = failed.fail(i, "always broken"),
                            _ => done.lock().unwrap().push(e.account.id),
                        }
                    }
                    Err::<(), _>(failed)
                }
            },
        )
        .start()
        .await
        .unwrap();
    let mut events: Vec<Entry> = (0..20).map(|i| entry(i, 0, "ok")).collect();
    events.push(entry(100, 0, "flaky"));
    events.push(entry(101, 0, "poison"));
    events.push(entry(102, 0, "broken"));
    bus.producer().send_batch("ledger", &events).await.unwrap();

    wait_until("21 handled and 2 dead letters", || {
        handled.lock().unwrap().len() >= 21 && letters.lock().unwrap().len() >= 2
    })
    .await;
    consumer.shutdown().await.unwrap();
    dlq.shutdown().await.unwrap();

    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    let mut expected: Vec<i64> = (0..20).collect();
    expected.push(100);
    assert_eq!(
        handled, expected,
        "every good event once, the flaky one on its retry"
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts[&0], 1,
        "a good event is not retried for its neighbours"
    );
    assert_eq!(attempts[&100], 2);
    assert_eq!(attempts[&101], 1, "a give-up verdict dead-letters at once");
    assert_eq!(
        attempts[&102], 3,
        "a plain failure is retried up to max_attempts"
    );
    let mut letters = letters.lock().unwrap().clone();
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.starts_with("receiver-failed: ")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.contains("always broken")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.contains("cannot book this")),
        "{letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_batch_failure_retries_every_event_and_they_are_batched_again() {
    let bus = bus();
    let calls = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (counter, done) = (Arc::clone(&calls), Arc::clone(&handled));
    let consumer = bus
        .consumer("ledger", "booking")
        .configure(|s| s.retry.base = Duration::from_millis(20))
        .handle_batch(
            50,
            Duration::from_millis(30),
            move |batch: Vec<Envelope<Entry>>| {
                let (counter, done) = (Arc::clone(&counter), Arc::clone(&done));
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first batch meets a database outage: `?` fails it as a whole.
                        Err(std::io::Error::other("database unavailable"))?;
                    }
                    done.fetch_add(batch.len(), Ordering::SeqCst);
                    Ok::<_, BatchError>(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    let events: Vec<Entry> = (0..30).map(|i| entry(i, 0, "ok")).collect();
    bus.producer().send_batch("ledger", &events).await.unwrap();
    wait_until("30 handled", || handled.load(Ordering::SeqCst) >= 30).await;
    consumer.shutdown().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 30);
    // Failed together, retried after the same backoff, so gathered again: a handful of calls.
    let calls = calls.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&calls),
        "{calls} batch calls for 30 events"
    );
}

#[tokio::test]
async fn a_batch_route_is_one_route_of_its_type() {
    let bus = bus();
    let twice = bus
        .consumer("ledger", "booking")
        .handle(|_: Envelope<Entry>| async { Ok::<_, std::io::Error>(()) })
        .handle_batch(
            10,
            Duration::from_millis(10),
            |_: Vec<Envelope<Entry>>| async { Ok::<_, BatchError>(()) },
        )
        .start()
        .await;
    let error = twice.expect_err("two routes for one type are refused");
    assert_eq!(error.kind(), eventbus_core::ErrorKind::Config);
    assert!(
        error.to_string().contains("org.example.batch.entry.v1"),
        "{error}"
    );
}
