//! Spans after OpenTelemetry's messaging conventions: one per publish (kind producer) and one
//! per handled delivery (kind consumer), linked through the W3C `traceparent` header.

use std::future::Future;

use async_trait::async_trait;
use futures::FutureExt;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::trace_context::{Current, TraceContext};
use crate::consumer::layer::{Inner, Wrap};
use crate::consumer::{Context, Layer, Next, Outcome};
use crate::error::Result;
use crate::metadata::header;
use crate::producer::layer::{PublishInner, PublishWrap};
use crate::producer::{Outgoing, PublishLayer, PublishNext};
use crate::transport::Position;

/// A `process` span per delivery (`tracing`): its parent is the span whose `traceparent` the
/// message carries, so the consumer continues the producer's trace, and publishing from a
/// receiver continues the consumer's. Fields: `messaging.system`,
/// `messaging.destination.name`, `messaging.consumer.group.name`, `messaging.operation.type`,
/// `messaging.message.id`, `messaging.delivery.attempt`, `cloudevents.event_type`, `trace_id`,
/// `span_id`, `parent_span_id` and, at the end, `eventbus.outcome`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl TracingLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Layer for TracingLayer {
    fn name(&self) -> &str {
        "tracing"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.wrap(ctx, next).await
    }
}

impl Wrap for TracingLayer {
    // Not an `async fn` (nor an `async` block): those hold the wrapped future twice over, made
    // and then moved to be awaited, and this future is in every event's allocation.
    fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> impl Future<Output = Outcome> + Send {
        let span = tracing::info_span!(
            "process",
            otel.name = Empty,
            otel.kind = "consumer",
            messaging.system = ctx.consumer().backend(),
            messaging.destination.name = ctx.topic(),
            messaging.consumer.group.name = ctx.group(),
            messaging.operation.type = "process",
            messaging.message.id = Empty,
            messaging.delivery.attempt = ctx.attempt(),
            cloudevents.event_type = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
            eventbus.outcome = Empty,
        );
        let current = if span.is_disabled() {
            // Nobody records the span's ids: only a publish from the receiver needs them.
            Current::child_of(ctx.headers())
        } else {
            let parent = TraceContext::from_headers(ctx.headers());
            span.record("otel.name", format!("process {}", ctx.topic()));
            if let Some(parent) = &parent {
                span.record("parent_span_id", parent.span_id_hex());
            }
            if let Ok(m) = ctx.metadata() {
                span.record("messaging.message.id", m.id.to_string());
                span.record("cloudevents.event_type", m.event_type.as_str());
            }
            // After the fields above: an OpenTelemetry span starts when its ids are asked for.
            let own = own_context(&span, parent.as_ref(), Parent::Remote);
            record_ids(&span, &own);
            Current::Known(own)
        };
        current
            .scope(inner.run(ctx).instrument(span.clone()))
            .map(move |outcome| {
                span.record("eventbus.outcome", outcome.as_str());
                outcome
            })
    }
}

/// A `publish` span per published batch (`tracing`), child of the delivery being handled when
/// there is one; every message gets its `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishTracingLayer;

impl PublishTracingLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self
    }
}

#[async_trait]
impl PublishLayer for PublishTracingLayer {
    fn name(&self) -> &str {
        "tracing"
    }

    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>> {
        self.wrap(out, next).await
    }
}

impl PublishWrap for PublishTracingLayer {
    async fn wrap<I: PublishInner>(&self, out: &mut Outgoing, inner: I) -> Result<Vec<Position>> {
        let parent = TraceContext::current();
        let span = tracing::info_span!(
            "publish",
            otel.name = Empty,
            otel.kind = "producer",
            messaging.system = out.backend,
            messaging.destination.name = out.topic.as_str(),
            messaging.operation.type = "send",
            messaging.batch.message_count = out.messages.len(),
            messaging.message.id = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        if !span.is_disabled() {
            span.record("otel.name", format!("publish {}", out.topic));
            if let Some(parent) = &parent {
                span.record("parent_span_id", parent.span_id_hex());
            }
            if let [one] = out.messages.as_slice() {
                if let Some(id) = one.headers.get(header::ID) {
                    span.record("messaging.message.id", id);
                }
            }
        }
        let own = own_context(&span, parent.as_ref(), Parent::Local);
        record_ids(&span, &own);
        own.write_headers_to_all(out.messages.iter_mut().map(|m| &mut m.headers));
        let result = inner.run(out).instrument(span.clone()).await;
        if let Err(e) = &result {
            span.in_scope(|| tracing::debug!(error = %e, "publish failed"));
        }
        result
    }
}

/// Where a span's parent comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// The `traceparent` of a delivery: another process's span.
    Remote,
    /// The delivery being handled in this task, if any.
    Local,
}

/// The span's own place in the trace: the ids an OpenTelemetry layer gave it when there is one
/// (feature `otel`), so that the headers name the exported span; else a child of `parent`, or a
/// new trace.
fn own_context(span: &Span, parent: Option<&TraceContext>, from: Parent) -> TraceContext {
    #[cfg(feature = "otel")]
    {
        let remote = parent.filter(|_| from == Parent::Remote);
        if let Some(own) = super::otel::span_context(span, remote, parent) {
            return own;
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, from);
    parent.map_or_else(TraceContext::new_root, TraceContext::child)
}

fn record_ids(span: &Span, own: &TraceContext) {
    if span.is_disabled() {
        return;
    }
    span.record("trace_id", own.trace_id_hex());
    span.record("span_id", own.span_id_hex());
}
