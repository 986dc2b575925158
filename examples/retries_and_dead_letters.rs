//! A receiver that fails some events: watch the retries with backoff, then the dead-letter topic.
//!
//! ```text
//! cargo run --example retries_and_dead_letters
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::consumer::dead_letter::{self, header};
use eventbus::{Envelope, Event, StartPosition, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A payment to charge.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.payment.requested.v1", key = "account")]
struct PaymentRequested {
    account: String,
    amount_cents: i64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("retries_and_dead_letters failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Three attempts, 50 ms then 100 ms apart; then the dead-letter topic `<topic>.dlq`.
    let config = eventbus::BusConfig::from_env()?.consumer(|c| {
        c.retry.max_attempts = 3;
        c.retry.base = Duration::from_millis(50);
        c.retry.cap = Duration::from_millis(400);
    });
    let bus = eventbus::connect(config).await?;
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = Arc::clone(&attempts);
    let consumer = bus
        .consumer("payments", "payment-service")
        .start_at(StartPosition::Latest)
        .handle(move |e: Envelope<PaymentRequested>| {
            let seen = Arc::clone(&seen);
            async move {
                let attempt = {
                    let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
                    let n = seen.entry(e.account.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                println!(
                    "attempt {attempt} for {} ({} cents)",
                    e.account, e.amount_cents
                );
                match e.account.as_str() {
                    // A gateway hiccup: fails once, then works.
                    "flaky" if attempt == 1 => anyhow::bail!("payment gateway timed out"),
                    // A permanent problem: every attempt fails, so the event is dead-lettered.
                    "closed" => anyhow::bail!("account {} is closed", e.account),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .await?;

    for (account, amount_cents) in [("ok", 1200), ("flaky", 500), ("closed", 9900)] {
        let event = PaymentRequested {
            account: account.into(),
            amount_cents,
        };
        bus.producer().send("payments", &event).await?;
    }

    // Read the dead-letter topic like an operator would.
    let dlq = dead_letter::topic_for(
        &bus.config().consumer.dead_letter_topic,
        &bus.producer().settings().full_topic("payments"),
    );
    let mut letters = bus
        .transport()
        .subscriber
        .subscribe(
            Subscription::new(&dlq, "dlq-inspector", "inspector-1")
                .starting_at(StartPosition::Earliest),
        )
        .await?;
    let letter = tokio::time::timeout(Duration::from_secs(30), letters.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the dead-letter stream ended"))??;
    let h = &letter.message.headers;
    println!(
        "dead letter on {dlq}: type={} reason={} attempts={} error={:?}",
        h.get("ce_type").unwrap_or("?"),
        h.get(header::REASON).unwrap_or("?"),
        h.get(header::ATTEMPTS).unwrap_or("?"),
        h.get(header::ERROR).unwrap_or("?"),
    );
    letter.ack().await?;
    consumer.shutdown().await?;
    let attempts = attempts.lock().map(|a| a.clone()).unwrap_or_default();
    println!("attempts per account: {attempts:?}");
    anyhow::ensure!(
        attempts.get("closed") == Some(&3) && attempts.get("flaky") == Some(&2),
        "unexpected attempts"
    );
    println!("PaymentRequested type: {}", PaymentRequested::EVENT_TYPE);
    Ok(())
}
