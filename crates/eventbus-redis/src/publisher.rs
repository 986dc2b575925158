//! Publishing: one pipelined `XADD … MAXLEN ~ N` per message, one round trip per batch.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use eventbus_core::transport::closed_error;
use eventbus_core::{ErrorKind, Message, Position, Publisher, Result};
use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use crate::conn::failed;
use crate::entry;

/// Appends messages to streams.
#[derive(Debug)]
pub(crate) struct RedisPublisher {
    conn: ConnectionManager,
    max_len: usize,
    closed: AtomicBool,
    /// Held shared by every publish in flight; close takes it exclusively, so it returns only
    /// after every accepted publish has its answer.
    in_flight: RwLock<()>,
}

impl RedisPublisher {
    pub(crate) fn new(conn: ConnectionManager, max_len: usize) -> Self {
        Self {
            conn,
            max_len,
            closed: AtomicBool::new(false),
            in_flight: RwLock::new(()),
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
        let _guard = self.in_flight.read().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error("Redis publisher").with("topic", topic));
        }
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
        drop(self.in_flight.write().await);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.flush().await
    }
}
