//! Cost per event, made to be counted by `valgrind --tool=callgrind` (instructions) and by a
//! counting allocator (heap allocations): `scripts/cost.sh` runs it and prints the table.
//!
//! ```text
//! cargo bench -p eventbus-testkit --features conformance --bench cost --no-run
//! target/release/deps/cost-* PATH N      # PATH: publish | send | consume | runner | runner-bare | runner-alone | runner-waiting | floor
//! ```
//!
//! Everything runs on one current-thread runtime inside a `measured_*` function, so that
//! `--toggle-collect='cost::measured*'` counts the path and nothing of the set-up. The script
//! runs two sizes and divides the difference by the difference in events: fixed costs (starting
//! a consumer, say) cancel out.
//!
//! - `publish`: `send_batch` of Open edX login events in batches of 100 (metadata, headers,
//!   Avro encode, the publish layers, the in-memory transport).
//! - `send`: the same events one `send` each, as an application publishing one event at a
//!   time does: everything done per batch is done per event.
//! - `consume`: the consumer runner from the in-memory transport to a typed no-op receiver and
//!   the ack (decode, dispatch, default layer stack).
//! - `runner`: the same with a raw pass-through receiver (no codec), default layer stack.
//! - `runner-bare`: a raw pass-through receiver and no layers at all.
//! - `runner-alone`: the same, fed by a transport that costs nothing: deliveries made before the
//!   measured part, settled by an acknowledger that does nothing. What is left is the runner's
//!   own cost (key queue, handling set, delivery info, receiver call, settling, dropping the
//!   message); `runner-bare` minus this is the in-memory broker's.
//! - `runner-waiting`: `runner-alone` with settlements that wait a turn, as a network broker's
//!   acknowledgements do (one boxed future each, the core's `Settlement::waiting`); minus
//!   `runner-alone`, what the runner pays to keep a settlement until the broker answers.
//! - `floor`: the same prepared deliveries with no framework at all: each is taken from the
//!   stream, its payload read, acknowledged and dropped, one after the other. What any consumer
//!   of these deliveries pays; `runner-alone` minus this is what the runner adds.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::async_trait;
use eventbus_core::consumer::DeliveryInfo;
use eventbus_core::producer::Producer;
use eventbus_core::transport::{
    Acknowledge, Delivery, DeliveryStream, Position, Settlement, Subscriber, Subscription,
    Transport,
};
use eventbus_core::{Bus, BusConfig, Envelope, Message, Result, SerializerKind, TraceContext};
use eventbus_testkit::bench::Countdown;
use eventbus_testkit::memory::MemoryBroker;
use eventbus_testkit::openedx::{sample_login, SessionLoginCompleted};
use futures::StreamExt;

/// Counts heap allocations while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOPIC: &str = "cost";
const BATCH: usize = 100;

fn bus() -> Bus {
    let config = BusConfig::new().consumer(|c| c.lag_interval = None);
    Bus::with_transport(
        MemoryBroker::new(8).transport(),
        SerializerKind::Avro,
        config,
    )
}

/// Settles nothing: the `runner-alone` path leaves the broker out. A zero-sized box, so
/// making one allocates nothing either.
#[derive(Debug)]
struct Unsettled;

impl Acknowledge for Unsettled {
    fn ack(self: Box<Self>) -> Settlement {
        Settlement::done(Ok(()))
    }
    fn nack(self: Box<Self>, _delay: Duration) -> Settlement {
        Settlement::done(Ok(()))
    }
}

/// Settles a turn later, as a network broker's acknowledgement does (sent in a batch, answered
/// after a round trip): the `runner-waiting` path, where every settlement waits.
#[derive(Debug)]
struct Later;

impl Acknowledge for Later {
    fn ack(self: Box<Self>) -> Settlement {
        Settlement::waiting(async {
            tokio::task::yield_now().await;
            Ok(())
        })
    }
    fn nack(self: Box<Self>, _delay: Duration) -> Settlement {
        self.ack()
    }
}

/// Hands out deliveries made before the measured part, then waits for ever.
#[derive(Debug, Default)]
struct Prepared(Mutex<Vec<Delivery>>);

#[async_trait]
impl Subscriber for Prepared {
    async fn subscribe(&self, _subscription: Subscription) -> Result<DeliveryStream> {
        let deliveries = std::mem::take(&mut *self.0.lock().expect("not poisoned"));
        Ok(futures::stream::iter(deliveries.into_iter().map(Ok))
            .chain(futures::stream::pending())
            .boxed())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// An encoded login as an eventbus producer publishes it: its CloudEvents headers and the
/// `traceparent` its tracing layer writes, which the consumer's tracing layer reads back.
fn login_message(producer: &Producer) -> Message {
    let metadata = producer.metadata::<SessionLoginCompleted>();
    let mut message: Message = producer
        .encode(TOPIC, &sample_login(), &metadata, None)
        .expect("encodes");
    TraceContext::new_root().write_headers(&mut message.headers);
    message
}

/// A bus whose subscriber hands out `n` logins as they would come off a broker, settled at once
/// or, when `waiting`, a turn later.
fn prepared_bus(n: usize, waiting: bool) -> Bus {
    let memory = bus();
    let producer = memory.producer();
    let message = login_message(producer);
    let topic: Arc<str> = producer.settings().full_topic(TOPIC).into();
    let deliveries = (0..n)
        .map(|offset| {
            let position = Position::Offset {
                partition: 0,
                offset: offset as i64,
            };
            let acker: Box<dyn Acknowledge> = if waiting {
                Box::new(Later)
            } else {
                Box::new(Unsettled)
            };
            Delivery::new(Arc::clone(&topic), message.clone(), position, 1, acker)
        })
        .collect();
    let transport = Transport {
        subscriber: Arc::new(Prepared(Mutex::new(deliveries))),
        ..memory.transport().clone()
    };
    let config = BusConfig::new().consumer(|c| c.lag_interval = None);
    Bus::with_transport(transport, SerializerKind::Avro, config)
}

/// `n` encoded logins, published before the measured part.
async fn published(bus: &Bus, n: usize) {
    let producer = bus.producer();
    let message = login_message(producer);
    let full = producer.settings().full_topic(TOPIC);
    for _ in 0..n / BATCH {
        bus.transport()
            .publisher
            .publish(&full, vec![message.clone(); BATCH])
            .await
            .expect("publishes");
    }
}

#[inline(never)]
fn measured_publish(rt: &tokio::runtime::Runtime, bus: &Bus, events: &[SessionLoginCompleted]) {
    rt.block_on(async {
        for batch in events.chunks(BATCH) {
            bus.producer()
                .send_batch(TOPIC, batch)
                .await
                .expect("send_batch");
        }
    });
}

#[inline(never)]
fn measured_send(rt: &tokio::runtime::Runtime, bus: &Bus, events: &[SessionLoginCompleted]) {
    rt.block_on(async {
        for event in events {
            bus.producer().send(TOPIC, event).await.expect("send");
        }
    });
}

#[inline(never)]
fn measured_consume(rt: &tokio::runtime::Runtime, bus: &Bus, n: usize, mode: &str) {
    rt.block_on(async {
        let countdown = Countdown::new(n);
        let seen = Arc::clone(&countdown);
        let count = move || seen.count();
        let consumer = bus.consumer(TOPIC, "cost");
        let consumer = match mode {
            "consume" => consumer.handle(move |e: Envelope<SessionLoginCompleted>| {
                std::hint::black_box(e.event());
                count();
                async { Ok::<_, std::io::Error>(()) }
            }),
            _ => {
                let raw = consumer.handle_raw(move |d: Arc<DeliveryInfo>| {
                    std::hint::black_box(d.payload());
                    count();
                    async { Ok::<_, std::io::Error>(()) }
                });
                if matches!(mode, "runner-bare" | "runner-alone" | "runner-waiting") {
                    raw.layers(|stack| {
                        stack.clear();
                        Ok(())
                    })
                } else {
                    raw
                }
            }
        };
        let handle = consumer.start().await.expect("starts");
        countdown.finished().await;
        handle.shutdown().await.expect("shuts down");
    });
}

/// Takes every delivery, reads its payload and acknowledges it: no runner, no layers.
#[inline(never)]
fn measured_floor(rt: &tokio::runtime::Runtime, subscriber: &dyn Subscriber, n: usize) {
    rt.block_on(async {
        let mut stream = subscriber
            .subscribe(Subscription::new(TOPIC, "cost", "floor"))
            .await
            .expect("subscribes");
        for _ in 0..n {
            let delivery = stream.next().await.expect("prepared").expect("a delivery");
            std::hint::black_box(&delivery.message.payload);
            delivery.ack().await.expect("acknowledged");
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let path = args.next().unwrap_or_else(|| "consume".to_owned());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    let n = n / BATCH * BATCH;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bus = bus();
    let before;
    match path.as_str() {
        "publish" | "send" => {
            let measured = if path == "send" {
                measured_send
            } else {
                measured_publish
            };
            let events = vec![sample_login(); n];
            // One warm-up batch: schema parsing and caches are set-up, not per-event cost.
            measured(&rt, &bus, &events[..BATCH]);
            before = ALLOCATIONS.load(Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            measured(&rt, &bus, &events);
        }
        "consume" | "runner" | "runner-bare" => {
            rt.block_on(published(&bus, n));
            before = ALLOCATIONS.load(Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            measured_consume(&rt, &bus, n, &path);
        }
        "runner-alone" | "runner-waiting" => {
            let bus = prepared_bus(n, path == "runner-waiting");
            before = ALLOCATIONS.load(Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            measured_consume(&rt, &bus, n, &path);
        }
        "floor" => {
            let bus = prepared_bus(n, false);
            before = ALLOCATIONS.load(Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            measured_floor(&rt, bus.transport().subscriber.as_ref(), n);
        }
        other => {
            eprintln!(
                "unknown path {other}: publish, send, consume, runner, runner-bare, runner-alone, runner-waiting or floor"
            );
            std::process::exit(2);
        }
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("path={path} events={n} allocations={allocations}");
}
