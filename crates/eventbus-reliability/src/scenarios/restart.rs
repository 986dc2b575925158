//! Scenario 1: a hundred publishers write while the broker is stopped and started twice.
//!
//! As Watermill's test does: 100 concurrent publishers send 100 events each; when a third of
//! the events are confirmed the broker is stopped for two seconds and started again, and once
//! more at half. Publishers retry what fails. A consumer in one group reads throughout. Every
//! confirmed event must be received.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{join_publishers, receive, spawn_publishers, unique, Scale};
use crate::ledger::Ledger;
use crate::rig::{wait_until, Backend, Path, Rig};
use crate::row::Row;

const DOWN_FOR: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(120);

pub(super) async fn run(backend: Backend, scale: Scale) -> anyhow::Result<Row> {
    let mut rig = match backend {
        Backend::Kafka => Rig::start_kafka_mock().await?,
        _ => Rig::start(backend, Path::Direct).await?,
    };
    if !rig.survives_restart() {
        bail!("{backend}'s test broker does not keep data across a restart");
    }
    let (publishers, each) = scale.pick((100u64, 100u64), (20, 50));
    let total = publishers * each;
    let topic = unique("restart");
    let ledger = Ledger::default();
    let bus = Arc::new(rig.connect("reliability-restart", |c| c).await?);
    let tasks = spawn_publishers(
        &bus,
        &topic,
        &ledger,
        (publishers, each),
        Duration::ZERO,
        SETTLE,
    );

    // After the publishers: rdkafka's mock cluster creates a topic on its first publish only.
    wait_until(SETTLE, || ledger.acked_count() > 0).await;
    let consumer = receive(
        &bus,
        &topic,
        "restart-readers",
        &ledger,
        |_| {},
        Duration::ZERO,
    )
    .await
    .context("start the consumer")?;

    let mut recoveries = Vec::new();
    for fraction in [3, 2] {
        let mark = total / fraction;
        let reached = wait_until(SETTLE, || ledger.acked_count() >= mark).await;
        if !reached {
            bail!("publishers stalled at {} of {total}", ledger.acked_count());
        }
        rig.stop_broker().await?;
        tokio::time::sleep(DOWN_FOR).await;
        rig.start_broker().await?;
        let back = Instant::now();
        let before = ledger.acked_count();
        // Recovered when publishers get confirmations again (or are all done).
        wait_until(SETTLE, || {
            ledger.acked_count() > before || ledger.acked_count() == total
        })
        .await;
        recoveries.push(back.elapsed());
    }
    join_publishers(tasks).await?;
    let caught_up = wait_until(SETTLE, || ledger.complete()).await;
    let alive = !consumer.is_finished();
    let ended = consumer.shutdown().await;
    bus.close().await.ok();
    let counts = ledger.counts();
    if !caught_up {
        tracing::warn!(missing = ?ledger.missing(10), log = %rig.log_tail(), "events missing");
    }
    let worst = recoveries.iter().max().copied();
    let mut notes = format!(
        "{publishers} publishers × {each}; publishing resumed {} after each start",
        recoveries
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    if backend == Backend::Kafka {
        notes.push_str("; rdkafka MockCluster (tansu here keeps data in memory only)");
    }
    if !alive {
        notes.push_str(&format!("; consumer stopped: {ended:?}"));
    }
    Ok(Row {
        scenario: super::Scenario::Restart.title(),
        backend: backend.name(),
        counts,
        recovery: worst,
        notes,
    })
}
