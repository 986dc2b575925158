//! Producer middleware: a [`PublishLayer`] sees every outgoing batch before the backend does,
//! and can change its messages (add headers), time it or refuse it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::consumer::layer::{fuse_run, Then};
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
        for layer in PublishDefaults::default().in_order() {
            stack.push(layer);
        }
        stack
    }
}

/// The default layers, kept by their types as well, so that a producer can tell whether its
/// stack still holds them after the application's edits.
#[derive(Clone, Default)]
pub(crate) struct PublishDefaults {
    tracing: Arc<PublishTracingLayer>,
    metrics: Arc<PublishMetricsLayer>,
}

impl PublishDefaults {
    /// The default stack, outermost first.
    pub(crate) fn layers(&self) -> Arc<[Arc<dyn PublishLayer>]> {
        self.in_order().into()
    }

    fn in_order(&self) -> [Arc<dyn PublishLayer>; 2] {
        [
            Arc::clone(&self.tracing) as Arc<dyn PublishLayer>,
            Arc::clone(&self.metrics) as Arc<dyn PublishLayer>,
        ]
    }

    /// `layers` with the defaults replaced by one layer that runs them as one future, where
    /// they stand next to each other in their order: through the stack's trait objects each
    /// layer boxes a future per publish call. The very layers are looked for, not their names.
    pub(crate) fn fuse(&self, layers: &[Arc<dyn PublishLayer>]) -> Arc<[Arc<dyn PublishLayer>]> {
        fuse_run(layers.to_vec(), &self.in_order(), || {
            Arc::new(Fused(self.clone()))
        })
        .into()
    }
}

/// `tracing` around `metrics` around the rest of the stack, as one layer.
struct Fused(PublishDefaults);

#[async_trait]
impl PublishLayer for Fused {
    fn name(&self) -> &str {
        "tracing+metrics"
    }

    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>> {
        let metrics = Then(&*self.0.metrics, next);
        self.0.tracing.wrap(out, metrics).await
    }
}

/// What a publish layer wraps: the rest of the stack, or another layer around it.
pub(crate) trait PublishInner: Send + Sync {
    /// Publishes the batch through what is wrapped.
    fn run(self, out: &mut Outgoing) -> impl Future<Output = Result<Vec<Position>>> + Send;
}

impl PublishInner for PublishNext<'_> {
    fn run(self, out: &mut Outgoing) -> impl Future<Output = Result<Vec<Position>>> + Send {
        PublishNext::run(self, out)
    }
}

/// A publish layer written once, generic over what it wraps, so that the default layers nest
/// as one future.
pub(crate) trait PublishWrap: Send + Sync {
    /// Publishes one batch around `inner`.
    fn wrap<I: PublishInner>(
        &self,
        out: &mut Outgoing,
        inner: I,
    ) -> impl Future<Output = Result<Vec<Position>>> + Send;
}

impl<L: PublishWrap, I: PublishInner> PublishInner for Then<'_, L, I> {
    fn run(self, out: &mut Outgoing) -> impl Future<Output = Result<Vec<Position>>> + Send {
        self.0.wrap(out, self.1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layers: &[Arc<dyn PublishLayer>]) -> Vec<&str> {
        layers.iter().map(|l| l.name()).collect()
    }

    fn stack_of(layers: &[Arc<dyn PublishLayer>]) -> ProducerStack {
        let mut stack = ProducerStack::new();
        for layer in layers {
            stack.push(Arc::clone(layer));
        }
        stack
    }

    const FUSED: &str = "tracing+metrics";

    #[test]
    fn the_defaults_run_as_one_layer_where_they_stand_untouched() {
        let defaults = PublishDefaults::default();
        assert_eq!(names(&defaults.fuse(&defaults.layers())), [FUSED]);

        let mut around = stack_of(&defaults.layers());
        around.push_outer(Arc::new(PublishMetricsLayer::new()));
        around.push(Arc::new(PublishTracingLayer::new()));
        let layers = defaults.fuse(&around.into_layers());
        assert_eq!(names(&layers), ["metrics", FUSED, "tracing"]);
    }

    #[test]
    fn a_default_replaced_under_its_name_or_split_off_is_not_fused() {
        let defaults = PublishDefaults::default();
        let mut replaced = stack_of(&defaults.layers());
        replaced
            .replace("metrics", Arc::new(PublishMetricsLayer::new()))
            .unwrap();
        let layers = defaults.fuse(&replaced.into_layers());
        assert_eq!(names(&layers), ["tracing", "metrics"]);

        let mut between = stack_of(&defaults.layers());
        between
            .insert_after("tracing", Arc::new(PublishTracingLayer::new()))
            .unwrap();
        assert_eq!(defaults.fuse(&between.into_layers()).len(), 3);

        // Another producer's defaults are other layers.
        let other = PublishDefaults::default();
        assert_eq!(other.fuse(&defaults.layers()).len(), 2);
    }
}
