//! Subscribing: a group is a Pulsar subscription; start positions are initial positions and
//! seeks.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use eventbus_core::transport::closed_error;
use eventbus_core::transport::departures::{wait_for_departures, GroupKey};
use eventbus_core::{DeliveryStream, ErrorKind, Result, StartPosition, Subscriber, Subscription};
use pulsar::consumer::InitialPosition;
use pulsar::error::ConnectionError;
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, ConsumerOptions, TokioExecutor};
use tokio::sync::watch;

use crate::client::{failed, full_topic, parse_id, Client};
use crate::reader;
use crate::PulsarSettings;

/// The consumer type of every subscription: payloads stay bytes, the core decodes them.
pub(crate) type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// Opens one consumer per subscription.
pub(crate) struct PulsarSubscriber {
    client: Client,
    settings: Arc<PulsarSettings>,
    closed: watch::Sender<bool>,
}

/// What it takes to open, and after a lost connection reopen, one topic's consumer of a
/// subscription.
#[derive(Clone)]
pub(crate) struct Opener {
    client: Client,
    settings: Arc<PulsarSettings>,
    topic: String,
    group: String,
    consumer: String,
    initial: InitialPosition,
}

impl Opener {
    pub(crate) async fn open(&self) -> Result<PulsarConsumer> {
        let options = ConsumerOptions::default()
            .with_initial_position(self.initial.clone())
            .with_receiver_queue_size(self.settings.receiver_queue_size);
        self.client
            .consumer()
            .with_topic(&self.topic)
            .with_subscription(&self.group)
            .with_subscription_type(self.settings.group_mode.sub_type())
            .with_consumer_name(&self.consumer)
            .with_options(options)
            .build()
            .await
            .map_err(|e| {
                failed(ErrorKind::Subscribe, "subscribing", e)
                    .with("topic", &self.topic)
                    .with("group", &self.group)
            })
    }
}

impl std::fmt::Debug for PulsarSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSubscriber")
            .field("settings", &self.settings)
            .field("closed", &*self.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl PulsarSubscriber {
    pub(crate) fn new(client: Client, settings: Arc<PulsarSettings>) -> Self {
        Self {
            client,
            settings,
            closed: watch::Sender::new(false),
        }
    }

    async fn seek(&self, consumer: &mut PulsarConsumer, start: &StartPosition) -> Result<()> {
        let (id, time): (Option<MessageIdData>, Option<u64>) = match start {
            // A seek by publish time 0 rewinds to the first message. (Pulsar's symbolic
            // "earliest" id, -1:-1, is not understood by every broker.) An empty topic has
            // nothing to rewind, and some brokers refuse a seek past its end.
            StartPosition::Earliest => match last_id(consumer).await? {
                Some(_) => (None, Some(0)),
                None => return Ok(()),
            },
            // Just past the last message; an empty topic has nothing to skip.
            StartPosition::Latest => match last_id(consumer).await? {
                Some(last) => (Some(after(last)), None),
                None => return Ok(()),
            },
            StartPosition::Time(t) => {
                (None, Some(u64::try_from(t.timestamp_millis()).unwrap_or(0)))
            }
            StartPosition::At(text) => (Some(parse_id(text)?), None),
            other => {
                tracing::warn!(
                    ?other,
                    "unknown start position; reading from the earliest message"
                );
                (None, Some(0))
            }
        };
        consumer
            // A partitioned topic has a consumer per partition: seek them all.
            .seek(Some(consumer.topics()), id, time, self.client.clone())
            .await
            .map_err(|e| {
                failed(ErrorKind::Subscribe, "seeking", e).with("start", format!("{start:?}"))
            })
    }
}

/// The id of the topic's last message, or `None` when it holds none (Pulsar answers -1
/// there, which arrives as a huge unsigned number).
async fn last_id(consumer: &mut PulsarConsumer) -> Result<Option<MessageIdData>> {
    let last = match consumer.get_last_message_id().await {
        Ok(last) => last,
        // pulsar-lite refuses the question for an empty topic instead of answering -1.
        Err(pulsar::Error::Connection(ConnectionError::PulsarError(_, Some(why))))
            if why.contains("no messages") =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(failed(
                ErrorKind::Subscribe,
                "asking for the last message id",
                e,
            ))
        }
    };
    // A partitioned topic answers per partition; any message means it is not empty.
    Ok(last
        .into_iter()
        .find(|id| id.ledger_id < i64::MAX as u64 && id.entry_id < i64::MAX as u64))
}

/// The id just past `last`: a seek there skips everything published so far. (Pulsar's
/// symbolic "latest" id is not understood by every broker: pulsar-lite takes it literally and
/// then never delivers again.)
fn after(last: MessageIdData) -> MessageIdData {
    MessageIdData {
        entry_id: last.entry_id + 1,
        batch_index: None,
        ..last
    }
}

#[async_trait]
impl Subscriber for PulsarSubscriber {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if *self.closed.borrow() {
            return Err(closed_error("Pulsar subscriber"));
        }
        subscription.check()?;
        if let Some(StartPosition::At(id)) = &subscription.start {
            parse_id(id)?;
        }
        // Deliveries name the topic as the application does; Pulsar uses full names. One
        // consumer per topic: each seeks to its own position and acks its own ids.
        let topics: Vec<(String, String)> = subscription
            .topics
            .iter()
            .map(|t| (full_topic(&self.settings.namespace, t), t.clone()))
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        let keys: Vec<GroupKey> = topics
            .iter()
            .map(|(full, _)| GroupKey::new([&self.settings.url, full, &subscription.group]))
            .collect();
        wait_for_departures(&keys, self.settings.close_timeout).await;
        let mut consumers = Vec::with_capacity(topics.len());
        // Pulsar applies the initial position to a new subscription only; an existing one
        // resumes, and an explicit start moves it with a seek.
        let initial = match subscription.start {
            Some(StartPosition::Latest) => InitialPosition::Latest,
            _ => InitialPosition::Earliest,
        };
        for (key, (full, name)) in keys.into_iter().zip(topics) {
            let opener = Opener {
                client: self.client.clone(),
                settings: self.settings.clone(),
                topic: full,
                group: subscription.group.clone(),
                consumer: subscription.consumer.clone(),
                initial: initial.clone(),
            };
            let mut consumer = opener.open().await?;
            if let Some(start) = &subscription.start {
                self.seek(&mut consumer, start)
                    .await
                    .map_err(|e| e.with("topic", &name))?;
            }
            consumers.push((consumer, opener, name, key));
        }
        Ok(reader::start(
            consumers,
            self.settings.clone(),
            self.closed.subscribe(),
        ))
    }

    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        // The binary protocol has no ping a client can send on its own; a broker that accepts
        // connections at the service address is up, and a consumer that lost its connection
        // reports that as fetch errors, which readiness sees too.
        crate::client::probe(&self.settings).await
    }

    // Backlog is reported by the admin REST API, not the binary protocol this client speaks,
    // so `lag` keeps the default: unknown.
}
