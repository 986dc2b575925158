//! A producer and a consumer with a custom layer on each side, spans printed to stdout, and the
//! telemetry endpoint scraped once. Run with
//! `cargo run --example observability --features telemetry`.

use std::time::Duration;

use eventbus::consumer::{Context, Layer, Next, Outcome};
use eventbus::producer::{Outgoing, PublishLayer, PublishNext};
use eventbus::{async_trait, AvroRecord, Envelope, Event, Position, Verdict};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Order {
    id: i64,
    total_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(
    type = "org.example.shop.order.placed.v1",
    minor_version = 0,
    key = "order.id"
)]
struct OrderPlaced {
    order: Order,
}

/// Stamps every outgoing message with the deployment's region.
struct Region(&'static str);

#[async_trait]
impl PublishLayer for Region {
    fn name(&self) -> &str {
        "region"
    }
    async fn publish(
        &self,
        out: &mut Outgoing,
        next: PublishNext<'_>,
    ) -> eventbus::Result<Vec<Position>> {
        for message in &mut out.messages {
            message.headers.insert("region", self.0);
        }
        next.run(out).await
    }
}

/// Skips events from other regions before they reach the receivers.
struct OnlyRegion(&'static str);

#[async_trait]
impl Layer for OnlyRegion {
    fn name(&self) -> &str {
        "only-region"
    }
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        match ctx.headers().get("region") {
            Some(region) if region == self.0 => next.run(ctx).await,
            other => Outcome::Skipped {
                reason: format!("region {other:?}"),
            },
        }
    }
}

async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Spans go to stdout when they close, with their fields (trace and span ids included).
    tracing_subscriber::fmt()
        .with_span_events(FmtSpan::CLOSE)
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,eventbus_core=info".to_owned()),
        )
        .init();
    // The recorder goes in before the first event.
    eventbus::telemetry::prometheus()?;
    let bus = eventbus::connect_from_env()
        .await?
        .producer_layer(Region("eu"));
    let endpoint = eventbus::telemetry::serve("127.0.0.1:0", bus.health().clone()).await?;

    let consumer = bus
        .consumer("orders", "billing")
        .name("billing-1")
        .configure(|s| s.retry.base = Duration::from_millis(20))
        .layer(OnlyRegion("eu"))
        .handle(|e: Envelope<OrderPlaced>| async move {
            let delivery = e.delivery().map(|d| (d.topic().to_owned(), d.attempt()));
            println!("order {} ({:?})", e.order.id, delivery);
            if e.order.total_cents < 0 {
                // No retry can fix a negative total: dead-letter it now.
                return Err(Verdict::give_up("a negative total").into());
            }
            Ok::<_, eventbus::BoxError>(())
        })
        .start()
        .await?;

    for (id, total_cents) in [(1, 1200), (2, -5)] {
        bus.producer()
            .send(
                "orders",
                &OrderPlaced {
                    order: Order { id, total_cents },
                },
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let metrics = scrape(endpoint.local_addr()).await?;
    println!("-- scraped from http://{}/metrics:", endpoint.local_addr());
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("eventbus_") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    consumer.shutdown().await?;
    endpoint.shutdown().await;
    Ok(())
}
