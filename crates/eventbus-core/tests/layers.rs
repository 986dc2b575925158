//! The consumer's layers and outcomes on the memory backend: receiver verdicts, skipped
//! unknown types, the handler timeout, duplicate routes, stack edits, raw consumers and sends,
//! and keys and headers of the caller's choice reaching the receiver.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::consumer::{
    ConsumerStack, Context, DeliveryInfo, Layer, Next, Outcome, UnknownEventTypes,
};
use eventbus_core::{
    async_trait, AvroRecord, Bus, BusConfig, Envelope, ErrorKind, Event, Message, SendOptions,
    SerializerKind, Verdict,
};
use eventbus_testkit::memory::MemoryBroker;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Item {
    id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.layers.job.v1", key = "item.id")]
struct Job {
    item: Item,
    action: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.layers.other.v1")]
struct Other {
    note: String,
}

fn bus() -> Bus {
    Bus::with_transport(
        MemoryBroker::new(2).transport(),
        SerializerKind::Avro,
        BusConfig::new(),
    )
}

/// Records each delivery's final outcome (name and error kind), outermost.
/// An outcome's name and its error's kind.
type Seen = (String, Option<ErrorKind>);

#[derive(Default, Clone)]
struct Outcomes(Arc<Mutex<Vec<Seen>>>);

#[async_trait]
impl Layer for Outcomes {
    fn name(&self) -> &str {
        "outcomes"
    }
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let outcome = next.run(ctx).await;
        let kind = outcome.error().map(|e| e.kind());
        self.0
            .lock()
            .unwrap()
            .push((outcome.as_str().to_owned(), kind));
        outcome
    }
}

impl Outcomes {
    fn outer(&self) -> impl FnOnce(&mut ConsumerStack) -> eventbus_core::Result<()> + Send {
        let me: Arc<dyn Layer> = Arc::new(self.clone());
        move |stack| {
            stack.push_outer(me);
            Ok(())
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.0.lock().unwrap().clone();
            if seen.len() >= n {
                return seen;
            }
            assert!(Instant::now() < deadline, "only {seen:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn job(id: i64, action: &str) -> Job {
    Job {
        item: Item { id },
        action: action.to_owned(),
    }
}

#[tokio::test]
async fn receivers_choose_skip_give_up_or_retry_after() {
    let bus = bus();
    let outcomes = Outcomes::default();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let consumer = bus
        .consumer("jobs", "workers")
        .configure(|s| {
            s.retry.max_attempts = 3;
            s.retry.base = Duration::from_secs(60); // a retry_after delay must win over this
        })
        .layers(outcomes.outer())
        .handle(move |e: Envelope<Job>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                match e.action.as_str() {
                    "skip" => Err(Verdict::skip("not ours").into()),
                    "give-up" => Err(Verdict::give_up("hopeless").into()),
                    "later" => Err(Verdict::retry_after(Duration::from_millis(5), "busy").into()),
                    _ => Ok::<_, eventbus_core::BoxError>(()),
                }
            }
        })
        .start()
        .await
        .unwrap();
    let producer = bus.producer();
    producer.send("jobs", &job(1, "skip")).await.unwrap();
    let first = outcomes.wait_for(1).await;
    producer.send("jobs", &job(1, "give-up")).await.unwrap();
    let second = outcomes.wait_for(2).await;
    producer.send("jobs", &job(1, "later")).await.unwrap();
    let third = outcomes.wait_for(3).await;
    assert_eq!(first[0].0, "skipped");
    assert_eq!(
        second[1],
        ("dead-lettered".to_owned(), Some(ErrorKind::Receiver))
    );
    assert_eq!(
        third[2],
        ("dead-lettered".to_owned(), Some(ErrorKind::Receiver))
    );
    // skip: 1 call, give up: 1 call, retry_after: all 3 attempts, 5 ms apart.
    assert_eq!(calls.load(Ordering::Relaxed), 5);
    consumer.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_types_are_dead_lettered_or_skipped_as_configured() {
    for (setting, expected) in [
        (UnknownEventTypes::DeadLetter, "dead-lettered"),
        (UnknownEventTypes::Skip, "skipped"),
    ] {
        let bus = bus();
        let outcomes = Outcomes::default();
        let consumer = bus
            .consumer("mixed", "jobs-only")
            .configure(move |s| s.unknown_event_types = setting)
            .layers(outcomes.outer())
            .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
            .start()
            .await
            .unwrap();
        bus.producer()
            .send("mixed", &Other { note: "x".into() })
            .await
            .unwrap();
        let seen = outcomes.wait_for(1).await;
        assert_eq!(seen[0].0, expected, "{setting:?}");
        consumer.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_counts_as_a_failure() {
    let bus = bus();
    let outcomes = Outcomes::default();
    let consumer = bus
        .consumer("slow", "patient")
        .configure(|s| {
            s.handler_timeout = Some(Duration::from_millis(20));
            s.retry.max_attempts = 2;
            s.retry.base = Duration::from_millis(1);
        })
        .layers(outcomes.outer())
        .handle(|_: Envelope<Job>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    bus.producer().send("slow", &job(1, "sleep")).await.unwrap();
    let seen = outcomes.wait_for(1).await;
    assert_eq!(
        seen[0],
        ("dead-lettered".to_owned(), Some(ErrorKind::Timeout))
    );
    // Two 20 ms attempts; the bound only has to tell them from the handler's 5 s sleep.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    consumer.shutdown().await.unwrap();
}

/// A layer that says it passes every delivery through, and counts the times it is run anyway.
#[derive(Default, Clone)]
struct Inert(Arc<AtomicU32>);

#[async_trait]
impl Layer for Inert {
    fn name(&self) -> &str {
        "inert"
    }
    fn passes_through(&self) -> bool {
        true
    }
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        next.run(ctx).await
    }
}

#[tokio::test]
async fn a_layer_that_passes_through_stays_in_the_stack_but_is_not_run() {
    let bus = bus();
    let outcomes = Outcomes::default();
    let inert = Inert::default();
    let layer: Arc<dyn Layer> = Arc::new(inert.clone());
    let consumer = bus
        .consumer("inert", "skips")
        .layers(outcomes.outer())
        .layers(move |stack| {
            stack.insert_before("retry", layer)?;
            // Still there by name: it can be edited like any other.
            assert!(stack.names().contains(&"inert"));
            Ok(())
        })
        .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    bus.producer().send("inert", &job(1, "go")).await.unwrap();
    assert_eq!(outcomes.wait_for(1).await[0], ("handled".to_owned(), None));
    assert_eq!(inert.0.load(Ordering::Relaxed), 0, "left out of the chain");
    consumer.shutdown().await.unwrap();
    assert!(eventbus_core::consumer::TimeoutLayer::new(None).passes_through());
    assert!(
        !eventbus_core::consumer::TimeoutLayer::new(Some(Duration::from_secs(1))).passes_through()
    );
}

#[tokio::test]
async fn a_second_route_for_a_type_and_a_bad_stack_edit_are_errors() {
    let bus = bus();
    let err = bus
        .consumer("jobs", "twice")
        .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
        .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("org.example.layers.job.v1"),
        "{err}"
    );

    let err = bus
        .consumer("jobs", "bad-edit")
        .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
        .layers(|stack| {
            stack.insert_before("no-such-layer", Arc::new(Outcomes::default()))?;
            Ok(())
        })
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("no-such-layer"), "{err}");
    assert!(
        err.to_string().contains("retry"),
        "the error lists the stack: {err}"
    );

    let defaults = ConsumerStack::defaults(&Default::default());
    assert_eq!(
        defaults.names(),
        [
            "tracing",
            "metrics",
            "error-limit",
            "dead-letter",
            "retry",
            "timeout"
        ]
    );
    let err = bus
        .consumer("jobs", "raw-and-typed")
        .handle(|_: Envelope<Job>| async { Ok::<_, std::io::Error>(()) })
        .handle_raw(|_: Arc<DeliveryInfo>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn raw_consumers_get_raw_sends_with_the_prefix_applied() {
    let bus = Bus::with_transport(
        MemoryBroker::new(2).transport(),
        SerializerKind::Avro,
        BusConfig::new().topic_prefix("stage"),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = bus
        .consumer("raw", "readers")
        .handle_raw(move |d: Arc<DeliveryInfo>| {
            let tx = tx.clone();
            async move {
                let value: serde_json::Value = d.json()?;
                tx.send((
                    d.topic().to_owned(),
                    value,
                    d.headers().get("kind").map(str::to_owned),
                ))
                .ok();
                Ok::<_, eventbus_core::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let mut message = Message {
        payload: br#"{"hello":"world"}"#.as_slice().into(),
        ..Message::default()
    };
    message.headers.insert("kind", "greeting");
    bus.producer().send_raw("raw", message).await.unwrap();
    let (topic, value, kind) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, "stage-raw");
    assert_eq!(value["hello"], "world");
    assert_eq!(kind.as_deref(), Some("greeting"));
    consumer.shutdown().await.unwrap();
}

#[tokio::test]
async fn send_with_sets_the_key_and_headers_the_receiver_reads() {
    let bus = bus();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = bus
        .consumer("keyed", "readers")
        .handle(move |e: Envelope<Job>| {
            let tx = tx.clone();
            async move {
                let d = e
                    .delivery()
                    .expect("an event from the bus has its delivery");
                tx.send((
                    d.key().map(str::to_owned),
                    d.headers().get("tenant").map(str::to_owned),
                    d.attempt(),
                    d.group().to_owned(),
                ))
                .ok();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let options = SendOptions::new()
        .key("customer-9")
        .header("tenant", "acme");
    bus.producer()
        .send_with("keyed", &job(1, "x"), options)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        (
            Some("customer-9".to_owned()),
            Some("acme".to_owned()),
            1,
            "readers".to_owned()
        )
    );
    let err = bus
        .producer()
        .send_with(
            "keyed",
            &job(1, "x"),
            SendOptions::new().header("ce_id", "mine"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("ce_id"), "{err}");
    consumer.shutdown().await.unwrap();
}

/// Panics on the first attempt of the first event it sees.
#[derive(Default, Clone)]
struct PanicsOnce(Arc<AtomicU32>);

#[async_trait]
impl Layer for PanicsOnce {
    fn name(&self) -> &str {
        "panics-once"
    }
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        if ctx.attempt() == 1 && self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in a layer");
        }
        next.run(ctx).await
    }
}

#[tokio::test]
async fn a_panicking_layer_sends_the_event_back_and_the_consumer_goes_on() {
    let bus = bus();
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = Arc::clone(&handled);
    let consumer = bus
        .consumer("jobs", "workers")
        .layer(PanicsOnce::default())
        .handle(move |e: Envelope<Job>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(e.item.id);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    for id in 1..=3 {
        bus.producer().send("jobs", &job(id, "run")).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = handled.lock().unwrap().clone();
        seen.sort_unstable();
        seen.dedup();
        if seen == [1, 2, 3] {
            break;
        }
        assert!(Instant::now() < deadline, "handled {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !consumer.is_finished(),
        "the consumer stopped on a layer's panic"
    );
    assert_eq!(
        consumer.state().in_flight(),
        0,
        "the in-flight count survived the panic"
    );
    consumer.shutdown().await.unwrap();
}
