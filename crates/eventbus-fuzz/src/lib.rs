//! Every decoder of outside bytes in eventbus as a fuzz target (issue 15).
//!
//! Each `pub fn` here takes arbitrary bytes, feeds them to the project's real decoder and must
//! never panic, hang or allocate by a length it read without checking it: decoding errors are
//! the expected outcome for most inputs. Where it is cheap a target also checks an invariant
//! (decode → encode → decode gives the same value), and panics when it does not hold.
//!
//! The cargo-fuzz crate in `fuzz/` calls these functions from its `fuzz_targets/`, and
//! `tests/corpus.rs` replays the committed corpora (`fuzz/corpus/<target>/`) and the inputs of
//! past findings (`fuzz/regressions/<target>/`) through them in a plain `cargo test`.
//! `scripts/fuzz.sh` builds and runs the targets.
//!
//! | target | decoder |
//! |---|---|
//! | [`avro_datum`] | schemaless Avro into derived events: the direct decoder and apache-avro's resolving path |
//! | [`confluent_frame`] | Confluent framing (magic byte, schema id, datum) of payloads and keys |
//! | [`cloudevents_headers`] | [`EventMetadata::from_headers`](eventbus_core::EventMetadata::from_headers) |
//! | [`redis_reply`] | the Redis backend's `XREADGROUP`/`XCLAIM`/`XAUTOCLAIM` reply parsers and entry layout |
//! | [`pulsar_frame`] | the frame parser of the testkit's Pulsar proxy |
//! | [`config_url`] | [`BusConfig::from_vars`](eventbus_core::BusConfig::from_vars), backend selection and the Redis settings and URL |
#![forbid(unsafe_code)]

mod avro;
mod config;
pub mod events;
mod headers;
mod pulsar;
mod redis_reply;

pub use avro::{avro_datum, confluent_frame};
pub use config::config_url;
pub use headers::cloudevents_headers;
pub use pulsar::pulsar_frame;
pub use redis_reply::redis_reply;

/// A fuzz target: arbitrary bytes in, a panic only when the decoder breaks its contract.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("avro_datum", avro_datum),
    ("confluent_frame", confluent_frame),
    ("cloudevents_headers", cloudevents_headers),
    ("redis_reply", redis_reply),
    ("pulsar_frame", pulsar_frame),
    ("config_url", config_url),
];

/// Splits `data` at every `sep` byte: the simple way the targets that need several strings cut
/// them from one input.
fn split(data: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    data.split(move |b| *b == sep)
}
