//! Consume → transform → produce: counts login failures per sender in a sliding window and
//! publishes an alert to a second topic when a sender passes a threshold.
//!
//! ```text
//! cargo run --example alert_service
//! ```
//!
//! Events are keyed by sender, so the runner hands one sender's events to one lane in order,
//! and the window per sender needs no further coordination.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventbus::{Envelope, Event, Producer, StartPosition};
use serde::{Deserialize, Serialize};

/// A login attempt failed.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.auth.login.failed.v1", key = "sender")]
struct LoginFailed {
    sender: String,
    ip: String,
    at: DateTime<Utc>,
}

/// A sender failed too often within the window.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.auth.sender.flagged.v1", key = "sender")]
struct SenderFlagged {
    sender: String,
    failures: i64,
    window_seconds: i64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

/// Failure times per sender within the window.
struct SlidingWindow {
    window: chrono::Duration,
    threshold: usize,
    by_sender: Mutex<HashMap<String, VecDeque<DateTime<Utc>>>>,
}

impl SlidingWindow {
    /// Records a failure; returns an alert when this one takes the sender over the threshold.
    fn record(&self, sender: &str, at: DateTime<Utc>) -> Option<SenderFlagged> {
        let mut all = self.by_sender.lock().ok()?;
        let times = all.entry(sender.to_owned()).or_default();
        times.push_back(at);
        while times.front().is_some_and(|t| at - *t > self.window) {
            times.pop_front();
        }
        // Alert once per crossing, not on every later failure.
        (times.len() == self.threshold + 1).then(|| SenderFlagged {
            sender: sender.to_owned(),
            failures: times.len() as i64,
            window_seconds: self.window.num_seconds(),
            first_at: times.front().copied().unwrap_or(at),
            last_at: at,
        })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alert_service failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let bus = eventbus::connect_from_env().await?;
    let window = Arc::new(SlidingWindow {
        window: chrono::Duration::seconds(60),
        threshold: 5,
        by_sender: Mutex::default(),
    });

    // The alert service: login-failures in, sender-alerts out.
    let producer: Producer = bus.producer().clone();
    let service = bus
        .consumer("login-failures", "alert-service")
        .start_at(StartPosition::Latest)
        .handle(move |e: Envelope<LoginFailed>| {
            let (window, producer) = (Arc::clone(&window), producer.clone());
            async move {
                if let Some(alert) = window.record(&e.sender, e.at) {
                    producer.send("sender-alerts", &alert).await?;
                }
                Ok::<_, eventbus::Error>(())
            }
        })
        .start()
        .await?;

    // Somebody downstream reads the alerts.
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = bus
        .consumer("sender-alerts", "security-dashboard")
        .start_at(StartPosition::Latest)
        .handle(move |e: Envelope<SenderFlagged>| {
            let alert_tx = alert_tx.clone();
            async move {
                println!(
                    "ALERT {}: {} failures within {} s ({} .. {})",
                    e.sender, e.failures, e.window_seconds, e.first_at, e.last_at
                );
                alert_tx
                    .send(e.sender.clone())
                    .map_err(|_| "dashboard closed")
            }
        })
        .start()
        .await?;

    // Traffic: mallory fails 8 times, the others once or twice.
    let traffic = [("alice", 1), ("mallory", 8), ("bob", 2)];
    let mut published = 0;
    for (sender, failures) in traffic {
        for i in 0..failures {
            let event = LoginFailed {
                sender: sender.into(),
                ip: format!("10.0.0.{i}"),
                at: Utc::now(),
            };
            bus.producer().send("login-failures", &event).await?;
            published += 1;
        }
    }
    println!("published {published} login failures");

    let flagged = tokio::time::timeout(Duration::from_secs(30), alert_rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no alert arrived"))?;
    anyhow::ensure!(flagged == "mallory", "flagged {flagged} instead of mallory");
    // Nobody else crosses the threshold.
    let extra = tokio::time::timeout(Duration::from_millis(300), alert_rx.recv()).await;
    anyhow::ensure!(
        extra.is_err(),
        "an unexpected second alert arrived: {extra:?}"
    );
    service.shutdown().await?;
    reader.shutdown().await?;
    println!(
        "{} -> {}: done",
        LoginFailed::EVENT_TYPE,
        SenderFlagged::EVENT_TYPE
    );
    Ok(())
}
