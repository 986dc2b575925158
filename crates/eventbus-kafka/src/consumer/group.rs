//! The group side of a subscription: what happens when partitions are assigned and revoked.
//!
//! On assignment, partitions this subscription sees for the first time start where it asked
//! (earliest, latest, a time, or given offsets); others go on from the group's committed
//! offsets. On revocation, the offsets stored so far are committed synchronously before the
//! partitions go, and the worker is told to drop what it holds of them, so nothing acknowledged
//! is lost and nothing unacknowledged is skipped by the next owner.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use eventbus_core::StartPosition;
use futures::task::AtomicWaker;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::{watch, Notify};

/// A partition of a topic; the topic's name is shared, as every delivery's acknowledger holds
/// it.
pub(crate) type Partition = (Arc<str>, i32);

/// Per-partition state, looked up on every message and ack: foldhash rather than SipHash.
pub(crate) type PartitionMap<V> =
    std::collections::HashMap<Partition, V, foldhash::fast::RandomState>;

/// Shared by the librdkafka callbacks and the worker.
#[derive(Debug)]
pub(crate) struct GroupContext {
    start: Option<StartPosition>,
    /// Partitions whose start position was applied; later assignments resume from commits.
    started: Mutex<HashSet<Partition>>,
    /// For partitions started from a time: skip messages older than it. The broker's answer to
    /// "offsets for times" is where reading starts; this makes a coarse or wrong answer harmless
    /// (tansu 0.6 answers the earliest offset whatever the time).
    not_before: Mutex<std::collections::HashMap<Partition, i64>>,
    /// Whether `not_before` may hold anything: spares each message the lock when it does not.
    has_floors: AtomicBool,
    /// Partitions revoked since the worker last looked.
    revoked: Mutex<Vec<Partition>>,
    /// The consumer itself, to give each assigned partition a queue of its own.
    consumer: OnceLock<Weak<BaseConsumer<GroupContext>>>,
    /// Queues of partitions assigned since the worker last looked.
    assigned: Assigned,
    /// Set when partitions were assigned or revoked: spares every lock of the windows two more
    /// locks to find that nothing changed.
    rebalanced: AtomicBool,
    /// Wakes the worker when the main queue has something.
    wake: Arc<Notify>,
    /// Wakes the subscription's stream when a partition queue has something.
    reader: Arc<AtomicWaker>,
    /// Becomes true at the first assignment, even an empty one.
    joined: watch::Sender<bool>,
}

/// Partition queues on their way from the rebalance callback to the worker.
#[derive(Default)]
struct Assigned(Mutex<Vec<(Partition, PartitionQueue<GroupContext>)>>);

impl std::fmt::Debug for Assigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self.0.lock().map(|q| q.len()).unwrap_or_default();
        f.debug_struct("Assigned").field("queues", &queued).finish()
    }
}

impl GroupContext {
    pub(crate) fn new(start: Option<StartPosition>) -> Self {
        Self {
            start,
            started: Mutex::new(HashSet::new()),
            not_before: Mutex::new(std::collections::HashMap::new()),
            has_floors: AtomicBool::new(false),
            revoked: Mutex::new(Vec::new()),
            consumer: OnceLock::new(),
            assigned: Assigned::default(),
            rebalanced: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            reader: Arc::new(AtomicWaker::new()),
            joined: watch::Sender::new(false),
        }
    }

    /// Lets the rebalance callback split partition queues off `consumer`; before its first poll.
    pub(crate) fn attach(&self, consumer: &Arc<BaseConsumer<GroupContext>>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// What wakes the worker: the main queue has something.
    pub(crate) fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// What wakes the stream: a partition queue has something.
    pub(crate) fn reader(&self) -> &Arc<AtomicWaker> {
        &self.reader
    }

    /// Whether partitions were assigned or revoked since the last call.
    pub(crate) fn take_rebalanced(&self) -> bool {
        self.rebalanced.load(Ordering::Relaxed) && self.rebalanced.swap(false, Ordering::AcqRel)
    }

    /// The queues of partitions assigned since the last call.
    pub(crate) fn take_assigned(&self) -> Vec<(Partition, PartitionQueue<GroupContext>)> {
        std::mem::take(&mut *self.assigned.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Gives each partition of `tpl` a queue of its own, so the worker can stop taking one
    /// partition's messages (its window is full) without pausing it, which would drop what
    /// librdkafka has fetched ahead, and without ceasing to serve the group.
    fn split_queues(&self, tpl: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut queues = Vec::new();
        for e in tpl.elements() {
            match consumer.split_partition_queue(e.topic(), e.partition()) {
                Some(mut queue) => {
                    // Called by librdkafka with the queue locked: it must not wait on a lock.
                    let reader = Arc::clone(&self.reader);
                    queue.set_nonempty_callback(move || reader.wake());
                    queues.push(((Arc::from(e.topic()), e.partition()), queue));
                }
                // Its messages keep coming through the main queue.
                None => tracing::debug!(
                    topic = e.topic(),
                    partition = e.partition(),
                    "no queue of its own for a partition"
                ),
            }
        }
        self.assigned
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(queues);
        self.rebalanced.store(true, Ordering::Release);
    }

    /// Whether a message of `partition` with timestamp `millis` comes before the start time;
    /// the first one that does not ends the check for its partition.
    pub(crate) fn before_start(&self, partition: &Partition, millis: Option<i64>) -> bool {
        if !self.has_floors.load(Ordering::Acquire) {
            return false;
        }
        let mut floors = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        match (floors.get(partition), millis) {
            (Some(floor), Some(ts)) if ts < *floor => true,
            (Some(_), _) => {
                floors.remove(partition);
                // Under the lock that adding floors takes too.
                if floors.is_empty() {
                    self.has_floors.store(false, Ordering::Release);
                }
                false
            }
            (None, _) => false,
        }
    }

    /// Resolves once the group has given this member its first assignment.
    pub(crate) fn joined(&self) -> watch::Receiver<bool> {
        self.joined.subscribe()
    }

    /// The partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sets the start offsets of partitions seen for the first time.
    fn apply_start(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let Some(start) = &self.start else { return };
        let fresh: Vec<Partition> = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            tpl.elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .filter(|p| started.insert(p.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        if let StartPosition::Time(t) = start {
            let mut floors = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
            floors.extend(fresh.iter().map(|p| (p.clone(), t.timestamp_millis())));
            self.has_floors.store(true, Ordering::Release);
        }
        let offsets = match start_offsets(consumer, start, &fresh) {
            Ok(offsets) => offsets,
            Err(e) => {
                tracing::warn!(error = %e, ?start, "cannot resolve the start position; resuming from committed offsets");
                return;
            }
        };
        for ((topic, partition), offset) in fresh.iter().zip(offsets) {
            if let Some(offset) = offset {
                if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                    tracing::warn!(error = %e, %topic, partition, "cannot set the start offset");
                }
            }
        }
    }
}

/// How long the rebalance callback waits for a partition's end offset on a `Latest` start.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// The offset each partition starts at, `None` to resume from the group's commit.
fn start_offsets(
    consumer: &BaseConsumer<GroupContext>,
    start: &StartPosition,
    partitions: &[Partition],
) -> Result<Vec<Option<Offset>>, KafkaError> {
    Ok(match start {
        StartPosition::Earliest => vec![Some(Offset::Beginning); partitions.len()],
        // The end as of the assignment, which `subscribe` waits for: `Offset::End` would be
        // looked up later, after messages published meanwhile, and skip them.
        // After one failure the rest are not asked, so an unreachable broker costs one timeout.
        StartPosition::Latest => {
            let mut reachable = true;
            partitions
                .iter()
                .map(|(topic, partition)| {
                    let ends = reachable
                        .then(|| consumer.fetch_watermarks(topic, *partition, WATERMARK_TIMEOUT));
                    Some(match ends {
                        Some(Ok((_, high))) => Offset::Offset(high),
                        Some(Err(e)) => {
                            reachable = false;
                            tracing::debug!(error = %e, %topic, partition, "cannot read the end offset; starting at the end librdkafka finds");
                            Offset::End
                        }
                        None => Offset::End,
                    })
                })
                .collect()
        }
        StartPosition::Time(t) => {
            let mut query = TopicPartitionList::new();
            for (topic, partition) in partitions {
                query.add_partition_offset(
                    topic,
                    *partition,
                    Offset::Offset(t.timestamp_millis()),
                )?;
            }
            let answer = consumer.offsets_for_times(query, Duration::from_secs(10))?;
            partitions
                .iter()
                .map(|(topic, partition)| {
                    // No message at or after the time: start at the end.
                    let offset = answer.find_partition(topic, *partition).map(|e| e.offset());
                    Some(match offset {
                        Some(Offset::Offset(o)) => Offset::Offset(o),
                        _ => Offset::End,
                    })
                })
                .collect()
        }
        StartPosition::At(spec) => {
            let wanted = parse_offsets(spec);
            partitions
                .iter()
                .map(|(_, p)| {
                    wanted
                        .iter()
                        .find(|(q, _)| q == p)
                        .map(|(_, o)| Offset::Offset(*o))
                })
                .collect()
        }
        other => {
            tracing::warn!(
                ?other,
                "unknown start position; resuming from committed offsets"
            );
            vec![None; partitions.len()]
        }
    })
}

/// `"0@42,1@17"` → partition 0 from offset 42, partition 1 from 17 (the `Display` of
/// [`Position::Offset`](eventbus_core::Position)).
pub(crate) fn parse_offsets(spec: &str) -> Vec<(i32, i64)> {
    spec.split(',')
        .filter_map(|part| {
            let (p, o) = part.trim().split_once('@')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.apply_start(consumer, tpl);
                tracing::debug!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions assigned");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // After the assignment, which deactivates earlier partition queues.
                self.split_queues(tpl);
                self.joined.send_replace(true);
                result
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // What was acknowledged must be committed while the partitions are still ours.
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "committing before a revocation failed; the next owner may see some messages again")
                    }
                }
                let revoked: Vec<Partition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                tracing::debug!(?revoked, "partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(revoked);
                self.rebalanced.store(true, Ordering::Release);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; dropping the assignment");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying a rebalance failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "committing offsets failed; they are committed again with the next ones")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lists_read_like_positions() {
        assert_eq!(parse_offsets("0@42, 1@17"), [(0, 42), (1, 17)]);
        assert!(parse_offsets("nonsense").is_empty());
    }
}
