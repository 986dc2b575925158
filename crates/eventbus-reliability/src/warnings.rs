//! Counts the warnings a scenario expects to see in the logs, e.g. Redis's trimming warning.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

static BACKLOG_WARNINGS: AtomicU64 = AtomicU64::new(0);

/// A `tracing` layer that counts warnings (and errors) of the Redis backend's backlog watch.
/// Install it with the program's subscriber; [`backlog_warnings`] reads the count.
#[derive(Debug, Clone, Copy, Default)]
pub struct WarningCounter;

impl<S: Subscriber> Layer<S> for WarningCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() <= Level::WARN && meta.target().starts_with("eventbus_redis::backlog") {
            BACKLOG_WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How many backlog warnings the Redis backend logged in this process so far.
pub fn backlog_warnings() -> u64 {
    BACKLOG_WARNINGS.load(Ordering::Relaxed)
}

/// Installs a subscriber writing to stderr (or the test writer) filtered by `RUST_LOG` (else
/// `default`), with the [`WarningCounter`]. Does nothing if one is installed already.
pub fn init_logging(default: &str, for_tests: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(WarningCounter);
    let _ = if for_tests {
        registry
            .with(fmt.with_test_writer().with_filter(filter))
            .try_init()
    } else {
        registry.with(fmt.with_filter(filter)).try_init()
    };
}
