//! What can go wrong, and the exit code each failure gives.

use std::path::PathBuf;
use std::process::ExitCode;

/// A failed command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The bus refused or failed: unreachable broker, unknown type, bad configuration, …
    #[error("{0}")]
    Bus(#[from] eventbus::Error),
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// One input line is not valid JSON.
    #[error("input line {line}, column {column}: not valid JSON: {message}")]
    Json {
        /// Line of the input, from 1.
        line: usize,
        /// Column in that line, from 1.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A consumer started by `run` stopped because of errors.
    #[error("the consumer stopped: {0}")]
    ConsumerStopped(eventbus::Error),
    /// Ctrl-C came before the command was done.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    /// The process exit code for this failure (see `eventbus --help`).
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => 2,
            CliError::ConsumerStopped(_) => 3,
            CliError::Interrupted => 130,
            _ => 1,
        })
    }
}
