//! Quickstart: two event types, receivers, publish, consume, print.
//!
//! Runs on the in-memory bus with no broker:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The same program runs on any compiled-in backend without code changes, e.g.
//! `EVENT_BUS_URL=redis://127.0.0.1:6379 cargo run --example quickstart --features redis`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventbus::{AvroRecord, Envelope, Event, StartPosition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct UserData {
    id: i64,
    email: String,
    name: String,
}

/// A user signed up.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(
    type = "org.example.user.registered.v1",
    minor_version = 0,
    key = "user.id"
)]
struct UserRegistered {
    user: UserData,
    referrer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct LineItem {
    sku: String,
    quantity: i32,
    unit_price: f64,
}

/// A user placed an order.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(
    type = "org.example.order.placed.v1",
    minor_version = 0,
    key = "order_id"
)]
struct OrderPlaced {
    order_id: Uuid,
    user_id: i64,
    items: Vec<LineItem>,
    placed_at: DateTime<Utc>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // EVENT_BUS_BACKEND / EVENT_BUS_URL pick the backend; with neither set it is memory://.
    let bus = eventbus::connect_from_env().await?;
    println!("connected to the `{}` backend", bus.transport().backend);

    let received = Arc::new(AtomicUsize::new(0));
    let (users, orders) = (Arc::clone(&received), Arc::clone(&received));
    let group = format!("quickstart-{}", Uuid::new_v4().simple());
    let consumer = bus
        .consumer("users", &group)
        .topic("orders")
        .start_at(StartPosition::Latest)
        .handle(move |e: Envelope<UserRegistered>| {
            let users = Arc::clone(&users);
            async move {
                let m = e.metadata();
                println!(
                    "consumed  {} id={} source={} time={}: {:?}",
                    m.event_type,
                    m.id,
                    m.source,
                    m.time_string(),
                    e.event()
                );
                users.fetch_add(1, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(())
            }
        })
        .handle(move |e: Envelope<OrderPlaced>| {
            let orders = Arc::clone(&orders);
            async move {
                let total: f64 = e
                    .items
                    .iter()
                    .map(|i| f64::from(i.quantity) * i.unit_price)
                    .sum();
                println!(
                    "consumed  {} id={}: order {} of user {} totals {total:.2}",
                    e.metadata().event_type,
                    e.metadata().id,
                    e.order_id,
                    e.user_id
                );
                orders.fetch_add(1, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(())
            }
        })
        .start()
        .await?;

    let user = UserRegistered {
        user: UserData {
            id: 42,
            email: "ada@example.org".into(),
            name: "Ada".into(),
        },
        referrer: Some("newsletter".into()),
    };
    let order = OrderPlaced {
        order_id: Uuid::new_v4(),
        user_id: 42,
        items: vec![
            LineItem {
                sku: "BOOK-1".into(),
                quantity: 2,
                unit_price: 12.5,
            },
            LineItem {
                sku: "PEN-7".into(),
                quantity: 1,
                unit_price: 3.0,
            },
        ],
        placed_at: Utc::now(),
    };
    let at = bus.producer().send("users", &user).await?;
    println!("published {} at {at}: {user:?}", UserRegistered::EVENT_TYPE);
    let at = bus.producer().send("orders", &order).await?;
    println!("published {} at {at}: {order:?}", OrderPlaced::EVENT_TYPE);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::SeqCst) < 2 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the events did not come back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.shutdown().await?;
    bus.close().await?;
    println!("done: 2 events published and consumed");
    Ok(())
}
