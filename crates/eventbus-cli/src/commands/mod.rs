//! One file per subcommand, and what they share: subscribing, reading with an idle limit,
//! Ctrl-C.

pub(crate) mod asyncapi;
mod dlq;
#[cfg(feature = "journal")]
mod journal;
mod produce;
mod replay;
mod run;
mod simulate;
mod tail;
pub(crate) mod types;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use eventbus::{Delivery, DeliveryStream, StartPosition, Subscription};
use futures::StreamExt;

use crate::app::Session;
use crate::args::{Command, Dlq, From};
use crate::error::CliError;

pub(crate) async fn run(
    session: &Session<'_>,
    command: Command,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        Command::Produce(args) => produce::run(session, args, out).await,
        Command::Tail(args) => tail::run(session, args, out).await,
        Command::Replay(args) => replay::run(session, args, out).await,
        Command::Dlq(Dlq::List(args)) => dlq::list(session, args, out).await,
        Command::Dlq(Dlq::Redrive(args)) => dlq::redrive(session, args, out).await,
        Command::Simulate(args) => simulate::run(session, args, out).await,
        Command::Run(args) => run::run(session, args, out).await,
        #[cfg(feature = "journal")]
        Command::Journal(args) => journal::run(session, args, out).await,
        #[cfg(feature = "journal")]
        Command::Dashboard(args) => journal::dashboard(session, args, out).await,
        // Answered before connecting.
        Command::Asyncapi(_) | Command::Types(_) => Ok(()),
    }
}

/// A group of its own for one command, so that no real group's position moves.
pub(crate) fn throwaway_group(command: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("eventbus-cli-{command}-{}", &id[..12])
}

pub(crate) fn start_position(from: &From) -> StartPosition {
    match from {
        From::Earliest => StartPosition::Earliest,
        From::Latest => StartPosition::Latest,
        From::Time(t) => StartPosition::Time(*t),
        From::Position(p) => StartPosition::At(p.clone()),
    }
}

/// Subscribes to `topics` (without prefix) as `group`.
pub(crate) async fn subscribe(
    session: &Session<'_>,
    topics: &[String],
    group: &str,
    start: Option<StartPosition>,
) -> Result<DeliveryStream, CliError> {
    let settings = session.bus.producer().settings();
    let full: Vec<String> = topics.iter().map(|t| settings.full_topic(t)).collect();
    let mut subscription = Subscription::new(full[0].clone(), group, format!("{group}-1"));
    subscription.topics = full;
    subscription.start = start;
    Ok(session
        .bus
        .transport()
        .subscriber
        .subscribe(subscription)
        .await?)
}

/// What reading a stream gave.
pub(crate) enum Read {
    Delivery(Box<Delivery>),
    /// Nothing came for the idle time.
    Idle,
    Interrupted,
    /// The subscription ended (the bus closed).
    End,
}

/// Reads deliveries with an idle limit and Ctrl-C; stream errors are logged, and reading goes
/// on, as a consumer does.
pub(crate) struct Reader {
    stream: DeliveryStream,
    idle: Option<Duration>,
    interrupt: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
}

impl Reader {
    pub(crate) fn new(stream: DeliveryStream, idle: Option<Duration>) -> Self {
        Self {
            stream,
            idle,
            interrupt: Box::pin(tokio::signal::ctrl_c()),
        }
    }

    pub(crate) async fn next(&mut self) -> Read {
        let idle = async {
            match self.idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(idle);
        loop {
            tokio::select! {
                _ = &mut self.interrupt => return Read::Interrupted,
                () = &mut idle => return Read::Idle,
                item = self.stream.next() => match item {
                    None => return Read::End,
                    Some(Ok(delivery)) => return Read::Delivery(Box::new(delivery)),
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "reading failed; reading on");
                    }
                },
            }
        }
    }
}

/// A progress bar on standard error, hidden where that is not a terminal.
pub(crate) fn progress(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)"
    } else {
        "{spinner} {msg} {pos} ({per_sec})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Whether a record (as [`crate::codec::Decoder::record`] builds it) passes `NAME=VALUE`
/// filters: `type`, `id`, `source`, `key`, or a header name.
pub(crate) fn matches(record: &serde_json::Value, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(name, want)| {
        let found = match name.as_str() {
            "type" | "id" | "source" => record["metadata"][name.as_str()]
                .as_str()
                .map(str::to_owned),
            "key" => match &record["key"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            },
            header => record["headers"][header]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    record["headers"][format!("dlq_{header}")]
                        .as_str()
                        .map(str::to_owned)
                }),
        };
        found.as_deref() == Some(want.as_str())
    })
}
