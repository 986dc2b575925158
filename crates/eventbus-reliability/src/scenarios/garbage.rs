//! Scenario 4: hostile bytes on a topic.
//!
//! 10,000 malformed messages, ten before each of 1,000 good events, straight onto the topic
//! through the transport: random bytes, truncated Avro, a wrong schema (an unknown schema id in
//! the Confluent frame on Kafka, an event type nobody registered elsewhere), a 64 KiB header,
//! an empty key without an event id, and a `ce_type` that is not UTF-8. Every bad message must
//! reach the dead-letter topic with its reason, every good one must be handled, the consumer
//! must keep running, and memory must stay bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use eventbus::consumer::dead_letter::{self, header};
use eventbus::serializer::decode_event;
use eventbus::{Bus, Message, Serializer, SerializerKind, StartPosition, Subscription};
use futures::StreamExt;

use super::{peak_rss_mib, receive, rss_mib, unique, Scale};
use crate::ledger::Ledger;
use crate::probe::Probe;
use crate::rig::{wait_until, Backend, Path, Rig};
use crate::row::Row;

const SETTLE: Duration = Duration::from_secs(180);
/// With nothing new for this long, a backend that can hold messages back gets its readers
/// rejoined once (see [`Backend::holds_back_messages`]).
const QUIET: Duration = Duration::from_secs(20);
/// Bad messages are numbered from here, good events from 0.
const BAD: u64 = 1_000_000;
/// Each bad message carries its number in this header, which dead letters keep.
const SEQ_HEADER: &str = "x_reliability_seq";
const HUGE: usize = 1024;
const KINDS: [&str; 6] = [
    "random bytes",
    "truncated avro",
    "wrong schema",
    "huge header",
    "empty key, no id",
    "non-utf-8 type",
];

pub(super) async fn run(backend: Backend, scale: Scale) -> anyhow::Result<Row> {
    let rig = Rig::start(backend, Path::Direct).await?;
    let good = scale.pick(1_000u64, 200);
    let bad_per_good = 10u64;
    let topic = unique("garbage");
    let ledger = Ledger::default();
    let bus = rig.connect("reliability-garbage", |c| c).await?;
    let full = bus.producer().settings().full_topic(&topic);
    let template = template(&bus, backend).await?;
    let serializers = [
        SerializerKind::Avro,
        SerializerKind::ConfluentAvro,
        SerializerKind::Json,
    ]
    .map(|kind| kind.build(Arc::clone(bus.schema_store())));
    let reads_as_probe = |bytes: &[u8]| reads_as_probe(&serializers, &full, bytes);
    let rss_before = rss_mib();
    let join = || {
        receive(
            &bus,
            &topic,
            "garbage-readers",
            &ledger,
            |_| {},
            Duration::ZERO,
        )
    };
    let mut consumer = join().await.context("start the consumer")?;

    let mut refused = 0u64;
    for g in 0..good {
        let batch: Vec<(u64, Message)> = (0..bad_per_good)
            .map(|b| {
                let seq = BAD + g * bad_per_good + b;
                (seq, garbage(&template, backend, seq, &reads_as_probe))
            })
            .collect();
        for (seq, message) in batch {
            ledger.attempted();
            match bus
                .transport()
                .publisher
                .publish(&full, vec![message])
                .await
            {
                Ok(_) => ledger.acked(seq),
                Err(e) => {
                    refused += 1;
                    tracing::debug!(seq, error = %e, "the client or broker refused a bad message");
                }
            }
        }
        let probe = Probe::new(g, format!("key-{}", g % 16), 200);
        ledger.attempted();
        bus.producer().send(&topic, &probe).await?;
        ledger.acked(g);
    }

    let dlq = dead_letter::topic_for(&bus.config().consumer.dead_letter_topic, &full);
    let inspect = |member: &str| {
        let subscription = Subscription::new(&dlq, "garbage-inspector", member)
            .starting_at(StartPosition::Earliest);
        bus.transport().subscriber.subscribe(subscription)
    };
    let mut letters = inspect("inspector-1").await?;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut unnumbered = 0u64;
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut last_letter = tokio::time::Instant::now();
    let mut missing_at_rejoin = None;
    while !ledger.complete() && tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(5), letters.next()).await;
        let Ok(Some(letter)) = next else {
            if backend.holds_back_messages()
                && missing_at_rejoin.is_none()
                && last_letter.elapsed() >= QUIET
            {
                // pulsar-lite can leave a message undispatched until a consumer leaves or
                // joins (RELIABILITY.md, finding 4), on this topic or the dead letters': both
                // readers leave and join again, once.
                missing_at_rejoin = Some(ledger.counts().lost);
                drop(letters);
                consumer.shutdown().await.ok();
                consumer = join().await.context("start another consumer")?;
                letters = inspect("inspector-2").await?;
            }
            continue;
        };
        last_letter = tokio::time::Instant::now();
        let letter = letter?;
        tracing::debug!(position = %letter.position, seq = ?letter.message.headers.get(SEQ_HEADER), "dead letter");
        let h = &letter.message.headers;
        let reason = h.get(header::REASON).unwrap_or("(no reason)").to_owned();
        *reasons.entry(reason).or_insert(0) += 1;
        match h.get(SEQ_HEADER).and_then(|s| s.parse().ok()) {
            Some(seq) => ledger.received(seq),
            None => unnumbered += 1,
        }
        letter.ack().await?;
    }
    if !wait_until(Duration::from_secs(5), || ledger.complete()).await {
        tracing::warn!(missing = ?ledger.missing(10), log = %rig.log_tail(), "messages missing");
    }
    let alive = !consumer.is_finished();
    let ended = consumer.shutdown().await;
    let rss_after = rss_mib();
    bus.close().await.ok();
    if !alive {
        bail!("the consumer stopped on garbage: {ended:?}");
    }
    let reasons = reasons
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mib = |m: Option<f64>| m.map_or("?".to_owned(), |m| format!("{m:.0}"));
    let mut notes = format!(
        "{} bad ({}) among {good} good; dead letters by reason: {reasons}; RSS {} → {} MiB, peak {} MiB; consumer alive",
        good * bad_per_good,
        KINDS.join(", "),
        mib(rss_before),
        mib(rss_after),
        mib(peak_rss_mib()),
    );
    if refused > 0 {
        notes.push_str(&format!("; {refused} bad ones refused at publish"));
    }
    if unnumbered > 0 {
        notes.push_str(&format!("; {unnumbered} dead letters without their number"));
    }
    if let Some(missing) = missing_at_rejoin {
        let held = missing.saturating_sub(ledger.counts().lost);
        notes.push_str(&format!(
            "; {held} held back by the broker until the readers left and joined again (finding 4)"
        ));
    }
    Ok(Row {
        scenario: super::Scenario::Garbage.title(),
        backend: backend.name(),
        counts: ledger.counts(),
        recovery: None,
        notes,
    })
}

/// One good event as this backend writes it, read back raw from a topic of its own.
async fn template(bus: &Bus, backend: Backend) -> anyhow::Result<Message> {
    let topic = unique("garbage-template");
    bus.producer()
        .send(&topic, &Probe::new(BAD - 1, "template", 200))
        .await?;
    let full = bus.producer().settings().full_topic(&topic);
    let subscription =
        Subscription::new(&full, "template", "template-1").starting_at(StartPosition::Earliest);
    let mut stream = bus.transport().subscriber.subscribe(subscription).await?;
    let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    let delivery = next
        .ok()
        .flatten()
        .with_context(|| format!("no template event on {backend}"))??;
    let message = delivery.message.clone();
    delivery.ack().await?;
    Ok(message)
}

/// Whether `payload` happens to decode as a [`Probe`] in any wire format.
///
/// Schemaless Avro reads a datum and ignores what follows it (a newer minor version's
/// fields), so random bytes can be a valid event: a first byte for `seq`, then two short
/// strings. About one draw in 50,000 is (6 in 300,000 measured); such an event is rightly
/// handled, not dead-lettered, and the scenario counted its bad message as lost (a CI run
/// failed that way: one "random bytes" message missing on memory).
fn reads_as_probe(serializers: &[Arc<dyn Serializer>], topic: &str, payload: &[u8]) -> bool {
    serializers
        .iter()
        .any(|s| decode_event::<Probe>(s.as_ref(), topic, payload, None).is_ok())
}

/// Random bytes of up to 2,000, drawn again while they read as an event.
fn random_bytes(reads_as_probe: &dyn Fn(&[u8]) -> bool) -> Bytes {
    loop {
        let len = fastrand::usize(..2_000);
        let bytes: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
            .take(len)
            .collect();
        if !reads_as_probe(&bytes) {
            return bytes.into();
        }
    }
}

/// Bad message number `seq`, of kind `seq % 6`.
fn garbage(
    template: &Message,
    backend: Backend,
    seq: u64,
    reads_as_probe: &dyn Fn(&[u8]) -> bool,
) -> Message {
    let mut m = template.clone();
    m.headers.insert("ce_id", uuid::Uuid::new_v4().to_string());
    m.headers.insert(SEQ_HEADER, seq.to_string());
    let payload = template.payload.as_ref();
    match seq % 6 {
        0 => m.payload = random_bytes(reads_as_probe),
        1 => {
            let cut = fastrand::usize(..payload.len().max(1));
            m.payload = Bytes::copy_from_slice(&payload[..cut]);
        }
        2 if backend == Backend::Kafka && payload.len() > 5 => {
            // The Confluent frame: magic byte 0, then a schema id the registry never issued.
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(900_000_000 + (seq as u32 % 1000)).to_be_bytes());
            framed.extend_from_slice(&payload[5..]);
            m.payload = framed.into();
        }
        2 => m
            .headers
            .insert("ce_type", "org.eventbus.reliability.nobody.v1"),
        3 => {
            let huge = "h".repeat(HUGE);
            m.headers.insert("x_huge", &huge);
            m.headers
                .insert("ce_type", format!("org.eventbus.reliability.{huge}.v1"));
        }
        4 => {
            m.key = Some(Bytes::new());
            m.headers.remove("ce_id");
        }
        _ => m.headers.insert("ce_type", [0xff, 0xfe, b'x', 0xc3]),
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avro() -> [Arc<dyn Serializer>; 1] {
        [SerializerKind::Avro.build(Arc::default())]
    }

    #[test]
    fn a_few_bytes_with_anything_after_them_read_as_a_probe() {
        // seq 1, an empty key, an empty body: then whatever follows is left unread.
        assert!(reads_as_probe(&avro(), "t", &[2, 0, 0]));
        assert!(reads_as_probe(&avro(), "t", &[2, 0, 0, 0xff, 0x13, 0x80]));
        // A key longer than the payload is not an event.
        assert!(!reads_as_probe(&avro(), "t", &[2, 0x7e, 0]));
        assert!(!reads_as_probe(&avro(), "t", &[]));
    }

    #[test]
    fn random_garbage_is_drawn_again_until_it_is_not_an_event() {
        let draws = std::cell::Cell::new(0);
        let odd = random_bytes(&|b: &[u8]| {
            draws.set(draws.get() + 1);
            draws.get() < 5 || b.len() % 2 == 0
        });
        assert_eq!(odd.len() % 2, 1);
        assert!(draws.get() >= 5);
        let serializers = avro();
        for _ in 0..2_000 {
            let bytes = random_bytes(&|b: &[u8]| reads_as_probe(&serializers, "t", b));
            assert!(!reads_as_probe(&serializers, "t", &bytes));
        }
    }
}
