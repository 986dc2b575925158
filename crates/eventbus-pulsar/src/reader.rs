//! The task behind one subscription: it owns the Pulsar consumer, hands its messages out as
//! deliveries and carries their acks and nacks back to it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use eventbus_core::transport::{reconnect_delay, Acknowledge};
use eventbus_core::{
    Delivery, DeliveryStream, Error, ErrorKind, Headers, Message, Position, Result,
};
use futures::{Stream, StreamExt};
use pulsar::consumer::Message as PulsarMessage;
use pulsar::proto::MessageIdData;
use tokio::sync::{mpsc, watch};

use crate::client::{failed, format_id};
use crate::departures::{GroupKey, Membership};
use crate::subscriber::{Opener, PulsarConsumer};
use crate::PulsarSettings;

/// Deliveries waiting for the application; the consumer's receiver queue holds the rest.
const HANDED_OUT: usize = 64;

/// One message as the consumer knows it: the full topic it came from and its id.
#[derive(Debug, Clone)]
struct Target {
    topic: String,
    id: MessageIdData,
}

impl Target {
    /// A key for the nack counts; ids are not `Hash`.
    fn key(&self) -> (String, String) {
        (self.topic.clone(), format_id(&self.id))
    }
}

/// Tells an acker that its ack went out to the broker, or why not.
type Receipt = tokio::sync::oneshot::Sender<Result<()>>;

#[derive(Debug)]
enum Command {
    Ack(Target, Receipt),
    Nack(Target),
}

/// The task of one topic of a subscription.
pub(crate) struct Reader {
    /// `None` while the consumer is being reopened.
    consumer: Option<PulsarConsumer>,
    opener: Opener,
    /// The topic as the application named it.
    name: String,
    membership: Membership,
    settings: Arc<PulsarSettings>,
    commands: mpsc::UnboundedSender<Command>,
    // The client does not pass on the broker's redelivery count, so the reader counts the
    // nacks it sent itself: a message nacked twice comes back as attempt 3.
    nacks: HashMap<(String, String), u32>,
}

impl Reader {
    /// Starts a task per topic consumer; their deliveries merge into one stream, which ends
    /// when every task has ended.
    pub(crate) fn start(
        consumers: Vec<(PulsarConsumer, Opener, String, GroupKey)>,
        settings: Arc<PulsarSettings>,
        closed: watch::Receiver<bool>,
    ) -> DeliveryStream {
        let (tx, rx) = mpsc::channel(HANDED_OUT);
        let mut members = Vec::with_capacity(consumers.len());
        for (consumer, opener, name, key) in consumers {
            let (commands, command_rx) = mpsc::unbounded_channel();
            let membership = Membership::new(key);
            members.push(membership.clone());
            let reader = Self {
                consumer: Some(consumer),
                opener,
                name,
                membership,
                settings: settings.clone(),
                commands,
                nacks: HashMap::new(),
            };
            tokio::spawn(reader.run(tx.clone(), command_rx, closed.clone()));
        }
        Box::pin(Deliveries { rx, members })
    }

    async fn run(
        mut self,
        tx: mpsc::Sender<Result<Delivery>>,
        mut command_rx: mpsc::UnboundedReceiver<Command>,
        mut closed: watch::Receiver<bool>,
    ) {
        let mut pending: Option<Result<Delivery>> = None;
        let mut failures = 0;
        loop {
            let Some(consumer) = self.consumer.as_mut() else {
                // The consumer ended without being asked to: reopen it after a pause. The
                // group resumes where it was; unacknowledged messages come again.
                tokio::select! {
                    biased;
                    () = until_closed(&mut closed) => break,
                    () = tx.closed() => break,
                    Some(command) = command_rx.recv() => self.apply(command).await,
                    () = tokio::time::sleep(reconnect_delay(failures)) => match self.opener.open().await {
                        Ok(consumer) => {
                            tracing::info!(topic = %self.name, "Pulsar consumer reopened");
                            self.consumer = Some(consumer);
                            failures = 0;
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(topic = %self.name, error = %e, "reopening a Pulsar consumer failed; retrying");
                        }
                    },
                }
                continue;
            };
            tokio::select! {
                biased;
                () = until_closed(&mut closed) => break,
                () = tx.closed() => break,
                Some(command) = command_rx.recv() => self.apply(command).await,
                permit = tx.reserve(), if pending.is_some() => match (permit, pending.take()) {
                    (Ok(permit), Some(item)) => permit.send(item),
                    _ => break,
                },
                item = consumer.next(), if pending.is_none() => match item {
                    Some(Ok(message)) => pending = Some(Ok(self.delivery(message))),
                    Some(Err(e)) => pending = Some(Err(failed(ErrorKind::Subscribe, "receiving", e))),
                    None => {
                        tracing::warn!(topic = %self.name, "the Pulsar consumer ended; reopening it");
                        self.consumer = None;
                        failures = 1;
                    }
                },
            }
        }
        // Acks sent before the stream went away still reach the broker before the close.
        while let Ok(command) = command_rx.try_recv() {
            self.apply(command).await;
        }
        if let Some(consumer) = self.consumer.as_mut() {
            match tokio::time::timeout(self.settings.close_timeout, consumer.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "closing a Pulsar consumer failed"),
                Err(_) => tracing::warn!("closing a Pulsar consumer timed out"),
            }
        }
        self.membership.gone();
    }

    /// Hands one command to the consumer. An ack's receipt answers once the ack is on its way
    /// to the broker: Pulsar acks have no answer, and a round trip per ack to confirm it would
    /// cost the client's Nagle delay (about 40 ms) every time.
    async fn apply(&mut self, command: Command) {
        let (result, receipt) = match command {
            Command::Ack(target, receipt) => {
                self.nacks.remove(&target.key());
                let sent = match self.consumer.as_mut() {
                    Some(consumer) => consumer.ack_with_id(&target.topic, target.id).await,
                    None => Err(lost()),
                };
                (sent, Some(receipt))
            }
            Command::Nack(target) => {
                *self.nacks.entry(target.key()).or_default() += 1;
                let sent = match self.consumer.as_mut() {
                    Some(consumer) => consumer.nack_with_id(&target.topic, target.id).await,
                    None => Err(lost()),
                };
                (sent, None)
            }
        };
        match (result, receipt) {
            (Ok(()), Some(receipt)) => {
                let _ = receipt.send(Ok(()));
            }
            (Ok(()), None) => {}
            (Err(e), receipt) => {
                // The message stays unacknowledged: the broker redelivers it once this
                // consumer is gone, so nothing is lost.
                let error = Error::new(
                    ErrorKind::Subscribe,
                    "a Pulsar acknowledgement did not go out",
                )
                .with_source(e);
                tracing::warn!(error = %error, "acknowledgement lost; the message will come again");
                if let Some(receipt) = receipt {
                    let _ = receipt.send(Err(error));
                }
            }
        }
    }

    fn delivery(&self, message: PulsarMessage<Vec<u8>>) -> Delivery {
        let target = Target {
            topic: message.topic.clone(),
            id: message.message_id().clone(),
        };
        let attempt = 1 + self.nacks.get(&target.key()).copied().unwrap_or(0);
        let metadata = &message.payload.metadata;
        let headers: Headers = metadata
            .properties
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let published_at = i64::try_from(metadata.publish_time)
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        let body = Message {
            key: metadata.partition_key.clone(),
            payload: message.payload.data.into(),
            headers,
        };
        let topic = self.name.clone();
        let position = Position::MessageId(format_id(&target.id));
        let acker = Acker {
            target,
            commands: self.commands.clone(),
        };
        let delivery = Delivery::new(topic, body, position, attempt, Box::new(acker));
        match published_at {
            Some(at) => delivery.published_at(at),
            None => delivery,
        }
    }
}

/// The error for an ack while the consumer is being reopened.
fn lost() -> pulsar::error::ConsumerError {
    pulsar::error::ConsumerError::Connection(pulsar::error::ConnectionError::Disconnected)
}

/// The deliveries of one subscription. Dropping it makes its members leave their groups.
struct Deliveries {
    rx: mpsc::Receiver<Result<Delivery>>,
    members: Vec<Membership>,
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for member in &self.members {
            member.leave();
        }
    }
}

/// Resolves once the subscriber is closed or gone.
async fn until_closed(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await.map(drop);
}

/// Acknowledges through the subscription's task, which owns the consumer.
#[derive(Debug)]
struct Acker {
    target: Target,
    commands: mpsc::UnboundedSender<Command>,
}

impl Acker {
    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| {
            Error::new(
                ErrorKind::Subscribe,
                "the subscription was closed before the acknowledgement; the broker redelivers the message",
            )
            .with("topic", &self.target.topic)
            .with("message", format_id(&self.target.id))
        })
    }
}

#[async_trait]
impl Acknowledge for Acker {
    async fn ack(self: Box<Self>) -> Result<()> {
        let (receipt, confirmed) = tokio::sync::oneshot::channel();
        self.send(Command::Ack(self.target.clone(), receipt))?;
        confirmed.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Subscribe,
                "the subscription closed before the acknowledgement went out; the message will come again",
            )
            .with("message", format_id(&self.target.id)))
        })
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<()> {
        if delay.is_zero() {
            return self.send(Command::Nack(self.target.clone()));
        }
        // Pulsar's nack redelivers at once (or after the consumer-wide delay); the message
        // stays unacknowledged here until its own delay is over.
        if self.commands.is_closed() {
            return self.send(Command::Nack(self.target.clone()));
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = self.send(Command::Nack(self.target.clone()));
        });
        Ok(())
    }
}
