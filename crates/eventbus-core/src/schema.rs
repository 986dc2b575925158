//! Avro schemas derived from Rust types, following the Open edX mapping.
//!
//! | Rust | Avro |
//! |---|---|
//! | `bool` | `boolean` |
//! | integers | `long` |
//! | `f32`, `f64` | `double` |
//! | `String`, `Uuid`, `DateTime<Utc>`, `NaiveDate` | `string` |
//! | a struct with `#[derive(AvroRecord)]` | `record`, named once, then by name |
//! | `Vec<T>` | `array` |
//! | `HashMap<String, T>`, `BTreeMap<String, T>` | `map` |
//! | `Option<T>` | `["null", T]` with default `null` |
//!
//! UUIDs and timestamps travel as strings, as Open edX writes them. `Vec<u8>` is an array of
//! longs under this mapping; wrap bytes in [`Bytes`] to get the Avro `bytes` type.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

/// Collects the names of records already written into a schema, so that a record used twice
/// is defined once and referred to by name afterwards, as Avro requires.
#[derive(Debug, Default)]
pub struct SchemaBuilder {
    defined: HashSet<String>,
}

impl SchemaBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `name` as defined; returns `false` when it already was, in which case the caller
    /// must refer to the record by name instead of defining it again.
    pub fn define(&mut self, name: &str) -> bool {
        self.defined.insert(name.to_owned())
    }
}

/// A Rust type with an Avro schema. Implemented for the standard types of the mapping above and
/// derived for records with `#[derive(AvroRecord)]`.
pub trait AvroType {
    /// Whether a field of this type may be absent, in which case the field gets `"default": null`.
    const NULLABLE: bool = false;

    /// The Avro schema of the type as JSON.
    fn avro_schema(builder: &mut SchemaBuilder) -> Value;
}

macro_rules! primitive {
    ($avro:literal: $($ty:ty),*) => {
        $(impl AvroType for $ty {
            fn avro_schema(_: &mut SchemaBuilder) -> Value {
                Value::String($avro.to_owned())
            }
        })*
    };
}

primitive!("boolean": bool);
primitive!("long": i8, i16, i32, i64, u8, u16, u32, u64, isize, usize);
primitive!("double": f32, f64);
primitive!("string": String, str, char, uuid::Uuid, chrono::DateTime<chrono::Utc>, chrono::NaiveDate);

impl<T: AvroType + ?Sized> AvroType for &T {
    const NULLABLE: bool = T::NULLABLE;
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        T::avro_schema(builder)
    }
}

impl<T: AvroType + ?Sized> AvroType for Box<T> {
    const NULLABLE: bool = T::NULLABLE;
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        T::avro_schema(builder)
    }
}

impl<T: AvroType> AvroType for Option<T> {
    const NULLABLE: bool = true;
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        json!(["null", T::avro_schema(builder)])
    }
}

impl<T: AvroType> AvroType for Vec<T> {
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        json!({"type": "array", "items": T::avro_schema(builder)})
    }
}

impl<V: AvroType, S> AvroType for HashMap<String, V, S> {
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        json!({"type": "map", "values": V::avro_schema(builder)})
    }
}

impl<V: AvroType> AvroType for BTreeMap<String, V> {
    fn avro_schema(builder: &mut SchemaBuilder) -> Value {
        json!({"type": "map", "values": V::avro_schema(builder)})
    }
}

/// Raw bytes that map to the Avro `bytes` type (a `Vec<u8>` maps to an array of longs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

impl AvroType for Bytes {
    fn avro_schema(_: &mut SchemaBuilder) -> Value {
        Value::String("bytes".to_owned())
    }
}

/// One record field, as written by the derive macros.
#[doc(hidden)]
pub fn field<T: AvroType + ?Sized>(name: &str, builder: &mut SchemaBuilder) -> Value {
    let mut field = json!({"name": name, "type": T::avro_schema(builder)});
    if T::NULLABLE {
        field["default"] = Value::Null;
    }
    field
}

/// A record schema, or a reference by name when the builder has already defined it.
#[doc(hidden)]
pub fn record(
    name: &str,
    builder: &mut SchemaBuilder,
    fields: impl FnOnce(&mut SchemaBuilder) -> Vec<Value>,
) -> Value {
    if !builder.define(name) {
        return Value::String(name.to_owned());
    }
    json!({"name": name, "type": "record", "fields": fields(builder)})
}

/// The top-level schema of an event: a record named `CloudEvent` in the event type's namespace,
/// exactly as Open edX's `schema_from_signal` lays it out.
#[doc(hidden)]
pub fn cloud_event(
    event_type: &str,
    fields: impl FnOnce(&mut SchemaBuilder) -> Vec<Value>,
) -> Value {
    let mut builder = SchemaBuilder::new();
    json!({
        "name": "CloudEvent",
        "type": "record",
        "doc": "Avro Event Format for CloudEvents created with openedx_events/schema",
        "namespace": event_type,
        "fields": fields(&mut builder),
    })
}
