//! The consumer loop: one task fetches, handles up to `concurrency` events at once and settles
//! them with the broker. An event whose key has an earlier event still being handled (retrying
//! with backoff, say) is parked behind it, so one key is handled in order while other keys flow
//! past it; how much is held is bounded, beyond which fetching waits. Events without a key are
//! never held back. Each delivery goes through the layer stack to the dispatcher, then is
//! settled with the broker by its outcome; the next events are handled while the broker
//! confirms, so that acknowledgements can travel in batches.
//!
//! The events of one consumer are handled concurrently within its task, as futures, not in
//! parallel on several threads: a receiver with much CPU work to do hands it to
//! `tokio::task::spawn_blocking` (or the application runs more consumers in the group).

use std::future::{poll_fn, Future};
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::FutureExt;
use futures::StreamExt;

use super::context::Context;
use super::layer::{Handler, Layer, Next, Outcome};
use super::schedule::{KeyId, KeyQueue};
use super::state::ConsumerState;
use super::Consumer;
use crate::error::{Error, ErrorKind, Result};
use crate::serializer::Serializer;
use crate::transport::{Delivery, DeliveryStream, Settlement, Subscriber, Subscription};

/// A handled event: its key, and its settlement unless a layer panicked.
type Handled = (Option<KeyId>, Option<Settling>);

/// Settlements on their way to the broker, per unit of concurrency, before the consumer stops
/// fetching until the broker answers some: handling goes on while the broker confirms, so that
/// acknowledgements can travel in batches.
const SETTLING_PER_CONCURRENCY: usize = 64;

/// Deliveries held per unit of concurrency (being handled, ready or parked behind their key)
/// before the consumer stops fetching: the bound on memory when one key is slow or retrying.
const HELD_PER_CONCURRENCY: usize = 64;

struct Shared {
    layers: Arc<[Arc<dyn Layer>]>,
    handler: Handler,
    serializer: Arc<dyn Serializer>,
    state: Arc<ConsumerState>,
    /// How long a given-up delivery waits at the broker when no layer dead-letters it.
    give_up_delay: Duration,
}

/// A consumer whose subscription is open, ready to run.
pub(super) struct Subscribed {
    shared: Arc<Shared>,
    stream: DeliveryStream,
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    concurrency: usize,
    shutdown_timeout: Duration,
    backoff: Duration,
    lag_interval: Option<Duration>,
}

impl Subscribed {
    pub(super) fn state(&self) -> &Arc<ConsumerState> {
        &self.shared.state
    }
}

/// Builds the stack and opens the subscription, so that a bad layer edit, topic, group or
/// connection fails here, before any task is spawned.
pub(super) async fn subscribe(consumer: Consumer) -> Result<Subscribed> {
    let parts = consumer.into_parts()?;
    let subscription = Subscription {
        topics: parts.state.topics().to_vec(),
        group: parts.state.group().to_owned(),
        consumer: parts.state.name().to_owned(),
        start: parts.start,
        acks: parts.settings.acks,
    };
    let stream = parts
        .subscriber
        .subscribe(subscription.clone())
        .await
        .map_err(|e| e.with("group", parts.state.group()))?;
    parts.state.set_subscribed();
    parts.health.register(&parts.state);
    tracing::info!(topics = ?subscription.topics, group = %subscription.group, consumer = %subscription.consumer, layers = ?parts.layer_names, "consumer subscribed");
    let settings = parts.settings;
    Ok(Subscribed {
        shared: Arc::new(Shared {
            layers: parts.layers,
            handler: parts.handler,
            serializer: parts.serializer,
            state: parts.state,
            give_up_delay: settings.retry.cap,
        }),
        stream,
        subscriber: parts.subscriber,
        subscription,
        concurrency: settings.concurrency.max(1),
        shutdown_timeout: settings.shutdown_timeout,
        backoff: settings.retry.base,
        lag_interval: settings.lag_interval,
    })
}

pub(super) async fn run(
    subscribed: Subscribed,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let Subscribed {
        shared,
        mut stream,
        subscriber,
        subscription,
        concurrency,
        shutdown_timeout,
        backoff,
        lag_interval,
    } = subscribed;
    let state = Arc::clone(&shared.state);
    let lag = lag_interval.map(|every| {
        tokio::spawn(report_lag(
            subscriber,
            subscription,
            Arc::clone(&state),
            every,
        ))
    });

    // Handling happens in this task rather than in worker tasks: a hand-over to a worker and
    // back cost two channel hops and two task wake-ups per event, more than the bookkeeping of
    // the event itself (BENCHMARKS.md, the cost table). The set keeps its slots and reuses them,
    // where `futures`' set allocates a node per event; it grows to the most ever in flight.
    let mut handling = futures_buffered::FuturesUnordered::with_capacity(concurrency.min(64));
    // An event is first handled here, polled once as soon as it is made: most receivers finish
    // without waiting (or wait on what is ready), and such an event is done and settled without
    // a trip through the set, its slot, its waker and the select below. Only while the event
    // here waits do later ones go into the set; the slot counts towards `concurrency`.
    let start = |(key, delivery): (Option<KeyId>, Delivery)| shared.handle(key, delivery);
    let mut front = std::pin::pin!(empty_slot(&start));
    let mut settling = FuturesUnordered::new();
    let mut queue = KeyQueue::new();
    let max_held = concurrency * HELD_PER_CONCURRENCY;
    let max_settling = concurrency * SETTLING_PER_CONCURRENCY;
    let mut fetching = true;

    // The key only decides which events wait for which: a fast hash, seeded per process.
    let hasher = foldhash::fast::RandomState::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut fatal_rx = state.fatal();
    let mut fatal = std::pin::pin!(fatal_rx.changed());
    // After a failed fetch the stream rests for `backoff`, while what is in flight goes on: a
    // sleep in this task would hold up the handling too.
    let mut fetch_retry = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut fetch_resting = false;
    let mut outcome: Result<()> = Ok(());
    loop {
        // What is ready is started, and what finishes at once is settled, in this one turn.
        poll_fn(|cx| {
            while handling.len() + usize::from(front.is_some()) < concurrency {
                let Some(ready) = queue.next_ready() else {
                    break;
                };
                if front.is_some() {
                    handling.push(start(ready));
                    continue;
                }
                front.set(Some(start(ready)));
                if let Poll::Ready(handled) = poll_front(&mut front, cx) {
                    finish(&mut queue, &mut settling, handled);
                }
            }
            Poll::Ready(())
        })
        .await;
        if !fetching && queue.held() == 0 {
            break;
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = &mut fatal => {
                let why = state.fatal().borrow().clone().unwrap_or_default();
                outcome = Err(Error::new(ErrorKind::TooManyErrors, format!(
                    "{} failures in a row; the last: {why}. Fix the cause and restart the consumer",
                    state.error_limit()
                )).with("group", state.group()));
                break;
            }
            handled = poll_fn(|cx| poll_front(&mut front, cx)), if front.is_some() => {
                finish(&mut queue, &mut settling, handled);
            }
            Some(handled) = handling.next(), if !handling.is_empty() => {
                finish(&mut queue, &mut settling, handled);
                // The others done by now are taken in the same turn: the select's checks of
                // shutdown and failure are paid once a turn rather than once an event.
                poll_fn(|cx| {
                    while let Poll::Ready(Some(handled)) = handling.poll_next_unpin(cx) {
                        finish(&mut queue, &mut settling, handled);
                    }
                    Poll::Ready(())
                })
                .await;
            }
            Some(()) = settling.next(), if !settling.is_empty() => {
                // The others the broker answered by now are taken in the same turn too: one
                // reply to a batch of acknowledgements completes them all at once.
                poll_fn(|cx| {
                    while let Poll::Ready(Some(())) = settling.poll_next_unpin(cx) {}
                    Poll::Ready(())
                })
                .await;
            }
            () = &mut fetch_retry, if fetch_resting => fetch_resting = false,
            next = stream.next(), if fetching
                && !fetch_resting
                && queue.held() < max_held
                && settling.len() < max_settling => {
                // Settlements do not change while fetching: read once, and no borrow of the set
                // is held across the await below (a kept settlement need not be `Sync`).
                let settling_room = settling.len() < max_settling;
                // Whether to go on taking from the stream in this turn.
                let mut fetched = |next: Option<Result<Delivery>>| match next {
                    // The subscription ended: handle what is held, then stop.
                    None => {
                        fetching = false;
                        false
                    }
                    Some(Ok(delivery)) => {
                        let key = delivery.message.key.as_ref().map(|k| hasher.hash_one(k));
                        queue.push(key, delivery);
                        settling_room && queue.held() < max_held
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, group = %state.group(), "fetching failed; retrying");
                        state.fetch_failed(&e);
                        state.record_failure(&e);
                        fetch_retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                        fetch_resting = true;
                        false
                    }
                };
                // What the stream has ready is taken in the same turn too, within the bounds.
                if fetched(next) {
                    poll_fn(|cx| {
                        while let Poll::Ready(next) = stream.poll_next_unpin(cx) {
                            if !fetched(next) {
                                break;
                            }
                        }
                        Poll::Ready(())
                    })
                    .await;
                }
            }
        }
    }

    // What was fetched but not started goes back to the broker (dropping a delivery nacks it);
    // what is being handled is finished and settled.
    let abandoned = queue.abandon();
    if abandoned > 0 {
        tracing::debug!(group = %state.group(), abandoned, "events fetched but not started are left for redelivery");
    }
    if let Some(lag) = lag {
        lag.abort();
    }
    let drain = async {
        loop {
            tokio::select! {
                handled = poll_fn(|cx| poll_front(&mut front, cx)), if front.is_some() => {
                    finish(&mut queue, &mut settling, handled);
                }
                Some(handled) = handling.next(), if !handling.is_empty() => {
                    finish(&mut queue, &mut settling, handled);
                }
                Some(()) = settling.next(), if !settling.is_empty() => {}
                else => break,
            }
        }
    };
    if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
        tracing::warn!(group = %state.group(), "shutdown timed out; unacknowledged events will be redelivered");
        if outcome.is_ok() {
            outcome = Err(Error::new(
                ErrorKind::Timeout,
                "in-flight events did not finish within the shutdown timeout; they will be redelivered",
            )
            .with("timeout_ms", shutdown_timeout.as_millis()));
        }
    }
    // Dropped before the stream, so that what was not settled goes back to the broker while
    // the subscription is still there to take it.
    front.set(None);
    drop(handling);
    drop(settling);
    drop(stream);
    match &outcome {
        Ok(()) => state.set_retired(),
        Err(e) => state.set_stopped(e.to_string()),
    }
    tracing::info!(group = %state.group(), "consumer stopped");
    outcome
}

/// An empty slot for what `start` makes: names the type of the front slot, a future no one
/// can write.
fn empty_slot<A, F>(_start: &impl Fn(A) -> F) -> Option<F> {
    None
}

/// Polls the event in the front slot and empties the slot once it is done. Pending while the
/// slot is empty: its callers look first.
fn poll_front<F: Future>(
    front: &mut Pin<&mut Option<F>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<F::Output> {
    let Some(handling) = front.as_mut().as_pin_mut() else {
        return Poll::Pending;
    };
    let handled = std::task::ready!(handling.poll(cx));
    front.set(None);
    Poll::Ready(handled)
}

/// A handled event leaves the key queue (its key's next event is ready) and its settlement goes
/// on its way.
fn finish(
    queue: &mut KeyQueue<Delivery>,
    settling: &mut FuturesUnordered<Settling>,
    (key, settle): Handled,
) {
    queue.done(key);
    if let Some(settle) = settle {
        settle_or_keep(settling, settle);
    }
}

/// Polls a settlement once and keeps it only if it waits for the broker. Many complete at once
/// (the memory broker's, or a command handed to a backend's batching task), and a settlement
/// kept costs a node in the set. Polling first with a no-op waker is sound: the set polls what
/// it is given again, with its own waker, before it waits.
fn settle_or_keep(settling: &mut FuturesUnordered<Settling>, mut settle: Settling) {
    if (&mut settle).now_or_never().is_none() {
        settling.push(settle);
    }
}

/// Publishes the group's lag as a gauge, where the backend can tell it.
async fn report_lag(
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    state: Arc<ConsumerState>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match subscriber
            .lag(&subscription.topics, &subscription.group)
            .await
        {
            Ok(lags) => {
                for (topic, lag) in lags {
                    crate::telemetry::metrics::record_lag(&topic, state.group(), lag);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, group = %state.group(), "reading the consumer lag failed")
            }
        }
    }
}

impl Shared {
    /// Handles one event through the layers and settles it by its outcome: the future ends
    /// with the event's key and what is left of settling, the broker's answer. `None` when a
    /// layer panicked: the context is dropped, which hands the delivery back to the broker,
    /// and the consumer lives on. (Receivers' panics are outcomes already; the dispatcher
    /// catches them.)
    ///
    /// What needs no waiting is done before the future is made, and the future holds little:
    /// the runner moves it into its set of events in flight, so its size is copied per event.
    /// So is its output, which is why the delivery is settled here rather than handed back.
    fn handle(
        &self,
        key: Option<KeyId>,
        delivery: Delivery,
    ) -> impl Future<Output = Handled> + Send + '_ {
        // The context takes the delivery's acknowledger too: the future holds the context alone.
        let mut ctx = Context::new(
            delivery,
            self.state.group_arc(),
            Arc::clone(&self.serializer),
            Arc::clone(&self.state),
        );
        self.state.enter();
        // Left on drop, so that a layer that panics does not leave the count behind.
        let in_flight = InFlight(&self.state);
        async move {
            let _in_flight = in_flight;
            let next = Next::new(&self.layers, &self.handler);
            match AssertUnwindSafe(next.run(&mut ctx)).catch_unwind().await {
                Ok(outcome) => (key, Some(self.settle(&mut ctx, outcome))),
                Err(_) => {
                    let e = Error::new(
                        ErrorKind::Receiver,
                        "a consumer layer panicked; the event goes back to the broker",
                    );
                    tracing::error!(error = %e, group = %self.state.group(), "a consumer layer panicked");
                    self.state.record_failure(&e);
                    (key, None)
                }
            }
        }
    }

    /// Tells the broker how handling ended: an ack, or a nack that brings it back later. The
    /// outcome is read now; the future only waits for the broker.
    fn settle(&self, ctx: &mut Context, outcome: Outcome) -> Settling {
        let nack = match outcome {
            Outcome::Handled | Outcome::Skipped { .. } | Outcome::DeadLettered { .. } => None,
            Outcome::Retry { error, delay } => {
                tracing::debug!(%error, "no retry layer; the broker delivers the event again");
                Some(delay.unwrap_or_default())
            }
            Outcome::GiveUp { reason, error } => {
                tracing::error!(reason = reason.as_str(), %error, "an event was given up but no dead-letter layer takes it; the broker delivers it again");
                Some(self.give_up_delay)
            }
            Outcome::Release { delay, .. } => Some(delay),
        };
        Settling(ctx.settle(nack))
    }
}

/// A settlement on its way to the broker, as the runner keeps it: the broker's answer alone, so
/// that what the runner moves and holds per event is small. Its result is logged, not returned.
struct Settling(Settlement);

impl Future for Settling {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|settled| match settled {
            Ok(()) => {}
            // Handled, and the broker hands it out again: at-least-once, not a failure.
            Err(e) if e.kind() == ErrorKind::Reassigned => {
                tracing::info!(error = %e, "the event was settled after its delivery was reassigned; it will be delivered again");
            }
            // Not counted towards the consecutive-error limit: the event was handled, the broker
            // merely did not hear so (a connection lost while it restarts, say) and delivers it
            // again. Counting these stopped consumers during a two-second broker restart, when
            // every in-flight ack fails at once (RELIABILITY.md, scenario 1 on Redis); a broker
            // that stays away shows in fetching, which does count.
            Err(e) => {
                tracing::warn!(error = %e, "settling the delivery with the broker failed; the event may be redelivered");
            }
        })
    }
}

/// One event being handled, counted in the consumer's in-flight gauge until it is dropped.
struct InFlight<'a>(&'a ConsumerState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner keeps many settlements at once (acks waiting for a batch to reach the broker);
    /// each should hold the broker's future alone, not a copy of the delivery and its outcome.
    #[test]
    fn a_kept_settlement_is_the_brokers_future_alone() {
        fn output_size<F: Fn(&'static Shared, &mut Context) -> R, R>(_: F) -> usize {
            std::mem::size_of::<R>()
        }
        assert_eq!(
            output_size(|shared, ctx| shared.settle(ctx, Outcome::Handled)),
            std::mem::size_of::<crate::transport::Settlement>()
        );
    }
}
