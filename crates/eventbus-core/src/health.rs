//! Liveness and readiness of a bus: the broker answers, and every running consumer is
//! subscribed and not reconnecting. Served over HTTP by the facade's `telemetry` feature.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::consumer::ConsumerState;
use crate::transport::Subscriber;

/// How long the broker check may take before the bus counts as not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The health of one bus and the consumers started on it. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    backend: &'static str,
    subscriber: Arc<dyn Subscriber>,
    consumers: Mutex<Vec<Arc<ConsumerState>>>,
}

/// One line of a readiness report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `broker` or `consumer <group>/<name>`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, or `ok`.
    pub detail: String,
}

/// What [`Health::ready`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// The checks, broker first.
    pub checks: Vec<Check>,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", if self.ready { "ready" } else { "not ready" })?;
        for check in &self.checks {
            let mark = if check.ok { "ok" } else { "FAIL" };
            writeln!(f, "{mark} {}: {}", check.name, check.detail)?;
        }
        Ok(())
    }
}

impl Health {
    pub(crate) fn new(backend: &'static str, subscriber: Arc<dyn Subscriber>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                subscriber,
                consumers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn register(&self, consumer: &Arc<ConsumerState>) {
        if let Ok(mut consumers) = self.inner.consumers.lock() {
            consumers.retain(|c| !c.is_retired());
            consumers.push(Arc::clone(consumer));
        }
    }

    /// The process is up and can answer: always true while this runs.
    pub fn live(&self) -> bool {
        true
    }

    /// The running consumers.
    pub fn consumers(&self) -> Vec<Arc<ConsumerState>> {
        self.inner
            .consumers
            .lock()
            .map(|c| c.iter().filter(|c| !c.is_retired()).cloned().collect())
            .unwrap_or_default()
    }

    /// Ready when the broker answers within 2 s and every running consumer is subscribed, has
    /// not stopped on errors and reported no fetch error in the last seconds (reconnecting).
    pub async fn ready(&self) -> Readiness {
        let broker = match tokio::time::timeout(CHECK_TIMEOUT, self.inner.subscriber.check()).await
        {
            Ok(Ok(())) => Check {
                name: format!("broker ({})", self.inner.backend),
                ok: true,
                detail: "ok".to_owned(),
            },
            Ok(Err(e)) => Check {
                name: format!("broker ({})", self.inner.backend),
                ok: false,
                detail: e.to_string(),
            },
            Err(_) => Check {
                name: format!("broker ({})", self.inner.backend),
                ok: false,
                detail: format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()),
            },
        };
        let mut checks = vec![broker];
        for consumer in self.consumers() {
            let why = consumer.not_ready_because();
            checks.push(Check {
                name: format!("consumer {}/{}", consumer.group(), consumer.name()),
                ok: why.is_none(),
                detail: why.unwrap_or_else(|| "ok".to_owned()),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("backend", &self.inner.backend)
            .field("consumers", &self.consumers().len())
            .finish()
    }
}
