//! The event every scenario sends: numbered, so that a receipt says exactly which one arrived.

use eventbus::Event;
use serde::{Deserialize, Serialize};

/// One numbered event. `seq` is unique within a run; `key` spreads events over partitions
/// and keeps per-key order where the backend guarantees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.eventbus.reliability.probe.v1", key = "key")]
pub struct Probe {
    /// The event's number in this run.
    pub seq: u64,
    /// The ordering key, e.g. `publisher-7`.
    pub key: String,
    /// Filler, so that events have a realistic size.
    pub body: String,
}

impl Probe {
    /// Event `seq` with `key` and a body of about `size` bytes.
    pub fn new(seq: u64, key: impl Into<String>, size: usize) -> Self {
        Self {
            seq,
            key: key.into(),
            body: "x".repeat(size),
        }
    }
}
