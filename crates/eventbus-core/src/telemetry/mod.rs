//! Observability as layers: spans after OpenTelemetry's messaging conventions with W3C trace
//! context carried in headers, and metrics through the `metrics` facade. Both are in the default
//! stacks of consumers and producers; they cost little until a subscriber or recorder listens.

pub mod metrics_layer;
#[cfg(feature = "otel")]
mod otel;
pub mod trace_context;
mod tracing_layer;

pub use self::metrics_layer as metrics;
pub use self::metrics_layer::{MetricsLayer, PublishMetricsLayer};
pub use self::trace_context::TraceContext;
pub use self::tracing_layer::{PublishTracingLayer, TracingLayer};
