//! Opening connections, and turning Redis errors into the core's.

use std::time::Duration;

use eventbus_core::config::redact_url;
use eventbus_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};

use crate::RedisSettings;

/// A client for the settings' URL; checks the URL, opens nothing.
pub(crate) fn client(settings: &RedisSettings) -> Result<Client> {
    if settings.url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; an application may have chosen its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Client::open(settings.url.as_str()).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            "the Redis URL is malformed; expected redis://[user[:password]@]host[:port][/db] or rediss://…",
        )
        .with("setting", "EVENT_BUS_URL")
        .with("url", redact_url(&settings.url))
        .with_source(e)
    })
}

/// The connection for publishing, acknowledging and group commands. It reconnects by itself,
/// with exponential backoff, after the server went away; a command sent while it is down fails
/// and may be retried.
pub(crate) async fn commands(
    client: &Client,
    settings: &RedisSettings,
) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_number_of_retries(4)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| unreachable(settings, e))
}

/// A connection of a reader's own: its `XREADGROUP … BLOCK` holds the connection for the whole
/// block time, so it must neither share it nor time out before the block ends.
pub(crate) async fn reader(
    client: &Client,
    settings: &RedisSettings,
) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(settings.read_timeout()))
        .set_connection_timeout(Some(settings.connect_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| unreachable(settings, e))
}

fn unreachable(settings: &RedisSettings, e: RedisError) -> Error {
    let refused_login = matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    );
    let error = Error::new(
        ErrorKind::Connection,
        "cannot connect to Redis; check that the server runs and the URL, user and password are right",
    )
    .with("url", redact_url(&settings.url))
    .with_source(e);
    if refused_login {
        error
    } else {
        error.temporary()
    }
}

/// The core error for a failed command: `kind` says which side failed, `what` which command.
pub(crate) fn failed(kind: ErrorKind, what: &'static str, e: RedisError) -> Error {
    // Besides the connection failing: replies a server gives while it loads or recovers, and
    // those of a stream or group that vanished under a blocked read (a restart that kept no
    // data), which the reader repairs by creating them again.
    const RECOVERING: &[&str] = &[
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "MASTERDOWN",
        "NOGROUP",
        "UNBLOCKED",
    ];
    let temporary = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code().is_some_and(|code| RECOVERING.contains(&code));
    let error = Error::new(kind, format!("Redis {what} failed")).with_source(e);
    if temporary {
        error.temporary()
    } else {
        error
    }
}
