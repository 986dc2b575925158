//! `produce`: JSON lines (or one `--data`) in, events out, positions printed.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::Session;
use crate::args::Produce;
use crate::codec::Codec;
use crate::error::CliError;

pub(super) async fn run(
    session: &Session<'_>,
    args: Produce,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let codec = Codec::from_flags(&args.format)?;
    let inputs = inputs(&args, &codec)?;
    let pace = Pace::new(args.rate);
    let started = Instant::now();
    let mut sent = 0u64;
    for data in &inputs {
        for _ in 0..args.count.max(1) {
            pace.wait(sent, started).await;
            let position = codec
                .send(
                    &session.bus,
                    &args.topic,
                    data,
                    args.key.as_deref(),
                    &args.headers,
                )
                .await?;
            sent += 1;
            if !args.quiet {
                writeln!(out, "{} {position}", args.topic)?;
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {sent} event(s) to {} in {took:.2} s ({:.0}/s)",
        session.bus.producer().settings().full_topic(&args.topic),
        sent as f64 / took.max(1e-9)
    );
    Ok(())
}

/// The inputs: `--data` (or `@FILE`), else standard input one per line.
fn inputs(args: &Produce, codec: &Codec) -> Result<Vec<Value>, CliError> {
    let raw = matches!(codec, Codec::Raw);
    if let Some(data) = &args.data {
        let text = match data.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|source| CliError::File {
                path: path.into(),
                source,
            })?,
            None => data.clone(),
        };
        return Ok(vec![if raw {
            Value::String(text)
        } else {
            parse(&text, 1)?
        }]);
    }
    let mut inputs = Vec::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        inputs.push(if raw {
            Value::String(line)
        } else {
            parse(&line, i + 1)?
        });
    }
    if inputs.is_empty() {
        return Err(CliError::Usage(
            "nothing to produce: give --data JSON, or JSON lines on standard input".into(),
        ));
    }
    Ok(inputs)
}

/// Parses one input, reporting where it breaks.
pub(crate) fn parse(text: &str, line: usize) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| {
        // serde_json ends its text with the position inside this input; ours replaces it.
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        CliError::Json {
            line: line + e.line() - 1,
            column: e.column(),
            message,
        }
    })
}

/// Spaces sends evenly at a rate, by the clock rather than by sleeping between sends, so that
/// slow sends do not lower the rate.
pub(crate) struct Pace {
    period: Option<Duration>,
}

impl Pace {
    pub(crate) fn new(rate: f64) -> Self {
        Self {
            period: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
        }
    }

    /// Waits until the `n`-th send (from 0) is due.
    pub(crate) async fn wait(&self, n: u64, started: Instant) {
        if let Some(period) = self.period {
            let due = started + period.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}
