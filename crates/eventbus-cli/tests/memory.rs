//! The commands on the in-memory bus, inside one process: a service's own binary hands its bus
//! to [`eventbus_cli::App::bus`], and producing, tailing, replaying, dead letters and simulating
//! all meet on it.

use std::collections::BTreeSet;
use std::time::Duration;

use eventbus::{BusConfig, Envelope, Event};
use eventbus_cli::{App, CliError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.parcel.shipped.v1", key = "parcel_id")]
struct ParcelShipped {
    parcel_id: i64,
    carrier: String,
}

const PARCEL: &str = "org.example.parcel.shipped.v1";

async fn bus(name: &str) -> eventbus::Bus {
    eventbus::connect(BusConfig::new().url(format!("memory://{name}")))
        .await
        .expect("memory bus")
}

async fn cli(app: &App, args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    let mut argv = vec!["eventbus"];
    argv.extend(args);
    app.run_from(argv, &mut out).await?;
    Ok(String::from_utf8(out).expect("UTF-8"))
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn parcel(id: i64) -> String {
    format!("{{\"parcel_id\":{id},\"carrier\":\"post\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_tail_and_replay_on_memory() {
    let app = App::new("parcels").bus(bus("cli-produce").await);
    let out = cli(
        &app,
        &[
            "produce",
            "parcels",
            "--type",
            PARCEL,
            "--data",
            &parcel(7),
            "--count",
            "1000",
        ],
    )
    .await
    .expect("produce");
    assert_eq!(out.lines().count(), 1000);
    let tailed = lines(
        &cli(
            &app,
            &["tail", "parcels", "--from", "earliest", "--max", "1000"],
        )
        .await
        .expect("tail"),
    );
    assert_eq!(tailed.len(), 1000);
    assert!(tailed
        .iter()
        .all(|t| t["data"]["parcel_id"] == 7 && t["key"] == "7"));
    let ids: BTreeSet<&str> = tailed
        .iter()
        .filter_map(|t| t["metadata"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1000, "each send is a new event");

    let from = chrono::Utc::now().to_rfc3339();
    cli(
        &app,
        &[
            "produce",
            "parcels",
            "--type",
            PARCEL,
            "--data",
            &parcel(8),
            "-q",
        ],
    )
    .await
    .expect("produce");
    let to = chrono::Utc::now().to_rfc3339();
    let summary = cli(
        &app,
        &[
            "replay",
            "parcels",
            "--from",
            &from,
            "--to",
            &to,
            "--into",
            "parcels-again",
            "--idle",
            "1s",
        ],
    )
    .await
    .expect("replay");
    assert!(summary.starts_with("replayed 1 event(s)"), "{summary}");
    let again = lines(
        &cli(
            &app,
            &[
                "tail",
                "parcels-again",
                "--from",
                "earliest",
                "--idle",
                "1s",
            ],
        )
        .await
        .expect("tail"),
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["data"]["parcel_id"], 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_on_memory() {
    let bus = bus("cli-dlq").await;
    let app = App::new("parcels").bus(bus.clone());
    let failing = bus
        .consumer("parcels", "labels")
        .configure(|s| {
            s.retry.max_attempts = 1;
            s.consecutive_error_limit = 0;
        })
        .handle(|_: Envelope<ParcelShipped>| async {
            Err::<(), _>(std::io::Error::other("printer jammed"))
        })
        .start()
        .await
        .expect("consumer");
    for id in 1..=5 {
        cli(
            &app,
            &[
                "produce",
                "parcels",
                "--type",
                PARCEL,
                "--data",
                &parcel(id),
            ],
        )
        .await
        .expect("produce");
    }
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = lines(
            &cli(&app, &["dlq", "list", "parcels.dlq", "--idle", "300ms"])
                .await
                .expect("list"),
        );
        if dead.len() == 5 {
            break;
        }
    }
    assert_eq!(dead.len(), 5);
    assert_eq!(dead[0]["reason"], "receiver-failed");
    assert!(dead[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("printer jammed")));
    failing.shutdown().await.expect("shutdown");

    let handled = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let seen = handled.clone();
    let fixed = bus
        .consumer("parcels", "labels")
        .handle(move |e: Envelope<ParcelShipped>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").insert(e.parcel_id);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    let moved = cli(&app, &["dlq", "redrive", "parcels.dlq", "--idle", "2s"])
        .await
        .expect("redrive");
    assert_eq!(moved.trim(), "redrove 5 dead letter(s) to parcels");
    for _ in 0..100 {
        if handled.lock().expect("lock").len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*handled.lock().expect("lock"), (1..=5).collect());
    fixed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_reaches_the_asked_rate_on_memory() {
    let app = App::new("parcels").bus(bus("cli-simulate").await);
    let report = cli(
        &app,
        &[
            "simulate",
            "parcels",
            "--type",
            PARCEL,
            "--rate",
            "2000",
            "--duration",
            "3s",
            "--keys",
            "50",
            "--seed",
            "1",
        ],
    )
    .await
    .expect("simulate");
    let rate: f64 = report
        .split(": ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {report}"));
    // Never faster than asked; slower only by what a loaded machine takes from a paced run
    // (the pace catches up after a stall, but not after one at the very end).
    assert!(report.contains("sent 6000 event(s) in "), "{report}");
    assert!(
        (1000.0..=2200.0).contains(&rate),
        "asked 2000/s, got {report}"
    );
    let tailed = lines(
        &cli(
            &app,
            &["tail", "parcels", "--from", "earliest", "--max", "6000"],
        )
        .await
        .expect("tail"),
    );
    let keys: BTreeSet<&str> = tailed.iter().filter_map(|t| t["key"].as_str()).collect();
    assert_eq!(keys.len(), 50, "spread over the asked keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_types_and_usage_errors() {
    let app = App::new("parcels").bus(bus("cli-help").await);
    let help = cli(&app, &["--help"]).await.expect("help");
    for command in [
        "produce",
        "tail",
        "replay",
        "dlq",
        "simulate",
        "run",
        "asyncapi",
        "Exit codes",
    ] {
        assert!(help.contains(command), "{command} missing from {help}");
    }
    let produce_help = cli(&app, &["produce", "--help"]).await.expect("help");
    assert!(produce_help.contains("Examples:"), "{produce_help}");
    let types = cli(&app, &["types"]).await.expect("types");
    assert!(
        types.contains("org.example.parcel.shipped.v1 minor=0 key=parcel_id"),
        "{types}"
    );
    let err = cli(&app, &["produce", "parcels", "--data", "{}"])
        .await
        .unwrap_err();
    assert!(matches!(err, CliError::Usage(_)), "{err}");
    assert!(err.to_string().contains("--type"), "{err}");
    let err = cli(&app, &["tail", "parcels", "--url", "redis://x"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bus of its own"), "{err}");
}
