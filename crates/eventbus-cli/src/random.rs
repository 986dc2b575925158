//! Random events for the load simulator: JSON values that deserialize into the Rust event whose
//! Avro schema they follow, and that encode with that schema.
//!
//! The schema says `string` for `String`, `Uuid`, `DateTime<Utc>` and `NaiveDate` alike (the
//! Open edX mapping), so the content of a string comes from its field's name:
//!
//! - a time (RFC 3339, UTC, microseconds): `time`, `date`, `timestamp`, `created`, `modified`,
//!   `updated`, `start`, `end`, `expires`, `deadline`, and names ending in `time`, `_at`,
//!   `_date`, `_timestamp`, `_start`, `_end`;
//! - a UUID v4: `id`, `uuid`, and names ending in `_id`, `_uuid`;
//! - `userNNN@example.org`: `email`, `*_email`;
//! - a word and a number: `username`, `name`, `*_name`;
//! - `https://example.org/…`: `url`, `*_url`;
//! - a short lowercase word otherwise.
//!
//! A `String` accepts every one of these, so each rule picks the text the stricter types need.
//! Dates are the one conflict: Open edX names its `DateTime` fields `*_date` (`creation_date`),
//! so those get a full time, and a `NaiveDate` field named like that will not deserialize.
//! Integers are 1 to 99 999, which the schema's `long` allows but an `i8`, `u8`, `i16` or `u16`
//! field may not hold.

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace, ResolvedSchema, Schema};
use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value};

/// A random value of `schema`, shaped as the event's serde JSON.
pub(crate) fn value(schema: &Schema, rng: &mut fastrand::Rng) -> Value {
    Walker::new(schema, rng).value(schema, "", &None)
}

/// Like [`value`], with the field at the dotted `key_field` path (`user.id`) set to one of
/// `keys` values, drawn at random, so that events spread over exactly that many keys. Integer
/// fields get the number itself; string fields get distinct text of the shape their name asks
/// for. A path that names no field of the schema, or `keys == 0`, leaves the value as random as
/// [`value`] makes it.
pub(crate) fn value_with_key(
    schema: &Schema,
    rng: &mut fastrand::Rng,
    key_field: Option<&str>,
    keys: u64,
) -> Value {
    let mut out = value(schema, rng);
    if let Some(path) = key_field.filter(|_| keys > 0) {
        let key = rng.u64(0..keys);
        let path: Vec<&str> = path.split('.').collect();
        Walker::new(schema, rng).set_key(schema, &None, &mut out, "", &path, key);
    }
    out
}

/// What a string field holds, guessed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Time,
    Uuid,
    Email,
    Name,
    Url,
    Word,
}

impl Text {
    fn of(field: &str) -> Self {
        let f = field.to_ascii_lowercase();
        let f = f.as_str();
        let is = |names: &[&str]| names.contains(&f);
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| f.ends_with(s));
        if is(&[
            "date",
            "timestamp",
            "created",
            "modified",
            "updated",
            "start",
            "end",
            "expires",
            "deadline",
        ]) || ends(&["time", "_at", "_date", "_timestamp", "_start", "_end"])
        {
            Text::Time
        } else if is(&["id", "uuid"]) || ends(&["_id", "_uuid"]) {
            Text::Uuid
        } else if is(&["email"]) || ends(&["_email"]) {
            Text::Email
        } else if is(&["username", "name"]) || ends(&["_name"]) {
            Text::Name
        } else if is(&["url"]) || ends(&["_url"]) {
            Text::Url
        } else {
            Text::Word
        }
    }
}

const WORDS: &[&str] = &[
    "alpha", "amber", "basil", "cedar", "delta", "ember", "fable", "garnet", "harbor", "indigo",
    "juniper", "kestrel", "lumen", "maple", "nectar", "orbit", "pepper", "quartz", "raven",
    "sierra", "tundra", "umber", "velvet", "willow", "yarrow", "zephyr",
];

/// 2026-01-01T00:00:00Z: times spread over the year after it.
const EPOCH: i64 = 1_767_225_600;
const YEAR_SECS: i64 = 365 * 24 * 3600;

struct Walker<'s, 'r> {
    // Every named type up front: a random walk may skip the definition (a `null` option, an
    // empty array) and meet only a later reference by name.
    names: HashMap<Name, &'s Schema>,
    rng: &'r mut fastrand::Rng,
}

impl<'s, 'r> Walker<'s, 'r> {
    fn new(schema: &'s Schema, rng: &'r mut fastrand::Rng) -> Self {
        // A parsed schema always resolves; without names, references simply come out as null.
        let names = ResolvedSchema::try_from(schema)
            .map(|r| r.get_names().clone())
            .unwrap_or_default();
        Self { names, rng }
    }

    /// The schema behind a reference, with the namespace its fields resolve names in.
    fn resolve<'a>(&self, schema: &'a Schema, ns: &Namespace) -> (&'a Schema, Namespace)
    where
        's: 'a,
    {
        let schema = match schema {
            Schema::Ref { name } => match self.names.get(&name.fully_qualified_name(ns)) {
                Some(found) => *found,
                None => schema,
            },
            other => other,
        };
        let ns = match schema {
            Schema::Record(r) => r.name.fully_qualified_name(ns).namespace,
            _ => ns.clone(),
        };
        (schema, ns)
    }

    fn value(&mut self, schema: &Schema, field: &str, ns: &Namespace) -> Value {
        let (schema, ns) = self.resolve(schema, ns);
        let rng = &mut *self.rng;
        match schema {
            Schema::Null | Schema::Ref { .. } => Value::Null,
            Schema::Boolean => Value::Bool(rng.bool()),
            Schema::Int | Schema::Long => Value::from(rng.i64(1..100_000)),
            Schema::Float | Schema::Double => Value::from(rng.u32(0..1_000_000) as f64 / 100.0),
            Schema::String => Value::String(self.text(Text::of(field))),
            Schema::Uuid => Value::String(self.text(Text::Uuid)),
            Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) | Schema::Duration => {
                let len = rng.usize(0..8);
                bytes(rng, len)
            }
            Schema::Fixed(f) => bytes(rng, f.size),
            Schema::Enum(e) => match e.symbols.as_slice() {
                [] => Value::Null,
                symbols => Value::String(symbols[rng.usize(0..symbols.len())].clone()),
            },
            Schema::Array(a) => (0..rng.usize(0..=3))
                .map(|_| self.value(&a.items, field, &ns))
                .collect(),
            Schema::Map(m) => {
                let mut out = Map::new();
                for _ in 0..rng.usize(0..=3) {
                    let key = self.text(Text::Word);
                    let value = self.value(&m.types, field, &ns);
                    out.insert(key, value);
                }
                Value::Object(out)
            }
            Schema::Union(u) => {
                let variants = u.variants();
                let nullable = variants.iter().any(|v| matches!(v, Schema::Null));
                let others: Vec<&Schema> = variants
                    .iter()
                    .filter(|v| !matches!(v, Schema::Null))
                    .collect();
                if others.is_empty() || (nullable && rng.u8(0..5) == 0) {
                    return Value::Null;
                }
                let pick = others[rng.usize(0..others.len())];
                self.value(pick, field, &ns)
            }
            Schema::Record(r) => Value::Object(
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), self.value(&f.schema, &f.name, &ns)))
                    .collect(),
            ),
            // Logical types on `int`/`long`: their number, roughly now.
            Schema::Date => Value::from(EPOCH / 86_400 + rng.i64(0..365)),
            Schema::TimeMillis | Schema::TimeMicros => Value::from(rng.i64(0..86_400_000)),
            Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Value::from(EPOCH + rng.i64(0..YEAR_SECS)),
        }
    }

    fn text(&mut self, kind: Text) -> String {
        let rng = &mut *self.rng;
        let word = WORDS[rng.usize(0..WORDS.len())];
        match kind {
            Text::Time => {
                let at = DateTime::from_timestamp(EPOCH + rng.i64(0..YEAR_SECS), 0)
                    .unwrap_or_default()
                    + chrono::Duration::microseconds(rng.i64(0..1_000_000));
                at.to_rfc3339_opts(SecondsFormat::Micros, true)
            }
            Text::Uuid => uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes())
                .into_uuid()
                .to_string(),
            Text::Email => format!("user{}@example.org", rng.u32(1..100_000)),
            Text::Name => format!("{word}{}", rng.u16(1..1000)),
            Text::Url => format!("https://example.org/{word}/{}", rng.u32(1..100_000)),
            Text::Word => word.to_owned(),
        }
    }

    /// Sets the field at `path` below `value` (of `schema`) to the key numbered `key`.
    fn set_key(
        &mut self,
        schema: &Schema,
        ns: &Namespace,
        value: &mut Value,
        field: &str,
        path: &[&str],
        key: u64,
    ) {
        let (schema, ns) = self.resolve(schema, ns);
        if let Schema::Union(u) = schema {
            // The option's value: a key, or a record the key lives in, must be present.
            let Some(some) = u.variants().iter().find(|v| !matches!(v, Schema::Null)) else {
                return;
            };
            if value.is_null() {
                *value = self.value(some, field, &ns);
            }
            return self.set_key(some, &ns, value, field, path, key);
        }
        let Some((first, rest)) = path.split_first() else {
            *value = key_value(schema, field, key);
            return;
        };
        if let Schema::Record(r) = schema {
            let found = r.fields.iter().find(|f| f.name == *first);
            if let (Some(f), Some(fields)) = (found, value.as_object_mut()) {
                let slot = fields.entry(f.name.clone()).or_insert(Value::Null);
                self.set_key(&f.schema, &ns, slot, &f.name, rest, key);
            }
        }
    }
}

/// The value of key number `key`: distinct keys give distinct values.
fn key_value(schema: &Schema, field: &str, key: u64) -> Value {
    match schema {
        Schema::Int | Schema::Long => Value::from(key),
        Schema::Float | Schema::Double => Value::from(key as f64),
        Schema::Boolean => Value::Bool(key % 2 == 1),
        Schema::Uuid => Value::String(key_uuid(key)),
        Schema::String => Value::String(match Text::of(field) {
            Text::Uuid => key_uuid(key),
            Text::Time => DateTime::from_timestamp(EPOCH + (key % (YEAR_SECS as u64)) as i64, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            Text::Email => format!("user{key}@example.org"),
            Text::Url => format!("https://example.org/key/{key}"),
            Text::Name | Text::Word => key.to_string(),
        }),
        _ => Value::String(key.to_string()),
    }
}

fn key_uuid(key: u64) -> String {
    // Version 4 in the high half so it reads like the UUIDs producers make.
    uuid::Uuid::from_u64_pair(0x5eed_0000_0000_4000, key).to_string()
}

fn bytes(rng: &mut fastrand::Rng, len: usize) -> Value {
    (0..len).map(|_| Value::from(rng.u8(..))).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use eventbus::serializer::{decode_event, encode_event, AvroSerializer};
    use eventbus::{AvroRecord, Event};
    use eventbus_testkit::openedx::SessionLoginCompleted;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
    struct Account {
        id: uuid::Uuid,
        email: String,
        username: String,
        homepage_url: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
    struct Line {
        sku: String,
        quantity: u32,
        price: f64,
        gift: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(
        type = "org.example.order.placed.v1",
        minor_version = 1,
        key = "buyer.id"
    )]
    struct OrderPlaced {
        order_id: i64,
        buyer: Account,
        // The second use of `Account` is a reference by name.
        gifted_by: Option<Account>,
        lines: Vec<Line>,
        counters: HashMap<String, i64>,
        created_at: DateTime<Utc>,
        creation_date: Option<DateTime<Utc>>,
        note: Option<String>,
        total: f64,
        express: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(type = "org.example.order.shipped.v1", key = "shipment.order_id")]
    struct OrderShipped {
        shipment: Shipment,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroRecord)]
    struct Shipment {
        order_id: i64,
        carrier: Option<String>,
    }

    /// Generates events of `E`, checks each deserializes and survives an Avro round trip, and
    /// returns them.
    fn generate<E: Event + PartialEq + std::fmt::Debug>(seed: u64, keys: Option<u64>) -> Vec<E> {
        let schema = E::schema().unwrap().avro();
        let serializer = AvroSerializer::new(Arc::default());
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..200)
            .map(|_| {
                let json = match keys {
                    Some(k) => value_with_key(schema, &mut rng, E::KEY_FIELD, k),
                    None => value(schema, &mut rng),
                };
                let event: E = serde_json::from_value(json.clone())
                    .unwrap_or_else(|e| panic!("{e}: {json:#}"));
                let bytes = encode_event(&serializer, "t", &event)
                    .unwrap_or_else(|e| panic!("{e}: {json:#}"));
                let back: E = decode_event(&serializer, "t", &bytes, None).unwrap();
                assert_eq!(back, event);
                event
            })
            .collect()
    }

    #[test]
    fn open_edx_login_events_are_valid() {
        let events = generate::<SessionLoginCompleted>(1, None);
        let email = &events[0].user.pii.email;
        assert!(
            email.starts_with("user") && email.ends_with("@example.org"),
            "{email}"
        );
        assert!(events.iter().all(|e| e.user.id > 0));
    }

    #[test]
    fn every_shape_is_valid() {
        let schema = OrderPlaced::schema().unwrap();
        assert!(
            schema.json().contains(r#""type":["null","Account"]"#),
            "{}",
            schema.json()
        );
        let events = generate::<OrderPlaced>(2, None);
        // Options are sometimes absent and sometimes present; collections vary in size.
        assert!(events.iter().any(|e| e.gifted_by.is_none()));
        assert!(events.iter().any(|e| e.gifted_by.is_some()));
        assert!(events.iter().any(|e| e.lines.is_empty()));
        assert!(events.iter().any(|e| e.lines.len() == 3));
        assert!(events.iter().any(|e| !e.counters.is_empty()));
        let ids: HashSet<_> = events.iter().map(|e| e.buyer.id).collect();
        assert_eq!(ids.len(), events.len());
        assert!(events.iter().all(|e| e.created_at.timestamp() >= EPOCH));
    }

    fn distinct_keys<E: Event + PartialEq + std::fmt::Debug>(keys: u64) -> usize {
        let mut seen = HashSet::new();
        for seed in 0..10 {
            for event in generate::<E>(seed, Some(keys)) {
                seen.insert(event.key().unwrap());
            }
        }
        seen.len()
    }

    #[test]
    fn keys_spread_over_exactly_k_values() {
        assert_eq!(distinct_keys::<OrderPlaced>(7), 7);
        assert_eq!(distinct_keys::<OrderPlaced>(1), 1);
        assert_eq!(distinct_keys::<OrderShipped>(50), 50);
    }

    #[test]
    fn key_under_an_absent_option_is_filled_in() {
        let schema = OrderPlaced::schema().unwrap().avro();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            let json = value_with_key(schema, &mut rng, Some("gifted_by.email"), 3);
            let email = json["gifted_by"]["email"].as_str().unwrap();
            assert!([
                "user0@example.org",
                "user1@example.org",
                "user2@example.org"
            ]
            .contains(&email));
        }
    }

    #[test]
    fn unknown_key_paths_and_zero_keys_change_nothing() {
        let schema = SessionLoginCompleted::schema().unwrap().avro();
        let plain = value(schema, &mut fastrand::Rng::with_seed(4));
        for (path, keys) in [(Some("user.nope"), 5), (Some("user.id"), 0), (None, 5)] {
            let keyed = value_with_key(schema, &mut fastrand::Rng::with_seed(4), path, keys);
            assert_eq!(keyed, plain, "{path:?} {keys}");
        }
    }

    #[test]
    fn field_names_pick_the_text() {
        assert_eq!(Text::of("creation_date"), Text::Time);
        assert_eq!(Text::of("updatedTime"), Text::Time);
        assert_eq!(Text::of("user_id"), Text::Uuid);
        assert_eq!(Text::of("email"), Text::Email);
        assert_eq!(Text::of("display_name"), Text::Name);
        assert_eq!(Text::of("avatar_url"), Text::Url);
        assert_eq!(Text::of("mode"), Text::Word);
    }
}
