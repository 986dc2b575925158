//! The scenarios, and what they share: a receiving consumer and a stubborn publisher.

mod garbage;
mod kill;
mod network;
mod restart;
mod slow;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use eventbus::{Bus, ConsumerHandle, Envelope, StartPosition};
use tokio::task::JoinSet;

use crate::ledger::Ledger;
use crate::probe::Probe;
use crate::rig::Backend;
use crate::row::Row;

pub use kill::worker_main;

/// How big a run is: the full campaign for the table, or a reduced one for `cargo test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The sizes `RELIABILITY.md` reports.
    Full,
    /// Smaller, for the test suite: the same faults, fewer events.
    Reduced,
}

impl Scale {
    /// `full` at full scale, `reduced` otherwise.
    fn pick<T>(self, full: T, reduced: T) -> T {
        match self {
            Scale::Full => full,
            Scale::Reduced => reduced,
        }
    }
}

/// One fault the campaign injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 100 publishers × 100 events; the broker stopped at ⅓ and at ½ and started again.
    Restart,
    /// A consumer process killed with SIGKILL mid-stream; another one in its group finishes.
    Kill,
    /// Latency, connection resets and a 10-second black hole between clients and broker.
    Network,
    /// 10,000 malformed messages among 1,000 good ones.
    Garbage,
    /// 100,000 events behind a consumer that handles one per millisecond.
    Slow,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Restart,
        Scenario::Kill,
        Scenario::Network,
        Scenario::Garbage,
        Scenario::Slow,
    ];

    /// The short name used in the table and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Restart => "restart",
            Scenario::Kill => "kill",
            Scenario::Network => "network",
            Scenario::Garbage => "garbage",
            Scenario::Slow => "slow",
        }
    }

    /// The name of its rows in the table, e.g. `1 broker restarts`.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Restart => "1 broker restarts",
            Scenario::Kill => "2 consumer process killed",
            Scenario::Network => "3 network faults",
            Scenario::Garbage => "4 garbage on the topic",
            Scenario::Slow => "5 slow consumer",
        }
    }

    /// Why the scenario does not apply to `backend`, if it does not.
    pub fn not_applicable(self, backend: Backend) -> Option<&'static str> {
        match (self, backend) {
            (Scenario::Restart, Backend::Memory) => Some("no broker: the bus lives in the process"),
            (Scenario::Kill, Backend::Memory) => {
                Some("no broker outside the process: a killed process takes its bus along")
            }
            (Scenario::Network, Backend::Memory) => Some("no network"),
            _ => None,
        }
    }

    /// Runs the scenario on `backend` at `scale`.
    pub async fn run(self, backend: Backend, scale: Scale) -> anyhow::Result<Row> {
        if let Some(why) = self.not_applicable(backend) {
            bail!("{} does not apply to {backend}: {why}", self.name());
        }
        match self {
            Scenario::Restart => restart::run(backend, scale).await,
            Scenario::Kill => kill::run(backend, scale).await,
            Scenario::Network => network::run(backend, scale).await,
            Scenario::Garbage => garbage::run(backend, scale).await,
            Scenario::Slow => slow::run(backend, scale).await,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|x| x.name() == s) {
            Some(x) => Ok(x),
            None => bail!("unknown scenario `{s}`; known: restart, kill, network, garbage, slow"),
        }
    }
}

/// A topic name no other run uses.
fn unique(what: &str) -> String {
    format!("reliability-{what}-{:08x}", fastrand::u32(..))
}

/// Starts a consumer of `topic` in `group` from the earliest event that records every
/// [`Probe`] it handles in `ledger`, after `delay`.
async fn receive(
    bus: &Bus,
    topic: &str,
    group: &str,
    ledger: &Ledger,
    configure: impl FnOnce(&mut eventbus::ConsumerSettings),
    delay: Duration,
) -> anyhow::Result<ConsumerHandle> {
    let ledger = ledger.clone();
    let handle = bus
        .consumer(topic, group)
        .start_at(StartPosition::Earliest)
        .configure(configure)
        .handle(move |e: Envelope<Probe>| {
            let ledger = ledger.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                ledger.received(e.seq);
                Ok::<_, anyhow::Error>(())
            }
        })
        .start()
        .await?;
    Ok(handle)
}

/// Sends `probe` until the broker confirms it, as a caller that must not drop an event would:
/// each failed or timed-out attempt is retried after 100 ms, for at most `give_up`. A timed-out
/// attempt may still arrive, so retries can make duplicates; only confirmed sends count as
/// acknowledged.
async fn send_until_confirmed(
    bus: &Bus,
    topic: &str,
    probe: &Probe,
    ledger: &Ledger,
    give_up: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + give_up;
    loop {
        ledger.attempted();
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, bus.producer().send(topic, probe));
        let error = match attempt.await {
            Ok(Ok(_)) => {
                ledger.acked(probe.seq);
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "event {} not confirmed within {give_up:?}: {error}",
                probe.seq
            );
        }
        tracing::debug!(seq = probe.seq, %error, "send failed; retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spawns `publishers` tasks that each send `each` events one at a time with
/// [`send_until_confirmed`], `pace` apart; event numbers are `publisher * each + i`, keys
/// `publisher-N`.
fn spawn_publishers(
    bus: &Arc<Bus>,
    topic: &str,
    ledger: &Ledger,
    (publishers, each): (u64, u64),
    pace: Duration,
    give_up: Duration,
) -> JoinSet<anyhow::Result<()>> {
    let mut tasks = JoinSet::new();
    for p in 0..publishers {
        let (bus, topic, ledger) = (bus.clone(), topic.to_owned(), ledger.clone());
        tasks.spawn(async move {
            for i in 0..each {
                let probe = Probe::new(p * each + i, format!("publisher-{p}"), 200);
                send_until_confirmed(&bus, &topic, &probe, &ledger, give_up).await?;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            anyhow::Ok(())
        });
    }
    tasks
}

/// Waits for every publisher task; the first failure is the error.
async fn join_publishers(mut tasks: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| anyhow::anyhow!("a publisher panicked: {e}"))??;
    }
    Ok(())
}

/// Publishes `total` events (keys `key-0` … `key-63`) in batches of `batch`, as fast as the
/// backend confirms them, recording them in `ledger`.
async fn publish_all(
    bus: &Bus,
    topic: &str,
    ledger: &Ledger,
    total: u64,
    batch: usize,
) -> anyhow::Result<()> {
    let events: Vec<Probe> = (0..total)
        .map(|seq| Probe::new(seq, format!("key-{}", seq % 64), 200))
        .collect();
    for chunk in events.chunks(batch) {
        chunk.iter().for_each(|_| ledger.attempted());
        bus.producer().send_batch(topic, chunk).await?;
        ledger.acked_all(chunk.iter().map(|p| p.seq));
    }
    Ok(())
}

/// How long one publish attempt may take before the caller tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The process's peak resident memory so far (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// The process's resident memory now (`VmRSS`), in MiB.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// A `kB` line of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
