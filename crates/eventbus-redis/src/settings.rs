//! The backend's settings, read from `EVENT_BUS_REDIS_*` options.

use std::time::Duration;

use eventbus_core::redact::Redactor;
use eventbus_core::registry::BackendConfig;
use eventbus_core::{Error, ErrorKind, Result};

/// Open edX's name for the server URL.
pub(crate) const CONNECTION_URL: &str = "EVENT_BUS_REDIS_CONNECTION_URL";

/// Open edX's polling settings, recognised and without effect.
const OPEN_EDX_POLLING: [&str; 2] = [
    "EVENT_BUS_REDIS_CONSUMER_POLL_TIMEOUT",
    "EVENT_BUS_REDIS_CONSUMER_POLL_FAILURE_SLEEP",
];

/// How the Redis backend talks to its server.
///
/// Every field has an `EVENT_BUS_REDIS_*` option; see the crate documentation for the table.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSettings {
    /// The server URL: `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Approximate length each stream is trimmed to on publish (`MAXLEN ~ N`); 0 keeps all.
    pub stream_max_len: usize,
    /// How long one `XREADGROUP` waits for new entries before the reader looks around again.
    pub block: Duration,
    /// Entries fetched per read.
    pub read_count: usize,
    /// How long an entry must sit unacknowledged with another member before this one takes it
    /// over. Must exceed the slowest receiver plus the longest retry delay, or healthy members
    /// steal each other's work and deliveries double.
    pub claim_idle: Duration,
    /// How often a reader looks for entries to take over.
    pub claim_interval: Duration,
    /// How long a command may wait for its answer before the connection counts as dead.
    pub response_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Redactor::new()
            .url(&self.url)
            .debug(f, &ShownRedisSettings(self))
    }
}

/// [`RedisSettings`] before the redaction of the URL's password.
struct ShownRedisSettings<'a>(&'a RedisSettings);

impl std::fmt::Debug for ShownRedisSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        f.debug_struct("RedisSettings")
            .field("url", &s.url)
            .field("stream_max_len", &s.stream_max_len)
            .field("block", &s.block)
            .field("read_count", &s.read_count)
            .field("claim_idle", &s.claim_idle)
            .field("claim_interval", &s.claim_interval)
            .field("response_timeout", &s.response_timeout)
            .field("connect_timeout", &s.connect_timeout)
            .finish()
    }
}

impl RedisSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_max_len: 10_000,
            block: Duration::from_secs(2),
            read_count: 64,
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Reads the URL and the `EVENT_BUS_REDIS_*` options of a backend configuration.
    pub fn from_config(config: &BackendConfig) -> Result<Self> {
        // Open edX names the URL EVENT_BUS_REDIS_CONNECTION_URL; EVENT_BUS_URL wins.
        let url = config
            .url
            .clone()
            .or_else(|| config.get(CONNECTION_URL).map(str::to_owned))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "the Redis backend needs a URL; set EVENT_BUS_URL=redis://host:port (or Open edX's EVENT_BUS_REDIS_CONNECTION_URL)",
                )
                .with("setting", "EVENT_BUS_URL")
            })?;
        for name in OPEN_EDX_POLLING {
            if config.get(name).is_some() {
                tracing::info!(
                    setting = name,
                    "an Open edX setting with no effect here: reads block for EVENT_BUS_REDIS_BLOCK_MS, and failures back off by the core's schedule"
                );
            }
        }
        let defaults = Self::new(url);
        let millis = |name: &'static str, default: Duration| -> Result<Duration> {
            let ms: u64 = config.parse_or(name, default.as_millis() as u64)?;
            Ok(Duration::from_millis(ms))
        };
        let settings = Self {
            stream_max_len: config
                .parse_or("EVENT_BUS_REDIS_STREAM_MAX_LEN", defaults.stream_max_len)?,
            block: millis("EVENT_BUS_REDIS_BLOCK_MS", defaults.block)?,
            read_count: config.parse_or("EVENT_BUS_REDIS_READ_COUNT", defaults.read_count)?,
            claim_idle: millis("EVENT_BUS_REDIS_CLAIM_IDLE_MS", defaults.claim_idle)?,
            claim_interval: millis("EVENT_BUS_REDIS_CLAIM_INTERVAL_MS", defaults.claim_interval)?,
            response_timeout: millis(
                "EVENT_BUS_REDIS_RESPONSE_TIMEOUT_MS",
                defaults.response_timeout,
            )?,
            connect_timeout: millis(
                "EVENT_BUS_REDIS_CONNECT_TIMEOUT_MS",
                defaults.connect_timeout,
            )?,
            ..defaults
        };
        settings.check()?;
        Ok(settings)
    }

    /// Rejects settings that cannot work, naming the option to change.
    pub fn check(&self) -> Result<()> {
        let bad = |setting: &'static str, why: &str| {
            Err(Error::new(ErrorKind::Config, why.to_owned()).with("setting", setting))
        };
        if self.read_count == 0 {
            return bad(
                "EVENT_BUS_REDIS_READ_COUNT",
                "the read count must be at least 1",
            );
        }
        if self.block.is_zero() {
            // BLOCK 0 means "forever" to Redis: a reader could then never notice a close.
            return bad(
                "EVENT_BUS_REDIS_BLOCK_MS",
                "the block time must be above zero",
            );
        }
        if self.claim_interval.is_zero() {
            return bad(
                "EVENT_BUS_REDIS_CLAIM_INTERVAL_MS",
                "the claim interval must be above zero",
            );
        }
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad(
                "EVENT_BUS_REDIS_RESPONSE_TIMEOUT_MS",
                "timeouts must be above zero; a dead socket would otherwise hang forever",
            );
        }
        Ok(())
    }

    /// The answer timeout of the reader's own connection: its blocking read may legitimately
    /// take the whole block time before Redis answers.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.block + self.response_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_defaults() {
        let config = BackendConfig::new(Some("redis://127.0.0.1:1".into()))
            .option("EVENT_BUS_REDIS_STREAM_MAX_LEN", "0")
            .option("EVENT_BUS_REDIS_CLAIM_IDLE_MS", "1500");
        let s = RedisSettings::from_config(&config).unwrap();
        assert_eq!(s.stream_max_len, 0);
        assert_eq!(s.claim_idle, Duration::from_millis(1500));
        assert_eq!(s.block, Duration::from_secs(2));
    }

    #[test]
    fn open_edx_connection_url_is_accepted_and_event_bus_url_wins() {
        let open_edx = BackendConfig::new(None).option(CONNECTION_URL, "redis://edx:6379/0");
        assert_eq!(
            RedisSettings::from_config(&open_edx).unwrap().url,
            "redis://edx:6379/0"
        );
        let both = BackendConfig::new(Some("redis://ours:1".into()))
            .option(CONNECTION_URL, "redis://edx:6379/0");
        assert_eq!(
            RedisSettings::from_config(&both).unwrap().url,
            "redis://ours:1"
        );
        let err = RedisSettings::from_config(&BackendConfig::new(None)).unwrap_err();
        assert!(err.to_string().contains(CONNECTION_URL), "{err}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let config = BackendConfig::new(Some("redis://h".into()))
            .option("EVENT_BUS_REDIS_STREAM_MAX_LEN", "lots");
        let err = RedisSettings::from_config(&config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("EVENT_BUS_REDIS_STREAM_MAX_LEN"),
            "{err}"
        );

        let config =
            BackendConfig::new(Some("redis://h".into())).option("EVENT_BUS_REDIS_BLOCK_MS", "0");
        let err = RedisSettings::from_config(&config).unwrap_err();
        assert!(
            err.to_string().contains("EVENT_BUS_REDIS_BLOCK_MS"),
            "{err}"
        );

        let err = RedisSettings::from_config(&BackendConfig::new(None)).unwrap_err();
        assert!(err.to_string().contains("EVENT_BUS_URL"), "{err}");
    }
}
