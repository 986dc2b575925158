//! librdkafka configuration, topics, and turning Kafka errors into the core's.

use std::collections::HashSet;
use std::sync::Mutex;

use eventbus_core::{Error, ErrorKind, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use crate::KafkaSettings;

/// The configuration every client starts from: the brokers, then the user's properties, which
/// win over anything eventbus sets afterwards only where eventbus does not depend on a value.
pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (name, value) in &settings.properties {
        config.set(name, value);
    }
    config
}

/// Sets `name` unless the user set it.
pub(crate) fn default(config: &mut ClientConfig, name: &str, value: &str) {
    if config.get(name).is_none() {
        config.set(name, value);
    }
}

/// The core error for a failed Kafka call: `kind` says which side failed, `what` which call.
pub(crate) fn failed(kind: ErrorKind, what: &'static str, e: KafkaError) -> Error {
    let temporary = match e.rdkafka_error_code() {
        Some(code) => is_retriable(code),
        None => matches!(e, KafkaError::Canceled),
    };
    let error = Error::new(kind, format!("Kafka {what} failed")).with_source(e);
    if temporary {
        error.temporary()
    } else {
        error
    }
}

fn is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::MessageTimedOut
            | C::QueueFull
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::OperationTimedOut
            | C::Resolve
    )
}

/// A client config that can be shown: secrets masked by name and by value.
pub(crate) fn describe(config: &ClientConfig) -> String {
    let map = config.config_map();
    let redactor =
        eventbus_core::redact::Redactor::new().options(map.iter().map(|(k, v)| (&**k, &**v)));
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", redactor.option_value(k, v)))
        .collect();
    pairs.sort();
    pairs.join(", ")
}

/// Creates topics before their first use, once per process and topic, when settings ask for it.
pub(crate) struct Topics {
    admin: Option<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication: i32,
    known: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("creates", &self.admin.is_some())
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Topics {
    pub(crate) fn new(settings: &KafkaSettings) -> Result<Self> {
        let admin = if settings.create_topics {
            let admin = base_config(settings).create().map_err(|e| {
                failed(ErrorKind::Config, "admin client creation", e)
                    .with("config", describe(&base_config(settings)))
            })?;
            Some(admin)
        } else {
            None
        };
        Ok(Self {
            admin,
            partitions: settings.topic_partitions,
            replication: settings.topic_replication,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Makes sure `topics` exist: CreateTopics for those not seen yet; an existing one is fine.
    pub(crate) async fn ensure(&self, topics: &[&str]) -> Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let missing: Vec<&str> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            topics
                .iter()
                .copied()
                .filter(|t| !known.contains(*t))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(|e| failed(ErrorKind::Connection, "CreateTopics", e))?;
        for result in results {
            match result {
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(topic);
                }
                Err((topic, code)) => {
                    let error = Error::new(
                        ErrorKind::Config,
                        format!("cannot create the topic: {code}; create it yourself or fix EVENT_BUS_KAFKA_TOPIC_PARTITIONS / _REPLICATION"),
                    )
                    .with("topic", topic);
                    return Err(if is_retriable(code) {
                        error.temporary()
                    } else {
                        error
                    });
                }
            }
        }
        Ok(())
    }
}
