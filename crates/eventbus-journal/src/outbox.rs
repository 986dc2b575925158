//! The transactional outbox: an event written in the same database transaction as the business
//! change it announces, then published by a relay. Either both happen or neither does.
//!
//! Relays claim rows with a lease (`claimed_until`): a relay killed mid-batch loses nothing, its
//! rows come free when the lease runs out and another relay publishes them (at least once; the
//! consumer can drop the repeat with the [`Idempotency`](crate::Idempotency) layer). Only the
//! oldest unsent row of each key is claimable, so several relays keep the order per key; on
//! PostgreSQL the claim skips rows another relay holds (`FOR UPDATE SKIP LOCKED`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use eventbus::{Bus, Event, Message};
use sqlx::Row;

use crate::entry::{headers_from_json, headers_to_json};
use crate::error::{JournalError, Result};
use crate::store::{now_ms, Dialect, Store};

/// A row on its way into the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    topic: String,
    ordering_key: Option<String>,
    message_key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: String,
    event_id: Option<String>,
    created_at: i64,
}

const INSERT: &str = "INSERT INTO eventbus_outbox (topic, ordering_key, message_key, payload, headers, event_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// A transaction the outbox can write into: sqlx transactions on PostgreSQL, SQLite and `Any`.
#[async_trait]
pub trait OutboxTransaction: Send {
    /// Inserts the row inside this transaction.
    async fn insert_outbox(&mut self, row: &OutboxRow) -> std::result::Result<(), sqlx::Error>;
}

macro_rules! outbox_transaction {
    ($db:ty) => {
        #[async_trait]
        impl OutboxTransaction for sqlx::Transaction<'_, $db> {
            async fn insert_outbox(
                &mut self,
                row: &OutboxRow,
            ) -> std::result::Result<(), sqlx::Error> {
                sqlx::query(INSERT)
                    .bind(row.topic.clone())
                    .bind(row.ordering_key.clone())
                    .bind(row.message_key.clone())
                    .bind(row.payload.clone())
                    .bind(row.headers.clone())
                    .bind(row.event_id.clone())
                    .bind(row.created_at)
                    .execute(&mut **self)
                    .await
                    .map(drop)
            }
        }
    };
}

outbox_transaction!(sqlx::Postgres);
outbox_transaction!(sqlx::Sqlite);
outbox_transaction!(sqlx::Any);

/// Writes events into the outbox table of a journal database.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
    bus: Bus,
}

impl Outbox {
    /// An outbox in `store`'s database (its tables exist once the store connected), encoding
    /// events as `bus` does.
    pub fn new(store: &Store, bus: &Bus) -> Self {
        Self {
            store: store.clone(),
            bus: bus.clone(),
        }
    }

    /// Writes `event` for `topic` (without prefix) into the caller's transaction: it is
    /// published once the transaction commits (by a [`Relay`]), and never if it rolls back.
    /// The event is encoded now, exactly as `Producer::send` would encode it.
    pub async fn send_in<E: Event>(
        &self,
        tx: &mut impl OutboxTransaction,
        topic: &str,
        event: &E,
    ) -> Result<()> {
        let producer = self.bus.producer();
        let full = producer.settings().full_topic(topic);
        let key = event.key();
        if let Some(ids) = producer.schema_ids() {
            if let (Some(field), Some(_)) = (E::KEY_FIELD, &key) {
                ids.register_key::<E>(&full, field).await?;
            }
            ids.register::<E>(&full).await?;
        }
        let metadata = producer.metadata::<E>();
        let key_bytes = producer.encode_key::<E>(&full, key.as_deref(), E::KEY_FIELD)?;
        let message = producer.encode(&full, event, &metadata, key_bytes)?;
        let row = OutboxRow {
            topic: full,
            ordering_key: key,
            message_key: message.key.as_ref().map(|k| k.to_vec()),
            payload: message.payload.to_vec(),
            headers: headers_to_json(&message.headers),
            event_id: Some(metadata.id.to_string()),
            created_at: now_ms(),
        };
        tx.insert_outbox(&row)
            .await
            .map_err(|e| self.store.error(e))
    }

    /// A relay that publishes this outbox's rows.
    pub fn relay(&self, settings: RelaySettings) -> Relay {
        Relay {
            store: self.store.clone(),
            bus: self.bus.clone(),
            settings,
        }
    }

    /// Rows not yet published.
    pub async fn pending(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM eventbus_outbox WHERE sent_at IS NULL")
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| self.store.error(e))?;
        row.try_get(0).map_err(|e| self.store.error(e))
    }
}

/// How a relay works.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelaySettings {
    /// This relay's name, in claims and logs.
    pub name: String,
    /// Rows claimed at once.
    pub batch: u32,
    /// How long to wait when nothing is pending.
    pub idle: Duration,
    /// How long a claim holds: a relay that died frees its rows after this.
    pub lease: Duration,
    /// First wait after a failed publish, doubling per attempt up to `backoff_cap`.
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub backoff_cap: Duration,
}

impl RelaySettings {
    /// Defaults for a relay called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            batch: 100,
            idle: Duration::from_millis(200),
            lease: Duration::from_secs(30),
            backoff: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
        }
    }

    /// Claims hold for `lease`.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Waits `idle` when nothing is pending.
    #[must_use]
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// First wait after a failed publish.
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Publishes outbox rows through the bus's producer (its layers included), oldest first.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Store,
    bus: Bus,
    settings: RelaySettings,
}

struct Claimed {
    id: i64,
    topic: String,
    message: Message,
    attempts: i64,
}

impl Relay {
    /// Relays until `shutdown` resolves; a failing database is logged and tried again.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.relay_once().await {
                Ok(0) => self.settings.idle,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(relay = %self.settings.name, error = %e, "the outbox relay failed; trying again");
                    self.settings.idle.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims one batch, publishes it and marks what was published; returns how many rows it
    /// published.
    pub async fn relay_once(&self) -> Result<usize> {
        let token = format!("{}:{}", self.settings.name, uuid::Uuid::new_v4().simple());
        let claimed = self.claim(&token).await?;
        let mut by_topic: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for row in claimed {
            by_topic.entry(row.topic.clone()).or_default().push(row);
        }
        let mut published = 0;
        for (topic, rows) in by_topic {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let attempts = rows.iter().map(|r| r.attempts).max().unwrap_or_default();
            let messages = rows.into_iter().map(|r| r.message).collect();
            match self.bus.producer().publish(&topic, messages).await {
                Ok(_) => {
                    self.mark_sent(&ids).await?;
                    published += ids.len();
                }
                Err(e) => {
                    tracing::warn!(relay = %self.settings.name, topic, rows = ids.len(), error = %e, "publishing outbox rows failed; they will be tried again");
                    self.mark_failed(&ids, attempts + 1, &e.to_string()).await?;
                }
            }
        }
        Ok(published)
    }

    async fn claim(&self, token: &str) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let until = now + i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let lock = match self.store.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let claim = format!(
            "UPDATE eventbus_outbox SET claimed_by = $1, claimed_until = $2
             WHERE id IN (
                SELECT o.id FROM eventbus_outbox o
                WHERE o.sent_at IS NULL AND o.next_attempt_at <= $3
                  AND (o.claimed_until IS NULL OR o.claimed_until < $3)
                  AND NOT EXISTS (
                    SELECT 1 FROM eventbus_outbox p
                    WHERE p.ordering_key = o.ordering_key AND p.id < o.id AND p.sent_at IS NULL)
                ORDER BY o.id LIMIT $4{lock})
             AND sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $3)"
        );
        sqlx::query(&claim)
            .bind(token.to_owned())
            .bind(until)
            .bind(now)
            .bind(i64::from(self.settings.batch))
            .execute(self.store.pool())
            .await
            .map_err(|e| self.store.error(e))?;
        let rows = sqlx::query(
            "SELECT id, topic, message_key, payload, headers, attempts FROM eventbus_outbox WHERE claimed_by = $1 AND sent_at IS NULL ORDER BY id",
        )
        .bind(token.to_owned())
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| self.store.error(e))?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| self.store.error(e);
                let key: Option<Vec<u8>> = row.try_get(2).map_err(get)?;
                let payload: Vec<u8> = row.try_get(3).map_err(get)?;
                let headers: String = row.try_get(4).map_err(get)?;
                Ok(Claimed {
                    id: row.try_get(0).map_err(get)?,
                    topic: row.try_get(1).map_err(get)?,
                    message: Message {
                        key: key.map(Into::into),
                        payload: payload.into(),
                        headers: headers_from_json(&headers),
                    },
                    attempts: row.try_get(5).map_err(get)?,
                })
            })
            .collect::<Result<Vec<_>, JournalError>>()
    }

    async fn mark_sent(&self, ids: &[i64]) -> Result<()> {
        let sql = format!(
            "UPDATE eventbus_outbox SET sent_at = $1, claimed_by = NULL, claimed_until = NULL WHERE id IN ({})",
            id_list(ids)
        );
        sqlx::query(&sql)
            .bind(now_ms())
            .execute(self.store.pool())
            .await
            .map(drop)
            .map_err(|e| self.store.error(e))
    }

    async fn mark_failed(&self, ids: &[i64], attempts: i64, error: &str) -> Result<()> {
        let exponent = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
        let wait = self
            .settings
            .backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.settings.backoff_cap);
        let next = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        let sql = format!(
            "UPDATE eventbus_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, claimed_by = NULL, claimed_until = NULL WHERE id IN ({})",
            id_list(ids)
        );
        sqlx::query(&sql)
            .bind(attempts)
            .bind(next)
            .bind(error.to_owned())
            .execute(self.store.pool())
            .await
            .map(drop)
            .map_err(|e| self.store.error(e))
    }
}

/// Ids as SQL text: numbers the relay read itself, so nothing outside reaches the statement.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
