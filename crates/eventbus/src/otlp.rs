//! OpenTelemetry export over OTLP (feature `otlp`): eventbus's `publish` and `process` spans,
//! and every other `tracing` span of the application, sent to a collector as OTLP/HTTP
//! protobuf. The spans keep the ids written into the messages' `traceparent`, so a trace that
//! crosses services through the bus reads as one in the collector.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # fn main() -> eventbus::Result<()> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), OTEL_SERVICE_NAME.
//! let otlp = eventbus::otlp::Otlp::start(eventbus::otlp::OtlpSettings::from_env())?;
//! tracing_subscriber::registry().with(otlp.layer()).init();
//! // … run the bus …
//! otlp.shutdown()?; // exports what is still buffered
//! # Ok(()) }
//! ```
//!
//! Without this feature the spans are plain `tracing` spans and eventbus makes its own ids.

use std::fmt;
use std::time::Duration;

use eventbus_core::{Error, ErrorKind, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// The collector's default OTLP/HTTP address.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// Where and as whom to export.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base address (`/v1/traces` is appended), plain `http://`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// How long one export may take.
    pub timeout: Duration,
}

impl OtlpSettings {
    /// Export to `endpoint` (e.g. `http://otel-collector:4318`) as service `eventbus`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "eventbus".to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The standard OpenTelemetry variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole
    /// URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (base address; default [`DEFAULT_ENDPOINT`]), and
    /// `OTEL_SERVICE_NAME`, else Open edX's `EVENTS_SERVICE_NAME`, else `eventbus`.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| traces_url(&base)))
            .unwrap_or_else(|| traces_url(DEFAULT_ENDPOINT));
        let mut settings = Self::new(endpoint);
        if let Some(name) = set("OTEL_SERVICE_NAME").or_else(|| set("EVENTS_SERVICE_NAME")) {
            settings.service_name = name;
        }
        settings
    }

    /// Sets `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Sets the time one export may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL the spans are posted to.
    fn traces_endpoint(&self) -> String {
        if self.endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            self.endpoint.clone()
        } else {
            traces_url(&self.endpoint)
        }
    }
}

fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// A running export pipeline: a batching span processor on its own thread that posts to the
/// collector. Add [`Otlp::layer`] to the subscriber; call [`Otlp::shutdown`] before the process
/// exits, or buffered spans are lost.
pub struct Otlp {
    provider: SdkTracerProvider,
    tracer: Tracer,
    endpoint: String,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp")
            .field(
                "endpoint",
                &eventbus_core::redact::redact_url(&self.endpoint),
            )
            .finish_non_exhaustive()
    }
}

impl Otlp {
    /// Starts the pipeline. Nothing is sent until a span ends; an unreachable collector is
    /// reported by OpenTelemetry's own log when an export fails, and never stops events.
    pub fn start(settings: OtlpSettings) -> Result<Self> {
        let endpoint = settings.traces_endpoint();
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::Config,
                format!("OTLP endpoint {why}; give the collector's OTLP/HTTP address, e.g. {DEFAULT_ENDPOINT}"),
            )
            .with("setting", "OTEL_EXPORTER_OTLP_ENDPOINT")
            .with("endpoint", eventbus_core::redact::redact_url(&endpoint))
        };
        match url::Url::parse(&endpoint) {
            Ok(u) if u.scheme() == "http" => {}
            Ok(u) if u.scheme() == "https" => {
                return Err(invalid(
                    "uses https, which this build does not speak (plain OTLP/HTTP only: export to a local collector or agent)",
                ))
            }
            Ok(_) => return Err(invalid("is not an http:// URL")),
            Err(_) => return Err(invalid("is not a URL")),
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot build the OTLP exporter: {e}"),
                )
                .with("endpoint", eventbus_core::redact::redact_url(&endpoint))
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("eventbus");
        Ok(Self {
            provider,
            tracer,
            endpoint,
        })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for this pipeline.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Exports every ended span that is still buffered.
    pub fn flush(&self) -> Result<()> {
        self.provider
            .force_flush()
            .map_err(|e| self.export_error("flush", e))
    }

    /// Exports what is buffered and stops the pipeline.
    pub fn shutdown(self) -> Result<()> {
        self.provider
            .shutdown()
            .map_err(|e| self.export_error("shutdown", e))
    }

    fn export_error(&self, operation: &str, e: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!("OTLP {operation} failed: {e}; is the collector reachable?"),
        )
        .temporary()
        .with(
            "endpoint",
            eventbus_core::redact::redact_url(&self.endpoint),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> OtlpSettings {
        OtlpSettings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn reads_the_standard_variables() {
        let s = settings(&[]);
        assert_eq!(s.traces_endpoint(), "http://localhost:4318/v1/traces");
        assert_eq!(s.service_name, "eventbus");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("EVENTS_SERVICE_NAME", "lms"),
        ]);
        assert_eq!(s.traces_endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "lms");
        let s = settings(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:9/custom/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_SERVICE_NAME", "billing"),
            ("EVENTS_SERVICE_NAME", "lms"),
        ]);
        assert_eq!(s.traces_endpoint(), "http://c:9/custom/v1/traces");
        assert_eq!(s.service_name, "billing");
    }

    #[test]
    fn refuses_endpoints_it_cannot_reach() {
        for (endpoint, says) in [
            ("https://collector:4318", "uses https"),
            ("collector:4318", "not an http:// URL"),
            ("not a url", "not a URL"),
        ] {
            let e = Otlp::start(OtlpSettings::new(endpoint)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{endpoint}");
            assert!(e.to_string().contains(says), "{endpoint}: {e}");
            assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        }
    }

    #[test]
    fn hides_a_password_in_the_endpoint() {
        let otlp = Otlp::start(OtlpSettings::new("http://user:hunter2@localhost:4318")).unwrap();
        assert!(!format!("{otlp:?}").contains("hunter2"));
        otlp.shutdown().ok();
    }
}
