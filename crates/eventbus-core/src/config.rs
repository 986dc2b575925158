//! Configuration: from the environment (the Open edX way) or from a builder in code.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `EVENT_BUS_BACKEND` | backend name (`memory`, …) | from the URL's scheme, else `memory` |
//! | `EVENT_BUS_PRODUCER`, `EVENT_BUS_CONSUMER` | Open edX style factory names; accepted instead of `EVENT_BUS_BACKEND` | |
//! | `EVENT_BUS_URL` | connection URL, e.g. `redis://127.0.0.1:6379` | backend's default |
//! | `EVENT_BUS_TOPIC_PREFIX` | topics become `<prefix>-<topic>` | none |
//! | `EVENTS_SERVICE_NAME` | service in the CloudEvents source `openedx/<service>/web` | `eventbus` |
//! | `EVENT_BUS_SERIALIZER` | `avro`, `confluent-avro`, `json` | backend's wire format |
//! | `EVENT_BUS_PRODUCER_CONFIG` | routing JSON for signals (Open edX shape) | none |
//! | `EVENT_BUS_CONSUMER_MAX_ATTEMPTS` | receiver attempts before dead-lettering | 3 |
//! | `EVENT_BUS_CONSUMER_BACKOFF_BASE_MS` / `_MAX_MS` | retry backoff | 100 / 10000 |
//! | `EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT` | failures in a row that stop the consumer (0: never); Open edX's `EVENT_BUS_KAFKA_`/`EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT` are read too | 100 |
//! | `EVENT_BUS_CONSUMER_CONCURRENCY` | events handled at once | 8 |
//! | `EVENT_BUS_CONSUMER_SHUTDOWN_TIMEOUT_MS` | drain time on shutdown | 30000 |
//! | `EVENT_BUS_DEAD_LETTER_TOPIC` | dead-letter topic template | `{topic}.dlq` |
//! | `EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS` | longest attempt of the receivers; slower counts as failed (0: none) | none |
//! | `EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES` | `dead-letter` or `skip` event types no receiver handles | `dead-letter` |
//! | `EVENT_BUS_CONSUMER_LAG_INTERVAL_MS` | how often the group's lag is read for the lag gauge (0: never) | 15000 |
//! | `EVENT_BUS_CONSUMER_ACK_BATCH_SIZE` | most acknowledgements sent to the broker in one command | 256 |
//! | `EVENT_BUS_CONSUMER_ACK_LINGER_MS` | how long the first ack of a batch waits for more (0: acks that come while a batch is on its way share the next) | 0 |
//! | `EVENT_BUS_<BACKEND>_*` | passed to that backend as options | |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::consumer::{ConsumerSettings, UnknownEventTypes};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::Redactor;
use crate::routing::RoutingTable;
use crate::serializer::SerializerKind;

/// Everything needed to connect a bus.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct BusConfig {
    /// Backend name, qualified name or Open edX factory path; `None` picks by URL scheme.
    pub backend: Option<String>,
    /// Where the backend setting came from, for error messages.
    pub backend_setting: Option<&'static str>,
    /// Connection URL.
    pub url: Option<String>,
    /// Topic prefix.
    pub topic_prefix: Option<String>,
    /// Service name for the CloudEvents source.
    pub service_name: Option<String>,
    /// Serializer; `None` uses the backend's wire format.
    pub serializer: Option<SerializerKind>,
    /// Consumer policy.
    pub consumer: ConsumerSettings,
    /// Routing of signals to topics.
    pub routing: RoutingTable,
    /// Backend options (`EVENT_BUS_<BACKEND>_*` variables, or set in code), by variable name.
    pub options: BTreeMap<String, String>,
}

impl BusConfig {
    /// Defaults: the in-memory backend unless a URL or backend is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads settings from name/value pairs shaped like the environment.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let mut config = Self::new();
        let get = |name: &str| vars.get(name).cloned();

        let producer = get("EVENT_BUS_PRODUCER");
        let consumer = get("EVENT_BUS_CONSUMER");
        if let Some(backend) = get("EVENT_BUS_BACKEND") {
            config.backend = Some(backend);
            config.backend_setting = Some("EVENT_BUS_BACKEND");
        } else if let Some(p) = producer.clone() {
            config.backend = Some(p);
            config.backend_setting = Some("EVENT_BUS_PRODUCER");
        } else if let Some(c) = consumer.clone() {
            config.backend = Some(c);
            config.backend_setting = Some("EVENT_BUS_CONSUMER");
        }
        if let (Some(p), Some(c)) = (&producer, &consumer) {
            config
                .options
                .insert("EVENT_BUS_PRODUCER".into(), p.clone());
            config
                .options
                .insert("EVENT_BUS_CONSUMER".into(), c.clone());
        }
        config.url = get("EVENT_BUS_URL");
        config.topic_prefix = get("EVENT_BUS_TOPIC_PREFIX");
        config.service_name = get("EVENTS_SERVICE_NAME");
        if let Some(s) = get("EVENT_BUS_SERIALIZER") {
            config.serializer = Some(SerializerKind::from_str(&s)?);
        }
        if let Some(json) = get("EVENT_BUS_PRODUCER_CONFIG") {
            config.routing = RoutingTable::from_json(&json)?;
        }
        let c = &mut config.consumer;
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_MAX_ATTEMPTS")? {
            c.retry.max_attempts = v.max(1) as u32;
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_BACKOFF_BASE_MS")? {
            c.retry.base = Duration::from_millis(v);
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_BACKOFF_MAX_MS")? {
            c.retry.cap = Duration::from_millis(v);
        }
        // Open edX names the limit per backend; ours wins when both are set.
        for name in [
            "EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
            "EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
            "EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
        ] {
            if let Some(v) = number(&vars, name)? {
                c.consecutive_error_limit = v as u32;
                break;
            }
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_CONCURRENCY")? {
            c.concurrency = (v as usize).max(1);
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_SHUTDOWN_TIMEOUT_MS")? {
            c.shutdown_timeout = Duration::from_millis(v);
        }
        if let Some(t) = get("EVENT_BUS_DEAD_LETTER_TOPIC") {
            c.dead_letter_topic = t;
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS")? {
            c.handler_timeout = (v > 0).then(|| Duration::from_millis(v));
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_LAG_INTERVAL_MS")? {
            c.lag_interval = (v > 0).then(|| Duration::from_millis(v));
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_ACK_BATCH_SIZE")? {
            c.acks.max_batch = (v as usize).max(1);
        }
        if let Some(v) = number(&vars, "EVENT_BUS_CONSUMER_ACK_LINGER_MS")? {
            c.acks.linger = Duration::from_millis(v);
        }
        if let Some(v) = get("EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES") {
            c.unknown_event_types = match v.trim() {
                "dead-letter" => UnknownEventTypes::DeadLetter,
                "skip" => UnknownEventTypes::Skip,
                other => {
                    return Err(
                        Error::new(ErrorKind::Config, "expected `dead-letter` or `skip`")
                            .with("setting", "EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES")
                            .with("value", other),
                    )
                }
            };
        }
        for (name, value) in &vars {
            if name.starts_with("EVENT_BUS_") && !CORE_VARS.contains(&name.as_str()) {
                config.options.insert(name.clone(), value.clone());
            }
        }
        Ok(config)
    }

    /// Selects the backend by name.
    #[must_use]
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self.backend_setting = None;
        self
    }

    /// Sets the connection URL.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Sets the topic prefix.
    #[must_use]
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = Some(prefix.into());
        self
    }

    /// Sets the service name.
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Sets the serializer.
    #[must_use]
    pub fn serializer(mut self, kind: SerializerKind) -> Self {
        self.serializer = Some(kind);
        self
    }

    /// Sets the signal routing.
    #[must_use]
    pub fn routing(mut self, table: RoutingTable) -> Self {
        self.routing = table;
        self
    }

    /// Changes the consumer policy in place.
    #[must_use]
    pub fn consumer(mut self, f: impl FnOnce(&mut ConsumerSettings)) -> Self {
        f(&mut self.consumer);
        self
    }

    /// Sets a backend option, named like its variable (`EVENT_BUS_REDIS_STREAM_MAX_LEN`).
    #[must_use]
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(name.into(), value.into());
        self
    }

    /// The service name in effect.
    pub fn service(&self) -> &str {
        self.service_name.as_deref().unwrap_or("eventbus")
    }
}

const CORE_VARS: &[&str] = &[
    "EVENT_BUS_BACKEND",
    "EVENT_BUS_PRODUCER",
    "EVENT_BUS_CONSUMER",
    "EVENT_BUS_URL",
    "EVENT_BUS_TOPIC_PREFIX",
    "EVENT_BUS_SERIALIZER",
    "EVENT_BUS_PRODUCER_CONFIG",
    "EVENT_BUS_CONSUMER_MAX_ATTEMPTS",
    "EVENT_BUS_CONSUMER_BACKOFF_BASE_MS",
    "EVENT_BUS_CONSUMER_BACKOFF_MAX_MS",
    "EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
    "EVENT_BUS_CONSUMER_CONCURRENCY",
    "EVENT_BUS_CONSUMER_SHUTDOWN_TIMEOUT_MS",
    "EVENT_BUS_DEAD_LETTER_TOPIC",
    "EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS",
    "EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES",
    "EVENT_BUS_CONSUMER_LAG_INTERVAL_MS",
];

fn number(vars: &BTreeMap<String, String>, name: &'static str) -> Result<Option<u64>> {
    vars.get(name)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|e| {
                Error::new(ErrorKind::Config, "expected a whole number")
                    .with("setting", name)
                    .with("value", v)
                    .with_source(e)
            })
        })
        .transpose()
}

pub use crate::redact::redact_url;

impl BusConfig {
    /// The secrets of this configuration (secret options, the URL's password), to hide them
    /// wherever they appear.
    pub fn redactor(&self) -> Redactor {
        let options = self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        Redactor::for_config(self.url.as_deref(), options)
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redactor = self.redactor();
        let options = redactor.shown(&self.options);
        let raw = RawBusConfig {
            config: self,
            options,
        };
        redactor.debug(f, &raw)
    }
}

/// The fields of a [`BusConfig`], before redaction.
struct RawBusConfig<'a> {
    config: &'a BusConfig,
    options: BTreeMap<&'a str, String>,
}

impl fmt::Debug for RawBusConfig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.config;
        f.debug_struct("BusConfig")
            .field("backend", &c.backend)
            .field("url", &c.url)
            .field("topic_prefix", &c.topic_prefix)
            .field("service_name", &c.service_name)
            .field("serializer", &c.serializer)
            .field("consumer", &c.consumer)
            .field("routing", &c.routing)
            .field("options", &self.options)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_edx_names_of_the_consecutive_errors_limit_are_read_and_ours_wins() {
        let kafka =
            BusConfig::from_vars([("EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT", "7")])
                .unwrap();
        assert_eq!(kafka.consumer.consecutive_error_limit, 7);
        let both = BusConfig::from_vars([
            ("EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT", "7"),
            ("EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT", "3"),
        ])
        .unwrap();
        assert_eq!(both.consumer.consecutive_error_limit, 3);
        let bad =
            BusConfig::from_vars([("EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT", "x")]);
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT"));
    }

    #[test]
    fn reads_the_environment_shape() {
        let config = BusConfig::from_vars([
            ("EVENT_BUS_PRODUCER", "edx_event_bus_redis.create_producer"),
            ("EVENT_BUS_URL", "redis://u:pw@127.0.0.1:6379/0"),
            ("EVENT_BUS_TOPIC_PREFIX", "dev"),
            ("EVENT_BUS_CONSUMER_MAX_ATTEMPTS", "5"),
            ("EVENT_BUS_REDIS_STREAM_MAX_LEN", "50"),
            ("EVENT_BUS_REDIS_PASSWORD", "hunter2"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(
            config.backend.as_deref(),
            Some("edx_event_bus_redis.create_producer")
        );
        assert_eq!(config.backend_setting, Some("EVENT_BUS_PRODUCER"));
        assert_eq!(config.consumer.retry.max_attempts, 5);
        assert_eq!(config.options["EVENT_BUS_REDIS_STREAM_MAX_LEN"], "50");
        assert!(!config.options.contains_key("PATH"));
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains(":pw@"),
            "{debug}"
        );
    }

    #[test]
    fn malformed_numbers_name_the_setting() {
        let err = BusConfig::from_vars([("EVENT_BUS_CONSUMER_CONCURRENCY", "many")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("EVENT_BUS_CONSUMER_CONCURRENCY"),
            "{err}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://user:pw@h"), "redis://user:***@h");
        assert_eq!(redact_url("kafka://a:1,b:2"), "kafka://a:1,b:2");
    }
}
