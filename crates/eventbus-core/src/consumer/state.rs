//! The state of one running consumer, shared by its runner, its layers and the health check.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::Error;
use crate::producer::Producer;

/// How long after its last fetch error a consumer counts as reconnecting. Backends report a
/// fetch error on every failed reconnect, at most 5 s apart (see
/// [`reconnect_delay`](crate::transport::reconnect_delay)), so a quiet window longer than that
/// means the connection is back.
pub(crate) const RECONNECTING_WINDOW: Duration = Duration::from_secs(6);

/// One running consumer as its layers and the health check see it.
#[derive(Debug)]
pub struct ConsumerState {
    group: Arc<str>,
    name: String,
    topics: Vec<String>,
    backend: &'static str,
    producer: Producer,
    error_limit: u32,
    consecutive_errors: AtomicU32,
    in_flight: AtomicI64,
    subscribed: AtomicBool,
    stopped: Mutex<Option<String>>,
    retired: AtomicBool,
    last_fetch_error: Mutex<Option<(Instant, String)>>,
    fatal: watch::Sender<Option<String>>,
}

impl ConsumerState {
    pub(crate) fn new(
        group: &str,
        name: &str,
        topics: Vec<String>,
        backend: &'static str,
        producer: Producer,
        error_limit: u32,
    ) -> Self {
        Self {
            group: Arc::from(group),
            name: name.to_owned(),
            topics,
            backend,
            producer,
            error_limit,
            consecutive_errors: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            subscribed: AtomicBool::new(false),
            stopped: Mutex::new(None),
            retired: AtomicBool::new(false),
            last_fetch_error: Mutex::new(None),
            fatal: watch::channel(None).0,
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn group_arc(&self) -> Arc<str> {
        Arc::clone(&self.group)
    }

    /// This member's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full topic names consumed.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The backend's name (`memory`, `redis`, `kafka`, `pulsar`), the `messaging.system`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The producer of the consumer's bus (the dead-letter layer publishes with it).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Deliveries being handled right now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a success: the run of consecutive failures ends.
    pub fn record_success(&self) {
        self.consecutive_errors.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; at the configured limit the consumer stops with an error naming it.
    pub fn record_failure(&self, error: &Error) {
        let n = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if self.error_limit > 0 && n >= self.error_limit {
            self.fatal.send_replace(Some(error.to_string()));
        }
    }

    /// Failures in a row so far.
    pub fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn error_limit(&self) -> u32 {
        self.error_limit
    }

    pub(crate) fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    pub(crate) fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Release);
    }

    /// The consumer stopped on an error: not ready until it is started again.
    pub(crate) fn set_stopped(&self, why: String) {
        if let Ok(mut stopped) = self.stopped.lock() {
            *stopped = Some(why);
        }
    }

    /// The consumer was shut down on purpose: the health check forgets it.
    pub(crate) fn set_retired(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn fetch_failed(&self, error: &Error) {
        if let Ok(mut last) = self.last_fetch_error.lock() {
            *last = Some((Instant::now(), error.to_string()));
        }
    }

    /// Why this consumer is not ready, or `None` when it is: subscribed, running, and no fetch
    /// error within the reconnect window.
    pub fn not_ready_because(&self) -> Option<String> {
        if let Some(why) = self.stopped.lock().ok().and_then(|s| s.clone()) {
            return Some(format!("stopped: {why}"));
        }
        if !self.subscribed.load(Ordering::Acquire) {
            return Some("not subscribed yet".to_owned());
        }
        let last = self.last_fetch_error.lock().ok()?.clone();
        match last {
            Some((at, error)) if at.elapsed() < RECONNECTING_WINDOW => {
                Some(format!("reconnecting: {error}"))
            }
            _ => None,
        }
    }
}
