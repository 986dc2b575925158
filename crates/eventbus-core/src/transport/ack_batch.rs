//! Acknowledgements sent to the broker in batches, for backends: one broker command per batch
//! instead of one per delivery, without giving up at-least-once.
//!
//! A subscription's acks go to one task that sends them as group commits: the first ack of a
//! batch waits at most [`AckBatching::linger`] for more, a batch closes at
//! [`AckBatching::max_batch`], and acks that arrive while a batch is on its way form the next
//! one. Under load batches grow by themselves; an ack alone goes out at once (with no linger).
//! Each ack resolves only once the broker has taken its batch, with that batch's result, so the
//! runner still settles one event at a time. When the last handle is dropped, what is queued is
//! sent before the task ends: closing a subscription flushes.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorKind, Result};

/// How a subscription's acknowledgements are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AckBatching {
    /// The most acks one broker command carries (at least 1; 1 turns batching off).
    pub max_batch: usize,
    /// How long the first ack of a batch waits for more before the batch is sent. Zero sends
    /// at once, and acks that come while a batch is on its way still share the next one.
    pub linger: Duration,
}

impl Default for AckBatching {
    fn default() -> Self {
        Self {
            max_batch: 256,
            linger: Duration::ZERO,
        }
    }
}

impl AckBatching {
    /// Batches of at most `max_batch`, sent once full or `linger` after their first ack.
    pub fn new(max_batch: usize, linger: Duration) -> Self {
        Self {
            max_batch: max_batch.max(1),
            linger,
        }
    }
}

type Waiter = oneshot::Sender<Result<()>>;
/// Sends one batch to the broker.
pub type SendBatch<T> = Box<dyn FnMut(Vec<T>) -> BoxFuture<'static, Result<()>> + Send>;

/// The acknowledgers' handle on a subscription's batching task; clones share the task.
pub struct AckBatcher<T> {
    queue: mpsc::UnboundedSender<(T, Waiter)>,
}

impl<T> Clone for AckBatcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for AckBatcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckBatcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> AckBatcher<T> {
    /// Starts the batching task on the current tokio runtime; `send` sends one batch (the
    /// backend's `XACK` with many ids, say) and returns once the broker has it.
    pub fn spawn(batching: AckBatching, send: SendBatch<T>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(batching, rx, send));
        Self { queue }
    }

    /// Queues one ack and waits until the broker has taken the batch that carried it.
    pub async fn ack(&self, item: T) -> Result<()> {
        let (done, result) = oneshot::channel();
        if self.queue.send((item, done)).is_err() {
            return Err(gone());
        }
        result.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the subscription's acknowledgements stopped (its runtime shut down); the message stays unacknowledged and comes again",
    )
}

async fn run<T>(
    batching: AckBatching,
    mut rx: mpsc::UnboundedReceiver<(T, Waiter)>,
    mut send: SendBatch<T>,
) {
    let max = batching.max_batch.max(1);
    let mut items = Vec::with_capacity(max);
    let mut waiters = Vec::with_capacity(max);
    while let Some((item, waiter)) = rx.recv().await {
        items.push(item);
        waiters.push(waiter);
        let deadline = tokio::time::Instant::now() + batching.linger;
        while items.len() < max {
            let next = match rx.try_recv() {
                Ok(next) => Some(next),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if batching.linger.is_zero() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some((item, waiter)) = next else { break };
            items.push(item);
            waiters.push(waiter);
        }
        let result = send(std::mem::replace(&mut items, Vec::with_capacity(max))).await;
        for waiter in waiters.drain(..) {
            // The acknowledger may have given up waiting; the broker has the ack all the same.
            let _ = waiter.send(result.as_ref().map(|_| ()).map_err(Error::detached));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Sent = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recording(sent: &Sent, fail_on: Option<u32>) -> SendBatch<u32> {
        let sent = Arc::clone(sent);
        Box::new(move |batch: Vec<u32>| {
            let sent = Arc::clone(&sent);
            Box::pin(async move {
                // A broker round trip, during which later acks queue up.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let failed = fail_on.is_some_and(|n| batch.contains(&n));
                sent.lock().unwrap().push(batch);
                if failed {
                    Err(Error::new(ErrorKind::Subscribe, "XACK failed")
                        .with("stream", "s")
                        .temporary())
                } else {
                    Ok(())
                }
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn acks_that_come_together_share_a_command() {
        let sent = Sent::default();
        let batcher =
            AckBatcher::spawn(AckBatching::new(4, Duration::ZERO), recording(&sent, None));
        let acks = (0..10).map(|n| {
            let b = batcher.clone();
            async move { b.ack(n).await }
        });
        for result in futures::future::join_all(acks).await {
            result.unwrap();
        }
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(sent.iter().all(|b| b.len() <= 4), "{sent:?}");
        assert!(sent.len() <= 4, "one command per ack: {sent:?}");
        let mut all: Vec<u32> = sent.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_alone_goes_at_once_or_after_the_linger() {
        let sent = Sent::default();
        let batcher = AckBatcher::spawn(AckBatching::default(), recording(&sent, None));
        let start = tokio::time::Instant::now();
        batcher.ack(1).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(5),
            "no waiting beyond the send"
        );

        let lingering = AckBatcher::spawn(
            AckBatching::new(100, Duration::from_millis(20)),
            recording(&sent, None),
        );
        let start = tokio::time::Instant::now();
        lingering.ack(2).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(25));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_each_of_its_acks() {
        let sent = Sent::default();
        let batcher = AckBatcher::spawn(
            AckBatching::new(100, Duration::from_millis(1)),
            recording(&sent, Some(3)),
        );
        let results = futures::future::join_all((0..5).map(|n| batcher.ack(n))).await;
        for result in results {
            let e = result.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Subscribe);
            assert!(e.is_temporary());
            assert_eq!(e.context("stream"), Some("s"));
        }
        batcher.ack(7).await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_last_handle_still_sends_what_is_queued() {
        let sent = Sent::default();
        let batcher = AckBatcher::spawn(
            AckBatching::new(100, Duration::from_millis(50)),
            recording(&sent, None),
        );
        let pending = tokio::spawn({
            let b = batcher.clone();
            async move { b.ack(9).await }
        });
        tokio::task::yield_now().await;
        drop(batcher);
        pending.await.unwrap().unwrap();
        assert_eq!(sent.lock().unwrap().concat(), vec![9]);
    }
}
