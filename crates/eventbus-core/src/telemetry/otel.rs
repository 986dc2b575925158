//! With the `otel` feature: when the subscriber has an OpenTelemetry layer, eventbus's spans
//! take their ids from it, so the `traceparent` a message carries names the span that was
//! exported and one trace reads producer → broker → consumer in the collector.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::trace_context::TraceContext;

/// The ids OpenTelemetry gave `span`, or `None` when no OpenTelemetry layer records it.
///
/// `remote_parent` is the context a delivery carried: it becomes the span's parent. A publish
/// passes `None` and keeps OpenTelemetry's own parent (the current span: the delivery being
/// handled, or the application's request span), which is the better parent there.
pub(super) fn span_context(
    span: &tracing::Span,
    remote_parent: Option<&TraceContext>,
    state_from: Option<&TraceContext>,
) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(parent) = remote_parent {
        let flags = if parent.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id()),
            SpanId::from_bytes(parent.span_id()),
            flags,
            true,
            TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is there: then our own ids serve.
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .ok()?;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    let ids = TraceContext::from_ids(
        own.trace_id().to_bytes(),
        own.span_id().to_bytes(),
        own.is_sampled(),
    );
    // `tracestate` belongs to the trace's vendors; pass it on as it came.
    Some(match state_from.and_then(TraceContext::state) {
        Some(state) => ids.with_state(state),
        None => ids,
    })
}
