//! A message as Pulsar carries it, and back.
//!
//! | message part | Pulsar |
//! |---|---|
//! | headers | properties (a map: a header name may appear once) |
//! | key, UTF-8 text | `partition_key`, which Key_Shared groups order by |
//! | key, other bytes | `partition_key` in Base64 with `partition_key_b64_encoded`, as Pulsar's Java client writes `keyBytes` |
//! | header value that is not UTF-8 | the property in Base64, its name listed in the property [`BINARY_PROPERTIES`] |
//!
//! Events carry text only (Open edX's attributes and keys), so their messages use neither
//! Base64 form and stay exactly as Open edX's Pulsar mapping expects.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use eventbus_core::{Error, ErrorKind, Headers, Message, Result};
use pulsar::producer::Message as PulsarMessage;
use pulsar::proto::MessageMetadata;

/// The property that lists, as a JSON array, the properties whose values are Base64 bytes.
pub const BINARY_PROPERTIES: &str = "eventbus-binary-properties";

/// The Pulsar message of `message`.
pub fn to_pulsar(message: Message) -> Result<PulsarMessage> {
    let mut properties = HashMap::with_capacity(message.headers.len());
    let mut binary = Vec::new();
    for (name, value) in message.headers.iter() {
        if name == BINARY_PROPERTIES {
            return Err(Error::new(
                ErrorKind::InvalidHeaders,
                "the header's name is reserved by the Pulsar mapping; rename the header",
            )
            .with("header", name));
        }
        let text = match std::str::from_utf8(value) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                binary.push(name);
                BASE64.encode(value)
            }
        };
        if properties.insert(name.to_owned(), text).is_some() {
            return Err(Error::new(
                ErrorKind::InvalidHeaders,
                "Pulsar message properties are a map: a header name may appear only once",
            )
            .with("header", name));
        }
    }
    if !binary.is_empty() {
        let names = serde_json::to_string(&binary).unwrap_or_default();
        properties.insert(BINARY_PROPERTIES.to_owned(), names);
    }
    let (partition_key, partition_key_b64_encoded) = match message.key {
        None => (None, None),
        Some(key) => match String::from_utf8(key.to_vec()) {
            Ok(text) => (Some(text), None),
            Err(_) => (Some(BASE64.encode(&key)), Some(true)),
        },
    };
    Ok(PulsarMessage {
        payload: message.payload.to_vec(),
        properties,
        partition_key,
        partition_key_b64_encoded,
        ..PulsarMessage::default()
    })
}

/// The message of a Pulsar message's metadata and payload. Never fails: a property that claims
/// to be Base64 and is not is kept as it came, for the consumer's policy to judge.
pub fn from_pulsar(metadata: MessageMetadata, payload: Vec<u8>) -> Message {
    let mut binary: Vec<String> = Vec::new();
    let mut properties = Vec::with_capacity(metadata.properties.len());
    for p in metadata.properties {
        if p.key == BINARY_PROPERTIES {
            binary = serde_json::from_str(&p.value).unwrap_or_default();
        } else {
            properties.push((p.key, p.value));
        }
    }
    let headers: Headers = properties
        .into_iter()
        .map(|(name, value)| {
            let bytes = if binary.contains(&name) {
                BASE64.decode(&value).unwrap_or_else(|_| value.into_bytes())
            } else {
                value.into_bytes()
            };
            (name, bytes)
        })
        .collect();
    let key = metadata.partition_key.map(|key| {
        if metadata.partition_key_b64_encoded == Some(true) {
            BASE64.decode(&key).unwrap_or_else(|_| key.into_bytes())
        } else {
            key.into_bytes()
        }
    });
    Message {
        key: key.map(Into::into),
        payload: payload.into(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::proto::KeyValue;

    fn metadata_of(m: &PulsarMessage) -> MessageMetadata {
        MessageMetadata {
            properties: m
                .properties
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            partition_key: m.partition_key.clone(),
            partition_key_b64_encoded: m.partition_key_b64_encoded,
            ..MessageMetadata::default()
        }
    }

    #[test]
    fn text_keys_and_properties_are_written_as_they_are() {
        let mut message = Message {
            key: Some("user-7".into()),
            ..Message::default()
        };
        message.headers.insert("ce_type", "org.example.a.v1");
        let pulsar = to_pulsar(message).unwrap();
        assert_eq!(pulsar.partition_key.as_deref(), Some("user-7"));
        assert_eq!(pulsar.partition_key_b64_encoded, None);
        assert_eq!(pulsar.properties.len(), 1);
        assert_eq!(pulsar.properties["ce_type"], "org.example.a.v1");
    }

    #[test]
    fn binary_keys_and_values_travel_in_base64_and_read_back_unchanged() {
        let mut message = Message {
            key: Some(vec![0x00, 0xff, b'k'].into()),
            payload: vec![1, 2].into(),
            ..Message::default()
        };
        message.headers.insert("bin", [0xfe, 0x00]);
        message.headers.insert("text", "plain");
        let pulsar = to_pulsar(message.clone()).unwrap();
        assert_eq!(pulsar.partition_key.as_deref(), Some("AP9r"));
        assert_eq!(pulsar.partition_key_b64_encoded, Some(true));
        assert_eq!(pulsar.properties["bin"], "/gA=");
        assert_eq!(pulsar.properties[BINARY_PROPERTIES], r#"["bin"]"#);
        let back = from_pulsar(metadata_of(&pulsar), pulsar.payload.clone());
        assert_eq!(back.key, message.key);
        assert_eq!(back.headers.get_bytes("bin"), Some(&[0xfe, 0x00][..]));
        assert_eq!(back.headers.get("text"), Some("plain"));
        assert_eq!(back.headers.len(), 2);
    }

    #[test]
    fn repeated_and_reserved_header_names_are_refused() {
        let mut repeated = Message::default();
        repeated.headers.append("a", "1");
        repeated.headers.append("a", "2");
        let err = to_pulsar(repeated).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidHeaders);
        let mut reserved = Message::default();
        reserved.headers.insert(BINARY_PROPERTIES, "[]");
        assert!(to_pulsar(reserved)
            .unwrap_err()
            .to_string()
            .contains(BINARY_PROPERTIES));
    }
}
