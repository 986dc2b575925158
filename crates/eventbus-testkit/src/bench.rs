//! What the backends' throughput benches share: their knobs, the rate they report, and the
//! eventbus side of the consume and whole-bus rows, which is the same code on every broker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_core::{Bus, Envelope, Subscription, Transport};
use futures::{FutureExt, StreamExt};
use tokio::sync::Notify;

use crate::openedx::{sample_login, SessionLoginCompleted};

/// The value of the environment variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Messages per second.
pub fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// Subscribes `group` to `topic` and takes `n` deliveries, acknowledging each with up to
/// `in_flight` acknowledgements waiting at once. Returns the time from the first delivery to
/// the last acknowledgement (joining a group can take seconds on some brokers). Panics on any
/// error: it is for benches.
///
/// Each acknowledgement is polled once and kept only if it waits for the broker, as the
/// consumer runner does: many finish at once (Kafka's offset store), and keeping those in a set
/// would charge eventbus a node and a wake-up per message that no user pays.
pub async fn consume_acking(
    transport: &Transport,
    topic: &str,
    group: &str,
    n: usize,
    in_flight: usize,
) -> Duration {
    let mut deliveries = transport
        .subscriber
        .subscribe(Subscription::new(topic, group, "c"))
        .await
        .expect("eventbus subscribe");
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut first = None;
    for _ in 0..n {
        let d = deliveries.next().await.expect("open").expect("delivery");
        first.get_or_insert_with(Instant::now);
        std::hint::black_box(&d.message.payload);
        let mut ack = d.ack();
        match (&mut ack).now_or_never() {
            Some(acked) => acked.expect("eventbus ack"),
            None => acks.push(ack),
        }
        if acks.len() >= in_flight {
            acks.next().await.expect("one ack").expect("eventbus ack");
        }
    }
    while let Some(acked) = acks.next().await {
        acked.expect("eventbus ack");
    }
    first.map(|t| t.elapsed()).unwrap_or_default()
}

/// Counts the events a bench's receiver sees and wakes whoever waits for the last of them.
/// Waited for, not polled in a loop: a spinning waiter would take a core from the consumer
/// being measured.
#[derive(Debug)]
pub struct Countdown {
    seen: AtomicUsize,
    of: usize,
    done: Notify,
}

impl Countdown {
    /// A countdown of `of` events, to share with the receiver.
    pub fn new(of: usize) -> Arc<Self> {
        Arc::new(Self {
            seen: AtomicUsize::new(0),
            of,
            done: Notify::new(),
        })
    }

    /// One event seen.
    pub fn count(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.of {
            self.done.notify_one();
        }
    }

    /// Returns once all of them have been seen, before or after this is called.
    pub async fn finished(&self) {
        self.done.notified().await;
    }
}

/// The whole bus: `n` Open edX logins encoded to Avro and published in batches of `batch`,
/// then decoded and dispatched to a receiver by the core's consumer runner, which acknowledges
/// each. Returns (published, consumed) events per second.
pub async fn whole_bus(bus: &Bus, topic: &str, n: usize, batch: usize) -> (f64, f64) {
    let events = vec![sample_login(); batch];
    let t = Instant::now();
    for _ in 0..n / batch {
        bus.producer()
            .send_batch(topic, &events)
            .await
            .expect("send_batch");
    }
    let published = rate(n, t.elapsed());
    let countdown = Countdown::new(n);
    let seen = Arc::clone(&countdown);
    let t = Instant::now();
    let consumer = bus
        .consumer(topic, "bus-e2e")
        .handle(move |e: Envelope<SessionLoginCompleted>| {
            std::hint::black_box(e.event());
            seen.count();
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .expect("start consumer");
    countdown.finished().await;
    let consumed = rate(n, t.elapsed());
    consumer.shutdown().await.expect("shutdown");
    (published, consumed)
}

/// Prints the comparison table in Markdown: one row per `(path, raw, eventbus)` in messages
/// per second, with the eventbus/raw ratio; `client` names the raw client's column.
pub fn print_comparison(client: &str, rows: &[(String, f64, f64)]) {
    println!("| path | {client} | eventbus | ratio |");
    println!("|---|---|---|---|");
    for (path, raw, bus) in rows {
        println!(
            "| {path} | {raw:.0} msg/s | {bus:.0} msg/s | {:.2} |",
            bus / raw
        );
    }
}

/// Prints the two rows of a [`whole_bus`] result under the comparison table.
pub fn print_whole_bus((published, consumed): (f64, f64)) {
    println!(
        "| whole bus: send_batch of typed events (Avro encode) | | {published:.0} events/s | |"
    );
    println!(
        "| whole bus: consumer runner (decode, dispatch, ack; concurrency 8) | | {consumed:.0} events/s | |"
    );
}

/// Publish → handled latency below saturation: `n` Open edX logins sent one `send` at a time at
/// `per_second`, each timed from just before its `send` to the moment the consumer runner hands
/// it to the receiver. One event first, untimed, so that joining the group is not counted.
/// Returns the 50th and 99th percentiles. Panics on any error: it is for benches.
pub async fn latency(bus: &Bus, topic: &str, per_second: u32, n: usize) -> (Duration, Duration) {
    type Sent = Arc<std::sync::Mutex<Vec<Option<Instant>>>>;
    let sent: Sent = Arc::new(std::sync::Mutex::new(vec![None; n + 1]));
    let took = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let handled = Arc::new(AtomicUsize::new(0));
    let (sent_at, samples, count) = (sent.clone(), took.clone(), handled.clone());
    let consumer = bus
        .consumer(topic, "bus-latency")
        .handle(move |e: Envelope<SessionLoginCompleted>| {
            let now = Instant::now();
            let seq = usize::try_from(e.user.id).unwrap_or(0);
            let started = sent_at
                .lock()
                .ok()
                .and_then(|s| s.get(seq).copied().flatten());
            if let (Some(started), Ok(mut samples)) = (started, samples.lock()) {
                samples.push(now - started);
            }
            count.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .expect("start consumer");
    let send = |seq: usize| {
        let mut event = sample_login();
        event.user.id = seq as i64;
        event
    };
    // The warm-up event (sequence 0, untimed).
    bus.producer().send(topic, &send(0)).await.expect("send");
    while handled.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    for seq in 1..=n {
        tick.tick().await;
        if let Ok(mut s) = sent.lock() {
            s[seq] = Some(Instant::now());
        }
        bus.producer().send(topic, &send(seq)).await.expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled.load(Ordering::Relaxed) < n + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.shutdown().await.expect("shutdown");
    let mut samples = took.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        samples.len() >= n,
        "only {} of {n} events handled",
        samples.len()
    );
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Prints a [`latency`] result as a line of its own.
pub fn print_latency(backend: &str, per_second: u32, n: usize, (p50, p99): (Duration, Duration)) {
    println!(
        "latency on {backend}: {n} events at {per_second}/s, publish → handled p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
