//! The default layers as one future. Through the stack's chain of trait objects every layer
//! boxes a future per event; when a consumer keeps the five default policy layers as they came,
//! in their order, it runs them instead as one chain of concrete types, whose futures nest
//! inside one box. The layers' code is the same either way: each is written once, generic over
//! what it wraps ([`Wrap`](super::layer::Wrap), [`Inner`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::layer::{fuse_run, ConsumerStack, Inner, Layer, Next, Outcome, Then};
use super::{
    ConsumerSettings, Context, DeadLetterLayer, ErrorLimitLayer, RetryLayer, TimeoutLayer,
};
use crate::telemetry::{MetricsLayer, TracingLayer};

/// The default stack's layers, kept by their types as well, so that the consumer can tell
/// whether the stack still holds them after the application's edits.
#[derive(Clone)]
pub(crate) struct DefaultLayers {
    tracing: Arc<TracingLayer>,
    metrics: Arc<MetricsLayer>,
    error_limit: Arc<ErrorLimitLayer>,
    dead_letter: Arc<DeadLetterLayer>,
    retry: Arc<RetryLayer>,
}

impl DefaultLayers {
    pub(crate) fn new(settings: &ConsumerSettings) -> Self {
        Self {
            tracing: Arc::new(TracingLayer::new()),
            metrics: Arc::new(MetricsLayer::new()),
            error_limit: Arc::new(ErrorLimitLayer::new()),
            dead_letter: Arc::new(
                DeadLetterLayer::new(settings.dead_letter_topic.clone())
                    .release_after(settings.retry.cap),
            ),
            retry: Arc::new(RetryLayer::new(settings.retry)),
        }
    }

    /// The default stack, outermost first: these five, then the timeout.
    pub(crate) fn stack(&self, settings: &ConsumerSettings) -> ConsumerStack {
        let mut stack = ConsumerStack::new();
        for layer in self.in_order() {
            stack.push(layer);
        }
        stack.push(Arc::new(TimeoutLayer::new(settings.handler_timeout)));
        stack
    }

    fn in_order(&self) -> [Arc<dyn Layer>; 5] {
        [
            Arc::clone(&self.tracing) as Arc<dyn Layer>,
            Arc::clone(&self.metrics) as Arc<dyn Layer>,
            Arc::clone(&self.error_limit) as Arc<dyn Layer>,
            Arc::clone(&self.dead_letter) as Arc<dyn Layer>,
            Arc::clone(&self.retry) as Arc<dyn Layer>,
        ]
    }

    /// `layers` with the five replaced by one layer that runs them as one future, where they
    /// stand next to each other in their order. The very layers are looked for, not their
    /// names: a layer the application put in their place under the same name is its own.
    pub(crate) fn fuse(&self, layers: Vec<Arc<dyn Layer>>) -> Vec<Arc<dyn Layer>> {
        fuse_run(layers, &self.in_order(), || Arc::new(Fused(self.clone())))
    }
}

/// The five default layers run as one: `tracing` around `metrics` around `error-limit` around
/// `dead-letter` around `retry` around the rest of the stack.
struct Fused(DefaultLayers);

#[async_trait]
impl Layer for Fused {
    fn name(&self) -> &str {
        "tracing+metrics+error-limit+dead-letter+retry"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let d = &self.0;
        let retry = Then(&*d.retry, next);
        let dead_letter = Then(&*d.dead_letter, retry);
        let error_limit = Then(&*d.error_limit, dead_letter);
        let metrics = Then(&*d.metrics, error_limit);
        Then(&*d.tracing, metrics).run(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layers: &[Arc<dyn Layer>]) -> Vec<&str> {
        layers.iter().map(|l| l.name()).collect()
    }

    fn fused_stack(defaults: &DefaultLayers, stack: ConsumerStack) -> Vec<Arc<dyn Layer>> {
        defaults.fuse(stack.into_layers().to_vec())
    }

    const FUSED: &str = "tracing+metrics+error-limit+dead-letter+retry";

    #[test]
    fn the_untouched_defaults_run_as_one_layer() {
        let settings = ConsumerSettings::default();
        let defaults = DefaultLayers::new(&settings);
        let layers = fused_stack(&defaults, defaults.stack(&settings));
        assert_eq!(names(&layers), [FUSED, "timeout"]);
    }

    #[test]
    fn layers_around_the_defaults_leave_them_fused() {
        let settings = ConsumerSettings::default();
        let defaults = DefaultLayers::new(&settings);
        let mut stack = defaults.stack(&settings);
        stack.push_outer(Arc::new(TimeoutLayer::new(None)));
        stack
            .insert_after("retry", Arc::new(ErrorLimitLayer::new()))
            .unwrap();
        let layers = fused_stack(&defaults, stack);
        assert_eq!(names(&layers), ["timeout", FUSED, "error-limit", "timeout"]);
    }

    #[test]
    fn a_default_replaced_under_its_name_or_moved_is_not_fused() {
        let settings = ConsumerSettings::default();
        let defaults = DefaultLayers::new(&settings);
        let mut replaced = defaults.stack(&settings);
        replaced
            .replace("retry", Arc::new(RetryLayer::new(settings.retry)))
            .unwrap();
        let layers = fused_stack(&defaults, replaced);
        assert_eq!(names(&layers), defaults.stack(&settings).names());

        let mut between = defaults.stack(&settings);
        between
            .insert_before("retry", Arc::new(ErrorLimitLayer::new()))
            .unwrap();
        assert_eq!(fused_stack(&defaults, between).len(), 7);

        // Another consumer's defaults are other layers: nothing of this one's is fused.
        let other = DefaultLayers::new(&settings);
        assert_eq!(fused_stack(&other, defaults.stack(&settings)).len(), 6);
    }
}
