//! The consumer loop: one fetching task feeding `concurrency` lanes. A key always maps to the
//! same lane and a lane handles one event at a time, which bounds concurrency and keeps per-key
//! order; events without a key are spread round-robin. Each delivery goes through the layer
//! stack to the dispatcher, then is settled with the broker by its outcome; the lane goes on to
//! its next event while the broker confirms, so that acknowledgements can travel in batches.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::context::{Context, DeliveryInfo};
use super::layer::{Handler, Layer, Next, Outcome};
use super::state::ConsumerState;
use super::Consumer;
use crate::error::{Error, ErrorKind, Result};
use crate::serializer::Serializer;
use crate::transport::{Delivery, DeliveryStream, Subscriber, Subscription};

/// Settlements one lane may have on their way to the broker before it waits for one.
const SETTLING_PER_LANE: usize = 64;

/// Queue depth per lane: small, so a slow lane pushes back on fetching instead of hoarding.
const LANE_DEPTH: usize = 4;

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
        concurrency: lanes_n,
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

    let mut lanes = Vec::with_capacity(lanes_n);
    let mut workers = Vec::with_capacity(lanes_n);
    for _ in 0..lanes_n {
        let (tx, rx) = mpsc::channel::<Delivery>(LANE_DEPTH);
        workers.push(tokio::spawn(lane(Arc::clone(&shared), rx)));
        lanes.push(tx);
    }

    let hasher = RandomState::new();
    let round_robin = AtomicUsize::new(0);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut outcome: Result<()> = Ok(());
    loop {
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
            next = stream.next() => match next {
                None => break,
                Some(Ok(delivery)) => {
                    let lane = match &delivery.message.key {
                        Some(key) => (hasher.hash_one(key) % lanes_n as u64) as usize,
                        None => round_robin.fetch_add(1, Ordering::Relaxed) % lanes_n,
                    };
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        sent = lanes[lane].send(delivery) => if sent.is_err() {
                            outcome = Err(Error::new(ErrorKind::Receiver, "a consumer lane stopped unexpectedly"));
                            break;
                        },
                    }
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

    // Stop fetching, let the lanes finish what they hold, then leave the group.
    drop(lanes);
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

/// One lane: handles its deliveries one at a time, in order, and settles each with the broker
/// without waiting for the broker's answer before handling the next; the answers are awaited
/// alongside (at most [`SETTLING_PER_LANE`] at once), and all of them before the lane ends.
/// The backend can then put many acknowledgements into one broker command.
async fn lane(shared: Arc<Shared>, mut rx: mpsc::Receiver<Delivery>) {
    let mut settling = FuturesUnordered::new();
    while let Some(delivery) = alongside(rx.recv(), &mut settling).await {
        let (delivery, outcome) = alongside(shared.process(delivery), &mut settling).await;
        settling.push(shared.settle(delivery, outcome));
        while settling.len() >= SETTLING_PER_LANE {
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
        self.state.enter();
        let outcome = Next::new(&self.layers, self.handler.as_ref())
            .run(&mut ctx)
            .await;
        self.state.leave();
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
            Err(e) => {
                tracing::warn!(error = %e, "settling the delivery with the broker failed; the event may be redelivered");
                self.state.record_failure(&e);
            }
        }
    }
}
