//! The one error type of eventbus.
//!
//! Every failure carries a small [`ErrorKind`], a flag saying whether trying again may help, and
//! context pairs (topic, backend, event type, …) so that a log line says what and where. Backends
//! map their native errors into this type in one place each; retry logic looks only at
//! [`Error::is_temporary`].

use std::fmt;

/// What went wrong, coarsely; enough to decide what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is missing, malformed or contradicts another one.
    Config,
    /// The configured backend is unknown or not compiled in.
    UnknownBackend,
    /// The broker could not be reached or the connection broke.
    Connection,
    /// The broker refused or lost a published message.
    Publish,
    /// Subscribing, fetching, acknowledging or seeking failed.
    Subscribe,
    /// An event could not be encoded.
    Serialize,
    /// A payload could not be decoded into an event.
    Deserialize,
    /// No signal or receiver is known for an incoming event type.
    UnknownEventType,
    /// Message headers are missing, duplicated or not valid.
    InvalidHeaders,
    /// The producer, consumer or backend was already closed.
    Closed,
    /// A receiver returned an error.
    Receiver,
    /// An operation did not finish in time.
    Timeout,
    /// The consumer stopped after too many consecutive errors.
    TooManyErrors,
    /// The backend does not support the requested operation.
    Unsupported,
    /// An acknowledgement came after the delivery stopped being this member's (its partition was
    /// revoked, say): nothing is lost, the broker delivers the message again, to this member or
    /// another. At-least-once, not a failure.
    Reassigned,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "invalid configuration",
            ErrorKind::UnknownBackend => "unknown backend",
            ErrorKind::Connection => "connection failed",
            ErrorKind::Publish => "publish failed",
            ErrorKind::Subscribe => "subscription failed",
            ErrorKind::Serialize => "cannot encode event",
            ErrorKind::Deserialize => "cannot decode payload",
            ErrorKind::UnknownEventType => "unknown event type",
            ErrorKind::InvalidHeaders => "invalid headers",
            ErrorKind::Closed => "already closed",
            ErrorKind::Receiver => "receiver failed",
            ErrorKind::Timeout => "timed out",
            ErrorKind::TooManyErrors => "too many consecutive errors",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Reassigned => "delivery reassigned",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every eventbus operation.
///
/// One pointer wide: what it says lives behind it. Results and outcomes are moved several times
/// per event on the consume path, most of them `Ok`, and an inline error made each of those
/// moves copy its 72 bytes.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, thiserror::Error)]
struct Inner {
    kind: ErrorKind,
    message: String,
    temporary: bool,
    context: Vec<(&'static str, String)>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results of eventbus operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new permanent error of `kind` with a message that says what to do about it.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: message.into(),
            temporary: false,
            context: Vec::new(),
            source: None,
        }))
    }

    /// Marks the error as temporary: the same call may succeed when tried again.
    #[must_use]
    pub fn temporary(mut self) -> Self {
        self.0.temporary = true;
        self
    }

    /// Adds a context pair such as `("topic", "dev-user-login")`.
    #[must_use]
    pub fn with(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.0.context.push((key, value.to_string()));
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// A copy for each of several waiters on one failure (errors are not `Clone`): kind,
    /// message, context and the temporary flag, with the source's text in place of the source.
    pub fn detached(&self) -> Self {
        let inner = &self.0;
        let mut message = inner.message.clone();
        if let Some(source) = &inner.source {
            message = format!("{message}: {source}");
        }
        Self(Box::new(Inner {
            kind: inner.kind,
            message,
            temporary: inner.temporary,
            context: inner.context.clone(),
            source: None,
        }))
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message without kind and context.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_temporary(&self) -> bool {
        self.0.temporary
    }

    /// The value of a context pair, if present.
    pub fn context(&self, key: &str) -> Option<&str> {
        self.0
            .context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results are moved several times per event on the consume path; an error kept inline
    /// made each move of an `Ok` copy its room.
    #[test]
    fn an_error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn display_names_kind_message_context_and_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "cannot reach the broker")
            .with("backend", "redis")
            .with("url", "redis://127.0.0.1:1")
            .with_source(io)
            .temporary();
        assert_eq!(
            err.to_string(),
            "connection failed: cannot reach the broker (backend: redis, url: redis://127.0.0.1:1): refused"
        );
        assert!(err.is_temporary());
        assert_eq!(err.context("backend"), Some("redis"));
    }
}
