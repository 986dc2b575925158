//! One subscription's worker: the task that keeps the Kafka consumer in its group.
//!
//! librdkafka wakes it when its main queue has something (rebalances, errors, messages of a
//! partition without a queue of its own), and it serves that queue without blocking; it never
//! stops polling, so the group session never starves even while nobody reads. The messages of
//! assigned partitions wait in a queue per partition, which the subscription's stream reads
//! itself ([`super::reader`]): a hop through this task per message cost more than the rest of
//! the consumer (BENCHMARKS.md).
//!
//! Each partition's messages go through a [`PartitionWindow`]: many are out at once, but a
//! key's next message only once the previous one was acknowledged, so order per key holds
//! with concurrency across keys and partitions. The offset stored (and committed by the
//! periodic auto-commit, on revocation and on close) is the end of the acknowledged prefix, so
//! nothing unacknowledged is skipped. A nacked message is handed out again after its delay, its
//! key still held.
//!
//! Acknowledgers do their part themselves, under the lock of the windows: mark the window,
//! note the offset to store (stored in one list per batch) and hand out what the ack
//! unblocked. Whatever is handed out waits in one line of ready deliveries, under the
//! same lock, until the stream takes it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use chrono::DateTime;
use eventbus_core::transport::departures::Membership;
use eventbus_core::transport::window::PartitionWindow;
use eventbus_core::{
    Acknowledge, Delivery, Error, ErrorKind, Headers, Message, Position, Result, Settlement,
};
use futures::task::AtomicWaker;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch, Notify};

use super::group::{GroupContext, Partition, PartitionMap};
use crate::client::failed;

pub(crate) type KafkaConsumer = BaseConsumer<GroupContext>;

/// How long closing may wait for the group to let the consumer go.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message held in a window.
#[derive(Debug, Clone)]
pub(super) struct Held {
    message: Message,
    offset: i64,
    attempt: u32,
    published_at: Option<i64>,
}

/// What is held of one assigned partition.
#[derive(Debug)]
struct PartitionState {
    /// Distinguishes this assignment from earlier ones, so that late acks of a partition that
    /// was revoked and assigned again are ignored.
    epoch: u64,
    window: PartitionWindow<Held>,
    /// Paused because its window filled while its messages came through the main queue.
    paused: bool,
    /// The offset to store next, the end of the acknowledged prefix, if it moved.
    to_store: Option<i64>,
}

/// The assigned partitions, behind the lock that the worker, the stream and acknowledgers
/// share.
#[derive(Default)]
pub(super) struct Partitions {
    states: PartitionMap<PartitionState>,
    /// Partitions with a queue of their own: read only while their window has room.
    queues: PartitionMap<PartitionQueue<GroupContext>>,
    next_epoch: u64,
    /// Set once the worker closed the consumer: later acks go nowhere.
    pub(super) closed: bool,
    /// Some partition has an offset to store.
    unstored: bool,
    /// Handed out, waiting for the stream to take them.
    pub(super) ready: VecDeque<Result<Delivery>>,
}

/// What the worker, the stream and every acknowledger of a subscription reach.
pub(super) struct Shared {
    /// Handed to each acknowledger.
    me: Weak<Shared>,
    pub(super) consumer: Arc<KafkaConsumer>,
    partitions: Mutex<Partitions>,
    /// Wakes the worker: its main queue has something.
    wake: Arc<Notify>,
    /// Wakes the stream: deliveries are ready, or a partition queue it reads has messages or
    /// room again.
    pub(super) reader: Arc<AtomicWaker>,
    buffer: usize,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    membership: Membership,
    /// Resolves once the subscription's stream is dropped.
    stream_gone: oneshot::Receiver<()>,
}

impl Worker {
    /// The worker and the stream that reads what it is assigned.
    pub(crate) fn new(
        mut consumer: KafkaConsumer,
        buffer: usize,
        membership: Membership,
    ) -> (Self, super::reader::Reader) {
        let wake = Arc::clone(consumer.context().wake());
        let waker = wake.clone();
        consumer.set_nonempty_callback(move || waker.notify_one());
        let consumer = Arc::new(consumer);
        consumer.context().attach(&consumer);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            reader: Arc::clone(consumer.context().reader()),
            consumer,
            partitions: Mutex::default(),
            wake,
            buffer,
        });
        let (alive, stream_gone) = oneshot::channel();
        let reader = super::reader::Reader::new(Arc::downgrade(&shared), alive);
        let worker = Self {
            shared,
            membership,
            stream_gone,
        };
        (worker, reader)
    }

    pub(crate) async fn run(mut self, mut closed: watch::Receiver<bool>) {
        let wake = self.shared.wake.clone();
        let mut failures = 0u32;
        loop {
            self.serve_queue(&mut failures).await;
            tracing::trace!("worker idle");
            let closing = async { closed.wait_for(|c| *c).await.map(drop) };
            tokio::select! {
                _ = closing => break,
                _ = &mut self.stream_gone => break,
                () = wake.notified() => {}
                // librdkafka's housekeeping (and a wake-up that raced the last poll).
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        self.close().await;
    }

    /// Takes everything librdkafka's main queue has, without blocking.
    async fn serve_queue(&self, failures: &mut u32) {
        let shared = &self.shared;
        // A revocation served by the poll below commits what is stored.
        shared.lock().store_offsets(&shared.consumer);
        loop {
            // Only this task polls the main queue, so its messages reach the windows in order.
            let error = match shared.consumer.poll(Duration::ZERO) {
                None => return,
                Some(Ok(message)) => {
                    *failures = 0;
                    let partition = (Arc::from(message.topic()), message.partition());
                    let held = Held::from(&message);
                    let mut partitions = shared.lock();
                    partitions.take_unqueued(shared, &partition, held);
                    shared.wake_reader(partitions);
                    continue;
                }
                Some(Err(e)) => e,
            };
            // Broker trouble shows up here; librdkafka reconnects by itself. The error goes to
            // the stream, where the core logs and counts it like every backend's.
            *failures = failures.saturating_add(1);
            tracing::debug!(error = %error, "Kafka consumer error; polling on");
            {
                let mut partitions = shared.lock();
                partitions
                    .ready
                    .push_back(Err(failed(ErrorKind::Subscribe, "fetch", error)));
                shared.wake_reader(partitions);
            }
            tokio::time::sleep(eventbus_core::transport::reconnect_delay(*failures)).await;
        }
    }

    /// Commits what was acknowledged and leaves the group, off the async threads.
    async fn close(self) {
        {
            let mut partitions = self.shared.lock();
            partitions.store_offsets(&self.shared.consumer);
            partitions.closed = true;
            // Partition queues hold the consumer; they go first, so it is dropped below.
            partitions.queues.clear();
            partitions.states.clear();
        }
        // The stream ends once it has taken what is ready.
        self.shared.reader.wake();
        let consumer = Arc::clone(&self.shared.consumer);
        // Acknowledgers hold only a weak handle: the consumer ends with this task.
        drop(self.shared);
        let membership = self.membership;
        let closed = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "committing on close failed; some messages may come again"),
            }
            // Leave the group first and serve the revocation it causes until the assignment is
            // gone: closing while assignment work is in flight trips an assertion in librdkafka
            // 2.5+ that aborts the process (confluentinc/librdkafka#4792).
            let started = Instant::now();
            consumer.unsubscribe();
            while started.elapsed() < CLOSE_TIMEOUT {
                let _ = consumer.poll(Duration::from_millis(50));
                if consumer.assignment().map_or(true, |a| a.count() == 0) {
                    break;
                }
            }
            // Let the commit that unassignment sends come back.
            for _ in 0..4 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            // Then close, so that others take over at once, and destroy the client where
            // nobody waits for it (librdkafka may take seconds to stop its broker threads).
            if consumer.close_queue().is_ok() {
                while !consumer.closed() && started.elapsed() < CLOSE_TIMEOUT * 2 {
                    let _ = consumer.poll(Duration::from_millis(50));
                }
            }
            membership.gone();
            drop(consumer.context().take_assigned());
            std::thread::spawn(move || drop(consumer));
        })
        .await;
        if let Err(e) = closed {
            tracing::warn!(error = %e, "closing the Kafka consumer failed");
        }
    }
}

fn reassigned(partition: &Partition, offset: i64) -> Error {
    // Revoked since: the next owner reads it again from the last commit.
    Error::new(
        ErrorKind::Reassigned,
        "the partition was revoked before the acknowledgement; another member will see the message again",
    )
    .with("topic", &partition.0)
    .with("partition", partition.1)
    .with("offset", offset)
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Partitions> {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if partitions.follow_rebalances(&self.consumer) {
            // New queues to read, which may have filled before their callback was set.
            self.reader.wake();
        }
        partitions
    }

    /// Lets go of the lock, then wakes the stream if deliveries wait for it.
    fn wake_reader(&self, partitions: MutexGuard<'_, Partitions>) {
        let waiting = !partitions.ready.is_empty();
        drop(partitions);
        if waiting {
            self.reader.wake();
        }
    }

    /// Stores the offset an acknowledgement makes committable and hands out what it unblocks.
    fn acknowledge(&self, partition: &Partition, epoch: u64, offset: i64) -> Result<()> {
        let mut guard = self.lock();
        let partitions = &mut *guard;
        if partitions.closed {
            return Err(gone());
        }
        let ready_before = partitions.ready.len();
        let state = partitions
            .states
            .get_mut(partition)
            .filter(|s| s.epoch == epoch)
            .ok_or_else(|| reassigned(partition, offset))?;
        let was_full = !state.window.has_room();
        let committable = state
            .window
            .ack(offset)
            .map_err(|_| reassigned(partition, offset))?;
        tracing::trace!(?partition, offset, "acknowledged");
        if let Some(next) = committable {
            state.to_store = Some(next);
            partitions.unstored = true;
        }
        self.release(partition, state, &mut partitions.ready);
        if state.paused && state.window.len() <= self.buffer / 2 {
            state.paused = false;
            if let Err(e) = self.consumer.resume(&single(partition)) {
                tracing::warn!(error = %e, ?partition, "cannot resume a partition");
            }
        }
        // Its queue was left unread; the stream reads it again. (Looked up only then: most
        // acks find room in the window.)
        let room = was_full && state.window.has_room() && partitions.queues.contains_key(partition);
        let handed_out = partitions.ready.len() > ready_before;
        drop(guard);
        if room || handed_out {
            self.reader.wake();
        }
        Ok(())
    }

    /// A nacked message's delay is over: hands it out again, its key still held.
    fn redeliver(&self, partition: &Partition, epoch: u64, offset: i64) {
        let mut guard = self.lock();
        let partitions = &mut *guard;
        let Some(state) = partitions
            .states
            .get_mut(partition)
            .filter(|s| s.epoch == epoch)
        else {
            return;
        };
        let Some(out) = state.window.out_mut(offset) else {
            return;
        };
        out.attempt += 1;
        let held = out.clone();
        let delivery = self.hand_out(partition, epoch, held);
        partitions.ready.push_back(Ok(delivery));
        self.wake_reader(guard);
    }

    /// Hands out every message of the partition whose key is free.
    fn release(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        ready: &mut VecDeque<Result<Delivery>>,
    ) {
        while let Some((_, held)) = state.window.next_ready() {
            let held = held.clone();
            ready.push_back(Ok(self.hand_out(partition, state.epoch, held)));
        }
    }

    fn hand_out(&self, partition: &Partition, epoch: u64, held: Held) -> Delivery {
        tracing::trace!(
            ?partition,
            offset = held.offset,
            attempt = held.attempt,
            "handing out"
        );
        let acker = Box::new(OffsetAck {
            shared: self.me.clone(),
            partition: partition.clone(),
            epoch,
            offset: held.offset,
        });
        let position = Position::Offset {
            partition: partition.1,
            offset: held.offset,
        };
        let mut delivery = Delivery::new(
            Arc::clone(&partition.0),
            held.message,
            position,
            held.attempt,
            acker,
        );
        if let Some(at) = held.published_at.and_then(DateTime::from_timestamp_millis) {
            delivery = delivery.published_at(at);
        }
        delivery
    }
}

impl Partitions {
    /// Forgets revoked partitions and takes the queues of assigned ones, in that order: an
    /// eager rebalance revokes a partition, then assigns it again with a new queue, which must
    /// not be dropped as revoked. Returns whether queues were added.
    fn follow_rebalances(&mut self, consumer: &KafkaConsumer) -> bool {
        let context = consumer.context();
        if !context.take_rebalanced() {
            return false;
        }
        for partition in context.take_revoked() {
            self.states.remove(&partition);
            self.queues.remove(&partition);
        }
        if self.closed {
            return false;
        }
        let assigned = context.take_assigned();
        let added = !assigned.is_empty();
        self.queues.extend(assigned);
        added
    }

    /// Gives librdkafka the offsets acknowledged since the last call, in one list. Storing per
    /// ack looked the topic up by name under librdkafka's client lock every time. Called when
    /// the stream runs out of messages, before the worker serves the main queue (where a
    /// revocation commits what is stored), every 100 ms and on close; auto-commit sends the
    /// stored offsets once a second, so the delay does not show.
    pub(super) fn store_offsets(&mut self, consumer: &KafkaConsumer) {
        if !std::mem::take(&mut self.unstored) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), state) in &mut self.states {
            let Some(next) = state.to_store.take() else {
                continue;
            };
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(next)) {
                tracing::warn!(error = %e, %topic, partition, "cannot list an offset to store");
            }
        }
        if tpl.count() == 0 {
            // Their partitions were revoked since.
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile; its next owner reads from the last commit.
            tracing::debug!(error = %e, "storing acknowledged offsets failed");
        }
    }

    /// Takes the messages of partitions with a queue of their own, as far as their windows
    /// have room; a full window leaves them in librdkafka, which stops fetching ahead once its
    /// queue is full, so memory stays bounded without a pause. Polled under the lock, so that
    /// a partition's messages reach its window in order. A partition's error goes to the
    /// stream like a delivery; librdkafka paces those by its fetch backoff.
    pub(super) fn serve_partitions(&mut self, shared: &Shared) {
        let Partitions {
            states,
            queues,
            ready,
            next_epoch,
            ..
        } = self;
        for (partition, queue) in queues.iter() {
            loop {
                if states.get(partition).is_some_and(|s| !s.window.has_room()) {
                    break;
                }
                let held = match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => Held::from(&message),
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, ?partition, "Kafka partition error");
                        let error = failed(ErrorKind::Subscribe, "fetch", error)
                            .with("topic", &partition.0)
                            .with("partition", partition.1);
                        ready.push_back(Err(error));
                        break;
                    }
                };
                let state = state_of(states, next_epoch, shared.buffer, partition);
                take(shared, partition, state, ready, true, held);
            }
        }
    }

    /// A message of the main queue, from a partition without a queue of its own.
    fn take_unqueued(&mut self, shared: &Shared, partition: &Partition, held: Held) {
        let has_queue = self.queues.contains_key(partition);
        let state = state_of(
            &mut self.states,
            &mut self.next_epoch,
            shared.buffer,
            partition,
        );
        take(shared, partition, state, &mut self.ready, has_queue, held);
    }
}

/// The state of `partition`, new if it has none yet.
fn state_of<'a>(
    states: &'a mut PartitionMap<PartitionState>,
    next_epoch: &mut u64,
    buffer: usize,
    partition: &Partition,
) -> &'a mut PartitionState {
    // The clone costs a reference count; a lookup before an insert would hash twice.
    states.entry(partition.clone()).or_insert_with(|| {
        *next_epoch += 1;
        PartitionState {
            epoch: *next_epoch,
            window: PartitionWindow::new(buffer),
            paused: false,
            to_store: None,
        }
    })
}

/// A message from the broker: out at once if its key is free, else in line.
fn take(
    shared: &Shared,
    partition: &Partition,
    state: &mut PartitionState,
    ready: &mut VecDeque<Result<Delivery>>,
    has_queue: bool,
    held: Held,
) {
    tracing::trace!(?partition, offset = held.offset, "received");
    let consumer = &shared.consumer;
    if consumer
        .context()
        .before_start(partition, held.published_at)
    {
        // Older than the start time: read past it as if handled.
        if let Err(e) = consumer.store_offset(&partition.0, partition.1, held.offset) {
            tracing::warn!(error = %e, ?partition, "cannot store the offset of a skipped message");
        }
        return;
    }
    let key = held.message.key.clone();
    state.window.push(held.offset, key.as_deref(), held);
    shared.release(partition, state, ready);
    // A partition with its own queue is simply read no further while its window is full.
    if !state.window.has_room() && !state.paused && !has_queue {
        state.paused = true;
        if let Err(e) = consumer.pause(&single(partition)) {
            tracing::warn!(error = %e, ?partition, "cannot pause a full partition");
        }
    }
}

impl From<&BorrowedMessage<'_>> for Held {
    /// A message as polled: owned, so the consumer is free again.
    fn from(message: &BorrowedMessage<'_>) -> Self {
        Self {
            message: to_message(message),
            offset: message.offset(),
            attempt: 1,
            published_at: message.timestamp().to_millis(),
        }
    }
}

fn single(partition: &Partition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&partition.0, partition.1);
    tpl
}

/// The message as the core sees it: key, header values and payload byte for byte (a header
/// without a value reads as an empty one). Everything is copied out of librdkafka's buffer into
/// one allocation that the parts share; a copy per header value was a dozen allocations per
/// message.
fn to_message(message: &BorrowedMessage<'_>) -> Message {
    // Each header read costs librdkafka a lookup and Rust a UTF-8 check of its name: read once,
    // into a list sized first (collected from `flat_map`, it grew twice per message).
    let kafka_headers: Vec<(&str, &[u8])> = match message.headers() {
        Some(borrowed) => {
            let mut read = Vec::with_capacity(borrowed.count());
            read.extend(
                borrowed
                    .iter()
                    .map(|h| (h.key, h.value.unwrap_or_default())),
            );
            read
        }
        None => Vec::new(),
    };
    let key = message.key();
    let payload = message.payload().unwrap_or_default();
    let size = key.map_or(0, <[u8]>::len)
        + payload.len()
        + kafka_headers.iter().map(|(_, v)| v.len()).sum::<usize>();
    let mut buffer = bytes::BytesMut::with_capacity(size);
    buffer.extend_from_slice(payload);
    if let Some(key) = key {
        buffer.extend_from_slice(key);
    }
    for (_, value) in &kafka_headers {
        buffer.extend_from_slice(value);
    }
    let mut all = buffer.freeze();
    let payload = all.split_to(payload.len());
    let key = key.map(|k| all.split_to(k.len()));
    let mut headers = Headers::with_capacity(kafka_headers.len());
    for (name, value) in kafka_headers {
        headers.append_bytes(name, all.split_to(value.len()));
    }
    Message {
        key,
        payload,
        headers,
    }
}

/// Acknowledges one message on the windows it came from.
#[derive(Debug)]
struct OffsetAck {
    shared: Weak<Shared>,
    partition: Partition,
    epoch: u64,
    offset: i64,
}

fn gone() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the subscription was closed before the acknowledgement; the message will be delivered again",
    )
}

impl OffsetAck {
    fn shared(&self) -> Result<Arc<Shared>> {
        self.shared.upgrade().ok_or_else(gone)
    }
}

impl Acknowledge for OffsetAck {
    fn ack(self: Box<Self>) -> Settlement {
        Settlement::done(
            self.shared()
                .and_then(|shared| shared.acknowledge(&self.partition, self.epoch, self.offset)),
        )
    }

    fn nack(self: Box<Self>, delay: Duration) -> Settlement {
        // Checked now, so that a closed subscription says so to the caller.
        if let Err(e) = self.shared() {
            return Settlement::done(Err(e));
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(shared) = self.shared() {
                shared.redeliver(&self.partition, self.epoch, self.offset);
            }
        });
        Settlement::done(Ok(()))
    }
}
