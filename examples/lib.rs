//! Runnable eventbus examples; see the files next to this one. Run one with
//! `cargo run --example quickstart`.
