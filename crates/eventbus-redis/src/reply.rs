//! Stream entries read straight from Redis replies.
//!
//! The `redis` crate's typed stream replies collect each entry's fields into a `HashMap` of
//! `Value`s, which loses the field order and costs a map per entry. Reading the reply ourselves
//! keeps the order Redis stores (the order the producer wrote) and moves the bytes without
//! copying them.

use eventbus_core::{Error, ErrorKind, Result};
use redis::{FromRedisValue, ParsingError, Value};

/// One stream entry: its id and its fields in stored order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The entries of an `XREADGROUP` reply, by stream; empty when the read timed out.
#[derive(Debug, Default)]
pub(crate) struct ReadReply(pub(crate) Vec<(String, Vec<Entry>)>);

/// The entries of an `XCLAIM` reply.
#[derive(Debug, Default)]
pub(crate) struct ClaimReply(pub(crate) Vec<Entry>);

/// An `XAUTOCLAIM` reply: where to go on, what was claimed, and ids that were pending but are no
/// longer in the stream (trimmed), which Redis dropped from the pending list.
#[derive(Debug, Default)]
pub(crate) struct AutoClaimReply {
    pub(crate) cursor: String,
    pub(crate) claimed: Vec<Entry>,
    pub(crate) deleted: Vec<String>,
}

fn bad(what: &str, value: &Value) -> ParsingError {
    format!("unexpected Redis reply for {what}: {value:?}").into()
}

fn text(v: Value, what: &str) -> std::result::Result<String, ParsingError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| "stream id is not UTF-8".into()),
        Value::SimpleString(s) => Ok(s),
        other => Err(bad(what, &other)),
    }
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn array(v: Value, what: &str) -> std::result::Result<Vec<Value>, ParsingError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad(what, &other)),
    }
}

/// `[id, [field, value, …]]`; `None` for an entry deleted while pending (`[id, nil]`).
fn entry(v: Value) -> std::result::Result<Option<Entry>, ParsingError> {
    let mut parts = array(v, "a stream entry")?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err("a stream entry without id or fields".into());
    };
    let id = text(id, "a stream id")?;
    let flat = match fields {
        Value::Nil => return Ok(None),
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => array(other, "stream entry fields")?,
    };
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        fields.push((bytes(name), bytes(value)));
    }
    Ok(Some(Entry { id, fields }))
}

fn entries(v: Value) -> std::result::Result<Vec<Entry>, ParsingError> {
    let mut out = Vec::new();
    for item in array(v, "stream entries")? {
        out.extend(entry(item)?);
    }
    Ok(out)
}

impl FromRedisValue for ReadReply {
    fn from_redis_value(v: Value) -> std::result::Result<Self, ParsingError> {
        // RESP2 answers `[[stream, entries], …]`; RESP3 a map from stream to entries.
        let pairs: Vec<(Value, Value)> = match v {
            Value::Map(pairs) => pairs,
            other => array(other, "XREADGROUP")?
                .into_iter()
                .map(|pair| {
                    let mut pair = array(pair, "XREADGROUP")?.into_iter();
                    match (pair.next(), pair.next()) {
                        (Some(k), Some(v)) => Ok((k, v)),
                        _ => Err("XREADGROUP reply without stream or entries".into()),
                    }
                })
                .collect::<std::result::Result<_, ParsingError>>()?,
        };
        pairs
            .into_iter()
            .map(|(stream, list)| Ok((text(stream, "a stream name")?, entries(list)?)))
            .collect::<std::result::Result<_, _>>()
            .map(ReadReply)
    }
}

impl FromRedisValue for ClaimReply {
    fn from_redis_value(v: Value) -> std::result::Result<Self, ParsingError> {
        entries(v).map(ClaimReply)
    }
}

impl FromRedisValue for AutoClaimReply {
    fn from_redis_value(v: Value) -> std::result::Result<Self, ParsingError> {
        let mut parts = array(v, "XAUTOCLAIM")?.into_iter();
        let cursor = text(parts.next().unwrap_or(Value::Nil), "the XAUTOCLAIM cursor")?;
        let claimed = entries(parts.next().unwrap_or(Value::Nil))?;
        let deleted = array(parts.next().unwrap_or(Value::Nil), "XAUTOCLAIM deleted ids")?
            .into_iter()
            .map(|id| text(id, "a stream id"))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self {
            cursor,
            claimed,
            deleted,
        })
    }
}

/// Entries sorted by id, oldest first.
pub(crate) fn oldest_first(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by_key(|e| split_id(&e.id));
    entries
}

/// A stream id's milliseconds and sequence number.
pub(crate) fn split_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Checks that a position given by the user is a stream id, before Redis sees it.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let valid = ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok();
    if valid || id == "$" {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            "a Redis start position must be a stream id such as 1700000000000-0, or $",
        )
        .with("position", id))
    }
}

/// Entry points for the fuzz targets of `crates/eventbus-fuzz` only (issue 15): they run a reply
/// through the same conversions the reader applies, and exist so that the crate-private parsers
/// can be fuzzed. Not an API; re-exported hidden as `eventbus_redis::__fuzz`.
pub(crate) mod fuzz {
    use eventbus_core::Message;
    use redis::{FromRedisValue, Value};

    use super::{oldest_first, AutoClaimReply, ClaimReply, Entry, ReadReply};
    use crate::entry::from_fields;

    /// A stream entry as the reader hands it on: its id and its message.
    pub type Delivered = (String, Message);

    fn messages(stream: &str, entries: Vec<Entry>) -> Vec<Delivered> {
        entries
            .into_iter()
            .map(|e| {
                let message = from_fields(stream, &e.id, e.fields);
                (e.id, message)
            })
            .collect()
    }

    /// An `XREADGROUP` reply: the messages of each stream.
    pub fn read_reply(v: Value) -> Result<Vec<(String, Vec<Delivered>)>, String> {
        let ReadReply(streams) = ReadReply::from_redis_value(v).map_err(|e| e.to_string())?;
        Ok(streams
            .into_iter()
            .map(|(stream, entries)| {
                let delivered = messages(&stream, entries);
                (stream, delivered)
            })
            .collect())
    }

    /// An `XCLAIM` reply: the claimed messages, oldest first.
    pub fn claim_reply(stream: &str, v: Value) -> Result<Vec<Delivered>, String> {
        let ClaimReply(entries) = ClaimReply::from_redis_value(v).map_err(|e| e.to_string())?;
        Ok(messages(stream, oldest_first(entries)))
    }

    /// An `XAUTOCLAIM` reply: the cursor, the claimed messages oldest first, the deleted ids.
    pub fn autoclaim_reply(
        stream: &str,
        v: Value,
    ) -> Result<(String, Vec<Delivered>, Vec<String>), String> {
        let reply = AutoClaimReply::from_redis_value(v).map_err(|e| e.to_string())?;
        let claimed = messages(stream, oldest_first(reply.claimed));
        Ok((reply.cursor, claimed, reply.deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn raw_entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn read_replies_keep_field_order_in_both_protocols() {
        let entries = Value::Array(vec![raw_entry("2-0", &["type", "t", "event_data", "x"])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        for v in [resp2, resp3] {
            let ReadReply(streams) = ReadReply::from_redis_value(v).unwrap();
            let (stream, got) = &streams[0];
            assert_eq!(stream, "s");
            let names: Vec<&[u8]> = got[0].fields.iter().map(|(n, _)| n.as_slice()).collect();
            assert_eq!(names, [b"type".as_slice(), b"event_data"]);
        }
        assert!(ReadReply::from_redis_value(Value::Nil)
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn autoclaim_replies_skip_deleted_entries_and_list_them() {
        let v = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![
                raw_entry("1-0", &["event_data", "a"]),
                Value::Array(vec![bulk("1-1"), Value::Nil]),
            ]),
            Value::Array(vec![bulk("1-2")]),
        ]);
        let reply = AutoClaimReply::from_redis_value(v).unwrap();
        assert_eq!(reply.cursor, "0-0");
        assert_eq!(reply.claimed.len(), 1);
        assert_eq!(reply.deleted, ["1-2"]);
    }

    #[test]
    fn ids_sort_numerically_and_user_ids_are_checked() {
        let e = |id: &str| Entry {
            id: id.into(),
            ..Entry::default()
        };
        let ids: Vec<String> = oldest_first(vec![e("10-2"), e("9-5"), e("10-10")])
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["9-5", "10-2", "10-10"]);
        assert!(check_id("1700000000000-3").is_ok());
        assert!(check_id("1700000000000").is_ok());
        assert!(check_id("$").is_ok());
        let err = check_id("yesterday").unwrap_err();
        assert!(err.to_string().contains("yesterday"), "{err}");
    }
}
