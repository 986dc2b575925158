//! The consumer loop: one fetching task feeding `concurrency` lanes. A key always maps to the
//! same lane and a lane handles one event at a time, which bounds concurrency and keeps per-key
//! order; events without a key are spread round-robin.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};

use super::dead_letter::{self, Reason};
use super::dispatch::Route;
use super::{Consumer, ConsumerSettings};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::EventMetadata;
use crate::producer::Producer;
use crate::serializer::Serializer;
use crate::transport::{Delivery, DeliveryStream, Subscription};

/// Queue depth per lane: small, so a slow lane pushes back on fetching instead of hoarding.
const LANE_DEPTH: usize = 4;

struct Shared {
    routes: HashMap<String, Arc<dyn Route>>,
    serializer: Arc<dyn Serializer>,
    producer: Producer,
    settings: ConsumerSettings,
    group: String,
    consecutive_errors: AtomicU32,
    fatal: watch::Sender<Option<String>>,
}

/// How handling one delivery ended, short of success.
struct Failure {
    reason: Reason,
    error: Error,
    attempts: u32,
}

/// A consumer whose subscription is open, ready to run.
pub(super) struct Subscribed {
    consumer: Consumer,
    stream: DeliveryStream,
}

/// Opens the subscription, so that a bad topic, group or connection fails here, before any
/// task is spawned.
pub(super) async fn subscribe(consumer: Consumer) -> Result<Subscribed> {
    let full_topics: Vec<String> = consumer
        .topics
        .iter()
        .map(|t| consumer.producer.settings().full_topic(t))
        .collect();
    let subscription = Subscription {
        topics: full_topics.clone(),
        group: consumer.group.clone(),
        consumer: consumer.name.clone(),
        start: consumer.start.clone(),
    };
    let stream = consumer
        .subscriber
        .subscribe(subscription)
        .await
        .map_err(|e| e.with("group", &consumer.group))?;
    tracing::info!(topics = ?full_topics, group = %consumer.group, consumer = %consumer.name, "consumer subscribed");
    Ok(Subscribed { consumer, stream })
}

pub(super) async fn run(
    subscribed: Subscribed,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let Subscribed {
        consumer,
        mut stream,
    } = subscribed;
    let Consumer {
        producer,
        serializer,
        group,
        routes,
        settings,
        ..
    } = consumer;
    let (fatal_tx, mut fatal_rx) = watch::channel(None);
    let lanes_n = settings.concurrency.max(1);
    let shutdown_timeout = settings.shutdown_timeout;
    let limit = settings.consecutive_error_limit;
    let backoff = settings.retry.base;
    let shared = Arc::new(Shared {
        routes,
        serializer,
        producer,
        settings,
        group,
        consecutive_errors: AtomicU32::new(0),
        fatal: fatal_tx,
    });

    let mut lanes = Vec::with_capacity(lanes_n);
    let mut workers = Vec::with_capacity(lanes_n);
    for _ in 0..lanes_n {
        let (tx, mut rx) = mpsc::channel::<Delivery>(LANE_DEPTH);
        let shared = Arc::clone(&shared);
        workers.push(tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                shared.process(delivery).await;
            }
        }));
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
                    "{limit} failures in a row; the last: {why}. Fix the cause and restart the consumer"
                )).with("group", &shared.group));
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
                    tracing::warn!(error = %e, group = %shared.group, "fetching failed; retrying");
                    shared.failed(&e);
                    tokio::time::sleep(backoff).await;
                }
            },
        }
    }

    // Stop fetching, let the lanes finish what they hold, then leave the group.
    drop(lanes);
    let drained = tokio::time::timeout(
        shutdown_timeout,
        futures::future::join_all(workers.iter_mut()),
    )
    .await;
    if drained.is_err() {
        for worker in &workers {
            worker.abort();
        }
        tracing::warn!(group = %shared.group, "shutdown timed out; unacknowledged events will be redelivered");
        if outcome.is_ok() {
            outcome = Err(Error::new(
                ErrorKind::Timeout,
                "in-flight events did not finish within the shutdown timeout; they will be redelivered",
            )
            .with("timeout_ms", shutdown_timeout.as_millis()));
        }
    }
    drop(stream);
    tracing::info!(group = %shared.group, "consumer stopped");
    outcome
}

impl Shared {
    async fn process(&self, delivery: Delivery) {
        match self.handle(&delivery).await {
            Ok(()) => match delivery.ack().await {
                Ok(()) => self.succeeded(),
                // Handled, and the broker hands it out again: at-least-once, not a failure.
                Err(e) if e.kind() == ErrorKind::Reassigned => {
                    tracing::info!(error = %e, "the event was handled after its delivery was reassigned; it will be delivered again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acknowledging failed; the event may be redelivered");
                    self.failed(&e);
                }
            },
            Err(failure) => self.dead_letter(delivery, failure).await,
        }
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let fail = |reason, error: Error| Failure {
            reason,
            error: error
                .with("topic", &delivery.topic)
                .with("position", &delivery.position),
            attempts: 0,
        };
        let metadata = EventMetadata::from_headers(&delivery.message.headers)
            .map_err(|e| fail(Reason::InvalidHeaders, e))?;
        let Some(route) = self.routes.get(&metadata.event_type) else {
            let error = Error::new(
                ErrorKind::UnknownEventType,
                "no receiver or signal handles this event type in this consumer",
            )
            .with("event_type", &metadata.event_type);
            return Err(fail(Reason::UnknownEventType, error));
        };
        if let Some(ids) = self.producer.schema_ids() {
            // An unreachable registry is retried like a failing receiver; only what stays
            // unknown goes to the dead letters as undecodable.
            let mut tries = 1;
            loop {
                match ids.learn(&delivery.message.payload).await {
                    Ok(()) => break,
                    Err(e) if e.is_temporary() && self.settings.retry.retries_after(tries) => {
                        tracing::debug!(error = %e, tries, "schema lookup failed; retrying");
                        tokio::time::sleep(self.settings.retry.delay(tries)).await;
                        tries += 1;
                    }
                    Err(e) => return Err(fail(Reason::Undecodable, e)),
                }
            }
        }
        let call = route
            .prepare(
                &delivery.topic,
                &delivery.message.payload,
                metadata,
                self.serializer.as_ref(),
            )
            .map_err(|e| fail(Reason::Undecodable, e))?;

        // Deliveries count from the broker's own count: an event redelivered after its consumer
        // died (crashing on it, say) has used up attempts already, and one delivered more often
        // than the policy allows goes to the dead letters without running again.
        let retry = self.settings.retry;
        let mut attempt = delivery.attempt.max(1);
        if attempt > retry.max_attempts.max(1) {
            let error = Error::new(
                ErrorKind::Receiver,
                "the event was delivered more often than the retry policy allows without being acknowledged; a consumer may have died while handling it",
            )
            .with("deliveries", delivery.attempt);
            return Err(Failure {
                reason: Reason::ReceiverFailed,
                error,
                attempts: delivery.attempt,
            });
        }
        loop {
            let result = AssertUnwindSafe(call.call()).catch_unwind().await;
            let error = match result {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(panic) => Error::new(
                    ErrorKind::Receiver,
                    format!("a receiver panicked: {}", panic_text(&*panic)),
                ),
            };
            if !retry.retries_after(attempt) {
                return Err(Failure {
                    reason: Reason::ReceiverFailed,
                    error,
                    attempts: attempt,
                });
            }
            tracing::debug!(%error, attempt, "receiver failed; retrying");
            tokio::time::sleep(retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    async fn dead_letter(&self, delivery: Delivery, failure: Failure) {
        let topic = dead_letter::topic_for(&self.settings.dead_letter_topic, &delivery.topic);
        let error_text = failure.error.to_string();
        tracing::warn!(reason = failure.reason.as_str(), error = %error_text, dead_letter_topic = %topic, "dead-lettering event");
        let message = dead_letter::message(
            &delivery,
            &self.group,
            failure.reason,
            &error_text,
            failure.attempts,
        );
        let counts_as_error = failure.reason == Reason::ReceiverFailed;
        match self.producer.publish(&topic, vec![message]).await {
            Ok(_) => match delivery.ack().await {
                Ok(()) if counts_as_error => self.failed(&failure.error),
                Ok(()) => {}
                Err(e) => self.failed(&e),
            },
            Err(e) => {
                // Nothing is lost: without a dead-letter copy the event stays with the broker.
                tracing::error!(error = %e, dead_letter_topic = %topic, "cannot publish to the dead-letter topic; nacking");
                let _ = delivery.nack(self.settings.retry.cap).await;
                self.failed(&e);
            }
        }
    }

    fn succeeded(&self) {
        self.consecutive_errors.store(0, Ordering::Relaxed);
    }

    fn failed(&self, error: &Error) {
        let n = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.settings.consecutive_error_limit;
        if limit > 0 && n >= limit {
            self.fatal.send_replace(Some(error.to_string()));
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
}
