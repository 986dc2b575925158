//! Signals: the in-process handle of one event type.
//!
//! Receivers connect to a signal; [`Signal::send`] runs them and, when a bus is installed with a
//! route for the event type, publishes the event too. Events that arrive from the bus are
//! dispatched with [`Signal::dispatch`], which never publishes: that is the loop guard.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::consumer::dispatch::{EventRoute, Route};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Envelope, Event};
use crate::routing;
use crate::transport::Position;

/// The error a receiver returns. Anything that converts into it works, `anyhow::Error` included.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something that reacts to an event. Implemented for async closures
/// `Fn(Envelope<E>) -> impl Future<Output = Result<(), impl Into<BoxError>>>`.
#[async_trait]
pub trait Receiver<E>: Send + Sync {
    /// Handles one event; an error makes the consumer retry or dead-letter it.
    async fn receive(&self, envelope: Envelope<E>) -> Result<(), BoxError>;
}

#[async_trait]
impl<E, F, Fut, Er> Receiver<E> for F
where
    E: Send + Sync + 'static,
    F: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), Er>> + Send,
    Er: Into<BoxError>,
{
    async fn receive(&self, envelope: Envelope<E>) -> Result<(), BoxError> {
        (self)(envelope).await.map_err(Into::into)
    }
}

/// Identifies a connected receiver, for [`Signal::disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiverId(u64);

type Receivers<E> = Vec<(ReceiverId, Arc<dyn Receiver<E>>)>;

/// The in-process handle of event type `E`. Get it with `E::signal()`.
pub struct Signal<E> {
    receivers: RwLock<Receivers<E>>,
    next_id: AtomicU64,
}

/// What [`Signal::send`] did.
#[derive(Debug, Default)]
pub struct SendReport {
    /// How many receivers ran.
    pub receivers_run: usize,
    /// The errors receivers returned; one failing receiver does not stop the others.
    pub receiver_errors: Vec<BoxError>,
    /// Where the event was published, one entry per enabled route.
    pub published: Vec<(String, Position)>,
}

impl<E> Signal<E> {
    /// A signal with no receivers. `const`, so it can live in a `static`.
    pub const fn new() -> Self {
        Self {
            receivers: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<E> Default for Signal<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Event> Signal<E> {
    /// Connects a receiver; it runs for every later `send` and every event from the bus.
    pub fn connect(&self, receiver: impl Receiver<E> + 'static) -> ReceiverId {
        let id = ReceiverId(self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut receivers) = self.receivers.write() {
            receivers.push((id, Arc::new(receiver)));
        }
        id
    }

    /// Disconnects a receiver; returns whether it was connected.
    pub fn disconnect(&self, id: ReceiverId) -> bool {
        let Ok(mut receivers) = self.receivers.write() else {
            return false;
        };
        let before = receivers.len();
        receivers.retain(|(r, _)| *r != id);
        receivers.len() != before
    }

    /// How many receivers are connected.
    pub fn receiver_count(&self) -> usize {
        self.receivers.read().map(|r| r.len()).unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<Arc<dyn Receiver<E>>> {
        self.receivers
            .read()
            .map(|r| r.iter().map(|(_, r)| Arc::clone(r)).collect())
            .unwrap_or_default()
    }

    /// Runs every receiver, then publishes the event on every enabled route of the installed bus
    /// (see [`crate::Bus::install_global`]). Receiver errors are collected in the report; a
    /// publishing error is returned.
    pub async fn send(&self, event: E) -> Result<SendReport> {
        let outbox = routing::installed();
        let metadata = match &outbox {
            Some(outbox) => outbox.metadata::<E>(),
            None => routing::default_metadata::<E>(),
        };
        let envelope = Envelope::new(event, metadata);
        let mut report = SendReport::default();
        for receiver in self.snapshot() {
            report.receivers_run += 1;
            if let Err(e) = receiver.receive(envelope.clone()).await {
                tracing::warn!(event_type = E::EVENT_TYPE, error = %e, "receiver failed");
                report.receiver_errors.push(e);
            }
        }
        if let Some(outbox) = outbox {
            report.published = outbox.publish(&envelope).await?;
        }
        Ok(report)
    }

    /// Runs every receiver for an event that came from the bus, without publishing it again.
    /// Fails with the first receiver error after all receivers ran.
    pub async fn dispatch(&self, envelope: Envelope<E>) -> Result<()> {
        self.run_receivers(envelope)
            .await
            .map_err(|(failed, first)| {
                Error::new(ErrorKind::Receiver, format!("{failed} receiver(s) failed"))
                    .with("event_type", E::EVENT_TYPE)
                    .with_source(BoxedSource(first))
            })
    }

    /// Runs every receiver; on failure, how many failed and the first error as it was returned
    /// (so a consumer can read a [`Verdict`](crate::consumer::Verdict) from it).
    pub(crate) async fn run_receivers(
        &self,
        envelope: Envelope<E>,
    ) -> std::result::Result<(), (usize, BoxError)> {
        let mut first_error = None;
        let mut failed = 0usize;
        for receiver in self.snapshot() {
            if let Err(e) = receiver.receive(envelope.clone()).await {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err((failed, e)),
        }
    }
}

impl<E> fmt::Debug for Signal<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.receivers.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Signal").field("receivers", &count).finish()
    }
}

/// Adapts a boxed error to `std::error::Error` so it can be a source.
#[derive(Debug)]
pub(crate) struct BoxedSource(pub(crate) BoxError);

impl fmt::Display for BoxedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BoxedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The registry entry of one event type, submitted to `inventory` by `#[derive(Event)]`, so a
/// consumer can find the signal for an incoming type name.
#[derive(Debug)]
pub struct SignalEntry {
    /// Event type name.
    pub event_type: &'static str,
    route: fn() -> Arc<dyn Route>,
    pub(crate) json: crate::catalog::JsonBridge,
}

impl SignalEntry {
    /// The entry of `E`.
    pub const fn of<E: Event>() -> Self {
        Self {
            event_type: E::EVENT_TYPE,
            route: signal_route::<E>,
            json: crate::catalog::JsonBridge::of::<E>(),
        }
    }

    /// The consumer route that decodes this event type and dispatches it to its signal.
    pub(crate) fn route(&self) -> Arc<dyn Route> {
        (self.route)()
    }
}

fn signal_route<E: Event>() -> Arc<dyn Route> {
    Arc::new(EventRoute::<E>::to_signal())
}

inventory::collect!(SignalEntry);

/// Every event type registered in this binary.
pub fn registered_signals() -> impl Iterator<Item = &'static SignalEntry> {
    inventory::iter::<SignalEntry>.into_iter()
}

/// The registered entry for `event_type`.
pub fn find_signal(event_type: &str) -> Option<&'static SignalEntry> {
    registered_signals().find(|s| s.event_type == event_type)
}
