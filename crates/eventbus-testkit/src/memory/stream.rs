//! A member's delivery stream and the acknowledgement of what it hands out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventbus_core::{Acknowledge, Delivery, DeliveryStream, Position, Result, Subscription};
use tokio::sync::Notify;

use super::broker::{MemoryBroker, Poll, Topic};

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
    group: String,
    topics: Vec<(String, Arc<Topic>)>,
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
        group: subscription.group.clone(),
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
        membership.topics.push((name.clone(), topic));
    }
    let membership = Arc::new(membership);
    Ok(Box::pin(futures::stream::unfold(
        membership,
        |m| async move {
            let delivery = next(&m).await?;
            Some((Ok(delivery), m))
        },
    )))
}

async fn next(m: &Arc<Membership>) -> Option<Delivery> {
    loop {
        let closing = m.closed.0 .1.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if m.closed.is_closed() {
            return None;
        }
        // Rotate the starting topic and partition so that no partition starves the others.
        let rotate = m.rotate.fetch_add(1, Ordering::Relaxed);
        let mut wake_at = None;
        let n = m.topics.len();
        for i in 0..n {
            let (name, topic) = &m.topics[(i + rotate) % n];
            match topic.poll(&m.group, m.member, rotate) {
                Poll::Ready(h) => {
                    let acker = MemoryAck {
                        topic: Arc::clone(topic),
                        group: m.group.clone(),
                        partition: h.partition,
                        offset: h.offset,
                        member: m.member,
                        settled: false,
                    };
                    let position = Position::Offset {
                        partition: h.partition as i32,
                        offset: h.offset as i64,
                    };
                    return Some(
                        Delivery::new(
                            name.clone(),
                            h.message,
                            position,
                            h.attempt,
                            Box::new(acker),
                        )
                        .published_at(h.time),
                    );
                }
                Poll::Wait(Some(at)) => {
                    wake_at = Some(wake_at.map_or(at, |w: tokio::time::Instant| w.min(at)))
                }
                Poll::Wait(None) => {}
            }
        }
        let timer = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = m.wake.notified() => {}
            () = timer => {}
            () = closing => return None,
        }
    }
}

#[derive(Debug)]
struct MemoryAck {
    topic: Arc<Topic>,
    group: String,
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

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.settle(None)
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<()> {
        self.settle(Some(delay))
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
