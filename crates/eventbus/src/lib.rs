//! # eventbus
//!
//! Typed domain events over Kafka, Redis Streams, Pulsar or an in-memory bus. The application
//! is written once; the backend is compiled in by a Cargo feature and picked at run time by a
//! configuration string (`EVENT_BUS_BACKEND`, or the scheme of `EVENT_BUS_URL`), the way Open
//! edX picks its bus with `EVENT_BUS_PRODUCER`. Messages stay wire-compatible with Open edX's
//! Python event bus.
//!
//! ```
//! use eventbus::{Envelope, Event, AvroRecord};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
//! struct UserData { id: i64, email: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(type = "org.example.user.registered.v1", key = "user.id")]
//! struct UserRegistered { user: UserData }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventbus::Result<()> {
//! let bus = eventbus::connect(eventbus::BusConfig::new()).await?; // memory:// by default
//! let consumer = bus
//!     .consumer("users", "welcome-mails")
//!     .handle(|e: Envelope<UserRegistered>| async move {
//!         println!("welcome, {}", e.user.email);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .start()
//!     .await?;
//! bus.producer()
//!     .send("users", &UserRegistered { user: UserData { id: 1, email: "ada@example.org".into() } })
//!     .await?;
//! # consumer.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | backend | URL schemes |
//! |---|---|---|
//! | `memory` (default) | in-process, for development and tests | `memory://` |
//! | `kafka` | Kafka with Avro in Confluent framing and a schema registry (the `eventbus-kafka` crate, re-exported as `kafka`) | `kafka://` |
//! | `pulsar` | Apache Pulsar, CloudEvents attributes as message properties (the `eventbus-pulsar` crate, re-exported as `pulsar`) | `pulsar://`, `pulsar+ssl://` |
//! | `redis` | Redis Streams (the `eventbus-redis` crate, re-exported as `redis`) | `redis://`, `rediss://` |
//!
//! A backend that is not compiled in is reported by name with the feature that adds it.
//!
//! | feature | adds |
//! |---|---|
//! | `telemetry` | [`telemetry`]: Prometheus `/metrics`, `/health/live`, `/health/ready` over axum |
//! | `otlp` | [`otlp`]: the spans exported to an OpenTelemetry collector over OTLP/HTTP |
#![forbid(unsafe_code)]

#[doc(inline)]
pub use eventbus_core::*;

/// The in-memory backend.
#[cfg(feature = "memory")]
pub use eventbus_testkit::memory;

/// The Kafka backend.
#[cfg(feature = "kafka")]
pub use eventbus_kafka as kafka;

/// The Pulsar backend.
#[cfg(feature = "pulsar")]
pub use eventbus_pulsar as pulsar;

/// The Redis Streams backend.
#[cfg(feature = "redis")]
pub use eventbus_redis as redis;

#[cfg(feature = "telemetry")]
pub mod telemetry;

#[cfg(feature = "otlp")]
pub mod otlp;

/// References every backend crate enabled by features, so that the linker keeps their
/// `inventory` registrations (an unreferenced crate is dropped, registrations and all).
pub fn link_backends() {
    #[cfg(feature = "memory")]
    eventbus_testkit::memory::register();
    #[cfg(feature = "redis")]
    eventbus_redis::register();
    #[cfg(feature = "kafka")]
    eventbus_kafka::register();
    #[cfg(feature = "pulsar")]
    eventbus_pulsar::register();
}

/// Connects the backend `config` selects.
pub async fn connect(config: BusConfig) -> Result<Bus> {
    link_backends();
    Bus::connect(config).await
}

/// Connects the backend the environment selects (`EVENT_BUS_BACKEND`, `EVENT_BUS_URL`, …; see
/// [`config`]).
pub async fn connect_from_env() -> Result<Bus> {
    link_backends();
    Bus::from_env().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn unknown_backend_names_what_was_asked_and_what_exists() {
        let err = super::connect(super::BusConfig::new().backend("nosuch"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), super::ErrorKind::UnknownBackend);
        let text = err.to_string();
        assert!(text.contains("`nosuch`"), "{text}");
        // Which backends are compiled in depends on the features this test was built with.
        let compiled = text.split("compiled in: ").nth(1).unwrap_or_default();
        assert!(compiled.contains("memory"), "{text}");
    }

    #[tokio::test]
    async fn url_scheme_picks_the_backend() {
        let bus = super::connect(super::BusConfig::new().url("memory://facade-test"))
            .await
            .unwrap();
        assert_eq!(bus.transport().backend, "memory");
        let err = super::connect(super::BusConfig::new().url("nats://127.0.0.1:4222"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nats"), "{err}");
        let err = super::connect(super::BusConfig::new().url("not a url"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), super::ErrorKind::Config);
    }
}
