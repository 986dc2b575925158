//! A subscription's stream: it reads the partition queues itself.
//!
//! The task that polls the stream copies each message out of librdkafka's partition queue into
//! the partition's window and takes what is ready, all in one poll; librdkafka's callback on a
//! queue that was empty wakes it. Acknowledgements and the worker (rebalances, errors, the main
//! queue) put what they hand out in the same line of ready deliveries.

use std::sync::Weak;
use std::task::{Context, Poll};

use eventbus_core::{Delivery, Result};
use tokio::sync::oneshot;

use super::worker::Shared;

/// Reads one subscription's partitions; dropping it tells the worker to leave the group.
pub(crate) struct Reader {
    /// Weak, so that the worker ending drops the consumer even while the stream lives.
    shared: Weak<Shared>,
    _alive: oneshot::Sender<()>,
}

impl Reader {
    pub(super) fn new(shared: Weak<Shared>, alive: oneshot::Sender<()>) -> Self {
        Self {
            shared,
            _alive: alive,
        }
    }

    /// The next delivery: one already handed out, else one read from the partition queues.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        let Some(shared) = self.shared.upgrade() else {
            return Poll::Ready(None);
        };
        let mut partitions = shared.lock();
        if let Some(next) = partitions.ready.pop_front() {
            return Poll::Ready(Some(next));
        }
        if partitions.closed {
            return Poll::Ready(None);
        }
        // Registered before the queues are read: a message that comes after a queue was found
        // empty makes librdkafka call the queue's callback, which wakes this task.
        shared.reader.register(cx.waker());
        partitions.serve_partitions(&shared);
        match partitions.ready.pop_front() {
            Some(next) => Poll::Ready(Some(next)),
            None => {
                // Idle: what was acknowledged is stored now rather than at the worker's tick.
                partitions.store_offsets(&shared.consumer);
                Poll::Pending
            }
        }
    }
}
