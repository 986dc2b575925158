//! How a message is laid out as a stream entry, field by field, as Open edX's
//! `edx-event-bus-redis` writes it.
//!
//! | entry field | message part |
//! |---|---|
//! | `type`, `id`, `source`, `time`, `minorversion` | headers `ce_type`, `ce_id`, `ce_source`, `ce_time`, `ce_minorversion` |
//! | `sourcehost`, `sourcelib` | headers of the same names |
//! | `event_data` | the payload (schemaless Avro for events) |
//! | `key` | the message key, only when there is one (Open edX's consumer ignores it) |
//! | any other name | a header of that name, only when the message has it |
//!
//! Open edX's entries carry no spec version and no content type: the format fixes them at
//! CloudEvents `1.0` and Avro. Headers with exactly those values are therefore left out, and put
//! back when an entry with a `type` is read, so an event published here and read here has the
//! same headers while the entry has exactly Open edX's fields.

use eventbus_core::metadata::header;
use eventbus_core::{Error, ErrorKind, Headers, Message, Result};

/// Entry field ↔ header, for the attributes Open edX stores under their own names.
const RENAMED: &[(&str, &str)] = &[
    ("type", header::TYPE),
    ("id", header::ID),
    ("source", header::SOURCE),
    ("time", header::TIME),
    ("minorversion", header::MINOR_VERSION),
];
/// The payload's field.
pub(crate) const EVENT_DATA: &str = "event_data";
/// The key's field.
const KEY: &str = "key";
/// Headers the Redis format implies, with the values it implies.
const IMPLIED: &[(&str, &str)] = &[
    (header::SPEC_VERSION, "1.0"),
    (header::CONTENT_TYPE, "application/avro"),
    (header::DATA_CONTENT_TYPE, "application/avro"),
];

fn field_for(header_name: &str) -> &str {
    RENAMED
        .iter()
        .find(|(_, h)| *h == header_name)
        .map_or(header_name, |(f, _)| f)
}

/// The entry's fields, in Open edX's order, then the key and any other headers.
pub(crate) fn to_fields(message: &Message) -> Result<Vec<(&str, &[u8])>> {
    let mut fields: Vec<(&str, &[u8])> = Vec::with_capacity(message.headers.len() + 2);
    for (name, value) in message.headers.iter() {
        if IMPLIED
            .iter()
            .any(|(n, v)| *n == name && v.as_bytes() == value)
        {
            continue;
        }
        let field = field_for(name);
        // A header called `type` would land in the field that carries `ce_type`, and one called
        // `event_data` would overwrite the payload: refuse rather than write a lie.
        let reserved = field == EVENT_DATA
            || field == KEY
            || (field == name && RENAMED.iter().any(|(f, _)| *f == name));
        if reserved {
            return Err(Error::new(
                ErrorKind::InvalidHeaders,
                "the header's name is an entry field of the Redis format; rename the header",
            )
            .with("header", name));
        }
        fields.push((field, value));
    }
    if let Some(key) = &message.key {
        fields.push((KEY, key));
    }
    fields.push((EVENT_DATA, &message.payload));
    Ok(fields)
}

/// The message an entry holds, from its fields in stored order.
///
/// Never fails: an entry that cannot be an event must still reach the consumer, whose policy
/// sends it to the dead-letter topic rather than lose it. Values, the key and the payload are
/// kept as bytes; a field name that is not UTF-8 is read lossily and logged.
pub(crate) fn from_fields(stream: &str, id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Message {
    let mut message = Message::default();
    let mut headers = Headers::new();
    let mut is_event = false;
    for (field, value) in fields {
        if field == EVENT_DATA.as_bytes() {
            message.payload = value.into();
            continue;
        }
        let field = utf8(stream, id, "a field name", field);
        if field == KEY {
            message.key = Some(value.into());
        } else {
            is_event |= field == "type";
            // The reply's own buffers become the values: no copy per header.
            match RENAMED.iter().find(|(f, _)| *f == field) {
                Some((_, header)) => headers.append_bytes(*header, value.into()),
                None => headers.append_bytes(field, value.into()),
            }
        }
    }
    if is_event {
        for (name, value) in IMPLIED {
            if headers.get(name).is_none() {
                headers.append_bytes(*name, bytes::Bytes::from_static(value.as_bytes()));
            }
        }
    }
    message.headers = headers;
    message
}

fn utf8(stream: &str, id: &str, what: &str, bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| {
        tracing::warn!(
            stream,
            id,
            what,
            "stream entry text is not UTF-8; read lossily"
        );
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_message() -> Message {
        let mut headers = Headers::new();
        for (name, value) in [
            (header::ID, "4a2f8b2e-7d0c-4f55-9c3e-6d1f0c1e2a3b"),
            (
                header::TYPE,
                "org.openedx.learning.auth.session.login.completed.v1",
            ),
            (header::SOURCE, "openedx/lms/web"),
            (header::SPEC_VERSION, "1.0"),
            (header::TIME, "2026-11-22T05:20:27.505586+00:00"),
            (header::MINOR_VERSION, "0"),
            (header::SOURCE_HOST, "web-1"),
            (header::SOURCE_LIB, "10.5.0"),
            (header::CONTENT_TYPE, "application/avro"),
            (header::DATA_CONTENT_TYPE, "application/avro"),
        ] {
            headers.insert(name, value);
        }
        Message {
            key: None,
            payload: vec![2, 0, 255].into(),
            headers,
        }
    }

    fn stored(fields: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn an_event_has_exactly_open_edx_fields_and_reads_back_the_same() {
        let message = event_message();
        let fields = to_fields(&message).unwrap();
        let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            names,
            [
                "id",
                "type",
                "source",
                "time",
                "minorversion",
                "sourcehost",
                "sourcelib",
                "event_data"
            ]
        );
        let back = from_fields("s", "1-0", stored(&fields));
        assert_eq!(back.payload, message.payload);
        assert_eq!(back.key, None);
        let mut want: Vec<_> = message.headers.iter().collect();
        let mut got: Vec<_> = back.headers.iter().collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn keys_and_other_headers_travel_in_fields_of_their_own() {
        let mut message = Message {
            key: Some("user-7".into()),
            payload: b"raw".to_vec().into(),
            headers: Headers::new(),
        };
        message.headers.insert("dlq_reason", "poison");
        message
            .headers
            .insert(header::CONTENT_TYPE, "application/json");
        let back = from_fields("s", "1-0", stored(&to_fields(&message).unwrap()));
        assert_eq!(back.key.as_deref(), Some(&b"user-7"[..]));
        assert_eq!(back.headers.get("dlq_reason"), Some("poison"));
        assert_eq!(
            back.headers.get(header::CONTENT_TYPE),
            Some("application/json")
        );
        // Not an event (no `type`): nothing implied is added.
        assert_eq!(back.headers.get(header::SPEC_VERSION), None);
    }

    #[test]
    fn headers_named_like_entry_fields_are_refused() {
        for name in ["type", "event_data", "key", "minorversion"] {
            let mut message = Message::default();
            message.headers.insert(name, "x");
            let err = to_fields(&message).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidHeaders, "{name}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn binary_values_and_keys_are_kept_byte_for_byte() {
        let fields = vec![
            (b"type".to_vec(), vec![b'a', 0xff]),
            (b"key".to_vec(), vec![0x00, 0xff]),
            (EVENT_DATA.as_bytes().to_vec(), vec![0xff]),
        ];
        let message = from_fields("s", "1-0", fields);
        assert_eq!(
            message.headers.get_bytes(header::TYPE),
            Some(&[b'a', 0xff][..])
        );
        assert_eq!(message.headers.get(header::TYPE), None, "not text");
        assert_eq!(message.key.as_deref(), Some(&[0x00, 0xff][..]));
        assert_eq!(&message.payload[..], &[0xff]);
        let again = from_fields("s", "1-0", stored(&to_fields(&message).unwrap()));
        assert_eq!(again, message);
    }
}
