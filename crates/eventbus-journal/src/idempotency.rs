//! Dropping repeats: at-least-once delivery (a redelivery, an outbox relay that died after
//! publishing) can hand a consumer group an event it already handled.

use async_trait::async_trait;
use eventbus::consumer::{Context, Layer, Next, Outcome};
use sqlx::Row;

use crate::store::{now_ms, Store};

/// Skips events whose id this consumer group already handled, by the `eventbus_processed`
/// table of a journal database. Add it with `consumer.layer(Idempotency::new(&store))`.
///
/// The check and the record are two statements around the receiver: two members of a group
/// that receive the same event at the same instant may both run it. It removes the repeats that
/// redelivery makes, not every race.
#[derive(Debug, Clone)]
pub struct Idempotency {
    store: Store,
}

impl Idempotency {
    /// The layer over `store`.
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Forgets ids recorded more than `age` ago; returns how many.
    pub async fn purge(&self, age: std::time::Duration) -> crate::Result<u64> {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query("DELETE FROM eventbus_processed WHERE processed_at < $1")
            .bind(cutoff)
            .execute(self.store.pool())
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| self.store.error(e))
    }

    async fn seen(&self, group: &str, id: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM eventbus_processed WHERE consumer_group = $1 AND event_id = $2",
        )
        .bind(group.to_owned())
        .bind(id.to_owned())
        .fetch_one(self.store.pool())
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    async fn remember(&self, group: &str, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO eventbus_processed (consumer_group, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT (consumer_group, event_id) DO NOTHING",
        )
        .bind(group.to_owned())
        .bind(id.to_owned())
        .bind(now_ms())
        .execute(self.store.pool())
        .await
        .map(drop)
    }
}

#[async_trait]
impl Layer for Idempotency {
    fn name(&self) -> &str {
        "idempotency"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        let Some(id) = ctx.metadata().ok().map(|m| m.id.to_string()) else {
            return next.run(ctx).await;
        };
        let group = ctx.group().to_owned();
        match self.seen(&group, &id).await {
            Ok(true) => {
                return Outcome::Skipped {
                    reason: "duplicate: this group handled the event already".into(),
                }
            }
            Ok(false) => {}
            // Without the table the layer cannot tell; handling twice beats not handling.
            Err(e) => {
                tracing::warn!(error = %e, event_id = %id, "the idempotency check failed; handling the event")
            }
        }
        let outcome = next.run(ctx).await;
        if matches!(outcome, Outcome::Handled) {
            if let Err(e) = self.remember(&group, &id).await {
                tracing::warn!(error = %e, event_id = %id, "the handled event could not be recorded; a redelivery would run it again");
            }
        }
        outcome
    }
}
