//! Subscribing: a group consumer per subscription, run by its worker.

mod group;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventbus_core::transport::closed_error;
use eventbus_core::{DeliveryStream, Error, ErrorKind, Result, Subscriber, Subscription};
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};

use crate::client::{base_config, default, describe, failed, Topics};
use crate::KafkaSettings;
use group::GroupContext;
use worker::{KafkaConsumer, Worker};

/// How long a subscription waits for the group to assign it partitions before it returns.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens group consumers.
#[derive(Debug)]
pub(crate) struct KafkaSubscriber {
    settings: Arc<KafkaSettings>,
    topics: Arc<Topics>,
    closed: watch::Sender<bool>,
}

impl KafkaSubscriber {
    pub(crate) fn new(settings: Arc<KafkaSettings>, topics: Arc<Topics>) -> Self {
        Self {
            settings,
            topics,
            closed: watch::Sender::new(false),
        }
    }

    fn consumer(&self, subscription: &Subscription) -> Result<KafkaConsumer> {
        let mut config = base_config(&self.settings);
        for (name, value) in &self.settings.consumer_properties {
            config.set(name, value);
        }
        config.set("group.id", &subscription.group);
        config.set("client.id", &subscription.consumer);
        // Offsets are stored only after success; auto-commit sends what was stored.
        config.set("enable.auto.offset.store", "false");
        default(&mut config, "enable.auto.commit", "true");
        default(&mut config, "auto.commit.interval.ms", "1000");
        // A new group reads the history the topic keeps, as on the other backends.
        default(&mut config, "auto.offset.reset", "earliest");
        default(&mut config, "enable.partition.eof", "false");
        let context = GroupContext::new(subscription.start.clone());
        config.create_with_context(context).map_err(|e| {
            failed(ErrorKind::Config, "consumer creation", e).with("config", describe(&config))
        })
    }
}

#[async_trait]
impl Subscriber for KafkaSubscriber {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if *self.closed.borrow() {
            return Err(closed_error("Kafka subscriber"));
        }
        subscription.check()?;
        let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
        self.topics.ensure(&topics).await?;
        let consumer = self.consumer(&subscription)?;
        consumer.subscribe(&topics).map_err(|e| {
            failed(ErrorKind::Subscribe, "subscribe", e).with("topics", topics.join(","))
        })?;
        let mut joined = consumer.context().joined();
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::new(consumer, tx, self.settings.partition_buffer);
        tokio::spawn(worker.run(self.closed.subscribe()));
        // Start positions mean something only once partitions are assigned; publishing right
        // after subscribing must not race the group's join.
        let joined = tokio::time::timeout(JOIN_TIMEOUT, joined.wait_for(|j| *j)).await;
        if !matches!(joined, Ok(Ok(_))) {
            return Err(Error::new(
                ErrorKind::Subscribe,
                "the consumer group assigned no partitions in time; check that the brokers run and the group coordinator is reachable",
            )
            .with("group", &subscription.group)
            .with("timeout", format!("{JOIN_TIMEOUT:?}"))
            .temporary());
        }
        Ok(
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
                .boxed(),
        )
    }

    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }
}
