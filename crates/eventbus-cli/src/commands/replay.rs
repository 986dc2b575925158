//! `replay`: re-publish a time window of one topic into another, keys and headers kept.

use std::io::Write;

use chrono::{DateTime, Utc};
use eventbus::{Delivery, EventMetadata, StartPosition};

use super::{progress, subscribe, throwaway_group, Read, Reader};
use crate::app::Session;
use crate::args::Replay;
use crate::error::CliError;

pub(super) async fn run(
    session: &Session<'_>,
    args: Replay,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let to = args.to.unwrap_or_else(Utc::now);
    if to <= args.from {
        return Err(CliError::Usage(format!(
            "the window is empty: --to {to} is not after --from {}",
            args.from
        )));
    }
    let producer = session.bus.producer();
    let into = producer.settings().full_topic(&args.into);
    let source = producer.settings().full_topic(&args.topic);
    if into == source {
        return Err(CliError::Usage(
            "--into names the topic being read; replaying into it would read its own events again"
                .into(),
        ));
    }
    let group = throwaway_group("replay");
    let stream = subscribe(
        session,
        std::slice::from_ref(&args.topic),
        &group,
        Some(StartPosition::Time(args.from)),
    )
    .await?;
    let mut reader = Reader::new(stream, Some(args.idle));
    let bar = progress(None, &format!("replaying {source} into {into}"));
    let (mut replayed, mut outside) = (0u64, 0u64);
    let interrupted = loop {
        let delivery = match reader.next().await {
            Read::Delivery(d) => *d,
            Read::Idle | Read::End => break false,
            Read::Interrupted => break true,
        };
        let at = time_of(&delivery);
        if at.is_some_and(|t| t < args.from || t >= to) {
            outside += 1;
        } else {
            if !args.dry_run {
                let message = delivery.message.clone();
                producer.publish(&into, vec![message]).await?;
            }
            replayed += 1;
            bar.inc(1);
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "acknowledging in the replay's own group failed");
        }
    };
    bar.finish_and_clear();
    writeln!(
        out,
        "{} {replayed} event(s) from {source} between {} and {to} into {into}; {outside} outside the window skipped",
        if args.dry_run { "would replay" } else { "replayed" },
        args.from,
    )?;
    if interrupted {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

/// When an event happened: its CloudEvents time, else when the broker stored it.
fn time_of(delivery: &Delivery) -> Option<DateTime<Utc>> {
    EventMetadata::from_headers(&delivery.message.headers)
        .ok()
        .map(|m| m.time)
        .or(delivery.published_at)
}
