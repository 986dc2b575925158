//! What recording every event in the journal costs: the in-memory bus publishing typed events
//! and consuming them with a no-op receiver, with no journal, with the journal on SQLite (a
//! temporary file) and with the journal on PostgreSQL (a private server started by the testkit
//! fixture), in interleaved rounds. Run with
//!
//! ```text
//! cargo bench -p eventbus-journal --bench journal
//! ```
//!
//! Two measurements per variant and round:
//!
//! - **paced**: `EVENTBUS_BENCH_RATE` events per second (default 10000), published in batches of
//!   100 paced by the clock for `EVENTBUS_BENCH_SECONDS` (default 20: long enough that a journal
//!   slower than the events fills its queue and drops rows). The figures are the rate handled
//!   (against the run without a journal: the goal reads the journal's cost on consume
//!   throughput), the publish → handled latency of every event (p50, p99), and the process CPU
//!   time (utime + stime from `/proc/self/stat`) per event, from the first publish until every
//!   event is handled and the journal has flushed its rows, so the writer's work is in it. For
//!   PostgreSQL the server's own CPU time (the postmaster and its children) is counted apart.
//!   The consumer kept up when every event was handled within 0.5 s of the last publish.
//! - **max**: `EVENTBUS_BENCH_MESSAGES` events (default 50000) published as fast as `send_batch`
//!   of 100 goes, timed from the first publish until every event is handled.
//!
//! Rows the journal dropped (its queue full) or could not write are counted per phase: the CPU
//! figure covers only the rows it did write. After both phases the rows are counted (two per
//! event: the producer's and the consumer group's) against written + lost.
//!
//! `EVENTBUS_BENCH_ROUNDS` (default 3) sets the rounds; each round runs the variants in a
//! rotated order, and medians are reported. `EVENTBUS_BENCH_VARIANTS` (default
//! `none,sqlite,postgres`) picks variants, e.g. for profiling one of them.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::{Bus, BusConfig, Envelope, Event, StartPosition};
use eventbus_journal::{Journal, JournalSettings};
use eventbus_testkit::bench::{env_or, rate};
use eventbus_testkit::postgres::PostgresProcess;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

const BATCH: usize = 100;
/// Events handled (and journalled) before the clock starts: the group joined, the schema
/// registered, the journal's first connection open.
const WARMUP: usize = BATCH;
/// How long after the last publish the consumer may take to count as keeping up.
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.order.placed.v1", key = "order_id")]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    amount_cents: i64,
    currency: String,
}

fn orders(n: usize) -> Vec<OrderPlaced> {
    (0..n)
        .map(|i| OrderPlaced {
            order_id: i as i64,
            customer: format!("customer-{}", i % 997),
            amount_cents: 1_000 + (i % 50_000) as i64,
            currency: "EUR".into(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    Sqlite,
    Postgres,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Sqlite => "sqlite",
            Variant::Postgres => "postgres",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::None => "no journal",
            Variant::Sqlite => "journal on SQLite (file, WAL)",
            Variant::Postgres => "journal on PostgreSQL (loopback)",
        }
    }
}

/// CPU time, read from `/proc`: no unsafe, no libc.
struct Cpu {
    ticks_per_second: f64,
}

impl Cpu {
    fn new() -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self { ticks_per_second }
    }

    /// The numeric fields of `/proc/{pid}/stat` from the state on (the state itself reads as 0):
    /// `[1]` is the ppid, `[11]` utime, `[12]` stime, `[13]` cutime, `[14]` cstime, in clock ticks.
    fn fields(pid: &str) -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: the fields start after the last `)`.
        let rest = text.get(text.rfind(')')? + 1..)?;
        Some(
            rest.split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect(),
        )
    }

    /// (ppid, utime + stime [+ cutime + cstime]) of a process, in clock ticks.
    fn stat(pid: &str, children: bool) -> Option<(u64, u64)> {
        let f = Self::fields(pid)?;
        let num = |i: usize| f.get(i).copied().unwrap_or(0);
        let mut ticks = num(11) + num(12);
        if children {
            ticks += num(13) + num(14);
        }
        Some((num(1), ticks))
    }

    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_second
    }

    /// This process's CPU time in seconds: (user + system, system).
    fn process(&self) -> (f64, f64) {
        let f = Self::fields("self").unwrap_or_default();
        let num = |i: usize| f.get(i).copied().unwrap_or(0);
        (self.seconds(num(11) + num(12)), self.seconds(num(12)))
    }

    /// The CPU time of the PostgreSQL server: the postmaster, its live children (backends,
    /// writers, autovacuum) and the children it has reaped.
    fn server(&self, postmaster: u64) -> f64 {
        let mut ticks = Self::stat(&postmaster.to_string(), true).map_or(0, |(_, t)| t);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                if let Some((ppid, t)) = Self::stat(pid, false) {
                    if ppid == postmaster {
                        ticks += t;
                    }
                }
            }
        }
        self.seconds(ticks)
    }
}

/// What a journal database is, for one run.
struct Database {
    url: String,
    postmaster: Option<u64>,
    /// The SQLite file's directory, removed with it.
    _dir: Option<tempfile::TempDir>,
}

/// One phase of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    /// Events handled per second, first publish to last handled.
    handled_rate: f64,
    /// Last handled minus last published.
    lag: Duration,
    /// Every event handled within [`DRAIN`] of the last publish.
    kept_up: bool,
    /// Last publish after the first, against the window it was meant to take.
    published_in: Duration,
    /// The journal's flush after the last event was handled.
    flush: Duration,
    /// Process CPU seconds per event (including the flush).
    cpu: f64,
    /// The part of `cpu` spent in the kernel.
    sys: f64,
    /// Journal rows dropped (queue full) or refused during the phase.
    lost: u64,
    /// Journal rows per second written over the phase: two per event, from the first publish
    /// until the flush returned.
    written: f64,
    /// PostgreSQL server CPU seconds per event.
    server_cpu: f64,
    /// Publish (the event's CloudEvents time) to the receiver, median and 99th percentile.
    latency: (Duration, Duration),
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    paced: Phase,
    max: Phase,
    rows: i64,
    expected_rows: i64,
    dropped: u64,
    failed: u64,
}

/// Publishes `n` events (paced at `per_second`, or as fast as they go) to a fresh topic and
/// consumes them with a typed no-op receiver; the journal, if any, records both sides.
#[allow(clippy::too_many_arguments)]
async fn phase(
    bus: &Bus,
    journal: Option<&Journal>,
    cpu: &Cpu,
    postmaster: Option<u64>,
    topic: &str,
    events: &[OrderPlaced],
    per_second: Option<f64>,
) -> Phase {
    let n = events.len();
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let target = WARMUP + n;
    let (count, finished) = (seen.clone(), done.clone());
    // Microseconds from each timed event's publish to its receiver.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let measured = latencies.clone();
    let mut consumer = bus
        .consumer(topic, "bench")
        .start_at(StartPosition::Earliest);
    if let Some(journal) = journal {
        consumer = journal.attach(consumer);
    }
    let consumer = consumer
        .handle(move |e: Envelope<OrderPlaced>| {
            std::hint::black_box(e.event());
            let at = count.fetch_add(1, Ordering::Relaxed) + 1;
            if at > WARMUP {
                let waited = (chrono::Utc::now() - e.metadata().time).num_microseconds();
                if let Ok(mut all) = measured.lock() {
                    all.push(waited.unwrap_or(i64::MAX));
                }
            }
            if at == target {
                finished.notify_one();
            }
            async { Ok::<_, Infallible>(()) }
        })
        .start()
        .await
        .expect("start consumer");

    // Warm-up, untimed.
    let warmup = orders(WARMUP);
    bus.producer()
        .send_batch(topic, &warmup)
        .await
        .expect("send_batch");
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::Relaxed) < WARMUP {
        assert!(Instant::now() < deadline, "warm-up events not handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(journal) = journal {
        journal.flush().await;
    }

    let server = |pm: Option<u64>| pm.map_or(0.0, |pm| cpu.server(pm));
    let losses = || journal.map_or(0, |j| j.losses().0 + j.losses().1);
    let lost0 = losses();
    let (cpu0, server0) = (cpu.process(), server(postmaster));
    let t0 = Instant::now();
    match per_second {
        Some(per_second) => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / per_second));
            // Behind schedule, the publisher catches up: the offered total stays the same.
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for chunk in events.chunks(BATCH) {
                tick.tick().await;
                bus.producer()
                    .send_batch(topic, chunk)
                    .await
                    .expect("send_batch");
            }
        }
        None => {
            for chunk in events.chunks(BATCH) {
                bus.producer()
                    .send_batch(topic, chunk)
                    .await
                    .expect("send_batch");
            }
        }
    }
    let published_in = t0.elapsed();
    let all = tokio::time::timeout(Duration::from_secs(120), done.notified())
        .await
        .is_ok();
    let handled_in = t0.elapsed();
    let handled = seen.load(Ordering::Relaxed) - WARMUP;
    let flushed = Instant::now();
    if let Some(journal) = journal {
        journal.flush().await;
    }
    let flush = flushed.elapsed();
    let (cpu1, server1) = (cpu.process(), server(postmaster));
    let lost = losses() - lost0;
    let written = if journal.is_some() {
        rate((2 * n).saturating_sub(lost as usize), handled_in + flush)
    } else {
        0.0
    };
    consumer.shutdown().await.expect("shutdown");
    let lag = handled_in.saturating_sub(published_in);
    let latency = {
        let mut all = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        all.sort_unstable();
        let at = |q: f64| {
            let i = ((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1));
            Duration::from_micros(all.get(i).map_or(0, |&v| u64::try_from(v).unwrap_or(0)))
        };
        (at(0.5), at(0.99))
    };
    Phase {
        latency,
        handled_rate: rate(handled, handled_in),
        lag,
        kept_up: all && lag <= DRAIN,
        published_in,
        flush,
        cpu: (cpu1.0 - cpu0.0) / n as f64,
        sys: (cpu1.1 - cpu0.1) / n as f64,
        written,
        lost,
        server_cpu: (server1 - server0) / n as f64,
    }
}

async fn count_rows(journal: &Journal) -> i64 {
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM eventbus_journal")
        .fetch_one(journal.store().pool())
        .await
        .expect("count rows");
    row.0
}

/// One variant, once: a bus of its own, a journal of its own (on an empty table), both phases.
async fn run(
    variant: Variant,
    round: usize,
    database: Option<&Database>,
    cpu: &Cpu,
    paced: &[OrderPlaced],
    max: &[OrderPlaced],
    per_second: f64,
) -> Run {
    let mut bus = eventbus::connect(
        BusConfig::new().url(format!("memory://journal-bench-{}-{round}", variant.name())),
    )
    .await
    .expect("memory bus");
    let journal = match database {
        Some(database) => {
            let journal = Journal::connect(&database.url, JournalSettings::default())
                .await
                .expect("journal");
            sqlx::query("DELETE FROM eventbus_journal")
                .execute(journal.store().pool())
                .await
                .expect("empty the journal");
            bus = bus.producer_layer(journal.publish_layer());
            Some(journal)
        }
        None => None,
    };
    let postmaster = database.and_then(|d| d.postmaster);
    let name = variant.name();
    let expected_rows = 2 * (2 * WARMUP + paced.len() + max.len()) as i64;
    let paced = phase(
        &bus,
        journal.as_ref(),
        cpu,
        postmaster,
        &format!("orders-paced-{name}-{round}"),
        paced,
        Some(per_second),
    )
    .await;
    let max_phase = phase(
        &bus,
        journal.as_ref(),
        cpu,
        postmaster,
        &format!("orders-max-{name}-{round}"),
        max,
        None,
    )
    .await;
    let mut result = Run {
        paced,
        max: max_phase,
        ..Run::default()
    };
    if let Some(journal) = journal {
        // The consumer layer queues its row just after the receiver returns: wait for the last.
        result.expected_rows = expected_rows;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            journal.flush().await;
            result.rows = count_rows(&journal).await;
            let (dropped, failed) = journal.losses();
            let accounted = result.rows + (dropped + failed) as i64;
            if accounted >= result.expected_rows || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (result.dropped, result.failed) = journal.losses();
        // The writer and retention tasks outlive the journal; its connections need not.
        journal.store().pool().close().await;
    }
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn us(seconds: f64) -> f64 {
    seconds * 1e6
}

fn millis((p50, p99): (Duration, Duration)) -> String {
    format!(
        "{:.2} / {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_or("EVENTBUS_BENCH_ROUNDS", 3).max(1);
    let per_second = env_or("EVENTBUS_BENCH_RATE", 10_000).max(BATCH) as f64;
    let seconds = env_or("EVENTBUS_BENCH_SECONDS", 20).max(1);
    let max_n = env_or("EVENTBUS_BENCH_MESSAGES", 50_000).max(BATCH);
    let wanted =
        std::env::var("EVENTBUS_BENCH_VARIANTS").unwrap_or_else(|_| "none,sqlite,postgres".into());
    let mut variants: Vec<Variant> = [Variant::None, Variant::Sqlite, Variant::Postgres]
        .into_iter()
        .filter(|v| wanted.split(',').any(|w| w.trim() == v.name()))
        .collect();

    let paced_n = (per_second as usize * seconds) / BATCH * BATCH;
    let paced = orders(paced_n);
    let max = orders(max_n / BATCH * BATCH);
    let cpu = Cpu::new();

    let sqlite_dir = || {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("journal.db");
        Database {
            url: format!("sqlite://{}", path.display()),
            postmaster: None,
            _dir: Some(dir),
        }
    };
    let server = if variants.contains(&Variant::Postgres) {
        match PostgresProcess::start().await {
            Ok(server) => Some(server),
            Err(e) => {
                println!("PostgreSQL left out: {e}");
                variants.retain(|v| *v != Variant::Postgres);
                None
            }
        }
    } else {
        None
    };
    let postgres = server.as_ref().map(|server| {
        let pid = std::fs::read_to_string(server.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()));
        if pid.is_none() {
            println!("the postmaster's pid is unknown: no server CPU figures");
        }
        Database {
            url: server.url(),
            postmaster: pid,
            _dir: None,
        }
    });

    println!(
        "memory bus (8 partitions), typed events with a key, no-op receiver, default layer stacks; \
         paced: {paced_n} events at {per_second:.0}/s in batches of {BATCH}; max: {} events; \
         {rounds} rounds, variants in rotated order",
        max.len()
    );
    println!(
        "| round | variant | CPU µs/event at {per_second:.0}/s (of it kernel) | + server | handled/s | latency p50 / p99 | lag | kept up | journal: flush after, rows/s written, lost | max events/s | CPU µs/event at max | max: journal flush after, rows/s written, lost | rows / expected | dropped, failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let variant = variants[i];
            let sqlite;
            let database = match variant {
                Variant::None => None,
                Variant::Sqlite => {
                    sqlite = sqlite_dir();
                    Some(&sqlite)
                }
                Variant::Postgres => postgres.as_ref(),
            };
            let r = run(variant, round, database, &cpu, &paced, &max, per_second).await;
            let journal = variant != Variant::None;
            let flush = |p: &Phase| {
                if journal {
                    format!(
                        "{:.0} ms, {:.0}, {} lost",
                        p.flush.as_secs_f64() * 1e3,
                        p.written,
                        p.lost
                    )
                } else {
                    "–".into()
                }
            };
            println!(
                "| {round} | {} | {:.1} ({:.1}) | {} | {:.0} | {} | {:.0} ms | {} | {} | {:.0} | {:.1} | {} | {} | {} |",
                variant.name(),
                us(r.paced.cpu),
                us(r.paced.sys),
                if variant == Variant::Postgres {
                    format!("{:.1}", us(r.paced.server_cpu))
                } else {
                    "–".into()
                },
                r.paced.handled_rate,
                millis(r.paced.latency),
                r.paced.lag.as_secs_f64() * 1e3,
                if r.paced.kept_up { "yes" } else { "no" },
                flush(&r.paced),
                r.max.handled_rate,
                us(r.max.cpu),
                flush(&r.max),
                if journal {
                    format!("{} / {}", r.rows, r.expected_rows)
                } else {
                    "–".into()
                },
                if journal {
                    format!("{}, {}", r.dropped, r.failed)
                } else {
                    "–".into()
                },
            );
            if r.paced.published_in > Duration::from_secs(seconds as u64) * 11 / 10 {
                println!(
                    "  (the paced publisher fell behind: {paced_n} events took {:.2} s)",
                    r.paced.published_in.as_secs_f64()
                );
            }
            results[i].push(r);
        }
    }

    let pick = |i: usize, f: &dyn Fn(&Run) -> f64| median(results[i].iter().map(f).collect());
    let base = variants.iter().position(|v| *v == Variant::None);
    println!();
    println!("medians of {rounds} rounds");
    println!(
        "| variant | handled/s at {per_second:.0}/s | / none (goal ≥ 0.85) | latency p50 / p99 | CPU µs/event at {per_second:.0}/s | / none | + PostgreSQL server | kept up | journal caught up after (paced) | max events/s | / none | journal caught up after (max) | rows written of expected; lost paced + max (all rounds) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, variant) in variants.iter().enumerate() {
        let cpu_paced = pick(i, &|r| r.paced.cpu);
        let handled = pick(i, &|r| r.paced.handled_rate);
        let max_rate = pick(i, &|r| r.max.handled_rate);
        let ratio = |value: f64, of: &dyn Fn(&Run) -> f64| match base {
            Some(b) if b != i => format!("{:.2}", value / pick(b, of)),
            _ => "–".into(),
        };
        let kept = results[i].iter().filter(|r| r.paced.kept_up).count();
        let journal = *variant != Variant::None;
        let (rows, expected, lost_paced, lost_max) =
            results[i].iter().fold((0, 0, 0, 0), |a, r| {
                (
                    a.0 + r.rows,
                    a.1 + r.expected_rows,
                    a.2 + r.paced.lost,
                    a.3 + r.max.lost,
                )
            });
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {} | {} | {kept} of {} | {} | {:.0} | {} | {} | {} |",
            variant.label(),
            handled,
            ratio(handled, &|r| r.paced.handled_rate),
            millis((
                Duration::from_secs_f64(pick(i, &|r| r.paced.latency.0.as_secs_f64())),
                Duration::from_secs_f64(pick(i, &|r| r.paced.latency.1.as_secs_f64())),
            )),
            us(cpu_paced),
            ratio(cpu_paced, &|r| r.paced.cpu),
            if *variant == Variant::Postgres {
                format!("{:.1} µs/event", us(pick(i, &|r| r.paced.server_cpu)))
            } else {
                "–".into()
            },
            results[i].len(),
            if journal {
                format!("{:.0} ms", pick(i, &|r| r.paced.flush.as_secs_f64()) * 1e3)
            } else {
                "–".into()
            },
            max_rate,
            ratio(max_rate, &|r| r.max.handled_rate),
            if journal {
                format!("{:.0} ms", pick(i, &|r| r.max.flush.as_secs_f64()) * 1e3)
            } else {
                "–".into()
            },
            if journal {
                format!("{rows} of {expected}; {lost_paced} + {lost_max}")
            } else {
                "–".into()
            },
        );
    }
    drop(server);
}
