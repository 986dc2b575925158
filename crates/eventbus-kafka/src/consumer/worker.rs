//! One subscription's worker: the task that owns the Kafka consumer's polling.
//!
//! librdkafka wakes it when its queue has something (messages, rebalances, errors), and it
//! serves the queue without blocking; it never stops polling, so the group session never
//! starves. Each partition's messages go through a [`PartitionWindow`]: many are out at once,
//! but a key's next message only once the previous one was acknowledged, so order per key holds
//! with concurrency across keys and partitions. The offset stored (and committed by the
//! periodic auto-commit, on revocation and on close) is the end of the acknowledged prefix, so
//! nothing unacknowledged is skipped. A nacked message is handed out again after its delay, its
//! key still held.
//!
//! Acknowledgers do their part themselves, under the lock of the windows: mark the window,
//! store the offset (librdkafka's store is thread-safe and only records it) and hand out what
//! the ack unblocked. A round trip through the worker per ack was most of the consumer's cost
//! (BENCHMARKS.md); the worker is woken only when a full window gets room again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::DateTime;
use eventbus_core::transport::departures::Membership;
use eventbus_core::transport::window::PartitionWindow;
use eventbus_core::{Acknowledge, Delivery, Error, ErrorKind, Headers, Message, Position, Result};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::{mpsc, watch, Notify};

use super::group::{GroupContext, Partition};
use crate::client::failed;

pub(crate) type KafkaConsumer = BaseConsumer<GroupContext>;

/// How long closing may wait for the group to let the consumer go.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
type Deliveries = mpsc::UnboundedSender<Result<Delivery>>;

/// A message as polled: owned, so the consumer is free again.
struct Received {
    partition: Partition,
    held: Held,
}

impl From<&BorrowedMessage<'_>> for Received {
    fn from(message: &BorrowedMessage<'_>) -> Self {
        Self {
            partition: (message.topic().to_owned(), message.partition()),
            held: Held {
                message: to_message(message),
                offset: message.offset(),
                attempt: 1,
                published_at: message.timestamp().to_millis(),
            },
        }
    }
}

/// A message held in a window.
#[derive(Debug, Clone)]
struct Held {
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
}

/// The assigned partitions, behind the lock that the worker and acknowledgers share.
#[derive(Default)]
struct Partitions {
    states: HashMap<Partition, PartitionState>,
    /// Partitions with a queue of their own: read only while their window has room.
    queues: HashMap<Partition, PartitionQueue<GroupContext>>,
    next_epoch: u64,
    /// Set once the worker closed the consumer: later acks go nowhere.
    closed: bool,
}

/// What the worker and every acknowledger of a subscription reach.
struct Shared {
    /// Handed to each acknowledger.
    me: Weak<Shared>,
    consumer: Arc<KafkaConsumer>,
    partitions: Mutex<Partitions>,
    deliveries: Deliveries,
    /// Wakes the worker: librdkafka has something, or a full window got room.
    wake: Arc<Notify>,
    buffer: usize,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    membership: Membership,
}

impl Worker {
    pub(crate) fn new(
        mut consumer: KafkaConsumer,
        deliveries: Deliveries,
        buffer: usize,
        membership: Membership,
    ) -> Self {
        let wake = Arc::clone(consumer.context().wake());
        let waker = wake.clone();
        consumer.set_nonempty_callback(move || waker.notify_one());
        let consumer = Arc::new(consumer);
        consumer.context().attach(&consumer);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            consumer,
            partitions: Mutex::default(),
            deliveries,
            wake,
            buffer,
        });
        Self { shared, membership }
    }

    pub(crate) async fn run(self, mut closed: watch::Receiver<bool>) {
        let deliveries = self.shared.deliveries.clone();
        let wake = self.shared.wake.clone();
        let mut failures = 0u32;
        loop {
            self.serve_queue(&mut failures).await;
            tracing::trace!("worker idle");
            let closing = async { closed.wait_for(|c| *c).await.map(drop) };
            tokio::select! {
                _ = closing => break,
                () = deliveries.closed() => break,
                () = wake.notified() => {}
                // librdkafka's housekeeping (and a wake-up that raced the last poll).
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        self.close().await;
    }

    /// Takes everything librdkafka has ready, without blocking.
    async fn serve_queue(&self, failures: &mut u32) {
        let shared = &self.shared;
        loop {
            let error = match shared.consumer.poll(Duration::ZERO) {
                None => match shared.serve_partitions(failures) {
                    None => return,
                    Some(error) => error,
                },
                Some(Ok(message)) => {
                    *failures = 0;
                    let message = Received::from(&message);
                    shared.lock().take(shared, message);
                    continue;
                }
                Some(Err(e)) => e,
            };
            // Broker trouble shows up here; librdkafka reconnects by itself. The error goes to
            // the stream, where the core logs and counts it like every backend's.
            *failures = failures.saturating_add(1);
            tracing::debug!(error = %error, "Kafka consumer error; polling on");
            let _ = shared
                .deliveries
                .send(Err(failed(ErrorKind::Subscribe, "fetch", error)));
            tokio::time::sleep(eventbus_core::transport::reconnect_delay(*failures)).await;
        }
    }

    /// Commits what was acknowledged and leaves the group, off the async threads.
    async fn close(self) {
        {
            let mut partitions = self.shared.lock();
            partitions.closed = true;
            // Partition queues hold the consumer; they go first, so it is dropped below.
            partitions.queues.clear();
            partitions.states.clear();
        }
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
    fn lock(&self) -> MutexGuard<'_, Partitions> {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        partitions.follow_rebalances(&self.consumer);
        partitions
    }

    /// Takes the messages of partitions with a queue of their own, as far as their windows
    /// have room; a full window leaves them in librdkafka, which stops fetching ahead once its
    /// queue is full, so memory stays bounded without a pause. Returns a partition's error.
    fn serve_partitions(&self, failures: &mut u32) -> Option<KafkaError> {
        let mut partitions = self.lock();
        let queued: Vec<Partition> = partitions.queues.keys().cloned().collect();
        for partition in queued {
            loop {
                let full = partitions
                    .states
                    .get(&partition)
                    .is_some_and(|s| !s.window.has_room());
                let Some(queue) = partitions.queues.get(&partition).filter(|_| !full) else {
                    break;
                };
                let received = match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => Received::from(&message),
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, ?partition, "Kafka partition error");
                        return Some(error);
                    }
                };
                *failures = 0;
                partitions.take(self, received);
            }
        }
        None
    }

    /// Stores the offset an acknowledgement makes committable and hands out what it unblocks.
    fn acknowledge(&self, partition: &Partition, epoch: u64, offset: i64) -> Result<()> {
        let mut partitions = self.lock();
        if partitions.closed {
            return Err(gone());
        }
        let has_queue = partitions.queues.contains_key(partition);
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
            // `store_offset` stores the next offset to read, its argument + 1.
            self.consumer
                .store_offset(&partition.0, partition.1, next - 1)
                .map_err(|e| {
                    failed(ErrorKind::Subscribe, "offset store", e)
                        .with("topic", &partition.0)
                        .with("partition", partition.1)
                })?;
        }
        self.release(partition, state);
        if state.paused && state.window.len() <= self.buffer / 2 {
            state.paused = false;
            if let Err(e) = self.consumer.resume(&single(partition)) {
                tracing::warn!(error = %e, ?partition, "cannot resume a partition");
            }
        }
        if was_full && has_queue && state.window.has_room() {
            // Its queue was left unread; the worker reads it again.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// A nacked message's delay is over: hands it out again, its key still held.
    fn redeliver(&self, partition: &Partition, epoch: u64, offset: i64) {
        let mut partitions = self.lock();
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
        self.hand_out(partition, epoch, held);
    }

    /// Hands out every message of the partition whose key is free.
    fn release(&self, partition: &Partition, state: &mut PartitionState) {
        while let Some((_, held)) = state.window.next_ready() {
            let held = held.clone();
            self.hand_out(partition, state.epoch, held);
        }
    }

    fn hand_out(&self, partition: &Partition, epoch: u64, held: Held) {
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
        let mut delivery = Delivery::new(&partition.0, held.message, position, held.attempt, acker);
        if let Some(at) = held.published_at.and_then(DateTime::from_timestamp_millis) {
            delivery = delivery.published_at(at);
        }
        // A closed channel means the stream was dropped; the worker ends on its own.
        let _ = self.deliveries.send(Ok(delivery));
    }
}

impl Partitions {
    /// Forgets revoked partitions and takes the queues of assigned ones, in that order: an
    /// eager rebalance revokes a partition, then assigns it again with a new queue, which must
    /// not be dropped as revoked.
    fn follow_rebalances(&mut self, consumer: &KafkaConsumer) {
        let context = consumer.context();
        for partition in context.take_revoked() {
            self.states.remove(&partition);
            self.queues.remove(&partition);
        }
        if !self.closed {
            self.queues.extend(context.take_assigned());
        }
    }
}

impl Partitions {
    /// A message from the broker: out at once if its key is free, else in line.
    fn take(&mut self, shared: &Shared, Received { partition, held }: Received) {
        tracing::trace!(?partition, offset = held.offset, "received");
        let consumer = &shared.consumer;
        if consumer
            .context()
            .before_start(&partition, held.published_at)
        {
            // Older than the start time: read past it as if handled.
            if let Err(e) = consumer.store_offset(&partition.0, partition.1, held.offset) {
                tracing::warn!(error = %e, ?partition, "cannot store the offset of a skipped message");
            }
            return;
        }
        let has_queue = self.queues.contains_key(&partition);
        let next_epoch = &mut self.next_epoch;
        let state = self.states.entry(partition.clone()).or_insert_with(|| {
            *next_epoch += 1;
            PartitionState {
                epoch: *next_epoch,
                window: PartitionWindow::new(shared.buffer),
                paused: false,
            }
        });
        let key = held.message.key.clone();
        state.window.push(held.offset, key.as_deref(), held);
        shared.release(&partition, state);
        // A partition with its own queue is simply read no further while its window is full.
        if !state.window.has_room() && !state.paused && !has_queue {
            state.paused = true;
            if let Err(e) = consumer.pause(&single(&partition)) {
                tracing::warn!(error = %e, ?partition, "cannot pause a full partition");
            }
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
    let kafka_headers = message.headers();
    let header_values = || {
        kafka_headers
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| h.value.unwrap_or_default())
    };
    let key = message.key();
    let payload = message.payload().unwrap_or_default();
    let size = key.map_or(0, <[u8]>::len)
        + payload.len()
        + header_values().map(<[u8]>::len).sum::<usize>();
    let mut buffer = bytes::BytesMut::with_capacity(size);
    buffer.extend_from_slice(payload);
    if let Some(key) = key {
        buffer.extend_from_slice(key);
    }
    for value in header_values() {
        buffer.extend_from_slice(value);
    }
    let mut all = buffer.freeze();
    let payload = all.split_to(payload.len());
    let key = key.map(|k| all.split_to(k.len()));
    let mut headers = Headers::with_capacity(kafka_headers.map_or(0, |h| h.count()));
    for header in kafka_headers.into_iter().flat_map(|h| h.iter()) {
        let value = all.split_to(header.value.map_or(0, <[u8]>::len));
        headers.append_bytes(header.key, value);
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

#[async_trait]
impl Acknowledge for OffsetAck {
    async fn ack(self: Box<Self>) -> Result<()> {
        let shared = self.shared()?;
        shared.acknowledge(&self.partition, self.epoch, self.offset)
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<()> {
        // Checked now, so that a closed subscription says so to the caller.
        drop(self.shared()?);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(shared) = self.shared() {
                shared.redeliver(&self.partition, self.epoch, self.offset);
            }
        });
        Ok(())
    }
}
