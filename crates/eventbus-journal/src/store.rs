//! The database: one pool picked by URL scheme (SQLite or PostgreSQL), and its tables.

use std::fmt;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

use crate::error::{JournalError, Result};

/// Which SQL the database speaks where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A connected journal database with its tables created.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect)
            .field("url", &self.url)
            .finish()
    }
}

impl Store {
    /// Connects to `url` (`sqlite://eventbus.db`, created on first use; `sqlite::memory:`;
    /// `postgres://user@host/db`) and creates the tables that are missing.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let shown = eventbus::redact::redact_url(url);
        let (dialect, url) = if url.starts_with("sqlite:") {
            (Dialect::Sqlite, sqlite_url(url))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(JournalError::Config(format!(
                "the journal URL `{shown}` names no database eventbus-journal knows; use sqlite://FILE or postgres://USER@HOST/DB (EVENT_BUS_JOURNAL_URL)"
            )));
        };
        let mut options = AnyPoolOptions::new().max_connections(8);
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Every connection to `:memory:` is a database of its own: keep one.
            options = options
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        if dialect == Dialect::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    // Settings of each connection, not of the file. In WAL mode `NORMAL` syncs at
                    // checkpoints instead of every commit: a power cut can lose the last
                    // commits, never corrupt the file. The event ids are random, so every batch
                    // dirties index pages all over the file: a larger page cache spares reading
                    // them again, and rarer checkpoints copy a page rewritten by many commits
                    // into the file once (the WAL is cut back to 64 MiB after each). A
                    // multi-row upsert keeps a statement journal to undo itself: in memory, not
                    // in a temporary file.
                    for pragma in [
                        "PRAGMA temp_store=MEMORY",
                        "PRAGMA synchronous=NORMAL",
                        "PRAGMA cache_size=-32768",
                        "PRAGMA wal_autocheckpoint=10000",
                        "PRAGMA journal_size_limit=67108864",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| JournalError::Database {
                url: shown.clone(),
                source: e,
            })?;
        let store = Self {
            pool,
            dialect,
            url: shown,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for queries of the caller's own (and the outbox's transactions).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn error(&self, source: sqlx::Error) -> JournalError {
        JournalError::Database {
            url: self.url.clone(),
            source,
        }
    }

    pub(crate) async fn execute(&self, sql: &str) -> Result<()> {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    pub(crate) async fn fetch_all<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<AnyRow>> {
        query.fetch_all(&self.pool).await.map_err(|e| self.error(e))
    }

    /// Creates what is missing; the statements are idempotent, so every connect runs them.
    async fn migrate(&self) -> Result<()> {
        let (blob, big) = match self.dialect {
            Dialect::Sqlite => {
                // Readers do not block the writer, and the writer waits instead of failing.
                self.execute("PRAGMA journal_mode=WAL").await.ok();
                ("BLOB", "INTEGER")
            }
            Dialect::Postgres => ("BYTEA", "BIGINT"),
        };
        let serial = match self.dialect {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS eventbus_journal (
                    event_id TEXT NOT NULL,
                    side TEXT NOT NULL,
                    consumer_group TEXT NOT NULL,
                    event_type TEXT,
                    topic TEXT NOT NULL,
                    event_key TEXT,
                    message_key {blob},
                    position TEXT,
                    source TEXT,
                    event_time TEXT,
                    payload {blob},
                    payload_size {big} NOT NULL,
                    headers TEXT NOT NULL,
                    status TEXT NOT NULL,
                    attempts {big} NOT NULL,
                    last_error TEXT,
                    duration_us {big},
                    first_at {big} NOT NULL,
                    updated_at {big} NOT NULL,
                    PRIMARY KEY (event_id, side, consumer_group, topic)
                )"
            ),
            "CREATE INDEX IF NOT EXISTS eventbus_journal_updated ON eventbus_journal (updated_at)".to_owned(),
            "CREATE INDEX IF NOT EXISTS eventbus_journal_status ON eventbus_journal (status, updated_at)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS eventbus_outbox (
                    id {serial},
                    topic TEXT NOT NULL,
                    ordering_key TEXT,
                    message_key {blob},
                    payload {blob} NOT NULL,
                    headers TEXT NOT NULL,
                    event_id TEXT,
                    created_at {big} NOT NULL,
                    attempts {big} NOT NULL DEFAULT 0,
                    next_attempt_at {big} NOT NULL DEFAULT 0,
                    claimed_by TEXT,
                    claimed_until {big},
                    sent_at {big},
                    last_error TEXT
                )"
            ),
            "CREATE INDEX IF NOT EXISTS eventbus_outbox_pending ON eventbus_outbox (sent_at, id)".to_owned(),
            "CREATE INDEX IF NOT EXISTS eventbus_outbox_key ON eventbus_outbox (ordering_key, id)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS eventbus_processed (
                    consumer_group TEXT NOT NULL,
                    event_id TEXT NOT NULL,
                    processed_at {big} NOT NULL,
                    PRIMARY KEY (consumer_group, event_id)
                )"
            ),
        ];
        for statement in &statements {
            self.execute(statement).await?;
        }
        Ok(())
    }
}

/// SQLite creates the file on first use only when asked to.
fn sqlite_url(url: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        return url.to_owned();
    }
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}mode=rwc")
}

/// Milliseconds since the Unix epoch, the journal's clock.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
