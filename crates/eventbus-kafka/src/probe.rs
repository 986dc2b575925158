//! Questions to the brokers outside any subscription: are they there (readiness), and how far
//! behind is a group (lag). librdkafka answers them with blocking calls, so they run on the
//! blocking pool, with clients kept per group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::{Error, ErrorKind, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{base_config, describe, failed};
use crate::KafkaSettings;

/// How long one metadata or offsets request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Probe {
    settings: Arc<KafkaSettings>,
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl Probe {
    pub(crate) fn new(settings: Arc<KafkaSettings>) -> Self {
        Self {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client that never joins its group: it only reads the group's committed offsets.
    fn client(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(group) {
            return Ok(Arc::clone(client));
        }
        let mut config = base_config(&self.settings);
        config.set("group.id", group);
        config.set("enable.auto.commit", "false");
        let client: BaseConsumer = config.create().map_err(|e| {
            failed(ErrorKind::Config, "probe client creation", e).with("config", describe(&config))
        })?;
        let client = Arc::new(client);
        clients.insert(group.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    pub(crate) async fn check(&self) -> Result<()> {
        let client = self.client("eventbus-health")?;
        blocking(move || {
            client
                .fetch_metadata(None, TIMEOUT)
                .map(|_| ())
                .map_err(|e| failed(ErrorKind::Connection, "metadata request", e))
        })
        .await
    }

    pub(crate) async fn lag(&self, topics: &[String], group: &str) -> Result<Vec<(String, u64)>> {
        let client = self.client(group)?;
        let topics = topics.to_vec();
        blocking(move || {
            let mut lags = Vec::with_capacity(topics.len());
            for topic in topics {
                lags.push((topic.clone(), topic_lag(&client, &topic)?));
            }
            Ok(lags)
        })
        .await
    }
}

/// The sum over partitions of the high watermark minus the committed offset (or the low
/// watermark where the group has committed nothing yet).
fn topic_lag(client: &BaseConsumer, topic: &str) -> Result<u64> {
    let metadata = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| failed(ErrorKind::Subscribe, "metadata request", e).with("topic", topic))?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = client
        .committed_offsets(list, TIMEOUT)
        .map_err(|e| failed(ErrorKind::Subscribe, "offset fetch", e).with("topic", topic))?;
    let mut lag = 0u64;
    for element in committed.elements() {
        let (low, high) = client
            .fetch_watermarks(topic, element.partition(), TIMEOUT)
            .map_err(|e| {
                failed(ErrorKind::Subscribe, "watermarks request", e).with("topic", topic)
            })?;
        let from = match element.offset() {
            Offset::Offset(n) => n.max(low),
            _ => low,
        };
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(lag)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::new(ErrorKind::Connection, "a Kafka probe task failed").with_source(e)
    })?
}
