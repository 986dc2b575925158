//! Serializers: how an event becomes payload bytes and back.
//!
//! Three are built in, picked by `EVENT_BUS_SERIALIZER`:
//!
//! * `avro`: schemaless Avro binary, the datum alone (the Redis wire format of Open edX);
//! * `confluent-avro`: Avro in the Confluent schema-registry framing (byte 0, a 4-byte big-endian
//!   schema id, the datum), used on Kafka;
//! * `json`: the event's serde JSON.
//!
//! Decoding resolves the writer's schema to the reader's, so a consumer one minor version behind
//! or ahead still reads. Schemaless Avro carries no schema, so its writer schema comes from the
//! [`SchemaStore`] when the message's minor version differs from the reader's.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};

use apache_avro::types::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventSchema};

mod avro_decode;
mod avro_encode;
pub mod key;

pub use key::KeySchema;

/// Checks bytes from outside before `apache_avro::from_avro_datum` reads them as a datum of
/// `schema`: apache-avro reserves room for a string, array or map by the length or count it
/// reads, before it reads what they count, so a few forged bytes could make it ask for
/// gigabytes and abort the process. Refuses a length beyond the bytes left, more items than
/// the datum has bytes, and nesting deeper than 128; a datum that merely ends early passes
/// (apache-avro reports that itself). Call it wherever a program decodes Avro from a topic.
pub fn check_avro_datum(schema: &apache_avro::Schema, datum: &[u8]) -> Result<()> {
    avro_decode::check_datum(schema, datum).map_err(|e| {
        Error::new(
            ErrorKind::Deserialize,
            "the bytes are not a valid Avro datum of the schema",
        )
        .with_source(e)
    })
}

/// What a serializer needs to know about the event it handles.
#[derive(Debug, Clone, Copy)]
pub struct SchemaContext<'a> {
    /// Full topic name (the Confluent subject derives from it).
    pub topic: &'a str,
    /// Event type name.
    pub event_type: &'a str,
    /// The local (reader's, or writer's when encoding) schema.
    pub schema: &'a EventSchema,
    /// The local minor version.
    pub minor_version: u32,
    /// The minor version the message says it was written with, when decoding.
    pub message_minor_version: Option<u32>,
}

/// A decoded payload on its way to becoming a typed event.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decoded<'a> {
    /// An Avro value already resolved to the reader's schema.
    Avro(Value),
    /// An Avro datum written with the reader's own schema, read straight into the event.
    AvroDatum(&'a [u8], &'a EventSchema),
    /// JSON text.
    Json(&'a [u8]),
}

impl Decoded<'_> {
    /// Turns the decoded payload into `E`.
    pub fn into_event<E: Event>(self) -> Result<E> {
        let mismatch = |e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::Deserialize,
                format!("the payload does not fit the event's fields: {e}"),
            )
            .with("event_type", E::EVENT_TYPE)
        };
        match self {
            Decoded::Avro(value) => apache_avro::from_value::<E>(&value).map_err(|e| mismatch(&e)),
            Decoded::AvroDatum(datum, schema) => {
                avro_decode::from_datum(schema.avro(), datum).map_err(|e| mismatch(&e))
            }
            Decoded::Json(bytes) => serde_json::from_slice(bytes).map_err(|e| mismatch(&e)),
        }
    }
}

/// What a serializer needs to know about the key it writes.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    /// Full topic name (the Confluent key subject derives from it).
    pub topic: &'a str,
    /// Event type name.
    pub event_type: &'a str,
    /// The event's schema, which holds the key field's definition.
    pub schema: &'a EventSchema,
    /// The dotted path of the key field (`user.id`), when known.
    pub field: Option<&'a str>,
}

/// Encodes and decodes event payloads and keys.
pub trait Serializer: Send + Sync + fmt::Debug {
    /// The setting value that selects it, e.g. `avro`.
    fn name(&self) -> &'static str;
    /// The payload's content type, e.g. `application/avro`.
    fn content_type(&self) -> &'static str;
    /// Encodes one event.
    fn encode(
        &self,
        event: &dyn erased_serde::Serialize,
        ctx: &SchemaContext<'_>,
    ) -> Result<Vec<u8>>;
    /// Decodes one payload.
    fn decode<'a>(&self, payload: &'a [u8], ctx: &SchemaContext<'a>) -> Result<Decoded<'a>>;

    /// The bytes of a key whose text is `key`. By default its UTF-8 text.
    fn encode_key(&self, key: &str, ctx: &KeyContext<'_>) -> Result<Vec<u8>> {
        let _ = ctx;
        Ok(key.as_bytes().to_vec())
    }

    /// The text of a key as it arrived: what [`Serializer::encode_key`] wrote, or UTF-8 text.
    fn decode_key(&self, key: &[u8]) -> Result<String> {
        text_key(key)
    }

    /// For a serializer whose payloads are an Avro datum of the event's schema after a fixed
    /// prefix: appends the prefix for `ctx` to `out` (nothing for plain Avro) and says `true`.
    /// [`encode_event`] then writes the datum itself, from the event's own type rather than
    /// through the type-erased [`Serializer::encode`], the same bytes for less work. `false`
    /// (the default, leaving `out` as it was) always goes through `encode`.
    fn write_avro_prefix(&self, ctx: &SchemaContext<'_>, out: &mut Vec<u8>) -> Result<bool> {
        let _ = (ctx, out);
        Ok(false)
    }
}

fn text_key(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec()).map_err(|e| {
        Error::new(ErrorKind::Deserialize, "the key is not UTF-8 text")
            .with("key", key.escape_ascii())
            .with_source(e)
    })
}

/// The built-in serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SerializerKind {
    /// Schemaless Avro (the default; Open edX's Redis format).
    #[default]
    Avro,
    /// Avro in Confluent schema-registry framing (Open edX's Kafka format).
    ConfluentAvro,
    /// JSON.
    Json,
}

impl SerializerKind {
    /// Every setting value, for error messages.
    pub const NAMES: &'static [&'static str] = &["avro", "confluent-avro", "json"];

    /// Builds the serializer, sharing `store` for writer schemas and ids.
    pub fn build(self, store: Arc<SchemaStore>) -> Arc<dyn Serializer> {
        match self {
            SerializerKind::Avro => Arc::new(AvroSerializer::new(store)),
            SerializerKind::ConfluentAvro => Arc::new(ConfluentAvroSerializer::new(store)),
            SerializerKind::Json => Arc::new(JsonSerializer),
        }
    }
}

impl FromStr for SerializerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avro" => Ok(Self::Avro),
            "confluent-avro" | "confluent" => Ok(Self::ConfluentAvro),
            "json" => Ok(Self::Json),
            other => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "unknown serializer `{other}`; use one of: {}",
                    Self::NAMES.join(", ")
                ),
            )
            .with("setting", "EVENT_BUS_SERIALIZER")),
        }
    }
}

/// Writer schemas and schema-registry ids known to this process.
///
/// Schemaless Avro needs the writer's schema to read a message of another minor version: add it
/// with [`SchemaStore::add_writer_schema`]. The Confluent framing needs ids: a schema-registry
/// client fills them in with [`SchemaStore::add_registered`].
#[derive(Debug, Default)]
pub struct SchemaStore {
    keys: RwLock<HashMap<(String, String), Arc<KeySchema>>>,
    writers: RwLock<HashMap<(String, u32), Arc<EventSchema>>>,
    by_id: RwLock<HashMap<u32, Arc<EventSchema>>>,
    ids: RwLock<HashMap<(String, String), u32>>,
}

impl SchemaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `schema` the writer schema for messages of `event_type` at `minor_version`.
    pub fn add_writer_schema(&self, event_type: &str, minor_version: u32, schema: EventSchema) {
        if let Ok(mut w) = self.writers.write() {
            w.insert((event_type.to_owned(), minor_version), Arc::new(schema));
        }
    }

    /// The writer schema registered for `event_type` at `minor_version`.
    pub fn writer_schema(&self, event_type: &str, minor_version: u32) -> Option<Arc<EventSchema>> {
        let w = self.writers.read().ok()?;
        w.get(&(event_type.to_owned(), minor_version)).cloned()
    }

    /// Records that `schema` is registered under `subject` with `id`.
    pub fn add_registered(&self, subject: &str, id: u32, schema: EventSchema) {
        if let Ok(mut ids) = self.ids.write() {
            ids.insert((subject.to_owned(), schema.json().to_owned()), id);
        }
        if let Ok(mut by_id) = self.by_id.write() {
            by_id.insert(id, Arc::new(schema));
        }
    }

    /// Records the schema registered with `id`, whatever its subject (a consumer learns schemas
    /// by id).
    pub fn add_schema(&self, id: u32, schema: EventSchema) {
        if let Ok(mut by_id) = self.by_id.write() {
            by_id.insert(id, Arc::new(schema));
        }
    }

    /// The id of `schema` under `subject`, if registered.
    pub fn registered_id(&self, subject: &str, schema: &EventSchema) -> Option<u32> {
        let ids = self.ids.read().ok()?;
        ids.get(&(subject.to_owned(), schema.json().to_owned()))
            .copied()
    }

    /// The schema registered with `id`.
    pub fn schema_by_id(&self, id: u32) -> Option<Arc<EventSchema>> {
        self.by_id.read().ok()?.get(&id).cloned()
    }

    /// The key schema of the field at `path` of `event_type`, derived from `schema` once.
    pub fn key_schema(
        &self,
        event_type: &str,
        path: &str,
        schema: &EventSchema,
    ) -> Result<Arc<KeySchema>> {
        let id = (event_type.to_owned(), path.to_owned());
        if let Some(found) = self.keys.read().ok().and_then(|k| k.get(&id).cloned()) {
            return Ok(found);
        }
        let key =
            Arc::new(KeySchema::of(schema, path).map_err(|e| e.with("event_type", event_type))?);
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(id, Arc::clone(&key));
        }
        Ok(key)
    }
}

/// UUIDs must travel as strings (Open edX's mapping); apache-avro's serde bridge says
/// "not human readable" by default, which makes `uuid` write 16 raw bytes. The setting is
/// process-wide and can be set once, so set it before the first Avro use. Returns the setting
/// in force, which the direct encoder must follow to write what apache-avro would.
fn avro_text_types() -> bool {
    static HUMAN_READABLE: OnceLock<bool> = OnceLock::new();
    *HUMAN_READABLE.get_or_init(|| {
        let set = apache_avro::util::set_serde_human_readable(true);
        if !set {
            tracing::warn!(
                "apache-avro was set to non-human-readable before eventbus used it; UUID fields will not encode as strings"
            );
        }
        set
    })
}

fn encode_datum<T: serde::Serialize + ?Sized>(
    event: &T,
    ctx: &SchemaContext<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let human_readable = avro_text_types();
    let schema = ctx.schema.avro();
    let written = if ctx.schema.has_refs() {
        // The direct serde path cannot follow references to named types; go through a Value,
        // which `resolve` fits to the schema (ints to longs, options to unions).
        apache_avro::to_value(event)
            .and_then(|v| v.resolve(schema))
            .and_then(|v| apache_avro::to_avro_datum(schema, v))
            .map(|bytes| out.extend_from_slice(&bytes))
    } else {
        let start = out.len();
        match avro_encode::to_datum(schema, event, human_readable, out) {
            Ok(()) => Ok(()),
            // A shape the direct encoder leaves to apache-avro, or a value that does not fit
            // the schema: apache-avro writes it, or says what is wrong.
            Err(avro_encode::Declined) => {
                out.truncate(start);
                apache_avro::write_avro_datum_ref(schema, &event, out).map(drop)
            }
        }
    };
    written.map_err(|e| {
        Error::new(
            ErrorKind::Serialize,
            "the event does not fit its Avro schema; check the field types against the mapping",
        )
        .with("event_type", ctx.event_type)
        .with_source(e)
    })
}

fn decode_datum<'a>(
    payload: &'a [u8],
    writer: &EventSchema,
    ctx: &SchemaContext<'a>,
) -> Result<Decoded<'a>> {
    avro_text_types();
    let reader = ctx.schema;
    let same = std::ptr::eq(writer, reader) || writer.json() == reader.json();
    if same && !reader.has_refs() {
        // The common case: read the datum straight into the event, no Value tree.
        return Ok(Decoded::AvroDatum(payload, reader));
    }
    let invalid = || {
        Error::new(
            ErrorKind::Deserialize,
            "the payload is not valid Avro for this event type",
        )
        .with("event_type", ctx.event_type)
    };
    // apache-avro allocates by the lengths and counts it reads before it reads what they count:
    // check them against the payload first (a six-byte payload could otherwise abort the process).
    avro_decode::check_datum(writer.avro(), payload).map_err(|e| invalid().with_source(e))?;
    let mut input = payload;
    let resolve = (!same).then(|| reader.avro());
    apache_avro::from_avro_datum(writer.avro(), &mut input, resolve)
        .map(Decoded::Avro)
        .map_err(|e| invalid().with_source(e))
}

/// Schemaless Avro binary.
#[derive(Debug, Clone)]
pub struct AvroSerializer {
    store: Arc<SchemaStore>,
}

impl AvroSerializer {
    /// A serializer that finds writer schemas of other minor versions in `store`.
    pub fn new(store: Arc<SchemaStore>) -> Self {
        Self { store }
    }
}

impl Serializer for AvroSerializer {
    fn name(&self) -> &'static str {
        "avro"
    }

    fn content_type(&self) -> &'static str {
        "application/avro"
    }

    fn encode(
        &self,
        event: &dyn erased_serde::Serialize,
        ctx: &SchemaContext<'_>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        encode_datum(event, ctx, &mut out)?;
        Ok(out)
    }

    fn write_avro_prefix(&self, _: &SchemaContext<'_>, _: &mut Vec<u8>) -> Result<bool> {
        Ok(true)
    }

    fn decode<'a>(&self, payload: &'a [u8], ctx: &SchemaContext<'a>) -> Result<Decoded<'a>> {
        let other = ctx
            .message_minor_version
            .filter(|m| *m != ctx.minor_version)
            .and_then(|m| self.store.writer_schema(ctx.event_type, m));
        // Without the writer's schema, read with our own: minor versions only append optional
        // fields, so a newer writer's extra trailing fields are simply left unread.
        let writer = other.as_deref().unwrap_or(ctx.schema);
        decode_datum(payload, writer, ctx).map_err(|e| match ctx.message_minor_version {
            Some(m) if m != ctx.minor_version && other.is_none() => e.with(
                "hint",
                format!("the message was written with minor version {m}; register that writer schema with SchemaStore::add_writer_schema"),
            ),
            _ => e,
        })
    }
}

/// Avro in the Confluent schema-registry framing.
#[derive(Debug, Clone)]
pub struct ConfluentAvroSerializer {
    store: Arc<SchemaStore>,
}

/// The magic byte that opens a Confluent-framed payload.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Frames an Avro datum: magic byte, big-endian schema id, datum.
pub fn confluent_frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(datum.len() + 5);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Splits a Confluent-framed payload into schema id and datum.
pub fn confluent_unframe(payload: &[u8]) -> Result<(u32, &[u8])> {
    match payload {
        [CONFLUENT_MAGIC, a, b, c, d, datum @ ..] => {
            Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum))
        }
        _ => Err(Error::new(
            ErrorKind::Deserialize,
            "the payload is not in Confluent framing (magic byte 0 and a 4-byte schema id)",
        )
        .with("length", payload.len())),
    }
}

/// The subject under topic-record naming: `<topic>-<event type>.CloudEvent`.
pub fn confluent_subject(topic: &str, event_type: &str) -> String {
    format!("{topic}-{event_type}.CloudEvent")
}

impl ConfluentAvroSerializer {
    /// A serializer that takes schema ids from `store`.
    pub fn new(store: Arc<SchemaStore>) -> Self {
        Self { store }
    }

    /// The id `schema` was registered with under `subject` (event or key).
    fn registered_id(&self, subject: &str, schema: &EventSchema) -> Result<u32> {
        self.store.registered_id(subject, schema).ok_or_else(|| {
            Error::new(
                ErrorKind::Serialize,
                "no schema id is known for this subject; the Confluent framing needs a schema registry (for Kafka, set EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL)",
            )
            .with("subject", subject)
        })
    }

    /// The magic byte and the schema id, the datum to follow.
    fn frame_start(&self, ctx: &SchemaContext<'_>, out: &mut Vec<u8>) -> Result<()> {
        let id = self.registered_id(&confluent_subject(ctx.topic, ctx.event_type), ctx.schema)?;
        out.push(CONFLUENT_MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        Ok(())
    }
}

impl Serializer for ConfluentAvroSerializer {
    fn name(&self) -> &'static str {
        "confluent-avro"
    }

    fn content_type(&self) -> &'static str {
        "application/avro"
    }

    fn encode(
        &self,
        event: &dyn erased_serde::Serialize,
        ctx: &SchemaContext<'_>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        self.frame_start(ctx, &mut out)?;
        encode_datum(event, ctx, &mut out)?;
        Ok(out)
    }

    fn write_avro_prefix(&self, ctx: &SchemaContext<'_>, out: &mut Vec<u8>) -> Result<bool> {
        self.frame_start(ctx, out).map(|()| true)
    }

    fn decode<'a>(&self, payload: &'a [u8], ctx: &SchemaContext<'a>) -> Result<Decoded<'a>> {
        let (id, datum) = confluent_unframe(payload)?;
        let writer = self.store.schema_by_id(id).ok_or_else(|| {
            Error::new(
                ErrorKind::Deserialize,
                "the payload's schema id is unknown; the Confluent framing needs a schema registry to look it up (for Kafka, set EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL)",
            )
            .with("schema_id", id)
            .temporary()
        })?;
        decode_datum(datum, &writer, ctx)
    }

    fn encode_key(&self, key: &str, ctx: &KeyContext<'_>) -> Result<Vec<u8>> {
        // Without a key field there is no key schema; such a key travels as text.
        let Some(path) = ctx.field else {
            return Ok(key.as_bytes().to_vec());
        };
        let schema = self.store.key_schema(ctx.event_type, path, ctx.schema)?;
        let id = self.registered_id(&schema.subject(ctx.topic), schema.schema())?;
        Ok(confluent_frame(id, &schema.encode_datum(key)?))
    }

    fn decode_key(&self, key: &[u8]) -> Result<String> {
        // Keys come in both forms: framed Avro (Open edX, and eventbus since it writes keys as
        // Open edX does) and UTF-8 text (other producers). Text never starts with a NUL byte.
        match confluent_unframe(key) {
            Ok((id, datum)) => {
                let schema = self.store.schema_by_id(id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Deserialize,
                        "the key's schema id is unknown; look it up in the schema registry first (SchemaIds::learn)",
                    )
                    .with("schema_id", id)
                    .temporary()
                })?;
                key::decode_key_datum(&schema, datum)
            }
            Err(_) => text_key(key),
        }
    }
}

/// JSON through serde. Missing `Option` fields read as `None` and unknown fields are ignored,
/// which is what makes minor versions compatible.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSerializer;

impl Serializer for JsonSerializer {
    fn name(&self) -> &'static str {
        "json"
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(
        &self,
        event: &dyn erased_serde::Serialize,
        ctx: &SchemaContext<'_>,
    ) -> Result<Vec<u8>> {
        serde_json::to_vec(event).map_err(|e| {
            Error::new(ErrorKind::Serialize, "the event cannot be written as JSON")
                .with("event_type", ctx.event_type)
                .with_source(e)
        })
    }

    fn decode<'a>(&self, payload: &'a [u8], _ctx: &SchemaContext<'a>) -> Result<Decoded<'a>> {
        Ok(Decoded::Json(payload))
    }
}

/// Encodes `event` with `serializer` for `topic`.
pub fn encode_event<E: Event>(
    serializer: &dyn Serializer,
    topic: &str,
    event: &E,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    encode_event_into(serializer, topic, event, &mut out)?;
    Ok(out)
}

/// [`encode_event`], appended to `out`: a batch writes its payloads one after another into one
/// buffer. On an error, `out` may hold part of the payload.
pub fn encode_event_into<E: Event>(
    serializer: &dyn Serializer,
    topic: &str,
    event: &E,
    out: &mut Vec<u8>,
) -> Result<()> {
    let schema = E::schema()?;
    let ctx = SchemaContext {
        topic,
        event_type: E::EVENT_TYPE,
        schema,
        minor_version: E::MINOR_VERSION,
        message_minor_version: None,
    };
    // The Avro serializers' own datum writer, with `E`'s `Serialize` called directly: through
    // `dyn erased_serde::Serialize` every field cost a few virtual calls.
    if serializer.write_avro_prefix(&ctx, out)? {
        return encode_datum(event, &ctx, out);
    }
    let encoded = serializer.encode(event, &ctx)?;
    if out.is_empty() {
        *out = encoded;
    } else {
        out.extend_from_slice(&encoded);
    }
    Ok(())
}

/// Decodes a payload written with `message_minor_version` into `E`.
pub fn decode_event<E: Event>(
    serializer: &dyn Serializer,
    topic: &str,
    payload: &[u8],
    message_minor_version: Option<u32>,
) -> Result<E> {
    let schema = E::schema()?;
    let ctx = SchemaContext {
        topic,
        event_type: E::EVENT_TYPE,
        schema,
        minor_version: E::MINOR_VERSION,
        message_minor_version,
    };
    serializer.decode(payload, &ctx)?.into_event()
}
