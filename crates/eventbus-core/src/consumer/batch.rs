//! Batch receivers: events of one type handed to the application in batches of up to
//! `max_size`, gathered for at most `max_wait` after the first.
//!
//! Each event still travels the consumer's layer stack on its own (tracing, retries, dead
//! letters, the handler timeout): the innermost step of an event parks it in its type's batch
//! and waits for the batch's verdict on it. A batch never holds two events of one key, because
//! the runner hands out a key's next event only once the previous one is settled; that keeps
//! per-key order even when one event of a batch is retried. Since a batch can only gather events
//! that are in flight together, a consumer with a batch receiver handles at least `max_size`
//! events at once. The events of a batch finish together, so their acknowledgements share
//! broker commands (see [`AckBatching`](crate::transport::ack_batch::AckBatching)).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::context::DeliveryInfo;
use super::dispatch::{decode_envelope, panic_text, Call, Route};
use super::layer::Verdict;
use crate::error::Result;
use crate::event::{Envelope, Event};
use crate::metadata::EventMetadata;
use crate::signal::BoxError;

/// What a [`BatchReceiver`] says went wrong. Without one (`Ok(())`) every event of the batch is
/// handled.
///
/// - Any error converts into a failure of the whole batch, so `?` works in a batch receiver:
///   every event is retried (or dead-lettered once out of attempts), and the retries are
///   gathered into batches again. A [`Verdict`] as that error applies to every event.
/// - [`BatchError::partial`] names the events that failed by their index in the batch; the
///   others are handled. Each failure may be a [`Verdict`] too.
///
/// ```
/// use eventbus_core::consumer::BatchError;
/// use eventbus_core::Verdict;
///
/// // Events 2 and 5 failed: 2 is tried again, 5 goes to the dead letters at once.
/// let failed = BatchError::partial()
///     .fail(2, "timeout writing row")
///     .fail(5, Verdict::give_up("row rejected: bad country code"));
/// assert_eq!(failed.failed_indices().collect::<Vec<_>>(), [2, 5]);
/// ```
#[derive(Default)]
pub struct BatchError {
    whole: Option<BoxError>,
    failed: Vec<(usize, BoxError)>,
}

impl BatchError {
    /// The whole batch failed with `cause`.
    pub fn whole(cause: impl Into<BoxError>) -> Self {
        Self {
            whole: Some(cause.into()),
            failed: Vec::new(),
        }
    }

    /// Some events failed: name them with [`BatchError::fail`].
    pub fn partial() -> Self {
        Self::default()
    }

    /// The event at `index` in the batch failed with `cause` (a plain error is retried).
    #[must_use]
    pub fn fail(mut self, index: usize, cause: impl Into<BoxError>) -> Self {
        self.failed.push((index, cause.into()));
        self
    }

    /// The indices named as failed, in the order they were named.
    pub fn failed_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.failed.iter().map(|(i, _)| *i)
    }

    /// Every event's result, in batch order.
    fn split(self, len: usize) -> Vec<std::result::Result<(), BoxError>> {
        if let Some(cause) = self.whole {
            return for_each(cause, len);
        }
        let mut results: Vec<std::result::Result<(), BoxError>> =
            std::iter::repeat_with(|| Ok(())).take(len).collect();
        for (index, cause) in self.failed {
            match results.get_mut(index) {
                Some(slot) => *slot = Err(cause),
                None => tracing::warn!(
                    index,
                    batch = len,
                    error = %cause,
                    "a batch receiver named a failed event outside its batch; ignored"
                ),
            }
        }
        results
    }
}

impl<E: Into<BoxError>> From<E> for BatchError {
    fn from(cause: E) -> Self {
        Self::whole(cause)
    }
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.whole {
            Some(cause) => write!(f, "BatchError::whole({cause})"),
            None => f
                .debug_map()
                .entries(self.failed.iter().map(|(i, e)| (i, e.to_string())))
                .finish(),
        }
    }
}

/// One cause shared by every event of a batch that failed as a whole.
#[derive(Debug, Clone)]
struct Shared(Arc<BoxError>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The whole batch's cause as each event's: a verdict stays a verdict for every event.
fn for_each(cause: BoxError, len: usize) -> Vec<std::result::Result<(), BoxError>> {
    let copy = |cause: &Shared| -> BoxError { Box::new(cause.clone()) };
    let verdict = match cause.downcast::<Verdict>() {
        Ok(verdict) => *verdict,
        Err(plain) => {
            let cause = Shared(Arc::new(plain));
            return (0..len).map(|_| Err(copy(&cause))).collect();
        }
    };
    match verdict {
        Verdict::Retry { delay, cause } => {
            let cause = Shared(Arc::new(cause));
            (0..len)
                .map(|_| {
                    Err(Box::new(Verdict::Retry {
                        delay,
                        cause: copy(&cause),
                    }) as BoxError)
                })
                .collect()
        }
        Verdict::GiveUp { cause } => {
            let cause = Shared(Arc::new(cause));
            (0..len)
                .map(|_| Err(Box::new(Verdict::give_up(copy(&cause))) as BoxError))
                .collect()
        }
        Verdict::Skip { reason } => (0..len)
            .map(|_| Err(Box::new(Verdict::skip(reason.clone())) as BoxError))
            .collect(),
    }
}

/// Handles events of type `E` a batch at a time. Implemented for async closures
/// `Fn(Vec<Envelope<E>>) -> impl Future<Output = Result<(), impl Into<BatchError>>>`.
#[async_trait]
pub trait BatchReceiver<E>: Send + Sync {
    /// Handles one batch, events in the order they were fetched.
    async fn receive(&self, batch: Vec<Envelope<E>>) -> std::result::Result<(), BatchError>;
}

#[async_trait]
impl<E, F, Fut, Er> BatchReceiver<E> for F
where
    E: Send + Sync + 'static,
    F: Fn(Vec<Envelope<E>>) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), Er>> + Send,
    Er: Into<BatchError>,
{
    async fn receive(&self, batch: Vec<Envelope<E>>) -> std::result::Result<(), BatchError> {
        (self)(batch).await.map_err(Into::into)
    }
}

type Verdicts = oneshot::Sender<std::result::Result<(), BoxError>>;

/// The route of an event type with a batch receiver.
pub(crate) struct BatchRoute<E> {
    receiver: Arc<dyn BatchReceiver<E>>,
    max_size: usize,
    max_wait: Duration,
    /// The gathering task's queue, started on the first event (on the consumer's runtime).
    queue: OnceLock<mpsc::UnboundedSender<(Envelope<E>, Verdicts)>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> BatchRoute<E> {
    pub(crate) fn new(
        receiver: Arc<dyn BatchReceiver<E>>,
        max_size: usize,
        max_wait: Duration,
    ) -> Self {
        Self {
            receiver,
            max_size: max_size.max(1),
            max_wait,
            queue: OnceLock::new(),
            _event: PhantomData,
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<(Envelope<E>, Verdicts)> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(gather(
                rx,
                Arc::clone(&self.receiver),
                self.max_size,
                self.max_wait,
            ));
            tx
        })
    }
}

impl<E: Event> Route for BatchRoute<E> {
    fn prepare(&self, delivery: &Arc<DeliveryInfo>, metadata: Arc<EventMetadata>) -> Result<Call> {
        let envelope = decode_envelope::<E>(delivery, metadata)?;
        let (tx, rx) = oneshot::channel();
        // The gathering task lives as long as the route; a send fails only while the consumer
        // is being torn down, and the receiver below then reports it.
        let _ = self.queue().send((envelope, tx));
        // The call waits for the verdict of the event's batch.
        Ok(Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err("the batch receiver's task ended before this event's batch finished".into())
            })
        }))
    }

    fn batch_size(&self) -> usize {
        self.max_size
    }
}

/// Gathers events into batches: the first event of a batch opens it, which closes at
/// `max_size` events or `max_wait` after opening, whichever is first. Each batch runs on a task
/// of its own, so the next can gather meanwhile (no key is in two of them).
async fn gather<E: Send + Sync + 'static>(
    mut queue: mpsc::UnboundedReceiver<(Envelope<E>, Verdicts)>,
    receiver: Arc<dyn BatchReceiver<E>>,
    max_size: usize,
    max_wait: Duration,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::with_capacity(max_size);
        batch.push(first);
        let deadline = tokio::time::sleep(max_wait);
        let mut deadline = std::pin::pin!(deadline);
        while batch.len() < max_size {
            tokio::select! {
                biased;
                next = queue.recv() => match next {
                    Some(waiting) => batch.push(waiting),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        tokio::spawn(run_batch(Arc::clone(&receiver), batch));
    }
}

/// Runs one batch and tells each of its events how it went.
async fn run_batch<E>(receiver: Arc<dyn BatchReceiver<E>>, batch: Vec<(Envelope<E>, Verdicts)>) {
    let (envelopes, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let len = envelopes.len();
    let results = match AssertUnwindSafe(receiver.receive(envelopes))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => std::iter::repeat_with(|| Ok(())).take(len).collect(),
        Ok(Err(failed)) => failed.split(len),
        Err(panic) => {
            let text = panic_text(&*panic);
            (0..len)
                .map(|_| Err(format!("a batch receiver panicked: {text}").into()))
                .collect()
        }
    };
    for (verdict, result) in waiting.into_iter().zip(results) {
        // An event whose attempt timed out no longer listens; it is tried again anyway.
        let _ = verdict.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(results: &[std::result::Result<(), BoxError>]) -> Vec<String> {
        results
            .iter()
            .map(|r| match r {
                Ok(()) => "ok".to_owned(),
                Err(e) => match e.downcast_ref::<Verdict>() {
                    Some(Verdict::Retry { .. }) => format!("retry: {e}"),
                    Some(Verdict::GiveUp { .. }) => format!("give-up: {e}"),
                    Some(Verdict::Skip { reason }) => format!("skip: {reason}"),
                    _ => format!("plain: {e}"),
                },
            })
            .collect()
    }

    #[test]
    fn a_partial_failure_fails_only_the_named_events() {
        let results = BatchError::partial()
            .fail(1, "one")
            .fail(3, Verdict::give_up("three"))
            .fail(9, "outside")
            .split(4);
        assert_eq!(
            kinds(&results),
            ["ok", "plain: one", "ok", "give-up: give up: three"]
        );
    }

    #[test]
    fn a_whole_failure_reaches_every_event_and_a_verdict_stays_one() {
        let plain = BatchError::from(std::io::Error::other("disk full")).split(2);
        assert_eq!(kinds(&plain), ["plain: disk full", "plain: disk full"]);
        let skip = BatchError::whole(Verdict::skip("maintenance")).split(2);
        assert_eq!(kinds(&skip), ["skip: maintenance", "skip: maintenance"]);
        let later =
            BatchError::whole(Verdict::retry_after(Duration::from_secs(3), "busy")).split(1);
        match later[0]
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<Verdict>())
        {
            Some(Verdict::Retry { delay, .. }) => assert_eq!(*delay, Some(Duration::from_secs(3))),
            other => panic!("expected a retry verdict, got {other:?}"),
        }
    }
}
