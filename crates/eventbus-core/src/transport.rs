//! The transport contract: the few traits a backend implements, and the values they exchange.
//!
//! A backend maps its broker onto [`Publisher`] and [`Subscriber`] and declares its
//! [`Guarantees`]; it holds no policy. Retries, dead letters, dispatch and ordering across
//! events handled at once live in the core's consumer runner.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::Stream;

use crate::error::{Error, ErrorKind, Result};

pub mod ack_batch;
pub mod departures;
pub mod window;

/// Message headers: ordered name/value pairs. Names are text; values are bytes, so a binary
/// value survives every backend unchanged (the CloudEvents attributes are UTF-8 text). A name may
/// repeat (Kafka allows it), which is why this is not a map.
///
/// The names eventbus itself writes (CloudEvents attributes, trace context, dead-letter fields)
/// are kept as static strings whichever way they arrive, so copying headers, which every
/// delivery of an in-memory topic and every dead letter does, copies no name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Cow<'static, str>, Bytes)>);

/// The header names stored without an allocation of their own, or `None` for another name.
/// A `match` rather than a search of a list: it tells most names apart by their length, and
/// it runs for every header of every message a backend reads off its wire.
fn known_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "ce_id" => "ce_id",
        "ce_type" => "ce_type",
        "ce_source" => "ce_source",
        "ce_specversion" => "ce_specversion",
        "ce_time" => "ce_time",
        "ce_minorversion" => "ce_minorversion",
        "sourcehost" => "sourcehost",
        "sourcelib" => "sourcelib",
        "content-type" => "content-type",
        "ce_datacontenttype" => "ce_datacontenttype",
        "traceparent" => "traceparent",
        "tracestate" => "tracestate",
        _ => return None,
    })
}

/// A known name is looked up before anything is allocated: a backend reading a header name
/// from its wire (`&str`) allocates only for the names eventbus does not know.
fn header_name<N: AsRef<str> + Into<String>>(name: N) -> Cow<'static, str> {
    match known_name(name.as_ref()) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.into()),
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// No headers, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// The first value of `name` as text; `None` when absent or not UTF-8 (see
    /// [`Headers::get_bytes`]).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name`, as it was sent.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get_shared(name).map(Bytes::as_ref)
    }

    /// The first value of `name`, shared rather than copied.
    pub(crate) fn get_shared(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `name` to `value`, removing earlier values of `name`.
    pub fn insert(&mut self, name: impl AsRef<str> + Into<String>, value: impl AsRef<[u8]>) {
        let name = header_name(name);
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, Bytes::copy_from_slice(value.as_ref())));
    }

    /// [`Headers::insert`] for a name known at compile time and a value that is moved in, not
    /// copied: the producer's fast path.
    pub fn insert_static(&mut self, name: &'static str, value: impl Into<Bytes>) {
        self.remove(name);
        self.0.push((Cow::Borrowed(name), value.into()));
    }

    /// Adds a value of a name known at compile time, keeping earlier ones; the value is moved in.
    pub(crate) fn push_static(&mut self, name: &'static str, value: Bytes) {
        self.0.push((Cow::Borrowed(name), value));
    }

    /// Adds a value of `name`, keeping earlier ones.
    pub fn append(&mut self, name: impl AsRef<str> + Into<String>, value: impl AsRef<[u8]>) {
        self.0
            .push((header_name(name), Bytes::copy_from_slice(value.as_ref())));
    }

    /// [`Headers::append`] with a value that is moved in, not copied: a backend that copies a
    /// whole message out of its client's buffer at once hands out slices of that one copy.
    pub fn append_bytes(&mut self, name: impl AsRef<str> + Into<String>, value: Bytes) {
        self.0.push((header_name(name), value));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        // Most often there is nothing to remove (a layer writing `traceparent` into a new
        // message): looking costs less than `retain`'s pass, which moves every entry.
        if self.0.iter().any(|(n, _)| n == name) {
            self.0.retain(|(n, _)| n != name);
        }
    }

    /// All pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: AsRef<str> + Into<String>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (header_name(n), Bytes::copy_from_slice(v.as_ref())))
                .collect(),
        )
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Text values read as text; others as escaped bytes.
        f.debug_map()
            .entries(self.0.iter().map(|(n, v)| (n, ValueDebug(v))))
            .finish()
    }
}

struct ValueDebug<'a>(&'a [u8]);

impl fmt::Debug for ValueDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) => fmt::Debug::fmt(text, f),
            Err(_) => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// One message as a broker carries it: key, payload and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Ordering and partitioning key, as bytes on the wire: UTF-8 text for most formats,
    /// Confluent-framed Avro on Kafka (see [`Serializer::encode_key`](crate::Serializer::encode_key)).
    pub key: Option<Bytes>,
    /// Encoded event.
    pub payload: Bytes,
    /// CloudEvents attributes and anything else.
    pub headers: Headers,
}

/// Where a message sits in its topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// A partition and offset (Kafka, the memory backend).
    Offset {
        /// Partition number.
        partition: i32,
        /// Offset in the partition.
        offset: i64,
    },
    /// A Redis stream entry id such as `1700000000000-0`.
    StreamId(String),
    /// A broker-specific message id (Pulsar).
    MessageId(String),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset { partition, offset } => write!(f, "{partition}@{offset}"),
            Position::StreamId(id) | Position::MessageId(id) => f.write_str(id),
        }
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPosition {
    /// The oldest message the broker keeps.
    Earliest,
    /// Only messages published after subscribing.
    Latest,
    /// The first message published at or after this time.
    Time(DateTime<Utc>),
    /// A backend-native position (a Redis stream id, for instance).
    At(String),
}

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Full topic names (prefix already applied).
    pub topics: Vec<String>,
    /// Consumer group; every group gets every message, members of one group share them.
    pub group: String,
    /// This member's name within the group.
    pub consumer: String,
    /// `None`: an existing group resumes where it was and a new group starts at the earliest
    /// message. `Some`: the group is moved to this position.
    pub start: Option<StartPosition>,
    /// How the backend batches acknowledgements, where its broker takes many in one command.
    pub acks: ack_batch::AckBatching,
}

impl Subscription {
    /// A subscription to one topic.
    pub fn new(
        topic: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            topics: vec![topic.into()],
            group: group.into(),
            consumer: consumer.into(),
            start: None,
            acks: ack_batch::AckBatching::default(),
        }
    }

    /// Moves the group to `start`.
    #[must_use]
    pub fn starting_at(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// Batches acknowledgements this way.
    #[must_use]
    pub fn batching_acks(mut self, acks: ack_batch::AckBatching) -> Self {
        self.acks = acks;
        self
    }

    /// Refuses a subscription no backend can serve: without topics or without a group.
    pub fn check(&self) -> Result<()> {
        if self.topics.is_empty() || self.group.is_empty() {
            return Err(Error::new(
                ErrorKind::Subscribe,
                "a subscription needs at least one topic and a group name",
            )
            .with("group", &self.group));
        }
        Ok(())
    }
}

/// Acknowledges one delivery to its broker. Implemented by backends.
///
/// The methods return a [`Settlement`] rather than being `async`: most backends settle without
/// waiting (they record an offset or queue a command) and say so with [`Settlement::done`],
/// which spares the consumer a boxed future per event; a backend that waits for its broker's
/// answer returns [`Settlement::waiting`].
pub trait Acknowledge: Send + Sync + fmt::Debug {
    /// Marks the message processed.
    fn ack(self: Box<Self>) -> Settlement;
    /// Asks for the message again after `delay`.
    fn nack(self: Box<Self>, delay: Duration) -> Settlement;
}

/// How an acknowledgement ends: already settled, or once the broker answers. A future of the
/// result either way.
#[must_use = "a settlement does nothing until awaited"]
pub struct Settlement(SettlementState);

enum SettlementState {
    Done(Option<Result<()>>),
    Waiting(BoxFuture<'static, Result<()>>),
}

impl Settlement {
    /// Settled already, with this result.
    pub fn done(result: Result<()>) -> Self {
        Self(SettlementState::Done(Some(result)))
    }

    /// Settled when `answer` completes (the broker confirmed, say).
    pub fn waiting(answer: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Self(SettlementState::Waiting(Box::pin(answer)))
    }
}

impl From<Result<()>> for Settlement {
    fn from(result: Result<()>) -> Self {
        Self::done(result)
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SettlementState::Done(result) => f.debug_tuple("Done").field(result).finish(),
            SettlementState::Waiting(_) => f.write_str("Waiting"),
        }
    }
}

impl Future for Settlement {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            SettlementState::Done(result) => match result.take() {
                Some(result) => Poll::Ready(result),
                None => Poll::Ready(Err(Error::new(
                    ErrorKind::Closed,
                    "the settlement was awaited again after it completed",
                ))),
            },
            SettlementState::Waiting(answer) => answer.as_mut().poll(cx),
        }
    }
}

/// A message received from a subscription, with where it came from and how to acknowledge it.
///
/// Dropping a delivery without [`Delivery::ack`] or [`Delivery::nack`] hands it back: it is
/// nacked without delay, so the broker delivers it again (to this member or another) instead of
/// holding it until a rebalance. Backends need not handle this themselves.
#[derive(Debug)]
pub struct Delivery {
    /// The full topic it was read from. Shared: a backend hands every delivery of a topic a
    /// clone of one name rather than a copy of it.
    pub topic: Arc<str>,
    /// The message.
    pub message: Message,
    /// Its place in the topic.
    pub position: Position,
    /// 1 on first delivery, higher when redelivered (where the broker counts).
    pub attempt: u32,
    /// When the broker stored it, where known.
    pub published_at: Option<DateTime<Utc>>,
    acker: Option<Box<dyn Acknowledge>>,
}

impl Delivery {
    /// Assembles a delivery. Used by backends, which pass the topic as an `Arc<str>` they keep
    /// (a `&str` or `String` works too, at the cost of a copy per delivery).
    pub fn new(
        topic: impl Into<Arc<str>>,
        message: Message,
        position: Position,
        attempt: u32,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            topic: topic.into(),
            message,
            position,
            attempt,
            published_at: None,
            acker: Some(acker),
        }
    }

    /// Records when the broker stored the message.
    #[must_use]
    pub fn published_at(mut self, at: DateTime<Utc>) -> Self {
        self.published_at = Some(at);
        self
    }

    /// Marks the message processed.
    ///
    /// The acknowledgement is handed to the backend now; the [`Settlement`] resolves once the
    /// broker has it. Most backends settle at once, so a caller with many deliveries can poll
    /// it once (`FutureExt::now_or_never`) and keep only those that wait: it is `Unpin`.
    pub fn ack(self) -> Settlement {
        self.settle(None)
    }

    /// Asks for the message again after `delay`; handed to the backend now, like [`Delivery::ack`].
    pub fn nack(self, delay: Duration) -> Settlement {
        self.settle(Some(delay))
    }

    /// An ack (`None`) or a nack after the delay: one future type for both, so the consumer
    /// runner keeps its settlements in one set. The acknowledger's settlement is made now, so
    /// what the runner holds while the broker answers is that and no copy of the delivery.
    pub(crate) fn settle(mut self, nack: Option<Duration>) -> Settlement {
        // Only `ack`/`nack` (which consume the delivery) and `drop` take the acknowledger.
        settle(self.acker.take(), nack, &self.position)
    }

    /// Takes the delivery apart: its information moves out whole (the position too, with
    /// nothing copied), and its acknowledger with it. Whoever holds the acknowledger then
    /// settles the delivery, or hands it back ([`hand_back`]) when dropping it unsettled, as
    /// the delivery would have.
    pub(crate) fn into_parts(mut self) -> (DeliveryParts, Option<Box<dyn Acknowledge>>) {
        // What is left is dropped without its acknowledger, so it hands nothing back and its
        // stand-in position is never read.
        let stand_in = Position::Offset {
            partition: 0,
            offset: 0,
        };
        let parts = DeliveryParts {
            topic: Arc::clone(&self.topic),
            message: std::mem::take(&mut self.message),
            position: std::mem::replace(&mut self.position, stand_in),
            attempt: self.attempt,
            published_at: self.published_at,
        };
        (parts, self.acker.take())
    }
}

/// A delivery's information, without the means to settle it ([`Delivery::into_parts`]).
pub(crate) struct DeliveryParts {
    pub(crate) topic: Arc<str>,
    pub(crate) message: Message,
    pub(crate) position: Position,
    pub(crate) attempt: u32,
    pub(crate) published_at: Option<DateTime<Utc>>,
}

/// An ack (`None`) or a nack after the delay, by the acknowledger a delivery held: `None`
/// when it was taken already, an error naming the delivery's position.
pub(crate) fn settle(
    acker: Option<Box<dyn Acknowledge>>,
    nack: Option<Duration>,
    position: &Position,
) -> Settlement {
    match (acker, nack) {
        (Some(acker), None) => acker.ack(),
        (Some(acker), Some(delay)) => acker.nack(delay),
        (None, _) => Settlement::done(Err(Error::new(
            ErrorKind::Closed,
            "the delivery was already settled",
        )
        .with("position", position))),
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            hand_back(acker, &self.topic, &self.position);
        }
    }
}

/// Nacks a delivery that was dropped unsettled, without delay, so that the broker delivers it
/// again (to this member or another) instead of holding it until a rebalance.
pub(crate) fn hand_back(acker: Box<dyn Acknowledge>, topic: &Arc<str>, position: &Position) {
    // Outside a runtime the acker is simply dropped; the broker redelivers when this member
    // leaves its group.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut nack = acker.nack(Duration::ZERO);
    // Most backends settle without I/O (a command to their reader task): do it now, so the
    // message is back before the drop returns; otherwise finish on the runtime.
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    if let Poll::Ready(result) = Pin::new(&mut nack).poll(&mut cx) {
        log_dropped_nack(result, topic, position);
        return;
    }
    let (topic, position) = (Arc::clone(topic), position.clone());
    runtime.spawn(async move { log_dropped_nack(nack.await, &topic, &position) });
}

fn log_dropped_nack(result: Result<()>, topic: &str, position: &Position) {
    match result {
        Ok(()) => {
            tracing::debug!(%topic, %position, "a dropped delivery was handed back for redelivery")
        }
        Err(e) => {
            tracing::debug!(%topic, %position, error = %e, "handing back a dropped delivery failed; the broker redelivers it when this member leaves")
        }
    }
}

/// The stream of deliveries of one subscription. Dropping it leaves the group.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;

/// Publishes messages. Implemented by backends.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Publishes a batch to one full topic name, in order; returns once the broker has every
    /// message, with their positions.
    async fn publish(&self, topic: &str, batch: Vec<Message>) -> Result<Vec<Position>>;
    /// Waits until everything published so far is with the broker.
    async fn flush(&self) -> Result<()>;
    /// Flushes, then refuses further publishing with [`ErrorKind::Closed`].
    async fn close(&self) -> Result<()>;
}

/// Opens subscriptions. Implemented by backends.
#[async_trait]
pub trait Subscriber: Send + Sync + fmt::Debug {
    /// Joins `subscription.group` and streams its deliveries.
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream>;
    /// Ends every open subscription; their streams end.
    async fn close(&self) -> Result<()>;
    /// Asks the broker for a sign of life (readiness checks): `Ok` once it answered.
    async fn check(&self) -> Result<()>;
    /// How many messages of each topic `group` has not received yet, where the broker can tell
    /// (an empty list where it cannot).
    async fn lag(&self, topics: &[String], group: &str) -> Result<Vec<(String, u64)>> {
        let _ = (topics, group);
        Ok(Vec::new())
    }
}

/// What a backend promises. The consumer runner and the conformance suite both read it, and the
/// suite checks each promise both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guarantees {
    /// Messages with the same key arrive in publish order.
    pub order_per_key: bool,
    /// The next message of a key is not delivered before the previous one is acknowledged.
    pub ack_gates_next: bool,
    /// A nacked message comes back after its delay.
    pub redelivery_after_nack: bool,
    /// Members of one group share the messages.
    pub shared_groups: bool,
    /// A new group can read messages published before it existed.
    pub history_for_new_groups: bool,
    /// A group can start from a point in time.
    pub replay_from_time: bool,
    /// Published messages survive a broker restart.
    pub survives_restart: bool,
    /// Unacknowledged deliveries stay with the member's name (Redis pending entries): a member
    /// that comes back under the same name takes them back at once, one under a new name leaves
    /// them for others to claim after their idle time. The consumer warns when it has no stable
    /// name on such a backend.
    pub pending_per_member: bool,
}

/// A connected backend: its publisher, its subscriber and what it guarantees.
#[derive(Clone, Debug)]
pub struct Transport {
    /// Backend name, e.g. `memory`.
    pub backend: &'static str,
    /// The publishing side.
    pub publisher: Arc<dyn Publisher>,
    /// The consuming side.
    pub subscriber: Arc<dyn Subscriber>,
    /// What the backend promises.
    pub guarantees: Guarantees,
    /// Where Confluent-framed Avro gets its schema ids; backends of other formats have none.
    pub schema_registry: Option<Arc<dyn crate::schema_registry::SchemaRegistry>>,
}

/// The error every backend returns for use after close.
pub fn closed_error(what: &str) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("the {what} was closed; create a new one to go on"),
    )
}

/// How long a backend waits before reconnecting after its `failures`-th failure in a row:
/// 100 ms doubling to 5 s. One schedule for every backend's reconnect loop.
pub fn reconnect_delay(failures: u32) -> Duration {
    const RECONNECT: crate::consumer::RetryPolicy = crate::consumer::RetryPolicy {
        max_attempts: u32::MAX,
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };
    RECONNECT.delay(failures.max(1))
}

/// The close rule every publisher follows: a publish after close fails with
/// [`ErrorKind::Closed`], and close returns only once the publishes in flight have their answer.
#[derive(Debug, Default)]
pub struct PublishGate {
    closed: std::sync::atomic::AtomicBool,
    in_flight: tokio::sync::RwLock<()>,
}

impl PublishGate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits one publish to `topic` for as long as the guard lives, or fails if closed; `what`
    /// names the publisher in the error.
    pub async fn enter(
        &self,
        what: &str,
        topic: &str,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>> {
        let guard = self.in_flight.read().await;
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(closed_error(what).with("topic", topic));
        }
        Ok(guard)
    }

    /// Waits until every publish admitted so far has finished.
    pub async fn drain(&self) {
        drop(self.in_flight.write().await);
    }

    /// Refuses new publishes and waits for those in flight.
    pub async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.drain().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_settlement_is_ready_at_once_or_when_the_broker_answers() {
        use futures::FutureExt;
        let mut done = Settlement::done(Ok(()));
        assert!(matches!((&mut done).now_or_never(), Some(Ok(()))));
        let again = (&mut done).now_or_never();
        assert!(
            matches!(&again, Some(Err(e)) if e.kind() == ErrorKind::Closed),
            "{again:?}"
        );

        let (answer, answered) = tokio::sync::oneshot::channel::<Result<()>>();
        let mut waiting = Settlement::waiting(async move {
            answered
                .await
                .unwrap_or_else(|_| Err(closed_error("test broker")))
        });
        assert!((&mut waiting).now_or_never().is_none(), "no answer yet");
        answer
            .send(Err(Error::new(ErrorKind::Connection, "the broker hung up")))
            .ok();
        let settled = waiting.await;
        assert!(
            matches!(&settled, Err(e) if e.kind() == ErrorKind::Connection),
            "{settled:?}"
        );
    }

    /// Records which way it was settled, when it is called.
    #[derive(Debug)]
    struct Recorder(Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Acknowledge for Recorder {
        fn ack(self: Box<Self>) -> Settlement {
            self.0.lock().expect("not poisoned").push("ack");
            Settlement::done(Ok(()))
        }
        fn nack(self: Box<Self>, _delay: Duration) -> Settlement {
            self.0.lock().expect("not poisoned").push("nack");
            Settlement::done(Ok(()))
        }
    }

    #[tokio::test]
    async fn ack_and_nack_reach_the_backend_at_the_call() {
        use futures::FutureExt;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let delivery = |offset| {
            let position = Position::Offset {
                partition: 0,
                offset,
            };
            let acker = Box::new(Recorder(Arc::clone(&seen)));
            Delivery::new("t", Message::default(), position, 1, acker)
        };
        let mut acked = delivery(1).ack();
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            ["ack"],
            "before any poll"
        );
        // Unpin: polled once in place, then kept or awaited.
        assert!(matches!((&mut acked).now_or_never(), Some(Ok(()))));
        let nacked = delivery(2).nack(Duration::from_secs(1));
        assert_eq!(*seen.lock().expect("not poisoned"), ["ack", "nack"]);
        nacked.await.expect("settled");
        // Dropped unsettled: handed back once, as a nack.
        drop(delivery(3));
        assert_eq!(*seen.lock().expect("not poisoned"), ["ack", "nack", "nack"]);
    }

    #[test]
    fn every_name_eventbus_writes_is_known() {
        use crate::metadata::header;
        use crate::telemetry::trace_context::{TRACEPARENT, TRACESTATE};
        let names = [
            header::ID,
            header::TYPE,
            header::SOURCE,
            header::SPEC_VERSION,
            header::TIME,
            header::MINOR_VERSION,
            header::SOURCE_HOST,
            header::SOURCE_LIB,
            header::CONTENT_TYPE,
            header::DATA_CONTENT_TYPE,
            TRACEPARENT,
            TRACESTATE,
        ];
        for name in names {
            assert!(
                matches!(header_name(name.to_owned()), Cow::Borrowed(known) if known == name),
                "{name}"
            );
        }
        for other in ["ce_idx", "ce_i", "CE_ID", "tenant", ""] {
            assert!(
                matches!(header_name(other), Cow::Owned(n) if n == other),
                "{other}"
            );
        }
    }

    #[test]
    fn known_header_names_are_kept_without_an_allocation() {
        let mut headers: Headers = [("ce_id", "1"), ("tenant", "acme")].into_iter().collect();
        headers.append(String::from("traceparent"), "00-…");
        headers.insert_static("ce_type", String::from("t"));
        let borrowed: Vec<bool> = headers
            .0
            .iter()
            .map(|(n, _)| matches!(n, Cow::Borrowed(_)))
            .collect();
        assert_eq!(borrowed, [true, false, true, true]);
        headers.insert_static("ce_id", Bytes::from_static(b"2"));
        assert_eq!(headers.get("ce_id"), Some("2"));
        assert_eq!(headers.get_all("ce_id").count(), 1);
        assert_eq!(headers.get("tenant"), Some("acme"));
        assert_eq!(
            headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["tenant", "traceparent", "ce_type", "ce_id"]
        );
    }
}
