//! The journal's errors.

/// What went wrong in the journal or the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The configuration is wrong; the message says which setting and what to give.
    #[error("{0}")]
    Config(String),
    /// The database refused or failed.
    #[error("the journal database {url} failed: {source}")]
    Database {
        /// The database, password hidden.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Encoding or publishing through the bus failed.
    #[error(transparent)]
    Bus(#[from] eventbus::Error),
    /// No journal row has this event id.
    #[error("no journalled event has id {0}")]
    NotFound(String),
}

/// The journal's result.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
