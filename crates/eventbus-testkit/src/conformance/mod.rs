//! The conformance suite: one set of cases every backend runs against its real broker.
//!
//! A backend hands the suite a [`Target`] (how to open a fresh connection and, if it can, how to
//! restart the broker); the suite reads the [`Guarantees`](eventbus_core::Guarantees) the
//! connection declares and checks exactly those, both ways where it can: a declared promise must
//! hold, and a case the backend cannot support is reported as skipped with its reason, never
//! silently absent. Every case uses fresh connections and unique topic names.
//!
//! ```no_run
//! # async fn demo() {
//! use eventbus_testkit::conformance::{Suite, Target};
//! use eventbus_testkit::memory::MemoryBroker;
//!
//! let target = Target::new("memory", || async { Ok(MemoryBroker::new(4).transport()) });
//! Suite::new(target).run().await.assert_passed();
//! # }
//! ```

/// A [`Case`] of the async function of that name; used by the case modules below.
macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |ctx| Box::pin($name(ctx)),
        }
    };
}

mod consumer_cases;
mod handover_cases;
pub mod support;
mod transport_cases;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_core::{Result, Transport};
use futures::future::BoxFuture;

pub use support::{Ctx, QUIET_PERIOD, RECEIVE_TIMEOUT};

/// How long one case may take before it counts as failed.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<Transport>> + Send + Sync>;
type Restart = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The backend under test: a way to connect, and optionally a way to restart its broker.
#[derive(Clone)]
pub struct Target {
    name: String,
    connect: Connect,
    restart: Option<Restart>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("can_restart", &self.restart.is_some())
            .finish()
    }
}

impl Target {
    /// A target called `name` whose connections come from `connect`. Every call must return a
    /// new connection to the same broker.
    pub fn new<F, Fut>(name: impl Into<String>, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Transport>> + Send + 'static,
    {
        Self {
            name: name.into(),
            connect: Arc::new(move || Box::pin(connect())),
            restart: None,
        }
    }

    /// Lets the suite stop and start the broker (for the restart case).
    #[must_use]
    pub fn with_restart<F, Fut>(mut self, restart: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.restart = Some(Arc::new(move || Box::pin(restart())));
        self
    }

    /// A new connection.
    pub async fn connect(&self) -> Result<Transport> {
        (self.connect)().await
    }

    /// Restarts the broker, when the target can.
    pub async fn restart(&self) -> Option<Result<()>> {
        match &self.restart {
            Some(restart) => Some(restart().await),
            None => None,
        }
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A check failed; the text says which and why.
    Failed(String),
    /// The backend does not declare what the case checks; the text says why.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case name.
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// The results of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// One entry per case, in run order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// Cases with this outcome kind.
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// Number of passed cases.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    /// Number of failed cases.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Number of skipped cases.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// Panics with every failure when any case failed.
    pub fn assert_passed(&self) {
        assert!(
            self.failed() == 0,
            "conformance failures for {}:\n{self}",
            self.target
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            let (mark, detail) = match &r.outcome {
                Outcome::Passed => ("pass", String::new()),
                Outcome::Failed(why) => ("FAIL", format!(": {why}")),
                Outcome::Skipped(why) => ("skip", format!(": {why}")),
            };
            writeln!(
                f,
                "  [{mark}] {} ({} ms){detail}",
                r.name,
                r.elapsed.as_millis()
            )?;
        }
        write!(
            f,
            "conformance {}: {} passed, {} failed, {} skipped",
            self.target,
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// The result a case function returns: `Err` fails, [`support::skip`] skips.
pub type CaseResultOf = std::result::Result<(), support::CaseError>;

type CaseFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, CaseResultOf>;

/// A named case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Its name.
    pub name: &'static str,
    run: CaseFn,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Every case of the suite, in run order.
pub fn cases() -> Vec<Case> {
    let mut all = transport_cases::cases();
    all.extend(handover_cases::cases());
    all.extend(consumer_cases::cases());
    all
}

/// The suite, bound to one target.
#[derive(Debug)]
pub struct Suite {
    target: Target,
    only: Option<Vec<String>>,
}

impl Suite {
    /// All cases against `target`.
    pub fn new(target: Target) -> Self {
        Self { target, only: None }
    }

    /// Runs only the named cases (or the names in `EVENTBUS_CONFORMANCE_CASES`, comma-separated).
    #[must_use]
    pub fn only(mut self, names: &[&str]) -> Self {
        self.only = Some(names.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// Runs the cases one after another and prints each result as it ends.
    pub async fn run(&self) -> Report {
        let filter = self.only.clone().or_else(|| {
            std::env::var("EVENTBUS_CONFORMANCE_CASES")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        });
        let mut results = Vec::new();
        for case in cases() {
            if filter
                .as_ref()
                .is_some_and(|f| !f.iter().any(|n| n == case.name))
            {
                continue;
            }
            let started = Instant::now();
            let outcome = match Ctx::new(self.target.clone(), case.name).await {
                Err(e) => Outcome::Failed(format!("cannot connect: {e}")),
                Ok(ctx) => match tokio::time::timeout(CASE_TIMEOUT, (case.run)(&ctx)).await {
                    Err(_) => Outcome::Failed(format!("did not finish within {CASE_TIMEOUT:?}")),
                    Ok(Ok(())) => Outcome::Passed,
                    Ok(Err(support::CaseError::Skip(why))) => Outcome::Skipped(why),
                    Ok(Err(support::CaseError::Fail(why))) => Outcome::Failed(why),
                },
            };
            let result = CaseResult {
                name: case.name,
                outcome,
                elapsed: started.elapsed(),
            };
            eprintln!(
                "[{}] {} {:?} ({} ms)",
                self.target.name,
                result.name,
                result.outcome,
                result.elapsed.as_millis()
            );
            results.push(result);
        }
        Report {
            target: self.target.name.clone(),
            results,
        }
    }
}
