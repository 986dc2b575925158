//! The innermost step of a consumer's stack: from a delivery to the code that handles it. Typed
//! consumers decode and dispatch by event type through a route per type (erased, so one map holds
//! routes of many types); raw consumers call one receiver with the delivery as it is.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::context::{Context, DeliveryInfo};
use super::dead_letter::Reason;
use super::layer::{Outcome, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Envelope, Event};
use crate::metadata::EventMetadata;
use crate::schema_registry::SchemaIds;
use crate::serializer::decode_event;
use crate::signal::{BoxError, Receiver};

/// Decodes the payload of one event type into a ready call.
pub(crate) trait Route: Send + Sync {
    /// Decodes the delivery's payload into a call of the receivers. Decoding happens here, so
    /// that an undecodable payload is told apart from a failing receiver.
    fn prepare(&self, delivery: &Arc<DeliveryInfo>, metadata: Arc<EventMetadata>) -> Result<Call>;

    /// The most events one call of the receiver takes (batch receivers); 1 for the others.
    fn batch_size(&self) -> usize {
        1
    }
}

/// A decoded event bound to its receivers: the call itself, one allocation that owns the
/// event (a boxed object that made the call would be a second).
pub(crate) type Call = BoxFuture<'static, Result<(), BoxError>>;

enum Target<E> {
    Signal,
    Receiver(Arc<dyn Receiver<E>>),
}

/// The route of event type `E`: to its global signal, or to one receiver of a consumer.
pub(crate) struct EventRoute<E> {
    target: Arc<Target<E>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> EventRoute<E> {
    pub(crate) fn to_signal() -> Self {
        Self {
            target: Arc::new(Target::Signal),
            _event: PhantomData,
        }
    }

    pub(crate) fn to_receiver(receiver: Arc<dyn Receiver<E>>) -> Self {
        Self {
            target: Arc::new(Target::Receiver(receiver)),
            _event: PhantomData,
        }
    }
}

impl<E: Event> Route for EventRoute<E> {
    fn prepare(&self, delivery: &Arc<DeliveryInfo>, metadata: Arc<EventMetadata>) -> Result<Call> {
        let envelope = decode_envelope::<E>(delivery, metadata)?;
        let target = Arc::clone(&self.target);
        Ok(Box::pin(async move {
            match target.as_ref() {
                Target::Signal => E::signal()
                    .run_receivers(envelope)
                    .await
                    .map_err(|(_, first)| first),
                Target::Receiver(receiver) => receiver.receive(envelope).await,
            }
        }))
    }
}

/// The delivery's payload decoded as `E`, in an envelope that carries the delivery.
pub(crate) fn decode_envelope<E: Event>(
    delivery: &Arc<DeliveryInfo>,
    metadata: Arc<EventMetadata>,
) -> Result<Envelope<E>> {
    let event = decode_event::<E>(
        delivery.serializer(),
        delivery.topic(),
        delivery.payload(),
        Some(metadata.minor_version),
    )?;
    Ok(Envelope::shared(event, metadata).with_delivery(Arc::clone(delivery)))
}

/// What to do with an event type no route handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownEventTypes {
    /// Dead-letter it with reason `unknown-event-type` (the default).
    #[default]
    DeadLetter,
    /// Acknowledge it without handling (a topic shared with types this consumer ignores).
    Skip,
}

/// Typed dispatch: metadata → route → decode → receivers.
pub(crate) struct Dispatcher {
    pub(crate) routes: crate::FastMap<String, Arc<dyn Route>>,
    pub(crate) unknown: UnknownEventTypes,
    pub(crate) schema_ids: Option<SchemaIds>,
}

impl Dispatcher {
    /// Fetches unknown writer schemas of the payload and key; an unreachable registry is worth
    /// a retry, an id it does not know is not.
    async fn learn_schemas(&self, delivery: &DeliveryInfo) -> Result<(), Outcome> {
        let Some(ids) = &self.schema_ids else {
            return Ok(());
        };
        for bytes in std::iter::once(delivery.payload()).chain(delivery.key_bytes()) {
            if let Err(e) = ids.learn(bytes).await {
                return Err(if e.is_temporary() {
                    Outcome::Retry {
                        error: e,
                        delay: None,
                    }
                } else {
                    Outcome::GiveUp {
                        reason: Reason::Undecodable,
                        error: e,
                    }
                });
            }
        }
        Ok(())
    }
}

fn give_up(delivery: &DeliveryInfo, reason: Reason, error: Error) -> Outcome {
    Outcome::GiveUp {
        reason,
        error: error
            .with("topic", delivery.topic())
            .with("position", delivery.position()),
    }
}

impl Dispatcher {
    pub(crate) async fn handle(&self, ctx: &mut Context) -> Outcome {
        let delivery = Arc::clone(ctx.delivery());
        let metadata = match delivery.shared_metadata() {
            Ok(m) => Arc::clone(m),
            Err(_) => {
                // The cached error is shared; parse again for one of our own.
                let error = EventMetadata::from_headers(delivery.headers())
                    .err()
                    .unwrap_or_else(|| Error::new(ErrorKind::InvalidHeaders, "invalid headers"));
                return give_up(&delivery, Reason::InvalidHeaders, error);
            }
        };
        let Some(route) = self.routes.get(metadata.event_type.as_str()) else {
            if self.unknown == UnknownEventTypes::Skip {
                return Outcome::Skipped {
                    reason: format!("no receiver handles {}", metadata.event_type),
                };
            }
            let error = Error::new(
                ErrorKind::UnknownEventType,
                "no receiver or signal handles this event type in this consumer",
            )
            .with("event_type", &metadata.event_type);
            return give_up(&delivery, Reason::UnknownEventType, error);
        };
        // Boxed, and only with a registry: its future is large and every event's handling
        // future would carry its room otherwise.
        if self.schema_ids.is_some() {
            if let Err(outcome) = Box::pin(self.learn_schemas(&delivery)).await {
                return outcome;
            }
        }
        let call = match route.prepare(&delivery, Arc::clone(&metadata)) {
            Ok(call) => call,
            Err(e) => return give_up(&delivery, Reason::Undecodable, e),
        };
        settle_call(call, &delivery, Some(&metadata.event_type)).await
    }
}

/// Runs a receiver call, turning its error or panic into an outcome.
async fn settle_call(
    call: impl Future<Output = Result<(), BoxError>>,
    delivery: &DeliveryInfo,
    event_type: Option<&str>,
) -> Outcome {
    let context = |e: Error| {
        let e = e
            .with("topic", delivery.topic())
            .with("position", delivery.position());
        match event_type {
            Some(t) => e.with("event_type", t),
            None => e,
        }
    };
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(())) => Outcome::Handled,
        Ok(Err(e)) => Verdict::outcome_of(e, context),
        Err(panic) => Outcome::Retry {
            error: context(Error::new(
                ErrorKind::Receiver,
                format!("a receiver panicked: {}", panic_text(&*panic)),
            )),
            delay: None,
        },
    }
}

pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
}

/// A receiver of messages that are not typed events: bytes, JSON, anything. Implemented for
/// async closures `Fn(Arc<DeliveryInfo>) -> impl Future<Output = Result<(), impl Into<BoxError>>>`;
/// the same verdicts and policies apply as to typed receivers.
#[async_trait]
pub trait RawReceiver: Send + Sync {
    /// Handles one delivery.
    async fn receive(&self, delivery: Arc<DeliveryInfo>) -> Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut, Er> RawReceiver for F
where
    F: Fn(Arc<DeliveryInfo>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), Er>> + Send,
    Er: Into<BoxError>,
{
    async fn receive(&self, delivery: Arc<DeliveryInfo>) -> Result<(), BoxError> {
        (self)(delivery).await.map_err(Into::into)
    }
}

/// Raw dispatch: the one receiver of a raw consumer.
pub(crate) struct RawDispatcher {
    pub(crate) receiver: Arc<dyn RawReceiver>,
}

impl RawDispatcher {
    pub(crate) async fn handle(&self, ctx: &mut Context) -> Outcome {
        let delivery = Arc::clone(ctx.delivery());
        settle_call(
            self.receiver.receive(Arc::clone(&delivery)),
            &delivery,
            None,
        )
        .await
    }
}
