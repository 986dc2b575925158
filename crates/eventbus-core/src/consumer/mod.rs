//! The consumer: subscribes, decodes, finds the receivers, and applies every delivery policy
//! (ack after success, retries with backoff, dead letters, the consecutive-errors limit, bounded
//! concurrency that keeps per-key order, graceful shutdown). Backends hold none of this.

pub mod dead_letter;
pub(crate) mod dispatch;
pub mod retry;
mod runner;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::producer::Producer;
use crate::serializer::Serializer;
use crate::signal::{registered_signals, Receiver};
use crate::transport::{StartPosition, Subscriber, Transport};

use self::dispatch::{EventRoute, Route};
pub use self::retry::RetryPolicy;

/// Policy knobs of the consumer runner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerSettings {
    /// Retries of failing receivers.
    pub retry: RetryPolicy,
    /// After this many failures in a row the consumer stops with an error (0: never).
    pub consecutive_error_limit: u32,
    /// Events handled at once; events with the same key are still handled one after another.
    pub concurrency: usize,
    /// How long shutdown waits for in-flight events.
    pub shutdown_timeout: Duration,
    /// Dead-letter topic template; `{topic}` stands for the full source topic.
    pub dead_letter_topic: String,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            consecutive_error_limit: 100,
            concurrency: 8,
            shutdown_timeout: Duration::from_secs(30),
            dead_letter_topic: "{topic}.dlq".to_owned(),
        }
    }
}

/// A consumer being configured. Build it with [`crate::Bus::consumer`], add receivers, then
/// [`run`](Consumer::run) it or [`start`](Consumer::start) it in the background.
pub struct Consumer {
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) producer: Producer,
    pub(crate) serializer: Arc<dyn Serializer>,
    pub(crate) topics: Vec<String>,
    pub(crate) group: String,
    pub(crate) name: String,
    /// Whether `name` was chosen by the application (stable across restarts).
    pub(crate) named: bool,
    pub(crate) pending_per_member: bool,
    pub(crate) start: Option<StartPosition>,
    pub(crate) routes: HashMap<String, Arc<dyn Route>>,
    pub(crate) settings: ConsumerSettings,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.routes.keys().collect();
        types.sort();
        f.debug_struct("Consumer")
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("name", &self.name)
            .field("start", &self.start)
            .field("event_types", &types)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(
        transport: &Transport,
        producer: Producer,
        serializer: Arc<dyn Serializer>,
        topic: &str,
        group: &str,
        settings: ConsumerSettings,
    ) -> Self {
        Self {
            subscriber: Arc::clone(&transport.subscriber),
            pending_per_member: transport.guarantees.pending_per_member,
            named: false,
            producer,
            serializer,
            topics: vec![topic.to_owned()],
            group: group.to_owned(),
            name: format!(
                "{}-{}",
                crate::metadata::host_name(),
                uuid::Uuid::new_v4().simple()
            ),
            start: None,
            routes: HashMap::new(),
            settings,
        }
    }

    /// Also consumes `topic` (without prefix).
    #[must_use]
    pub fn topic(mut self, topic: &str) -> Self {
        self.topics.push(topic.to_owned());
        self
    }

    /// Names this member of the group (default: host name and a random suffix). Give a name
    /// that stays the same across restarts (`orders-worker-1`) where the backend keeps
    /// unacknowledged deliveries per member (Redis): the restarted member then takes them back at
    /// once instead of leaving them for others to claim after the claim idle time.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self.named = true;
        self
    }

    /// Moves the group to `start` instead of resuming where it was.
    #[must_use]
    pub fn start_at(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// Replaces the policy settings.
    #[must_use]
    pub fn settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Changes the policy settings in place.
    #[must_use]
    pub fn configure(mut self, f: impl FnOnce(&mut ConsumerSettings)) -> Self {
        f(&mut self.settings);
        self
    }

    /// Handles events of type `E` with `receiver` (instead of `E`'s signal).
    #[must_use]
    pub fn handle<E: Event>(mut self, receiver: impl Receiver<E> + 'static) -> Self {
        let route = EventRoute::<E>::to_receiver(Arc::new(receiver));
        self.routes
            .insert(E::EVENT_TYPE.to_owned(), Arc::new(route));
        self
    }

    /// Dispatches events of type `E` to the receivers connected to `E::signal()`.
    #[must_use]
    pub fn signal<E: Event>(mut self) -> Self {
        self.routes.insert(
            E::EVENT_TYPE.to_owned(),
            Arc::new(EventRoute::<E>::to_signal()),
        );
        self
    }

    /// Dispatches every event type registered in this binary to its signal (the default when
    /// nothing else is configured, as in Open edX). Explicit routes keep precedence.
    #[must_use]
    pub fn all_signals(mut self) -> Self {
        for entry in registered_signals() {
            self.routes
                .entry(entry.event_type.to_owned())
                .or_insert_with(|| entry.route());
        }
        self
    }

    /// Runs until the subscription ends or too many consecutive errors stop it.
    pub async fn run(self) -> Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `shutdown` completes, then drains in-flight events within the shutdown timeout.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let subscribed = runner::subscribe(self.with_default_routes()).await?;
        runner::run(subscribed, shutdown).await
    }

    /// Subscribes, then runs on a background task; the handle shuts it down. Subscription
    /// errors are returned here; once this returns, events published are seen by the consumer
    /// (when it starts at `Latest`, say).
    pub async fn start(self) -> Result<ConsumerHandle> {
        if self.pending_per_member && !self.named {
            tracing::warn!(
                group = %self.group,
                consumer = %self.name,
                "this consumer has no stable name: after a restart its unacknowledged deliveries wait for the claim idle time (EVENT_BUS_REDIS_CLAIM_IDLE_MS) before another member takes them; name it with Consumer::name"
            );
        }
        let subscribed = runner::subscribe(self.with_default_routes()).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(runner::run(subscribed, async move {
            let _ = rx.await;
        }));
        Ok(ConsumerHandle {
            stop: Some(tx),
            task: Some(task),
        })
    }

    fn with_default_routes(self) -> Self {
        if self.routes.is_empty() {
            self.all_signals()
        } else {
            self
        }
    }
}

/// A consumer running on a background task. Dropping the handle stops the consumer, so keep it
/// for as long as the consumer should run.
#[derive(Debug)]
#[must_use = "dropping the handle stops the consumer; keep it, and call `shutdown` to stop"]
pub struct ConsumerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl ConsumerHandle {
    /// Whether the consumer has stopped (on its own, by error, or by shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops fetching, finishes in-flight events and returns how the consumer ended.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits until the consumer ends by itself.
    pub async fn join(&mut self) -> Result<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await.map_err(|e| {
            Error::new(
                ErrorKind::Receiver,
                "the consumer task panicked or was cancelled",
            )
            .with_source(e)
        })?
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        // A dropped handle stops its consumer, like dropping a stream ends it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
