//! One journal row: an event as one side (the producer, or one consumer group) saw it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventbus::Headers;
use serde_json::Value;

/// Which side recorded the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The producer published it (or failed to).
    Produce,
    /// A consumer group handled it (or did not).
    Consume,
}

impl Side {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Produce => "produce",
            Side::Consume => "consume",
        }
    }
}

/// Where the event stands on its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The broker has it.
    Published,
    /// Publishing failed.
    PublishFailed,
    /// The receivers handled it.
    Handled,
    /// An attempt failed; it is being tried again (in process or by the broker).
    Retried,
    /// It went to the dead-letter topic.
    DeadLettered,
    /// Not handled on purpose (a skip verdict, an unknown type set to be skipped, a duplicate).
    Skipped,
}

impl Status {
    /// Every status, in the order an event meets them.
    pub const ALL: [Status; 6] = [
        Status::Published,
        Status::PublishFailed,
        Status::Handled,
        Status::Retried,
        Status::DeadLettered,
        Status::Skipped,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Published => "published",
            Status::PublishFailed => "publish-failed",
            Status::Handled => "handled",
            Status::Retried => "retried",
            Status::DeadLettered => "dead-lettered",
            Status::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// One row.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Entry {
    /// The CloudEvents id (`ce_id`), or `topic@position` for a message without one.
    pub event_id: String,
    /// Producer or consumer.
    pub side: Side,
    /// The consumer group; empty on the producer side.
    pub group: String,
    /// The CloudEvents type, when the message has one.
    pub event_type: Option<String>,
    /// Full topic name.
    pub topic: String,
    /// The key as text.
    pub key: Option<String>,
    /// The key as it travels (Confluent-framed Avro on Kafka), for re-publishing.
    pub key_bytes: Option<Vec<u8>>,
    /// Where the broker put it.
    pub position: Option<String>,
    /// The CloudEvents source.
    pub source: Option<String>,
    /// The CloudEvents time, as written.
    pub event_time: Option<String>,
    /// The payload, unless it was larger than the journal keeps.
    pub payload: Option<Vec<u8>>,
    /// The payload's size in bytes.
    pub payload_size: i64,
    /// Every header.
    pub headers: Headers,
    /// Where it stands.
    pub status: Status,
    /// Receiver attempts (consumer side) or 1 (producer side).
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// How long the last step took (publishing, or handling).
    pub duration: Option<Duration>,
    /// When the row was first written.
    pub first_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Headers as stored: a JSON list of `[name, value]`, values as text where they are UTF-8 and
/// `{"base16": …}` where they are not, so no byte is lost.
pub(crate) fn headers_to_json(headers: &Headers) -> String {
    // Written straight into the text: a `Value` tree per header cost as much as the bus's
    // whole work on an event.
    let mut out = String::with_capacity(64 * headers.len() + 2);
    out.push('[');
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_string(&mut out, name);
        out.push(',');
        match std::str::from_utf8(value) {
            Ok(text) => push_json_string(&mut out, text),
            Err(_) => {
                out.push_str("{\"base16\":\"");
                out.push_str(&base16(value));
                out.push_str("\"}");
            }
        }
        out.push(']');
    }
    out.push(']');
    out
}

fn push_json_string(out: &mut String, text: &str) {
    // serde_json's own escaping, without building a value.
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

pub(crate) fn headers_from_json(text: &str) -> Headers {
    let mut headers = Headers::new();
    let Ok(Value::Array(list)) = serde_json::from_str::<Value>(text) else {
        return headers;
    };
    for item in list {
        let (Some(name), value) = (item[0].as_str(), &item[1]) else {
            continue;
        };
        match value {
            Value::String(text) => headers.append(name, text.as_bytes()),
            other => {
                if let Some(bytes) = other["base16"].as_str().and_then(from_base16) {
                    headers.append(name, bytes);
                }
            }
        }
    }
    headers
}

fn base16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_base16(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_every_byte() {
        let mut headers = Headers::new();
        headers.append("ce_id", "1234");
        headers.append("binary", [0xff, 0x00, 0x10]);
        headers.append("ce_id", "second");
        let back = headers_from_json(&headers_to_json(&headers));
        assert_eq!(back, headers);
    }

    #[test]
    fn statuses_read_back() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert!("lost".parse::<Status>().is_err());
    }
}
