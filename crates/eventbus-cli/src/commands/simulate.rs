//! `simulate`: generated events of a type at a rate, then the achieved rate and the publish
//! latency.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use super::produce::Pace;
use super::progress;
use crate::app::Session;
use crate::args::Simulate;
use crate::codec::Codec;
use crate::error::CliError;
use crate::random;

pub(super) async fn run(
    session: &Session<'_>,
    args: Simulate,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err(CliError::Usage("--rate must be above 0".into()));
    }
    let codec = Codec::from_flags(&args.format)?;
    let (schema, key_field) = match &codec {
        Codec::Registered(t) => (
            Some(t.schema()?.avro().clone()),
            t.key_field().map(str::to_owned),
        ),
        Codec::Schema(s) => (Some(s.schema.avro().clone()), s.key_field.clone()),
        Codec::Raw => (None, None),
    };
    let mut rng = args
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let keys = args.keys.max(1);
    let mut generate = move || -> (Value, Option<String>) {
        match &schema {
            Some(schema) => (
                random::value_with_key(schema, &mut rng, key_field.as_deref(), keys),
                None,
            ),
            // Raw payloads: a small JSON document, keyed explicitly.
            None => {
                let key = rng.u64(0..keys);
                (
                    serde_json::json!({"seq": rng.u64(..), "key": key}),
                    Some(format!("key-{key}")),
                )
            }
        }
    };
    // Fail early, with the type's own words, when generated values do not fit it.
    let (probe, _) = generate();
    codec.key_of(&probe)?;

    let planned = (args.rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
    let bar = progress(Some(planned), &format!("simulating {}", args.topic));
    let pace = Pace::new(args.rate);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(planned as usize);
    let (mut errors, mut first_error) = (0u64, None::<CliError>);
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;
    for n in 0..planned {
        tokio::select! {
            _ = &mut interrupt => { interrupted = true; break; }
            () = pace.wait(n, started) => {}
        }
        while in_flight.len() >= args.concurrency.max(1) {
            settle(
                in_flight.next().await,
                &mut latencies,
                &mut errors,
                &mut first_error,
                &bar,
            );
        }
        let (data, key) = generate();
        let codec = &codec;
        let bus = &session.bus;
        let topic = args.topic.as_str();
        in_flight.push(async move {
            let sent = Instant::now();
            let result = codec.send(bus, topic, &data, key.as_deref(), &[]).await;
            result.map(|_| sent.elapsed())
        });
    }
    while let Some(done) = in_flight.next().await {
        settle(
            Some(done),
            &mut latencies,
            &mut errors,
            &mut first_error,
            &bar,
        );
    }
    let took = started.elapsed();
    bar.finish_and_clear();
    latencies.sort_unstable();
    let sent = latencies.len() as u64;
    let rate = sent as f64 / took.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "sent {sent} event(s) in {:.2} s: {rate:.1}/s (asked {:.1}/s); publish latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {keys} key(s); {errors} error(s)",
        took.as_secs_f64(),
        args.rate,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    )?;
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
        if sent == 0 {
            return Err(error);
        }
    }
    if interrupted {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

fn settle(
    done: Option<Result<Duration, CliError>>,
    latencies: &mut Vec<Duration>,
    errors: &mut u64,
    first_error: &mut Option<CliError>,
    bar: &indicatif::ProgressBar,
) {
    match done {
        Some(Ok(latency)) => latencies.push(latency),
        Some(Err(error)) => {
            *errors += 1;
            first_error.get_or_insert(error);
        }
        None => return,
    }
    bar.inc(1);
}

/// The value below which `q` of the sorted `values` lie (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
