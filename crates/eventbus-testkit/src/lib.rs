//! Test support for eventbus: the in-memory backend (the embedded default), the conformance
//! suite every backend passes, capture helpers for application tests, and fixtures that start
//! real broker processes.
#![forbid(unsafe_code)]

pub mod bench;
pub mod capture;
pub mod conformance;
pub mod fixture;
pub mod memory;
pub mod openedx;
pub mod pulsar_proxy;
#[cfg(feature = "registry")]
pub mod registry;
