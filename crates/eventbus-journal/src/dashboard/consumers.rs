//! Consumers the dashboard can start and stop: registered by name with how to build them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use eventbus::{Bus, Consumer, ConsumerHandle};
use tokio::sync::Mutex;

type Build = Arc<dyn Fn(&Bus) -> Consumer + Send + Sync>;

/// One named consumer.
pub(crate) struct Managed {
    build: Build,
    group: String,
    topics: Vec<String>,
    handle: Mutex<Option<ConsumerHandle>>,
    /// Why it stopped by itself, when it did.
    stopped: Mutex<Option<String>>,
}

impl fmt::Debug for Managed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managed")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// What the consumers page shows of one.
#[derive(Debug)]
pub(crate) struct Status {
    pub(crate) name: String,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) running: bool,
    pub(crate) in_flight: i64,
    pub(crate) problem: Option<String>,
}

/// The registered consumers.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    by_name: BTreeMap<String, Managed>,
}

impl Consumers {
    pub(crate) fn add(&mut self, name: String, bus: &Bus, build: Build) {
        // Built once to learn its group and topics; started on demand.
        let probe = build(bus);
        let settings = bus.producer().settings();
        self.by_name.insert(
            name,
            Managed {
                group: probe.group().to_owned(),
                topics: probe
                    .topics()
                    .iter()
                    .map(|t| settings.full_topic(t))
                    .collect(),
                build,
                handle: Mutex::new(None),
                stopped: Mutex::new(None),
            },
        );
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub(crate) async fn start(&self, name: &str, bus: &Bus) -> Result<(), String> {
        let managed = self.get(name)?;
        let mut handle = managed.handle.lock().await;
        if handle.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let started = (managed.build)(bus)
            .start()
            .await
            .map_err(|e| format!("{name} did not start: {e}"))?;
        *handle = Some(started);
        *managed.stopped.lock().await = None;
        Ok(())
    }

    pub(crate) async fn stop(&self, name: &str) -> Result<(), String> {
        let managed = self.get(name)?;
        let handle = managed.handle.lock().await.take();
        if let Some(handle) = handle {
            handle
                .shutdown()
                .await
                .map_err(|e| format!("{name} stopped with an error: {e}"))?;
        }
        Ok(())
    }

    /// Every consumer's state; one that stopped by itself has its reason kept.
    pub(crate) async fn statuses(&self) -> Vec<(Status, String)> {
        let mut out = Vec::new();
        for (name, managed) in &self.by_name {
            let mut guard = managed.handle.lock().await;
            if guard.as_ref().is_some_and(ConsumerHandle::is_finished) {
                if let Some(mut finished) = guard.take() {
                    let why = match finished.join().await {
                        Ok(()) => "stopped".to_owned(),
                        Err(e) => format!("stopped on an error: {e}"),
                    };
                    *managed.stopped.lock().await = Some(why);
                }
            }
            let running = guard.is_some();
            let (in_flight, not_ready) = guard.as_ref().map_or((0, None), |h| {
                (h.state().in_flight(), h.state().not_ready_because())
            });
            let problem = match not_ready {
                Some(why) => Some(why),
                None => managed.stopped.lock().await.clone(),
            };
            out.push((
                Status {
                    name: name.clone(),
                    group: managed.group.clone(),
                    topics: managed.topics.clone(),
                    running,
                    in_flight,
                    problem,
                },
                managed.group.clone(),
            ));
        }
        out
    }

    fn get(&self, name: &str) -> Result<&Managed, String> {
        self.by_name
            .get(name)
            .ok_or_else(|| format!("no consumer is registered as `{name}`"))
    }
}
