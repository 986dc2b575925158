//! Publishing: one idempotent producer per bus; a batch is enqueued at once and resolves when
//! the brokers acknowledged every message, each with its partition and offset.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventbus_core::transport::PublishGate;
use eventbus_core::{Error, ErrorKind, Message, Position, Publisher, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::client::{base_config, default, describe, failed, Topics};
use crate::KafkaSettings;

/// The publishing side: cheap to clone, one librdkafka producer underneath.
#[derive(Clone)]
pub(crate) struct KafkaPublisher {
    producer: FutureProducer,
    topics: Arc<Topics>,
    flush_timeout: Duration,
    gate: Arc<PublishGate>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topics", &self.topics)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    pub(crate) fn new(settings: &KafkaSettings, topics: Arc<Topics>) -> Result<Self> {
        let mut config = base_config(settings);
        for (name, value) in &settings.producer_properties {
            config.set(name, value);
        }
        // At-least-once without duplicates from the producer's own retries, in order per
        // partition (idempotence implies acks=all).
        default(&mut config, "enable.idempotence", "true");
        default(&mut config, "linger.ms", "5");
        default(&mut config, "message.timeout.ms", "30000");
        let producer: FutureProducer = config.create().map_err(|e| {
            failed(ErrorKind::Config, "producer creation", e).with("config", describe(&config))
        })?;
        Ok(Self {
            producer,
            topics,
            flush_timeout: settings.flush_timeout,
            gate: Arc::new(PublishGate::new()),
        })
    }

    /// Enqueues one message, waiting while librdkafka's queue is full.
    async fn enqueue(
        &self,
        topic: &str,
        message: &Message,
    ) -> Result<rdkafka::producer::DeliveryFuture> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in message.headers.iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&message.payload[..])
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue drains as the brokers acknowledge; wait for room.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(failed(ErrorKind::Publish, "produce", e).with("topic", topic))
                }
            }
        }
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &str, batch: Vec<Message>) -> Result<Vec<Position>> {
        let _admitted = self.gate.enter("Kafka publisher", topic).await?;
        self.topics.ensure(&[topic]).await?;
        let mut deliveries = Vec::with_capacity(batch.len());
        for message in &batch {
            deliveries.push(self.enqueue(topic, message).await?);
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => positions.push(Position::Offset {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => {
                    return Err(failed(ErrorKind::Publish, "produce", e).with("topic", topic))
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Publish,
                        "the producer was dropped before the broker answered",
                    )
                    .with("topic", topic)
                    .temporary())
                }
            }
        }
        Ok(positions)
    }

    async fn flush(&self) -> Result<()> {
        let producer = self.producer.clone();
        let timeout = self.flush_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(ErrorKind::Publish, "flush", e)
                .with("undelivered", self.producer.in_flight_count())
                .with("timeout", format!("{timeout:?}"))),
            Err(join) => {
                Err(Error::new(ErrorKind::Publish, "the flush task failed").with_source(join))
            }
        }
    }

    async fn close(&self) -> Result<()> {
        // Every publish in flight returns only once acknowledged; then flush what is left.
        self.gate.close().await;
        self.flush().await.map_err(|e| {
            Error::new(
                ErrorKind::Publish,
                "closing the Kafka producer left messages undelivered; they may be lost",
            )
            .with("undelivered", self.producer.in_flight_count())
            .with_source(e)
        })
    }
}
