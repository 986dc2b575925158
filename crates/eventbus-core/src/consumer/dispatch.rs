//! From a decoded message to the code that handles it: a route per event type, erased so the
//! runner can hold routes of many types in one map.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Envelope, Event};
use crate::metadata::EventMetadata;
use crate::serializer::{decode_event, Serializer};
use crate::signal::{BoxedSource, Receiver};

/// Decodes the payload of one event type into a ready call.
pub(crate) trait Route: Send + Sync {
    /// Decodes `payload`; the result runs the receivers, as often as the retry policy says.
    fn prepare(
        &self,
        topic: &str,
        payload: &[u8],
        metadata: EventMetadata,
        serializer: &dyn Serializer,
    ) -> Result<Box<dyn Call>>;
}

/// A decoded event bound to its receivers.
#[async_trait]
pub(crate) trait Call: Send + Sync {
    async fn call(&self) -> Result<()>;
}

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
    fn prepare(
        &self,
        topic: &str,
        payload: &[u8],
        metadata: EventMetadata,
        serializer: &dyn Serializer,
    ) -> Result<Box<dyn Call>> {
        let event = decode_event::<E>(serializer, topic, payload, Some(metadata.minor_version))?;
        Ok(Box::new(EventCall {
            envelope: Envelope::new(event, metadata),
            target: Arc::clone(&self.target),
        }))
    }
}

struct EventCall<E> {
    envelope: Envelope<E>,
    target: Arc<Target<E>>,
}

#[async_trait]
impl<E: Event> Call for EventCall<E> {
    async fn call(&self) -> Result<()> {
        match self.target.as_ref() {
            Target::Signal => E::signal().dispatch(self.envelope.clone()).await,
            Target::Receiver(receiver) => {
                receiver.receive(self.envelope.clone()).await.map_err(|e| {
                    Error::new(ErrorKind::Receiver, "a receiver returned an error")
                        .with("event_type", E::EVENT_TYPE)
                        .with_source(BoxedSource(e))
                })
            }
        }
    }
}
