//! `run --name`: a consumer the program registered, until SIGINT or SIGTERM.

use std::io::Write;

use eventbus::ErrorKind;

use crate::app::Session;
use crate::args::Run;
use crate::error::CliError;

pub(super) async fn run(
    session: &Session<'_>,
    args: Run,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let consumer = session.consumer(&args.name, args.group.as_deref(), &args.topics)?;
    #[cfg(feature = "journal")]
    let journal = journal().await?;
    #[cfg(feature = "journal")]
    let consumer = match &journal {
        Some(journal) => journal.attach(consumer),
        None => consumer,
    };
    let group = consumer.group().to_owned();
    let topics = consumer.topics().join(", ");
    eprintln!(
        "consumer {} reading {topics} as group {group}; Ctrl-C or SIGTERM stops it",
        args.name
    );
    let result = consumer.run_until(shutdown_signal()).await;
    #[cfg(feature = "journal")]
    if let Some(journal) = &journal {
        // The rows of the last events, before the process ends.
        journal.flush().await;
    }
    match result {
        Ok(()) => {
            writeln!(out, "consumer {} stopped", args.name)?;
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::TooManyErrors => Err(CliError::ConsumerStopped(e)),
        Err(e) => Err(CliError::Bus(e)),
    }
}

/// The journal `EVENT_BUS_JOURNAL_URL` names, when it names one: every delivery of the consumer
/// then gets a row.
#[cfg(feature = "journal")]
async fn journal() -> Result<Option<eventbus_journal::Journal>, CliError> {
    let Ok(url) = std::env::var("EVENT_BUS_JOURNAL_URL") else {
        return Ok(None);
    };
    let settings = eventbus_journal::JournalSettings::from_env()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    eventbus_journal::Journal::connect(&url, settings)
        .await
        .map(Some)
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot open the journal (EVENT_BUS_JOURNAL_URL): {e}"
            ))
        })
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: what a supervisor sends to stop a service.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
