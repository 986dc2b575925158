//! Publish → handled latency on the in-memory bus at a fixed rate below saturation; the broker
//! backends print the same line at the end of their throughput benches.
//!
//! ```text
//! cargo bench -p eventbus-testkit --bench latency
//! ```
#![allow(missing_docs)]

use eventbus_core::{Bus, BusConfig, SerializerKind};
use eventbus_testkit::bench::{latency, print_latency};
use eventbus_testkit::memory::MemoryBroker;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bus = Bus::with_transport(
        MemoryBroker::new(8).transport(),
        SerializerKind::Avro,
        BusConfig::new(),
    );
    let (rate_per_s, events) = (1_000, 2_000);
    let percentiles = latency(&bus, "latency", rate_per_s, events).await;
    print_latency("memory", rate_per_s, events, percentiles);
}
