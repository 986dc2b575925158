//! Scenario 5: a consumer far slower than its publishers.
//!
//! 100,000 events are published as fast as the backend takes them while one consumer handles
//! one event per millisecond (concurrency 1). Memory must stay bounded — the consumer may not
//! buffer the backlog — and nothing may be lost. The resident memory of the process is sampled
//! every 200 ms; the row reports its peak above the level before the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{publish_all, receive, rss_mib, unique, Scale};
use crate::ledger::Ledger;
use crate::rig::{wait_until, Backend, Path, Rig};
use crate::row::Row;

pub(super) async fn run(backend: Backend, scale: Scale) -> anyhow::Result<Row> {
    let mut rig = Rig::start(backend, Path::Direct).await?;
    let total = scale.pick(100_000u64, 5_000);
    // Redis trims streams to about 10,000 entries by default, which would drop most of a
    // backlog of 100,000 unread entries. Trim to 5 % above the backlog: nothing is dropped,
    // and the backlog passes 90 % of the limit, where the backend warns that trimming is about
    // to drop entries the group has not read (counted below).
    let max_len = total + total / 20;
    rig.set("EVENT_BUS_REDIS_STREAM_MAX_LEN", &max_len.to_string());
    let warnings_before = crate::warnings::backlog_warnings();
    let topic = unique("slow");
    let ledger = Ledger::default();
    let before = rss_mib().unwrap_or(0.0);
    let peak = Arc::new(AtomicU64::new(before as u64));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(now) = rss_mib() {
                    peak.fetch_max(now as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let bus = rig.connect("reliability-slow", |c| c).await?;
    let consumer = receive(
        &bus,
        &topic,
        "slow-readers",
        &ledger,
        |c| c.concurrency = 1,
        Duration::from_millis(1),
    )
    .await
    .context("start the consumer")?;
    let started = Instant::now();
    publish_all(&bus, &topic, &ledger, total, 500).await?;
    let published_in = started.elapsed();
    let backlog = total - ledger.received_count();
    // One event per millisecond, and then some.
    let limit = Duration::from_millis(total * 3) + Duration::from_secs(60);
    let caught_up = wait_until(limit, || ledger.complete()).await;
    let drained_in = started.elapsed();
    sampler.abort();
    let alive = !consumer.is_finished();
    let ended = consumer.shutdown().await;
    bus.close().await.ok();
    if !caught_up {
        tracing::warn!(missing = ?ledger.missing(10), log = %rig.log_tail(), "events missing");
    }
    let mut notes = format!(
        "published in {:.1} s with {backlog} unhandled; handled at {:.0}/s; peak RSS {} MiB over {before:.0} MiB before",
        published_in.as_secs_f64(),
        total as f64 / drained_in.as_secs_f64(),
        peak.load(Ordering::Relaxed).saturating_sub(before as u64),
    );
    if backend == Backend::Redis {
        let warned = crate::warnings::backlog_warnings() - warnings_before;
        notes.push_str(&format!(
            "; MAXLEN ~{max_len}: {warned} trimming warning(s) logged"
        ));
    }
    if !alive {
        notes.push_str(&format!("; consumer stopped: {ended:?}"));
    }
    Ok(Row {
        scenario: super::Scenario::Slow.title(),
        backend: backend.name(),
        counts: ledger.counts(),
        recovery: None,
        notes,
    })
}
