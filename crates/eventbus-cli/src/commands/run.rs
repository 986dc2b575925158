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
    let group = consumer.group().to_owned();
    let topics = consumer.topics().join(", ");
    eprintln!(
        "consumer {} reading {topics} as group {group}; Ctrl-C or SIGTERM stops it",
        args.name
    );
    match consumer.run_until(shutdown_signal()).await {
        Ok(()) => {
            writeln!(out, "consumer {} stopped", args.name)?;
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::TooManyErrors => Err(CliError::ConsumerStopped(e)),
        Err(e) => Err(CliError::Bus(e)),
    }
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
