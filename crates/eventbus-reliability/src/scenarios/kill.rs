//! Scenario 2: a consumer process killed with SIGKILL mid-stream.
//!
//! Events are published first; then a worker process (`reliability-worker`) handles them in a
//! group, appending the number of every event it handles to its file before the handler
//! returns (so before the ack). When it has handled a third, it is killed with SIGKILL: no
//! shutdown, no commit, no goodbye to the broker. A second worker then joins the same group
//! and must finish: every event handled at least once. Duplicates are what the dead process had
//! handled and the broker had not recorded as done (in flight, or acknowledged but not yet
//! committed where commits are asynchronous, as on Kafka).

use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use eventbus::Envelope;
use eventbus_testkit::process::{self, StopSignal};
use std::io::Write as _;
use tokio::process::{Child, Command};

use super::{publish_all, unique, Scale};
use crate::ledger::Ledger;
use crate::probe::Probe;
use crate::rig::{wait_until, Backend, Path, Rig};
use crate::row::Row;

const SETTLE: Duration = Duration::from_secs(120);
/// Each event takes the workers this long, so that the kill lands mid-stream.
const HANDLE_TIME: Duration = Duration::from_millis(2);

pub(super) async fn run(backend: Backend, scale: Scale) -> anyhow::Result<Row> {
    let rig = match backend {
        // tansu 0.6 never evicts a member that died without leaving: its partitions stay
        // assigned to the dead process (measured: the survivor stalls for good). rdkafka's mock
        // cluster, reached over TCP by the worker processes, expires the session as Kafka does.
        Backend::Kafka => Rig::start_kafka_mock().await?,
        _ => Rig::start(backend, Path::Direct).await?,
    };
    let total = scale.pick(10_000u64, 2_000);
    let topic = unique("kill");
    let group = "kill-workers";
    let ledger = Ledger::default();
    let bus = rig.connect("reliability-kill", |c| c).await?;
    publish_all(&bus, &topic, &ledger, total, 100).await?;
    bus.close().await.ok();

    let dir = tempdir()?;
    let files = [dir.join("worker-a.log"), dir.join("worker-b.log")];
    let mut victim = spawn_worker(&rig, &topic, group, &files[0])?;
    let mark = total / 3;
    if !wait_until(SETTLE, || count_lines(&files[0]) >= mark).await {
        victim.start_kill().ok();
        bail!(
            "the worker handled {} of {total} in {SETTLE:?}; broker log:\n{}",
            count_lines(&files[0]),
            rig.log_tail()
        );
    }
    // tokio's start_kill sends SIGKILL.
    victim.start_kill().context("kill worker a")?;
    let killed = Instant::now();
    victim.wait().await.ok();
    let mut survivor = spawn_worker(&rig, &topic, group, &files[1])?;
    let before_kill = count_lines(&files[0]);
    let complete = || {
        let got = Ledger::default();
        for f in &files {
            read_seqs(f).into_iter().for_each(|s| got.received(s));
        }
        got.received_count() >= total
    };
    let finished = wait_until(SETTLE, complete).await;
    let recovery = killed.elapsed();
    stop_gracefully(&mut survivor).await;
    for f in &files {
        read_seqs(f).into_iter().for_each(|s| ledger.received(s));
    }
    let counts = ledger.counts();
    if !finished {
        let logs: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f.with_extension("stderr")).unwrap_or_default())
            .map(|text| text.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
            .collect();
        tracing::warn!(missing = ?ledger.missing(10), workers = ?logs, log = %rig.log_tail(), "events missing");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(Row {
        scenario: super::Scenario::Kill.title(),
        backend: backend.name(),
        counts,
        recovery: Some(recovery),
        notes: format!(
            "SIGKILL after {before_kill} handled by the victim; the other worker finished (time from kill to all handled){}",
            if backend == Backend::Kafka {
                "; rdkafka MockCluster (tansu 0.6 keeps a dead member's partitions)"
            } else {
                ""
            }
        ),
    })
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("eventbus-kill-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The worker binary: `$EVENTBUS_RELIABILITY_WORKER`, else `reliability-worker` next to this
/// executable or one directory up (where cargo puts binaries for integration tests).
fn worker_program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("EVENTBUS_RELIABILITY_WORKER") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("find this executable")?;
    let candidates = exe.ancestors().skip(1).take(2);
    let found = candidates
        .map(|dir| dir.join("reliability-worker"))
        .find(|p| p.is_file());
    found.context(
        "reliability-worker not found next to this program; build it (cargo build -p eventbus-reliability) or set EVENTBUS_RELIABILITY_WORKER",
    )
}

fn spawn_worker(rig: &Rig, topic: &str, group: &str, out: &FsPath) -> anyhow::Result<Child> {
    let log = std::fs::File::create(out.with_extension("stderr"))
        .with_context(|| format!("create the log of worker {}", out.display()))?;
    let mut command = Command::new(worker_program()?);
    command
        .args([topic, group])
        .arg(out)
        .envs(rig.vars().iter().map(|(k, v)| (k, v)))
        .stderr(log)
        .kill_on_drop(true);
    command.spawn().context("start a worker process")
}

/// SIGTERM, then a kill if the worker has not ended within 15 s.
async fn stop_gracefully(child: &mut Child) {
    let grace = Duration::from_secs(15);
    if let Err(e) = process::stop(child, StopSignal::Terminate, grace).await {
        tracing::warn!("cannot stop a worker: {e}");
    }
}

fn read_seqs(file: &FsPath) -> Vec<u64> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn count_lines(file: &FsPath) -> u64 {
    std::fs::read(file)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// The worker process: `reliability-worker TOPIC GROUP FILE`, configured by `EVENT_BUS_*`.
/// Handles [`Probe`] events where the group is (from the earliest for a new group), appending each one's number to `FILE` before it
/// returns, until SIGTERM or SIGINT.
pub async fn worker_main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,librdkafka=error".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topic, group, file] = args.as_slice() else {
        bail!("usage: reliability-worker TOPIC GROUP FILE (settings from EVENT_BUS_*)");
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("open {file}"))?;
    let out = std::sync::Arc::new(std::sync::Mutex::new(out));
    let config = eventbus::BusConfig::from_env()?.service_name("reliability-worker");
    let bus = eventbus::connect(config).await?;
    // No start position: a new group starts at the earliest event and an existing one resumes
    // where it was, as a restarted service's consumer does (a position would move the group).
    let consumer = bus
        .consumer(topic, group)
        .handle(move |e: Envelope<Probe>| {
            let out = out.clone();
            async move {
                tokio::time::sleep(HANDLE_TIME).await;
                // One unbuffered write per event, straight to the kernel: a SIGKILL after it
                // cannot lose it. (tokio's File would finish the write in the background.)
                let mut out = out
                    .lock()
                    .map_err(|_| anyhow::anyhow!("output lock poisoned"))?;
                out.write_all(format!("{}\n", e.seq).as_bytes())?;
                Ok::<_, anyhow::Error>(())
            }
        });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    consumer.run_until(stop).await?;
    bus.close().await?;
    Ok(())
}
