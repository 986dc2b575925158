//! The writer task: rows arrive on a bounded queue and are written in batches, one transaction
//! each, off every event's path. A full queue or a failing database costs rows, never events:
//! what could not be written is counted and said.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::entry::{headers_to_json, Entry};
use crate::store::{Dialect, Store};

pub(crate) enum Command {
    Write(Box<Entry>),
    /// Answered once everything queued before it is written (or given up).
    Flush(oneshot::Sender<()>),
}

/// What the journal could not record.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    /// Rows dropped because the queue was full.
    pub(crate) dropped: AtomicU64,
    /// Rows the database refused after retries.
    pub(crate) failed: AtomicU64,
}

const COLUMNS: usize = 19;

/// One statement for a whole batch: a row per statement cost a round trip to the database (or
/// to sqlx's SQLite thread) each. SQLite gets anonymous `?` placeholders: sqlx looks up the
/// name of every numbered one, and SQLite finds a name by walking the statement's list of
/// them, so `$N` made binding quadratic in the parameters (a fifth of the journal's CPU).
fn upsert(dialect: Dialect, rows: usize) -> String {
    let mut sql = String::with_capacity(400 + rows * COLUMNS * 5);
    sql.push_str("INSERT INTO eventbus_journal (event_id, side, consumer_group, event_type, topic, event_key, message_key, position, source, event_time, payload, payload_size, headers, status, attempts, last_error, duration_us, first_at, updated_at) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            match dialect {
                Dialect::Sqlite => sql.push('?'),
                Dialect::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * COLUMNS + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(
        " ON CONFLICT (event_id, side, consumer_group, topic) DO UPDATE SET
    status = excluded.status,
    attempts = CASE WHEN excluded.attempts > eventbus_journal.attempts THEN excluded.attempts ELSE eventbus_journal.attempts END,
    last_error = COALESCE(excluded.last_error, eventbus_journal.last_error),
    position = COALESCE(excluded.position, eventbus_journal.position),
    duration_us = excluded.duration_us,
    updated_at = excluded.updated_at",
    );
    sql
}

pub(crate) async fn run(
    store: Store,
    mut queue: mpsc::Receiver<Command>,
    batch: usize,
    linger: Duration,
    losses: Arc<Losses>,
) {
    let mut rows: Vec<Entry> = Vec::with_capacity(batch);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let statements = Statements::new(store.dialect());
    while let Some(first) = queue.recv().await {
        take(first, &mut rows, &mut waiters);
        // Gather what else comes within the linger, unless someone waits for a flush.
        let deadline = tokio::time::Instant::now() + linger;
        while rows.len() < batch && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(command)) => take(command, &mut rows, &mut waiters),
                Ok(None) | Err(_) => break,
            }
        }
        while rows.len() < batch {
            match queue.try_recv() {
                Ok(command) => take(command, &mut rows, &mut waiters),
                Err(_) => break,
            }
        }
        if !rows.is_empty() {
            let merged = merge(std::mem::take(&mut rows));
            write(&store, &statements, &merged, &losses).await;
        }
        for waiter in waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

fn take(command: Command, rows: &mut Vec<Entry>, waiters: &mut Vec<oneshot::Sender<()>>) {
    match command {
        Command::Write(entry) => rows.push(*entry),
        Command::Flush(done) => waiters.push(done),
    }
}

/// Writes one batch, retrying a failing database a few times before giving the rows up.
async fn write(store: &Store, statements: &Statements, rows: &[Entry], losses: &Losses) {
    let headers: Vec<String> = rows
        .iter()
        .map(|row| headers_to_json(&row.headers))
        .collect();
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=4 {
        match try_write(store, statements, rows, &headers).await {
            Ok(()) => return,
            Err(e) if attempt < 4 => {
                tracing::debug!(error = %e, attempt, "journal write failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(e) => {
                losses
                    .failed
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                metrics::counter!("eventbus_journal_lost_total", "cause" => "database")
                    .increment(rows.len() as u64);
                tracing::warn!(error = %e, rows = rows.len(), "the journal could not write these rows; the events themselves are not affected");
            }
        }
    }
}

/// A later row of the same event wins; the attempts and the last error of an earlier one (a
/// failed attempt before the final outcome) are kept, as the upsert keeps them across
/// statements (one statement may not touch a row twice).
fn merge(rows: Vec<Entry>) -> Vec<Entry> {
    let mut index: HashMap<(String, &'static str, String, String), usize> =
        HashMap::with_capacity(rows.len());
    let mut merged: Vec<Entry> = Vec::with_capacity(rows.len());
    for mut row in rows {
        let key = (
            row.event_id.clone(),
            row.side.as_str(),
            row.group.clone(),
            row.topic.clone(),
        );
        match index.get(&key) {
            Some(&at) => {
                let earlier = &mut merged[at];
                row.attempts = row.attempts.max(earlier.attempts);
                row.last_error = row.last_error.or_else(|| earlier.last_error.take());
                row.position = row.position.or_else(|| earlier.position.take());
                row.first_at = earlier.first_at;
                *earlier = row;
            }
            None => {
                index.insert(key, merged.len());
                merged.push(row);
            }
        }
    }
    merged
}

/// Rows per statement. A fixed size keeps the statement text the same, so the driver prepares
/// it once (SQLite parses a statement of thousands of parameters slowly); the rows left over go
/// one statement each, all in one transaction.
const CHUNK: usize = 32;

/// The two statement texts the writer uses, built once.
struct Statements {
    full: String,
    single: String,
}

impl Statements {
    fn new(dialect: Dialect) -> Self {
        Self {
            full: upsert(dialect, CHUNK),
            single: upsert(dialect, 1),
        }
    }
}

async fn try_write(
    store: &Store,
    statements: &Statements,
    merged: &[Entry],
    headers: &[String],
) -> Result<(), sqlx::Error> {
    let mut conn = store.pool().acquire().await?;
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    for (rows, headers) in merged.chunks(CHUNK).zip(headers.chunks(CHUNK)) {
        if rows.len() == CHUNK {
            bind_rows(sqlx::query(&statements.full), rows, headers)
                .execute(&mut *tx)
                .await?;
        } else {
            for at in 0..rows.len() {
                bind_rows(
                    sqlx::query(&statements.single),
                    &rows[at..=at],
                    &headers[at..=at],
                )
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds borrowed values: sqlx copies an owned `String` it is given once more.
fn bind_rows<'q>(
    mut query: AnyQuery<'q>,
    rows: &'q [Entry],
    headers: &'q [String],
) -> AnyQuery<'q> {
    for (row, headers) in rows.iter().zip(headers) {
        query = query
            .bind(row.event_id.as_str())
            .bind(row.side.as_str())
            .bind(row.group.as_str())
            .bind(row.event_type.as_deref())
            .bind(row.topic.as_str())
            .bind(row.key.as_deref())
            .bind(row.key_bytes.as_deref())
            .bind(row.position.as_deref())
            .bind(row.source.as_deref())
            .bind(row.event_time.as_deref())
            .bind(row.payload.as_deref())
            .bind(row.payload_size)
            .bind(headers.as_str())
            .bind(row.status.as_str())
            .bind(i64::from(row.attempts))
            .bind(row.last_error.as_deref())
            .bind(
                row.duration
                    .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            )
            .bind(row.first_at.timestamp_millis())
            .bind(row.updated_at.timestamp_millis());
    }
    query
}
