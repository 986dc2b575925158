//! Publishing: one pipelined `XADD … MAXLEN ~ N` per message, one round trip per batch.

use async_trait::async_trait;
use eventbus_core::transport::PublishGate;
use eventbus_core::{ErrorKind, Message, Position, Publisher, Result};
use redis::aio::ConnectionManager;

use crate::conn::failed;
use crate::entry;

/// Appends messages to streams.
#[derive(Debug)]
pub(crate) struct RedisPublisher {
    conn: ConnectionManager,
    max_len: usize,
    gate: PublishGate,
}

impl RedisPublisher {
    pub(crate) fn new(conn: ConnectionManager, max_len: usize) -> Self {
        Self {
            conn,
            max_len,
            gate: PublishGate::new(),
        }
    }
}

/// The pipeline that appends `batch` to `stream`; also what the benchmark's raw client sends.
pub fn append_pipeline(stream: &str, batch: &[Message], max_len: usize) -> Result<redis::Pipeline> {
    let mut pipe = redis::pipe();
    for message in batch {
        let cmd = pipe.cmd("XADD").arg(stream);
        if max_len > 0 {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*");
        for (field, value) in entry::to_fields(message)? {
            cmd.arg(field).arg(value);
        }
    }
    Ok(pipe)
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, topic: &str, batch: Vec<Message>) -> Result<Vec<Position>> {
        let _admitted = self.gate.enter("Redis publisher", topic).await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = append_pipeline(topic, &batch, self.max_len)?;
        let ids: Vec<String> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| failed(ErrorKind::Publish, "XADD", e).with("stream", topic))?;
        Ok(ids.into_iter().map(Position::StreamId).collect())
    }

    async fn flush(&self) -> Result<()> {
        // Each publish returns only once Redis has answered; waiting for those in flight is all.
        self.gate.drain().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        Ok(())
    }
}
