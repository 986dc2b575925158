//! Cases on the consumer runner over the backend: dead letters, retries, per-key order through
//! concurrent workers, shutdown and the consecutive-errors limit. The policy is the core's; these
//! cases prove that the backend's acks, nacks and redeliveries let it work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::consumer::dead_letter::header as dlq;
use eventbus_core::{
    AvroRecord, Bus, DeliveryStream, Envelope, ErrorKind, Event, Message, StartPosition,
    TraceContext,
};
use serde::{Deserialize, Serialize};

use super::support::{check, next, require, take_acked, CaseError, Ctx, RECEIVE_TIMEOUT};
use super::{Case, CaseResultOf};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(poison_messages_dead_lettered),
        case!(retries_then_dead_letter),
        case!(runner_keeps_order_per_key),
        case!(shutdown_drains_within_timeout),
        case!(consecutive_errors_stop_consumer),
        case!(trace_context_crosses_the_broker),
        case!(a_retrying_key_holds_back_no_other_key),
    ]
}

/// Nested record of the conformance event, to exercise nested Avro records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
pub(super) struct ItemOrigin {
    /// Where it came from.
    pub(super) source: String,
}

/// The event the consumer cases publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.eventbus.conformance.item.v1", key = "key")]
pub(crate) struct ConformanceItem {
    /// Sequence number within its key.
    pub(super) seq: i64,
    /// Ordering key.
    pub(super) key: String,
    /// Nested record.
    pub(super) origin: ItemOrigin,
}

fn item(key: &str, seq: i64) -> ConformanceItem {
    ConformanceItem {
        seq,
        key: key.to_owned(),
        origin: ItemOrigin {
            source: "conformance".into(),
        },
    }
}

type Seen = Arc<Mutex<Vec<(String, i64)>>>;

fn seen(log: &Seen) -> Vec<(String, i64)> {
    log.lock().map(|v| v.clone()).unwrap_or_default()
}

async fn wait_until(what: &str, done: impl FnMut() -> bool) -> Result<(), CaseError> {
    wait_until_within(what, RECEIVE_TIMEOUT, done).await
}

async fn wait_until_within(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), CaseError> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(CaseError::Fail(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(super) async fn dead_letters(
    ctx: &Ctx,
    bus: &Bus,
    topic: &str,
    n: usize,
) -> Result<Vec<Message>, CaseError> {
    let dlq_topic = eventbus_core::consumer::dead_letter::topic_for(
        &bus.config().consumer.dead_letter_topic,
        topic,
    );
    let mut stream: DeliveryStream = ctx
        .subscribe(
            &[&dlq_topic],
            &ctx.group("dlq-reader"),
            Some(StartPosition::Earliest),
        )
        .await?;
    let mut out = Vec::new();
    while out.len() < n {
        let d = next(
            &mut stream,
            &format!("dead letter {} of {n} on {dlq_topic}", out.len() + 1),
        )
        .await?;
        out.push(d.message.clone());
        d.ack().await?;
    }
    Ok(out)
}

async fn poison_messages_dead_lettered(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let log: Seen = Arc::default();
    let sink = Arc::clone(&log);
    let handle = bus
        .consumer(&topic, &ctx.group("g"))
        .handle(move |e: Envelope<ConformanceItem>| {
            let sink = Arc::clone(&sink);
            async move {
                if let Ok(mut v) = sink.lock() {
                    v.push((e.key.clone(), e.seq));
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await?;

    let producer = bus.producer();
    let good = producer.encode(
        &topic,
        &item("k", 1),
        &producer.metadata::<ConformanceItem>(),
        Some("k".into()),
    )?;
    let mut garbage = good.clone();
    garbage.payload = vec![0xff, 0xff, 0xff].into();
    let mut unknown = good.clone();
    unknown
        .headers
        .insert("ce_type", "org.eventbus.conformance.nobody.v1");
    let mut no_id = good.clone();
    no_id.headers.remove("ce_id");
    ctx.publish(&topic, vec![garbage, unknown, no_id]).await?;
    producer.send(&topic, &item("k", 2)).await?;

    wait_until("the good event after three poison messages", || {
        seen(&log).contains(&("k".into(), 2))
    })
    .await?;
    check(!handle.is_finished(), || {
        "the consumer stopped on poison messages".into()
    })?;
    let letters = dead_letters(ctx, &bus, &topic, 3).await?;
    let reasons: BTreeSet<&str> = letters
        .iter()
        .filter_map(|m| m.headers.get(dlq::REASON))
        .collect();
    check(
        reasons == BTreeSet::from(["undecodable", "unknown-event-type", "invalid-headers"]),
        || format!("dead-letter reasons: {reasons:?}"),
    )?;
    for m in &letters {
        check(
            m.headers.get(dlq::ERROR).is_some_and(|e| !e.is_empty()),
            || "a dead letter has no error".into(),
        )?;
        check(
            m.headers.get(dlq::ORIGINAL_TOPIC) == Some(topic.as_str()),
            || "a dead letter lacks its topic".into(),
        )?;
    }
    check(seen(&log).len() == 1, || {
        format!("receiver saw {:?}", seen(&log))
    })?;
    handle.shutdown().await.map_err(Into::into)
}

async fn retries_then_dead_letter(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let calls: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let counter = Arc::clone(&calls);
    let handle = bus
        .consumer(&topic, &ctx.group("g"))
        .handle(move |e: Envelope<ConformanceItem>| {
            let counter = Arc::clone(&counter);
            async move {
                let n = {
                    let mut c = counter
                        .lock()
                        .map_err(|_| std::io::Error::other("poisoned"))?;
                    let n = c.entry(e.seq).or_insert(0);
                    *n += 1;
                    *n
                };
                match e.seq {
                    1 => Err(std::io::Error::other("always fails")),
                    2 if n < 3 => Err(std::io::Error::other("fails twice")),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .await?;
    let failing = bus.producer().send(&topic, &item("a", 1)).await?;
    bus.producer().send(&topic, &item("b", 2)).await?;
    let letters = dead_letters(ctx, &bus, &topic, 1).await?;
    let letter = &letters[0];
    check(
        letter.headers.get(dlq::REASON) == Some("receiver-failed"),
        || format!("reason {:?}", letter.headers.get(dlq::REASON)),
    )?;
    check(letter.headers.get(dlq::ATTEMPTS) == Some("3"), || {
        format!("attempts {:?}", letter.headers.get(dlq::ATTEMPTS))
    })?;
    check(
        letter.headers.get(dlq::ORIGINAL_POSITION) == Some(failing.to_string().as_str()),
        || {
            format!(
                "position {:?}, published at {failing}",
                letter.headers.get(dlq::ORIGINAL_POSITION)
            )
        },
    )?;
    check(
        letter
            .headers
            .get(dlq::ERROR)
            .is_some_and(|e| e.contains("always fails")),
        || format!("error {:?}", letter.headers.get(dlq::ERROR)),
    )?;
    wait_until("the event that succeeds on its third attempt", || {
        calls.lock().map(|c| c.get(&2) == Some(&3)).unwrap_or(false)
    })
    .await?;
    handle.shutdown().await?;
    let counts = calls.lock().map(|c| c.clone()).unwrap_or_default();
    check(counts.get(&1) == Some(&3), || {
        format!("the failing event ran {:?} times", counts.get(&1))
    })
}

async fn runner_keeps_order_per_key(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().order_per_key, "order_per_key")?;
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let keys = ["a", "b", "c", "d", "e"];
    let batch: Vec<_> = (0..20)
        .flat_map(|i| keys.iter().map(move |k| item(k, i)))
        .collect();
    bus.producer().send_batch(&topic, &batch).await?;
    let log: Seen = Arc::default();
    let sink = Arc::clone(&log);
    let handle = bus
        .consumer(&topic, &ctx.group("g"))
        .configure(|s| s.concurrency = 4)
        .handle(move |e: Envelope<ConformanceItem>| {
            let sink = Arc::clone(&sink);
            async move {
                // Uneven work, so workers race each other.
                tokio::time::sleep(Duration::from_millis((e.seq % 3) as u64)).await;
                if let Ok(mut v) = sink.lock() {
                    v.push((e.key.clone(), e.seq));
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await?;
    wait_until("100 keyed events", || seen(&log).len() >= 100).await?;
    handle.shutdown().await?;
    for k in keys {
        let seq: Vec<i64> = seen(&log)
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, s)| *s)
            .collect();
        check(seq == (0..20).collect::<Vec<_>>(), || {
            format!("key {k} handled as {seq:?}")
        })?;
    }
    Ok(())
}

async fn shutdown_drains_within_timeout(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    let log: Seen = Arc::default();
    let sink = Arc::clone(&log);
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = Arc::clone(&started);
    let handle = bus
        .consumer(&topic, &group)
        .handle(move |e: Envelope<ConformanceItem>| {
            let sink = Arc::clone(&sink);
            let signal = Arc::clone(&signal);
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(mut v) = sink.lock() {
                    v.push((e.key.clone(), e.seq));
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await?;
    let sent: Vec<_> = (0..3).map(|i| item("k", i)).collect();
    bus.producer().send_batch(&topic, &sent).await?;
    tokio::time::timeout(RECEIVE_TIMEOUT, started.notified())
        .await
        .map_err(|_| CaseError::Fail("no event started".into()))?;
    let begun = Instant::now();
    handle.shutdown().await?;
    let took = begun.elapsed();
    check(took < Duration::from_secs(10), || {
        format!("shutdown took {took:?}, over its 10 s timeout")
    })?;
    let done: BTreeSet<i64> = seen(&log).iter().map(|(_, s)| *s).collect();
    check(!done.is_empty(), || {
        "the in-flight event was abandoned instead of finished".into()
    })?;
    // Whatever was not finished is still there for the group: nothing lost.
    let mut stream = ctx.subscribe(&[&topic], &group, None).await?;
    let rest = take_acked(
        &mut stream,
        3 - done.len(),
        "the events not handled before shutdown",
    )
    .await;
    let rest = rest.map(|r| r.len()).unwrap_or(0);
    check(done.len() + rest >= 3, || {
        format!(
            "{} handled before shutdown, {rest} left for the group",
            done.len()
        )
    })
}

async fn consecutive_errors_stop_consumer(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let mut handle = bus
        .consumer(&topic, &ctx.group("g"))
        .configure(|s| {
            s.consecutive_error_limit = 3;
            s.retry.max_attempts = 1;
            s.concurrency = 1;
        })
        .handle(|_: Envelope<ConformanceItem>| async {
            Err::<(), _>(std::io::Error::other("broken dependency"))
        })
        .start()
        .await?;
    let sent: Vec<_> = (0..5).map(|i| item("k", i)).collect();
    bus.producer().send_batch(&topic, &sent).await?;
    let ended = tokio::time::timeout(RECEIVE_TIMEOUT, handle.join())
        .await
        .map_err(|_| {
            CaseError::Fail("the consumer kept running past the consecutive-errors limit".into())
        })?;
    match ended {
        Err(e) if e.kind() == ErrorKind::TooManyErrors => {
            check(e.to_string().contains("broken dependency"), || {
                format!("the error does not say why: {e}")
            })?;
        }
        other => {
            return Err(CaseError::Fail(format!(
                "the consumer ended with {other:?}"
            )))
        }
    }
    // The failures it gave up on are dead letters, not losses.
    let letters = dead_letters(ctx, &bus, &topic, 3).await?;
    check(letters.len() == 3, || {
        format!("{} dead letters", letters.len())
    })?;
    Ok(())
}

/// The `traceparent` (and `tracestate`) a receiver found, and the context it ran in.
type Traced = Arc<Mutex<Vec<(Option<String>, Option<String>, Option<TraceContext>)>>>;

fn trace_seen(log: &Traced) -> Vec<(Option<String>, Option<String>, Option<TraceContext>)> {
    log.lock().map(|v| v.clone()).unwrap_or_default()
}

/// W3C trace context rides the broker's headers: a send inside a trace reaches the receiver as
/// a child of it (`tracestate` intact), and a send from the receiver continues the same trace
/// below the receiver's own span.
async fn trace_context_crosses_the_broker(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let (first, second) = (ctx.topic("traced"), ctx.topic("traced-on"));
    let (log_first, log_second): (Traced, Traced) = (Arc::default(), Arc::default());
    let record = |log: &Traced, e: &Envelope<ConformanceItem>| {
        let headers = e.delivery().map(|d| d.headers());
        let parent = headers
            .and_then(|h| h.get("traceparent"))
            .map(str::to_owned);
        let state = headers.and_then(|h| h.get("tracestate")).map(str::to_owned);
        if let Ok(mut v) = log.lock() {
            v.push((parent, state, TraceContext::current()));
        }
    };
    let (sink, producer, onward) = (
        Arc::clone(&log_first),
        bus.producer().clone(),
        second.clone(),
    );
    let relay = bus
        .consumer(&first, &ctx.group("relay"))
        .handle(move |e: Envelope<ConformanceItem>| {
            record(&sink, &e);
            let (producer, onward) = (producer.clone(), onward.clone());
            async move { producer.send(&onward, &*e).await.map(drop) }
        })
        .start()
        .await?;
    let sink = Arc::clone(&log_second);
    let end = bus
        .consumer(&second, &ctx.group("end"))
        .handle(move |e: Envelope<ConformanceItem>| {
            record(&sink, &e);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await?;

    let root = TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        Some("vendor=eventbus"),
    )
    .ok_or_else(|| CaseError::Fail("the W3C example does not parse".into()))?;
    root.clone()
        .scope(bus.producer().send(&first, &item("t", 1)))
        .await?;
    wait_until("the relayed event", || !trace_seen(&log_second).is_empty()).await?;
    relay.shutdown().await?;
    end.shutdown().await?;

    let hops = [trace_seen(&log_first), trace_seen(&log_second)];
    let mut above = root.span_id();
    for (hop, seen) in hops.iter().enumerate() {
        let Some((Some(parent), state, Some(running))) = seen.first() else {
            return Err(CaseError::Fail(format!(
                "hop {hop}: no traceparent or no current context: {seen:?}"
            )));
        };
        let header = TraceContext::parse(parent, state.as_deref())
            .ok_or_else(|| CaseError::Fail(format!("hop {hop}: invalid traceparent {parent}")))?;
        check(header.trace_id() == root.trace_id(), || {
            format!("hop {hop}: trace {parent} is not the sender's trace")
        })?;
        check(
            header.span_id() != above && header.span_id() != root.span_id(),
            || format!("hop {hop}: {parent} names no new publish span"),
        )?;
        check(state.as_deref() == Some("vendor=eventbus"), || {
            format!("hop {hop}: tracestate {state:?}")
        })?;
        check(
            running.trace_id() == root.trace_id() && running.span_id() != header.span_id(),
            || format!("hop {hop}: the receiver ran in {running:?}, not below {parent}"),
        )?;
        above = running.span_id();
    }
    Ok(())
}

/// One key's event fails, with backoff between attempts, while a thousand events of other keys
/// arrive: they are handled during the backoff instead of waiting behind it, and the failing
/// key's later events wait for it and come in order. The failing event fails three times, then
/// goes on failing while other keys make progress (up to 10 s), so that the case neither hangs
/// on a slow broker nor depends on its speed.
async fn a_retrying_key_holds_back_no_other_key(ctx: &Ctx) -> CaseResultOf {
    const OTHERS: usize = 1_000;
    // The slow key stops failing once other keys have not moved for STALL_WINDOW, or after
    // RETRY_SPAN in all; with the wait after it, the case stays within CASE_TIMEOUT.
    const STALL_WINDOW: Duration = Duration::from_secs(5);
    const RETRY_SPAN: Duration = Duration::from_secs(25);
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let log: Seen = Arc::default();
    let others_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // When the failing event first ran, the other keys' count at the last attempt, and when
    // that count last moved.
    let first_failure: Arc<Mutex<Option<(Instant, usize, Instant)>>> = Arc::default();
    let (sink, done, failed, since) = (
        Arc::clone(&log),
        Arc::clone(&others_done),
        Arc::clone(&failures),
        Arc::clone(&first_failure),
    );
    let handle = bus
        .consumer(&topic, &ctx.group("g"))
        .configure(|s| {
            s.retry.max_attempts = 1_000;
            s.retry.base = Duration::from_millis(50);
            s.retry.cap = Duration::from_millis(50);
        })
        .handle(move |e: Envelope<ConformanceItem>| {
            let (sink, done, failed, since) = (
                Arc::clone(&sink),
                Arc::clone(&done),
                Arc::clone(&failed),
                Arc::clone(&since),
            );
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                if e.key == "slow" && e.seq == 0 {
                    let n = failed.fetch_add(1, SeqCst) + 1;
                    let others = done.load(SeqCst);
                    let mut progress = since
                        .lock()
                        .map_err(|_| std::io::Error::other("poisoned"))?;
                    let now = Instant::now();
                    let (started, seen, moved) = progress.get_or_insert((now, others, now));
                    if *seen != others {
                        (*seen, *moved) = (others, now);
                    }
                    // Three failures, then more while other keys keep moving (a broker that
                    // holds back the failing key's partition stops them short of all). The
                    // windows are wide, so that a loaded machine's pause is not taken for one.
                    let moving = now.duration_since(*moved) < STALL_WINDOW;
                    let in_time = now.duration_since(*started) < RETRY_SPAN;
                    if n <= 3 || (others < OTHERS && moving && in_time) {
                        return Err(std::io::Error::other("the slow key fails"));
                    }
                }
                if let Ok(mut v) = sink.lock() {
                    // Redeliveries are allowed; the count is of distinct events.
                    let again = v.contains(&(e.key.clone(), e.seq));
                    v.push((e.key.clone(), e.seq));
                    if e.key != "slow" && !again {
                        done.fetch_add(1, SeqCst);
                    }
                }
                Ok(())
            }
        })
        .start()
        .await?;

    let mut batch = vec![item("slow", 0)];
    for i in 0..OTHERS {
        batch.push(item(&format!("k{}", i % 50), i as i64));
        match i {
            10 => batch.push(item("slow", 1)),
            500 => batch.push(item("slow", 2)),
            _ => {}
        }
    }
    batch.push(item("slow", 3));
    for chunk in batch.chunks(100) {
        bus.producer().send_batch(&topic, chunk).await?;
    }
    wait_until_within("every event handled", RETRY_SPAN + RECEIVE_TIMEOUT, || {
        seen(&log).into_iter().collect::<BTreeSet<_>>().len() >= OTHERS + 4
    })
    .await?;
    handle.shutdown().await?;

    let log = seen(&log);
    let slow_at = |seq: i64| log.iter().position(|e| *e == ("slow".into(), seq));
    let Some(slow_done) = slow_at(0) else {
        return Err(CaseError::Fail(
            "the failing key's event was never handled".into(),
        ));
    };
    let others_before = log[..slow_done]
        .iter()
        .filter(|(k, _)| k != "slow")
        .collect::<BTreeSet<_>>()
        .len();
    let tries = failures.load(std::sync::atomic::Ordering::SeqCst);
    check(tries >= 4, || {
        format!("the slow event ran {tries} times, not 3 failures and a success")
    })?;
    // Where the broker gates a key's next message on its ack, it gates that key only: other
    // keys of the same partition flow as well as those elsewhere.
    check(others_before == OTHERS, || {
        format!("only {others_before} of {OTHERS} events of other keys were handled while one key was retrying")
    })?;
    if ctx.guarantees().order_per_key {
        let mut slow: Vec<i64> = log
            .iter()
            .filter(|(k, _)| k == "slow")
            .map(|(_, s)| *s)
            .collect();
        // A redelivered event may come again right after itself.
        slow.dedup();
        check(slow == [0, 1, 2, 3], || {
            format!("the slow key was handled as {slow:?}")
        })?;
    }
    Ok(())
}
