//! Event keys on the wire.
//!
//! Most formats write a key as its UTF-8 text. The Confluent framing writes it as edx-event-bus-kafka
//! does, through confluent-kafka's `AvroSerializer`: the key field's definition from the event
//! schema is the key schema (JSON with sorted keys, `{"name": "id", "type": "long"}` for
//! `user.id`), registered under `<topic>-<type name>` (`dev-user-login-long`), and the key bytes
//! are the Confluent frame around the Avro datum (`00 00 00 00 01 54` for id 42 when the key schema
//! has id 1). A Python and a Rust producer then give one key the same bytes, hence the same
//! partition, and per-key order holds on a shared topic.

use apache_avro::types::Value;
use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::event::EventSchema;

/// The schema of an event's key field, as the Confluent key framing registers it.
#[derive(Debug, Clone)]
pub struct KeySchema {
    schema: EventSchema,
    type_name: String,
}

impl KeySchema {
    /// The key schema of the field at the dotted `path` (`user.id`) of `event`, found the way
    /// edx-event-bus-kafka descends the schema: into a record's fields, through a field's `type`.
    pub fn of(event: &EventSchema, path: &str) -> Result<Self> {
        let fail =
            |why: &str| Error::new(ErrorKind::Config, why.to_owned()).with("event_key_field", path);
        let root: Json = serde_json::from_str(event.json())
            .map_err(|e| fail("the event schema is not JSON").with_source(e))?;
        let mut at = &root;
        for name in path.split('.') {
            if at.get("fields").is_none() {
                at = at.get("type").unwrap_or(&Json::Null);
            }
            let fields = at.get("fields").and_then(Json::as_array).ok_or_else(|| {
                fail("the key path goes through a field that is not a record").with("at", name)
            })?;
            at = fields
                .iter()
                .find(|f| f.get("name").and_then(Json::as_str) == Some(name))
                .ok_or_else(|| {
                    fail("the event schema has no field at the key path").with("at", name)
                })?;
        }
        let type_name = match at.get("type") {
            Some(Json::String(t)) if PRIMITIVES.contains(&t.as_str()) => t.clone(),
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "a Confluent-framed key must be a field of a primitive Avro type (long, string, …), as edx-event-bus-kafka requires; key by another field",
                )
                .with("event_key_field", path)
                .with("type", other.map(Json::to_string).unwrap_or_default()))
            }
        };
        let schema = EventSchema::parse(&python_json(at))?;
        Ok(Self { schema, type_name })
    }

    /// The key schema as registered: Python's `json.dumps(field, sort_keys=True)`.
    pub fn json(&self) -> &str {
        self.schema.json()
    }

    /// The schema, for registering it.
    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    /// The subject it is registered under for `topic`: `<topic>-<type name>`, since
    /// confluent-kafka names a primitive schema by its type.
    pub fn subject(&self, topic: &str) -> String {
        format!("{topic}-{}", self.type_name)
    }

    /// The Avro datum of the key whose text is `key` (`42`, `course-v1:edX+A+B`).
    pub fn encode_datum(&self, key: &str) -> Result<Vec<u8>> {
        let bad = || {
            Error::new(
                ErrorKind::Serialize,
                "the key's text does not fit its field's Avro type",
            )
            .with("type", &self.type_name)
            .with("key", key)
        };
        let value = match self.type_name.as_str() {
            "string" => Value::String(key.to_owned()),
            "long" => Value::Long(key.parse().map_err(|_| bad())?),
            "int" => Value::Int(key.parse().map_err(|_| bad())?),
            "boolean" => Value::Boolean(key.parse().map_err(|_| bad())?),
            "double" => Value::Double(key.parse().map_err(|_| bad())?),
            "float" => Value::Float(key.parse().map_err(|_| bad())?),
            "bytes" => Value::Bytes(key.as_bytes().to_vec()),
            _ => return Err(bad()),
        };
        apache_avro::to_avro_datum(self.schema.avro(), value).map_err(|e| bad().with_source(e))
    }
}

const PRIMITIVES: &[&str] = &[
    "string", "long", "int", "boolean", "double", "float", "bytes",
];

/// A key datum written with the primitive schema `schema`, as text.
pub(crate) fn decode_key_datum(schema: &EventSchema, mut datum: &[u8]) -> Result<String> {
    let invalid = || {
        Error::new(
            ErrorKind::Deserialize,
            "the key is not valid Avro for its schema",
        )
        .with("schema", schema.json())
    };
    // The schema comes from the id in the key: any schema of the registry, not only a primitive.
    // Lengths and counts are checked before apache-avro allocates by them.
    super::avro_decode::check_datum(schema.avro(), datum).map_err(|e| invalid().with_source(e))?;
    let value = apache_avro::from_avro_datum(schema.avro(), &mut datum, None)
        .map_err(|e| invalid().with_source(e))?;
    Ok(match value {
        Value::String(s) => s,
        Value::Long(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Double(x) => x.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        other => {
            return Err(Error::new(
                ErrorKind::Deserialize,
                "the key's schema is not a primitive type",
            )
            .with("value", format!("{other:?}")))
        }
    })
}

/// JSON as Python's `json.dumps(value, sort_keys=True)` writes it: `", "` and `": "` between
/// items, keys sorted, non-ASCII escaped.
pub fn python_json(value: &Json) -> String {
    let mut out = String::new();
    write_python_json(value, &mut out);
    out
}

fn write_python_json(value: &Json, out: &mut String) {
    match value {
        Json::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_string(k, out);
                out.push_str(": ");
                write_python_json(v, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(v, out);
            }
            out.push(']');
        }
        Json::String(s) => write_python_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_python_string(s: &str, out: &mut String) {
    // serde_json escapes quotes, backslashes and control characters as Python does; Python's
    // `ensure_ascii` also escapes everything past ASCII, as UTF-16 units.
    for c in Json::String(s.to_owned()).to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login_schema() -> EventSchema {
        EventSchema::parse(
            r#"{"type": "record", "name": "CloudEvent", "namespace": "org.openedx.learning.auth.session.login.completed.v1",
                "fields": [{"name": "user", "type": {"type": "record", "name": "UserData", "fields": [
                    {"name": "id", "type": "long"},
                    {"name": "is_active", "type": "boolean"},
                    {"name": "pii", "type": {"type": "record", "name": "UserPersonalData", "fields": [
                        {"name": "username", "type": "string"}]}}]}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_key_schema_is_the_field_definition_as_python_writes_it() {
        let key = KeySchema::of(&login_schema(), "user.id").unwrap();
        assert_eq!(key.json(), r#"{"name": "id", "type": "long"}"#);
        assert_eq!(key.subject("dev-user-login"), "dev-user-login-long");
        let nested = KeySchema::of(&login_schema(), "user.pii.username").unwrap();
        assert_eq!(nested.json(), r#"{"name": "username", "type": "string"}"#);
        assert_eq!(nested.subject("t"), "t-string");
    }

    #[test]
    fn key_datums_follow_the_avro_specification() {
        let id = KeySchema::of(&login_schema(), "user.id").unwrap();
        // long: zig-zag, then base-128 varint: 42 -> 84 = 0x54; -1 -> 1; 64 -> 128 = 0x80 0x01.
        assert_eq!(id.encode_datum("42").unwrap(), [0x54]);
        assert_eq!(id.encode_datum("-1").unwrap(), [0x01]);
        assert_eq!(id.encode_datum("64").unwrap(), [0x80, 0x01]);
        assert_eq!(decode_key_datum(id.schema(), &[0x54]).unwrap(), "42");
        // string: the byte length as a long, then the UTF-8 bytes.
        let name = KeySchema::of(&login_schema(), "user.pii.username").unwrap();
        assert_eq!(name.encode_datum("ab").unwrap(), [0x04, b'a', b'b']);
        let err = id.encode_datum("forty-two").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialize);
    }

    /// Issue 15 (fuzzing): a key's schema id may name any schema of the registry; a key datum
    /// with a forged array count made apache-avro reserve tens of gigabytes and abort.
    #[test]
    fn a_key_with_a_forged_count_is_an_error() {
        let tags = EventSchema::parse(
            r#"{"type": "record", "name": "K", "fields": [{"name": "tags", "type": {"type": "array", "items": "string"}}]}"#,
        )
        .unwrap();
        let err = decode_key_datum(&tags, &[0xfe, 0xff, 0xff, 0xff, 0x0f, 2, b'a']).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize);
        assert!(err.to_string().contains("cannot fit"), "{err:?}");
    }

    #[test]
    fn a_key_path_that_is_not_a_primitive_field_is_refused_with_the_path() {
        let err = KeySchema::of(&login_schema(), "user").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("event_key_field: user"), "{err}");
        let err = KeySchema::of(&login_schema(), "user.nope").unwrap_err();
        assert!(err.to_string().contains("at: nope"), "{err}");
    }

    #[test]
    fn python_json_sorts_keys_and_escapes_like_json_dumps() {
        let v: Json =
            serde_json::from_str(r#"{"type": "string", "name": "café", "doc": [1, "a\"b"]}"#)
                .unwrap();
        assert_eq!(
            python_json(&v),
            r#"{"doc": [1, "a\"b"], "name": "caf\u00e9", "type": "string"}"#
        );
    }
}
