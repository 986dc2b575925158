//! `tail`: print what arrives on topics.

use std::io::Write;

use eventbus::StartPosition;
use serde_json::Value;

use super::{matches, start_position, subscribe, throwaway_group, Read, Reader};
use crate::app::Session;
use crate::args::{Tail, TailFormat};
use crate::codec::{Decoder, SchemaType};
use crate::error::CliError;

pub(super) async fn run(
    session: &Session<'_>,
    args: Tail,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let format = &args.payload;
    let schema = match (&format.schema, &format.event_type) {
        (Some(path), Some(name)) => Some(SchemaType::load(
            name,
            path,
            format.minor_version,
            format.key_field.clone(),
        )?),
        _ => None,
    };
    // A throw-away group starts at the end unless told otherwise, like `tail -f`; a named group
    // resumes where it was.
    let (group, start) = match &args.group {
        Some(group) => (group.clone(), args.from.as_ref().map(start_position)),
        None => (
            throwaway_group("tail"),
            Some(
                args.from
                    .as_ref()
                    .map_or(StartPosition::Latest, start_position),
            ),
        ),
    };
    let stream = subscribe(session, &args.topics, &group, start).await?;
    let mut reader = Reader::new(stream, args.idle);
    let decoder = Decoder {
        bus: &session.bus,
        schema: schema.as_ref(),
    };
    let mut table = Table::new(args.format);
    let mut shown = 0u64;
    while args.max.is_none_or(|max| shown < max) {
        let delivery = match reader.next().await {
            Read::Delivery(d) => d,
            Read::Idle | Read::End => break,
            Read::Interrupted => {
                out.flush()?;
                return Ok(());
            }
        };
        let record = decoder.record(&delivery).await;
        if matches(&record, &args.filter) {
            table.write(out, &record)?;
            shown += 1;
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "acknowledging failed; the event may be shown again");
        }
    }
    out.flush()?;
    Ok(())
}

/// JSON lines, or a table with a header line.
pub(crate) struct Table {
    format: TailFormat,
    header: bool,
}

impl Table {
    pub(crate) fn new(format: TailFormat) -> Self {
        Self {
            format,
            header: false,
        }
    }

    pub(crate) fn write(
        &mut self,
        out: &mut (dyn Write + Send),
        record: &Value,
    ) -> std::io::Result<()> {
        if self.format == TailFormat::Json {
            return writeln!(out, "{record}");
        }
        if !self.header {
            self.header = true;
            writeln!(
                out,
                "{:<24} {:<20} {:<44} {:<16} DATA",
                "POSITION", "TIME", "TYPE", "KEY"
            )?;
        }
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let mut data = record["data"].to_string();
        if data.len() > 80 {
            let cut = (0..=77)
                .rev()
                .find(|i| data.is_char_boundary(*i))
                .unwrap_or(0);
            data.truncate(cut);
            data.push_str("...");
        }
        writeln!(
            out,
            "{:<24} {:<20} {:<44} {:<16} {data}",
            text(&record["position"]),
            text(&record["metadata"]["time"])
                .chars()
                .take(19)
                .collect::<String>(),
            text(&record["metadata"]["type"]),
            text(&record["key"]),
        )
    }
}
