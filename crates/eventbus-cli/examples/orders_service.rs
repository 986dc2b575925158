//! A service's own binary with the `eventbus` commands: its event type is known to `produce`,
//! `tail` and `asyncapi`, and `run --name billing` starts its consumer.
//!
//! ```text
//! cargo run -p eventbus-cli --example orders_service -- --help
//! cargo run -p eventbus-cli --example orders_service -- asyncapi
//! EVENT_BUS_URL=redis://127.0.0.1:6379 cargo run -p eventbus-cli --features redis --example orders_service -- run --name billing
//! ```
//!
//! The billing receiver fails every event while `BILLING_BROKEN=1` (to fill the dead letters),
//! and appends each order id it handles to the file `BILLING_LOG` when that is set.

use std::io::Write;
use std::process::ExitCode;

use eventbus::{Consumer, Envelope, Event};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.order.placed.v1", key = "order_id")]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    total_cents: i64,
    coupon: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BillingError(String);

async fn bill(order: Envelope<OrderPlaced>) -> Result<(), BillingError> {
    if std::env::var("BILLING_BROKEN").is_ok_and(|v| v == "1") {
        return Err(BillingError("the payment provider is down".into()));
    }
    if let Ok(path) = std::env::var("BILLING_LOG") {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| BillingError(format!("cannot open {path}: {e}")))?;
        // One write per line: receivers run concurrently, and `writeln!` may write in pieces.
        log.write_all(format!("{}\n", order.order_id).as_bytes())
            .map_err(|e| BillingError(e.to_string()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    eventbus_cli::App::new("orders-service")
        .consumer("billing", &["orders"], "billing", |c: Consumer| {
            c.handle(bill)
        })
        .run()
        .await
}
