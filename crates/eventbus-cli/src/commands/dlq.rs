//! `dlq list` and `dlq redrive`: dead letters, and sending them back where they came from.

use std::collections::BTreeMap;
use std::io::Write;

use eventbus::consumer::dead_letter::header as dlq;
use eventbus::{Delivery, Message, StartPosition};
use serde_json::{json, Value};

use super::tail::Table;
use super::{matches, subscribe, throwaway_group, Read, Reader};
use crate::app::Session;
use crate::args::{DlqList, DlqRedrive, TailFormat};
use crate::codec::Decoder;
use crate::error::CliError;

pub(super) async fn list(
    session: &Session<'_>,
    args: DlqList,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let group = throwaway_group("dlq");
    let stream = subscribe(
        session,
        std::slice::from_ref(&args.topic),
        &group,
        Some(StartPosition::Earliest),
    )
    .await?;
    let mut reader = Reader::new(stream, Some(args.idle));
    let decoder = Decoder {
        bus: &session.bus,
        schema: None,
    };
    let mut table = Table::new(TailFormat::Json);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let delivery = match reader.next().await {
            Read::Delivery(d) => *d,
            Read::Idle | Read::End => break,
            Read::Interrupted => return Err(CliError::Interrupted),
        };
        let record = dead_letter(&decoder, &delivery).await;
        if matches(&record, &args.filter) {
            *reasons
                .entry(record["reason"].as_str().unwrap_or("-").to_owned())
                .or_default() += 1;
            match args.format {
                TailFormat::Json => table.write(out, &record)?,
                TailFormat::Table => writeln!(
                    out,
                    "{:<20} {:<18} {:>3} {:<30} {}",
                    record["original_position"].as_str().unwrap_or("-"),
                    record["reason"].as_str().unwrap_or("-"),
                    record["attempts"].as_str().unwrap_or("-"),
                    record["original_topic"].as_str().unwrap_or("-"),
                    record["error"].as_str().unwrap_or("-"),
                )?,
            }
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "acknowledging in the listing's own group failed");
        }
    }
    let total: u64 = reasons.values().sum();
    let by_reason: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    eprintln!(
        "{total} dead letter(s){}",
        if by_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_reason.join(", "))
        }
    );
    Ok(())
}

pub(super) async fn redrive(
    session: &Session<'_>,
    args: DlqRedrive,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    // A dry run reads in a group of its own, so that the real redrive still sees everything.
    let (group, start) = if args.dry_run {
        (throwaway_group("redrive"), Some(StartPosition::Earliest))
    } else {
        (args.group.clone(), None)
    };
    let stream = subscribe(session, std::slice::from_ref(&args.topic), &group, start).await?;
    let mut reader = Reader::new(stream, Some(args.idle));
    let decoder = Decoder {
        bus: &session.bus,
        schema: None,
    };
    let producer = session.bus.producer();
    let mut moved: BTreeMap<String, u64> = BTreeMap::new();
    let mut left = 0u64;
    // Dead letters the filter leaves are held, unacknowledged, until the end: acknowledged they
    // would be gone for the next redrive, dropped they would come straight back.
    let mut held: Vec<Delivery> = Vec::new();
    let interrupted = loop {
        let delivery = match reader.next().await {
            Read::Delivery(d) => *d,
            Read::Idle | Read::End => break false,
            Read::Interrupted => break true,
        };
        let record = dead_letter(&decoder, &delivery).await;
        let origin = record["original_topic"].as_str().map(str::to_owned);
        let Some(origin) = origin.filter(|_| matches(&record, &args.filter)) else {
            left += 1;
            held.push(delivery);
            continue;
        };
        if !args.dry_run {
            producer
                .publish(&origin, vec![undead(&delivery.message)])
                .await?;
        }
        *moved.entry(origin).or_default() += 1;
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "the dead letter was redriven but its acknowledgement failed; a later redrive sends it again");
        }
    };
    drop(held);
    for (topic, n) in &moved {
        writeln!(
            out,
            "{} {n} dead letter(s) to {topic}",
            if args.dry_run {
                "would redrive"
            } else {
                "redrove"
            }
        )?;
    }
    let total: u64 = moved.values().sum();
    eprintln!(
        "{total} redriven, {left} left in {}",
        session.bus.producer().settings().full_topic(&args.topic)
    );
    if interrupted {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

/// A dead letter as its original: the `dlq_*` headers taken off, the rest as it was.
fn undead(message: &Message) -> Message {
    let mut message = message.clone();
    for name in dlq::ALL {
        message.headers.remove(name);
    }
    message
}

/// The record of a dead letter: why, where from, and the event.
async fn dead_letter(decoder: &Decoder<'_>, delivery: &Delivery) -> Value {
    let mut record = decoder.record(delivery).await;
    let header = |name: &str| {
        delivery
            .message
            .headers
            .get(name)
            .map_or(Value::Null, |v| json!(v))
    };
    let fields = [
        ("reason", dlq::REASON),
        ("error", dlq::ERROR),
        ("attempts", dlq::ATTEMPTS),
        ("original_topic", dlq::ORIGINAL_TOPIC),
        ("original_position", dlq::ORIGINAL_POSITION),
        ("group", dlq::GROUP),
        ("dead_lettered_at", dlq::TIME),
    ];
    if let Value::Object(map) = &mut record {
        for (field, name) in fields {
            map.insert(field.to_owned(), header(name));
        }
    }
    record
}
