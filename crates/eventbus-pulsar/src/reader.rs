//! The deliveries of a subscription: a stream per topic that polls its Pulsar consumer
//! directly, and acknowledgers that reach the same consumer through a lock.
//!
//! There is no task between the consumer and the application: a hop through channels per
//! message and per ack cost a third of the throughput (BENCHMARKS.md). An ack only queues a
//! command inside the client (an unbounded channel), so it is taken under a short lock without
//! waiting.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use eventbus_core::transport::departures::{GroupKey, Membership};
use eventbus_core::transport::{reconnect_delay, Acknowledge};
use eventbus_core::{Delivery, DeliveryStream, Error, ErrorKind, Position, Result, Settlement};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use pulsar::consumer::Message as PulsarMessage;
use pulsar::error::ConsumerError;
use pulsar::proto::MessageIdData;
use tokio::sync::watch;

use crate::client::{failed, format_id};
use crate::subscriber::{Opener, PulsarConsumer};
use crate::PulsarSettings;

/// Starts reading: one stream per topic consumer, merged into one.
pub(crate) fn start(
    consumers: Vec<(PulsarConsumer, Opener, String, GroupKey)>,
    settings: Arc<PulsarSettings>,
    closed: watch::Receiver<bool>,
) -> DeliveryStream {
    let topics = consumers.into_iter().map(|(consumer, opener, name, key)| {
        let member = Arc::new(Member {
            consumer: Mutex::new(Some(consumer)),
            nacks: Mutex::default(),
            name: Arc::from(name),
            membership: Membership::new(key),
            settings: settings.clone(),
        });
        TopicStream {
            member,
            opener,
            closed: until_closed(closed.clone()),
            reopening: None,
            failures: 0,
            done: false,
        }
    });
    Box::pin(futures::stream::select_all(topics))
}

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

/// One topic's consumer of a subscription, shared by its stream and its acknowledgers.
struct Member {
    /// `None` while the consumer is being reopened, and once it is closed.
    consumer: Mutex<Option<PulsarConsumer>>,
    // The client does not pass on the broker's redelivery count, so the member counts the
    // nacks it sent itself: a message nacked twice comes back as attempt 3.
    nacks: Mutex<HashMap<(String, String), u32>>,
    /// The topic as the application named it, shared with each delivery.
    name: Arc<str>,
    membership: Membership,
    settings: Arc<PulsarSettings>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Member {
    fn ack(&self, target: Target) -> Result<()> {
        {
            let mut nacks = locked(&self.nacks);
            if !nacks.is_empty() {
                nacks.remove(&target.key());
            }
        }
        let mut consumer = locked(&self.consumer);
        let sent = consumer.as_mut().map(|c| {
            c.ack_with_id(&target.topic, target.id.clone())
                .now_or_never()
        });
        self.sent(sent, "acknowledgement", &target)
    }

    fn nack(&self, target: Target) -> Result<()> {
        *locked(&self.nacks).entry(target.key()).or_default() += 1;
        let mut consumer = locked(&self.consumer);
        let sent = consumer.as_mut().map(|c| {
            c.nack_with_id(&target.topic, target.id.clone())
                .now_or_never()
        });
        self.sent(sent, "negative acknowledgement", &target)
    }

    /// The outcome of handing an (n)ack to the client: `None` without a consumer, `Some(None)`
    /// if the client would have had to wait, which its unbounded queue never does.
    fn sent(
        &self,
        sent: Option<Option<std::result::Result<(), ConsumerError>>>,
        what: &str,
        target: &Target,
    ) -> Result<()> {
        let why = match sent {
            Some(Some(Ok(()))) => return Ok(()),
            Some(Some(Err(e))) => e.to_string(),
            Some(None) => "the client did not take it at once".to_owned(),
            None => "the subscription is closed or reconnecting".to_owned(),
        };
        // The message stays unacknowledged: the broker delivers it again, nothing is lost.
        Err(Error::new(
            ErrorKind::Subscribe,
            format!("a Pulsar {what} did not go out ({why}); the message will come again"),
        )
        .with("topic", &self.name)
        .with("message", format_id(&target.id))
        .temporary())
    }

    /// The attempt of a delivery: 1 plus the nacks this member sent for it.
    fn attempt(&self, target: &Target) -> u32 {
        let nacks = locked(&self.nacks);
        if nacks.is_empty() {
            return 1;
        }
        1 + nacks.get(&target.key()).copied().unwrap_or(0)
    }

    /// Leaves the group: closes the consumer in the background, so that its unacknowledged
    /// messages go to the other members, and tells joiners when it is done.
    fn leave(self: &Arc<Self>) {
        self.membership.leave();
        let consumer = locked(&self.consumer).take();
        let member = Arc::clone(self);
        let close = async move {
            if let Some(mut consumer) = consumer {
                let timeout = member.settings.close_timeout;
                match tokio::time::timeout(timeout, consumer.close()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "closing a Pulsar consumer failed"),
                    Err(_) => tracing::warn!("closing a Pulsar consumer timed out"),
                }
            }
            member.membership.gone();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(close)),
            // Without a runtime the consumer can only be dropped; the broker notices.
            Err(_) => self.membership.gone(),
        }
    }
}

/// The deliveries of one topic.
struct TopicStream {
    member: Arc<Member>,
    opener: Opener,
    closed: BoxFuture<'static, ()>,
    /// Reopening the consumer after the client gave it up: a pause, then a subscribe.
    reopening: Option<BoxFuture<'static, Result<PulsarConsumer>>>,
    failures: u32,
    done: bool,
}

/// Resolves once the subscriber is closed or gone.
fn until_closed(mut closed: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let _ = closed.wait_for(|c| *c).await.map(drop);
    })
}

impl TopicStream {
    fn reopen(&mut self) {
        let opener = self.opener.clone();
        let pause = reconnect_delay(self.failures);
        self.reopening = Some(Box::pin(async move {
            tokio::time::sleep(pause).await;
            opener.open().await
        }));
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.reopening = None;
            self.member.leave();
        }
    }

    fn delivery(&self, message: PulsarMessage<Vec<u8>>) -> Delivery {
        let PulsarMessage {
            topic,
            payload,
            message_id,
            ..
        } = message;
        let target = Target {
            topic,
            id: message_id.id,
        };
        let publish_time = payload.metadata.publish_time;
        let body = crate::mapping::from_pulsar(payload.metadata, payload.data);
        let position = Position::MessageId(format_id(&target.id));
        let attempt = self.member.attempt(&target);
        let acker = Acker {
            target,
            member: Arc::clone(&self.member),
        };
        let delivery = Delivery::new(
            Arc::clone(&self.member.name),
            body,
            position,
            attempt,
            Box::new(acker),
        );
        let published_at = i64::try_from(publish_time)
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        match published_at {
            Some(at) => delivery.published_at(at),
            None => delivery,
        }
    }
}

impl Stream for TopicStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.closed.poll_unpin(cx).is_ready() {
            self.finish();
            return Poll::Ready(None);
        }
        loop {
            if let Some(reopening) = self.reopening.as_mut() {
                match reopening.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(consumer)) => {
                        tracing::info!(topic = %self.member.name, "Pulsar consumer reopened");
                        *locked(&self.member.consumer) = Some(consumer);
                        self.reopening = None;
                        self.failures = 0;
                    }
                    Poll::Ready(Err(e)) => {
                        // To the core, which logs and counts it like every backend's fetch
                        // error; the next poll goes on reopening.
                        self.failures += 1;
                        tracing::debug!(topic = %self.member.name, error = %e, "reopening a Pulsar consumer failed; retrying");
                        self.reopen();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                continue;
            }
            let polled = match locked(&self.member.consumer).as_mut() {
                Some(consumer) => consumer.poll_next_unpin(cx),
                None => Poll::Ready(None),
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(message))) => {
                    return Poll::Ready(Some(Ok(self.delivery(message))))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(failed(ErrorKind::Subscribe, "receiving", e))))
                }
                Poll::Ready(None) => {
                    // The client gave the consumer up (a broker restart, say): reopen it after
                    // a pause. The group resumes where it was; unacknowledged messages come
                    // again.
                    drop(locked(&self.member.consumer).take());
                    self.failures = 1;
                    self.reopen();
                    let ended = Error::new(
                        ErrorKind::Connection,
                        "the Pulsar client gave the consumer up (a broker restart?); reopening it",
                    )
                    .with("topic", &self.member.name)
                    .temporary();
                    return Poll::Ready(Some(Err(ended)));
                }
            }
        }
    }
}

impl Drop for TopicStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Acknowledges through the consumer its message came from.
struct Acker {
    target: Target,
    member: Arc<Member>,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("topic", &self.target.topic)
            .field("message", &format_id(&self.target.id))
            .finish()
    }
}

impl Acknowledge for Acker {
    fn ack(self: Box<Self>) -> Settlement {
        Settlement::done(self.member.ack(self.target))
    }

    fn nack(self: Box<Self>, delay: Duration) -> Settlement {
        if delay.is_zero() {
            return Settlement::done(self.member.nack(self.target));
        }
        // Pulsar's nack redelivers at once (or after the consumer-wide delay); the message
        // stays unacknowledged here until its own delay is over.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = self.member.nack(self.target) {
                tracing::warn!(error = %e, "a delayed nack did not go out");
            }
        });
        Settlement::done(Ok(()))
    }
}
