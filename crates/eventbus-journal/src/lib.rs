//! A record of every event: what the producer published and how each consumer group handled
//! it, in SQLite (the embedded default) or PostgreSQL through sqlx; re-publishing a recorded
//! event; a transactional outbox; and an idempotency layer.
//!
//! ```no_run
//! # async fn demo(bus: eventbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! use eventbus_journal::{Journal, JournalSettings};
//!
//! let journal = Journal::connect("sqlite://eventbus.db", JournalSettings::default()).await?;
//! let bus = bus.producer_layer(journal.publish_layer());          // a row per published event
//! let consumer = journal.attach(bus.consumer("orders", "billing")); // a row per handled event
//! # Ok(()) }
//! ```
//!
//! Rows are written in batches by a task of their own, never on an event's path: when the
//! database is slow or down the rows wait in a bounded queue, and what does not fit is dropped
//! and counted (`eventbus_journal_lost_total`, [`Journal::losses`]) — the events go on.
#![forbid(unsafe_code)]

#[cfg(feature = "dashboard")]
pub mod dashboard;
mod entry;
mod error;
mod idempotency;
mod journal;
mod layers;
mod outbox;
mod store;
mod writer;

pub use entry::{Entry, Side, Status};
pub use error::{JournalError, Result};
pub use idempotency::Idempotency;
pub use journal::{EventId, Filter, Journal, JournalSettings};
pub use layers::{JournalLayer, JournalPublishLayer};
pub use outbox::{Outbox, OutboxRow, OutboxTransaction, Relay, RelaySettings};
pub use store::{Dialect, Store};
