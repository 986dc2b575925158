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

/// The pipeline that appends `batch` to `stream`: one `XADD` per message.
///
/// Each command is sized before it is written: `redis::cmd` starts from empty buffers that grew
/// four or five times per message, which was most of the client's work per published entry
/// (about 5,000 of 7,300 instructions, BENCHMARKS.md).
pub fn append_pipeline(stream: &str, batch: &[Message], max_len: usize) -> Result<redis::Pipeline> {
    let mut pipe = redis::Pipeline::with_capacity(batch.len());
    // `XADD <stream> [MAXLEN ~ <n>] *`: the arguments and bytes before the fields.
    let (head_args, head_bytes) = if max_len > 0 {
        (6, "XADDMAXLEN~*".len() + stream.len() + 20)
    } else {
        (3, "XADD*".len() + stream.len())
    };
    for message in batch {
        let fields = entry::to_fields(message)?;
        let bytes = fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(head_args + 2 * fields.len(), head_bytes + bytes);
        cmd.arg("XADD").arg(stream);
        if max_len > 0 {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*");
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
        pipe.add_command(cmd);
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

#[cfg(test)]
mod tests {
    use super::*;
    use eventbus_core::Headers;

    /// The same commands, byte for byte, as building each with `redis::cmd` and no sizes.
    #[test]
    fn sized_commands_write_the_same_bytes() {
        let mut headers = Headers::new();
        headers.insert(
            "ce_type",
            "org.openedx.learning.auth.session.login.completed.v1",
        );
        headers.insert("ce_id", "5e0bd1a6-7b40-11ee-b962-0242ac120002");
        headers.insert("x_custom", "a header of its own");
        let keyed = Message {
            key: Some("user-7".into()),
            payload: vec![0u8, 1, 2, 255].into(),
            headers,
        };
        let bare = Message {
            payload: "{}".into(),
            ..Message::default()
        };
        let batch = [keyed, bare];
        for max_len in [0, 1_000_000] {
            let mut expected = redis::pipe();
            for message in &batch {
                let cmd = expected.cmd("XADD").arg("events");
                if max_len > 0 {
                    cmd.arg("MAXLEN").arg("~").arg(max_len);
                }
                cmd.arg("*");
                for (field, value) in entry::to_fields(message).expect("fields") {
                    cmd.arg(field).arg(value);
                }
            }
            let sized = append_pipeline("events", &batch, max_len).expect("pipeline");
            assert_eq!(
                sized.get_packed_pipeline(),
                expected.get_packed_pipeline(),
                "max_len {max_len}"
            );
        }
    }
}
