//! Publishing: one producer per topic, created on first use and kept.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use eventbus_core::transport::PublishGate;
use eventbus_core::{Error, ErrorKind, Message, Position, Publisher, Result};
use pulsar::producer::SendFuture;
use pulsar::{Producer, ProducerOptions, TokioExecutor};
use tokio::sync::{Mutex, OnceCell};

use crate::client::{failed, format_id, full_topic, Client};
use crate::mapping::to_pulsar;
use crate::settings::{Compression, PulsarSettings};

type Slot = Arc<OnceCell<Mutex<Producer<TokioExecutor>>>>;

/// Publishes through a cache of producers, one per topic.
pub(crate) struct PulsarPublisher {
    client: Client,
    settings: Arc<PulsarSettings>,
    producers: std::sync::Mutex<HashMap<String, Slot>>,
    gate: PublishGate,
}

impl std::fmt::Debug for PulsarPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let producers = self.producers.lock().map(|p| p.len()).unwrap_or_default();
        f.debug_struct("PulsarPublisher")
            .field("settings", &self.settings)
            .field("producers", &producers)
            .finish_non_exhaustive()
    }
}

impl PulsarPublisher {
    pub(crate) fn new(client: Client, settings: Arc<PulsarSettings>) -> Self {
        Self {
            client,
            settings,
            producers: std::sync::Mutex::default(),
            gate: PublishGate::new(),
        }
    }

    fn slot(&self, topic: &str) -> Slot {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        producers.entry(topic.to_owned()).or_default().clone()
    }

    /// Forgets a producer that failed, so that the next publish opens a fresh one.
    fn forget(&self, topic: &str, slot: &Slot) {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if producers.get(topic).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            producers.remove(topic);
        }
    }

    async fn open(&self, topic: &str) -> Result<Mutex<Producer<TokioExecutor>>> {
        let producer = self
            .client
            .producer()
            .with_topic(full_topic(&self.settings.namespace, topic))
            .with_options(producer_options(&self.settings))
            .build()
            .await
            .map_err(|e| {
                failed(ErrorKind::Publish, "creating a producer", e).with("topic", topic)
            })?;
        Ok(Mutex::new(producer))
    }

    /// Hands the batch to the topic's producer in order; the futures resolve on the broker's
    /// receipts.
    async fn enqueue(
        &self,
        topic: &str,
        slot: &Slot,
        batch: Vec<Message>,
    ) -> Result<Vec<SendFuture>> {
        let producer = slot.get_or_try_init(|| self.open(topic)).await?;
        let mut producer = producer.lock().await;
        let mut sends = Vec::with_capacity(batch.len());
        for message in batch {
            let send = producer.send_non_blocking(to_pulsar(message)?).await;
            sends.push(send.map_err(|e| failed(ErrorKind::Publish, "sending", e))?);
        }
        if self.settings.batch_size > 0 {
            // The caller waits for the receipts: do not let the last batch wait to fill up.
            producer
                .send_batch()
                .await
                .map_err(|e| failed(ErrorKind::Publish, "sending a batch", e))?;
        }
        Ok(sends)
    }
}

/// The producer options the settings ask for; also what the benchmark's raw client uses.
pub fn producer_options(settings: &PulsarSettings) -> ProducerOptions {
    use pulsar::compression as c;
    let compression = match settings.compression {
        Compression::None => None,
        Compression::Lz4 => Some(c::Compression::Lz4(c::CompressionLz4::default())),
        Compression::Zlib => Some(c::Compression::Zlib(c::CompressionZlib::default())),
        Compression::Zstd => Some(c::Compression::Zstd(c::CompressionZstd::default())),
        Compression::Snappy => Some(c::Compression::Snappy(c::CompressionSnappy::default())),
    };
    let batching = settings.batch_size > 0;
    ProducerOptions {
        batch_size: batching.then_some(settings.batch_size),
        batch_timeout: batching.then_some(settings.batch_max_delay),
        compression,
        // Wait for room in the client's send queue instead of failing with `SlowDown`.
        block_queue_if_full: true,
        ..ProducerOptions::default()
    }
}

#[async_trait]
impl Publisher for PulsarPublisher {
    async fn publish(&self, topic: &str, batch: Vec<Message>) -> Result<Vec<Position>> {
        let _admitted = self.gate.enter("Pulsar publisher", topic).await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let slot = self.slot(topic);
        let outcome = async {
            let sends = self.enqueue(topic, &slot, batch).await?;
            let mut positions = Vec::with_capacity(sends.len());
            for send in sends {
                let receipt = send
                    .await
                    .map_err(|e| failed(ErrorKind::Publish, "waiting for the receipt", e))?;
                let id = receipt
                    .message_id
                    .as_ref()
                    .map(format_id)
                    .unwrap_or_default();
                positions.push(Position::MessageId(id));
            }
            Ok(positions)
        }
        .await;
        if outcome.is_err() {
            self.forget(topic, &slot);
        }
        outcome.map_err(|e: Error| e.with("topic", topic))
    }

    async fn flush(&self) -> Result<()> {
        // Each publish returns only with its receipts; waiting for those in flight is all.
        self.gate.drain().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        let slots: Vec<(String, Slot)> = {
            let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
            producers.drain().collect()
        };
        for (topic, slot) in slots {
            let Some(producer) = slot.get() else { continue };
            let closing = async { producer.lock().await.close().await };
            match tokio::time::timeout(self.settings.close_timeout, closing).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%topic, error = %e, "closing a Pulsar producer failed")
                }
                Err(_) => tracing::warn!(%topic, "closing a Pulsar producer timed out"),
            }
        }
        Ok(())
    }
}
