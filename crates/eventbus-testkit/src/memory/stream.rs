//! A member's delivery stream and the acknowledgement of what it hands out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use eventbus_core::{
    Acknowledge, Delivery, DeliveryStream, Position, Result, Settlement, Subscription,
};
use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::broker::{Handout, MemoryBroker, Topic};

/// Closes every stream of one subscriber.
#[derive(Debug, Clone, Default)]
pub(crate) struct CloseSignal(Arc<(AtomicBool, Notify)>);

impl CloseSignal {
    pub(crate) fn close(&self) {
        self.0 .0.store(true, Ordering::Release);
        self.0 .1.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0 .0.load(Ordering::Acquire)
    }
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// One member of a group across its topics; leaves the group when dropped.
struct Membership {
    member: u64,
    // Shared with each delivery's acknowledger: no copy of the name per message.
    group: Arc<str>,
    /// Each name is shared with the deliveries of its topic.
    topics: Vec<(Arc<str>, Arc<Topic>)>,
    wake: Arc<Notify>,
    closed: CloseSignal,
    rotate: AtomicUsize,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for (_, topic) in &self.topics {
            topic.leave(&self.group, self.member);
        }
    }
}

pub(crate) fn open(
    broker: &MemoryBroker,
    subscription: Subscription,
    closed: CloseSignal,
) -> Result<DeliveryStream> {
    let member = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
    let wake = Arc::new(Notify::new());
    let mut membership = Membership {
        member,
        group: Arc::from(subscription.group.as_str()),
        topics: Vec::new(),
        wake: Arc::clone(&wake),
        closed,
        rotate: AtomicUsize::new(0),
    };
    for name in &subscription.topics {
        let topic = broker.topic(name);
        topic.join(
            &subscription.group,
            member,
            Arc::clone(&wake),
            subscription.start.as_ref(),
        )?;
        membership.topics.push((Arc::from(name.as_str()), topic));
    }
    let reader = Reader {
        membership: Arc::new(membership),
        taken: Vec::new(),
        ready: VecDeque::new(),
    };
    Ok(Box::pin(MemoryStream::Reading(reader)))
}

/// Messages taken from the broker at once, then handed out one by one.
const TAKE: usize = 32;

/// The state of one delivery stream.
struct Reader {
    membership: Arc<Membership>,
    /// Reused for every take, so that taking does not allocate.
    taken: Vec<Handout>,
    /// Taken and not handed out yet. Dropped with the stream, they are nacked like any
    /// delivery that is dropped.
    ready: VecDeque<Delivery>,
}

/// A delivery stream: hands out what it holds, takes more from the broker, and only when there
/// is nothing to take waits for a wake-up. Written out rather than as an `unfold`, which made
/// and moved a future per delivery.
enum MemoryStream {
    Reading(Reader),
    /// Nothing to take: the reader waits for new messages, an ack, a nack falling due or close.
    Waiting(BoxFuture<'static, Option<Reader>>),
    Closed,
}

impl Stream for MemoryStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut *self, MemoryStream::Closed) {
                MemoryStream::Closed => return Poll::Ready(None),
                MemoryStream::Reading(mut reader) => {
                    if reader.membership.closed.is_closed() {
                        return Poll::Ready(None);
                    }
                    if let Some(delivery) = reader.ready.pop_front() {
                        *self = MemoryStream::Reading(reader);
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                    *self = match reader.take() {
                        Taken::Some => MemoryStream::Reading(reader),
                        Taken::None { wake_at } => {
                            MemoryStream::Waiting(Box::pin(reader.wait(wake_at)))
                        }
                    };
                }
                MemoryStream::Waiting(mut waiting) => match waiting.as_mut().poll(cx) {
                    Poll::Pending => {
                        *self = MemoryStream::Waiting(waiting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(reader)) => *self = MemoryStream::Reading(reader),
                    Poll::Ready(None) => return Poll::Ready(None),
                },
            }
        }
    }
}

/// What one round of taking from the broker gave.
enum Taken {
    Some,
    /// Nothing; a nacked message falls due at `wake_at`, if any.
    None {
        wake_at: Option<Instant>,
    },
}

impl Reader {
    /// Takes what the member's partitions have ready, into `ready`.
    fn take(&mut self) -> Taken {
        let Reader {
            membership: m,
            taken,
            ready,
        } = self;
        // Rotate the starting topic and partition so that no partition starves the others.
        let rotate = m.rotate.fetch_add(1, Ordering::Relaxed);
        let mut wake_at = None;
        let n = m.topics.len();
        for i in 0..n {
            let (name, topic) = &m.topics[(i + rotate) % n];
            if let Some(at) = topic.poll(&m.group, m.member, rotate, TAKE, taken) {
                wake_at = Some(wake_at.map_or(at, |w: Instant| w.min(at)));
            }
            for h in taken.drain(..) {
                ready.push_back(m.delivery(name, topic, h));
            }
            if !ready.is_empty() {
                return Taken::Some;
            }
        }
        Taken::None { wake_at }
    }

    /// Waits until there may be something to take; `None` once the subscriber closes.
    async fn wait(self, wake_at: Option<Instant>) -> Option<Reader> {
        let open = {
            let m = &self.membership;
            let closing = m.closed.0 .1.notified();
            tokio::pin!(closing);
            // Enabled before the flag is read, so that a close in between still wakes it.
            closing.as_mut().enable();
            let timer = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // The wake-up is a permit: one given since the last take is not lost.
            !m.closed.is_closed()
                && tokio::select! {
                    () = m.wake.notified() => true,
                    () = timer => true,
                    () = closing => false,
                }
        };
        open.then_some(self)
    }
}

impl Membership {
    fn delivery(&self, name: &Arc<str>, topic: &Arc<Topic>, h: Handout) -> Delivery {
        let acker = MemoryAck {
            topic: Arc::clone(topic),
            group: Arc::clone(&self.group),
            partition: h.partition,
            offset: h.offset,
            member: self.member,
            settled: false,
        };
        let position = Position::Offset {
            partition: h.partition as i32,
            offset: h.offset as i64,
        };
        Delivery::new(
            Arc::clone(name),
            h.message,
            position,
            h.attempt,
            Box::new(acker),
        )
        .published_at(h.time)
    }
}

#[derive(Debug)]
struct MemoryAck {
    topic: Arc<Topic>,
    group: Arc<str>,
    partition: usize,
    offset: usize,
    member: u64,
    settled: bool,
}

impl MemoryAck {
    fn settle(&mut self, nack: Option<Duration>) -> Result<()> {
        self.settled = true;
        self.topic
            .settle(&self.group, self.partition, self.offset, self.member, nack)
    }
}

impl Acknowledge for MemoryAck {
    fn ack(mut self: Box<Self>) -> Settlement {
        Settlement::done(self.settle(None))
    }

    fn nack(mut self: Box<Self>, delay: Duration) -> Settlement {
        Settlement::done(self.settle(Some(delay)))
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        // An abandoned delivery is redelivered at once, as a broker would after a lost consumer.
        if !self.settled {
            let _ = self.settle(Some(Duration::ZERO));
        }
    }
}
