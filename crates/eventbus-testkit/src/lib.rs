//! Test support for eventbus: the in-memory backend (the embedded default), capture helpers for
//! application tests and Open edX sample events; behind features, the conformance suite every
//! backend passes and fixtures that start real broker processes.
//!
//! | feature | adds |
//! |---|---|
//! | (none) | [`memory`], [`capture`], [`openedx`] |
//! | `conformance` | `conformance` (the suite), `bench` (what the throughput benches share) |
//! | `fixtures` | `fixture` (redis-server, tansu, pulsar-lite on free ports), `process` (stopping their processes), `pulsar_proxy`, `fault_proxy` (latency, resets, black holes), the `with-broker` runner |
//! | `registry` | `fixtures` and `registry`, a schema-registry server for Kafka tests |
//!
//! The facade's `memory` feature uses this crate without features, so a production build
//! compiles none of the test machinery.
#![forbid(unsafe_code)]

#[cfg(feature = "conformance")]
pub mod bench;
pub mod capture;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "fixtures")]
pub mod fault_proxy;
#[cfg(feature = "fixtures")]
pub mod fixture;
pub mod memory;
pub mod openedx;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "fixtures")]
pub mod process;
#[cfg(feature = "fixtures")]
pub mod pulsar_proxy;
#[cfg(feature = "registry")]
pub mod registry;
