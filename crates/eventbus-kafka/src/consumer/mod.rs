//! Subscribing: a group consumer per subscription, run by its worker.

mod group;
mod reader;
mod worker;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use eventbus_core::transport::closed_error;
use eventbus_core::transport::departures::{wait_for_departures, GroupKey, Membership};
use eventbus_core::{Delivery, DeliveryStream, Error, ErrorKind, Result, Subscriber, Subscription};
use futures::Stream;
use rdkafka::consumer::Consumer;
use tokio::sync::watch;

use crate::client::{base_config, default, describe, failed, Topics};
use crate::probe::Probe;
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
    probe: Probe,
    closed: watch::Sender<bool>,
}

impl KafkaSubscriber {
    pub(crate) fn new(settings: Arc<KafkaSettings>, topics: Arc<Topics>) -> Self {
        Self {
            probe: Probe::new(Arc::clone(&settings)),
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
        if !self.settings.consumers_enabled {
            return Err(Error::new(
                ErrorKind::Config,
                "Kafka consumers are switched off; set EVENT_BUS_KAFKA_CONSUMERS_ENABLED=true to consume",
            )
            .with("setting", "EVENT_BUS_KAFKA_CONSUMERS_ENABLED")
            .with("group", &subscription.group));
        }
        let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
        self.topics.ensure(&topics).await?;
        // A member of this process still leaving the group would join the rebalance this
        // member starts; on tansu 0.6 that can leave the group without a leader for good.
        let key = GroupKey::new([&self.settings.bootstrap_servers, &subscription.group]);
        wait_for_departures(std::slice::from_ref(&key), worker::CLOSE_TIMEOUT * 2).await;
        let membership = Membership::new(key);
        let consumer = self.consumer(&subscription)?;
        consumer.subscribe(&topics).map_err(|e| {
            failed(ErrorKind::Subscribe, "subscribe", e).with("topics", topics.join(","))
        })?;
        let mut joined = consumer.context().joined();
        let (worker, reader) =
            Worker::new(consumer, self.settings.partition_buffer, membership.clone());
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
        Ok(Box::pin(MemberStream { reader, membership }))
    }

    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.probe.check().await
    }

    async fn lag(&self, topics: &[String], group: &str) -> Result<Vec<(String, u64)>> {
        self.probe.lag(topics, group).await
    }
}

/// A subscription's stream. Dropping it makes the member leave.
struct MemberStream {
    reader: reader::Reader,
    membership: Membership,
}

impl Stream for MemberStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.reader.poll_next(cx)
    }
}

impl Drop for MemberStream {
    fn drop(&mut self) {
        // Marked here, synchronously, so that a subscribe right after the drop waits for the
        // worker to take the consumer out of the group.
        self.membership.leave();
    }
}
