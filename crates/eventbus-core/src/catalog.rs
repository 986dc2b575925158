//! The event types compiled into this binary, for tools that handle events by name at run time:
//! the command line, AsyncAPI documents, dashboards.
//!
//! Every `#[derive(Event)]` registers its type through `inventory`; [`event_types`] lists them
//! and [`EventType`] reads and writes their events as JSON, through the same producer path and
//! serializer as typed code, so the bytes on the wire are the ones `send` would write.

use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventSchema};
use crate::producer::{Producer, SendOptions};
use crate::serializer::{decode_event, Serializer};
use crate::signal::{registered_signals, SignalEntry};
use crate::transport::Position;

type DecodeFn = fn(&dyn Serializer, &str, &[u8], Option<u32>) -> Result<Value>;
type SendFn =
    for<'a> fn(&'a Producer, &'a str, Value, SendOptions) -> BoxFuture<'a, Result<Position>>;

/// What an event type offers to code that knows it only by name. Built by `#[derive(Event)]`.
#[derive(Debug, Clone, Copy)]
pub struct JsonBridge {
    minor_version: u32,
    key_field: Option<&'static str>,
    schema: fn() -> Result<&'static EventSchema>,
    decode: DecodeFn,
    send: SendFn,
    key: fn(&Value) -> Result<Option<String>>,
}

impl JsonBridge {
    /// The bridge of `E`.
    pub const fn of<E: Event>() -> Self {
        Self {
            minor_version: E::MINOR_VERSION,
            key_field: E::KEY_FIELD,
            schema: E::schema,
            decode: decode_json::<E>,
            send: send_json::<E>,
            key: key_of_json::<E>,
        }
    }
}

/// One registered event type.
#[derive(Debug, Clone, Copy)]
pub struct EventType(&'static SignalEntry);

impl EventType {
    /// The type name, e.g. `org.openedx.learning.auth.session.login.completed.v1`.
    pub fn name(&self) -> &'static str {
        self.0.event_type
    }

    /// The minor version it writes.
    pub fn minor_version(&self) -> u32 {
        self.0.json.minor_version
    }

    /// The dotted path of the field whose value keys its events, if any.
    pub fn key_field(&self) -> Option<&'static str> {
        self.0.json.key_field
    }

    /// Its Avro schema.
    pub fn schema(&self) -> Result<&'static EventSchema> {
        (self.0.json.schema)()
    }

    /// Decodes a payload of this type (written with `minor_version`) to JSON.
    pub fn decode_json(
        &self,
        serializer: &dyn Serializer,
        full_topic: &str,
        payload: &[u8],
        minor_version: Option<u32>,
    ) -> Result<Value> {
        (self.0.json.decode)(serializer, full_topic, payload, minor_version)
    }

    /// Sends the event whose fields `data` holds, exactly as `Producer::send_with` sends a typed
    /// one (metadata, key from the key field unless `options` names one, schema registration).
    pub fn send_json<'a>(
        &self,
        producer: &'a Producer,
        topic: &'a str,
        data: Value,
        options: SendOptions,
    ) -> BoxFuture<'a, Result<Position>> {
        (self.0.json.send)(producer, topic, data, options)
    }

    /// The key the event in `data` would be sent with.
    pub fn key_of(&self, data: &Value) -> Result<Option<String>> {
        (self.0.json.key)(data)
    }
}

/// Every event type compiled into this binary, sorted by name.
pub fn event_types() -> Vec<EventType> {
    let mut types: Vec<EventType> = registered_signals().map(EventType).collect();
    types.sort_by_key(|t| t.name());
    types.dedup_by_key(|t| t.name());
    types
}

/// The registered event type called `name`, or an error that lists the known ones.
pub fn event_type(name: &str) -> Result<EventType> {
    let types = event_types();
    types
        .iter()
        .find(|t| t.name() == name)
        .copied()
        .ok_or_else(|| {
            let known: Vec<&str> = types.iter().map(EventType::name).collect();
            Error::new(
                ErrorKind::Config,
                format!(
                    "unknown event type `{name}`; this binary knows {}",
                    if known.is_empty() {
                        "no event types (derive `Event` on a type in the program that runs this)"
                            .to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
            .with("event_type", name)
        })
}

fn fields_error<E: Event>(e: &serde_json::Error) -> Error {
    Error::new(
        ErrorKind::Serialize,
        format!("the JSON does not fit the event's fields: {e}"),
    )
    .with("event_type", E::EVENT_TYPE)
}

fn decode_json<E: Event>(
    serializer: &dyn Serializer,
    full_topic: &str,
    payload: &[u8],
    minor_version: Option<u32>,
) -> Result<Value> {
    let event: E = decode_event(serializer, full_topic, payload, minor_version)?;
    serde_json::to_value(&event).map_err(|e| fields_error::<E>(&e))
}

fn send_json<'a, E: Event>(
    producer: &'a Producer,
    topic: &'a str,
    data: Value,
    options: SendOptions,
) -> BoxFuture<'a, Result<Position>> {
    Box::pin(async move {
        let event: E = serde_json::from_value(data).map_err(|e| fields_error::<E>(&e))?;
        producer.send_with(topic, &event, options).await
    })
}

fn key_of_json<E: Event>(data: &Value) -> Result<Option<String>> {
    let event: E = serde_json::from_value(data.clone()).map_err(|e| fields_error::<E>(&e))?;
    Ok(event.key())
}
