//! [`Journal`]: where rows are queued, read back and re-published from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventbus::metadata::header;
use eventbus::{Bus, Message, Position};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::entry::{headers_from_json, Entry, Side, Status};
use crate::error::{JournalError, Result};
use crate::store::{now_ms, Store};
use crate::writer::{self, Command, Losses};

/// How the journal records.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalSettings {
    /// Payloads larger than this are not kept (their size is) (`EVENT_BUS_JOURNAL_PAYLOAD_MAX_BYTES`).
    pub payload_max_bytes: usize,
    /// Rows written in one transaction.
    pub batch_size: usize,
    /// How long the writer waits for more rows before writing a batch.
    pub linger: Duration,
    /// Rows waiting to be written at most; beyond it rows are dropped and counted.
    pub queue: usize,
    /// Rows older than this are deleted (`EVENT_BUS_JOURNAL_RETENTION_HOURS`).
    pub max_age: Option<Duration>,
    /// At most this many rows are kept, the newest (`EVENT_BUS_JOURNAL_RETENTION_ROWS`).
    pub max_rows: Option<u64>,
    /// How often retention runs.
    pub retention_interval: Duration,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            payload_max_bytes: 64 * 1024,
            batch_size: 1024,
            linger: Duration::from_millis(50),
            queue: 50_000,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_rows: None,
            retention_interval: Duration::from_secs(60),
        }
    }
}

impl JournalSettings {
    /// Keeps payloads up to `bytes`.
    #[must_use]
    pub fn payload_max_bytes(mut self, bytes: usize) -> Self {
        self.payload_max_bytes = bytes;
        self
    }

    /// Deletes rows older than `age` (`None`: keeps them).
    #[must_use]
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// Keeps at most `rows` rows (`None`: no limit).
    #[must_use]
    pub fn max_rows(mut self, rows: Option<u64>) -> Self {
        self.max_rows = rows;
        self
    }

    /// Holds at most `rows` rows waiting to be written.
    #[must_use]
    pub fn queue(mut self, rows: usize) -> Self {
        self.queue = rows;
        self
    }

    /// Waits up to `linger` for more rows before writing a batch.
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Runs retention every `interval`.
    #[must_use]
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.retention_interval = interval;
        self
    }

    /// The defaults with `EVENT_BUS_JOURNAL_*` applied.
    pub fn from_env() -> Result<Self> {
        let mut settings = Self::default();
        let number = |name: &str| -> Result<Option<u64>> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| {
                    JournalError::Config(format!("{name} must be a whole number, not `{v}`"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(n) = number("EVENT_BUS_JOURNAL_PAYLOAD_MAX_BYTES")? {
            settings.payload_max_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(hours) = number("EVENT_BUS_JOURNAL_RETENTION_HOURS")? {
            settings.max_age = (hours > 0).then(|| Duration::from_secs(hours * 3600));
        }
        if let Some(rows) = number("EVENT_BUS_JOURNAL_RETENTION_ROWS")? {
            settings.max_rows = (rows > 0).then_some(rows);
        }
        Ok(settings)
    }
}

/// How a retriggered event is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventId {
    /// The original `ce_id`: consumers that deduplicate by id will skip it.
    Same,
    /// A new `ce_id` (and time): a new event with the same data.
    New,
}

/// What to list.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this full topic.
    pub topic: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this key.
    pub key: Option<String>,
    /// Event ids starting with this.
    pub id_prefix: Option<String>,
    /// Only rows changed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only rows changed before this time.
    pub until: Option<DateTime<Utc>>,
    /// At most this many rows, newest first (default 100).
    pub limit: Option<u32>,
}

impl Filter {
    /// Everything (the newest 100 rows).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `event_type`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only the full topic `topic`.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only `status`.
    #[must_use]
    pub fn status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// Only `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Event ids starting with `prefix`.
    #[must_use]
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }

    /// Rows changed in `[since, until)`.
    #[must_use]
    pub fn between(mut self, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Self {
        self.since = since;
        self.until = until;
        self
    }

    /// At most `limit` rows.
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// The journal: records every event the bus produces and consumes, through its layers.
#[derive(Debug, Clone)]
pub struct Journal {
    store: Store,
    queue: mpsc::Sender<Command>,
    losses: Arc<Losses>,
    settings: Arc<JournalSettings>,
}

impl Journal {
    /// Connects to `url` (see [`Store::connect`]) and starts the writer and retention.
    pub async fn connect(url: &str, settings: JournalSettings) -> Result<Self> {
        Ok(Self::start(Store::connect(url).await?, settings))
    }

    /// The journal `EVENT_BUS_JOURNAL_URL` names (default `sqlite://eventbus.db`), with
    /// [`JournalSettings::from_env`].
    pub async fn from_env() -> Result<Self> {
        let url = std::env::var("EVENT_BUS_JOURNAL_URL")
            .unwrap_or_else(|_| "sqlite://eventbus.db".into());
        Self::connect(&url, JournalSettings::from_env()?).await
    }

    /// A journal over a connected store.
    pub fn start(store: Store, settings: JournalSettings) -> Self {
        let (queue, rx) = mpsc::channel(settings.queue.max(1));
        let losses = Arc::new(Losses::default());
        tokio::spawn(writer::run(
            store.clone(),
            rx,
            settings.batch_size.max(1),
            settings.linger,
            Arc::clone(&losses),
        ));
        let journal = Self {
            store,
            queue,
            losses,
            settings: Arc::new(settings),
        };
        if journal.settings.max_age.is_some() || journal.settings.max_rows.is_some() {
            // A weak handle: retention must not keep the journal (and its writer) alive.
            let alive = journal.queue.downgrade();
            let (store, settings) = (journal.store.clone(), Arc::clone(&journal.settings));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(settings.retention_interval);
                loop {
                    tick.tick().await;
                    if alive.upgrade().is_none() {
                        break;
                    }
                    if let Err(e) = purge(&store, &settings).await {
                        tracing::warn!(error = %e, "journal retention failed; trying again later");
                    }
                }
            });
        }
        journal
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings.
    pub fn settings(&self) -> &JournalSettings {
        &self.settings
    }

    /// Queues a row. Never waits: a full queue drops the row and counts it.
    pub fn record(&self, entry: Entry) {
        if self
            .queue
            .try_send(Command::Write(Box::new(entry)))
            .is_err()
        {
            let before = self.losses.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("eventbus_journal_lost_total", "cause" => "queue-full").increment(1);
            // Said once per thousand, not once per event.
            if before % 1000 == 0 {
                tracing::warn!(dropped = before + 1, "the journal queue is full; rows are being dropped (the events themselves are not affected)");
            }
        }
    }

    /// Waits until every row queued so far is written (or given up).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Rows dropped because the queue was full, and rows the database refused.
    pub fn losses(&self) -> (u64, u64) {
        (
            self.losses.dropped.load(Ordering::Relaxed),
            self.losses.failed.load(Ordering::Relaxed),
        )
    }

    /// The payload to keep of a message: all of it, or nothing when it is over the cap.
    pub(crate) fn kept_payload(&self, payload: &[u8]) -> Option<Vec<u8>> {
        (payload.len() <= self.settings.payload_max_bytes).then(|| payload.to_vec())
    }

    /// Rows matching `filter`, most recently changed first.
    pub async fn events(&self, filter: &Filter) -> Result<Vec<Entry>> {
        let mut sql = format!("SELECT {COLUMNS} FROM eventbus_journal WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let mut add = |clause: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &filter.event_type {
            add(" AND event_type = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &filter.topic {
            add(" AND topic = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = filter.status {
            add(" AND status = ?", Arg::Text(v.as_str().to_owned()));
        }
        if let Some(v) = &filter.key {
            add(" AND event_key = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &filter.id_prefix {
            add(
                " AND event_id LIKE ?",
                Arg::Text(format!("{}%", v.replace(['%', '_'], ""))),
            );
        }
        if let Some(v) = filter.since {
            add(" AND updated_at >= ?", Arg::Int(v.timestamp_millis()));
        }
        if let Some(v) = filter.until {
            add(" AND updated_at < ?", Arg::Int(v.timestamp_millis()));
        }
        sql.push_str(&format!(
            " ORDER BY updated_at DESC, event_id LIMIT {}",
            filter.limit.unwrap_or(100)
        ));
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Text(t) => query.bind(t),
                Arg::Int(i) => query.bind(i),
            };
        }
        self.store
            .fetch_all(query)
            .await?
            .iter()
            .map(read_row)
            .collect()
    }

    /// Every row of one event: the producer's and each consumer group's.
    pub async fn history(&self, event_id: &str) -> Result<Vec<Entry>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM eventbus_journal WHERE event_id = $1 ORDER BY first_at, side DESC, consumer_group"
        );
        let rows = self
            .store
            .fetch_all(sqlx::query(&sql).bind(event_id.to_owned()))
            .await?;
        rows.iter().map(read_row).collect()
    }

    /// Publishes a journalled event again to its topic, with its key and headers, keeping or
    /// renewing its id; the payload must have been kept (under the size cap).
    pub async fn retrigger(&self, bus: &Bus, event_id: &str, id: EventId) -> Result<Position> {
        let rows = self.history(event_id).await?;
        let row = rows
            .iter()
            .find(|r| r.side == Side::Produce && r.payload.is_some())
            .or_else(|| rows.iter().find(|r| r.payload.is_some()))
            .ok_or_else(|| JournalError::NotFound(event_id.to_owned()))?;
        let mut headers = row.headers.clone();
        // Retry bookkeeping of the dead-letter topic is not part of the event.
        for name in eventbus::consumer::dead_letter::header::ALL {
            headers.remove(name);
        }
        if id == EventId::New {
            headers.insert(header::ID, uuid::Uuid::new_v4().to_string());
            let mut time = eventbus::EventMetadata::new("", 0, "", "");
            time.time = Utc::now();
            headers.insert(header::TIME, time.time_string());
        }
        let message = Message {
            key: row.key_bytes.clone().map(Into::into),
            payload: row.payload.clone().unwrap_or_default().into(),
            headers,
        };
        let mut positions = bus.producer().publish(&row.topic, vec![message]).await?;
        positions
            .pop()
            .ok_or_else(|| JournalError::NotFound(event_id.to_owned()))
    }

    /// Applies retention now: deletes rows older than the age limit and beyond the row limit;
    /// returns how many went.
    pub async fn purge(&self) -> Result<u64> {
        purge(&self.store, &self.settings).await
    }
}

async fn purge(store: &Store, settings: &JournalSettings) -> Result<u64> {
    let mut deleted = 0;
    if let Some(age) = settings.max_age {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM eventbus_journal WHERE updated_at < $1")
            .bind(cutoff)
            .execute(store.pool())
            .await
            .map_err(|e| store.error(e))?;
        deleted += done.rows_affected();
    }
    if let Some(max) = settings.max_rows {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let row = sqlx::query(
            "SELECT updated_at FROM eventbus_journal ORDER BY updated_at DESC LIMIT 1 OFFSET $1",
        )
        .bind(max)
        .fetch_optional(store.pool())
        .await
        .map_err(|e| store.error(e))?;
        if let Some(row) = row {
            let cutoff: i64 = row.try_get(0).map_err(|e| store.error(e))?;
            let done = sqlx::query("DELETE FROM eventbus_journal WHERE updated_at <= $1")
                .bind(cutoff)
                .execute(store.pool())
                .await
                .map_err(|e| store.error(e))?;
            deleted += done.rows_affected();
        }
    }
    Ok(deleted)
}

enum Arg {
    Text(String),
    Int(i64),
}

const COLUMNS: &str = "event_id, side, consumer_group, event_type, topic, event_key, message_key, position, source, event_time, payload, payload_size, headers, status, attempts, last_error, duration_us, first_at, updated_at";

fn read_row(row: &sqlx::any::AnyRow) -> Result<Entry> {
    let bad = |what: &str| {
        JournalError::Config(format!(
            "a journal row has a bad {what}; was the table written by another program?"
        ))
    };
    let get_text = |i: usize| {
        row.try_get::<Option<String>, _>(i)
            .map_err(|_| bad("text column"))
    };
    let side = match get_text(1)?.as_deref() {
        Some("produce") => Side::Produce,
        Some("consume") => Side::Consume,
        _ => return Err(bad("side")),
    };
    let status = get_text(13)?
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let int = |i: usize| {
        row.try_get::<Option<i64>, _>(i)
            .map_err(|_| bad("number column"))
    };
    let time = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let bytes = |i: usize| {
        row.try_get::<Option<Vec<u8>>, _>(i)
            .map_err(|_| bad("bytes column"))
    };
    Ok(Entry {
        event_id: get_text(0)?.unwrap_or_default(),
        side,
        group: get_text(2)?.unwrap_or_default(),
        event_type: get_text(3)?,
        topic: get_text(4)?.unwrap_or_default(),
        key: get_text(5)?,
        key_bytes: bytes(6)?,
        position: get_text(7)?,
        source: get_text(8)?,
        event_time: get_text(9)?,
        payload: bytes(10)?,
        payload_size: int(11)?.unwrap_or_default(),
        headers: headers_from_json(&get_text(12)?.unwrap_or_default()),
        status,
        attempts: u32::try_from(int(14)?.unwrap_or_default()).unwrap_or(u32::MAX),
        last_error: get_text(15)?,
        duration: int(16)?.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or_default())),
        first_at: time(int(17)?.unwrap_or_default()),
        updated_at: time(int(18)?.unwrap_or_default()),
    })
}

impl Journal {
    /// Events published per topic and minute since `since`: `(topic, minute start, count)`.
    pub async fn throughput(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>, i64)>> {
        let rows = self
            .store
            .fetch_all(
                sqlx::query(
                    "SELECT topic, first_at / 60000 AS minute, COUNT(*) FROM eventbus_journal
                     WHERE side = 'produce' AND first_at >= $1
                     GROUP BY topic, first_at / 60000 ORDER BY topic, minute",
                )
                .bind(since.timestamp_millis()),
            )
            .await?;
        rows.iter()
            .map(|row| {
                let topic: String = row.try_get(0).map_err(|e| self.store.error(e))?;
                let minute: i64 = row.try_get(1).map_err(|e| self.store.error(e))?;
                let count: i64 = row.try_get(2).map_err(|e| self.store.error(e))?;
                let at = DateTime::from_timestamp_millis(minute * 60_000).unwrap_or_default();
                Ok((topic, at, count))
            })
            .collect()
    }

    /// The last error a consumer group's rows recorded, with when.
    pub async fn last_error(&self, group: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        let rows = self
            .store
            .fetch_all(
                sqlx::query(
                    "SELECT last_error, updated_at FROM eventbus_journal
                     WHERE side = 'consume' AND consumer_group = $1 AND last_error IS NOT NULL
                     ORDER BY updated_at DESC LIMIT 1",
                )
                .bind(group.to_owned()),
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let error: String = row.try_get(0).map_err(|e| self.store.error(e))?;
        let at: i64 = row.try_get(1).map_err(|e| self.store.error(e))?;
        Ok(Some((
            error,
            DateTime::from_timestamp_millis(at).unwrap_or_default(),
        )))
    }
}
