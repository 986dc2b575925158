//! Runs the reliability campaign and prints the figures table of `RELIABILITY.md`.
//!
//! ```text
//! scripts/reliability.sh [--scale full|reduced] [--backend B]… [--scenario S]…
//! ```
//!
//! Brokers are started by the testkit fixtures (redis-server, tansu, pulsar-lite); the worker
//! processes of the crash scenario are the `reliability-worker` binary next to this one. Exits
//! non-zero if any row lost an event or failed to run.

use std::process::ExitCode;

use clap::Parser;
use eventbus_reliability::{Backend, Row, Scale, Scenario};

/// The reliability campaign: every scenario on every backend, one table row each.
#[derive(Debug, Parser)]
struct Args {
    /// `full` for the table's sizes, `reduced` for the test suite's.
    #[arg(long, default_value = "full", value_parser = ["full", "reduced"])]
    scale: String,
    /// Only these backends (memory, redis, kafka, pulsar); all when omitted.
    #[arg(long = "backend")]
    backends: Vec<Backend>,
    /// Only these scenarios (restart, kill, network, garbage, slow); all when omitted.
    #[arg(long = "scenario")]
    scenarios: Vec<Scenario>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Dead letters are the garbage scenario's point: one log line each would drown the rest.
    eventbus_reliability::warnings::init_logging(
        "warn,eventbus_core::consumer::dead_letter=error,librdkafka=error,pulsar=error",
        false,
    );
    let args = Args::parse();
    let scale = if args.scale == "full" {
        Scale::Full
    } else {
        Scale::Reduced
    };
    let backends = if args.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        args.backends
    };
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
    };
    println!("{}", Row::HEADER);
    let mut failed = false;
    for scenario in scenarios {
        for &backend in &backends {
            if let Some(why) = scenario.not_applicable(backend) {
                println!(
                    "| {} | {backend} | – | – | – | – | – | – | n/a: {why} |",
                    scenario.title()
                );
                continue;
            }
            let started = std::time::Instant::now();
            match scenario.run(backend, scale).await {
                Ok(row) => {
                    failed |= !row.passed();
                    println!("{row}");
                }
                Err(e) => {
                    failed = true;
                    let title = scenario.title();
                    println!("| {title} | {backend} | – | – | – | – | – | – | **failed**: {e:#} |");
                }
            }
            eprintln!(
                "{scenario} on {backend}: {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
