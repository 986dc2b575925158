//! One subscription's reader: a task that turns a consumer group's entries into deliveries.
//!
//! On start it takes back the entries its own consumer name left pending (a restart with a
//! stable name). Then it alternates blocking reads of new entries with, every claim interval,
//! taking over entries other members left unacknowledged for longer than the claim idle time
//! (members that died). Acknowledging is `XACK`, batched by the core's `AckBatcher`; a nack
//! leaves the entry pending and claims it back after the delay, which counts one more delivery.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventbus_core::{
    Acknowledge, Delivery, DeliveryStream, ErrorKind, Position, Result, Settlement, Subscription,
};
use futures::StreamExt;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamInfoConsumersReply, StreamPendingCountReply};
use redis::Client;
use tokio::sync::{mpsc, watch};

use crate::conn::failed;
use crate::entry;
use crate::reply::{oldest_first, split_id, AutoClaimReply, ClaimReply, Entry, ReadReply};
use crate::subscriber::ensure_group;
use crate::RedisSettings;
use eventbus_core::transport::ack_batch::{AckBatcher, SendBatch};
use eventbus_core::transport::reconnect_delay;

use crate::backlog::BacklogWatch;

type Sender = mpsc::Sender<Result<Delivery>>;

/// What the reader task and the acknowledgers of its deliveries share.
#[derive(Debug)]
struct Shared {
    conn: ConnectionManager,
    group: String,
    consumer: String,
    /// The subscription's streams, each name shared with its deliveries.
    names: Vec<Arc<str>>,
    /// Entries delivered and not yet acknowledged, by stream and id: the reader never claims
    /// these from itself, and a nack's redelivery keeps its entry here.
    held: Mutex<HashMap<String, HashSet<String>>>,
    /// Weak, so that a delivery kept past the end of its stream does not keep the stream open.
    deliveries: mpsc::WeakSender<Result<Delivery>>,
    /// Acknowledgements (stream, id), sent as one `XACK` per stream and batch.
    acks: AckBatcher<(Arc<str>, String)>,
    closed: watch::Receiver<bool>,
}

#[derive(Debug)]
pub(crate) struct Reader {
    client: Client,
    settings: Arc<RedisSettings>,
    streams: Vec<String>,
    start: Option<eventbus_core::StartPosition>,
    shared: Arc<Shared>,
    /// Where the next `XAUTOCLAIM` of each stream goes on.
    claim_cursors: HashMap<String, String>,
    /// Warns before trimming drops entries this group has not read.
    backlog: BacklogWatch,
}

impl Reader {
    /// Spawns the reader of `subscription` and returns its deliveries.
    pub(crate) fn start(
        client: Client,
        connection: MultiplexedConnection,
        conn: ConnectionManager,
        settings: Arc<RedisSettings>,
        subscription: Subscription,
        closed: watch::Receiver<bool>,
    ) -> DeliveryStream {
        let (tx, rx) = mpsc::channel(settings.read_count.max(1));
        let acks = AckBatcher::spawn(
            subscription.acks,
            send_acks(conn.clone(), subscription.group.clone()),
        );
        let shared = Arc::new(Shared {
            acks,
            conn,
            group: subscription.group,
            consumer: subscription.consumer,
            names: subscription
                .topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            held: Mutex::new(HashMap::new()),
            deliveries: tx.downgrade(),
            closed,
        });
        let reader = Reader {
            client,
            backlog: BacklogWatch::new(settings.stream_max_len),
            settings,
            claim_cursors: subscription
                .topics
                .iter()
                .map(|s| (s.clone(), "0-0".to_owned()))
                .collect(),
            streams: subscription.topics,
            start: subscription.start,
            shared,
        };
        tokio::spawn(reader.run(connection, tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
            .boxed()
    }

    async fn run(mut self, connection: MultiplexedConnection, tx: Sender) {
        let mut closed = self.shared.closed.clone();
        tokio::select! {
            () = self.serve(connection, &tx) => {}
            _ = closed.wait_for(|c| *c) => {}
            () = tx.closed() => {}
        }
        tracing::debug!(group = %self.shared.group, consumer = %self.shared.consumer, "Redis reader stopped");
    }

    async fn serve(&mut self, connection: MultiplexedConnection, tx: &Sender) {
        let mut connection = Some(connection);
        let mut failures = 0u32;
        let mut recovered = false;
        let mut next_claim = Instant::now();
        loop {
            let step = async {
                let conn = match connection.take() {
                    Some(c) => c,
                    None => crate::conn::reader(&self.client, &self.settings).await?,
                };
                connection = Some(conn.clone());
                if !recovered {
                    self.take_back_own(tx).await?;
                    recovered = true;
                }
                if Instant::now() >= next_claim {
                    self.claim_abandoned(tx).await?;
                    next_claim = Instant::now() + self.settings.claim_interval;
                }
                self.read_new(conn, tx).await
            };
            match step.await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = reconnect_delay(failures);
                    tracing::debug!(error = %e, retry_in = ?wait, group = %self.shared.group, "Redis reader failed; retrying");
                    if e.context("redis_code") == Some("NOGROUP") {
                        // The stream or group vanished (a server that kept no data): create
                        // them again where the subscription asked to start.
                        self.recreate_groups().await;
                    } else {
                        connection = None;
                    }
                    // The stream carries the error to the core, which logs and counts it like
                    // every backend's; the reader goes on after its pause.
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn recreate_groups(&self) {
        let mut conn = self.shared.conn.clone();
        for stream in &self.streams {
            if let Err(e) = ensure_group(
                &mut conn,
                stream,
                &self.shared.group,
                self.start.as_ref(),
                false,
            )
            .await
            {
                tracing::warn!(error = %e, stream, "cannot recreate the consumer group");
            }
        }
    }

    /// One blocking `XREADGROUP` of entries never delivered to the group.
    async fn read_new(&self, mut conn: MultiplexedConnection, tx: &Sender) -> Result<()> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(self.settings.read_count)
            .arg("BLOCK")
            .arg(self.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(">");
        }
        let ReadReply(streams) = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| read_failed("XREADGROUP", e))?;
        for (stream, entries) in streams {
            for entry in entries {
                self.shared.deliver(tx, &stream, entry, 1).await;
            }
        }
        Ok(())
    }

    /// Claims the entries this consumer name left pending in an earlier life.
    async fn take_back_own(&self, tx: &Sender) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        for stream in &self.streams {
            let mut from = "-".to_owned();
            loop {
                let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&self.shared.group)
                    .arg(&from)
                    .arg("+")
                    .arg(self.settings.read_count)
                    .arg(&self.shared.consumer)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| read_failed("XPENDING", e))?;
                let Some(last) = pending.ids.last() else {
                    break;
                };
                from = format!("({}", last.id);
                let counts: HashMap<String, usize> = pending
                    .ids
                    .iter()
                    .map(|p| (p.id.clone(), p.times_delivered))
                    .collect();
                let ClaimReply(claimed) = redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(&self.shared.group)
                    .arg(&self.shared.consumer)
                    .arg(0)
                    .arg(counts.keys().collect::<Vec<_>>())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| read_failed("XCLAIM", e))?;
                for entry in oldest_first(claimed) {
                    let attempt = counts.get(&entry.id).map_or(2, |n| n + 1);
                    self.shared.deliver(tx, stream, entry, attempt).await;
                }
            }
        }
        Ok(())
    }

    /// Takes over entries other members have held unacknowledged for the claim idle time.
    async fn claim_abandoned(&mut self, tx: &Sender) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        let idle = self.settings.claim_idle.as_millis() as u64;
        for stream in &self.streams {
            self.backlog
                .check(&mut conn, stream, &self.shared.group)
                .await;
            let cursor = self
                .claim_cursors
                .get(stream)
                .cloned()
                .unwrap_or_else(|| "0-0".into());
            let reply: AutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.settings.read_count)
                .query_async(&mut conn)
                .await
                .map_err(|e| read_failed("XAUTOCLAIM", e))?;
            self.claim_cursors.insert(stream.clone(), reply.cursor);
            if !reply.deleted.is_empty() {
                tracing::warn!(
                    stream,
                    group = %self.shared.group,
                    ids = ?reply.deleted,
                    "pending entries were trimmed from the stream before anyone acknowledged them; raise EVENT_BUS_REDIS_STREAM_MAX_LEN"
                );
            }
            let claimed: Vec<Entry> = reply
                .claimed
                .into_iter()
                .filter(|e| !self.shared.holds(stream, &e.id))
                .collect();
            let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
                continue;
            };
            // XAUTOCLAIM does not say how often an entry was delivered; the retry policy needs it.
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&self.shared.group)
                .arg(&first.id)
                .arg(&last.id)
                .arg(claimed.len().max(self.settings.read_count) * 2)
                .arg(&self.shared.consumer)
                .query_async(&mut conn)
                .await
                .map_err(|e| read_failed("XPENDING", e))?;
            let counts: HashMap<&str, usize> = pending
                .ids
                .iter()
                .map(|p| (p.id.as_str(), p.times_delivered))
                .collect();
            for entry in claimed {
                let attempt = counts.get(entry.id.as_str()).copied().unwrap_or(2);
                tracing::info!(stream, id = %entry.id, attempt, "took over an entry a member left unacknowledged");
                self.shared.deliver(tx, stream, entry, attempt).await;
            }
        }
        for stream in &self.streams {
            // Housekeeping: a failure here (the stream vanished, say) is no fetch error; the
            // next round tries again.
            if let Err(e) = self.remove_departed(&mut conn, stream).await {
                tracing::debug!(error = %e, stream, "cannot look for departed members");
            }
        }
        Ok(())
    }

    /// Removes members that hold nothing and were idle for the claim idle time: consumers that
    /// went away (a restart under a new name) would otherwise stay listed in the group for ever.
    /// A live member removed while idle is added again by Redis with its next read.
    async fn remove_departed(&self, conn: &mut ConnectionManager, stream: &str) -> Result<()> {
        let idle = self.settings.claim_idle.as_millis() as usize;
        let members: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&self.shared.group)
            .query_async(conn)
            .await
            .map_err(|e| read_failed("XINFO CONSUMERS", e))?;
        for gone in members
            .consumers
            .iter()
            .filter(|c| c.pending == 0 && c.idle >= idle && c.name != self.shared.consumer)
        {
            let _: usize = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(&self.shared.group)
                .arg(&gone.name)
                .query_async(conn)
                .await
                .map_err(|e| read_failed("XGROUP DELCONSUMER", e))?;
            tracing::debug!(stream, group = %self.shared.group, consumer = %gone.name, idle_ms = gone.idle, "removed a departed member that held nothing");
        }
        Ok(())
    }
}

impl Shared {
    async fn deliver(self: &Arc<Self>, tx: &Sender, stream: &str, entry: Entry, attempt: usize) {
        let published_at = published_at(&entry.id);
        let message = entry::from_fields(stream, &entry.id, entry.fields);
        {
            let mut held = self.held();
            match held.get_mut(stream) {
                Some(ids) => ids.insert(entry.id.clone()),
                None => held
                    .entry(stream.to_owned())
                    .or_default()
                    .insert(entry.id.clone()),
            };
        }
        let name = match self.names.iter().find(|n| ***n == *stream) {
            Some(name) => Arc::clone(name),
            None => Arc::from(stream),
        };
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        let acker = Box::new(EntryAck {
            shared: self.clone(),
            stream: Arc::clone(&name),
            id: entry.id.clone(),
            attempt,
        });
        let mut delivery =
            Delivery::new(name, message, Position::StreamId(entry.id), attempt, acker);
        if let Some(at) = published_at {
            delivery = delivery.published_at(at);
        }
        // A closed channel means the stream was dropped; the entry stays pending for a claim.
        let _ = tx.send(Ok(delivery)).await;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        // The sets stay consistent whatever panicked while holding them.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, stream: &str, id: &str) -> bool {
        self.held().get(stream).is_some_and(|ids| ids.contains(id))
    }

    fn release(&self, stream: &str, id: &str) {
        if let Some(ids) = self.held().get_mut(stream) {
            ids.remove(id);
        }
    }

    /// Claims a nacked entry back after its delay and delivers it again.
    async fn redeliver(self: Arc<Self>, stream: String, id: String, attempt: u32) {
        if *self.closed.borrow() {
            return;
        }
        let Some(tx) = self.deliveries.upgrade() else {
            return;
        };
        let claimed: redis::RedisResult<ClaimReply> = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&id)
            .query_async(&mut self.conn.clone())
            .await;
        match claimed.map(|ClaimReply(entries)| entries.into_iter().next()) {
            Ok(Some(entry)) => {
                let attempt = attempt as usize + 1;
                self.deliver(&tx, &stream, entry, attempt).await;
            }
            Ok(None) => {
                tracing::warn!(%stream, %id, "a nacked entry left the stream before its redelivery (trimmed or deleted)");
                self.release(&stream, &id);
            }
            Err(e) => {
                // Released, so that a claim round takes it over once it has been idle long enough.
                tracing::warn!(error = %e, %stream, %id, "cannot claim a nacked entry back; a later claim will");
                self.release(&stream, &id);
            }
        }
    }
}

/// Acknowledges one entry.
#[derive(Debug)]
struct EntryAck {
    shared: Arc<Shared>,
    stream: Arc<str>,
    id: String,
    attempt: u32,
}

impl Acknowledge for EntryAck {
    fn ack(self: Box<Self>) -> Settlement {
        let EntryAck {
            shared, stream, id, ..
        } = *self;
        // Waits for the batch's `XACK`: the ack is done only once Redis has it.
        Settlement::waiting(async move {
            let acked = shared.acks.ack((Arc::clone(&stream), id.clone())).await;
            // Released either way: after a failed XACK the entry is still pending, and a claim
            // round must be free to deliver it again once it has been idle long enough.
            shared.release(&stream, &id);
            acked.map_err(|e| e.with("stream", &*stream).with("id", &id))
        })
    }

    fn nack(self: Box<Self>, delay: Duration) -> Settlement {
        let EntryAck {
            shared,
            stream,
            id,
            attempt,
        } = *self;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            shared.redeliver(stream.to_string(), id, attempt).await;
        });
        Settlement::done(Ok(()))
    }
}

/// Sends a batch of acknowledgements: one `XACK` per stream with all its ids, pipelined in one
/// round trip.
fn send_acks(conn: ConnectionManager, group: String) -> SendBatch<(Arc<str>, String)> {
    Box::new(move |batch: Vec<(Arc<str>, String)>| {
        let mut conn = conn.clone();
        let group = group.clone();
        Box::pin(async move {
            let mut by_stream: Vec<(Arc<str>, Vec<String>)> = Vec::new();
            for (stream, id) in batch {
                match by_stream.iter_mut().find(|(s, _)| *s == stream) {
                    Some((_, ids)) => ids.push(id),
                    None => by_stream.push((stream, vec![id])),
                }
            }
            let mut pipe = redis::pipe();
            for (stream, ids) in &by_stream {
                pipe.cmd("XACK")
                    .arg(&**stream)
                    .arg(&group)
                    .arg(ids)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| failed(ErrorKind::Subscribe, "XACK", e))
        })
    })
}

/// A stream id starts with the server's clock in milliseconds when the entry was added.
fn published_at(id: &str) -> Option<DateTime<Utc>> {
    let (ms, _) = split_id(id);
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

fn read_failed(what: &'static str, e: redis::RedisError) -> eventbus_core::Error {
    let code = e.code().map(str::to_owned);
    let error = failed(ErrorKind::Subscribe, what, e);
    match code {
        Some(code) => error.with("redis_code", code),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_give_the_publication_time() {
        let at = published_at("1700000000123-0").unwrap();
        assert_eq!(at.timestamp_millis(), 1_700_000_000_123);
    }

    #[test]
    fn reconnects_back_off_to_a_cap_and_start_over() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| reconnect_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
    }
}
