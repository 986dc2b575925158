//! One subscription's worker: the task that owns the Kafka consumer.
//!
//! librdkafka wakes it when its queue has something (messages, rebalances, errors), and it
//! serves the queue without blocking, between acknowledgements; it never stops polling, so the
//! group session never starves. Each partition's messages go through a
//! [`PartitionWindow`]: many are out at once, but a key's next message only once the previous
//! one was acknowledged, so order per key holds with concurrency across keys and partitions.
//! The offset stored (and committed by the periodic auto-commit, on revocation and on close) is
//! the end of the acknowledged prefix, so nothing unacknowledged is skipped. A nacked message is
//! handed out again after its delay, its key still held. A partition whose window fills is
//! paused and resumed when it drains.

use std::collections::HashMap;
use std::sync::Arc;
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
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::group::{GroupContext, Partition};
use crate::client::failed;

pub(crate) type KafkaConsumer = BaseConsumer<GroupContext>;

/// How long closing may wait for the group to let the consumer go.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
type Deliveries = mpsc::UnboundedSender<Result<Delivery>>;

/// What acknowledgers tell the worker.
#[derive(Debug)]
enum Command {
    Ack {
        partition: Partition,
        epoch: u64,
        offset: i64,
        done: oneshot::Sender<Result<()>>,
    },
    Nack {
        partition: Partition,
        epoch: u64,
        offset: i64,
        delay: Duration,
    },
    /// A nack's delay is over: hand the message out again.
    Redeliver {
        partition: Partition,
        epoch: u64,
        offset: i64,
    },
}

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

/// A message held by the worker.
#[derive(Debug, Clone)]
struct Held {
    message: Message,
    offset: i64,
    attempt: u32,
    published_at: Option<i64>,
}

/// What the worker holds of one assigned partition.
#[derive(Debug)]
struct PartitionState {
    /// Distinguishes this assignment from earlier ones, so that late acks of a partition that
    /// was revoked and assigned again are ignored.
    epoch: u64,
    window: PartitionWindow<Held>,
    /// Paused because its window filled while its messages came through the main queue.
    paused: bool,
}

/// Where deliveries go out and acknowledgers send their commands.
struct Outlet {
    deliveries: Deliveries,
    commands: mpsc::UnboundedSender<Command>,
}

pub(crate) struct Worker {
    consumer: Arc<KafkaConsumer>,
    /// Partitions with a queue of their own: read only while their window has room.
    queues: HashMap<Partition, PartitionQueue<GroupContext>>,
    wake: Arc<Notify>,
    outlet: Outlet,
    commands: mpsc::UnboundedReceiver<Command>,
    partitions: HashMap<Partition, PartitionState>,
    next_epoch: u64,
    buffer: usize,
    membership: Membership,
}

impl Worker {
    pub(crate) fn new(
        mut consumer: KafkaConsumer,
        deliveries: Deliveries,
        buffer: usize,
        membership: Membership,
    ) -> Self {
        let (command_tx, commands) = mpsc::unbounded_channel();
        let wake = Arc::clone(consumer.context().wake());
        let waker = wake.clone();
        consumer.set_nonempty_callback(move || waker.notify_one());
        let consumer = Arc::new(consumer);
        consumer.context().attach(&consumer);
        Self {
            consumer,
            queues: HashMap::new(),
            wake,
            outlet: Outlet {
                deliveries,
                commands: command_tx,
            },
            commands,
            partitions: HashMap::new(),
            next_epoch: 1,
            buffer,
            membership,
        }
    }

    pub(crate) async fn run(mut self, mut closed: watch::Receiver<bool>) {
        let deliveries = self.outlet.deliveries.clone();
        let wake = self.wake.clone();
        let mut failures = 0u32;
        loop {
            self.serve_queue(&mut failures).await;
            tracing::trace!(partitions = self.partitions.len(), "worker idle");
            let closing = async { closed.wait_for(|c| *c).await.map(drop) };
            tokio::select! {
                _ = closing => break,
                () = deliveries.closed() => break,
                () = wake.notified() => {}
                Some(command) = self.commands.recv() => {
                    self.drop_revoked();
                    self.handle(command);
                    // Acks come many at a time: take them all before serving the queues again.
                    while let Ok(command) = self.commands.try_recv() {
                        self.handle(command);
                    }
                }
                // librdkafka's housekeeping (and a wake-up that raced the last poll).
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        self.close().await;
    }

    /// Takes everything librdkafka has ready, without blocking.
    async fn serve_queue(&mut self, failures: &mut u32) {
        loop {
            let error = match self.consumer.poll(Duration::ZERO) {
                None => return self.serve_partitions(failures).await,
                Some(Ok(message)) => {
                    *failures = 0;
                    let message = Received::from(&message);
                    self.drop_revoked();
                    self.take(message);
                    continue;
                }
                Some(Err(e)) => e,
            };
            // Broker trouble shows up here; librdkafka reconnects by itself. The error goes to
            // the stream, where the core logs and counts it like every backend's.
            *failures = failures.saturating_add(1);
            tracing::debug!(error = %error, "Kafka consumer error; polling on");
            let _ = self
                .outlet
                .deliveries
                .send(Err(failed(ErrorKind::Subscribe, "fetch", error)));
            tokio::time::sleep(eventbus_core::transport::reconnect_delay(*failures)).await;
        }
    }

    /// Takes the messages of partitions with a queue of their own, as far as their windows
    /// have room; a full window leaves them in librdkafka, which stops fetching ahead once its
    /// queue is full, so memory stays bounded without a pause.
    async fn serve_partitions(&mut self, failures: &mut u32) {
        // Revocations first: an eager rebalance revokes a partition, then assigns it again with a
        // new queue, which must not be dropped as revoked.
        self.drop_revoked();
        for (partition, queue) in self.consumer.context().take_assigned() {
            self.queues.insert(partition, queue);
        }
        let partitions: Vec<Partition> = self.queues.keys().cloned().collect();
        for partition in partitions {
            loop {
                let full = self
                    .partitions
                    .get(&partition)
                    .is_some_and(|s| !s.window.has_room());
                let Some(queue) = self.queues.get(&partition).filter(|_| !full) else {
                    break;
                };
                let received = match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => Ok(Received::from(&message)),
                    Some(Err(e)) => Err(e),
                };
                match received {
                    Ok(message) => {
                        *failures = 0;
                        self.take(message);
                    }
                    Err(error) => {
                        *failures = failures.saturating_add(1);
                        tracing::debug!(error = %error, ?partition, "Kafka partition error; polling on");
                        let _ = self.outlet.deliveries.send(Err(failed(
                            ErrorKind::Subscribe,
                            "fetch",
                            error,
                        )));
                        break;
                    }
                }
            }
        }
    }

    /// Commits what was acknowledged and leaves the group, off the async threads.
    async fn close(mut self) {
        // Partition queues hold the consumer; they go first, so it is dropped below.
        self.queues.clear();
        let consumer = self.consumer;
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

    fn drop_revoked(&mut self) {
        for partition in self.consumer.context().take_revoked() {
            self.partitions.remove(&partition);
            self.queues.remove(&partition);
        }
    }

    /// A message from the broker: out at once if its partition is free, else in line.
    fn take(&mut self, Received { partition, held }: Received) {
        tracing::trace!(?partition, offset = held.offset, "received");
        if self
            .consumer
            .context()
            .before_start(&partition, held.published_at)
        {
            // Older than the start time: read past it as if handled.
            if let Err(e) = self
                .consumer
                .store_offset(&partition.0, partition.1, held.offset)
            {
                tracing::warn!(error = %e, ?partition, "cannot store the offset of a skipped message");
            }
            return;
        }
        let next_epoch = &mut self.next_epoch;
        let buffer = self.buffer;
        let state = self.partitions.entry(partition.clone()).or_insert_with(|| {
            *next_epoch += 1;
            PartitionState {
                epoch: *next_epoch,
                window: PartitionWindow::new(buffer),
                paused: false,
            }
        });
        let key = held.message.key.clone();
        state.window.push(held.offset, key.as_deref(), held);
        self.outlet.release(&partition, state);
        // A partition with its own queue is simply read no further while its window is full.
        if !state.window.has_room() && !state.paused && !self.queues.contains_key(&partition) {
            state.paused = true;
            if let Err(e) = self.consumer.pause(&single(&partition)) {
                tracing::warn!(error = %e, ?partition, "cannot pause a full partition");
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Ack {
                partition,
                epoch,
                offset,
                done,
            } => {
                let result = self.acknowledge(&partition, epoch, offset);
                let _ = done.send(result);
            }
            Command::Nack {
                partition,
                epoch,
                offset,
                delay,
            } => {
                let tx = self.outlet.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Command::Redeliver {
                        partition,
                        epoch,
                        offset,
                    });
                });
            }
            Command::Redeliver {
                partition,
                epoch,
                offset,
            } => {
                let Some(state) = self
                    .partitions
                    .get_mut(&partition)
                    .filter(|s| s.epoch == epoch)
                else {
                    return;
                };
                let Some(out) = state.window.out_mut(offset) else {
                    return;
                };
                out.attempt += 1;
                let held = out.clone();
                self.outlet.hand_out(&partition, epoch, held);
            }
        }
    }

    /// Stores the offset an acknowledgement makes committable and hands out what it unblocks.
    fn acknowledge(&mut self, partition: &Partition, epoch: u64, offset: i64) -> Result<()> {
        let reassigned = || {
            // Revoked since: the next owner reads it again from the last commit.
            Error::new(
                ErrorKind::Reassigned,
                "the partition was revoked before the acknowledgement; another member will see the message again",
            )
            .with("topic", &partition.0)
            .with("partition", partition.1)
            .with("offset", offset)
        };
        let state = self
            .partitions
            .get_mut(partition)
            .filter(|s| s.epoch == epoch)
            .ok_or_else(reassigned)?;
        let committable = state.window.ack(offset).map_err(|_| reassigned())?;
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
        self.outlet.release(partition, state);
        if state.paused && state.window.len() <= self.buffer / 2 {
            state.paused = false;
            if let Err(e) = self.consumer.resume(&single(partition)) {
                tracing::warn!(error = %e, ?partition, "cannot resume a partition");
            }
        }
        Ok(())
    }
}

impl Outlet {
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
            commands: self.commands.clone(),
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
        // A closed channel means the stream was dropped; the loop ends on its own.
        let _ = self.deliveries.send(Ok(delivery));
    }
}

fn single(partition: &Partition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&partition.0, partition.1);
    tpl
}

/// The message as the core sees it: key, header values and payload byte for byte (a header
/// without a value reads as an empty one).
fn to_message(message: &BorrowedMessage<'_>) -> Message {
    let mut headers = Headers::new();
    if let Some(kafka_headers) = message.headers() {
        for header in kafka_headers.iter() {
            headers.append(header.key, header.value.unwrap_or_default());
        }
    }
    Message {
        key: message.key().map(bytes::Bytes::copy_from_slice),
        payload: message
            .payload()
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
            .into(),
        headers,
    }
}

/// Acknowledges one message through the worker.
#[derive(Debug)]
struct OffsetAck {
    commands: mpsc::UnboundedSender<Command>,
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

#[async_trait]
impl Acknowledge for OffsetAck {
    async fn ack(self: Box<Self>) -> Result<()> {
        let (done, answer) = oneshot::channel();
        let command = Command::Ack {
            partition: self.partition,
            epoch: self.epoch,
            offset: self.offset,
            done,
        };
        self.commands.send(command).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<()> {
        let command = Command::Nack {
            partition: self.partition,
            epoch: self.epoch,
            offset: self.offset,
            delay,
        };
        self.commands.send(command).map_err(|_| gone())
    }
}
