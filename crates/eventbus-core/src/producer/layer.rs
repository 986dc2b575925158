//! Producer middleware: a [`PublishLayer`] sees every outgoing batch before the backend does,
//! and can change its messages (add headers), time it or refuse it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::consumer::{Named, Stack};
use crate::error::Result;
use crate::telemetry::{PublishMetricsLayer, PublishTracingLayer};
use crate::transport::{Message, Position, Publisher};

/// A batch on its way to the broker.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outgoing {
    /// The full topic name.
    pub topic: String,
    /// The messages, in order. The backend takes them; after `next.run` this is empty.
    pub messages: Vec<Message>,
    /// The backend's name, the `messaging.system`.
    pub backend: &'static str,
}

/// Producer middleware: `publish` gets the batch and the rest of the stack, calls
/// `next.run(out)` and returns its positions (or an error of its own).
#[async_trait]
pub trait PublishLayer: Send + Sync {
    /// A short name, by which [`ProducerStack`] finds it.
    fn name(&self) -> &str;

    /// Publishes one batch.
    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>>;
}

impl Named for dyn PublishLayer {
    fn layer_name(&self) -> &str {
        self.name()
    }
}

/// The layers of a producer, outermost first; the default is `tracing, metrics`.
pub type ProducerStack = Stack<dyn PublishLayer>;

impl ProducerStack {
    /// The default producer stack: `tracing`, `metrics`.
    pub fn defaults() -> Self {
        let mut stack = ProducerStack::new();
        stack
            .push(Arc::new(PublishTracingLayer::new()))
            .push(Arc::new(PublishMetricsLayer::new()));
        stack
    }
}

/// The rest of the producer stack below a layer, ending at the backend's publisher.
#[derive(Clone, Copy)]
pub struct PublishNext<'a> {
    layers: &'a [Arc<dyn PublishLayer>],
    publisher: &'a dyn Publisher,
}

impl<'a> PublishNext<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn PublishLayer>], publisher: &'a dyn Publisher) -> Self {
        Self { layers, publisher }
    }

    /// Runs the inner layers and publishes.
    pub async fn run(self, out: &mut Outgoing) -> Result<Vec<Position>> {
        match self.layers.split_first() {
            Some((layer, inner)) => {
                layer
                    .publish(
                        out,
                        PublishNext {
                            layers: inner,
                            publisher: self.publisher,
                        },
                    )
                    .await
            }
            None => {
                let messages = std::mem::take(&mut out.messages);
                self.publisher.publish(&out.topic, messages).await
            }
        }
    }
}

impl fmt::Debug for PublishNext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
        f.debug_struct("PublishNext")
            .field("layers", &names)
            .finish()
    }
}
