//! The reliability campaign: what happens to events when things go wrong, on every backend.
//!
//! Each [`Scenario`] runs against a [`Rig`] — a real broker started by the testkit fixtures
//! (redis-server, tansu with the schema-registry fixture, pulsar-lite behind the frame proxy),
//! optionally behind the testkit's [`FaultProxy`](eventbus_testkit::fault_proxy::FaultProxy),
//! or the in-memory bus — and returns a [`Row`]: how many events were sent, acknowledged by the
//! broker, received by the consumer, lost (must be 0) and received more than once, and how long
//! the bus took to recover from the fault.
//!
//! The `reliability` binary runs the campaign and prints the table that `RELIABILITY.md`
//! records; `tests/reduced.rs` runs reduced sizes of the crash, network and garbage scenarios
//! as part of `cargo test`.

pub mod ledger;
pub mod probe;
pub mod rig;
pub mod row;
pub mod scenarios;
pub mod warnings;

pub use ledger::Ledger;
pub use rig::{Backend, Rig};
pub use row::Row;
pub use scenarios::{Scale, Scenario};
