//! The backend's settings: eventbus's own `EVENT_BUS_KAFKA_*` options, and librdkafka
//! properties passed through.

use std::collections::BTreeMap;
use std::time::Duration;

use eventbus_core::redact::{redact_url, Redactor, MASK};
use eventbus_core::registry::BackendConfig;
use eventbus_core::{Error, ErrorKind, Result};

/// Options eventbus reads itself; every other `EVENT_BUS_KAFKA_*` option is a librdkafka
/// property.
const OWN_OPTIONS: &[&str] = &[
    "EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS",
    "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL",
    "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_KEY",
    "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_SECRET",
    "EVENT_BUS_KAFKA_API_KEY",
    "EVENT_BUS_KAFKA_API_SECRET",
    "EVENT_BUS_KAFKA_CREATE_TOPICS",
    "EVENT_BUS_KAFKA_TOPIC_PARTITIONS",
    "EVENT_BUS_KAFKA_TOPIC_REPLICATION",
    "EVENT_BUS_KAFKA_FLUSH_TIMEOUT_MS",
    "EVENT_BUS_KAFKA_PARTITION_BUFFER",
    // Open edX's own settings, which are no librdkafka properties.
    "EVENT_BUS_KAFKA_CONSUMERS_ENABLED",
    "EVENT_BUS_KAFKA_CONSUMER_POLL_TIMEOUT",
    "EVENT_BUS_KAFKA_CONSUMER_POLL_FAILURE_SLEEP",
    "EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
];

/// Where the schema registry is and how to log in.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// Base URL of the Confluent REST API, e.g. `http://registry:8081`.
    pub url: String,
    /// Basic-auth user (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: the API secret).
    pub password: Option<String>,
    /// How long one request may take.
    pub timeout: Duration,
}

impl RegistrySettings {
    /// A registry at `url`, without credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Logs in with basic auth.
    #[must_use]
    pub fn basic_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }
}

impl RegistrySettings {
    fn redactor(&self) -> Redactor {
        let redactor = Redactor::new().url(&self.url);
        match &self.password {
            Some(pw) => redactor.secret(pw),
            None => redactor,
        }
    }
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.redactor().debug(f, &ShownRegistrySettings(self))
    }
}

/// [`RegistrySettings`] with the password masked, before the redaction by value.
struct ShownRegistrySettings<'a>(&'a RegistrySettings);

impl std::fmt::Debug for ShownRegistrySettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.0.url)
            .field("username", &self.0.username)
            .field("password", &self.0.password.as_ref().map(|_| MASK))
            .finish()
    }
}

/// How the Kafka backend talks to its cluster.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// librdkafka properties for producer, consumers and admin client (`security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`, `linger.ms`, …). eventbus sets a few itself (see
    /// the crate documentation); these come after and win.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (`EVENT_BUS_KAFKA_PRODUCER_<NAME>`).
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (`EVENT_BUS_KAFKA_CONSUMER_<NAME>`).
    pub consumer_properties: BTreeMap<String, String>,
    /// The schema registry; without one the Confluent framing cannot be written or read.
    pub schema_registry: Option<RegistrySettings>,
    /// Whether to create missing topics before first use (the brokers here do not).
    pub create_topics: bool,
    /// Partitions of a topic eventbus creates.
    pub topic_partitions: i32,
    /// Replication factor of a topic eventbus creates.
    pub topic_replication: i32,
    /// How long close waits for messages still in flight.
    pub flush_timeout: Duration,
    /// Messages of a partition a consumer holds from its stored offset on (out, waiting for
    /// their key, or acknowledged behind an unacknowledged one) before it reads no further of
    /// that partition; librdkafka then stops fetching ahead once its own queue is full.
    pub partition_buffer: usize,
    /// Open edX's kill switch `EVENT_BUS_KAFKA_CONSUMERS_ENABLED`: when false, subscribing
    /// fails with an error naming it, and nothing is consumed.
    pub consumers_enabled: bool,
}

impl KafkaSettings {
    /// Defaults for a cluster reached at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            schema_registry: None,
            create_topics: true,
            topic_partitions: 8,
            topic_replication: 1,
            flush_timeout: Duration::from_secs(10),
            partition_buffer: 500,
            consumers_enabled: true,
        }
    }

    /// Sets a librdkafka property of the producer only.
    #[must_use]
    pub fn producer_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_properties.insert(name.into(), value.into());
        self
    }

    /// Sets a librdkafka property of the consumers only.
    #[must_use]
    pub fn consumer_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_properties.insert(name.into(), value.into());
        self
    }

    /// Sets a librdkafka property.
    #[must_use]
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Uses the schema registry `registry`.
    #[must_use]
    pub fn schema_registry(mut self, registry: RegistrySettings) -> Self {
        self.schema_registry = Some(registry);
        self
    }

    /// Reads the URL (`kafka://host:port[,host:port…]`) and the `EVENT_BUS_KAFKA_*` options.
    pub fn from_config(config: &BackendConfig) -> Result<Self> {
        let bootstrap = match (&config.url, config.get("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS")) {
            (Some(url), _) => bootstrap_from_url(url)?,
            (None, Some(servers)) => servers.to_owned(),
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "the Kafka backend needs brokers; set EVENT_BUS_URL=kafka://host:9092 or EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS",
                )
                .with("setting", "EVENT_BUS_URL"))
            }
        };
        let mut settings = Self::new(bootstrap);
        settings.create_topics = config.parse_or("EVENT_BUS_KAFKA_CREATE_TOPICS", true)?;
        settings.topic_partitions = config.parse_or("EVENT_BUS_KAFKA_TOPIC_PARTITIONS", 8)?;
        settings.topic_replication = config.parse_or("EVENT_BUS_KAFKA_TOPIC_REPLICATION", 1)?;
        settings.partition_buffer = config.parse_or("EVENT_BUS_KAFKA_PARTITION_BUFFER", 500)?;
        settings.consumers_enabled = config.parse_or("EVENT_BUS_KAFKA_CONSUMERS_ENABLED", true)?;
        for name in [
            "EVENT_BUS_KAFKA_CONSUMER_POLL_TIMEOUT",
            "EVENT_BUS_KAFKA_CONSUMER_POLL_FAILURE_SLEEP",
        ] {
            if config.get(name).is_some() {
                tracing::info!(
                    setting = name,
                    "an Open edX setting with no effect here: eventbus is woken by librdkafka instead of polling, and backs off failures by the core's schedule"
                );
            }
        }
        let flush_ms: u64 = config.parse_or("EVENT_BUS_KAFKA_FLUSH_TIMEOUT_MS", 10_000)?;
        settings.flush_timeout = Duration::from_millis(flush_ms);
        if let Some(url) = config.get("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL") {
            let mut registry = RegistrySettings::new(url);
            registry.username = config
                .get("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_KEY")
                .map(str::to_owned);
            registry.password = config
                .get("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_SECRET")
                .map(str::to_owned);
            settings.schema_registry = Some(registry);
        }
        // Open edX's Confluent Cloud login: an API key and secret mean SASL PLAIN over TLS.
        if let (Some(key), Some(secret)) = (
            config.get("EVENT_BUS_KAFKA_API_KEY"),
            config.get("EVENT_BUS_KAFKA_API_SECRET"),
        ) {
            settings = settings
                .property("security.protocol", "SASL_SSL")
                .property("sasl.mechanism", "PLAIN")
                .property("sasl.username", key)
                .property("sasl.password", secret);
        }
        for (name, value) in &config.options {
            let Some(rest) = name.strip_prefix("EVENT_BUS_KAFKA_") else {
                continue;
            };
            if OWN_OPTIONS.contains(&name.as_str()) {
                continue;
            }
            let (map, rest) = if let Some(rest) = rest.strip_prefix("PRODUCER_") {
                (&mut settings.producer_properties, rest)
            } else if let Some(rest) = rest.strip_prefix("CONSUMER_") {
                (&mut settings.consumer_properties, rest)
            } else {
                (&mut settings.properties, rest)
            };
            map.insert(rest.to_ascii_lowercase().replace('_', "."), value.clone());
        }
        settings.check()?;
        Ok(settings)
    }

    /// Rejects settings that cannot work, naming the option to change.
    pub fn check(&self) -> Result<()> {
        let bad = |setting: &'static str, why: &str| {
            Err(Error::new(ErrorKind::Config, why.to_owned()).with("setting", setting))
        };
        if self.bootstrap_servers.trim().is_empty() {
            return bad("EVENT_BUS_URL", "no Kafka brokers are named");
        }
        if self.topic_partitions < 1 || self.topic_replication < 1 {
            return bad(
                "EVENT_BUS_KAFKA_TOPIC_PARTITIONS",
                "partitions and replication factor must be at least 1",
            );
        }
        if self.partition_buffer == 0 {
            return bad(
                "EVENT_BUS_KAFKA_PARTITION_BUFFER",
                "the partition buffer must hold at least one message",
            );
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// The secrets of these settings: secret properties, the registry's password, URL passwords.
    pub(crate) fn redactor(&self) -> Redactor {
        let properties = [
            &self.properties,
            &self.producer_properties,
            &self.consumer_properties,
        ];
        let mut redactor = self
            .schema_registry
            .as_ref()
            .map_or_else(Redactor::new, RegistrySettings::redactor);
        for map in properties {
            redactor = redactor.options(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        redactor
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redactor = self.redactor();
        let shown = ShownKafkaSettings {
            settings: self,
            properties: redactor.shown(&self.properties),
            producer_properties: redactor.shown(&self.producer_properties),
            consumer_properties: redactor.shown(&self.consumer_properties),
        };
        redactor.debug(f, &shown)
    }
}

/// [`KafkaSettings`] with secret properties masked by name, before the redaction by value.
struct ShownKafkaSettings<'a> {
    settings: &'a KafkaSettings,
    properties: BTreeMap<&'a str, String>,
    producer_properties: BTreeMap<&'a str, String>,
    consumer_properties: BTreeMap<&'a str, String>,
}

impl std::fmt::Debug for ShownKafkaSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.settings;
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &s.bootstrap_servers)
            .field("properties", &self.properties)
            .field("producer_properties", &self.producer_properties)
            .field("consumer_properties", &self.consumer_properties)
            .field("schema_registry", &s.schema_registry)
            .field("create_topics", &s.create_topics)
            .field("topic_partitions", &s.topic_partitions)
            .field("topic_replication", &s.topic_replication)
            .finish_non_exhaustive()
    }
}

/// `kafka://a:9092,b:9092` → `a:9092,b:9092`.
fn bootstrap_from_url(url: &str) -> Result<String> {
    let servers = url
        .strip_prefix("kafka://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains(['/', '?', '@']))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "bad Kafka URL; expected kafka://host:port[,host:port…] (security settings go in EVENT_BUS_KAFKA_* options)",
            )
            .with("setting", "EVENT_BUS_URL")
            .with("url", redact_url(url))
        })?;
    Ok(servers.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_edx_settings_are_recognised_not_passed_to_librdkafka() {
        let config = BackendConfig::new(Some("kafka://a:9092".into()))
            .option("EVENT_BUS_KAFKA_CONSUMERS_ENABLED", "false")
            .option("EVENT_BUS_KAFKA_CONSUMER_POLL_TIMEOUT", "1.0")
            .option("EVENT_BUS_KAFKA_CONSUMER_POLL_FAILURE_SLEEP", "1.0")
            .option("EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT", "5")
            .option("EVENT_BUS_KAFKA_CONSUMER_FETCH_MAX_BYTES", "1024");
        let s = KafkaSettings::from_config(&config).unwrap();
        assert!(!s.consumers_enabled);
        assert_eq!(
            s.consumer_properties.keys().collect::<Vec<_>>(),
            ["fetch.max.bytes"],
            "only the librdkafka property goes through"
        );
        assert!(s.properties.is_empty() && s.producer_properties.is_empty());
    }

    #[test]
    fn url_and_options_become_settings_and_properties() {
        let config = BackendConfig::new(Some("kafka://a:9092,b:9093".into()))
            .option(
                "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL",
                "http://registry:8081",
            )
            .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_KEY", "k")
            .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_SECRET", "s")
            .option("EVENT_BUS_KAFKA_LINGER_MS", "5")
            .option("EVENT_BUS_KAFKA_TOPIC_PARTITIONS", "3")
            .option("EVENT_BUS_KAFKA_PRODUCER_BATCH_NUM_MESSAGES", "1")
            .option("EVENT_BUS_KAFKA_CONSUMER_FETCH_WAIT_MAX_MS", "50")
            .option("EVENT_BUS_REDIS_STREAM_MAX_LEN", "7");
        let s = KafkaSettings::from_config(&config).unwrap();
        assert_eq!(s.bootstrap_servers, "a:9092,b:9093");
        assert_eq!(s.topic_partitions, 3);
        assert_eq!(s.properties.get("linger.ms").map(String::as_str), Some("5"));
        assert_eq!(s.properties.len(), 1, "{:?}", s.properties);
        assert_eq!(s.producer_properties["batch.num.messages"], "1");
        assert_eq!(s.consumer_properties["fetch.wait.max.ms"], "50");
        let registry = s.schema_registry.clone().unwrap();
        assert_eq!(registry.url, "http://registry:8081");
        assert_eq!(registry.username.as_deref(), Some("k"));
        assert!(!format!("{s:?}").contains("\"s\""), "{s:?}");
    }

    #[test]
    fn api_keys_mean_sasl_plain_and_are_not_logged() {
        let config = BackendConfig::new(None)
            .option("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS", "cloud:9092")
            .option("EVENT_BUS_KAFKA_API_KEY", "key")
            .option("EVENT_BUS_KAFKA_API_SECRET", "hunter2");
        let s = KafkaSettings::from_config(&config).unwrap();
        assert_eq!(s.bootstrap_servers, "cloud:9092");
        assert_eq!(s.properties["security.protocol"], "SASL_SSL");
        assert_eq!(s.properties["sasl.password"], "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_and_values_name_the_setting() {
        for url in ["kafka://", "kafka://user:pw@host:9092", "http://h:1"] {
            let err =
                KafkaSettings::from_config(&BackendConfig::new(Some(url.into()))).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}");
            assert!(err.to_string().contains("EVENT_BUS_URL"), "{err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        let err = KafkaSettings::from_config(&BackendConfig::new(None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS"),
            "{err}"
        );
        let config = BackendConfig::new(Some("kafka://h:1".into()))
            .option("EVENT_BUS_KAFKA_TOPIC_PARTITIONS", "0");
        assert!(KafkaSettings::from_config(&config).is_err());
    }
}
