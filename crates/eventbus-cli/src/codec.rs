//! Events as the command line reads and writes them: JSON in, JSON out, whatever the wire
//! format. Three kinds: a type this program registered (same bytes as typed code writes), a
//! type described by an Avro schema file, and raw payloads.

use std::path::Path;

use apache_avro::types::Value as AvroValue;
use bytes::Bytes;
use eventbus::catalog::{self, EventType};
use eventbus::metadata::header;
use eventbus::serializer::{confluent_frame, confluent_subject, confluent_unframe};
use eventbus::{
    Bus, Delivery, EventMetadata, EventSchema, Headers, Message, Position, SendOptions,
};
use serde_json::{json, Map, Value};

use crate::error::CliError;

/// How one command encodes or decodes payloads.
#[derive(Debug, Clone)]
pub(crate) enum Codec {
    /// A type registered in this program.
    Registered(EventType),
    /// A type known from a schema file.
    Schema(Box<SchemaType>),
    /// Bytes as they are, no metadata.
    Raw,
}

/// An event type described by an `.avsc` file.
#[derive(Debug, Clone)]
pub(crate) struct SchemaType {
    pub(crate) name: String,
    pub(crate) minor_version: u32,
    pub(crate) schema: EventSchema,
    pub(crate) key_field: Option<String>,
}

impl SchemaType {
    pub(crate) fn load(
        name: &str,
        path: &Path,
        minor_version: u32,
        key_field: Option<String>,
    ) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::File {
            path: path.to_owned(),
            source: e,
        })?;
        let schema = EventSchema::parse(&text)
            .map_err(|e| CliError::from(e.with("file", path.display())))?;
        Ok(Self {
            name: name.to_owned(),
            minor_version,
            schema,
            key_field,
        })
    }
}

impl Codec {
    /// The codec `--type`, `--schema` and `--raw` ask for.
    pub(crate) fn from_flags(format: &crate::args::Format) -> Result<Self, CliError> {
        if format.raw {
            return Ok(Codec::Raw);
        }
        let Some(name) = &format.event_type else {
            return Err(CliError::Usage(
                "say what the events are: --type TYPE (a registered type, or with --schema FILE), or --raw".into(),
            ));
        };
        match &format.schema {
            Some(path) => Ok(Codec::Schema(Box::new(SchemaType::load(
                name,
                path,
                format.minor_version,
                format.key_field.clone(),
            )?))),
            None => Ok(Codec::Registered(catalog::event_type(name).map_err(
                |e| CliError::from(e.with("hint", "give its Avro schema with --schema FILE")),
            )?)),
        }
    }

    /// Parses one input (JSON for events, text for raw) and publishes it.
    pub(crate) async fn send(
        &self,
        bus: &Bus,
        topic: &str,
        data: &Value,
        key: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<Position, CliError> {
        let producer = bus.producer();
        match self {
            Codec::Registered(event_type) => {
                let mut options = SendOptions::new();
                if let Some(key) = key {
                    options = options.key(key);
                }
                for (name, value) in headers {
                    options = options.header(name.as_str(), value.as_bytes());
                }
                Ok(event_type
                    .send_json(producer, topic, data.clone(), options)
                    .await?)
            }
            Codec::Schema(schema_type) => {
                let full = producer.settings().full_topic(topic);
                let message = schema_type.encode(bus, &full, data, key).await?;
                let message = with_headers(message, headers)?;
                single(producer.publish(&full, vec![message]).await?)
            }
            Codec::Raw => {
                let payload = match data {
                    Value::String(text) => text.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                let mut message = Message {
                    key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                    payload: payload.into(),
                    headers: Headers::new(),
                };
                for (name, value) in headers {
                    message.headers.append(name.as_str(), value.as_bytes());
                }
                Ok(producer.send_raw(topic, message).await?)
            }
        }
    }

    /// The key an input would be sent with: `--key`, else the type's key field.
    pub(crate) fn key_of(&self, data: &Value) -> Result<Option<String>, CliError> {
        match self {
            Codec::Registered(t) => Ok(t.key_of(data)?),
            Codec::Schema(s) => Ok(s.key_field.as_deref().and_then(|p| key_text(data, p))),
            Codec::Raw => Ok(None),
        }
    }
}

fn single(mut positions: Vec<Position>) -> Result<Position, CliError> {
    positions.pop().ok_or_else(|| {
        CliError::from(eventbus::Error::new(
            eventbus::ErrorKind::Publish,
            "the backend confirmed no message; this is a backend bug",
        ))
    })
}

fn with_headers(mut message: Message, headers: &[(String, String)]) -> Result<Message, CliError> {
    for (name, value) in headers {
        if header::is_reserved(name) {
            return Err(CliError::Usage(format!(
                "header `{name}` carries a CloudEvents attribute that eventbus writes itself; choose another name"
            )));
        }
        message.headers.append(name.as_str(), value.as_bytes());
    }
    Ok(message)
}

/// The text of the value at a dotted path, as a key.
pub(crate) fn key_text(data: &Value, path: &str) -> Option<String> {
    let mut at = data;
    for part in path.split('.') {
        at = at.get(part)?;
    }
    match at {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl SchemaType {
    /// A message as the bus's serializer would write it for a typed event.
    async fn encode(
        &self,
        bus: &Bus,
        full_topic: &str,
        data: &Value,
        key: Option<&str>,
    ) -> Result<Message, CliError> {
        let producer = bus.producer();
        let serializer = producer.serializer();
        let invalid = |e: apache_avro::Error| {
            CliError::from(
                eventbus::Error::new(
                    eventbus::ErrorKind::Serialize,
                    format!("the JSON does not fit the schema: {e}"),
                )
                .with("event_type", &self.name),
            )
        };
        let datum = || -> Result<Vec<u8>, CliError> {
            let value = AvroValue::from(data.clone())
                .resolve(self.schema.avro())
                .map_err(invalid)?;
            apache_avro::to_avro_datum(self.schema.avro(), value).map_err(invalid)
        };
        let key = key
            .map(str::to_owned)
            .or_else(|| self.key_field.as_deref().and_then(|p| key_text(data, p)));
        let (payload, key) = match serializer.name() {
            "json" => (data.to_string().into_bytes(), key.map(String::into_bytes)),
            "confluent-avro" => {
                let ids = producer.schema_ids().ok_or_else(|| {
                    CliError::Usage(
                        "the Confluent framing needs a schema registry; set EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL".into(),
                    )
                })?;
                let subject = confluent_subject(full_topic, &self.name);
                let id = ids.register_subject(&subject, &self.schema).await?;
                let key = match (&key, &self.key_field) {
                    (Some(text), Some(path)) => {
                        let key_schema =
                            bus.schema_store()
                                .key_schema(&self.name, path, &self.schema)?;
                        let key_id = ids
                            .register_subject(&key_schema.subject(full_topic), key_schema.schema())
                            .await?;
                        Some(confluent_frame(key_id, &key_schema.encode_datum(text)?))
                    }
                    _ => key.map(String::into_bytes),
                };
                (confluent_frame(id, &datum()?), key)
            }
            _ => (datum()?, key.map(String::into_bytes)),
        };
        let mut metadata = EventMetadata::new(
            &self.name,
            self.minor_version,
            &producer.settings().source,
            &producer.settings().source_host,
        );
        metadata.content_type = serializer.content_type().into();
        let mut message = Message {
            key: key.map(Bytes::from),
            payload: payload.into(),
            headers: Headers::with_capacity(12),
        };
        metadata.write_headers(&mut message.headers);
        Ok(message)
    }

    fn decode(&self, serializer: &str, payload: &[u8], bus: &Bus) -> Result<Value, String> {
        let (schema, mut datum) = match serializer {
            "json" => return serde_json::from_slice(payload).map_err(|e| e.to_string()),
            "confluent-avro" => {
                let (id, datum) = confluent_unframe(payload).map_err(|e| e.to_string())?;
                // The writer's schema when the registry told us; else ours.
                let writer = bus.schema_store().schema_by_id(id);
                (writer.map(|s| s.avro().clone()), datum)
            }
            _ => (None, payload),
        };
        let writer = schema.as_ref().unwrap_or(self.schema.avro());
        eventbus::serializer::check_avro_datum(writer, datum).map_err(|e| e.to_string())?;
        let value = apache_avro::from_avro_datum(writer, &mut datum, Some(self.schema.avro()))
            .map_err(|e| e.to_string())?;
        avro_to_json(value)
    }
}

fn avro_to_json(value: AvroValue) -> Result<Value, String> {
    Value::try_from(value).map_err(|e| e.to_string())
}

/// What `tail`, `dlq list` and friends print of one delivery.
pub(crate) struct Decoder<'a> {
    pub(crate) bus: &'a Bus,
    pub(crate) schema: Option<&'a SchemaType>,
}

impl Decoder<'_> {
    /// The delivery as one JSON object: where it is, its key, metadata, other headers and data.
    pub(crate) async fn record(&self, delivery: &Delivery) -> Value {
        let message = &delivery.message;
        let mut out = Map::new();
        out.insert("topic".into(), json!(delivery.topic));
        out.insert("position".into(), json!(delivery.position.to_string()));
        let producer = self.bus.producer();
        let serializer = producer.serializer();
        if let (Some(ids), Some(key)) = (producer.schema_ids(), &message.key) {
            // A Confluent-framed key names its schema by id, like the payload.
            if let Err(e) = ids.learn(key).await {
                tracing::debug!(error = %e, "the key's schema could not be fetched; showing its bytes");
            }
        }
        let key = message.key.as_ref().map(|k| {
            serializer
                .decode_key(k)
                .map(Value::String)
                .unwrap_or_else(|_| bytes_json(k))
        });
        out.insert("key".into(), key.unwrap_or(Value::Null));
        if let Some(at) = delivery.published_at {
            out.insert("published_at".into(), json!(at.to_rfc3339()));
        }
        let mut headers = Map::new();
        for (name, value) in message.headers.iter() {
            if !header::is_reserved(name) {
                headers.insert(name.to_owned(), text_or_bytes(value));
            }
        }
        let metadata = EventMetadata::from_headers(&message.headers).ok();
        if let Some(m) = &metadata {
            out.insert(
                "metadata".into(),
                json!({
                    "id": m.id.to_string(),
                    "type": m.event_type,
                    "source": m.source,
                    "time": m.time_string(),
                    "minorversion": m.minor_version,
                    "sourcehost": m.source_host,
                    "sourcelib": m.source_lib,
                    "datacontenttype": m.content_type,
                }),
            );
        }
        out.insert("headers".into(), Value::Object(headers));
        match self.data(delivery, metadata.as_ref()).await {
            Ok(data) => {
                out.insert("data".into(), data);
            }
            Err(error) => {
                out.insert("data".into(), text_or_bytes(&message.payload));
                out.insert("decode_error".into(), json!(error));
            }
        }
        Value::Object(out)
    }

    async fn data(
        &self,
        delivery: &Delivery,
        metadata: Option<&EventMetadata>,
    ) -> Result<Value, String> {
        let payload = &delivery.message.payload[..];
        let Some(metadata) = metadata else {
            // Not an event: show the bytes, as JSON where they are JSON.
            return Ok(serde_json::from_slice(payload).unwrap_or_else(|_| text_or_bytes(payload)));
        };
        let producer = self.bus.producer();
        let serializer = producer.serializer();
        if let Some(ids) = producer.schema_ids() {
            ids.learn(payload).await.map_err(|e| e.to_string())?;
        }
        if let Ok(event_type) = catalog::event_type(&metadata.event_type) {
            return event_type
                .decode_json(
                    serializer.as_ref(),
                    &delivery.topic,
                    payload,
                    Some(metadata.minor_version),
                )
                .map_err(|e| e.to_string());
        }
        if let Some(schema) = self.schema.filter(|s| s.name == metadata.event_type) {
            return schema.decode(serializer.name(), payload, self.bus);
        }
        match serializer.name() {
            "json" => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            "confluent-avro" => {
                // The registry knows every writer schema: decode without the type.
                let (id, mut datum) = confluent_unframe(payload).map_err(|e| e.to_string())?;
                let writer = self
                    .bus
                    .schema_store()
                    .schema_by_id(id)
                    .ok_or_else(|| format!("schema id {id} is unknown and no registry is configured"))?;
                eventbus::serializer::check_avro_datum(writer.avro(), datum)
                    .map_err(|e| e.to_string())?;
                apache_avro::from_avro_datum(writer.avro(), &mut datum, None)
                    .map_err(|e| e.to_string())
                    .and_then(avro_to_json)
            }
            _ => Err(format!(
                "event type `{}` is not known to this program; give its schema with --type {} --schema FILE",
                metadata.event_type, metadata.event_type
            )),
        }
    }
}

/// UTF-8 text as a string, anything else as `{"base16": "…"}`.
pub(crate) fn text_or_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => bytes_json(bytes),
    }
}

fn bytes_json(bytes: &[u8]) -> Value {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    json!({ "base16": hex })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six bytes claiming an array of 2^39 longs: apache-avro would reserve room for them all
    /// and abort the process; the check refuses them first.
    #[tokio::test]
    async fn a_forged_array_count_is_refused_before_anything_is_allocated() {
        let schema = EventSchema::parse(
            r#"{"type":"record","name":"T","fields":[{"name":"xs","type":{"type":"array","items":"long"}}]}"#,
        )
        .unwrap();
        let t = SchemaType {
            name: "org.example.t.v1".into(),
            minor_version: 0,
            schema,
            key_field: None,
        };
        let bus = eventbus::connect(eventbus::BusConfig::new()).await.unwrap();
        let forged = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
        let error = t.decode("avro", &forged, &bus).unwrap_err();
        assert!(error.contains("not a valid Avro datum"), "{error}");
    }
}
