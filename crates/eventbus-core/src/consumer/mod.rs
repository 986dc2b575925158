//! The consumer: subscribes, runs each delivery through its layer stack to the receivers, and
//! settles it with the broker by the outcome. The delivery policies (retries with backoff, dead
//! letters, the consecutive-errors limit, the handler timeout, tracing, metrics) are layers in a
//! default [`ConsumerStack`]; the runner keeps bounded concurrency with per-key order and
//! graceful shutdown. Backends hold none of this.

pub mod batch;
pub(crate) mod context;
pub mod dead_letter;
mod defaults;
pub(crate) mod dispatch;
pub(crate) mod layer;
mod limits;
pub mod retry;
mod runner;
mod schedule;
mod state;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::defaults::DefaultLayers;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::health::Health;
use crate::producer::Producer;
use crate::serializer::Serializer;
use crate::signal::{registered_signals, Receiver};
use crate::transport::ack_batch::AckBatching;
use crate::transport::{StartPosition, Subscriber, Transport};

use self::batch::BatchRoute;
pub use self::batch::{BatchError, BatchReceiver};
pub use self::context::{Context, DeliveryInfo};
pub use self::dead_letter::{DeadLetterLayer, Reason};
use self::dispatch::{Dispatcher, EventRoute, RawDispatcher, Route};
pub use self::dispatch::{RawReceiver, UnknownEventTypes};
use self::layer::Handler;
pub use self::layer::{ConsumerStack, Layer, Named, Next, Outcome, Stack, Verdict};
pub use self::limits::{ErrorLimitLayer, TimeoutLayer};
pub use self::retry::{RetryLayer, RetryPolicy};
pub use self::state::ConsumerState;

/// Policy knobs of the consumer runner and its default layers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerSettings {
    /// Retries of failing receivers.
    pub retry: RetryPolicy,
    /// After this many failures in a row the consumer stops with an error (0: never). Events
    /// whose receivers kept failing and failed fetches count; an ack or nack the broker did
    /// not take (the event comes again) does not.
    pub consecutive_error_limit: u32,
    /// Events handled at once; events with the same key are still handled one after another.
    /// They are futures on the consumer's own task, not threads: a receiver with heavy CPU work
    /// hands it to `tokio::task::spawn_blocking`.
    pub concurrency: usize,
    /// How long shutdown waits for in-flight events.
    pub shutdown_timeout: Duration,
    /// Dead-letter topic template; `{topic}` stands for the full source topic.
    pub dead_letter_topic: String,
    /// Longest time one attempt of the receivers may take; a slower one counts as failed and is
    /// retried (`None`: no limit).
    pub handler_timeout: Option<Duration>,
    /// What happens to event types no receiver handles.
    pub unknown_event_types: UnknownEventTypes,
    /// How often the group's lag is read from the broker for the `eventbus_consumer_lag` gauge
    /// (`None`: never).
    pub lag_interval: Option<Duration>,
    /// How acknowledgements are batched into broker commands, where the backend can.
    pub acks: AckBatching,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            consecutive_error_limit: 100,
            concurrency: 8,
            shutdown_timeout: Duration::from_secs(30),
            dead_letter_topic: "{topic}.dlq".to_owned(),
            handler_timeout: None,
            unknown_event_types: UnknownEventTypes::DeadLetter,
            lag_interval: Some(Duration::from_secs(15)),
            acks: AckBatching::default(),
        }
    }
}

impl ConsumerStack {
    /// The default consumer stack for `settings`, outermost first: `tracing`, `metrics`,
    /// `error-limit`, `dead-letter`, `retry`, `timeout`.
    pub fn defaults(settings: &ConsumerSettings) -> Self {
        DefaultLayers::new(settings).stack(settings)
    }
}

type StackEdit = Box<dyn FnOnce(&mut ConsumerStack) -> Result<()> + Send>;

/// A consumer being configured. Build it with [`crate::Bus::consumer`], add receivers (or one
/// raw receiver) and layers, then [`run`](Consumer::run) it or [`start`](Consumer::start) it in
/// the background.
pub struct Consumer {
    subscriber: Arc<dyn Subscriber>,
    backend: &'static str,
    health: Health,
    producer: Producer,
    serializer: Arc<dyn Serializer>,
    topics: Vec<String>,
    group: String,
    name: String,
    /// Whether `name` was chosen by the application (stable across restarts).
    named: bool,
    pending_per_member: bool,
    start: Option<StartPosition>,
    routes: crate::FastMap<String, Arc<dyn Route>>,
    raw: Option<Arc<dyn RawReceiver>>,
    /// Event types given a route twice: an error at start.
    duplicates: Vec<String>,
    edits: Vec<StackEdit>,
    settings: ConsumerSettings,
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
            .field("raw", &self.raw.is_some())
            .field("layer_edits", &self.edits.len())
            .field("settings", &self.settings)
            .finish()
    }
}

/// A consumer taken apart for the runner.
pub(crate) struct Parts {
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) health: Health,
    pub(crate) serializer: Arc<dyn Serializer>,
    pub(crate) state: Arc<ConsumerState>,
    pub(crate) layers: Arc<[Arc<dyn Layer>]>,
    pub(crate) layer_names: Vec<String>,
    pub(crate) handler: Handler,
    pub(crate) start: Option<StartPosition>,
    pub(crate) settings: ConsumerSettings,
}

impl Consumer {
    pub(crate) fn new(
        transport: &Transport,
        health: Health,
        producer: Producer,
        serializer: Arc<dyn Serializer>,
        topic: &str,
        group: &str,
        settings: ConsumerSettings,
    ) -> Self {
        Self {
            subscriber: Arc::clone(&transport.subscriber),
            backend: transport.backend,
            health,
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
            routes: crate::FastMap::default(),
            raw: None,
            duplicates: Vec::new(),
            edits: Vec::new(),
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

    /// Adds `layer` innermost, inside the default policies: it runs once per attempt, just
    /// before the receivers. See [`Consumer::layers`] to place it elsewhere.
    #[must_use]
    pub fn layer(self, layer: impl Layer + 'static) -> Self {
        let layer: Arc<dyn Layer> = Arc::new(layer);
        self.layers(move |stack| {
            stack.push(layer);
            Ok(())
        })
    }

    /// Edits the layer stack: reorder, replace, remove or insert layers by name. Edits apply in
    /// order to [`ConsumerStack::defaults`] of the final settings when the consumer starts; an
    /// edit's error (a name not in the stack) is returned by `start`/`run`.
    ///
    /// While the five default policy layers (`tracing` to `retry`) stay next to each other in
    /// their order, whatever is added around them, they run as one future: one allocation per
    /// event instead of five. Removing, replacing or putting a layer between them costs those
    /// allocations back, about 1,200 instructions per event (BENCHMARKS.md), and changes nothing
    /// else.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use eventbus_core::consumer::{ConsumerStack, TimeoutLayer};
    /// # fn demo(consumer: eventbus_core::Consumer) -> eventbus_core::Consumer {
    /// consumer.layers(|stack: &mut ConsumerStack| {
    ///     stack.remove("metrics");
    ///     stack.replace("timeout", Arc::new(TimeoutLayer::new(Some(std::time::Duration::from_secs(2)))))?;
    ///     Ok(())
    /// })
    /// # }
    /// ```
    #[must_use]
    pub fn layers(
        mut self,
        edit: impl FnOnce(&mut ConsumerStack) -> Result<()> + Send + 'static,
    ) -> Self {
        self.edits.push(Box::new(edit));
        self
    }

    fn route(&mut self, event_type: &str, route: Arc<dyn Route>) {
        if self.routes.insert(event_type.to_owned(), route).is_some() {
            self.duplicates.push(event_type.to_owned());
        }
    }

    /// The event types this consumer has routes for, sorted; empty when it takes every
    /// registered type (no `handle` or `signal` given) or raw messages. Tools that describe a
    /// consumer (AsyncAPI documents) read it.
    pub fn event_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }

    /// The topics it consumes, without prefix.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Its consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Handles events of type `E` with `receiver` (instead of `E`'s signal). One route per
    /// type: a second `handle` or `signal` for the same type makes `start`/`run` fail.
    #[must_use]
    pub fn handle<E: Event>(mut self, receiver: impl Receiver<E> + 'static) -> Self {
        let route = EventRoute::<E>::to_receiver(Arc::new(receiver));
        self.route(E::EVENT_TYPE, Arc::new(route));
        self
    }

    /// Handles events of type `E` in batches: `receiver` gets up to `max_size` events at a time
    /// (at least 1), gathered for at most `max_wait` after the first. Every event still passes
    /// the layer stack on its own; a [`BatchError`] retries or dead-letters the events it names
    /// (or the whole batch), the others are acknowledged. A batch holds at most one event per
    /// key, so order per key is kept. Since a batch gathers events in flight together, the
    /// consumer's concurrency is raised to `max_size` when it is lower. One route per type, as
    /// with [`Consumer::handle`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use eventbus_core::{Envelope, Event};
    /// # use eventbus_core::consumer::BatchError;
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// # #[event(type = "org.example.batch.row.v1")]
    /// # struct Row { id: i64 }
    /// # fn demo(consumer: eventbus_core::Consumer) -> eventbus_core::Consumer {
    /// consumer.handle_batch(500, Duration::from_millis(20), |rows: Vec<Envelope<Row>>| async move {
    ///     let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    ///     // write all rows in one statement; `?` on its error retries the whole batch
    ///     # let _ = ids;
    ///     Ok::<_, BatchError>(())
    /// })
    /// # }
    /// ```
    #[must_use]
    pub fn handle_batch<E: Event>(
        mut self,
        max_size: usize,
        max_wait: Duration,
        receiver: impl BatchReceiver<E> + 'static,
    ) -> Self {
        let route = BatchRoute::<E>::new(Arc::new(receiver), max_size, max_wait);
        self.route(E::EVENT_TYPE, Arc::new(route));
        self
    }

    /// Dispatches events of type `E` to the receivers connected to `E::signal()`.
    #[must_use]
    pub fn signal<E: Event>(mut self) -> Self {
        self.route(E::EVENT_TYPE, Arc::new(EventRoute::<E>::to_signal()));
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

    /// Makes this a raw consumer: every message goes to `receiver` as it arrived (bytes,
    /// JSON, anything), with the same layers and policies as typed events. A raw consumer has no
    /// typed routes.
    #[must_use]
    pub fn handle_raw(mut self, receiver: impl RawReceiver + 'static) -> Self {
        if self.raw.is_some() {
            self.duplicates.push("raw receiver".to_owned());
        }
        self.raw = Some(Arc::new(receiver));
        self
    }

    /// Runs until the subscription ends or too many consecutive errors stop it.
    pub async fn run(self) -> Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `shutdown` completes, then drains in-flight events within the shutdown timeout.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let subscribed = runner::subscribe(self).await?;
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
        let subscribed = runner::subscribe(self).await?;
        let state = Arc::clone(subscribed.state());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(runner::run(subscribed, async move {
            let _ = rx.await;
        }));
        Ok(ConsumerHandle {
            stop: Some(tx),
            task: Some(task),
            state,
        })
    }

    /// Checks the configuration and builds what the runner needs.
    pub(crate) fn into_parts(self) -> Result<Parts> {
        if let Some(event_type) = self.duplicates.first() {
            return Err(Error::new(
                ErrorKind::Config,
                "a consumer has one route per event type, but this type was given two (handle or signal called twice); keep one",
            )
            .with("event_type", event_type)
            .with("group", &self.group));
        }
        // A batch gathers only events that are in flight together.
        let batch = self
            .routes
            .values()
            .map(|r| r.batch_size())
            .max()
            .unwrap_or(1);
        let handler = match self.raw {
            Some(_) if !self.routes.is_empty() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "a raw consumer takes every message, so it cannot also have typed routes; use two consumers",
                )
                .with("group", &self.group));
            }
            Some(receiver) => Handler::Raw(RawDispatcher { receiver }),
            None => {
                let mut routes = self.routes;
                if routes.is_empty() {
                    for entry in registered_signals() {
                        routes.insert(entry.event_type.to_owned(), entry.route());
                    }
                }
                Handler::Typed(Dispatcher {
                    routes,
                    unknown: self.settings.unknown_event_types,
                    schema_ids: self.producer.schema_ids().cloned(),
                })
            }
        };
        let mut settings = self.settings;
        if settings.concurrency < batch {
            tracing::debug!(group = %self.group, from = settings.concurrency, to = batch, "concurrency raised to the largest batch size");
            settings.concurrency = batch;
        }
        let defaults = DefaultLayers::new(&settings);
        let mut stack = defaults.stack(&settings);
        for edit in self.edits {
            edit(&mut stack).map_err(|e| e.with("group", &self.group))?;
        }
        let layer_names = stack.names().into_iter().map(str::to_owned).collect();
        let topics = self
            .topics
            .iter()
            .map(|t| self.producer.settings().full_topic(t))
            .collect();
        let state = Arc::new(ConsumerState::new(
            &self.group,
            &self.name,
            topics,
            self.backend,
            self.producer,
            settings.consecutive_error_limit,
        ));
        Ok(Parts {
            subscriber: self.subscriber,
            health: self.health,
            serializer: self.serializer,
            state,
            layers: defaults
                .fuse(
                    stack
                        .into_layers()
                        .iter()
                        .filter(|layer| !layer.passes_through())
                        .cloned()
                        .collect(),
                )
                .into(),
            layer_names,
            handler,
            start: self.start,
            settings,
        })
    }
}

/// A consumer running on a background task. Dropping the handle stops the consumer, so keep it
/// for as long as the consumer should run.
#[derive(Debug)]
#[must_use = "dropping the handle stops the consumer; keep it, and call `shutdown` to stop"]
pub struct ConsumerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
    state: Arc<ConsumerState>,
}

impl ConsumerHandle {
    /// The running consumer's state: group, name, in-flight count, readiness.
    pub fn state(&self) -> &Arc<ConsumerState> {
        &self.state
    }

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
