//! Replays every committed fuzz input through its target, as a regular test: the seed corpora
//! of `fuzz/corpus/<target>/` and the inputs of past findings in `fuzz/regressions/<target>/`.
//! A target without corpus fails, so that this cannot pass by replaying nothing.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(name: &str) {
    let target = eventbus_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a target of that name");
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name}/ is missing or empty; write seeds with `cargo test -p eventbus-fuzz --test seeds -- --ignored`"
    );
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    println!(
        "{name}: {} corpus inputs, {} regression inputs replayed",
        corpus.len(),
        regressions.len()
    );
    assert!(failed.is_empty(), "{name} panicked on: {failed:#?}");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = eventbus_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "avro_datum",
            "confluent_frame",
            "cloudevents_headers",
            "redis_reply",
            "pulsar_frame",
            "config_url"
        ]
    );
}

#[test]
fn avro_datum() {
    replay("avro_datum");
}

#[test]
fn confluent_frame() {
    replay("confluent_frame");
}

#[test]
fn cloudevents_headers() {
    replay("cloudevents_headers");
}

#[test]
fn redis_reply() {
    replay("redis_reply");
}

#[test]
fn pulsar_frame() {
    replay("pulsar_frame");
}

#[test]
fn config_url() {
    replay("config_url");
}
