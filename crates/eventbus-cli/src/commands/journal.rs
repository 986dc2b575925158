//! `journal list|show|retrigger` and `dashboard`: the event journal from a terminal and a
//! browser.

use std::io::Write;

use eventbus_journal::dashboard::{Auth, Dashboard};
use eventbus_journal::{Entry, EventId, Filter, Journal, JournalSettings};
use serde_json::{json, Value};

use super::tail::Table;
use crate::app::{build_named, resolve, Session};
use crate::args::{self, DashboardArgs, JournalUrl};
use crate::codec::text_or_bytes;
use crate::error::CliError;

async fn open(url: &JournalUrl) -> Result<Journal, CliError> {
    Journal::connect(&url.journal_url, JournalSettings::default())
        .await
        .map_err(|e| CliError::Usage(format!("cannot open the journal: {e}")))
}

fn journal_error(e: eventbus_journal::JournalError) -> CliError {
    match e {
        eventbus_journal::JournalError::Bus(e) => CliError::Bus(e),
        other => CliError::Usage(other.to_string()),
    }
}

pub(super) async fn run(
    session: &Session<'_>,
    command: args::Journal,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        args::Journal::List(args) => {
            let journal = open(&args.journal).await?;
            let mut filter = Filter::new().limit(args.limit);
            if let Some(v) = args.event_type {
                filter = filter.event_type(v);
            }
            if let Some(v) = args.topic {
                filter = filter.topic(v);
            }
            if let Some(v) = args.status {
                filter = filter.status(v.parse().map_err(CliError::Usage)?);
            }
            if let Some(v) = args.key {
                filter = filter.key(v);
            }
            if let Some(v) = args.id {
                filter = filter.id_prefix(v);
            }
            let mut table = Table::new(args.format);
            for entry in journal.events(&filter).await.map_err(journal_error)? {
                table.write(out, &record(&entry))?;
            }
        }
        args::Journal::Show(args) => {
            let journal = open(&args.journal).await?;
            let rows = journal.history(&args.id).await.map_err(journal_error)?;
            if rows.is_empty() {
                return Err(CliError::Usage(format!(
                    "the journal has no event with id {}",
                    args.id
                )));
            }
            for entry in rows {
                writeln!(out, "{}", record(&entry))?;
            }
        }
        args::Journal::Retrigger(args) => {
            let journal = open(&args.journal).await?;
            let mode = if args.same_id {
                EventId::Same
            } else {
                EventId::New
            };
            let position = journal
                .retrigger(&session.bus, &args.id, mode)
                .await
                .map_err(journal_error)?;
            writeln!(out, "retriggered {} at {position}", args.id)?;
        }
    }
    Ok(())
}

/// One row as the journal commands print it (and `tail`'s table shows it).
fn record(entry: &Entry) -> Value {
    json!({
        "topic": entry.topic,
        "position": entry.position,
        "key": entry.key,
        "side": entry.side.as_str(),
        "group": entry.group,
        "status": entry.status.as_str(),
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "metadata": { "id": entry.event_id, "type": entry.event_type, "source": entry.source, "time": entry.event_time },
        "data": entry.payload.as_deref().map(|p| serde_json::from_slice(p).unwrap_or_else(|_| text_or_bytes(p))),
        "updated_at": entry.updated_at.to_rfc3339(),
    })
}

/// Serves the dashboard until Ctrl-C, with the program's named consumers to start and stop
/// (each journalled).
pub(super) async fn dashboard(
    session: &Session<'_>,
    args: DashboardArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let journal = open(&args.journal).await?;
    let bus = session.bus.clone().producer_layer(journal.publish_layer());
    let mut dashboard = Dashboard::new(journal.clone(), bus);
    if let Some(token) = args.token {
        dashboard = dashboard.auth(Auth::Bearer(token));
    }
    for (name, named) in session.app.named() {
        let file = session
            .file
            .consumers
            .get(name)
            .cloned()
            .unwrap_or_default();
        let (topics, group) = resolve(named, &file, None, &[]);
        let (name, named, journal) = (name.clone(), named.clone(), journal.clone());
        dashboard = dashboard.consumer(name.clone(), move |bus| {
            let (first, rest) = topics
                .split_first()
                .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
            journal.attach(build_named(bus, &name, &named, &file, &group, first, rest))
        });
    }
    if args.start_consumers {
        dashboard.start_consumers().await.map_err(CliError::Usage)?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let address = listener.local_addr()?;
    writeln!(out, "dashboard on http://{address}/ (Ctrl-C stops it)")?;
    out.flush()?;
    axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
