//! The consumer loop: one task fetches and hands events to `concurrency` workers. An event
//! whose key has an earlier event still being handled (retrying with backoff, say) is parked
//! behind it, so one key is handled in order while other keys flow past it; how much is held is
//! bounded, beyond which fetching waits. Events without a key are never held back. Each
//! delivery goes through the layer stack to the dispatcher, then is settled with the broker by
//! its outcome; the worker takes its next event while the broker confirms, so that
//! acknowledgements can travel in batches.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::FutureExt;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::context::{Context, DeliveryInfo};
use super::layer::{Handler, Layer, Next, Outcome};
use super::schedule::{KeyId, KeyQueue};
use super::state::ConsumerState;
use super::Consumer;
use crate::error::{Error, ErrorKind, Result};
use crate::serializer::Serializer;
use crate::transport::{Delivery, DeliveryStream, Subscriber, Subscription};

/// Settlements one worker may have on their way to the broker before it waits for one.
const SETTLING_PER_WORKER: usize = 64;

/// Deliveries held per worker (being handled, ready or parked behind their key) before the
/// consumer stops fetching: the bound on memory when one key is slow or retrying.
const HELD_PER_WORKER: usize = 64;

struct Shared {
    layers: Arc<[Arc<dyn Layer>]>,
    handler: Box<dyn Handler>,
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
        concurrency: workers_n,
        shutdown_timeout,
        backoff,
        lag_interval,
    } = subscribed;
    let state = Arc::clone(&shared.state);
    let mut fatal_rx = state.fatal();
    let lag = lag_interval.map(|every| {
        tokio::spawn(report_lag(
            subscriber,
            subscription,
            Arc::clone(&state),
            every,
        ))
    });

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Option<KeyId>)>();
    let mut inboxes = Vec::with_capacity(workers_n);
    let mut workers = Vec::with_capacity(workers_n);
    for id in 0..workers_n {
        let (tx, rx) = mpsc::channel(1);
        workers.push(tokio::spawn(worker(
            id,
            Arc::clone(&shared),
            rx,
            done_tx.clone(),
        )));
        inboxes.push(tx);
    }
    drop(done_tx);
    let mut idle: Vec<usize> = (0..workers_n).rev().collect();
    let mut queue = KeyQueue::new();
    let max_held = workers_n * HELD_PER_WORKER;
    let mut fetching = true;

    let hasher = RandomState::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut outcome: Result<()> = Ok(());
    'dispatch: loop {
        while !idle.is_empty() {
            let Some((key, delivery)) = queue.next_ready() else {
                break;
            };
            let Some(id) = idle.pop() else { break };
            // A free worker's inbox is empty: it took its last event before saying it was done.
            if inboxes[id].try_send((key, delivery)).is_err() {
                outcome = Err(Error::new(
                    ErrorKind::Receiver,
                    "a consumer worker stopped unexpectedly",
                ));
                break 'dispatch;
            }
        }
        if !fetching && queue.held() == 0 {
            break;
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = fatal_rx.changed() => {
                let why = fatal_rx.borrow().clone().unwrap_or_default();
                outcome = Err(Error::new(ErrorKind::TooManyErrors, format!(
                    "{} failures in a row; the last: {why}. Fix the cause and restart the consumer",
                    state.error_limit()
                )).with("group", state.group()));
                break;
            }
            Some((id, key)) = done_rx.recv() => {
                idle.push(id);
                queue.done(key);
            }
            next = stream.next(), if fetching && queue.held() < max_held => match next {
                // The subscription ended: handle what is held, then stop.
                None => fetching = false,
                Some(Ok(delivery)) => {
                    let key = delivery.message.key.as_ref().map(|k| hasher.hash_one(k));
                    queue.push(key, delivery);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, group = %state.group(), "fetching failed; retrying");
                    state.fetch_failed(&e);
                    state.record_failure(&e);
                    tokio::time::sleep(backoff).await;
                }
            },
        }
    }

    // What was fetched but not started goes back to the broker (dropping a delivery nacks it);
    // what is being handled is finished.
    let abandoned = queue.abandon();
    if abandoned > 0 {
        tracing::debug!(group = %state.group(), abandoned, "events fetched but not started are left for redelivery");
    }
    // Let the workers finish what they hold and settle it, then leave the group.
    drop(inboxes);
    if let Some(lag) = lag {
        lag.abort();
    }
    let drained = tokio::time::timeout(
        shutdown_timeout,
        futures::future::join_all(workers.iter_mut()),
    )
    .await;
    if drained.is_err() {
        for worker in &workers {
            worker.abort();
        }
        tracing::warn!(group = %state.group(), "shutdown timed out; unacknowledged events will be redelivered");
        if outcome.is_ok() {
            outcome = Err(Error::new(
                ErrorKind::Timeout,
                "in-flight events did not finish within the shutdown timeout; they will be redelivered",
            )
            .with("timeout_ms", shutdown_timeout.as_millis()));
        }
    }
    drop(stream);
    match &outcome {
        Ok(()) => state.set_retired(),
        Err(e) => state.set_stopped(e.to_string()),
    }
    tracing::info!(group = %state.group(), "consumer stopped");
    outcome
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

/// One worker: handles the events the dispatcher hands it, one at a time, and settles each
/// with the broker without waiting for the broker's answer before saying it is free again; the
/// answers are awaited alongside (at most [`SETTLING_PER_WORKER`] at once), and all of them
/// before the worker ends. The backend can then put many acknowledgements into one command.
async fn worker(
    id: usize,
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<(Option<KeyId>, Delivery)>,
    done: mpsc::UnboundedSender<(usize, Option<KeyId>)>,
) {
    let mut settling = FuturesUnordered::new();
    while let Some((key, delivery)) = alongside(inbox.recv(), &mut settling).await {
        // Receivers' panics are outcomes already (the dispatcher catches them); a layer's is
        // caught here, so that the worker lives on. Its delivery is dropped, which nacks it.
        let processed = AssertUnwindSafe(shared.process(delivery)).catch_unwind();
        match alongside(processed, &mut settling).await {
            Ok((delivery, outcome)) => settling.push(shared.settle(delivery, outcome)),
            Err(_) => {
                let e = Error::new(
                    ErrorKind::Receiver,
                    "a consumer layer panicked; the event goes back to the broker",
                );
                tracing::error!(error = %e, group = %shared.state.group(), "a consumer layer panicked");
                shared.state.record_failure(&e);
            }
        }
        // The dispatcher may be gone (shutting down); the settlement still completes here.
        let _ = done.send((id, key));
        while settling.len() >= SETTLING_PER_WORKER {
            settling.next().await;
        }
    }
    while settling.next().await.is_some() {}
}

/// Runs `future` to its end while the settlements already sent make progress.
async fn alongside<F: Future, S: Future<Output = ()>>(
    future: F,
    settling: &mut FuturesUnordered<S>,
) -> F::Output {
    let mut future = std::pin::pin!(future);
    loop {
        tokio::select! {
            biased;
            out = &mut future => return out,
            Some(()) = settling.next(), if !settling.is_empty() => {}
        }
    }
}

impl Shared {
    async fn process(&self, mut delivery: Delivery) -> (Delivery, Outcome) {
        let info = DeliveryInfo::take(
            &mut delivery,
            self.state.group_arc(),
            Arc::clone(&self.serializer),
        );
        let mut ctx = Context::new(info, Arc::clone(&self.state));
        // Left on drop, so that a layer that panics does not leave the count behind.
        struct InFlight<'a>(&'a ConsumerState);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        self.state.enter();
        let _in_flight = InFlight(&self.state);
        let outcome = Next::new(&self.layers, self.handler.as_ref())
            .run(&mut ctx)
            .await;
        (delivery, outcome)
    }

    /// Tells the broker how handling ended: an ack, or a nack that brings it back later.
    async fn settle(&self, delivery: Delivery, outcome: Outcome) {
        let result = match outcome {
            Outcome::Handled | Outcome::Skipped { .. } | Outcome::DeadLettered { .. } => {
                delivery.ack().await
            }
            Outcome::Retry { error, delay } => {
                tracing::debug!(%error, "no retry layer; the broker delivers the event again");
                delivery.nack(delay.unwrap_or_default()).await
            }
            Outcome::GiveUp { reason, error } => {
                tracing::error!(reason = reason.as_str(), %error, "an event was given up but no dead-letter layer takes it; the broker delivers it again");
                delivery.nack(self.give_up_delay).await
            }
            Outcome::Release { delay, .. } => delivery.nack(delay).await,
        };
        match result {
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
        }
    }
}
