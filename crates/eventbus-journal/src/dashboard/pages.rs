//! The pages, as HTML written on the server (maud escapes every value).

use chrono::{DateTime, Utc};
use eventbus::catalog;
use eventbus::EventMetadata;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::consumers::Status as ConsumerStatus;
use super::{EventQuery, Shared};
use crate::entry::{Entry, Side, Status};
use crate::journal::Filter;

pub(crate) const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 0; color: #1f2937; }
nav { background: #111827; padding: .6rem 1rem; }
nav a { color: #e5e7eb; margin-right: 1.2rem; text-decoration: none; font-weight: 600; }
main { padding: 1rem 1.5rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e5e7eb; vertical-align: top; }
th { background: #f3f4f6; }
.status { padding: .1rem .4rem; border-radius: .3rem; font-size: .8rem; white-space: nowrap; }
.handled, .published { background: #dcfce7; } .retried { background: #fef9c3; }
.dead-lettered, .publish-failed { background: #fee2e2; } .skipped { background: #e5e7eb; }
form.inline { display: inline; }
pre { background: #f9fafb; padding: .8rem; overflow: auto; }
.flash { background: #dbeafe; padding: .5rem .8rem; }
.filters input, .filters select { margin-right: .5rem; }
";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · eventbus" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                nav {
                    a href="/events" { "Events" }
                    a href="/failures" { "Failures" }
                    a href="/consumers" { "Consumers" }
                    a href="/throughput" { "Throughput" }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn status(status: Status) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The journal filter the events form asks for.
pub(crate) fn filter(query: &EventQuery) -> Result<Filter, String> {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut filter = Filter::new();
    if let Some(v) = given(&query.event_type) {
        filter = filter.event_type(v);
    }
    if let Some(v) = given(&query.topic) {
        filter = filter.topic(v);
    }
    if let Some(v) = given(&query.status) {
        filter = filter.status(v.parse().map_err(|e: String| {
            format!(
                "{e}; use one of {}",
                Status::ALL.map(|s| s.as_str()).join(", ")
            )
        })?);
    }
    if let Some(v) = given(&query.key) {
        filter = filter.key(v);
    }
    if let Some(v) = given(&query.id) {
        filter = filter.id_prefix(v);
    }
    let when = |v: Option<String>| -> Result<Option<DateTime<Utc>>, String> {
        v.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    format!("`{t}` is not an RFC 3339 time like 2026-12-01T10:00:00Z: {e}")
                })
        })
        .transpose()
    };
    Ok(filter.between(when(given(&query.since))?, when(given(&query.until))?))
}

fn rows_table(rows: &[Entry]) -> Markup {
    html! {
        table {
            tr { th { "updated" } th { "side" } th { "group" } th { "type" } th { "topic" } th { "key" } th { "status" } th { "attempts" } th { "event id" } }
            @for row in rows {
                tr {
                    td { (time(row.updated_at)) }
                    td { (row.side.as_str()) }
                    td { (row.group) }
                    td { (row.event_type.as_deref().unwrap_or("-")) }
                    td { (row.topic) }
                    td { (row.key.as_deref().unwrap_or("-")) }
                    td { (status(row.status)) }
                    td { (row.attempts) }
                    td { a class="event-link" href={ "/events/" (row.event_id) } { (row.event_id) } }
                }
            }
        }
    }
}

pub(crate) fn events(query: &EventQuery, rows: &[Entry]) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    page(
        "Events",
        html! {
            form.filters method="get" action="/events" {
                input name="type" placeholder="type" value=(value(&query.event_type));
                input name="topic" placeholder="topic" value=(value(&query.topic));
                select name="status" {
                    option value="" { "any status" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[query.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
                input name="key" placeholder="key" value=(value(&query.key));
                input name="id" placeholder="event id starts with" value=(value(&query.id));
                input name="since" placeholder="since (RFC 3339)" value=(value(&query.since));
                input name="until" placeholder="until (RFC 3339)" value=(value(&query.until));
                button type="submit" { "Filter" }
            }
            p { (rows.len()) " row(s), newest first" }
            (rows_table(rows))
        },
    )
}

/// The payload as JSON: decoded by its registered type, else as JSON or text.
fn payload(state: &Shared, row: &Entry) -> String {
    let Some(bytes) = &row.payload else {
        return format!(
            "(not kept: {} bytes, over the journal's size cap)",
            row.payload_size
        );
    };
    let minor = EventMetadata::from_headers(&row.headers)
        .ok()
        .map(|m| m.minor_version);
    let decoded = row
        .event_type
        .as_deref()
        .and_then(|t| catalog::event_type(t).ok())
        .map(|t| {
            t.decode_json(
                state.bus.producer().serializer().as_ref(),
                &row.topic,
                bytes,
                minor,
            )
        });
    match decoded {
        Some(Ok(json)) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Some(Err(e)) => format!("(cannot decode: {e})"),
        None => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

fn retrigger_forms(state: &Shared, event_id: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/events/" (event_id) "/retrigger" } {
            input type="hidden" name="csrf" value=(state.csrf);
            input type="hidden" name="id" value="new";
            button type="submit" class="retrigger" { (label) " (new id)" }
        }
        " "
        form.inline method="post" action={ "/events/" (event_id) "/retrigger" } {
            input type="hidden" name="csrf" value=(state.csrf);
            input type="hidden" name="id" value="same";
            button type="submit" { (label) " (same id)" }
        }
    }
}

pub(crate) fn event(state: &Shared, id: &str, rows: &[Entry], done: Option<&str>) -> Markup {
    let source = rows
        .iter()
        .find(|r| r.side == Side::Produce && r.payload.is_some())
        .or_else(|| rows.first());
    page(
        &format!("Event {id}"),
        html! {
            @if let Some(done) = done { p.flash { (done) } }
            @if let Some(row) = source {
                p { "Type " b { (row.event_type.as_deref().unwrap_or("-")) } " on " b { (row.topic) } ", key " b { (row.key.as_deref().unwrap_or("-")) } }
                h2 { "Payload" }
                pre.payload { (payload(state, row)) }
                (retrigger_forms(state, id, "Retrigger"))
            }
            h2 { "History" }
            table {
                tr { th { "side" } th { "group" } th { "topic" } th { "position" } th { "status" } th { "attempts" } th { "last error" } th { "took" } th { "updated" } }
                @for row in rows {
                    tr {
                        td { (row.side.as_str()) }
                        td { (row.group) }
                        td { (row.topic) }
                        td { (row.position.as_deref().unwrap_or("-")) }
                        td { (status(row.status)) }
                        td { (row.attempts) }
                        td { (row.last_error.as_deref().unwrap_or("")) }
                        td { (row.duration.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1000.0)).unwrap_or_default()) }
                        td { (time(row.updated_at)) }
                    }
                }
            }
            h2 { "Headers" }
            table {
                @if let Some(row) = source {
                    @for (name, value) in row.headers.iter() {
                        tr { td { (name) } td { (String::from_utf8_lossy(value)) } }
                    }
                }
            }
        },
    )
}

pub(crate) fn not_found(id: &str) -> Markup {
    page(
        "Not found",
        html! { p { "The journal has no event with id " code { (id) } "." } },
    )
}

pub(crate) fn failures(state: &Shared, rows: &[Entry]) -> Markup {
    page(
        "Failures",
        html! {
            p { "Dead letters, failed publishes and retries, newest first. Retriggering a dead letter publishes the original event to its topic again (a redrive)." }
            table {
                tr { th { "updated" } th { "group" } th { "type" } th { "topic" } th { "status" } th { "attempts" } th { "last error" } th { "event" } th { "" } }
                @for row in rows {
                    tr {
                        td { (time(row.updated_at)) }
                        td { (row.group) }
                        td { (row.event_type.as_deref().unwrap_or("-")) }
                        td { (row.topic) }
                        td { (status(row.status)) }
                        td { (row.attempts) }
                        td { (row.last_error.as_deref().unwrap_or("")) }
                        td { a href={ "/events/" (row.event_id) } { (row.event_id) } }
                        td { (retrigger_forms(state, &row.event_id, "Retrigger")) }
                    }
                }
            }
        },
    )
}

/// One consumer's row: its state, its lag and its group's last error with when.
pub(crate) type ConsumerRow = (ConsumerStatus, Option<u64>, Option<(String, DateTime<Utc>)>);

pub(crate) fn consumers(state: &Shared, rows: &[ConsumerRow]) -> Markup {
    page(
        "Consumers",
        html! {
            table {
                tr { th { "name" } th { "group" } th { "topics" } th { "state" } th { "in flight" } th { "lag" } th { "last error" } th { "" } }
                @for (consumer, lag, last_error) in rows {
                    tr id={ "consumer-" (consumer.name) } {
                        td { (consumer.name) }
                        td { (consumer.group) }
                        td { (consumer.topics.join(", ")) }
                        td.state {
                            (if consumer.running { "running" } else { "stopped" })
                            @if let Some(problem) = &consumer.problem { br; small { (problem) } }
                        }
                        td { (consumer.in_flight) }
                        td { (lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into())) }
                        td { @if let Some((error, at)) = last_error { (error) br; small { (time(*at)) } } }
                        td {
                            form.inline method="post" action={ "/consumers/" (consumer.name) "/" (if consumer.running { "stop" } else { "start" }) } {
                                input type="hidden" name="csrf" value=(state.csrf);
                                button type="submit" { (if consumer.running { "Stop" } else { "Start" }) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) fn throughput(svg: &str, rows: &[(String, DateTime<Utc>, i64)]) -> Markup {
    let total: i64 = rows.iter().map(|(_, _, n)| n).sum();
    page(
        "Throughput",
        html! {
            p { "Events published per minute and topic, the last hour (" (total) " in all)." }
            (PreEscaped(svg))
        },
    )
}
