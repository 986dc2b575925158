//! Scenario 3: the network between clients and broker misbehaves, the processes stay up.
//!
//! Publishers and a consumer reach the broker through the testkit's fault proxy while ten
//! publishers send at a steady pace. Then, in turn: 100 ms of latency each way for three
//! seconds; every connection reset; a black hole of ten seconds (nothing forwarded, nothing
//! closed). Nobody restarts anything. Every confirmed event must be received; the recovery time
//! runs from the end of the black hole until a publish is confirmed and an event received again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{join_publishers, receive, spawn_publishers, unique, Scale};
use crate::ledger::Ledger;
use crate::rig::{wait_until, wait_until_complete_or_quiet, Backend, Path, Rig};
use crate::row::Row;

const SETTLE: Duration = Duration::from_secs(180);
const BLACK_HOLE: Duration = Duration::from_secs(10);
/// How long nothing new may arrive before the run looks at what is missing.
const QUIET: Duration = Duration::from_secs(20);

pub(super) async fn run(backend: Backend, scale: Scale) -> anyhow::Result<Row> {
    let mut rig = Rig::start(backend, Path::Faulty).await?;
    // Kafka's own default session timeout (45 s) outlasts the black hole, as it would in
    // production; the rigs' 6 s (quick rebalances for tests) would expire the session, and
    // tansu 0.6 never hands the expired member's partitions on (see RELIABILITY.md).
    rig.set("EVENT_BUS_KAFKA_SESSION_TIMEOUT_MS", "45000");
    rig.set("EVENT_BUS_KAFKA_HEARTBEAT_INTERVAL_MS", "3000");
    let publishers = 10u64;
    let each = scale.pick(500u64, 100);
    // Publishing spans about 25 s, so that every fault hits traffic in both directions.
    let pace = Duration::from_millis(25_000 / each);
    let topic = unique("network");
    let ledger = Ledger::default();
    let consumers = rig.connect("reliability-network-consumer", |c| c).await?;
    let join = || {
        let readers = "network-readers";
        receive(&consumers, &topic, readers, &ledger, |_| {}, Duration::ZERO)
    };
    let consumer = join().await.context("start the consumer")?;
    let bus = Arc::new(rig.connect("reliability-network", |c| c).await?);
    let tasks = spawn_publishers(&bus, &topic, &ledger, (publishers, each), pace, SETTLE);

    let proxy = rig.fault()?;
    if backend.keeps_consumers_of_reset_connections() {
        proxy.close_upstream_on_reset();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_latency(Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_latency(Duration::ZERO);
    proxy.reset();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.black_hole(true);
    tokio::time::sleep(BLACK_HOLE).await;
    proxy.black_hole(false);
    let healed = Instant::now();
    // Recovered once both sides move again: a publish confirmed and an event received.
    let (acked, received) = (ledger.acked_count(), ledger.received_count());
    let recovered = wait_until(SETTLE, || {
        ledger.acked_count() > acked && ledger.received_count() > received
    })
    .await;
    let recovery = recovered.then(|| healed.elapsed());
    join_publishers(tasks).await?;
    let mut caught_up = wait_until_complete_or_quiet(&ledger, SETTLE, QUIET).await;
    let alive = !consumer.is_finished();
    let stats = proxy.stats();
    let mut ended = consumer.shutdown().await;
    let mut came_on_rejoin = None;
    if !caught_up && backend.holds_back_messages() {
        // The broker has them: a consumer leaving makes pulsar-lite dispatch again and take
        // back what it had out, and a new member's permits make it dispatch once more.
        let missing = ledger.counts().lost;
        let again = join()
            .await
            .context("start another consumer in the group")?;
        caught_up = wait_until(SETTLE, || ledger.complete()).await;
        ended = again.shutdown().await;
        came_on_rejoin = Some(missing - ledger.counts().lost);
    }
    bus.close().await.ok();
    consumers.close().await.ok();
    if !caught_up {
        tracing::warn!(missing = ?ledger.missing(10), log = %rig.log_tail(), "events missing");
    }
    let mut notes = format!(
        "{publishers} publishers × {each}; 100 ms latency 3 s, {} connections reset, 10 s black hole; {} connections in all",
        stats.resets, stats.connections
    );
    if let Some(held) = came_on_rejoin {
        notes.push_str(&format!(
            "; {held} confirmed events held back by the broker until the consumer left and another joined (finding 4)"
        ));
    }
    if !alive {
        notes.push_str(&format!("; consumer stopped: {ended:?}"));
    }
    Ok(Row {
        scenario: super::Scenario::Network.title(),
        backend: backend.name(),
        counts: ledger.counts(),
        recovery,
        notes,
    })
}
