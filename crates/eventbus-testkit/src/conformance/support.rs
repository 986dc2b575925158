//! What every case needs: fresh connections, unique names, named timeouts, and checks that say
//! which case failed and why.

use std::time::Duration;

use eventbus_core::{
    Bus, BusConfig, Delivery, DeliveryStream, Error, Guarantees, Message, Position, SerializerKind,
    StartPosition, Subscription, Transport,
};
use futures::StreamExt;

use super::Target;

/// How long to wait for a message that must arrive.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to watch for a message that must not arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(700);

/// Why a case did not pass.
#[derive(Debug)]
pub enum CaseError {
    /// A check failed.
    Fail(String),
    /// The case does not apply to this backend.
    Skip(String),
}

impl From<Error> for CaseError {
    fn from(e: Error) -> Self {
        CaseError::Fail(e.to_string())
    }
}

/// Fails the case with `why` unless `ok`.
pub fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), CaseError> {
    if ok {
        Ok(())
    } else {
        Err(CaseError::Fail(why()))
    }
}

/// Skips the case unless the backend declares `declared`.
pub fn require(declared: bool, guarantee: &str) -> Result<(), CaseError> {
    if declared {
        Ok(())
    } else {
        Err(CaseError::Skip(format!(
            "the backend does not declare `{guarantee}`"
        )))
    }
}

/// The context of one case run.
#[derive(Debug)]
pub struct Ctx {
    target: Target,
    case: &'static str,
    run: String,
    transport: Transport,
}

impl Ctx {
    pub(super) async fn new(target: Target, case: &'static str) -> eventbus_core::Result<Self> {
        let transport = target.connect().await?;
        Ok(Self {
            target,
            case,
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            transport,
        })
    }

    /// What the backend declares.
    pub fn guarantees(&self) -> Guarantees {
        self.transport.guarantees
    }

    /// The case's first connection.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A new connection to the same broker.
    pub async fn connect(&self) -> Result<Transport, CaseError> {
        Ok(self.target.connect().await?)
    }

    /// Restarts the broker, or skips the case when the target cannot.
    pub async fn restart_broker(&self) -> Result<(), CaseError> {
        match self.target.restart().await {
            None => Err(CaseError::Skip(
                "the target cannot restart its broker".into(),
            )),
            Some(result) => Ok(result?),
        }
    }

    /// A topic name unique to this case run.
    pub fn topic(&self, label: &str) -> String {
        format!("conf-{}-{label}-{}", self.case.replace('_', "-"), self.run)
    }

    /// A group name unique to this case run.
    pub fn group(&self, label: &str) -> String {
        format!("group-{label}-{}", self.run)
    }

    /// A message with a body, an optional key and a `seq` header.
    pub fn message(&self, key: Option<&str>, body: &str) -> Message {
        let mut message = Message {
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            payload: body.as_bytes().to_vec().into(),
            headers: Default::default(),
        };
        message.headers.insert("seq", body);
        message
    }

    /// Publishes on the case's connection.
    pub async fn publish(
        &self,
        topic: &str,
        batch: Vec<Message>,
    ) -> Result<Vec<Position>, CaseError> {
        let n = batch.len();
        let positions = self.transport.publisher.publish(topic, batch).await?;
        check(positions.len() == n, || {
            format!(
                "publish of {n} messages returned {} positions",
                positions.len()
            )
        })?;
        Ok(positions)
    }

    /// Publishes bodies one message each, with `key`.
    pub async fn publish_bodies(
        &self,
        topic: &str,
        key: Option<&str>,
        bodies: impl IntoIterator<Item = String>,
    ) -> Result<(), CaseError> {
        let batch = bodies.into_iter().map(|b| self.message(key, &b)).collect();
        self.publish(topic, batch).await.map(drop)
    }

    /// Subscribes on `transport` to `topics` in `group`.
    pub async fn subscribe_on(
        &self,
        transport: &Transport,
        topics: &[&str],
        group: &str,
        start: Option<StartPosition>,
    ) -> Result<DeliveryStream, CaseError> {
        let subscription = Subscription {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            group: group.to_owned(),
            consumer: format!("{group}-{}", uuid::Uuid::new_v4().simple()),
            start,
            acks: Default::default(),
        };
        Ok(transport.subscriber.subscribe(subscription).await?)
    }

    /// Subscribes on the case's connection.
    pub async fn subscribe(
        &self,
        topics: &[&str],
        group: &str,
        start: Option<StartPosition>,
    ) -> Result<DeliveryStream, CaseError> {
        self.subscribe_on(&self.transport, topics, group, start)
            .await
    }

    /// A bus over a new connection with small, fast consumer settings.
    pub async fn bus(&self) -> Result<Bus, CaseError> {
        let transport = self.connect().await?;
        let config = BusConfig::new().consumer(|c| {
            c.retry.base = Duration::from_millis(20);
            c.retry.cap = Duration::from_millis(100);
            c.shutdown_timeout = Duration::from_secs(10);
        });
        Ok(Bus::with_transport(transport, SerializerKind::Avro, config))
    }
}

/// The body of a delivery as text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.payload).into_owned()
}

/// The next delivery within `timeout`. A temporary error on the stream is a fetch failure the
/// backend reports and recovers from (a broker restart, say): it is passed over, with a line on
/// stderr. A permanent error, the end of the stream or the timeout is the `Err` text.
pub async fn next_within(
    stream: &mut DeliveryStream,
    timeout: Duration,
) -> Result<Delivery, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(format!("nothing arrived within {timeout:?}")),
            Ok(None) => return Err("the stream ended".into()),
            Ok(Some(Err(e))) if e.is_temporary() => {
                eprintln!("passing over a temporary stream error: {e}");
            }
            Ok(Some(Err(e))) => return Err(format!("the stream failed: {e}")),
            Ok(Some(Ok(d))) => return Ok(d),
        }
    }
}

/// The next delivery, failing after [`RECEIVE_TIMEOUT`].
pub async fn next(stream: &mut DeliveryStream, waiting_for: &str) -> Result<Delivery, CaseError> {
    next_within(stream, RECEIVE_TIMEOUT)
        .await
        .map_err(|why| CaseError::Fail(format!("{why} while waiting for {waiting_for}")))
}

/// Receives and acks `n` deliveries; returns their bodies in arrival order.
pub async fn take_acked(
    stream: &mut DeliveryStream,
    n: usize,
    what: &str,
) -> Result<Vec<String>, CaseError> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = next(stream, &format!("{what} ({} of {n})", out.len() + 1)).await?;
        let text = body(&d);
        match d.ack().await {
            Ok(()) => out.push(text),
            // Reassigned during a rebalance: the message comes again, and counts then.
            Err(e) if e.kind() == eventbus_core::ErrorKind::Reassigned => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Fails if anything arrives within [`QUIET_PERIOD`].
pub async fn quiet(stream: &mut DeliveryStream, why: &str) -> Result<(), CaseError> {
    match tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
        Err(_) | Ok(None) => Ok(()),
        Ok(Some(Ok(d))) => Err(CaseError::Fail(format!(
            "unexpected message `{}` ({why})",
            body(&d)
        ))),
        Ok(Some(Err(e))) if e.is_temporary() => Ok(()),
        Ok(Some(Err(e))) => Err(CaseError::Fail(format!("stream error ({why}): {e}"))),
    }
}

/// `prefix-0` … `prefix-(n-1)`.
pub fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
