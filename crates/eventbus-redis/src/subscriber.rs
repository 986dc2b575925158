//! Subscribing: consumer groups and where they start.

use std::sync::Arc;

use async_trait::async_trait;
use eventbus_core::transport::closed_error;
use eventbus_core::{DeliveryStream, ErrorKind, Result, StartPosition, Subscriber, Subscription};
use redis::aio::ConnectionManager;
use redis::Client;
use tokio::sync::watch;

use crate::conn::failed;
use crate::reader::Reader;
use crate::RedisSettings;

/// Opens one reader per subscription.
#[derive(Debug)]
pub(crate) struct RedisSubscriber {
    client: Client,
    conn: ConnectionManager,
    settings: Arc<RedisSettings>,
    closed: watch::Sender<bool>,
}

impl RedisSubscriber {
    pub(crate) fn new(
        client: Client,
        conn: ConnectionManager,
        settings: Arc<RedisSettings>,
    ) -> Self {
        Self {
            client,
            conn,
            settings,
            closed: watch::Sender::new(false),
        }
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if *self.closed.borrow() {
            return Err(closed_error("Redis subscriber"));
        }
        subscription.check()?;
        if let Some(StartPosition::At(id)) = &subscription.start {
            crate::reply::check_id(id)?;
        }
        let mut conn = self.conn.clone();
        for stream in &subscription.topics {
            ensure_group(
                &mut conn,
                stream,
                &subscription.group,
                subscription.start.as_ref(),
                true,
            )
            .await?;
        }
        let reader = crate::conn::reader(&self.client, &self.settings).await?;
        Ok(Reader::start(
            self.client.clone(),
            reader,
            self.conn.clone(),
            self.settings.clone(),
            subscription,
            self.closed.subscribe(),
        ))
    }

    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(ErrorKind::Connection, "PING", e))?;
        Ok(())
    }

    async fn lag(&self, topics: &[String], group: &str) -> Result<Vec<(String, u64)>> {
        // XINFO GROUPS reports the lag from Redis 7.0 on; older servers (or a stream trimmed
        // past the group) give none.
        let mut conn = self.conn.clone();
        let mut lags = Vec::with_capacity(topics.len());
        for stream in topics {
            let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await
                .map_err(|e| failed(ErrorKind::Subscribe, "XINFO GROUPS", e))?;
            if let Some(lag) = reply
                .groups
                .iter()
                .find(|g| g.name == group)
                .and_then(|g| g.lag)
            {
                lags.push((stream.clone(), lag as u64));
            }
        }
        Ok(lags)
    }
}

/// The group's position as a stream id: entries after it are new to the group.
fn group_position(start: Option<&StartPosition>) -> String {
    match start {
        // A new group reads the history the stream still holds.
        None | Some(StartPosition::Earliest) => "0".to_owned(),
        Some(StartPosition::Latest) => "$".to_owned(),
        // Stream ids are `<milliseconds>-<sequence>`: the last id of the millisecond before.
        Some(StartPosition::Time(t)) => match t.timestamp_millis() {
            ms if ms > 0 => format!("{}-{}", ms - 1, u64::MAX),
            _ => "0".to_owned(),
        },
        Some(StartPosition::At(id)) => id.clone(),
        Some(other) => {
            tracing::warn!(
                ?other,
                "unknown start position; reading from the earliest entry"
            );
            "0".to_owned()
        }
    }
}

/// Creates the group on `stream` (and the stream with it) at the start position. An existing
/// group keeps its position unless `move_existing` is set and a start was asked for.
pub(crate) async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: Option<&StartPosition>,
    move_existing: bool,
) -> Result<()> {
    let position = group_position(start);
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(&position)
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    let result = match created {
        Err(e) if e.code() == Some("BUSYGROUP") => {
            if start.is_some() && move_existing {
                redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(stream)
                    .arg(group)
                    .arg(&position)
                    .query_async(conn)
                    .await
            } else {
                Ok(())
            }
        }
        other => other,
    };
    result.map_err(|e| {
        failed(ErrorKind::Subscribe, "XGROUP", e)
            .with("stream", stream)
            .with("group", group)
            .with("position", position)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn start_positions_become_group_ids() {
        assert_eq!(group_position(None), "0");
        assert_eq!(group_position(Some(&StartPosition::Latest)), "$");
        let t = chrono::Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        assert_eq!(
            group_position(Some(&StartPosition::Time(t))),
            "1700000000122-18446744073709551615"
        );
        assert_eq!(
            group_position(Some(&StartPosition::At("5-1".into()))),
            "5-1"
        );
    }
}
