//! The journal's layers: one on the consumer, one on the producer. They queue a row and return;
//! the writer does the rest.

use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use eventbus::consumer::{Context, Layer, Next, Outcome};
use eventbus::producer::{Outgoing, PublishLayer, PublishNext};
use eventbus::{Consumer, EventMetadata, Position, Result};

use crate::entry::{Entry, Side, Status};
use crate::journal::Journal;

/// Records how a consumer group handled each delivery.
#[derive(Debug, Clone)]
pub struct JournalLayer {
    journal: Journal,
    name: &'static str,
    /// Inside the retry layer only failed attempts are worth a write: the outer layer records
    /// the outcome.
    failures_only: bool,
}

/// Records what the producer published, or failed to.
#[derive(Debug, Clone)]
pub struct JournalPublishLayer {
    journal: Journal,
}

impl Journal {
    /// The consumer layer. Outermost it writes one row per delivery with the final outcome;
    /// [`Journal::attach`] also puts one inside the retry layer, so failed attempts show as
    /// `retried` while they happen.
    pub fn consumer_layer(&self) -> JournalLayer {
        JournalLayer {
            journal: self.clone(),
            name: "journal",
            failures_only: false,
        }
    }

    /// The producer layer: a row per published message (dead letters included).
    pub fn publish_layer(&self) -> JournalPublishLayer {
        JournalPublishLayer {
            journal: self.clone(),
        }
    }

    /// Journals `consumer`: a layer outermost for the final outcome of each delivery and one
    /// just inside the retry layer for each failed attempt.
    pub fn attach(&self, consumer: Consumer) -> Consumer {
        let outer = self.consumer_layer();
        let attempts = JournalLayer {
            journal: self.clone(),
            name: "journal-attempts",
            failures_only: true,
        };
        consumer.layers(move |stack| {
            stack.push_outer(std::sync::Arc::new(outer));
            if stack.names().contains(&"retry") {
                stack.insert_after("retry", std::sync::Arc::new(attempts))?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Layer for JournalLayer {
    fn name(&self) -> &str {
        self.name
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let started = Instant::now();
        let outcome = next.run(ctx).await;
        if self.failures_only && !outcome.is_failure() {
            return outcome;
        }
        let status = match &outcome {
            Outcome::Handled => Status::Handled,
            Outcome::Skipped { .. } => Status::Skipped,
            Outcome::DeadLettered { .. } => Status::DeadLettered,
            // Given back (to the retry layer or the broker), or on its way to the dead letters.
            _ => Status::Retried,
        };
        let delivery = ctx.delivery();
        let metadata = delivery.metadata().ok();
        let payload = &delivery.message().payload;
        let now = Utc::now();
        self.journal.record(Entry {
            event_id: event_id(metadata, delivery.topic(), Some(delivery.position())),
            side: Side::Consume,
            group: delivery.group().to_owned(),
            event_type: metadata.map(|m| m.event_type.to_string()),
            topic: delivery.topic().to_owned(),
            key: delivery.key().map(str::to_owned),
            key_bytes: delivery.key_bytes().map(|k| k.to_vec()),
            position: Some(delivery.position().to_string()),
            source: metadata.map(|m| m.source.to_string()),
            event_time: metadata.map(EventMetadata::time_string),
            payload: self.journal.kept_payload(payload),
            payload_size: i64::try_from(payload.len()).unwrap_or(i64::MAX),
            headers: delivery.headers().clone(),
            status,
            attempts: ctx.attempt(),
            last_error: outcome.error().map(|e| e.to_string()),
            duration: Some(started.elapsed()),
            first_at: now,
            updated_at: now,
        });
        outcome
    }
}

#[async_trait]
impl PublishLayer for JournalPublishLayer {
    fn name(&self) -> &str {
        "journal"
    }

    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>> {
        // The backend takes the messages: what the rows need is copied before.
        let now = Utc::now();
        let mut rows: Vec<Entry> = out
            .messages
            .iter()
            .map(|message| {
                let metadata = EventMetadata::from_headers(&message.headers).ok();
                Entry {
                    event_id: metadata
                        .as_ref()
                        .map(|m| m.id.to_string())
                        .unwrap_or_default(),
                    side: Side::Produce,
                    group: String::new(),
                    event_type: metadata.as_ref().map(|m| m.event_type.to_string()),
                    topic: out.topic.clone(),
                    key: message
                        .key
                        .as_ref()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .filter(|k| !k.starts_with('\0'))
                        .map(str::to_owned),
                    key_bytes: message.key.as_ref().map(|k| k.to_vec()),
                    position: None,
                    source: metadata.as_ref().map(|m| m.source.to_string()),
                    event_time: metadata.as_ref().map(EventMetadata::time_string),
                    payload: self.journal.kept_payload(&message.payload),
                    payload_size: i64::try_from(message.payload.len()).unwrap_or(i64::MAX),
                    headers: message.headers.clone(),
                    status: Status::Published,
                    attempts: 1,
                    last_error: None,
                    duration: None,
                    first_at: now,
                    updated_at: now,
                }
            })
            .collect();
        let started = Instant::now();
        let result = next.run(out).await;
        let took = started.elapsed();
        for (i, row) in rows.iter_mut().enumerate() {
            let position = result.as_ref().ok().and_then(|p| p.get(i));
            if row.event_id.is_empty() {
                row.event_id = event_id(None, &row.topic, position);
            }
            row.position = position.map(ToString::to_string);
            row.duration = Some(took);
            if let Err(e) = &result {
                row.status = Status::PublishFailed;
                row.last_error = Some(e.to_string());
            }
        }
        for row in rows {
            self.journal.record(row);
        }
        result
    }
}

/// The CloudEvents id, or where the message is for one without.
fn event_id(metadata: Option<&EventMetadata>, topic: &str, position: Option<&Position>) -> String {
    match (metadata, position) {
        (Some(m), _) => m.id.to_string(),
        (None, Some(p)) => format!("{topic}@{p}"),
        (None, None) => format!("{topic}@{}", uuid::Uuid::new_v4()),
    }
}
